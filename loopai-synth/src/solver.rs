//! Dual coordinate descent for L2-regularised linear classifiers, as liblinear solves
//! them: the squared-hinge (L2-loss) SVM of Hsieh et al. (2008), with shrinking, and
//! logistic regression of Yu, Huang & Lin (2011). Binary problems over rows of a CSR
//! matrix; multi-class models are one-vs-rest. The bias is a regularised input of constant
//! value 1 (liblinear's `-B 1`). Each row has its own cost `C * weight(class)`, which gives
//! class weights for imbalanced sets. Solutions are warm-started along a path of
//! increasing `C`. Deterministic: the visiting order comes from a seeded shuffle.

use crate::rng::Rng;

/// Sparse rows: row `i` is `indices[indptr[i]..indptr[i+1]]` with its `values`, in the
/// runtime's summation order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Csr {
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
    /// Number of columns.
    pub dim: usize,
}

impl Csr {
    /// An empty matrix of `dim` columns.
    pub(crate) fn new(dim: usize) -> Csr {
        Csr {
            indptr: vec![0],
            indices: Vec::new(),
            values: Vec::new(),
            dim,
        }
    }

    /// Appends a row.
    pub(crate) fn push(&mut self, row: &[(u32, f32)]) {
        self.indices.extend(row.iter().map(|e| e.0));
        self.values.extend(row.iter().map(|e| e.1));
        self.indptr.push(self.indices.len());
    }

    /// Number of rows.
    #[cfg(test)]
    fn rows(&self) -> usize {
        self.indptr.len() - 1
    }

    /// Row `i`'s indices and values.
    #[inline]
    pub(crate) fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.indptr[i], self.indptr[i + 1]);
        (&self.indices[a..b], &self.values[a..b])
    }

    /// `bias + x_i · w` summed as the runtime sums it (f64, in entry order), with `w` in
    /// f32 as a program stores it.
    #[inline]
    pub(crate) fn dot32(&self, i: usize, w: &[f32], bias: f64) -> f64 {
        let (idx, val) = self.row(i);
        let mut z = bias;
        for (&j, &v) in idx.iter().zip(val) {
            z += f64::from(w[j as usize]) * f64::from(v);
        }
        z
    }

    #[inline]
    fn dot(&self, i: usize, w: &[f64]) -> f64 {
        let (idx, val) = self.row(i);
        let mut z = w[self.dim];
        for (&j, &v) in idx.iter().zip(val) {
            z += w[j as usize] * f64::from(v);
        }
        z
    }

    #[inline]
    fn axpy(&self, i: usize, a: f64, w: &mut [f64]) {
        let (idx, val) = self.row(i);
        for (&j, &v) in idx.iter().zip(val) {
            w[j as usize] += a * f64::from(v);
        }
        w[self.dim] += a;
    }

    /// `|x_i|^2 + 1` (the bias input).
    fn sq_norm(&self, i: usize) -> f64 {
        let (_, val) = self.row(i);
        1.0 + val
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
    }
}

/// The loss of a linear classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loss {
    /// `max(0, 1 - y w·x)^2`: the L2-loss linear SVM (scikit-learn's `LinearSVC`).
    SquaredHinge,
    /// `log(1 + exp(-y w·x))`: logistic regression.
    Logistic,
}

impl Loss {
    /// Short name for reports: `svm`, `logreg`.
    pub(crate) fn short(self) -> &'static str {
        match self {
            Loss::SquaredHinge => "svm",
            Loss::Logistic => "logreg",
        }
    }
}

/// Stopping tolerance on the projected gradient (liblinear's default for dual solvers).
const EPS: f64 = 0.1;
/// Most passes over the rows per solve.
const MAX_ITER: usize = 300;

/// One binary problem: `rows` of `x`, their signs (+1 for the positive class) and their
/// cost weights (the row's cost is `C * weight`).
pub(crate) struct Binary<'a> {
    pub x: &'a Csr,
    pub rows: &'a [usize],
    pub sign: Vec<f64>,
    pub weight: Vec<f64>,
}

/// The solver's state: the dual variables and the primal weights `w = sum y_i a_i x_i`
/// (`dim + 1` numbers, the last one the bias). Kept between solves to warm-start the next
/// `C` of a path.
pub(crate) struct Dual {
    loss: Loss,
    /// For the SVM one per row; for logistic regression two per row (`a_i`, `C_i - a_i`).
    alpha: Vec<f64>,
    pub w: Vec<f64>,
    c: f64,
    sq: Vec<f64>,
    rng: Rng,
}

impl Dual {
    /// A fresh state for `problem` (nothing solved yet).
    pub(crate) fn new(problem: &Binary<'_>, loss: Loss, seed: u64) -> Dual {
        let n = problem.rows.len();
        Dual {
            loss,
            alpha: Vec::with_capacity(if loss == Loss::Logistic { 2 * n } else { n }),
            w: vec![0.0; problem.x.dim + 1],
            c: 0.0,
            sq: problem.rows.iter().map(|&r| problem.x.sq_norm(r)).collect(),
            rng: Rng::new(seed),
        }
    }

    /// Solves `problem` at cost `c`, starting from the previous solution when there is one.
    pub(crate) fn solve(&mut self, problem: &Binary<'_>, c: f64) {
        match self.loss {
            Loss::SquaredHinge => self.solve_svm(problem, c),
            Loss::Logistic => self.solve_logistic(problem, c),
        }
        self.c = c;
    }

    fn solve_svm(&mut self, p: &Binary<'_>, c: f64) {
        let n = p.rows.len();
        if self.alpha.len() != n {
            self.alpha = vec![0.0; n];
        }
        // L2 loss: no upper bound, a diagonal `1 / (2 C_i)` added to Q. The previous
        // solution stays feasible (alpha >= 0), so it is a warm start as it is.
        let diag: Vec<f64> = p.weight.iter().map(|&wt| 0.5 / (c * wt)).collect();
        let qd: Vec<f64> = self.sq.iter().zip(&diag).map(|(s, d)| s + d).collect();
        let mut index: Vec<usize> = (0..n).collect();
        let mut active = n;
        // No upper bound on alpha: only rows at 0 whose gradient is above the last pass's
        // largest projected gradient are shrunk.
        let mut pg_max_old = f64::INFINITY;
        let mut iter = 0;
        while iter < MAX_ITER {
            let (mut pg_max, mut pg_min) = (f64::NEG_INFINITY, f64::INFINITY);
            self.rng.shuffle(&mut index[..active]);
            let mut s = 0;
            while s < active {
                let i = index[s];
                let r = p.rows[i];
                let yi = p.sign[i];
                let g = yi * p.x.dot(r, &self.w) - 1.0 + self.alpha[i] * diag[i];
                let mut pg = 0.0;
                if self.alpha[i] == 0.0 {
                    if g > pg_max_old {
                        active -= 1;
                        index.swap(s, active);
                        continue;
                    } else if g < 0.0 {
                        pg = g;
                    }
                } else {
                    pg = g;
                }
                pg_max = pg_max.max(pg);
                pg_min = pg_min.min(pg);
                if pg.abs() > 1e-12 {
                    let old = self.alpha[i];
                    self.alpha[i] = (old - g / qd[i]).max(0.0);
                    p.x.axpy(r, (self.alpha[i] - old) * yi, &mut self.w);
                }
                s += 1;
            }
            iter += 1;
            if pg_max - pg_min <= EPS {
                if active == n {
                    break;
                }
                // Converged on the active set: check every row once more.
                active = n;
                pg_max_old = f64::INFINITY;
                continue;
            }
            pg_max_old = if pg_max <= 0.0 { f64::INFINITY } else { pg_max };
        }
    }

    fn solve_logistic(&mut self, p: &Binary<'_>, c: f64) {
        let n = p.rows.len();
        let upper: Vec<f64> = p.weight.iter().map(|&wt| c * wt).collect();
        if self.alpha.len() == 2 * n && self.c > 0.0 {
            // Warm start: scale the previous solution into the new box (0, C_i); `w` is
            // linear in the alphas.
            let ratio = c / self.c;
            for (pair, &ci) in self.alpha.chunks_exact_mut(2).zip(&upper) {
                pair[0] *= ratio;
                pair[1] = ci - pair[0];
            }
            self.w.iter_mut().for_each(|v| *v *= ratio);
        } else {
            self.alpha = vec![0.0; 2 * n];
            self.w.iter_mut().for_each(|v| *v = 0.0);
            for (i, (pair, &ci)) in self.alpha.chunks_exact_mut(2).zip(&upper).enumerate() {
                let a = (1e-3 * ci).min(1e-8);
                pair[0] = a;
                pair[1] = ci - a;
                p.x.axpy(p.rows[i], p.sign[i] * a, &mut self.w);
            }
        }
        const MAX_INNER: usize = 100;
        let inner_eps_min = EPS.min(1e-8);
        let mut inner_eps = 1e-2;
        let mut index: Vec<usize> = (0..n).collect();
        for _ in 0..MAX_ITER {
            self.rng.shuffle(&mut index);
            let mut newton = 0usize;
            let mut g_max = 0.0f64;
            for &i in &index {
                let r = p.rows[i];
                let yi = p.sign[i];
                let ci = upper[i];
                let a = self.sq[i];
                let b = yi * p.x.dot(r, &self.w);
                // Minimise over z = alpha[ind1] in (0, C): a/2 (z - z_old)^2 + sign b z
                // + z ln z + (C - z) ln(C - z).
                let (mut ind1, mut ind2, mut sign) = (2 * i, 2 * i + 1, 1.0);
                if 0.5 * a * (self.alpha[ind2] - self.alpha[ind1]) + b < 0.0 {
                    ind1 = 2 * i + 1;
                    ind2 = 2 * i;
                    sign = -1.0;
                }
                let old = self.alpha[ind1];
                let mut z = old;
                if ci - z < 0.5 * ci {
                    z *= 0.1;
                }
                let mut gp = a * (z - old) + sign * b + (z / (ci - z)).ln();
                g_max = g_max.max(gp.abs());
                let mut inner = 0;
                while inner <= MAX_INNER {
                    if gp.abs() < inner_eps {
                        break;
                    }
                    let gpp = a + ci / (ci - z) / z;
                    let next = z - gp / gpp;
                    z = if next <= 0.0 { z * 0.1 } else { next };
                    gp = a * (z - old) + sign * b + (z / (ci - z)).ln();
                    newton += 1;
                    inner += 1;
                }
                if inner > 0 {
                    self.alpha[ind1] = z;
                    self.alpha[ind2] = ci - z;
                    p.x.axpy(r, sign * (z - old) * yi, &mut self.w);
                }
            }
            if g_max < EPS {
                break;
            }
            if newton <= n / 10 {
                inner_eps = inner_eps_min.max(0.1 * inner_eps);
            }
        }
    }
}

/// Int8 quantization of one column of weights: `q * scale` approximates `w`, with
/// `scale = max |w| / 127` (1 when every weight is 0).
pub(crate) fn quantize(w: &[f64]) -> (Vec<i8>, f64) {
    let max = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if max == 0.0 || !max.is_finite() {
        return (vec![0; w.len()], 1.0);
    }
    let scale = max / 127.0;
    let q = w
        .iter()
        .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (q, scale)
}

/// The weight a program loads for `q` at `scale` (as the runtime computes it).
#[inline]
pub(crate) fn dequantize(q: i8, scale: f64) -> f32 {
    (f64::from(q) * scale) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two noisy clusters in 20 dimensions, labels from a hidden linear rule.
    fn problem(n: usize) -> (Csr, Vec<f64>) {
        let mut rng = Rng::new(3);
        let mut x = Csr::new(20);
        let mut y = Vec::new();
        for _ in 0..n {
            let mut row = Vec::new();
            let mut s = 0.0;
            for j in 0..20u32 {
                if rng.below(3) == 0 {
                    let v = (rng.below(100) as f32) / 50.0 - 1.0;
                    s += if j < 10 { v } else { -0.5 * v } as f64;
                    row.push((j, v));
                }
            }
            x.push(&row);
            y.push(if s > 0.0 { 1.0 } else { -1.0 });
        }
        (x, y)
    }

    fn accuracy(x: &Csr, y: &[f64], w: &[f64]) -> f64 {
        let ok = (0..x.rows())
            .filter(|&i| (x.dot(i, w) > 0.0) == (y[i] > 0.0))
            .count();
        ok as f64 / x.rows() as f64
    }

    #[test]
    fn both_losses_learn_a_linear_rule_and_warm_starts_agree_with_cold_ones() {
        let (x, y) = problem(400);
        let rows: Vec<usize> = (0..400).collect();
        for loss in [Loss::SquaredHinge, Loss::Logistic] {
            let p = Binary {
                x: &x,
                rows: &rows,
                sign: y.clone(),
                weight: vec![1.0; 400],
            };
            let mut warm = Dual::new(&p, loss, 1);
            for c in [0.1, 1.0, 10.0] {
                warm.solve(&p, c);
            }
            assert!(accuracy(&x, &y, &warm.w) > 0.95, "{loss:?}");
            let mut cold = Dual::new(&p, loss, 1);
            cold.solve(&p, 10.0);
            // Same optimum up to the stopping tolerance.
            let diff: f64 = warm
                .w
                .iter()
                .zip(&cold.w)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            let size = cold.w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(diff < 0.1 * size, "{loss:?}: {diff} vs {size}");
        }
    }

    #[test]
    fn a_heavier_class_weight_moves_the_boundary_towards_the_other_class() {
        let (x, y) = problem(300);
        let rows: Vec<usize> = (0..300).collect();
        let positives = |weight: f64| {
            let p = Binary {
                x: &x,
                rows: &rows,
                sign: y.clone(),
                weight: y
                    .iter()
                    .map(|&s| if s > 0.0 { weight } else { 1.0 })
                    .collect(),
            };
            let mut d = Dual::new(&p, Loss::SquaredHinge, 1);
            d.solve(&p, 0.01);
            (0..300).filter(|&i| x.dot(i, &d.w) > 0.0).count()
        };
        assert!(positives(10.0) > positives(1.0));
    }

    #[test]
    fn quantized_weights_stay_within_half_a_step() {
        let w = [0.0, 1.27, -0.64, 0.001, -1.27];
        let (q, scale) = quantize(&w);
        assert_eq!(q, vec![0, 127, -64, 0, -127]);
        for (v, &qi) in w.iter().zip(&q) {
            assert!((f64::from(dequantize(qi, scale)) - v).abs() <= scale / 2.0 + 1e-9);
        }
        assert_eq!(quantize(&[0.0, 0.0]), (vec![0, 0], 1.0));
    }
}
