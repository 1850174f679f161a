//! Linear models over sparse vectors: L2-regularised logistic regression (sigmoid for two
//! classes, softmax otherwise) trained by SGD with a seeded shuffle, multinomial naive
//! Bayes, temperature calibration, and scoring that reproduces the runtime's arithmetic
//! (f32 weights, f64 sums in the vector's order, `libm::exp`).

use crate::rng::Rng;

/// A sparse model input: `(index, value)` in the runtime's summation order.
pub(crate) type SparseVec = Vec<(u32, f32)>;

/// A trained linear scorer: `z = bias + x·W` with `W` row-major `dim × width`.
#[derive(Debug, Clone)]
pub(crate) struct LinearModel {
    /// 1 (sigmoid, two classes) or the number of classes (softmax).
    pub width: usize,
    pub weights: Vec<f32>,
    pub bias: Vec<f64>,
    pub temperature: f64,
    /// Naive Bayes (`bias` = class log priors, `weights` = feature log probabilities).
    pub bayes: bool,
}

impl LinearModel {
    /// Raw scores `z` of one input, as the runtime sums them.
    pub(crate) fn logits(&self, x: &[(u32, f32)], z: &mut Vec<f64>) {
        z.clear();
        z.extend_from_slice(&self.bias);
        let w = self.width;
        for &(i, v) in x {
            let row = &self.weights[i as usize * w..i as usize * w + w];
            let v = f64::from(v);
            for (zc, wc) in z.iter_mut().zip(row) {
                *zc += f64::from(*wc) * v;
            }
        }
    }

    /// The class the runtime outputs for logits `z` (classes are the output labels in
    /// order), with its probability.
    pub(crate) fn predict_logits(&self, z: &[f64], classes: usize) -> (usize, f64) {
        let inv_t = 1.0 / self.temperature;
        let mut p = vec![0.0f64; classes];
        probs(z, inv_t, self.width == 1, &mut p);
        argmax(&p)
    }

    pub(crate) fn predict(&self, x: &[(u32, f32)], classes: usize, z: &mut Vec<f64>) -> usize {
        self.logits(x, z);
        self.predict_logits(z, classes).0
    }
}

/// Probabilities from logits, exactly as the runtime computes them.
pub(crate) fn probs(z: &[f64], inv_t: f64, sigmoid: bool, out: &mut [f64]) {
    if sigmoid {
        let p1 = 1.0 / (1.0 + libm::exp(-z[0] * inv_t));
        out[0] = 1.0 - p1;
        out[1] = p1;
    } else {
        let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for (o, &zc) in out.iter_mut().zip(z) {
            *o = libm::exp((zc - max) * inv_t);
            sum += *o;
        }
        out.iter_mut().for_each(|o| *o /= sum);
    }
}

/// Index of the largest value (the first on a tie) and the value.
pub(crate) fn argmax(p: &[f64]) -> (usize, f64) {
    let mut best = 0;
    for i in 1..p.len() {
        if p[i] > p[best] {
            best = i;
        }
    }
    (best, p[best])
}

/// Settings of one logistic-regression fit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogRegParams {
    /// L2 strength (per-example objective `mean loss + lambda/2 |w|^2`).
    pub lambda: f64,
    pub epochs: usize,
    pub seed: u64,
}

/// Number of SGD epochs for `n` examples: about 40 000 updates, between 12 and 400 epochs.
pub(crate) fn epochs_for(n: usize) -> usize {
    (40_000 / n.max(1)).clamp(12, 400)
}

/// Initial step sizes tried by [`train_logreg`] (see [`calibrate_eta0`]).
const ETA0_GRID: [f64; 6] = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0];
/// Rows of the calibration sample of [`calibrate_eta0`].
const CALIBRATION_ROWS: usize = 1000;

/// Trains logistic regression by SGD with step `eta_t = eta0 / (1 + eta0 lambda t)` and
/// the L2 shrinkage applied lazily through a global scale, over `rows` of `xs`. `eta0` is
/// calibrated first on a sample of the rows ([`calibrate_eta0`]).
pub(crate) fn train_logreg(
    xs: &[SparseVec],
    y: &[usize],
    rows: &[usize],
    dim: usize,
    classes: usize,
    p: LogRegParams,
) -> LinearModel {
    let eta0 = calibrate_eta0(xs, y, rows, dim, classes, p);
    let (weights, bias) = sgd(xs, y, rows, dim, classes, p, eta0, p.epochs);
    LinearModel {
        width: width_of(classes),
        weights: weights.iter().map(|&v| v as f32).collect(),
        bias,
        temperature: 1.0,
        bayes: false,
    }
}

fn width_of(classes: usize) -> usize {
    if classes == 2 {
        1
    } else {
        classes
    }
}

/// Bottou's recipe for the initial step of SGD: on a sample of the rows, run one epoch
/// with each step of [`ETA0_GRID`] and keep the one that lowers the regularised objective
/// most. Too small a step leaves weakly regularised models far from their optimum after
/// the epochs they get; too large a one diverges. Deterministic.
fn calibrate_eta0(
    xs: &[SparseVec],
    y: &[usize],
    rows: &[usize],
    dim: usize,
    classes: usize,
    p: LogRegParams,
) -> f64 {
    let step = rows.len().div_ceil(CALIBRATION_ROWS).max(1);
    let sample: Vec<usize> = rows.iter().step_by(step).copied().collect();
    let mut best = (f64::INFINITY, ETA0_GRID[0]);
    for eta0 in ETA0_GRID {
        // The lazy L2 shrinkage multiplies by `1 - eta lambda`: keep it well above 0.
        if eta0 > ETA0_GRID[0] && eta0 * p.lambda >= 0.5 {
            break;
        }
        let (w, bias) = sgd(xs, y, &sample, dim, classes, p, eta0, 1);
        let loss = objective(xs, y, &sample, classes, &w, &bias, p.lambda);
        // Strictly lower only: on a tie the smaller, safer step wins.
        if loss < best.0 {
            best = (loss, eta0);
        }
    }
    best.1
}

/// `mean log-loss + lambda/2 (|w|^2 + |bias|^2)` over `rows`.
fn objective(
    xs: &[SparseVec],
    y: &[usize],
    rows: &[usize],
    classes: usize,
    w: &[f64],
    bias: &[f64],
    lambda: f64,
) -> f64 {
    let width = width_of(classes);
    let mut z = vec![0.0f64; width];
    let mut loss = 0.0;
    for &r in rows {
        scores(&xs[r], w, 1.0, bias, &mut z);
        loss += if width == 1 {
            // log(1 + e^-m) for the margin m of the true class, computed stably.
            let m = if y[r] == 1 { z[0] } else { -z[0] };
            if m > 0.0 {
                (-m).exp().ln_1p()
            } else {
                -m + m.exp().ln_1p()
            }
        } else {
            let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = z.iter().map(|zc| (zc - max).exp()).sum();
            max + sum.ln() - z[y[r]]
        };
    }
    let norm: f64 = w.iter().chain(bias).map(|v| v * v).sum();
    let loss = loss / rows.len().max(1) as f64 + 0.5 * lambda * norm;
    if loss.is_finite() {
        loss
    } else {
        f64::INFINITY
    }
}

/// `z = bias + scale * (x . w)`, one score per column of the row-major `w`.
fn scores(x: &SparseVec, w: &[f64], scale: f64, bias: &[f64], z: &mut [f64]) {
    let width = z.len();
    z.copy_from_slice(bias);
    for &(i, v) in x {
        let row = &w[i as usize * width..i as usize * width + width];
        for (zc, wc) in z.iter_mut().zip(row) {
            *zc += wc * scale * f64::from(v);
        }
    }
}

/// `epochs` passes of SGD from zero over `rows`; returns the weights (row-major
/// `dim x width`) and the biases.
#[allow(clippy::too_many_arguments)]
fn sgd(
    xs: &[SparseVec],
    y: &[usize],
    rows: &[usize],
    dim: usize,
    classes: usize,
    p: LogRegParams,
    eta0: f64,
    epochs: usize,
) -> (Vec<f64>, Vec<f64>) {
    let width = width_of(classes);
    let mut w = vec![0.0f64; dim * width];
    let mut bias = vec![0.0f64; width];
    let mut scale = 1.0f64;
    let mut t = 0.0f64;
    let mut order: Vec<usize> = rows.to_vec();
    let mut rng = Rng::new(p.seed);
    let mut z = vec![0.0f64; width];
    let mut g = vec![0.0f64; width];
    for _ in 0..epochs {
        rng.shuffle(&mut order);
        for &r in &order {
            let x = &xs[r];
            let eta = eta0 / (1.0 + eta0 * p.lambda * t);
            t += 1.0;
            scores(x, &w, scale, &bias, &mut z);
            if width == 1 {
                let p1 = 1.0 / (1.0 + (-z[0]).exp());
                g[0] = p1 - if y[r] == 1 { 1.0 } else { 0.0 };
            } else {
                let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0;
                for zc in z.iter_mut() {
                    *zc = (*zc - max).exp();
                    sum += *zc;
                }
                for c in 0..width {
                    g[c] = z[c] / sum - if y[r] == c { 1.0 } else { 0.0 };
                }
            }
            scale *= 1.0 - eta * p.lambda;
            let step = eta / scale;
            for &(i, v) in x {
                let row = &mut w[i as usize * width..i as usize * width + width];
                for (wc, gc) in row.iter_mut().zip(&g) {
                    *wc -= step * gc * f64::from(v);
                }
            }
            // The bias is regularised too: with few examples an unpenalised bias would
            // just encode the class frequencies of the training fold.
            for (b, gc) in bias.iter_mut().zip(&g) {
                *b = *b * (1.0 - eta * p.lambda) - eta * gc;
            }
            if scale < 1e-6 {
                w.iter_mut().for_each(|v| *v *= scale);
                scale = 1.0;
            }
        }
    }
    w.iter_mut().for_each(|v| *v *= scale);
    (w, bias)
}

/// Multinomial naive Bayes with additive smoothing `alpha` over `rows` of `xs`.
pub(crate) fn train_bayes(
    xs: &[SparseVec],
    y: &[usize],
    rows: &[usize],
    dim: usize,
    classes: usize,
    alpha: f64,
) -> LinearModel {
    let mut counts = vec![0.0f64; dim * classes];
    let mut class_n = vec![0usize; classes];
    for &r in rows {
        class_n[y[r]] += 1;
        for &(i, v) in &xs[r] {
            counts[i as usize * classes + y[r]] += f64::from(v.max(0.0));
        }
    }
    let mut totals = vec![0.0f64; classes];
    for row in counts.chunks(classes) {
        for (t, c) in totals.iter_mut().zip(row) {
            *t += c;
        }
    }
    let n = rows.len() as f64;
    let bias: Vec<f64> = class_n
        .iter()
        .map(|&c| ((c as f64 + 1.0) / (n + classes as f64)).ln())
        .collect();
    let denom: Vec<f64> = totals
        .iter()
        .map(|t| (t + alpha * dim as f64).ln())
        .collect();
    let weights = counts
        .chunks(classes)
        .flat_map(|row| {
            row.iter()
                .zip(&denom)
                .map(|(c, d)| ((c + alpha).ln() - d) as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    LinearModel {
        width: classes,
        weights,
        bias,
        temperature: 1.0,
        bayes: true,
    }
}

/// The shift `d` of sigmoid logits (label 1 iff `z + d > 0`) with the most correct
/// out-of-fold predictions; the smallest `|d|` on a tie, rounded to 1e-4.
pub(crate) fn best_shift(logits: &[Vec<f64>], y: &[usize]) -> f64 {
    // Sweep thresholds in logit order: moving past an example flips its prediction.
    let mut zs: Vec<(f64, usize)> = logits.iter().zip(y).map(|(z, &c)| (z[0], c)).collect();
    zs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let correct0 = zs.iter().filter(|(z, c)| (*z > 0.0) == (*c == 1)).count() as i64;
    let mut best = (correct0, 0.0f64);
    // Candidate d = -(midpoint between consecutive logits).
    let mut consider = |d: f64| {
        let d = (d * 1e4).round() / 1e4;
        let c = zs
            .iter()
            .filter(|(z, c)| (z + d > 0.0) == (*c == 1))
            .count() as i64;
        if c > best.0 || (c == best.0 && d.abs() < best.1.abs()) {
            best = (c, d);
        }
    };
    let near: Vec<f64> = zs
        .windows(2)
        .map(|w| (w[0].0 + w[1].0) / 2.0)
        .filter(|m| m.abs() < 4.0)
        .collect();
    for m in near {
        consider(-m);
    }
    best.1
}

/// The temperature minimising the log loss of held-out logits (golden-section search on
/// `ln T` in `[ln 0.05, ln 50]`).
pub(crate) fn fit_temperature(
    logits: &[Vec<f64>],
    y: &[usize],
    sigmoid: bool,
    classes: usize,
) -> f64 {
    if logits.is_empty() {
        return 1.0;
    }
    let nll = |log_t: f64| -> f64 {
        let inv_t = (-log_t).exp();
        let mut p = vec![0.0; classes];
        let mut s = 0.0;
        for (z, &c) in logits.iter().zip(y) {
            probs(z, inv_t, sigmoid, &mut p);
            s -= p[c].max(1e-12).ln();
        }
        s
    };
    let (mut a, mut b) = (0.05f64.ln(), 50.0f64.ln());
    let gr = (5f64.sqrt() - 1.0) / 2.0;
    let mut c = b - gr * (b - a);
    let mut d = a + gr * (b - a);
    let (mut fc, mut fd) = (nll(c), nll(d));
    for _ in 0..40 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - gr * (b - a);
            fc = nll(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + gr * (b - a);
            fd = nll(d);
        }
    }
    // Round so that the program's JSON number is short and exact.
    let t = ((a + b) / 2.0).exp();
    (t * 1e4).round() / 1e4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logreg_separates_a_toy_problem() {
        let xs: Vec<SparseVec> = (0..40)
            .map(|i| vec![((i % 2) as u32, 1.0), (2 + (i % 5) as u32, 0.5)])
            .collect();
        let y: Vec<usize> = (0..40).map(|i| i % 2).collect();
        let rows: Vec<usize> = (0..40).collect();
        for classes in [2, 3] {
            let m = train_logreg(
                &xs,
                &y,
                &rows,
                8,
                classes,
                LogRegParams {
                    lambda: 1e-3,
                    epochs: 50,
                    seed: 1,
                },
            );
            let mut z = Vec::new();
            assert!(rows
                .iter()
                .all(|&r| m.predict(&xs[r], classes, &mut z) == y[r]));
        }
        let nb = train_bayes(&xs, &y, &rows, 8, 2, 0.5);
        let mut z = Vec::new();
        assert!(rows.iter().all(|&r| nb.predict(&xs[r], 2, &mut z) == y[r]));
    }

    #[test]
    fn calibrated_step_reaches_a_lower_objective_than_the_smallest() {
        // Noisy, weakly regularised problem: the smallest step is far from the optimum
        // after a few epochs; calibration must find a step that gets closer.
        let n = 600;
        let xs: Vec<SparseVec> = (0..n)
            .map(|i| {
                let a = (i * 7919 % 97) as u32;
                let b = 100 + (i * 104_729 % 89) as u32;
                vec![(a, 0.7), (b, 0.7)]
            })
            .collect();
        let y: Vec<usize> = (0..n).map(|i| usize::from((i * 7919 % 97) < 50)).collect();
        let rows: Vec<usize> = (0..n).collect();
        let p = LogRegParams {
            lambda: 1.0 / (1024.0 * n as f64),
            epochs: 3,
            seed: 1,
        };
        let eta0 = calibrate_eta0(&xs, &y, &rows, 200, 2, p);
        assert!(eta0 > ETA0_GRID[0], "{eta0}");
        let loss = |eta0| {
            let (w, b) = sgd(&xs, &y, &rows, 200, 2, p, eta0, p.epochs);
            objective(&xs, &y, &rows, 2, &w, &b, p.lambda)
        };
        assert!(
            loss(eta0) < loss(ETA0_GRID[0]),
            "{} vs {}",
            loss(eta0),
            loss(ETA0_GRID[0])
        );
    }
}
