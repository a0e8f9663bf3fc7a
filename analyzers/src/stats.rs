//! Streaming statistics shared by analyzers. Everything is accumulated in f64
//! with centred co-moments merged across chunks (Chan, Golub & LeVeque, 1979),
//! so that a probe seen in chunks gives the same numbers as seen whole, and a
//! unit that acts as the identity gets a residual of ~1e-16, not cancellation
//! noise from raw power sums.

use crate::capture::Matrix;

/// Per-column means, variances and cross-moment of two matrices (x, y) with
/// the same shape, plus each y column's range.
#[derive(Debug, Clone)]
pub struct PairedMoments {
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
}

impl PairedMoments {
    pub fn new(cols: usize) -> Self {
        PairedMoments {
            n: 0.0,
            mean_x: vec![0.0; cols],
            mean_y: vec![0.0; cols],
            m2_x: vec![0.0; cols],
            m2_y: vec![0.0; cols],
            c_xy: vec![0.0; cols],
            min_y: vec![f32::INFINITY; cols],
            max_y: vec![f32::NEG_INFINITY; cols],
        }
    }

    pub fn cols(&self) -> usize {
        self.mean_x.len()
    }

    /// Adds a chunk: two passes over it (means, then centred sums), then a
    /// merge into the running moments.
    pub fn observe(&mut self, x: Matrix<'_>, y: Matrix<'_>) {
        debug_assert_eq!((x.rows, x.cols), (y.rows, y.cols));
        let cols = self.cols();
        let nb = x.rows as f64;
        if x.rows == 0 {
            return;
        }
        let mut mx = vec![0.0f64; cols];
        let mut my = vec![0.0f64; cols];
        for i in 0..x.rows {
            let (xr, yr) = (x.row(i), y.row(i));
            for j in 0..cols {
                mx[j] += xr[j] as f64;
                my[j] += yr[j] as f64;
                self.min_y[j] = self.min_y[j].min(yr[j]);
                self.max_y[j] = self.max_y[j].max(yr[j]);
            }
        }
        for j in 0..cols {
            mx[j] /= nb;
            my[j] /= nb;
        }
        let mut sxx = vec![0.0f64; cols];
        let mut syy = vec![0.0f64; cols];
        let mut sxy = vec![0.0f64; cols];
        for i in 0..x.rows {
            let (xr, yr) = (x.row(i), y.row(i));
            for j in 0..cols {
                let dx = xr[j] as f64 - mx[j];
                let dy = yr[j] as f64 - my[j];
                sxx[j] += dx * dx;
                syy[j] += dy * dy;
                sxy[j] += dx * dy;
            }
        }
        let na = self.n;
        let n = na + nb;
        for j in 0..cols {
            let dx = mx[j] - self.mean_x[j];
            let dy = my[j] - self.mean_y[j];
            let w = na * nb / n;
            self.m2_x[j] += sxx[j] + dx * dx * w;
            self.m2_y[j] += syy[j] + dy * dy * w;
            self.c_xy[j] += sxy[j] + dx * dy * w;
            self.mean_x[j] += dx * nb / n;
            self.mean_y[j] += dy * nb / n;
        }
        self.n = n;
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

/// Binary entropy in bits, with 0·log 0 = 0.
pub fn binary_entropy_bits(p: f64) -> f64 {
    let h = |q: f64| if q <= 0.0 { 0.0 } else { -q * q.log2() };
    h(p) + h(1.0 - p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_equals_whole() {
        let x: Vec<f32> = (0..40).map(|i| ((i * 7) % 11) as f32 - 3.0).collect();
        let y: Vec<f32> = x.iter().map(|v| v.max(0.0) + 0.1 * v).collect();
        let mut whole = PairedMoments::new(4);
        whole.observe(Matrix::new(10, 4, &x), Matrix::new(10, 4, &y));
        let mut parts = PairedMoments::new(4);
        parts.observe(Matrix::new(3, 4, &x[..12]), Matrix::new(3, 4, &y[..12]));
        parts.observe(Matrix::new(7, 4, &x[12..]), Matrix::new(7, 4, &y[12..]));
        for j in 0..4 {
            assert!((whole.m2_x[j] - parts.m2_x[j]).abs() < 1e-9);
            assert!((whole.c_xy[j] - parts.c_xy[j]).abs() < 1e-9);
            assert!((whole.residual(j) - parts.residual(j)).abs() < 1e-9);
            assert!((whole.mean_y[j] - parts.mean_y[j]).abs() < 1e-12);
        }
    }

    #[test]
    fn entropy_values() {
        assert_eq!(binary_entropy_bits(0.0), 0.0);
        assert_eq!(binary_entropy_bits(1.0), 0.0);
        assert!((binary_entropy_bits(0.5) - 1.0).abs() < 1e-15);
    }
}
