//! Per-unit streaming statistics of a tap's (z, a) over the probe: means,
//! centred second moments and co-moment, each output's range, and how often
//! each input is positive. Everything is accumulated in f64 with centred
//! co-moments merged across chunks (Chan, Golub & LeVeque, 1979), so that a
//! probe seen in chunks gives the same numbers as seen whole, and a unit that
//! acts as the identity gets a residual of ~1e-16, not cancellation noise
//! from raw power sums.
//!
//! Where the numbers are computed: on a GPU (or any non-CPU device) the
//! chunk statistics are candle tensor reductions on that device and the
//! running moments stay there until `finish`. On the CPU they are one fused,
//! rayon-parallel pass over the tensors' own buffers: candle's CPU
//! elementwise operations are single-threaded and would need ten passes with
//! f64 temporaries, several times slower than this. `tensor_path` forces the
//! device code on the CPU, so both are tested against each other.

use candle_core::{DType, Result, Storage, Tensor};
use rayon::prelude::*;

/// Per-unit moments of (x, y) pairs over every sample seen, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitMoments {
    pub n: f64,
    pub mean_x: Vec<f64>,
    pub mean_y: Vec<f64>,
    /// Σ (x − x̄)²
    pub m2_x: Vec<f64>,
    /// Σ (y − ȳ)²
    pub m2_y: Vec<f64>,
    /// Σ (x − x̄)(y − ȳ)
    pub c_xy: Vec<f64>,
    pub min_y: Vec<f32>,
    pub max_y: Vec<f32>,
    /// How many samples had x > 0.
    pub positive_x: Vec<f64>,
}

impl UnitMoments {
    /// The moments of no samples.
    pub fn empty(u: usize) -> Self {
        UnitMoments {
            n: 0.0,
            mean_x: vec![0.0; u],
            mean_y: vec![0.0; u],
            m2_x: vec![0.0; u],
            m2_y: vec![0.0; u],
            c_xy: vec![0.0; u],
            min_y: vec![f32::INFINITY; u],
            max_y: vec![f32::NEG_INFINITY; u],
            positive_x: vec![0.0; u],
        }
    }

    pub fn cols(&self) -> usize {
        self.mean_x.len()
    }

    /// Whether column j's y takes more than one value (exact comparison, so
    /// that a dead ReLU unit is recognised whatever its scale).
    pub fn y_varies(&self, j: usize) -> bool {
        self.max_y[j] > self.min_y[j]
    }

    /// Residual sum of squares of the least-squares fit y ≈ αx + β.
    pub fn residual(&self, j: usize) -> f64 {
        if self.m2_x[j] <= 0.0 {
            return self.m2_y[j];
        }
        let r = self.m2_y[j] - self.c_xy[j] * self.c_xy[j] / self.m2_x[j];
        r.clamp(0.0, self.m2_y[j])
    }
}

/// One chunk's statistics, merged into the running ones.
struct ChunkStats<V> {
    n: f64,
    mean_x: V,
    mean_y: V,
    sxx: V,
    syy: V,
    sxy: V,
    min_y: V,
    max_y: V,
    pos_x: V,
}

/// Running moments of one tap, accumulated where its tensors live.
#[derive(Debug)]
pub struct PairedMoments {
    units: usize,
    tensor_path: bool,
    n: f64,
    host: Option<UnitMoments>,
    device: Option<DeviceMoments>,
}

#[derive(Debug)]
struct DeviceMoments {
    mean_x: Tensor,
    mean_y: Tensor,
    m2_x: Tensor,
    m2_y: Tensor,
    c_xy: Tensor,
    min_y: Tensor,
    max_y: Tensor,
    pos_x: Tensor,
}

impl PairedMoments {
    pub fn new(units: usize) -> Self {
        PairedMoments { units, tensor_path: false, n: 0.0, host: None, device: None }
    }

    /// The device (tensor) code path even on the CPU; for tests.
    pub fn tensor_path(units: usize) -> Self {
        PairedMoments { tensor_path: true, ..Self::new(units) }
    }

    pub fn cols(&self) -> usize {
        self.units
    }

    /// Adds a chunk: x and y shaped `[samples, …]` with `units` values per
    /// sample (flattened in C order).
    pub fn observe(&mut self, x: &Tensor, y: &Tensor) -> Result<()> {
        let b = x.dim(0)?;
        if b == 0 {
            return Ok(());
        }
        let x = x.reshape((b, self.units))?;
        let y = y.reshape((b, self.units))?;
        if x.device().is_cpu() && !self.tensor_path {
            self.observe_host(&x, &y)?;
        } else {
            let s = device_chunk(&x, &y)?;
            self.merge_device(s)?;
        }
        Ok(())
    }

    /// A chunk's statistics merged into the running ones in one fused pass
    /// per block of columns, parallel over blocks and in place: means
    /// first, then centred sums (two reads of the chunk), then the merge.
    /// A transformer's tap has a unit per (position, feature), 1.5M of them
    /// at a 512-token window of a 160M model, seen a few windows at a time:
    /// per-chunk vectors and a sequential merge cost more than the sums.
    fn observe_host(&mut self, x: &Tensor, y: &Tensor) -> Result<()> {
        const BLOCK: usize = 256;
        let (b, u) = x.dims2()?;
        let acc = self.host.get_or_insert_with(|| UnitMoments::empty(u));
        let (na, nb) = (self.n, b as f64);
        let n = na + nb;
        let w = na * nb / n;
        with_cpu_f32(x, |xs| {
            with_cpu_f32(y, |ys| {
                let UnitMoments { mean_x, mean_y, m2_x, m2_y, c_xy, min_y, max_y, positive_x, .. } = acc;
                (
                    mean_x.par_chunks_mut(BLOCK),
                    mean_y.par_chunks_mut(BLOCK),
                    m2_x.par_chunks_mut(BLOCK),
                    m2_y.par_chunks_mut(BLOCK),
                    c_xy.par_chunks_mut(BLOCK),
                    min_y.par_chunks_mut(BLOCK),
                    max_y.par_chunks_mut(BLOCK),
                    positive_x.par_chunks_mut(BLOCK),
                )
                    .into_par_iter()
                    .enumerate()
                    .for_each(|(blk, (amx, amy, am2x, am2y, acxy, amin, amax, apos))| {
                        let (c0, wd) = (blk * BLOCK, amx.len());
                        let (mut mx, mut my, mut pos) = ([0.0f64; BLOCK], [0.0f64; BLOCK], [0.0f64; BLOCK]);
                        let (mut lo, mut hi) = ([f32::INFINITY; BLOCK], [f32::NEG_INFINITY; BLOCK]);
                        for i in 0..b {
                            let (xr, yr) = (&xs[i * u + c0..i * u + c0 + wd], &ys[i * u + c0..i * u + c0 + wd]);
                            for j in 0..wd {
                                mx[j] += xr[j] as f64;
                                my[j] += yr[j] as f64;
                                pos[j] += (xr[j] > 0.0) as u8 as f64;
                                lo[j] = lo[j].min(yr[j]);
                                hi[j] = hi[j].max(yr[j]);
                            }
                        }
                        for j in 0..wd {
                            mx[j] /= nb;
                            my[j] /= nb;
                        }
                        let (mut sxx, mut syy, mut sxy) = ([0.0f64; BLOCK], [0.0f64; BLOCK], [0.0f64; BLOCK]);
                        for i in 0..b {
                            let (xr, yr) = (&xs[i * u + c0..i * u + c0 + wd], &ys[i * u + c0..i * u + c0 + wd]);
                            for j in 0..wd {
                                let dx = xr[j] as f64 - mx[j];
                                let dy = yr[j] as f64 - my[j];
                                sxx[j] += dx * dx;
                                syy[j] += dy * dy;
                                sxy[j] += dx * dy;
                            }
                        }
                        // Chan et al.'s merge of (na samples so far) with (nb new ones).
                        for j in 0..wd {
                            let dx = mx[j] - amx[j];
                            let dy = my[j] - amy[j];
                            am2x[j] += sxx[j] + dx * dx * w;
                            am2y[j] += syy[j] + dy * dy * w;
                            acxy[j] += sxy[j] + dx * dy * w;
                            amx[j] += dx * nb / n;
                            amy[j] += dy * nb / n;
                            amin[j] = amin[j].min(lo[j]);
                            amax[j] = amax[j].max(hi[j]);
                            apos[j] += pos[j];
                        }
                    })
            })
        })??;
        acc.n = n;
        self.n = n;
        Ok(())
    }

    fn merge_device(&mut self, s: ChunkStats<Tensor>) -> Result<()> {
        let (na, nb) = (self.n, s.n);
        let n = na + nb;
        self.device = Some(match self.device.take() {
            None => DeviceMoments {
                mean_x: s.mean_x,
                mean_y: s.mean_y,
                m2_x: s.sxx,
                m2_y: s.syy,
                c_xy: s.sxy,
                min_y: s.min_y,
                max_y: s.max_y,
                pos_x: s.pos_x,
            },
            Some(acc) => {
                let w = na * nb / n;
                let dx = (&s.mean_x - &acc.mean_x)?;
                let dy = (&s.mean_y - &acc.mean_y)?;
                DeviceMoments {
                    m2_x: ((&acc.m2_x + &s.sxx)? + (dx.sqr()? * w)?)?,
                    m2_y: ((&acc.m2_y + &s.syy)? + (dy.sqr()? * w)?)?,
                    c_xy: ((&acc.c_xy + &s.sxy)? + ((&dx * &dy)? * w)?)?,
                    mean_x: (&acc.mean_x + (dx * (nb / n))?)?,
                    mean_y: (&acc.mean_y + (dy * (nb / n))?)?,
                    min_y: acc.min_y.minimum(&s.min_y)?,
                    max_y: acc.max_y.maximum(&s.max_y)?,
                    pos_x: (&acc.pos_x + &s.pos_x)?,
                }
            }
        });
        self.n = n;
        Ok(())
    }

    /// The moments over every sample seen, on the host (units-sized vectors).
    pub fn finish(&self) -> Result<UnitMoments> {
        if let Some(h) = &self.host {
            return Ok(h.clone());
        }
        let u = self.units;
        let Some(d) = &self.device else { return Ok(UnitMoments::empty(u)) };
        let v = |t: &Tensor| t.to_vec1::<f64>();
        Ok(UnitMoments {
            n: self.n,
            mean_x: v(&d.mean_x)?,
            mean_y: v(&d.mean_y)?,
            m2_x: v(&d.m2_x)?,
            m2_y: v(&d.m2_y)?,
            c_xy: v(&d.c_xy)?,
            min_y: d.min_y.to_dtype(DType::F32)?.to_vec1()?,
            max_y: d.max_y.to_dtype(DType::F32)?.to_vec1()?,
            positive_x: v(&d.pos_x)?,
        })
    }
}

/// Chunk statistics as tensor reductions on the tensors' device, in f64.
fn device_chunk(x: &Tensor, y: &Tensor) -> Result<ChunkStats<Tensor>> {
    let b = x.dim(0)?;
    let xd = x.to_dtype(DType::F64)?;
    let yd = y.to_dtype(DType::F64)?;
    let mean_x = xd.mean(0)?;
    let mean_y = yd.mean(0)?;
    let dx = xd.broadcast_sub(&mean_x)?;
    let dy = yd.broadcast_sub(&mean_y)?;
    Ok(ChunkStats {
        n: b as f64,
        sxx: dx.sqr()?.sum(0)?,
        syy: dy.sqr()?.sum(0)?,
        sxy: (&dx * &dy)?.sum(0)?,
        mean_x,
        mean_y,
        min_y: y.min(0)?,
        max_y: y.max(0)?,
        pos_x: x.gt(0.0)?.to_dtype(DType::F64)?.sum(0)?,
    })
}

/// A contiguous CPU tensor's f32 values, without a copy when it is f32.
pub fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = if t.dtype() == DType::F32 { t.contiguous()? } else { t.to_dtype(DType::F32)?.contiguous()? };
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => {
            let all = cpu.as_slice::<f32>()?;
            let start = layout.start_offset();
            Ok(f(&all[start..start + t.elem_count()]))
        }
        _ => candle_core::bail!("with_cpu_f32: the tensor is not on the CPU"),
    }
}

/// Binary entropy in bits, with 0·log 0 = 0.
pub fn binary_entropy_bits(p: f64) -> f64 {
    let h = |q: f64| if q <= 0.0 { 0.0 } else { -q * q.log2() };
    h(p) + h(1.0 - p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn tensors(rows: usize, cols: usize, x: &[f32], y: &[f32]) -> (Tensor, Tensor) {
        (Tensor::from_slice(x, (rows, cols), &Device::Cpu).unwrap(), Tensor::from_slice(y, (rows, cols), &Device::Cpu).unwrap())
    }

    fn chunked(x: &[f32], y: &[f32], cols: usize, split: &[usize], tensor_path: bool) -> UnitMoments {
        let mut m = if tensor_path { PairedMoments::tensor_path(cols) } else { PairedMoments::new(cols) };
        let mut start = 0;
        for &rows in split {
            let (xt, yt) = tensors(rows, cols, &x[start * cols..(start + rows) * cols], &y[start * cols..(start + rows) * cols]);
            m.observe(&xt, &yt).unwrap();
            start += rows;
        }
        m.finish().unwrap()
    }

    #[test]
    fn chunked_equals_whole_on_both_paths() {
        let x: Vec<f32> = (0..40).map(|i| ((i * 7) % 11) as f32 - 3.0).collect();
        let y: Vec<f32> = x.iter().map(|v| v.max(0.0) + 0.1 * v).collect();
        let whole = chunked(&x, &y, 4, &[10], false);
        for (split, tensor) in [(&[3usize, 7][..], false), (&[10][..], true), (&[3, 7][..], true), (&[1, 4, 5][..], true)] {
            let parts = chunked(&x, &y, 4, split, tensor);
            for j in 0..4 {
                assert!((whole.m2_x[j] - parts.m2_x[j]).abs() < 1e-9);
                assert!((whole.c_xy[j] - parts.c_xy[j]).abs() < 1e-9);
                assert!((whole.residual(j) - parts.residual(j)).abs() < 1e-9);
                assert!((whole.mean_y[j] - parts.mean_y[j]).abs() < 1e-12);
                assert_eq!(whole.min_y[j], parts.min_y[j]);
                assert_eq!(whole.max_y[j], parts.max_y[j]);
                assert_eq!(whole.positive_x[j], parts.positive_x[j]);
            }
        }
    }

    #[test]
    fn host_and_tensor_paths_agree_on_wide_taps() {
        // More columns than one host block, rows in uneven chunks.
        let (rows, cols) = (37, 700);
        let x: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0).collect();
        let y: Vec<f32> = x.iter().map(|v| v.max(0.0)).collect();
        let a = chunked(&x, &y, cols, &[16, 16, 5], false);
        let b = chunked(&x, &y, cols, &[16, 16, 5], true);
        assert_eq!(a.n, b.n);
        for j in 0..cols {
            assert!((a.m2_x[j] - b.m2_x[j]).abs() <= 1e-9 * a.m2_x[j].max(1.0));
            assert!((a.c_xy[j] - b.c_xy[j]).abs() <= 1e-9 * a.m2_x[j].max(1.0));
            assert!((a.residual(j) - b.residual(j)).abs() <= 1e-9 * a.m2_y[j].max(1.0));
            assert_eq!(a.positive_x[j], b.positive_x[j]);
            assert_eq!((a.min_y[j], a.max_y[j]), (b.min_y[j], b.max_y[j]));
        }
    }

    #[test]
    fn entropy_values() {
        assert_eq!(binary_entropy_bits(0.0), 0.0);
        assert_eq!(binary_entropy_bits(1.0), 0.0);
        assert!((binary_entropy_bits(0.5) - 1.0).abs() < 1e-15);
    }
}
