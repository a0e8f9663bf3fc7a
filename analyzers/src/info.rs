//! Plug-in information measures on discrete predictions (docs/metrics.md, `mu`).
//! All logarithms are base 2; 0·log 0 = 0.

/// Everything `mu` reports for one (F, S, Y) triple.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MuResult {
    /// μ_Y(F;S) = I(F;Y) − I(F;Y|S)
    pub mu: f64,
    pub i_f_y: f64,
    pub i_f_y_given_s: f64,
    pub i_f_s: f64,
    pub i_f_s_given_y: f64,
    /// P(f = s)
    pub agreement: f64,
    /// P(s = y)
    pub surrogate_accuracy: f64,
    pub n: usize,
    /// μ with every entropy in its entropy form, H(F) + H(Y) + H(S) −
    /// H(F,Y) − H(F,S) − H(Y,S) + H(F,Y,S), Miller–Madow corrected: each
    /// plug-in entropy gains (m − 1)/(2n ln 2) bits, m its non-empty cells.
    pub mu_mm: f64,
    /// Non-empty cells of the K×K×K table of (f, s, y).
    pub n_cells_nonempty: usize,
}

/// A K×K×K table of counts, indexed (a, b, c).
struct Counts {
    k: usize,
    c: Vec<f64>,
    n: f64,
}

impl Counts {
    fn new(a: &[usize], b: &[usize], c: &[usize], k: usize) -> Self {
        let mut t = vec![0.0; k * k * k];
        for ((&x, &y), &z) in a.iter().zip(b).zip(c) {
            t[(x * k + y) * k + z] += 1.0;
        }
        Counts { k, c: t, n: a.len() as f64 }
    }
    fn at(&self, a: usize, b: usize, c: usize) -> f64 {
        self.c[(a * self.k + b) * self.k + c]
    }
    /// I(A;B|C) = Σ p(a,b,c) log₂ [p(a,b,c) p(c) / (p(a,c) p(b,c))]
    fn cmi_ab_given_c(&self) -> f64 {
        let k = self.k;
        let mut n_c = vec![0.0; k];
        let mut n_ac = vec![0.0; k * k];
        let mut n_bc = vec![0.0; k * k];
        for a in 0..k {
            for b in 0..k {
                for c in 0..k {
                    let v = self.at(a, b, c);
                    n_c[c] += v;
                    n_ac[a * k + c] += v;
                    n_bc[b * k + c] += v;
                }
            }
        }
        let mut s = 0.0;
        for a in 0..k {
            for b in 0..k {
                for c in 0..k {
                    let v = self.at(a, b, c);
                    if v > 0.0 {
                        s += v / self.n * (v * n_c[c] / (n_ac[a * k + c] * n_bc[b * k + c])).log2();
                    }
                }
            }
        }
        s
    }
}

/// I(A;B) from two label sequences.
pub fn mutual_information(a: &[usize], b: &[usize], k: usize) -> f64 {
    let zeros = vec![0usize; a.len()];
    Counts::new(a, b, &zeros, k).cmi_ab_given_c()
}

/// μ and its parts for predictions `f`, `s` and labels `y` in `0..k`.
/// Returns None for an empty sample.
pub fn mu(f: &[usize], s: &[usize], y: &[usize], k: usize) -> Option<MuResult> {
    let n = f.len();
    if n == 0 || s.len() != n || y.len() != n {
        return None;
    }
    let i_f_y = mutual_information(f, y, k);
    let i_f_s = mutual_information(f, s, k);
    // Counts indexed (f, y, s) for I(F;Y|S), (f, s, y) for I(F;S|Y).
    let i_f_y_given_s = Counts::new(f, y, s, k).cmi_ab_given_c();
    let i_f_s_given_y = Counts::new(f, s, y, k).cmi_ab_given_c();
    let frac = |a: &[usize], b: &[usize]| a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / n as f64;
    // Non-empty cells of each marginal the entropy form of μ uses.
    let cells = |keys: &dyn Fn(usize) -> (usize, usize, usize)| (0..n).map(keys).collect::<std::collections::HashSet<_>>().len() as f64;
    let (m_f, m_y, m_s) = (cells(&|i| (f[i], 0, 0)), cells(&|i| (y[i], 0, 0)), cells(&|i| (s[i], 0, 0)));
    let (m_fy, m_fs, m_ys) = (cells(&|i| (f[i], y[i], 0)), cells(&|i| (f[i], s[i], 0)), cells(&|i| (y[i], s[i], 0)));
    let m_fys = cells(&|i| (f[i], y[i], s[i]));
    let correction = (m_f + m_y + m_s - m_fy - m_fs - m_ys + m_fys - 1.0) / (2.0 * n as f64 * std::f64::consts::LN_2);
    Some(MuResult {
        mu: i_f_y - i_f_y_given_s,
        i_f_y,
        i_f_y_given_s,
        i_f_s,
        i_f_s_given_y,
        agreement: frac(f, s),
        surrogate_accuracy: frac(s, y),
        n,
        mu_mm: i_f_y - i_f_y_given_s + correction,
        n_cells_nonempty: m_fys as usize,
    })
}
