//! What a run's cross-validated estimate can be trusted for: few examples per class,
//! below the spec's target, no better than the majority label.

use std::fmt::Write as _;

/// Fewest examples of a class whose cross-validated figures are worth a number.
const FEW_EXAMPLES: usize = 5;

/// A reason to distrust the estimate.
pub(super) struct TrustWarning {
    /// None when another warning already says it.
    pub(super) text: Option<String>,
    /// Serious enough to keep the program inactive unless asked.
    pub(super) blocks_activation: bool,
}

/// What the cross-validated estimate of a run can be trusted for.
pub(super) fn trust_warnings(
    labels: &[String],
    y: &[usize],
    present: usize,
    cv_accuracy: f64,
    target: Option<f64>,
) -> Vec<TrustWarning> {
    let mut out = Vec::new();
    let mut counts = vec![0usize; labels.len()];
    y.iter().for_each(|&c| counts[c] += 1);
    let list = |pred: &dyn Fn(usize) -> bool| {
        let names: Vec<String> = (0..labels.len())
            .filter(|&c| pred(counts[c]))
            .map(|c| format!("{:?} ({})", labels[c], counts[c]))
            .collect();
        let n = names.len();
        let mut shown = names.into_iter().take(10).collect::<Vec<_>>().join(", ");
        if n > 10 {
            let _ = write!(shown, " and {} more", n - 10);
        }
        (n, shown)
    };
    // Labels with no example are warned about by the spec (TaskSpec::warnings); with one
    // label there is no cross-validation whose figures the counts below would qualify.
    if present < 2 {
        out.push(TrustWarning {
            text: None,
            blocks_activation: true,
        });
        return out;
    }
    let (single, shown) = list(&|c| c == 1);
    if single > 0 {
        out.push(TrustWarning {
            text: Some(format!(
                "{single} label(s) have a single example, which cross-validation can only \
                 test with no other example of its label to learn from: {shown}"
            )),
            blocks_activation: false,
        });
    }
    let (few, shown) = list(&|c| (2..=FEW_EXAMPLES).contains(&c));
    if few > 0 {
        out.push(TrustWarning {
            text: Some(format!(
                "{few} label(s) have {FEW_EXAMPLES} or fewer examples; their per-class \
                 figures rest on that many cases and may be far off: {shown}"
            )),
            blocks_activation: false,
        });
    }
    let majority = counts.iter().copied().max().unwrap_or(0) as f64 / y.len().max(1) as f64;
    if cv_accuracy <= majority + 1e-9 {
        out.push(TrustWarning {
            text: Some(format!(
                "cross-validated accuracy {cv_accuracy:.4} is no better than always \
                 answering the most frequent label ({majority:.4}): the program has learnt \
                 nothing that the examples can confirm; add examples"
            )),
            blocks_activation: true,
        });
    }
    if let Some(t) = target {
        if cv_accuracy < t {
            out.push(TrustWarning {
                text: Some(format!(
                    "cross-validated accuracy {cv_accuracy:.4} is below the spec's \
                     accuracy_target {t}"
                )),
                blocks_activation: true,
            });
        }
    }
    out
}
