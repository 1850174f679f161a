//! The statistics of a rollout: anytime-valid confidence sequences per arm and metric and
//! the decision they lead to (promote, roll back, keep going). See `docs/rollout.md`.

use crate::config::RolloutConfig;
use crate::executor::canary::StageCounts;
use serde::Serialize;

// ---------------------------------------------------------------------------------------
// Statistics

fn ln_beta(a: f64, b: f64) -> f64 {
    libm::lgamma(a) + libm::lgamma(b) - libm::lgamma(a + b)
}

/// The anytime-valid confidence sequence at level `1 - alpha` for a Bernoulli rate after
/// `k` events in `n` trials: `{p : M_n(p) < 1/alpha}` with Robbins' beta-binomial mixture
/// martingale `M_n(p) = B(a+k, a+n-k) / (B(a,a) p^k (1-p)^(n-k))`, Jeffreys prior
/// `a = 1/2`. See `docs/rollout.md`. The bounds are rounded outwards.
pub(super) fn rate_cs(k: u64, n: u64, alpha: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n) = (k.min(n) as f64, n as f64);
    let a = 0.5;
    let threshold = ln_beta(a + k, a + n - k) - ln_beta(a, a) + alpha.ln();
    let log_lik = |p: f64| -> f64 {
        let mut l = 0.0;
        if k > 0.0 {
            l += k * p.ln();
        }
        if n - k > 0.0 {
            l += (n - k) * (-p).ln_1p();
        }
        l
    };
    let inside = |p: f64| log_lik(p) > threshold;
    let p_hat = k / n;
    // The maximum likelihood is at least the mixture's, and ln(alpha) < 0: p_hat is inside.
    let lower = if k == 0.0 {
        0.0
    } else {
        let (mut out, mut inn) = (0.0, p_hat);
        for _ in 0..64 {
            let mid = 0.5 * (out + inn);
            if inside(mid) {
                inn = mid;
            } else {
                out = mid;
            }
        }
        out
    };
    let upper = if k == n {
        1.0
    } else {
        let (mut inn, mut out) = (p_hat, 1.0);
        for _ in 0..64 {
            let mid = 0.5 * (inn + out);
            if inside(mid) {
                inn = mid;
            } else {
                out = mid;
            }
        }
        out
    };
    (lower, upper)
}

/// One compared metric of a rollout: the rates of both arms and the confidence sequence
/// for their difference (canary − stable).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricComparison {
    /// `error_rate` (errors per execution), `mismatch_rate` (validations that disagreed
    /// with the oracle, per validation) or `abstain_rate` (abstentions per execution).
    pub metric: &'static str,
    /// The stable arm's rate over the rollout (`None` without data).
    pub stable_rate: Option<f64>,
    /// The canary's rate over the rollout (`None` without data).
    pub canary_rate: Option<f64>,
    /// Lower end of the confidence sequence for canary − stable.
    pub difference_lower: f64,
    /// Upper end of the confidence sequence for canary − stable.
    pub difference_upper: f64,
    /// How much worse the canary may be: promotion needs `difference_upper` below it.
    pub margin: f64,
    /// Rollback when `difference_lower` is above this.
    pub rollback_above: f64,
}

/// What a check concluded.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Decision {
    /// Keep the stage; the reason says what is missing.
    Hold(String),
    /// The canary is not worse: next stage (or final promotion after the last).
    Advance(String),
    /// The canary is worse: roll back now.
    Rollback(String),
}

pub(super) fn rate(k: u64, n: u64) -> Option<f64> {
    (n > 0).then(|| k as f64 / n as f64)
}

/// The sequential test. `stage` are the counts of the current stage (for the minimum
/// samples), `total` those of the whole rollout (for the confidence sequences).
pub(super) fn decide(
    cfg: &RolloutConfig,
    with_validations: bool,
    fraction: f64,
    stage: &StageCounts,
    total: &StageCounts,
) -> (Decision, Vec<MetricComparison>) {
    let (s, c) = (&total.stable, &total.canary);
    let mut metrics = vec![(
        "error_rate",
        (c.errors, c.executions),
        (s.errors, s.executions),
        cfg.max_error_rate_increase,
        0.0,
    )];
    if with_validations {
        metrics.push((
            "mismatch_rate",
            (c.mismatches, c.validations),
            (s.mismatches, s.validations),
            cfg.max_error_rate_increase,
            0.0,
        ));
    }
    metrics.push((
        "abstain_rate",
        (c.abstains, c.executions),
        (s.abstains, s.executions),
        cfg.max_abstain_rate_increase,
        cfg.max_abstain_rate_increase,
    ));
    // Two intervals per metric, all simultaneously valid at 1 - alpha (union bound).
    let alpha_each = (1.0 - cfg.confidence) / (2 * metrics.len()) as f64;
    let comparisons: Vec<MetricComparison> = metrics
        .iter()
        .map(|&(metric, (kc, nc), (ks, ns), margin, rollback_above)| {
            let (cl, ch) = rate_cs(kc, nc, alpha_each);
            let (sl, sh) = rate_cs(ks, ns, alpha_each);
            MetricComparison {
                metric,
                stable_rate: rate(ks, ns),
                canary_rate: rate(kc, nc),
                difference_lower: cl - sh,
                difference_upper: ch - sl,
                margin,
                rollback_above,
            }
        })
        .collect();
    let pct = cfg.confidence * 100.0;
    for m in &comparisons {
        if m.difference_lower > m.rollback_above {
            return (
                Decision::Rollback(format!(
                    "{} is significantly worse: canary {} vs stable {}, difference in [{:+.4}, {:+.4}] at {pct}% confidence (rollback above {:+.4})",
                    m.metric,
                    fmt_rate(m.canary_rate),
                    fmt_rate(m.stable_rate),
                    m.difference_lower,
                    m.difference_upper,
                    m.rollback_above
                )),
                comparisons,
            );
        }
    }
    let need = cfg.min_samples_per_stage;
    let need_v = cfg.min_validations_per_stage;
    let stable_serves = fraction < 1.0;
    let mut missing = Vec::new();
    if stage.canary.executions < need {
        missing.push(format!(
            "canary executions {}/{need}",
            stage.canary.executions
        ));
    }
    if stable_serves && stage.stable.executions < need {
        missing.push(format!(
            "stable executions {}/{need}",
            stage.stable.executions
        ));
    }
    if with_validations {
        if stage.canary.validations < need_v {
            missing.push(format!(
                "canary validations {}/{need_v}",
                stage.canary.validations
            ));
        }
        if stable_serves && stage.stable.validations < need_v {
            missing.push(format!(
                "stable validations {}/{need_v}",
                stage.stable.validations
            ));
        }
    }
    if !missing.is_empty() {
        return (
            Decision::Hold(format!("waiting for samples: {}", missing.join(", "))),
            comparisons,
        );
    }
    for m in &comparisons {
        if m.difference_upper >= m.margin {
            return (
                Decision::Hold(format!(
                    "{}: canary − stable may be up to {:+.4} at {pct}% confidence, not yet below the margin {:+.4}",
                    m.metric, m.difference_upper, m.margin
                )),
                comparisons,
            );
        }
    }
    if let (Some(cp), Some(sp)) = (c.p99_ms(), s.p99_ms()) {
        if cp > cfg.p99_floor_ms && cp > cfg.max_p99_latency_ratio * sp {
            return (
                Decision::Hold(format!(
                    "latency guard: canary p99 {cp:.3} ms is over {} × stable p99 {sp:.3} ms",
                    cfg.max_p99_latency_ratio
                )),
                comparisons,
            );
        }
    }
    let summary: Vec<String> = comparisons
        .iter()
        .map(|m| format!("{} ≤ {:+.4}", m.metric, m.difference_upper))
        .collect();
    (
        Decision::Advance(format!(
            "canary not worse at {pct}% confidence: {}",
            summary.join(", ")
        )),
        comparisons,
    )
}

fn fmt_rate(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_owned(), |r| format!("{r:.4}"))
}
