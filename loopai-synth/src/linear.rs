//! Linear models over sparse vectors as a program stores them (the solvers that train the
//! SVM and logistic regression live in `solver`): multinomial naive Bayes, the decision
//! threshold and temperature calibration, and scoring that reproduces the runtime's
//! arithmetic (f32 weights, f64 sums in the vector's order, `libm::exp`).

use base64::Engine as _;

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
    /// The int8 form of `weights` (row-major) and the scale of each column, when the
    /// program stores them quantized; `weights` then holds what the runtime loads.
    pub quantized: Option<(Vec<i8>, Vec<f64>)>,
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

/// Log prior of a naive-Bayes class without training examples: finite (programs hold finite
/// numbers) and low enough that its probability is 0.
const UNSEEN_CLASS_LOG_PRIOR: f64 = -1e4;

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
    // A class without training examples cannot be predicted: left with the smoothed
    // prior, its flat likelihood would beat every class that has seen some words for texts
    // of words none has seen.
    let bias: Vec<f64> = class_n
        .iter()
        .map(|&c| {
            if c == 0 {
                UNSEEN_CLASS_LOG_PRIOR
            } else {
                ((c as f64 + 1.0) / (n + classes as f64)).ln()
            }
        })
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
        quantized: None,
    }
}

/// Naive Bayes as a program stores it: int8 weights, a quarter of the `f32` size.
///
/// Every row is first centred on its mean over the classes: adding the same number to
/// every class's weight of feature `i` adds `x_i` times it to every class's score, which
/// changes no probability of the softmax, and the centred rows (log-probability ratios)
/// are much smaller than the log probabilities, so that the int8 steps of a column are
/// finer. The model then scores as the runtime loads it (the dequantized weights).
pub(crate) fn quantize_bayes(m: &mut LinearModel) {
    let w = m.width;
    let dim = m.weights.len() / w;
    let mut centred = vec![0.0f64; m.weights.len()];
    for (row, out) in m.weights.chunks(w).zip(centred.chunks_mut(w)) {
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / w as f64;
        for (o, &v) in out.iter_mut().zip(row) {
            *o = f64::from(v) - mean;
        }
    }
    let mut q = vec![0i8; m.weights.len()];
    let mut scales = Vec::with_capacity(w);
    for c in 0..w {
        let column: Vec<f64> = (0..dim).map(|i| centred[i * w + c]).collect();
        let (qc, scale) = crate::solver::quantize(&column);
        for (i, v) in qc.into_iter().enumerate() {
            q[i * w + c] = v;
            m.weights[i * w + c] = crate::solver::dequantize(v, scale);
        }
        scales.push(scale);
    }
    m.quantized = Some((q, scales));
}

/// `"base64:"` + the little-endian bytes of `v` (a program's packed `f32` array).
pub(crate) fn pack_f32(v: &[f32]) -> String {
    let mut bytes = Vec::with_capacity(v.len() * 4);
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    format!(
        "base64:{}",
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    )
}

/// `"base64:"` + the bytes of `v` (a program's int8 array).
pub(crate) fn pack_i8(v: &[i8]) -> String {
    let bytes: Vec<u8> = v.iter().map(|&b| b as u8).collect();
    format!(
        "base64:{}",
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    )
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
    fn naive_bayes_separates_a_toy_problem() {
        let xs: Vec<SparseVec> = (0..40)
            .map(|i| vec![((i % 2) as u32, 1.0), (2 + (i % 5) as u32, 0.5)])
            .collect();
        let y: Vec<usize> = (0..40).map(|i| i % 2).collect();
        let rows: Vec<usize> = (0..40).collect();
        let nb = train_bayes(&xs, &y, &rows, 8, 2, 0.5);
        let mut z = Vec::new();
        assert!(rows.iter().all(|&r| nb.predict(&xs[r], 2, &mut z) == y[r]));
        // A third class without examples is never predicted, even for unseen words.
        let nb = train_bayes(&xs, &y, &rows, 8, 3, 0.5);
        assert!(rows.iter().all(|&r| nb.predict(&xs[r], 3, &mut z) == y[r]));
        assert_ne!(nb.predict(&[(7, 1.0)], 3, &mut z), 2);
    }

    #[test]
    fn quantized_naive_bayes_keeps_its_probabilities_within_the_steps() {
        let mut rng = crate::rng::Rng::new(3);
        let xs: Vec<SparseVec> = (0..200)
            .map(|_| {
                (0..6)
                    .map(|_| (rng.below(50) as u32, 1.0 + rng.below(1000) as f32 / 1000.0))
                    .collect()
            })
            .collect();
        let y: Vec<usize> = (0..200).map(|i| i % 3).collect();
        let rows: Vec<usize> = (0..200).collect();
        let exact = train_bayes(&xs, &y, &rows, 50, 3, 0.5);
        let mut q = exact.clone();
        quantize_bayes(&mut q);
        let (ints, scales) = q.quantized.clone().expect("quantized");
        assert_eq!(ints.len(), exact.weights.len());
        for (i, (&v, &w)) in ints.iter().zip(&q.weights).enumerate() {
            assert_eq!(w, crate::solver::dequantize(v, scales[i % 3]));
        }
        // Centring changes no probability; quantization moves each score by at most half
        // a step per unit of input.
        let (mut za, mut zb) = (Vec::new(), Vec::new());
        let (mut pa, mut pb) = (vec![0.0; 3], vec![0.0; 3]);
        for x in &xs {
            exact.logits(x, &mut za);
            q.logits(x, &mut zb);
            probs(&za, 1.0, false, &mut pa);
            probs(&zb, 1.0, false, &mut pb);
            let mass: f64 = x.iter().map(|e| f64::from(e.1)).sum();
            let half = scales.iter().fold(0.0f64, |m, &s| m.max(s)) / 2.0;
            // Scores relative to class 0 (the part the softmax sees).
            for c in 1..3 {
                let da = za[c] - za[0];
                let db = zb[c] - zb[0];
                assert!((da - db).abs() <= 2.0 * half * mass + 1e-4, "{da} vs {db}");
            }
            assert!(pa.iter().zip(&pb).all(|(a, b)| (a - b).abs() < 0.2));
        }
    }

    #[test]
    fn packed_arrays_are_base64_little_endian() {
        assert_eq!(pack_f32(&[1.0]), "base64:AACAPw==");
        assert_eq!(pack_i8(&[-1, 2]), "base64:/wI=");
    }
}
