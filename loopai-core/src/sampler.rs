//! The [`Sampler`]: decides, in `execute`, which executions are checked against the oracle.
//!
//! Strategies (`sampling.strategy`, combinable — an execution is sampled when any applies):
//!
//! * `random`: with probability `sampling.rate`;
//! * `uncertainty`: always when the confidence is below `sampling.uncertainty_threshold`
//!   (plus the base rate);
//! * `stratified`: always while an output class has had fewer than
//!   `sampling.stratified_min_per_class` samples in the current UTC hour, so rare classes
//!   are covered;
//! * `temporal`: right after a version is activated the rate is raised to
//!   `sampling.temporal_boost_rate`, decaying to the base rate with half-life
//!   `sampling.temporal_half_life_sec`.
//!
//! The random draw comes from the execution id (a random UUID) mixed with
//! `sampling.seed`: the decision is a pure function of id, seed and state, so a given seed
//! reproduces the same decisions (deterministic mode). Deciding costs a few atomic loads
//! and one 64-bit hash; no lock, no allocation.
//!
//! The reason reported is [`SampleReason::Random`] whenever the random draw picks the
//! execution, even when another strategy would have picked it too: the executions sampled
//! for that reason are a uniform sample of all executions, whatever their confidence or
//! class (at a rate that depends on time alone). A canary rollout compares its arms'
//! mismatch rates on those only (see `docs/rollout.md`).

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

use uuid::Uuid;

use crate::config::{SamplingConfig, SamplingStrategy};

/// Output classes tracked individually by the `stratified` strategy; classes beyond this
/// share the last counter.
const STRATA: usize = 64;
const HOUR_MS: i64 = 3_600_000;

/// Why an execution was sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SampleReason {
    /// The random draw fell below the (possibly temporally boosted) rate. Reported
    /// whenever the draw picks the execution, even if another reason applies too, so that
    /// the executions sampled for this reason are a uniform sample of all executions.
    Random,
    /// The confidence was below the uncertainty threshold (and the random draw did not
    /// pick the execution).
    Uncertainty,
    /// The output class was below its hourly quota (and neither reason above applied).
    Stratified,
}

/// Decides which executions are sampled for validation. `Send + Sync`, lock-free.
#[derive(Debug)]
pub struct Sampler {
    random: bool,
    uncertainty: Option<f64>,
    stratified: Option<u32>,
    temporal: Option<(f64, f64)>,
    rate: f64,
    seed: u64,
    activated_at_ms: AtomicI64,
    hour: AtomicI64,
    counts: [AtomicU32; STRATA],
}

impl Sampler {
    /// A sampler for `config`, with the temporal boost (if configured) starting at
    /// `now_ms`.
    pub fn new(config: &SamplingConfig, now_ms: i64) -> Sampler {
        let s = config.strategy;
        Sampler {
            random: s.contains(SamplingStrategy::Random),
            uncertainty: s
                .contains(SamplingStrategy::Uncertainty)
                .then_some(config.uncertainty_threshold),
            stratified: s
                .contains(SamplingStrategy::Stratified)
                .then_some(config.stratified_min_per_class),
            temporal: s.contains(SamplingStrategy::Temporal).then_some((
                config.temporal_boost_rate,
                config.temporal_half_life_sec as f64 * 1000.0,
            )),
            rate: config.rate,
            seed: config.seed.unwrap_or(0x9e37_79b9_7f4a_7c15),
            activated_at_ms: AtomicI64::new(now_ms),
            hour: AtomicI64::new(now_ms.div_euclid(HOUR_MS)),
            counts: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    /// Whether executions can be sampled for [`SampleReason::Random`]: a base rate above
    /// 0 (with `random` or `uncertainty`) or a temporal boost above 0.
    pub(crate) fn samples_at_random(&self) -> bool {
        ((self.random || self.uncertainty.is_some()) && self.rate > 0.0)
            || self.temporal.is_some_and(|(boost, _)| boost > 0.0)
    }

    /// Restarts the temporal boost (call when a new version is activated).
    pub fn version_activated(&self, now_ms: i64) {
        self.activated_at_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The sampling probability in effect at `now_ms` (base rate, temporally boosted).
    pub fn current_rate(&self, now_ms: i64) -> f64 {
        let base = if self.random || self.uncertainty.is_some() {
            self.rate
        } else {
            0.0
        };
        match self.temporal {
            Some((boost, half_life_ms)) if boost > base => {
                let elapsed = (now_ms - self.activated_at_ms.load(Ordering::Relaxed)).max(0) as f64;
                base + (boost - base) * libm::exp2(-elapsed / half_life_ms)
            }
            _ => base,
        }
    }

    /// Whether the execution `id` — which produced output class `class` (index into the
    /// program's labels, if any) with `confidence` — is sampled, and why.
    #[inline]
    pub fn decide(
        &self,
        id: &Uuid,
        class: Option<usize>,
        confidence: f64,
        now_ms: i64,
    ) -> Option<SampleReason> {
        let reason = self.reason(id, confidence, class, now_ms);
        if reason.is_some() && self.stratified.is_some() {
            if let Some(c) = class {
                self.counter(c, now_ms).fetch_add(1, Ordering::Relaxed);
            }
        }
        reason
    }

    fn reason(
        &self,
        id: &Uuid,
        confidence: f64,
        class: Option<usize>,
        now_ms: i64,
    ) -> Option<SampleReason> {
        // The draw first: it must not depend on whether another reason applies.
        let rate = if self.temporal.is_some() {
            self.current_rate(now_ms)
        } else if self.random || self.uncertainty.is_some() {
            self.rate
        } else {
            0.0
        };
        if rate > 0.0 && unit_draw(id, self.seed) < rate {
            return Some(SampleReason::Random);
        }
        if let Some(threshold) = self.uncertainty {
            if confidence < threshold {
                return Some(SampleReason::Uncertainty);
            }
        }
        if let (Some(quota), Some(c)) = (self.stratified, class) {
            if self.counter(c, now_ms).load(Ordering::Relaxed) < quota {
                return Some(SampleReason::Stratified);
            }
        }
        None
    }

    /// The counter of `class` for the hour of `now_ms`, resetting all counters when the
    /// hour changes.
    #[inline]
    fn counter(&self, class: usize, now_ms: i64) -> &AtomicU32 {
        let hour = now_ms.div_euclid(HOUR_MS);
        let seen = self.hour.load(Ordering::Relaxed);
        if hour != seen
            && self
                .hour
                .compare_exchange(seen, hour, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            for c in &self.counts {
                c.store(0, Ordering::Relaxed);
            }
        }
        &self.counts[class.min(STRATA - 1)]
    }
}

/// A uniform draw in `[0, 1)` from the execution id and the seed.
#[inline]
fn unit_draw(id: &Uuid, seed: u64) -> f64 {
    let (hi, lo) = id.as_u64_pair();
    let h = crate::fnv::fmix64(hi ^ lo.rotate_left(29) ^ seed);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SamplingStrategies;

    fn config(strategies: &[SamplingStrategy], rate: f64) -> SamplingConfig {
        SamplingConfig {
            strategy: strategies.iter().copied().collect::<SamplingStrategies>(),
            rate,
            seed: Some(7),
            ..SamplingConfig::default()
        }
    }

    fn ids(n: u128) -> impl Iterator<Item = Uuid> {
        (0..n).map(|i| {
            uuid::Builder::from_random_bytes(
                (i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)).to_le_bytes(),
            )
            .into_uuid()
        })
    }

    #[test]
    fn random_rate_is_respected_and_deterministic() {
        let s = Sampler::new(&config(&[SamplingStrategy::Random], 0.05), 0);
        let picked: Vec<bool> = ids(100_000)
            .map(|id| s.decide(&id, Some(0), 0.99, 0).is_some())
            .collect();
        let share = picked.iter().filter(|&&b| b).count() as f64 / picked.len() as f64;
        assert!((share - 0.05).abs() < 0.003, "share {share}");
        let again = Sampler::new(&config(&[SamplingStrategy::Random], 0.05), 0);
        let picked2: Vec<bool> = ids(100_000)
            .map(|id| again.decide(&id, Some(0), 0.99, 0).is_some())
            .collect();
        assert_eq!(picked, picked2, "same seed, same decisions");
    }

    #[test]
    fn uncertainty_always_samples_low_confidence() {
        let s = Sampler::new(&config(&[SamplingStrategy::Uncertainty], 0.0), 0);
        let id = Uuid::from_u128(1);
        assert_eq!(
            s.decide(&id, Some(0), 0.55, 0),
            Some(SampleReason::Uncertainty)
        );
        assert_eq!(s.decide(&id, Some(0), 0.95, 0), None);
    }

    /// The executions the draw picks are reported as random even when they are also
    /// uncertain or below their class quota: the random ones stay a uniform sample.
    #[test]
    fn the_random_draw_is_reported_whatever_else_applies() {
        let mut c = config(
            &[
                SamplingStrategy::Random,
                SamplingStrategy::Uncertainty,
                SamplingStrategy::Stratified,
            ],
            0.3,
        );
        c.stratified_min_per_class = 1_000_000;
        let all = Sampler::new(&c, 0);
        let random = Sampler::new(&config(&[SamplingStrategy::Random], 0.3), 0);
        let mut drawn = 0;
        for (i, id) in ids(10_000).enumerate() {
            // Every execution is both uncertain and below its quota.
            let reason = all.decide(&id, Some(i % 2), 0.1, 0);
            let by_draw = random.decide(&id, Some(i % 2), 0.99, 0).is_some();
            drawn += usize::from(by_draw);
            let expected = if by_draw {
                SampleReason::Random
            } else {
                SampleReason::Uncertainty
            };
            assert_eq!(reason, Some(expected), "execution {i}");
        }
        assert!((2700..3300).contains(&drawn), "{drawn}");
    }

    #[test]
    fn random_samples_are_possible_with_a_rate_or_a_temporal_boost() {
        let can = |strategies: &[SamplingStrategy], rate: f64, boost: f64| {
            let mut c = config(strategies, rate);
            c.temporal_boost_rate = boost;
            Sampler::new(&c, 0).samples_at_random()
        };
        use SamplingStrategy::{Random, Stratified, Temporal, Uncertainty};
        assert!(can(&[Random], 0.05, 0.5));
        assert!(!can(&[Random], 0.0, 0.5));
        assert!(
            can(&[Uncertainty], 0.05, 0.5),
            "uncertainty adds the base rate"
        );
        assert!(!can(&[Uncertainty], 0.0, 0.5));
        assert!(
            !can(&[Stratified], 0.05, 0.5),
            "stratified alone has no base rate"
        );
        assert!(can(&[Stratified, Temporal], 0.0, 0.5));
        assert!(!can(&[Uncertainty, Stratified, Temporal], 0.0, 0.0));
    }

    #[test]
    fn stratified_covers_each_class_up_to_its_hourly_quota() {
        let mut c = config(&[SamplingStrategy::Stratified], 0.0);
        c.stratified_min_per_class = 3;
        let s = Sampler::new(&c, 0);
        let mut per_class = [0; 2];
        for (i, id) in ids(1000).enumerate() {
            let class = usize::from(i % 50 == 0); // class 1 is rare
            if s.decide(&id, Some(class), 0.99, 1000).is_some() {
                per_class[class] += 1;
            }
        }
        assert_eq!(per_class, [3, 3]);
        // A new hour resets the quotas.
        assert!(s
            .decide(&Uuid::from_u128(5), Some(1), 0.99, HOUR_MS + 1)
            .is_some());
    }

    #[test]
    fn temporal_boost_decays_to_the_base_rate() {
        let mut c = config(
            &[SamplingStrategy::Random, SamplingStrategy::Temporal],
            0.05,
        );
        c.temporal_boost_rate = 0.5;
        c.temporal_half_life_sec = 60;
        let s = Sampler::new(&c, 0);
        assert!((s.current_rate(0) - 0.5).abs() < 1e-12);
        assert!((s.current_rate(60_000) - (0.05 + 0.45 / 2.0)).abs() < 1e-12);
        assert!((s.current_rate(3_600_000) - 0.05).abs() < 1e-9);
        s.version_activated(3_600_000);
        assert!((s.current_rate(3_600_000) - 0.5).abs() < 1e-12);
        let share = ids(20_000)
            .filter(|id| s.decide(id, None, 0.99, 3_600_000).is_some())
            .count() as f64
            / 20_000.0;
        assert!((share - 0.5).abs() < 0.02, "share {share}");
    }

    #[test]
    fn sampler_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Sampler>();
    }
}
