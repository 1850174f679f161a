//! Classification metrics: accuracy, per-class precision/recall/F1, confusion matrix and
//! latency percentiles, as reported by synthesis and by `loopai eval`.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::spec::Metric;

/// `P(X <= k)` for `X ~ Binomial(n, p)`, summed term by term in log space (exact enough
/// for the few thousand trials of a cross-validation or a calibration pool). The
/// generator's sign test and the gateway's Clopper–Pearson bounds both use it.
pub fn binomial_cdf(k: u64, n: u64, p: f64) -> f64 {
    if p <= 0.0 {
        return 1.0;
    }
    if p >= 1.0 {
        return if k >= n { 1.0 } else { 0.0 };
    }
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    let mut sum = 0.0;
    for i in 0..=k.min(n) {
        sum += (ln_choose(n, i) + i as f64 * lp + (n - i) as f64 * lq).exp();
    }
    sum.min(1.0)
}

/// `ln C(n, i)`.
fn ln_choose(n: u64, i: u64) -> f64 {
    let (n, i) = (n as f64, i as f64);
    libm::lgamma(n + 1.0) - libm::lgamma(i + 1.0) - libm::lgamma(n - i + 1.0)
}

/// Precision, recall and F1 of one label.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassMetrics {
    /// The label.
    pub label: String,
    /// Correct predictions of the label / predictions of the label (0 when never predicted).
    pub precision: f64,
    /// Correct predictions of the label / examples of the label (0 when it has none).
    pub recall: f64,
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub f1: f64,
    /// Examples whose expected output is the label.
    pub support: usize,
}

/// The confusion matrix: `matrix[expected][predicted]` over `labels`; a last column counts
/// predictions that are not a label (`null` when the program abstained, or anything else).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Confusion {
    /// Row and column labels.
    pub labels: Vec<String>,
    /// `matrix[i][j]`: examples of `labels[i]` predicted as `labels[j]`; `matrix[i][labels.len()]`
    /// those predicted as something else.
    pub matrix: Vec<Vec<usize>>,
}

/// The result of scoring predictions against expected outputs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// Number of examples scored.
    pub n: usize,
    /// Fraction predicted exactly right.
    pub accuracy: f64,
    /// Per-label metrics, in label order.
    pub per_class: Vec<ClassMetrics>,
    /// Macro-averaged F1 over labels with support.
    pub macro_f1: f64,
    /// The confusion matrix.
    pub confusion: Confusion,
    /// Median per-execution latency in microseconds (`None` without latencies).
    pub latency_p50_us: Option<f64>,
    /// 99th-percentile per-execution latency in microseconds.
    pub latency_p99_us: Option<f64>,
}

/// The `q`-quantile (0..=1) of `values` by the nearest-rank method; `None` when empty.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// Scores predicted outputs against expected ones.
///
/// `labels` fixes the order of the per-class rows and of the confusion matrix (expected or
/// predicted values that are not among them are still counted as errors). `latencies_us`
/// may be empty.
///
/// ```
/// use loopai_synth::score;
/// use serde_json::json;
///
/// let labels = ["spam".to_string(), "ham".to_string()];
/// let expected = [json!("spam"), json!("ham"), json!("ham")];
/// let predicted = [json!("spam"), json!("spam"), json!("ham")];
/// let report = score(&labels, &expected, &predicted, &[1.0, 2.0, 3.0]);
/// assert!((report.accuracy - 2.0 / 3.0).abs() < 1e-12);
/// assert_eq!(report.per_class[0].precision, 0.5);
/// assert_eq!(report.confusion.matrix[1], [1, 1, 0]);
/// assert_eq!(report.latency_p50_us, Some(2.0));
/// ```
pub fn score(
    labels: &[String],
    expected: &[Value],
    predicted: &[Value],
    latencies_us: &[f64],
) -> EvalReport {
    let k = labels.len();
    let pos = |v: &Value| v.as_str().and_then(|s| labels.iter().position(|l| l == s));
    let n = expected.len().min(predicted.len());
    let mut matrix = vec![vec![0usize; k + 1]; k];
    let mut correct = 0usize;
    let mut predicted_as = vec![0usize; k];
    for (e, p) in expected.iter().zip(predicted) {
        if e == p {
            correct += 1;
        }
        let pj = pos(p);
        if let Some(j) = pj {
            predicted_as[j] += 1;
        }
        if let Some(i) = pos(e) {
            matrix[i][pj.unwrap_or(k)] += 1;
        }
    }
    let per_class: Vec<ClassMetrics> = (0..k)
        .map(|i| {
            let tp = matrix[i][i] as f64;
            let support: usize = matrix[i].iter().sum();
            let precision = if predicted_as[i] > 0 {
                tp / predicted_as[i] as f64
            } else {
                0.0
            };
            let recall = if support > 0 {
                tp / support as f64
            } else {
                0.0
            };
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassMetrics {
                label: labels[i].clone(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    let with_support: Vec<&ClassMetrics> = per_class.iter().filter(|c| c.support > 0).collect();
    let macro_f1 = if with_support.is_empty() {
        0.0
    } else {
        with_support.iter().map(|c| c.f1).sum::<f64>() / with_support.len() as f64
    };
    EvalReport {
        n,
        accuracy: if n > 0 {
            correct as f64 / n as f64
        } else {
            0.0
        },
        per_class,
        macro_f1,
        confusion: Confusion {
            labels: labels.to_vec(),
            matrix,
        },
        latency_p50_us: percentile(latencies_us, 0.5),
        latency_p99_us: percentile(latencies_us, 0.99),
    }
}

/// Per-class metrics of class indices (`None` = no prediction).
pub(crate) fn class_metrics(
    labels: &[String],
    expected: &[usize],
    predicted: &[Option<usize>],
) -> (f64, Vec<ClassMetrics>) {
    let e: Vec<Value> = expected
        .iter()
        .map(|&i| Value::String(labels[i].clone()))
        .collect();
    let p: Vec<Value> = predicted
        .iter()
        .map(|o| o.map_or(Value::Null, |i| Value::String(labels[i].clone())))
        .collect();
    let r = score(labels, &e, &p, &[]);
    (r.accuracy, r.per_class)
}

/// The figure `metric` gives to predictions `predicted` of examples of classes `expected`
/// (`k` classes): accuracy, or the macro-F1 over the classes with examples (as [`score`]
/// computes it; `None` predictions count as wrong).
pub(crate) fn metric_value(
    metric: Metric,
    expected: &[usize],
    predicted: &[Option<usize>],
    k: usize,
) -> f64 {
    let n = expected.len().max(1) as f64;
    match metric {
        Metric::Accuracy => {
            let ok = expected
                .iter()
                .zip(predicted)
                .filter(|(e, p)| Some(**e) == **p)
                .count();
            ok as f64 / n
        }
        Metric::MacroF1 => {
            let (mut tp, mut support, mut guessed) = (vec![0u64; k], vec![0u64; k], vec![0u64; k]);
            for (&e, p) in expected.iter().zip(predicted) {
                support[e] += 1;
                if let Some(p) = *p {
                    guessed[p] += 1;
                    tp[e] += u64::from(p == e);
                }
            }
            let (mut sum, mut classes) = (0.0, 0usize);
            for c in (0..k).filter(|&c| support[c] > 0) {
                classes += 1;
                let denom = support[c] + guessed[c];
                sum += 2.0 * tp[c] as f64 / denom as f64;
            }
            if classes == 0 {
                0.0
            } else {
                sum / classes as f64
            }
        }
    }
}

/// Writes the per-class table (label, precision, recall, F1, support).
pub(crate) fn write_class_table(f: &mut dyn fmt::Write, rows: &[ClassMetrics]) -> fmt::Result {
    let w = rows.iter().map(|c| c.label.len()).max().unwrap_or(5).max(5);
    writeln!(
        f,
        "  {:<w$}  {:>9}  {:>6}  {:>6}  {:>7}",
        "label", "precision", "recall", "f1", "support"
    )?;
    for c in rows {
        writeln!(
            f,
            "  {:<w$}  {:>9.4}  {:>6.4}  {:>6.4}  {:>7}",
            c.label, c.precision, c.recall, c.f1, c.support
        )?;
    }
    Ok(())
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "accuracy {:.4} ({} examples), macro F1 {:.4}",
            self.accuracy, self.n, self.macro_f1
        )?;
        if let (Some(p50), Some(p99)) = (self.latency_p50_us, self.latency_p99_us) {
            writeln!(f, "latency p50 {p50:.2} µs, p99 {p99:.2} µs")?;
        }
        writeln!(f)?;
        write_class_table(f, &self.per_class)?;
        writeln!(f)?;
        writeln!(f, "confusion (rows expected, columns predicted):")?;
        let labels = &self.confusion.labels;
        let w = labels.iter().map(|l| l.len()).max().unwrap_or(1).max(6);
        write!(f, "  {:<w$}", "")?;
        for l in labels {
            write!(f, "  {l:>w$}")?;
        }
        writeln!(f, "  {:>w$}", "(other)")?;
        for (l, row) in labels.iter().zip(&self.confusion.matrix) {
            write!(f, "  {l:<w$}")?;
            for c in row {
                write!(f, "  {c:>w$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values_agree_with_the_eval_report() {
        let labels: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let expected = [0, 0, 0, 1, 1, 2, 2, 2, 2, 0];
        let predicted = [
            Some(0),
            Some(1),
            Some(0),
            Some(1),
            None,
            Some(2),
            Some(0),
            Some(3),
            Some(2),
            Some(0),
        ];
        let (accuracy, per_class) = class_metrics(&labels, &expected, &predicted);
        let report_f1 = per_class
            .iter()
            .filter(|c| c.support > 0)
            .map(|c| c.f1)
            .sum::<f64>()
            / 3.0;
        let acc = metric_value(Metric::Accuracy, &expected, &predicted, 4);
        let f1 = metric_value(Metric::MacroF1, &expected, &predicted, 4);
        assert_eq!(acc, accuracy);
        assert!((f1 - report_f1).abs() < 1e-12, "{f1} vs {report_f1}");
        // a: 3 right of 4, 4 guesses; b: 1 of 2, 2 guesses; c: 2 of 4, 2 guesses; d: none.
        assert!((f1 - (0.75 + 0.5 + 2.0 / 3.0) / 3.0).abs() < 1e-12, "{f1}");
        assert_eq!(acc, 0.6);
    }
}
