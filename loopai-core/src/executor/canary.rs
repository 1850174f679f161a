//! The hot-path side of a canary rollout: routing keys to an arm ([`Route`]), the canary
//! slot the executor reads on every execution ([`CanarySlot`]), and the lock-free per-arm
//! counters that `execute` and the validation workers bump ([`ArmCounters`]) with their
//! plain snapshots ([`ArmCounts`]). The rollout controller (`crate::rollout`) builds and
//! replaces the slot; nothing here depends on it.

use crate::executor::ActiveProgram;
use crate::fnv::Fnv;
use crate::sampler::SampleReason;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Buckets of the latency histogram: bucket `i` holds latencies in
/// `[2^(i/4), 2^((i+1)/4))` nanoseconds (the last one everything above ~4 s).
pub(crate) const LATENCY_BUCKETS: usize = 128;

// ---------------------------------------------------------------------------------------
// Routing

/// Which arm serves a routing key at one stage. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) salt: u64,
    /// Keys hashing below this go to the canary.
    pub(crate) threshold: u64,
    /// The stage fraction is 1: every key goes to the canary.
    pub(crate) all: bool,
    pub(crate) key_pointer: Option<String>,
}

impl Route {
    /// The route of `canary_version` of `task` at `fraction`. The hash is keyed by task
    /// and canary version: each rollout picks its own set of keys.
    pub(crate) fn new(
        task: &str,
        canary_version: u32,
        fraction: f64,
        key_pointer: Option<String>,
    ) -> Route {
        let salt = crate::program::ngram_hash(u64::from(canary_version), task);
        // 2^64 as f64 is exact; `as` saturates.
        let threshold = (fraction.clamp(0.0, 1.0) * 18_446_744_073_709_551_616.0) as u64;
        Route {
            salt,
            threshold,
            all: fraction >= 1.0,
            key_pointer,
        }
    }

    /// `fmix64(fnv1a64(salt, key))`, the construction of [`ngram_hash`](crate::ngram_hash).
    #[inline]
    pub(crate) fn hash_key(&self, key: &str) -> u64 {
        crate::program::ngram_hash(self.salt, key)
    }

    /// The routing hash of an input without a caller-supplied key: the string at
    /// `rollout.sticky_key` (other JSON values by their canonical JSON), else the canonical
    /// JSON of the whole input.
    pub(crate) fn hash_input(&self, input: &Value) -> u64 {
        let value = self
            .key_pointer
            .as_deref()
            .and_then(|p| input.pointer(p))
            .unwrap_or(input);
        match value {
            Value::String(s) => self.hash_key(s),
            other => {
                let mut w = Fnv::new(self.salt);
                // Writing into a hasher cannot fail.
                let _ = crate::privacy::write_canonical(other, &mut w);
                w.finish()
            }
        }
    }

    /// Whether a key with routing hash `hash` goes to the canary.
    #[inline]
    pub(crate) fn to_canary(&self, hash: u64) -> bool {
        self.all || hash < self.threshold
    }
}

/// What the executor reads on every execution during a rollout: the canary program, the
/// route of the current stage and that stage's counters. Replaced as a whole at each
/// stage change.
#[derive(Debug)]
pub(crate) struct CanarySlot {
    pub(crate) program: Arc<ActiveProgram>,
    pub(crate) stable_version: u32,
    pub(crate) route: Route,
    pub(crate) counters: Arc<StageCounters>,
}

impl CanarySlot {
    /// Counts a validation of `version` against the arm that runs it — only when the
    /// execution was sampled by the random draw ([`SampleReason::Random`]). Executions
    /// sampled for another reason (low confidence, a class quota) are not comparable
    /// samples of the two arms: an arm that is sure of itself sends fewer of them, and not
    /// representative ones. They are validated and recorded all the same, but are not
    /// evidence in the rollout.
    pub(crate) fn record_validation(&self, version: u32, reason: SampleReason, matched: bool) {
        if reason != SampleReason::Random {
            return;
        }
        if version == self.program.version() {
            self.counters.canary.record_validation(matched);
        } else if version == self.stable_version {
            self.counters.stable.record_validation(matched);
        }
    }
}

/// The arm that served one execution, to count its outcome once the latency is known.
#[derive(Debug)]
pub(crate) struct ArmHandle {
    pub(crate) slot: Arc<CanarySlot>,
    pub(crate) canary: bool,
}

impl ArmHandle {
    pub(crate) fn arm(&self) -> &ArmCounters {
        if self.canary {
            &self.slot.counters.canary
        } else {
            &self.slot.counters.stable
        }
    }

    /// Counts an execution: `None` for an error, `Some(abstained)` otherwise.
    #[inline]
    pub(crate) fn record(&self, outcome: Option<bool>, latency_ms: f64) {
        self.arm().record_execution(outcome, latency_ms);
    }
}

// ---------------------------------------------------------------------------------------
// Counters

/// Lock-free counters of one arm at one stage.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct ArmCounters {
    pub(crate) executions: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) abstains: AtomicU64,
    pub(crate) validations: AtomicU64,
    pub(crate) mismatches: AtomicU64,
    pub(crate) latency: [AtomicU64; LATENCY_BUCKETS],
}

impl Default for ArmCounters {
    fn default() -> Self {
        ArmCounters {
            executions: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            abstains: AtomicU64::new(0),
            validations: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl ArmCounters {
    pub(crate) fn record_execution(&self, outcome: Option<bool>, latency_ms: f64) {
        self.executions.fetch_add(1, Ordering::Relaxed);
        match outcome {
            None => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            Some(true) => {
                self.abstains.fetch_add(1, Ordering::Relaxed);
            }
            Some(false) => {}
        }
        self.latency[latency_bucket(latency_ms)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_validation(&self, matched: bool) {
        self.validations.fetch_add(1, Ordering::Relaxed);
        if !matched {
            self.mismatches.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> ArmCounts {
        let latency = self
            .latency
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let n = c.load(Ordering::Relaxed);
                (n > 0).then_some((i as u16, n))
            })
            .collect();
        let validations = self.validations.load(Ordering::Relaxed);
        ArmCounts {
            executions: self.executions.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            abstains: self.abstains.load(Ordering::Relaxed),
            validations,
            // Counted after `validations` by the workers: a snapshot can catch a mismatch
            // whose validation it missed, never the other way round.
            mismatches: self.mismatches.load(Ordering::Relaxed).min(validations),
            latency,
        }
    }
}

/// The counters of both arms at one stage.
#[derive(Debug, Default)]
pub(crate) struct StageCounters {
    pub(crate) stable: ArmCounters,
    pub(crate) canary: ArmCounters,
}

impl StageCounters {
    pub(crate) fn snapshot(&self) -> StageCounts {
        StageCounts {
            stable: self.stable.snapshot(),
            canary: self.canary.snapshot(),
        }
    }
}

/// The bucket of a latency: `floor(4 log2(ns))`, clamped.
pub(crate) fn latency_bucket(latency_ms: f64) -> usize {
    let ns = latency_ms * 1e6;
    if ns.is_nan() || ns < 1.0 {
        return 0;
    }
    ((ns.log2() * 4.0) as usize).min(LATENCY_BUCKETS - 1)
}

/// The upper bound of bucket `i`, in milliseconds.
fn bucket_upper_ms(i: usize) -> f64 {
    ((i as f64 + 1.0) / 4.0).exp2() / 1e6
}

/// Plain counts of one arm (persisted in `rollout.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct ArmCounts {
    pub(crate) executions: u64,
    pub(crate) errors: u64,
    pub(crate) abstains: u64,
    pub(crate) validations: u64,
    pub(crate) mismatches: u64,
    /// Latency histogram: bucket index → count (empty buckets left out).
    pub(crate) latency: BTreeMap<u16, u64>,
}

impl ArmCounts {
    pub(crate) fn add(&mut self, other: &ArmCounts) {
        self.executions += other.executions;
        self.errors += other.errors;
        self.abstains += other.abstains;
        self.validations += other.validations;
        self.mismatches += other.mismatches;
        for (&b, &n) in &other.latency {
            *self.latency.entry(b).or_default() += n;
        }
    }

    /// The upper bound of the bucket holding the 99th percentile (nearest rank).
    pub(crate) fn p99_ms(&self) -> Option<f64> {
        let total: u64 = self.latency.values().sum();
        if total == 0 {
            return None;
        }
        let rank = (total * 99).div_ceil(100).max(1);
        let mut seen = 0;
        for (&b, &n) in &self.latency {
            seen += n;
            if seen >= rank {
                return Some(bucket_upper_ms(usize::from(b)));
            }
        }
        self.latency
            .keys()
            .last()
            .map(|&b| bucket_upper_ms(usize::from(b)))
    }
}

/// Counts of both arms at one stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct StageCounts {
    pub(crate) stable: ArmCounts,
    pub(crate) canary: ArmCounts,
}

impl StageCounts {
    pub(crate) fn add(&mut self, other: &StageCounts) {
        self.stable.add(&other.stable);
        self.canary.add(&other.canary);
    }
}
