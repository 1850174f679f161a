//! Tests of the rollout: statistics, routing, the state file, the controller and thread.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::artifact::ArtifactStore;
use crate::clock::Clock;
use crate::config::{DeploymentConfig, RolloutConfig};
use crate::error::ErrorKind;
use crate::executor::canary::{
    latency_bucket, ArmCounts, CanarySlot, Route, StageCounts, LATENCY_BUCKETS,
};
use crate::oracle::{FnOracle, OracleAnswer};
use crate::rollout::controller::RolloutController;
use crate::rollout::stats::{decide, rate_cs, Decision};
use crate::rollout::{RolloutEventKind, RolloutState, RolloutStatus, ROLLOUT_FILE};
use crate::runtime::Runtime;
use crate::testing::{install, wait_for, TestClock, DAY1};

// ---- statistics ---------------------------------------------------------------------

#[test]
fn rate_cs_contains_the_estimate_and_narrows() {
    let alpha = 0.01;
    assert_eq!(rate_cs(0, 0, alpha), (0.0, 1.0));
    let mut last_width = 1.0;
    for n in [10u64, 100, 1000, 10_000, 100_000] {
        let k = n / 5;
        let (lo, hi) = rate_cs(k, n, alpha);
        assert!(lo < 0.2 && 0.2 < hi, "n={n}: [{lo}, {hi}]");
        assert!(hi - lo < last_width, "n={n}: width {}", hi - lo);
        last_width = hi - lo;
    }
    // 100000 trials at p = 0.2: about ±sqrt(p(1-p) log(n)/n) wide.
    assert!(last_width < 0.02, "{last_width}");
    // No events: the upper end is about (ln(1/α) + ½ ln(π n)) / n.
    let (lo, hi) = rate_cs(0, 1000, alpha);
    assert_eq!(lo, 0.0);
    let approx = ((1.0 / alpha).ln() + 0.5 * (std::f64::consts::PI * 1000.0).ln()) / 1000.0;
    assert!((hi - approx).abs() < 0.001, "{hi} vs {approx}");
    assert_eq!(rate_cs(7, 7, alpha).1, 1.0);
}

/// The bound is time-uniform: over many simulated streams, checking after every
/// trial, the true rate leaves the sequence in at most about α of them.
#[test]
fn rate_cs_holds_under_continuous_monitoring() {
    let (alpha, p, streams, len) = (0.1, 0.3, 300, 1000);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut missed = 0;
    for _ in 0..streams {
        let mut k = 0;
        for n in 1..=len {
            k += u64::from(rng.f64() < p);
            // Checking every trial is slow in debug builds; every 10th is plenty.
            if n % 10 == 0 {
                let (lo, hi) = rate_cs(k, n, alpha);
                if !(lo <= p && p <= hi) {
                    missed += 1;
                    break;
                }
            }
        }
    }
    assert!(
        f64::from(missed) <= alpha * f64::from(streams),
        "{missed} of {streams} streams left the sequence"
    );
}

fn counts(executions: u64, errors: u64, validations: u64, mismatches: u64) -> ArmCounts {
    ArmCounts {
        executions,
        errors,
        validations,
        mismatches,
        ..ArmCounts::default()
    }
}

fn pair(stable: ArmCounts, canary: ArmCounts) -> StageCounts {
    StageCounts { stable, canary }
}

#[test]
fn decide_holds_advances_and_rolls_back() {
    let cfg = RolloutConfig {
        min_samples_per_stage: 100,
        min_validations_per_stage: 20,
        ..RolloutConfig::default()
    };
    // Too few samples: hold, saying what is missing.
    let few = pair(counts(900, 0, 45, 4), counts(50, 0, 2, 0));
    let (d, m) = decide(&cfg, true, 0.1, &few, &few);
    assert!(
        matches!(&d, Decision::Hold(r) if r.contains("canary executions 50/100")),
        "{d:?}"
    );
    assert_eq!(m.len(), 3);
    // Equal and plentiful: advance.
    let good = pair(
        counts(900_000, 0, 90_000, 4500),
        counts(100_000, 0, 10_000, 400),
    );
    let (d, _) = decide(&cfg, true, 0.1, &good, &good);
    assert!(matches!(d, Decision::Advance(_)), "{d:?}");
    // Mismatches clearly higher on the canary: rollback, even with few samples.
    let bad = pair(counts(900, 0, 450, 45), counts(100, 0, 50, 30));
    let (d, m) = decide(&cfg, true, 0.1, &bad, &bad);
    assert!(
        matches!(&d, Decision::Rollback(r) if r.starts_with("mismatch_rate")),
        "{d:?}"
    );
    assert!(m[1].difference_lower > 0.0);
    // Errors clearly higher: rollback.
    let errors = pair(counts(9000, 0, 0, 0), counts(1000, 100, 0, 0));
    let (d, _) = decide(&cfg, false, 0.1, &errors, &errors);
    assert!(
        matches!(&d, Decision::Rollback(r) if r.starts_with("error_rate")),
        "{d:?}"
    );
    // Without validations the mismatch rate is not tested.
    let (_, m) = decide(&cfg, false, 0.1, &good, &good);
    assert_eq!(
        m.iter().map(|m| m.metric).collect::<Vec<_>>(),
        ["error_rate", "abstain_rate"]
    );
    // At fraction 1 the stable arm serves nothing in the stage: only the canary counts.
    let stage = pair(ArmCounts::default(), counts(100_000, 0, 10_000, 400));
    let (d, _) = decide(&cfg, true, 1.0, &stage, &good);
    assert!(matches!(d, Decision::Advance(_)), "{d:?}");
}

#[test]
fn latency_guard_holds_a_slow_canary() {
    let cfg = RolloutConfig {
        min_samples_per_stage: 10,
        p99_floor_ms: 0.5,
        ..RolloutConfig::default()
    };
    let mut fast = counts(100_000, 0, 0, 0);
    fast.latency.insert(latency_bucket(0.1) as u16, 100_000);
    let mut slow = counts(100_000, 0, 0, 0);
    slow.latency.insert(latency_bucket(2.0) as u16, 100_000);
    let c = pair(fast.clone(), slow);
    let (d, _) = decide(&cfg, false, 0.5, &c, &c);
    assert!(
        matches!(&d, Decision::Hold(r) if r.starts_with("latency guard")),
        "{d:?}"
    );
    let c = pair(fast.clone(), fast);
    assert!(matches!(
        decide(&cfg, false, 0.5, &c, &c).0,
        Decision::Advance(_)
    ));
}

#[test]
fn latency_buckets_bound_the_p99() {
    let mut c = ArmCounts::default();
    for i in 0..100 {
        let ms = if i == 99 {
            50.0
        } else {
            0.01 * f64::from(i + 1)
        };
        *c.latency.entry(latency_bucket(ms) as u16).or_default() += 1;
    }
    let p99 = c.p99_ms().unwrap();
    // The 99th of 100 is 0.99 ms: the bucket's upper bound is within 19% above it.
    assert!((0.99..0.99 * 1.19).contains(&p99), "{p99}");
    assert_eq!(latency_bucket(f64::NAN), 0);
    assert_eq!(latency_bucket(1e12), LATENCY_BUCKETS - 1);
}

// ---- routing ------------------------------------------------------------------------

#[test]
fn routing_is_sticky_across_stages_and_splits_keys_by_fraction() {
    let stages = [0.1, 0.5, 1.0];
    let routes: Vec<Route> = stages
        .iter()
        .map(|&f| Route::new("spam", 2, f, None))
        .collect();
    let keys = 20_000;
    let mut on_canary = [0usize; 3];
    for i in 0..keys {
        let key = format!("user-{i}");
        let arms: Vec<bool> = routes
            .iter()
            .map(|r| r.to_canary(r.hash_key(&key)))
            .collect();
        // A key on the canary stays there as the fraction grows.
        assert!(!arms[0] || arms[1], "{key}");
        assert!(arms[2], "everyone is on the canary at fraction 1");
        for (n, on) in on_canary.iter_mut().zip(&arms) {
            *n += usize::from(*on);
        }
    }
    for (n, f) in on_canary.iter().zip(stages) {
        let share = *n as f64 / f64::from(keys);
        assert!((share - f).abs() < 0.015, "{share} at {f}");
    }
    // The hash is the documented one, and differs between rollouts.
    let r = &routes[0];
    assert_eq!(
        r.hash_key("k"),
        crate::program::ngram_hash(crate::program::ngram_hash(2, "spam"), "k")
    );
    assert_ne!(
        Route::new("spam", 3, 0.1, None).hash_key("k"),
        r.hash_key("k")
    );
}

#[test]
fn input_routing_uses_the_sticky_key_or_the_canonical_input() {
    let by_user = Route::new("t", 1, 0.5, Some("/user/id".to_owned()));
    let a = json!({"user": {"id": "u1"}, "text": "one"});
    let b = json!({"text": "two", "user": {"id": "u1"}});
    assert_eq!(by_user.hash_input(&a), by_user.hash_input(&b));
    assert_eq!(by_user.hash_input(&a), by_user.hash_key("u1"));
    let whole = Route::new("t", 1, 0.5, None);
    // Key order does not matter; content does.
    let c = json!({"user": {"id": "u1"}, "text": "one"});
    assert_eq!(whole.hash_input(&a), whole.hash_input(&c));
    assert_ne!(whole.hash_input(&a), whole.hash_input(&b));
    // A missing sticky key falls back to the whole input.
    assert_eq!(by_user.hash_input(&json!({"text": "x"})), {
        let r = Route::new("t", 1, 0.5, None);
        r.hash_input(&json!({"text": "x"}))
    });
}

// ---- runtime ------------------------------------------------------------------------

/// spam when the text has any of `words`, else ham; never abstains.
fn program(words: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({"format": "loopai.program/1", "task": "spam",
        "inputs": [{"name": "text", "path": "/text", "type": "text"}],
        "features": [{"name": "hit", "op": "keywords", "source": "text", "terms": words}],
        "decide": {"op": "rules", "rules": [
            {"when": {"feature": "hit", "gt": 0}, "then": "spam", "confidence": 0.9},
            {"when": {"always": true}, "then": "ham", "confidence": 0.9}]},
        "output": {"kind": "label", "labels": ["spam", "ham"]}}))
    .unwrap()
}

/// Always `label`.
fn constant(label: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"format": "loopai.program/1", "task": "spam",
        "inputs": [{"name": "text", "path": "/text", "type": "text"}],
        "decide": {"op": "rules", "rules": [{"when": {"always": true}, "then": label, "confidence": 0.9}]},
        "output": {"kind": "label", "labels": ["spam", "ham"]}}))
    .unwrap()
}

/// A runtime whose only rollout checks are those of `flush` (the clock never moves) and
/// which follows the artifact cache only on `reload`, validating every execution against
/// an oracle that says spam for "prize" and "win".
fn runtime(dir: &Path) -> Runtime {
    runtime_with(dir, "sampling: {rate: 1}\n")
}

/// Like [`runtime`], with `yaml` (say a `sampling` section) before the rollout settings.
fn runtime_with(dir: &Path, yaml: &str) -> Runtime {
    let config = DeploymentConfig::from_yaml_str(
        &format!("{yaml}rollout:\n  min_samples_per_stage: 100\n  min_validations_per_stage: 50\n  max_error_rate_increase: 0.1\n  max_abstain_rate_increase: 0.1\n  p99_floor_ms: 100000\n"),
        "test",
    )
    .unwrap();
    let oracle = FnOracle::shared(|req| {
        let text = req.input["text"].as_str().unwrap_or_default();
        let spam = text.contains("prize") || text.contains("win");
        Ok(OracleAnswer::new(json!(if spam { "spam" } else { "ham" })))
    });
    Runtime::builder()
        .data_dir(dir)
        .task("spam")
        .config(config)
        .clock(TestClock::at(DAY1))
        .oracle(oracle)
        .follow_interval(Duration::ZERO)
        .build()
        .unwrap()
}

/// What the test oracle answers for `input`.
fn truth(input: &Value) -> &'static str {
    let text = input["text"].as_str().unwrap_or_default();
    if text.contains("prize") || text.contains("win") {
        "spam"
    } else {
        "ham"
    }
}

/// spam for "prize" and ham otherwise, both at 0.9, except "win": ham at only 0.6.
/// Unsure exactly where it is wrong (a quarter of [`text`]).
fn unsure_where_wrong() -> Vec<u8> {
    serde_json::to_vec(&json!({"format": "loopai.program/1", "task": "spam",
        "inputs": [{"name": "text", "path": "/text", "type": "text"}],
        "features": [
            {"name": "prize", "op": "keywords", "source": "text", "terms": ["prize"]},
            {"name": "win", "op": "keywords", "source": "text", "terms": ["win"]}],
        "decide": {"op": "rules", "rules": [
            {"when": {"feature": "prize", "gt": 0}, "then": "spam", "confidence": 0.9},
            {"when": {"feature": "win", "gt": 0}, "then": "ham", "confidence": 0.6},
            {"when": {"always": true}, "then": "ham", "confidence": 0.9}]},
        "output": {"kind": "label", "labels": ["spam", "ham"]}}))
    .unwrap()
}

fn text(i: u64) -> Value {
    let t = match i % 4 {
        0 => format!("win a car {i}"),
        1 => format!("claim your prize {i}"),
        _ => format!("see you at {i}"),
    };
    json!({ "text": t })
}

/// Executes `per_round` inputs then flushes (which checks the rollout), until `done`
/// or `rounds` rounds. Returns the number of the next input.
fn drive(
    rt: &Runtime,
    mut next: u64,
    per_round: u64,
    rounds: usize,
    done: impl Fn(&RolloutStatus) -> bool,
) -> u64 {
    for _ in 0..rounds {
        for _ in 0..per_round {
            rt.execute(&text(next)).unwrap();
            next += 1;
        }
        rt.flush(Duration::from_secs(30)).unwrap();
        if done(&rt.rollout().unwrap()) {
            return next;
        }
    }
    panic!("not reached after {rounds} rounds: {:#?}", rt.rollout());
}

#[test]
fn a_better_canary_is_promoted_through_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &program(&["prize"]), true);
    let v2 = install(dir.path(), &program(&["prize", "win"]), false);
    let rt = runtime(dir.path());
    rt.begin_rollout(v2).unwrap();
    let status = rt.rollout().unwrap();
    assert_eq!(
        (status.state, status.stage, status.fraction),
        (RolloutState::InProgress, 0, 0.1)
    );
    assert_eq!((status.stable_version, status.canary_version), (1, 2));
    drive(&rt, 0, 100, 200, |s| s.state == RolloutState::Promoted);
    assert_eq!(rt.active_version(), 2);
    assert_eq!(rt.artifacts().active_version().unwrap(), Some(2));
    let status = rt.rollout().unwrap();
    let kinds: Vec<RolloutEventKind> = status.recent_events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            RolloutEventKind::Started,
            RolloutEventKind::StageAdvanced,
            RolloutEventKind::StageAdvanced,
            RolloutEventKind::Promoted
        ]
    );
    assert_eq!(status.recent_events[1].fraction, 0.5);
    assert_eq!(status.canary.mismatches, 0);
    assert!(status.stable.mismatches > 0);
    // Every execution now runs v2, and the file says so.
    assert_eq!(rt.execute(&text(0)).unwrap().version, 2);
    let on_disk = rt.artifacts().rollout().unwrap().unwrap();
    assert_eq!(on_disk.state, RolloutState::Promoted);
    assert_eq!(rt.health().rollout.unwrap().state, RolloutState::Promoted);
}

/// Under `uncertainty` sampling the stable version below sends every execution it is
/// wrong about to validation (it is unsure of them), while the canary — wrong twice as
/// often, always sure of itself — sends only its random share. Counting every
/// validation, the stable arm looks worse (a mismatch rate of about 0.25 / (0.25 +
/// 0.75 × 0.2) ≈ 0.62 against the canary's 0.5) and the canary would be promoted. Only
/// the random draws are comparable samples of both arms: counting those, the canary
/// is rolled back, and the arms' counts are exactly the executions the random draw
/// picked, whatever else applied to them.
#[test]
fn only_random_samples_count_in_the_mismatch_comparison() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &unsure_where_wrong(), true);
    let v2 = install(dir.path(), &constant("spam"), false);
    let sampling =
        "sampling: {strategy: [random, uncertainty], rate: 0.2, uncertainty_threshold: 0.7, seed: 11}\n";
    let rt = runtime_with(dir.path(), sampling);
    rt.begin_rollout(v2).unwrap();
    // The random draw is a function of the execution id, and ids come from this thread's
    // generator: seeded, the test is the same every run. Unseeded, the rollback took
    // between 9 and 70 rounds over 40 seeds, and once (in `scripts/repeat-tests.sh`) none
    // came within 100 rounds.
    fastrand::seed(5);
    let mut results = Vec::new();
    for round in 0..100u64 {
        for i in 0..100 {
            let input = text(round * 100 + i);
            let r = rt.execute(&input).unwrap();
            results.push((truth(&input), r));
        }
        rt.flush(Duration::from_secs(30)).unwrap();
        if rt.rollout().unwrap().state != RolloutState::InProgress {
            break;
        }
    }
    let status = rt.rollout().unwrap();
    assert_eq!(status.state, RolloutState::RolledBack, "{status:#?}");
    assert!(
        status
            .decision
            .starts_with("mismatch_rate is significantly worse"),
        "{}",
        status.decision
    );
    // What the random draw alone picked (the same draw: same seed and rate).
    let config =
        DeploymentConfig::from_yaml_str("sampling: {strategy: random, rate: 0.2, seed: 11}\n", "t")
            .unwrap();
    let draw = crate::sampler::Sampler::new(&config.sampling, 0);
    let mut expected = BTreeMap::<u32, (u64, u64)>::new();
    for (answer, r) in &results {
        if draw.decide(&r.execution_id, None, 1.0, 0).is_some() {
            let e = expected.entry(r.version).or_default();
            e.0 += 1;
            e.1 += u64::from(r.output != *answer);
        }
    }
    assert_eq!(
        (status.stable.validations, status.stable.mismatches),
        expected[&1]
    );
    assert_eq!(
        (status.canary.validations, status.canary.mismatches),
        expected[&v2]
    );
    // Every sample was still validated and recorded.
    let sampled = results.iter().filter(|(_, r)| r.sampled).count() as u64;
    let metrics = rt.validation_metrics();
    assert_eq!(metrics.validated, sampled);
    assert!(sampled > status.stable.validations + status.canary.validations);
}

/// With sampling that is never random (uncertainty only, rate 0) the validations that
/// happen say nothing comparable about the arms: the rollout is decided as without an
/// oracle, on executions alone, and the arms count no validation.
#[test]
fn without_random_samples_the_rollout_is_decided_without_validations() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &unsure_where_wrong(), true);
    let v2 = install(dir.path(), &program(&["prize", "win"]), false);
    let rt = runtime_with(
        dir.path(),
        "sampling: {strategy: uncertainty, rate: 0, uncertainty_threshold: 0.7}\n",
    );
    rt.begin_rollout(v2).unwrap();
    let status = rt.rollout().unwrap();
    assert_eq!(
        status
            .comparisons
            .iter()
            .map(|m| m.metric)
            .collect::<Vec<_>>(),
        ["error_rate", "abstain_rate"]
    );
    drive(&rt, 0, 100, 200, |s| s.state != RolloutState::InProgress);
    let status = rt.rollout().unwrap();
    assert_eq!(status.state, RolloutState::Promoted, "{status:#?}");
    assert_eq!(rt.active_version(), v2);
    assert_eq!(
        (status.stable.validations, status.canary.validations),
        (0, 0)
    );
    assert!(
        !status.decision.contains("validations"),
        "{}",
        status.decision
    );
    // The unsure stable version's executions were validated all the same.
    assert!(rt.validation_metrics().validated > 0);
}

#[test]
fn a_caller_key_keeps_its_arm_as_the_canary_grows() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &program(&["prize"]), true);
    let v2 = install(dir.path(), &program(&["prize", "win"]), false);
    let rt = runtime(dir.path());
    rt.begin_rollout(v2).unwrap();
    let arms = |rt: &Runtime| -> Vec<u32> {
        (0..1000)
            .map(|i| {
                // Different inputs for the same key: the key alone decides.
                let input = text(i * 7 + 3);
                rt.execute_with_key(&input, &format!("user-{i}"))
                    .unwrap()
                    .version
            })
            .collect()
    };
    let stage0 = arms(&rt);
    assert_eq!(stage0, arms(&rt), "same key, same arm within a stage");
    let on_canary = stage0.iter().filter(|&&v| v == v2).count();
    assert!(
        (60..=140).contains(&on_canary),
        "{on_canary} of 1000 at 10%"
    );
    drive(&rt, 0, 100, 200, |s| {
        s.stage == 1 || s.state != RolloutState::InProgress
    });
    assert_eq!(rt.rollout().unwrap().stage, 1);
    let stage1 = arms(&rt);
    for (a, b) in stage0.iter().zip(&stage1) {
        assert!(*a != v2 || *b == v2, "a key left the canary");
    }
    let on_canary = stage1.iter().filter(|&&v| v == v2).count();
    assert!(
        (440..=560).contains(&on_canary),
        "{on_canary} of 1000 at 50%"
    );
}

#[test]
fn a_worse_canary_is_rolled_back_and_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &program(&["prize"]), true);
    let v2 = install(dir.path(), &constant("spam"), false);
    let rt = runtime(dir.path());
    rt.begin_rollout(v2).unwrap();
    drive(&rt, 0, 100, 200, |s| s.state != RolloutState::InProgress);
    let status = rt.rollout().unwrap();
    assert_eq!(status.state, RolloutState::RolledBack, "{status:#?}");
    assert!(
        status
            .decision
            .starts_with("mismatch_rate is significantly worse"),
        "{}",
        status.decision
    );
    assert_eq!(rt.active_version(), 1);
    assert_eq!(rt.artifacts().active_version().unwrap(), Some(1));
    for i in 0..50 {
        assert_eq!(rt.execute(&text(i)).unwrap().version, 1);
    }
    let err = rt.begin_rollout(v2).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Artifact);
    assert!(err.to_string().contains("was rolled back"), "{err}");
    let meta = rt.artifacts().verify(v2).unwrap();
    assert!(meta.extra.contains_key("rolled_back_at"));
}

#[test]
fn a_restart_resumes_the_rollout_at_the_same_stage() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &program(&["prize"]), true);
    let v2 = install(dir.path(), &program(&["prize", "win"]), false);
    let rt = runtime(dir.path());
    rt.begin_rollout(v2).unwrap();
    // Small rounds: at most 20 canary executions after reaching stage 1, fewer than
    // the 100 its promotion needs.
    let next = drive(&rt, 0, 20, 500, |s| s.stage == 1);
    rt.shutdown(Duration::from_secs(10)).unwrap();
    let before = rt.artifacts().rollout().unwrap().unwrap();
    drop(rt);
    assert_eq!((before.state, before.stage), (RolloutState::InProgress, 1));

    let rt = runtime(dir.path());
    let after = rt.rollout().unwrap();
    assert_eq!(
        (after.state, after.stage, after.fraction),
        (RolloutState::InProgress, 1, 0.5)
    );
    assert_eq!(after.canary, before.canary, "counters restored");
    assert_eq!(after.stable, before.stable);
    assert_eq!(
        after.recent_events.last().unwrap().kind,
        RolloutEventKind::Resumed
    );
    // The canary serves again: some keys get v2.
    let versions: std::collections::BTreeSet<u32> = (0..200)
        .map(|i| rt.execute(&text(next + i)).unwrap().version)
        .collect();
    assert_eq!(versions.into_iter().collect::<Vec<_>>(), [1, 2]);
    drive(&rt, next + 200, 100, 200, |s| {
        s.state == RolloutState::Promoted
    });
    assert_eq!(rt.active_version(), 2);
}

#[test]
fn manual_promote_and_abort() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &program(&["prize"]), true);
    let v2 = install(dir.path(), &program(&["win"]), false);
    let v3 = install(dir.path(), &constant("ham"), false);
    let rt = runtime(dir.path());
    assert_eq!(rt.promote().unwrap_err().kind(), ErrorKind::Artifact);
    assert_eq!(rt.abort_rollout().unwrap(), None);
    assert!(rt.rollout().is_none());
    rt.begin_rollout(v2).unwrap();
    assert_eq!(rt.abort_rollout().unwrap(), Some(v2));
    assert_eq!(rt.rollout().unwrap().state, RolloutState::RolledBack);
    rt.begin_rollout(v3).unwrap();
    assert_eq!(rt.promote().unwrap(), v3);
    assert_eq!(
        (rt.active_version(), rt.rollout().unwrap().state),
        (3, RolloutState::Promoted)
    );
    // Activating by hand is always possible, and aborts a rollout in progress.
    rt.begin_rollout(1).unwrap();
    rt.activate(v2).unwrap();
    let status = rt.rollout().unwrap();
    assert_eq!(
        (status.state, rt.active_version()),
        (RolloutState::Aborted, v2)
    );
    // A rollout disabled by configuration activates at once.
    let config = DeploymentConfig::from_yaml_str("rollout: {enabled: false}\n", "t").unwrap();
    drop(rt);
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .task("spam")
        .config(config)
        .build()
        .unwrap();
    rt.begin_rollout(v3).unwrap();
    assert_eq!(rt.active_version(), v3);
}

#[test]
fn a_corrupt_rollout_file_never_blocks_manual_activation() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &program(&["prize"]), true);
    install(dir.path(), &program(&["win"]), false);
    let store = ArtifactStore::open(dir.path(), "spam").unwrap();
    std::fs::write(store.task_dir().join(ROLLOUT_FILE), "{oops").unwrap();
    let err = store.rollout().unwrap_err();
    assert!(
        err.to_string()
            .starts_with("artifacts/spam/rollout.json: invalid"),
        "{err}"
    );
    assert_eq!(store.abort_rollout("x").unwrap(), None);
    assert_eq!(store.promote(Some(2)).unwrap(), 2);
    // A runtime starts anyway, and a new rollout replaces the file.
    let rt = runtime(dir.path());
    assert!(rt.rollout().is_none());
    rt.begin_rollout(1).unwrap();
    assert_eq!(store.rollout().unwrap().unwrap().canary_version, 1);
}

#[test]
fn changes_made_by_the_cli_are_followed() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &program(&["prize"]), true);
    let v2 = install(dir.path(), &program(&["win"]), false);
    let rt = runtime(dir.path());
    rt.begin_rollout(v2).unwrap();
    // `loopai artifacts promote` in another process.
    let store = ArtifactStore::open(dir.path(), "spam").unwrap();
    assert_eq!(store.promote(None).unwrap(), v2);
    rt.flush(Duration::from_secs(10)).unwrap();
    assert_eq!(rt.active_version(), v2);
    assert_eq!(rt.rollout().unwrap().state, RolloutState::Promoted);
    // `loopai artifacts rollback` during a rollout aborts it.
    rt.begin_rollout(1).unwrap();
    assert_eq!(store.abort_rollout("by hand").unwrap(), Some(1));
    rt.flush(Duration::from_secs(10)).unwrap();
    assert_eq!(rt.rollout().unwrap().state, RolloutState::RolledBack);
    for i in 0..50 {
        assert_eq!(rt.execute(&text(i)).unwrap().version, v2);
    }
}

#[test]
fn a_shutdown_right_after_a_cli_rollback_keeps_the_rollback() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &program(&["prize"]), true);
    let v2 = install(dir.path(), &program(&["win"]), false);
    let rt = runtime(dir.path());
    rt.begin_rollout(v2).unwrap();
    // Unsaved counters, then `loopai artifacts rollback` in another process, then a
    // shutdown before the runtime's next check.
    for i in 0..20 {
        rt.execute(&text(i)).unwrap();
    }
    let store = ArtifactStore::open(dir.path(), "spam").unwrap();
    assert_eq!(store.abort_rollout("by hand").unwrap(), Some(v2));
    rt.shutdown(Duration::from_secs(10)).unwrap();
    let status = store.rollout().unwrap().unwrap();
    assert_eq!(
        (status.canary_version, status.state),
        (v2, RolloutState::RolledBack)
    );
    drop(rt);
    // A restarted runtime does not resume the canary.
    let rt = runtime(dir.path());
    assert_eq!(rt.rollout().unwrap().state, RolloutState::RolledBack);
    for i in 0..50 {
        assert_eq!(rt.execute(&text(i)).unwrap().version, 1);
    }
    rt.shutdown(Duration::from_secs(10)).unwrap();
    drop(rt);
    // The version's metadata remembers it even when rollout.json is lost.
    assert!(store
        .verify(v2)
        .unwrap()
        .extra
        .contains_key("rolled_back_at"));
    std::fs::remove_file(store.task_dir().join(ROLLOUT_FILE)).unwrap();
    let rt = runtime(dir.path());
    let err = rt.begin_rollout(v2).unwrap_err();
    assert!(err.to_string().contains("rolled back"), "{err}");
}

/// Two threads execute without pause while versions are swapped 100 times by every
/// means (activate, begin_rollout, promote): no call fails, and every output comes
/// from the version the result names.
#[test]
fn hot_swap_under_load_fails_no_call() {
    let dir = tempfile::tempdir().unwrap();
    // Odd versions say ham, even versions spam.
    for v in 1..=4u32 {
        let label = if v % 2 == 1 { "ham" } else { "spam" };
        install(dir.path(), &constant(label), v == 1);
    }
    let config = DeploymentConfig::from_yaml_str("rollout: {stages: [0.5, 1.0]}\n", "t").unwrap();
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .task("spam")
        .config(config)
        .clock(TestClock::at(DAY1))
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (rt, stop, runs, failures) =
                (rt.clone(), stop.clone(), runs.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let input = json!({"text": format!("message {i}")});
                    let result = if w == 0 {
                        rt.execute(&input)
                    } else {
                        rt.execute_with_key(&input, &format!("user-{}", i % 97))
                    };
                    match result {
                        Ok(r) => {
                            let expect = if r.version % 2 == 1 { "ham" } else { "spam" };
                            if r.output != expect {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += 1;
                    runs.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut swaps = 0;
    let mut step = 0u32;
    while swaps < 100 {
        // Let executions happen between swaps, however the threads are scheduled.
        let before = runs.load(Ordering::Relaxed);
        while runs.load(Ordering::Relaxed) < before + 4 {
            std::thread::yield_now();
        }
        let active = rt.active_version();
        let other = active % 4 + 1;
        let swapped = match step % 3 {
            0 => rt.begin_rollout(other).map(|()| true),
            1 => rt.promote().map(|_| true),
            _ => rt.activate(other).map(|()| true),
        };
        assert!(swapped.unwrap(), "step {step}");
        step += 1;
        swaps += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "failed calls");
    assert!(runs.load(Ordering::Relaxed) >= 400);
}

/// A runtime on `clock` without an oracle (decisions on executions alone), checking
/// in the background every 100 ms of that clock.
fn runtime_on(dir: &Path, clock: Arc<dyn Clock>) -> Runtime {
    let config = DeploymentConfig::from_yaml_str(
        "rollout:\n  min_samples_per_stage: 100\n  max_error_rate_increase: 0.1\n  max_abstain_rate_increase: 0.1\n  check_interval_ms: 100\n  p99_floor_ms: 100000\n",
        "test",
    )
    .unwrap();
    Runtime::builder()
        .data_dir(dir)
        .task("spam")
        .config(config)
        .clock(clock)
        .build()
        .unwrap()
}

/// How long the tests wait for something the runtime does in the background.
const WAIT: Duration = Duration::from_secs(60);

/// v1 active, v2 in its first canary stage with 2000 executions behind it, on a
/// manual clock that has not moved (so no check has run yet).
fn rolling_out_after_2000_executions(dir: &Path) -> (Runtime, Arc<TestClock>) {
    install(dir, &program(&["prize"]), true);
    let v2 = install(dir, &program(&["prize", "win"]), false);
    let clock = TestClock::at(DAY1);
    let rt = runtime_on(dir, clock.clone());
    rt.begin_rollout(v2).unwrap();
    for i in 0..2000 {
        rt.execute(&text(i)).unwrap();
    }
    // Executions are counted once the writer has logged them (issue #15): wait until a
    // stage's worth is counted, so that the first check the clock allows can advance.
    wait_for("the executions counted", WAIT, || {
        rt.rollout().unwrap().canary.stage_executions >= 100
    });
    (rt, clock)
}

/// Without `flush`, checks happen in the background when `check_interval_ms` of the
/// runtime's clock have passed — never before, however long the thread waits.
#[test]
fn background_checks_follow_the_runtime_clock() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, clock) = rolling_out_after_2000_executions(dir.path());
    // Enough executions to advance, but the clock has not moved: no check yet.
    assert_eq!(rt.rollout().unwrap().decision, "started");
    clock.advance(100);
    wait_for("a background check", WAIT, || {
        rt.rollout().unwrap().stage == 1
    });
    assert_eq!(
        rt.rollout().unwrap().recent_events.last().unwrap().kind,
        RolloutEventKind::StageAdvanced
    );
    rt.shutdown(Duration::from_secs(10)).unwrap();
}

/// A rollout check stuck in I/O on `rollout.json` (here: a FIFO that nobody writes)
/// holds up neither the execution log — durable executions still return, as checks do
/// not run on the dataset writer thread — nor `shutdown` beyond its timeout.
#[cfg(unix)]
#[test]
fn a_stuck_rollout_check_holds_up_neither_the_execution_log_nor_shutdown() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &program(&["prize"]), true);
    let v2 = install(dir.path(), &program(&["prize", "win"]), false);
    let config = DeploymentConfig::from_yaml_str(
        "storage: {durability: durable}\nrollout: {check_interval_ms: 1}\n",
        "test",
    )
    .unwrap();
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .task("spam")
        .config(config)
        .build()
        .unwrap();
    rt.begin_rollout(v2).unwrap();
    let task_dir = rt.artifacts().task_dir().to_path_buf();
    let path = task_dir.join(ROLLOUT_FILE);
    let saved = std::fs::read(&path).unwrap();
    let fifo = task_dir.join("rollout.fifo");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    std::fs::rename(&fifo, &path).unwrap();
    // Once a check has opened the FIFO to read it, opening its write end succeeds; while
    // that end stays open, the check is stuck reading.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let held = loop {
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path);
        match opened {
            Ok(f) => break f,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no check read the file"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{e}"),
        }
    };
    let release = move || {
        std::fs::rename(&path, task_dir.join("stuck.fifo")).unwrap();
        std::fs::write(task_dir.join("rollout.tmp"), &saved).unwrap();
        std::fs::rename(task_dir.join("rollout.tmp"), &path).unwrap();
        drop(held);
    };
    let (done, logged) = std::sync::mpsc::channel();
    let executing = rt.clone();
    let worker = std::thread::spawn(move || {
        for i in 0..3 {
            executing.execute(&text(i)).unwrap();
        }
        let _ = done.send(());
    });
    if logged.recv_timeout(Duration::from_secs(60)).is_err() {
        release();
        worker.join().unwrap();
        panic!("durable executions waited for a stuck rollout check");
    }
    worker.join().unwrap();
    let err = rt.shutdown(Duration::from_secs(5)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.to_string().contains("rollout"), "{err}");
    let log = dir.path().join("datasets/spam/executions");
    let lines: usize = std::fs::read_dir(log)
        .unwrap()
        .map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .lines()
                .count()
        })
        .sum();
    assert_eq!(lines, 3);
    // Once the check is released, the thread stops and a second shutdown completes,
    // persisting the counters.
    release();
    rt.shutdown(Duration::from_secs(30)).unwrap();
    let status = rt.artifacts().rollout().unwrap().unwrap();
    assert_eq!(status.state, RolloutState::InProgress);
    assert_eq!(status.canary.executions + status.stable.executions, 3);
}

/// In a forked child the rollout thread does not exist: dropping the runtime there
/// does not wait for it, and the parent's thread goes on checking.
#[cfg(unix)]
#[test]
fn a_forked_child_does_not_wait_for_the_rollout_thread() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, clock) = rolling_out_after_2000_executions(dir.path());
    // SAFETY: the child calls methods that fail fast, drops the runtime and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let refused =
            matches!(rt.flush(Duration::from_millis(10)), Err(e) if e.kind() == ErrorKind::Closed);
        drop(rt);
        unsafe { libc::_exit(if refused { 0 } else { 1 }) };
    }
    let status = std::cell::Cell::new(0);
    wait_for("the forked child's exit", WAIT, || {
        let mut s = 0;
        // SAFETY: waits for our own child without blocking.
        let exited = unsafe { libc::waitpid(pid, &mut s, libc::WNOHANG) } == pid;
        status.set(s);
        exited
    });
    let status = status.get();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child checks failed"
    );
    clock.advance(100);
    wait_for("a background check in the parent", WAIT, || {
        rt.rollout().unwrap().stage == 1
    });
    rt.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn controller_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<RolloutController>();
    check::<RolloutStatus>();
    check::<CanarySlot>();
}

/// Issue #15: the rollout counts an execution only once it is in the local log; one that
/// could not be written is never counted.
#[test]
fn a_rollout_counts_only_executions_that_are_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &program(&["prize"]), true);
    install(dir.path(), &program(&["prize", "win"]), false);
    let rt = runtime_with(dir.path(), "sampling: {rate: 0}\n");
    rt.begin_rollout(2).unwrap();
    // The log cannot be written: a file where the executions directory was.
    let logs = dir.path().join("datasets/spam/executions");
    std::fs::remove_dir_all(&logs).unwrap();
    std::fs::write(&logs, b"").unwrap();
    for i in 0..40 {
        rt.execute(&json!({ "text": format!("hello {i}") }))
            .unwrap();
    }
    assert!(rt.flush(std::time::Duration::from_secs(5)).is_err());
    let status = rt.rollout().unwrap();
    assert_eq!(status.stable.executions + status.canary.executions, 0);
    // Repaired: the kept records are written, then counted.
    std::fs::remove_file(&logs).unwrap();
    std::fs::create_dir(&logs).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while rt.flush(std::time::Duration::from_secs(5)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the log never recovered"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = rt.rollout().unwrap();
    assert_eq!(status.stable.executions + status.canary.executions, 40);
    rt.shutdown(std::time::Duration::from_secs(10)).unwrap();
}

/// Issue #15 item 6: a rollout started by a short-lived process (`loopai rollout start`) is
/// followed by a running runtime — same canary for the same keys — which decides nothing
/// while its starter drives it, and takes it over once the starter releases it.
#[test]
fn a_following_runtime_takes_over_a_rollout_released_by_its_starter() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &program(&["prize"]), true);
    let v2 = install(dir.path(), &program(&["win"]), false);
    let file = dir.path().join("artifacts/spam").join(ROLLOUT_FILE);
    let on_disk = || serde_json::from_slice::<Value>(&std::fs::read(&file).unwrap()).unwrap();
    let server = runtime(dir.path());
    let starter = runtime(dir.path());
    starter.begin_rollout(v2).unwrap();
    let starter_id = starter.rollout().unwrap().driver.unwrap();
    assert_eq!(on_disk()["driver"], starter_id.as_str());

    assert_eq!(server.reload().unwrap(), 1);
    let followed = server.rollout().unwrap();
    assert_eq!(
        (followed.state, followed.canary_version, followed.driver),
        (RolloutState::InProgress, v2, Some(starter_id.clone()))
    );
    let mut canary = 0;
    for i in 0..200 {
        let here = server.execute(&text(i)).unwrap().version;
        assert_eq!(here, starter.execute(&text(i)).unwrap().version, "{i}");
        canary += u32::from(here == v2);
    }
    assert!(canary > 0, "the follower serves the canary");
    // A follower decides and writes nothing.
    let before = std::fs::read(&file).unwrap();
    server.flush(Duration::from_secs(10)).unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), before);

    // The starter exits: it releases the rollout, and the server takes it over.
    starter.shutdown(Duration::from_secs(10)).unwrap();
    assert!(on_disk().get("driver").is_none(), "{}", on_disk());
    server.reload().unwrap();
    let driver = server.rollout().unwrap().driver.unwrap();
    assert_ne!(driver, starter_id);
    assert_eq!(on_disk()["driver"], driver.as_str());
    assert_eq!(on_disk()["state"], "in_progress");
    // It drives now: its decisions are written.
    assert_eq!(server.promote().unwrap(), v2);
    assert_eq!(on_disk()["state"], "promoted");
    server.shutdown(Duration::from_secs(10)).unwrap();
}
