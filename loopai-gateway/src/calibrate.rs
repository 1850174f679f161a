//! The disagreement budget: the lowest confidence threshold whose one-sided 95%
//! Clopper–Pearson upper bound on disagreement among the calls it would answer is within
//! the budget.

/// The one-sided confidence level of the bound.
pub(crate) const ALPHA: f64 = 0.05;
/// Thresholds tried at most per estimate (spread evenly over the pairs).
const MAX_CANDIDATES: usize = 512;

/// `ln C(n, i)`.
fn ln_choose(n: u64, i: u64) -> f64 {
    let (n, i) = (n as f64, i as f64);
    libm::lgamma(n + 1.0) - libm::lgamma(i + 1.0) - libm::lgamma(n - i + 1.0)
}

/// `P(X <= k)` for `X ~ Binomial(n, p)`.
fn binomial_cdf(k: u64, n: u64, p: f64) -> f64 {
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

/// The one-sided `1 - alpha` Clopper–Pearson upper bound of a rate with `k` events in `n`
/// trials (1 when `n` is 0).
pub(crate) fn clopper_pearson_upper(k: u64, n: u64, alpha: f64) -> f64 {
    if n == 0 || k >= n {
        return 1.0;
    }
    if k == 0 {
        // Closed form: (1 - p)^n = alpha.
        return 1.0 - alpha.powf(1.0 / n as f64);
    }
    let (mut lo, mut hi) = (k as f64 / n as f64, 1.0);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if binomial_cdf(k, n, mid) > alpha {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// The fewest pairs (all agreeing) whose upper bound is within `budget`:
/// `ceil(ln alpha / ln(1 - budget))`, 149 at 2%.
pub(crate) fn pairs_needed(budget: f64) -> u64 {
    if !(budget > 0.0 && budget < 1.0) {
        return 1;
    }
    (ALPHA.ln() / (1.0 - budget).ln()).ceil().max(1.0) as u64
}

/// The chosen threshold and what it was chosen on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Estimate {
    /// The lowest qualifying threshold; `None` when none qualifies (forward everything).
    pub threshold: Option<f64>,
    /// Pairs at or above the threshold (at the highest-confidence candidate without one).
    pub answered: u64,
    /// Disagreements among them.
    pub disagreed: u64,
    /// The upper bound of their disagreement rate.
    pub upper: f64,
}

/// Chooses the threshold on `(confidence, agreed)` pairs.
pub(crate) fn choose_threshold(pairs: &[(f64, bool)], budget: f64) -> Estimate {
    let mut sorted: Vec<(f64, bool)> = pairs
        .iter()
        .copied()
        .filter(|(c, _)| c.is_finite())
        .collect();
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
    // Prefix i (the pairs with confidence >= sorted[i].0) is a candidate where the next
    // pair has a lower confidence.
    let mut boundaries = Vec::new();
    for i in 0..sorted.len() {
        if i + 1 == sorted.len() || sorted[i + 1].0 < sorted[i].0 {
            boundaries.push(i);
        }
    }
    let step = boundaries.len().div_ceil(MAX_CANDIDATES).max(1);
    let mut disagreements = vec![0u64; sorted.len()];
    let mut k = 0;
    for (i, p) in sorted.iter().enumerate() {
        k += u64::from(!p.1);
        disagreements[i] = k;
    }
    let mut none = Estimate {
        threshold: None,
        answered: 0,
        disagreed: 0,
        upper: 1.0,
    };
    // Fixed-sequence testing: from the highest threshold (fewest answered) down, while
    // the bound holds; the first that fails stops the scan. Taking the lowest threshold
    // that qualifies anywhere instead would pick among many tests after the fact, and be
    // optimistic.
    let mut candidates: Vec<usize> = boundaries.iter().copied().rev().step_by(step).collect();
    if let Some(&top) = boundaries.first() {
        if candidates.last() != Some(&top) {
            candidates.push(top);
        }
    }
    candidates.reverse();
    let mut best: Option<Estimate> = None;
    // The sequence starts where the bound can first hold (a count, not an outcome).
    let start = pairs_needed(budget);
    for &i in &candidates {
        let n = i as u64 + 1;
        if n < start {
            continue;
        }
        let k = disagreements[i];
        let upper = if k as f64 / n as f64 > budget {
            1.0
        } else {
            clopper_pearson_upper(k, n, ALPHA)
        };
        if upper > budget {
            break;
        }
        best = Some(Estimate {
            threshold: Some(sorted[i].0),
            answered: n,
            disagreed: k,
            upper,
        });
    }
    if let Some(e) = best {
        return e;
    }
    if let Some(&top) = boundaries.first() {
        let n = top as u64 + 1;
        none.answered = n;
        none.disagreed = disagreements[top];
        none.upper = clopper_pearson_upper(none.disagreed, n, ALPHA);
    }
    none
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clopper_pearson_matches_known_values() {
        // k = 0: the rule of three, 1 - 0.05^(1/n).
        assert!((clopper_pearson_upper(0, 150, ALPHA) - 0.019_773).abs() < 1e-5);
        // The 0.95 quantiles of Beta(2, 99) and Beta(11, 190).
        assert!((clopper_pearson_upper(1, 100, ALPHA) - 0.046_560).abs() < 1e-5);
        assert!((clopper_pearson_upper(10, 200, ALPHA) - 0.083_335).abs() < 1e-5);
        assert_eq!(clopper_pearson_upper(0, 0, ALPHA), 1.0);
        assert_eq!(clopper_pearson_upper(5, 5, ALPHA), 1.0);
    }

    #[test]
    fn pairs_needed_is_the_fewest_agreeing_pairs_within_the_budget() {
        for budget in [0.01, 0.02, 0.05, 0.1] {
            let n = pairs_needed(budget);
            assert!(clopper_pearson_upper(0, n, ALPHA) <= budget, "{budget}");
            assert!(clopper_pearson_upper(0, n - 1, ALPHA) > budget, "{budget}");
        }
        assert_eq!(pairs_needed(0.02), 149);
    }

    #[test]
    fn the_lowest_threshold_within_the_budget_is_chosen() {
        // 400 confident agreeing pairs at 0.9..1.0, then 200 at 0.5..0.6 disagreeing a third.
        let mut pairs = Vec::new();
        for i in 0..400 {
            pairs.push((0.9 + f64::from(i) / 4000.0, true));
        }
        for i in 0..200 {
            pairs.push((0.5 + f64::from(i) / 2000.0, i % 3 != 0));
        }
        let e = choose_threshold(&pairs, 0.02);
        // At 0.595: the 400 plus 10 low ones of which 3 disagree (upper bound 0.0188);
        // one step lower (0.5945, 11 low ones, 3 disagreeing... then 4) fails.
        let t = e.threshold.unwrap();
        assert!((t - 0.595).abs() < 1e-12, "{e:?}");
        assert_eq!((e.answered, e.disagreed), (410, 3));
        assert!(e.upper <= 0.02);
        assert!(e.answered >= 300, "{e:?}");
        // Too few pairs to show 2% with 95% confidence: nothing qualifies.
        let e = choose_threshold(&pairs[..100], 0.02);
        assert_eq!(e.threshold, None);
        assert_eq!(e.answered, 1);
        // A disagreement among the most confident pairs stops the scan there, even if
        // lower thresholds would pass again (200 agreeing pairs, one disagreeing above
        // them all, then 2000 agreeing): nothing below the failing prefix is chosen.
        let mut seq = vec![(0.99, false)];
        seq.extend((0..10).map(|i| (0.98 - f64::from(i) / 1000.0, true)));
        seq.extend((0..2000).map(|i| (0.5 + f64::from(i) / 10_000.0, true)));
        let e = choose_threshold(&seq, 0.02);
        assert_eq!(e.threshold, None, "{e:?}");
        // Everything disagreeing: nothing qualifies, whatever the count.
        let bad: Vec<(f64, bool)> = (0..1000).map(|i| (f64::from(i) / 1000.0, false)).collect();
        assert_eq!(choose_threshold(&bad, 0.02).threshold, None);
        assert_eq!(choose_threshold(&[], 0.02).threshold, None);
    }
}
