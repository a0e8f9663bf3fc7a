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

/// The non-empty cells of a K×K×K table of counts, indexed (a, b, c), in
/// lexicographic order. Sparse: a language model's K is its vocabulary
/// (50,304 for Pythia), where a dense table could not be allocated, and at
/// most n cells are filled. Counts are whole numbers, exact in f64, and the
/// sum below runs over the cells in the dense loops' order, so the result
/// is the dense table's to the bit.
struct Counts {
    cells: Vec<((usize, usize, usize), f64)>,
    n: f64,
}

impl Counts {
    fn new(a: &[usize], b: &[usize], c: &[usize]) -> Self {
        let mut keys: Vec<(usize, usize, usize)> = a.iter().zip(b).zip(c).map(|((&x, &y), &z)| (x, y, z)).collect();
        keys.sort_unstable();
        let mut cells: Vec<((usize, usize, usize), f64)> = Vec::new();
        for key in keys {
            match cells.last_mut() {
                Some((k, v)) if *k == key => *v += 1.0,
                _ => cells.push((key, 1.0)),
            }
        }
        Counts { cells, n: a.len() as f64 }
    }
    /// I(A;B|C) = Σ p(a,b,c) log₂ [p(a,b,c) p(c) / (p(a,c) p(b,c))]
    fn cmi_ab_given_c(&self) -> f64 {
        use std::collections::HashMap;
        let mut n_c: HashMap<usize, f64> = HashMap::new();
        let mut n_ac: HashMap<(usize, usize), f64> = HashMap::new();
        let mut n_bc: HashMap<(usize, usize), f64> = HashMap::new();
        for &((a, b, c), v) in &self.cells {
            *n_c.entry(c).or_default() += v;
            *n_ac.entry((a, c)).or_default() += v;
            *n_bc.entry((b, c)).or_default() += v;
        }
        let mut s = 0.0;
        for &((a, b, c), v) in &self.cells {
            s += v / self.n * (v * n_c[&c] / (n_ac[&(a, c)] * n_bc[&(b, c)])).log2();
        }
        s
    }
}

/// I(A;B) from two label sequences.
/// Values are classes in `0..k`; the counts are kept sparsely, so `k`
/// bounds nothing but is checked in debug builds.
pub fn mutual_information(a: &[usize], b: &[usize], k: usize) -> f64 {
    debug_assert!(a.iter().chain(b).all(|&v| v < k), "a class outside 0..{k}");
    let zeros = vec![0usize; a.len()];
    Counts::new(a, b, &zeros).cmi_ab_given_c()
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
    let i_f_y_given_s = Counts::new(f, y, s).cmi_ab_given_c();
    let i_f_s_given_y = Counts::new(f, s, y).cmi_ab_given_c();
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
