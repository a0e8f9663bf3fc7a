//! Class subsets, groupings and per-channel normalisation.

use super::{RawData, Split};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Parses "0-4/5-9" or "0,2/1,3" into groups of class indices.
pub fn parse_groups(text: &str) -> Result<Vec<Vec<usize>>> {
    let mut groups = Vec::new();
    for part in text.split('/') {
        let mut g = Vec::new();
        for item in part.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let parse = |s: &str| s.trim().parse::<usize>().with_context(|| format!("groups '{text}': '{s}' is not a class index"));
            match item.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (parse(a)?, parse(b)?);
                    if a > b {
                        bail!("groups '{text}': empty range {a}-{b}");
                    }
                    g.extend(a..=b);
                }
                None => g.push(parse(item)?),
            }
        }
        if g.is_empty() {
            bail!("groups '{text}': empty group");
        }
        groups.push(g);
    }
    if groups.len() < 2 {
        bail!("groups '{text}': need at least two groups separated by '/'");
    }
    Ok(groups)
}

/// Keeps `classes` (relabelled 0..k in that order), or merges `groups` into
/// one label each; samples in no selected class are dropped.
pub(crate) fn select_classes(raw: RawData, classes: Option<&[usize]>, groups: Option<&str>) -> Result<RawData> {
    let groups: Vec<Vec<usize>> = match (classes, groups) {
        (None, None) => return Ok(raw),
        (Some(_), Some(_)) => bail!("give either classes or groups, not both"),
        (Some(c), None) => c.iter().map(|&k| vec![k]).collect(),
        (None, Some(g)) => parse_groups(g)?,
    };
    let k = raw.classes.len();
    let mut map = vec![None; k];
    for (gi, g) in groups.iter().enumerate() {
        for &c in g {
            if c >= k {
                bail!("class {c} does not exist (the dataset has classes 0..{})", k - 1);
            }
            if map[c].is_some() {
                bail!("class {c} is listed twice");
            }
            map[c] = Some(gi as u32);
        }
    }
    let names = groups.iter().map(|g| g.iter().map(|&c| raw.classes[c].clone()).collect::<Vec<_>>().join("+")).collect();
    let remap = |s: Split| {
        let d = s.sample_len;
        let mut out = Split { x: Vec::new(), y: Vec::new(), sample_len: d, targets: 1 };
        for (i, &y) in s.y.iter().enumerate() {
            if let Some(new) = map[y as usize] {
                out.x.extend_from_slice(&s.x[i * d..(i + 1) * d]);
                out.y.push(new);
            }
        }
        out
    };
    Ok(RawData { sample_shape: raw.sample_shape, classes: names, train: remap(raw.train), test: remap(raw.test) })
}

/// Per-channel mean and standard deviation of the training split (a
/// "channel" is the first axis of an image, or each feature of a vector).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalisation {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Normalisation {
    pub fn fit(train: &Split, sample_shape: &[usize]) -> Self {
        let channels = sample_shape[0];
        let per = train.sample_len / channels;
        let mut sum = vec![0.0f64; channels];
        let mut sq = vec![0.0f64; channels];
        for i in 0..train.len() {
            for (j, v) in train.sample(i).iter().enumerate() {
                sum[j / per] += *v as f64;
                sq[j / per] += (*v as f64) * (*v as f64);
            }
        }
        let n = (train.len() * per) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| {
                let s = (q / n - m * m).max(0.0).sqrt();
                // A constant channel is left unscaled rather than divided by 0.
                if s > 1e-8 {
                    s
                } else {
                    1.0
                }
            })
            .collect();
        Normalisation { mean, std }
    }

    pub fn apply(&self, split: &mut Split) {
        let per = split.sample_len / self.mean.len();
        for (k, v) in split.x.iter_mut().enumerate() {
            let c = (k % split.sample_len) / per;
            *v = ((*v as f64 - self.mean[c]) / self.std[c]) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_parse() {
        assert_eq!(parse_groups("0-4/5-9").unwrap(), vec![vec![0, 1, 2, 3, 4], vec![5, 6, 7, 8, 9]]);
        assert_eq!(parse_groups("0,2/1").unwrap(), vec![vec![0, 2], vec![1]]);
        assert!(parse_groups("0-4").is_err());
        assert!(parse_groups("a/b").is_err());
    }

    #[test]
    fn grouping_relabels_and_normalisation_centres() {
        let split = Split { x: (0..12).map(|v| v as f32).collect(), y: vec![0, 1, 2, 3, 1, 0], sample_len: 2, targets: 1 };
        let raw = RawData { sample_shape: vec![2], classes: (0..4).map(|c| c.to_string()).collect(), train: split.clone(), test: split };
        let out = select_classes(raw, None, Some("0,1/3")).unwrap();
        assert_eq!(out.train.y, vec![0, 0, 1, 0, 0]);
        assert_eq!(out.classes, vec!["0+1", "3"]);
        let mut train = out.train;
        let n = Normalisation::fit(&train, &[2]);
        n.apply(&mut train);
        let m0: f32 = (0..train.len()).map(|i| train.sample(i)[0]).sum::<f32>() / train.len() as f32;
        assert!(m0.abs() < 1e-6);
    }
}
