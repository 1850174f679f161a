//! End-to-end tests of the telemetry queue through a [`Runtime`] and a real HTTP collector
//! on 127.0.0.1.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use super::testing::{closed_port_url, FakeTransport, TestCollector};
use super::*;
use crate::runtime::Runtime;
use crate::testing::{self, wait_for, TestClock, DAY1};

const PROGRAM: &[u8] = br#"{"format": "loopai.program/1", "task": "spam",
  "inputs": [{"name": "text", "path": "/text", "type": "text"}],
  "features": [{"name": "prize", "op": "keywords", "source": "text", "terms": ["prize"], "case_insensitive": true}],
  "decide": {"op": "rules", "rules": [
    {"when": {"feature": "prize", "gt": 0}, "then": "junkmail", "confidence": 0.95},
    {"when": {"always": true}, "then": "goodmail", "confidence": 0.55}]},
  "output": {"kind": "label", "labels": ["junkmail", "goodmail"], "abstain_below": 0.5}}"#;

const WAIT: Duration = Duration::from_secs(20);

fn install(dir: &Path) {
    testing::install(dir, PROGRAM, true);
}

/// A configuration uploading to `url` with `privacy_mode: mode`; `extra` adds sections.
fn config(url: &str, mode: &str, telemetry_extra: &str, extra: &str) -> DeploymentConfig {
    let yaml = format!(
        "cloud:\n  api_url: {url}\n  api_key: sk-test-123\n\
         telemetry:\n  privacy_mode: {mode}\n{telemetry_extra}{extra}"
    );
    DeploymentConfig::from_yaml_str(&yaml, "test").unwrap()
}

fn runtime(dir: &Path, config: DeploymentConfig) -> Runtime {
    Runtime::builder()
        .data_dir(dir)
        .task("spam")
        .config(config)
        .build()
        .unwrap()
}

fn telemetry(rt: &Runtime) -> TelemetryMetrics {
    rt.health().telemetry.expect("telemetry runs")
}

fn validation(
    execution_id: Uuid,
    oracle_output: Value,
    matched: bool,
) -> crate::dataset::ValidationRecord {
    crate::dataset::ValidationRecord::new(
        execution_id,
        1,
        oracle_output,
        12.5,
        0.002,
        matched,
        if matched { 1.0 } else { 0.0 },
        "exact",
        Timestamp(1_764_028_800_000),
    )
}

/// Random uppercase consonants (no `T` or `Z`, which timestamps hold): a token that
/// cannot occur in a batch's own structure, numbers, UUIDs or lowercase hex hashes.
fn token(rng: &mut fastrand::Rng) -> String {
    const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSVWXY";
    (0..rng.usize(8..16))
        .map(|_| ALPHABET[rng.usize(..ALPHABET.len())] as char)
        .collect()
}

/// A 4-byte sequence of one of `secrets` that occurs in `payload` (longer shared sequences
/// contain one), described.
fn shared_window(payload: &[u8], secrets: &[String]) -> Option<String> {
    let windows: HashSet<&[u8]> = payload.windows(4).collect();
    secrets.iter().find_map(|secret| {
        secret
            .as_bytes()
            .windows(4)
            .find(|w| windows.contains(w))
            .map(|w| format!("{:?} of input {secret:?}", String::from_utf8_lossy(w)))
    })
}

#[test]
fn strict_uploads_contain_no_byte_sequence_of_any_input() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path());
    let collector = TestCollector::start();
    // Everything sampled and validated: the most a strict batch could carry.
    let rt = runtime(
        dir.path(),
        config(
            &collector.url(),
            "strict",
            "  batch_size: 25\n",
            "sampling:\n  strategy: random\n  rate: 1\n",
        ),
    );
    let mut rng = fastrand::Rng::with_seed(0x0571_21c7);
    // Inputs are random tokens around a few PII shapes. No 4-byte sequence of them can
    // occur in a batch by chance: no word of the format, no run of digits, `-`, `.` or `,`
    // (timestamps, latencies), no lowercase hex (ids, hashes). So any shared 4-byte
    // sequence is a leak.
    let mut secrets: Vec<String> = Vec::new();
    for i in 0..60 {
        let mut t = || token(&mut rng);
        let text = match i % 4 {
            0 => format!("{} prize {} mail {}@{}.org", t(), t(), t(), t()),
            1 => format!("call {} on +44 20 794 095 or {}", t(), t()),
            2 => format!("{}-{} {}", t(), t(), t()),
            _ => format!("ssn 078 05 112 for {}", t()),
        };
        let result = rt.execute(&json!({ "text": text })).unwrap();
        assert!(result.sampled);
        // The oracle's answer is text too: a label, or something quoting the input.
        let answer = if i % 2 == 0 {
            json!(result.output)
        } else {
            json!(format!("{} {text}", token(&mut rng)))
        };
        rt.record_validation(validation(result.execution_id, answer, i % 2 == 0))
            .unwrap();
        secrets.push(text);
    }
    // Failures log their input too: a wrong field and a document that is not JSON.
    let wrong = token(&mut rng);
    rt.execute(&json!({ "body": wrong })).unwrap_err();
    secrets.push(wrong);
    let broken = format!("[{} {}", token(&mut rng), token(&mut rng));
    rt.execute_json(broken.as_bytes()).unwrap_err();
    secrets.push(broken);
    rt.flush(WAIT).unwrap();

    let requests = collector.requests();
    assert!(requests.len() >= 5, "{} uploads", requests.len());
    // The detector itself finds a quoted input (the control for the assertions below).
    let quoted = serde_json::to_vec(&json!({"x": format!("[{}]", secrets[7])})).unwrap();
    assert!(shared_window(&quoted, &secrets).is_some());
    let mut executions = 0;
    let mut validations = 0;
    for request in &requests {
        let payload = request.json_bytes();
        if let Some(leak) = shared_window(&payload, &secrets) {
            panic!("strict payload contains {leak}");
        }
        // Not even the program's labels: output classes are keyed hashes.
        let text = String::from_utf8(payload).unwrap();
        for label in ["junkmail", "goodmail", "prize"] {
            assert!(!text.contains(label), "{label} in {text}");
        }
        let batch: TelemetryBatch = serde_json::from_str(&text).unwrap();
        assert_eq!(batch.privacy_mode, PrivacyMode::Strict);
        assert!(batch.metrics.outputs.keys().all(|k| k.len() == 64));
        for s in &batch.execution_summaries {
            assert!(s.input.is_none() && s.output.is_none() && s.error.is_none());
            assert_eq!(s.input_hash.len(), 64);
            assert_eq!(s.output_hash.as_ref().map(String::len), Some(64));
        }
        executions += batch.metrics.executions;
        validations += batch.metrics.validations;
    }
    assert_eq!(executions, 62);
    assert_eq!(validations, 60);
    let m = telemetry(&rt);
    assert_eq!((m.sent, m.spooled_batches), (requests.len() as u64, 0));
}

#[test]
fn balanced_sends_sampled_records_with_pii_redacted_over_http() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path());
    let collector = TestCollector::start();
    // Uncertainty sampling: the 0.55-confidence `goodmail` answers are sampled, `junkmail`
    // (0.95) never.
    let rt = runtime(
        dir.path(),
        config(
            &format!("{}/", collector.url()),
            "balanced",
            "",
            "sampling:\n  strategy: uncertainty\n  rate: 0\n  uncertainty_threshold: 0.9\n",
        ),
    );
    let sampled = rt
        .execute(&json!({"text": "hello, mail me at bob@example.com or +44 20 7946 0958"}))
        .unwrap();
    assert!(sampled.sampled);
    let unsampled = rt
        .execute(&json!({"text": "win a prize, alice@example.org"}))
        .unwrap();
    assert!(!unsampled.sampled);
    rt.record_validation(validation(
        sampled.execution_id,
        json!("write to carol@example.net"),
        false,
    ))
    .unwrap();
    rt.flush(WAIT).unwrap();

    let requests = collector.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/api/v1/telemetry")
    );
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("authorization"), Some("Bearer sk-test-123"));
    assert_eq!(&r.body[..2], b"\x1f\x8b", "gzip magic");
    let text = String::from_utf8(r.json_bytes()).unwrap();
    for leak in ["bob@", "7946", "alice", "carol@", "prize"] {
        assert!(!text.contains(leak), "{leak} in {text}");
    }
    let batch: TelemetryBatch = serde_json::from_str(&text).unwrap();
    assert_eq!(batch.format, TELEMETRY_FORMAT);
    assert_eq!(batch.task_id, "spam");
    assert_eq!(batch.program_version, 1);
    assert_eq!(batch.privacy_mode, PrivacyMode::Balanced);
    let m = &batch.metrics;
    assert_eq!((m.executions, m.sampled, m.by_status.success), (2, 1, 2));
    assert_eq!((m.validations, m.matches, m.match_rate), (1, 0, Some(0.0)));
    assert_eq!(m.outputs.get("goodmail"), Some(&1));
    assert_eq!(m.outputs.get("junkmail"), Some(&1));
    assert!(m.latency_ms.as_ref().is_some_and(|l| l.p50 <= l.p99));
    assert!((m.mean_confidence.unwrap() - 0.75).abs() < 1e-9);
    assert_eq!(batch.execution_summaries.len(), 1, "sampled only");
    let s = &batch.execution_summaries[0];
    assert_eq!(s.execution_id, sampled.execution_id);
    assert_eq!(
        s.input,
        Some(json!({"text": "hello, mail me at [EMAIL] or [PHONE]"}))
    );
    assert_eq!(s.output, Some(json!("goodmail")));
    assert_eq!(s.input_hash.len(), 64);
    assert_eq!(s.output_hash, None);
    let v = &batch.sampled_validations[0];
    assert_eq!(v.oracle_output, Some(json!("write to [EMAIL]")));
    assert!(!v.matched);
    // The deployment id was generated once and is kept.
    let id = std::fs::read_to_string(dir.path().join(DEPLOYMENT_ID_FILE)).unwrap();
    assert_eq!(batch.deployment_id, id.trim());
    assert!(Uuid::try_parse(id.trim()).is_ok());
    let health = telemetry(&rt);
    assert_eq!(
        health.endpoint,
        format!("{}/api/v1/telemetry", collector.url())
    );
    assert_eq!((health.batches_cut, health.sent), (1, 1));
    assert_eq!(health.last_error, None);
}

#[test]
fn permissive_sends_every_execution_and_validation() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path());
    let collector = TestCollector::start();
    let rt = runtime(
        dir.path(),
        config(
            &collector.url(),
            "permissive",
            "",
            "runtime:\n  deployment_id: edge-7\nsampling:\n  strategy: random\n  rate: 0\nprivacy:\n  pii_detection: false\n",
        ),
    );
    let a = rt
        .execute(&json!({"text": "prize for dave@example.com"}))
        .unwrap();
    let b = rt.execute(&json!({"text": "hi"})).unwrap();
    rt.execute(&json!({"other": 1})).unwrap_err();
    rt.record_validation(validation(a.execution_id, json!("junkmail"), true))
        .unwrap();
    rt.record_validation(validation(b.execution_id, json!("junkmail"), false))
        .unwrap();
    rt.flush(WAIT).unwrap();
    let batches = collector.batches();
    assert_eq!(batches.len(), 1);
    let batch: TelemetryBatch = serde_json::from_value(batches[0].clone()).unwrap();
    assert_eq!(batch.deployment_id, "edge-7");
    assert_eq!(
        batch.execution_summaries.len(),
        3,
        "unsampled and failed too"
    );
    assert_eq!(
        batch.execution_summaries[0].input,
        Some(json!({"text": "prize for dave@example.com"})),
        "raw with pii_detection: false"
    );
    let failed = &batch.execution_summaries[2];
    assert_eq!(failed.status, crate::dataset::ExecutionStatus::Error);
    assert!(
        failed.error.as_deref().unwrap().contains("text"),
        "{failed:?}"
    );
    assert_eq!(batch.sampled_validations.len(), 2);
    assert_eq!(batch.metrics.by_status.error, 1);
    assert_eq!(batch.metrics.match_rate, Some(0.5));
}

#[test]
fn batches_are_cut_at_batch_size_per_flush_and_on_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path());
    let collector = TestCollector::start();
    let clock = TestClock::at(DAY1);
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .task("spam")
        .clock(clock.clone())
        .config(config(
            &collector.url(),
            "balanced",
            "  batch_size: 2\n",
            "",
        ))
        .build()
        .unwrap();
    for _ in 0..5 {
        rt.execute(&json!({"text": "hello"})).unwrap();
    }
    rt.flush(WAIT).unwrap();
    let sizes: Vec<u64> = collector
        .batches()
        .iter()
        .map(|b| b["metrics"]["executions"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [2, 2, 1]);

    // The interval (60 s by default) is measured with the runtime's clock.
    rt.execute(&json!({"text": "later"})).unwrap();
    // The batch is open (its interval started at the current clock time)...
    wait_for("record seen", WAIT, || telemetry(&rt).pending_records == 1);
    assert_eq!(telemetry(&rt).batches_cut, 3);
    // ... and is cut once the clock passes the interval, without a flush.
    clock.set(DAY1 + 60_000);
    wait_for("interval cut", WAIT, || {
        let m = telemetry(&rt);
        m.batches_cut == 4 && m.sent == 4
    });
    let last = collector.batches().pop().unwrap();
    assert_eq!(last["timestamp"], "2025-11-25T00:01:00.000Z");
    assert_eq!(last["metrics"]["executions"], 1);
}

#[test]
fn spooled_batches_survive_a_restart_and_are_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path());
    // Collector down: nothing listens.
    let rt = runtime(
        dir.path(),
        config(&closed_port_url(), "balanced", "  batch_size: 2\n", ""),
    );
    for _ in 0..5 {
        rt.execute(&json!({"text": "hello"})).unwrap();
    }
    let err = rt.flush(Duration::from_millis(300)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.to_string().contains("still spooled"), "{err}");
    rt.shutdown(WAIT).unwrap();
    let m = telemetry(&rt);
    assert_eq!((m.batches_cut, m.spooled_batches, m.sent), (3, 3, 0));
    assert!(m.retries >= 1);
    assert!(m.last_error.is_some());
    let spool_dir = dir.path().join("telemetry/spool/spam");
    assert_eq!(m.spool_dir, spool_dir);
    let mut spooled: Vec<String> = std::fs::read_dir(&spool_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json.gz"))
        .collect();
    spooled.sort();
    let ids: Vec<String> = spooled.iter().map(|n| n[17..53].to_owned()).collect();
    drop(rt);

    // Collector up: the next runtime sends the old batches first, each exactly once.
    let collector = TestCollector::start();
    let rt = runtime(dir.path(), config(&collector.url(), "balanced", "", ""));
    // (No count before the flush: the uploader starts with the runtime and may be moving
    // a batch from the spool to `sent` while the counters are read, one after the other;
    // `spooled + sent` read then was 4 once in 17 runs. What was found is checked below.)
    rt.flush(WAIT).unwrap();
    let sent: Vec<String> = collector
        .batches()
        .iter()
        .map(|b| b["batch_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sent, ids, "in cut order, each once");
    assert_eq!(telemetry(&rt).spooled_batches, 0);
    rt.shutdown(WAIT).unwrap();
    assert_eq!(collector.requests().len(), 3, "nothing re-sent at shutdown");
}

#[test]
fn permanent_refusals_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path());
    let collector = TestCollector::start();
    collector.respond(403, None);
    let rt = runtime(dir.path(), config(&collector.url(), "strict", "", ""));
    rt.execute(&json!({"text": "hello"})).unwrap();
    rt.flush(WAIT).unwrap();
    let m = telemetry(&rt);
    assert_eq!((m.dropped_permanent, m.sent, m.spooled_batches), (1, 0, 0));
    assert!(m.last_error.unwrap().contains("HTTP 403"));
    // The next batch goes through.
    rt.execute(&json!({"text": "hello"})).unwrap();
    rt.flush(WAIT).unwrap();
    assert_eq!(telemetry(&rt).sent, 1);
    assert_eq!(telemetry(&rt).last_error, None);
}

#[test]
fn the_spool_bound_drops_the_oldest_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let hasher = KeyedHasher::new(b"k");
    let ctx = BatchContext {
        deployment_id: "d".into(),
        task_id: "spam".into(),
        policy: PrivacyPolicy::new(
            PrivacyMode::Permissive,
            &crate::config::PrivacyConfig::default(),
            hasher,
        ),
        hash_inputs: false,
        sample_only: true,
        batch_size: 1,
        interval_ms: 60_000,
    };
    let settings = TelemetrySettings {
        spool_dir: dir.path().join("spool"),
        spool_max_bytes: 4096,
        request_timeout: Duration::from_secs(1),
        heartbeat_interval: Duration::ZERO,
        keys: None,
    };
    // The collector refuses every connection.
    let transport = Arc::new(FakeTransport::default());
    let (telemetry, mut observer) = Telemetry::start_with(
        ctx,
        settings,
        transport,
        "fake".into(),
        Arc::new(crate::clock::SystemClock),
    )
    .unwrap();
    let mut rng = fastrand::Rng::with_seed(3);
    let mut last = Uuid::nil();
    for _ in 0..40 {
        // ~600 bytes of incompressible input per batch.
        let text: String = (0..600).map(|_| rng.alphanumeric()).collect();
        let record = crate::dataset::ExecutionRecord::new(
            Uuid::new_v4(),
            "spam",
            1,
            json!({ "text": text }),
            json!("ham"),
            0.9,
            0.01,
            crate::dataset::ExecutionStatus::Success,
            None,
            false,
            Timestamp(0),
        );
        observer.execution(&record);
        last = record.execution_id;
    }
    let m = telemetry.metrics();
    assert_eq!(m.batches_cut, 40);
    assert!(m.spooled_bytes <= 4096, "{m:?}");
    assert!(m.spooled_batches >= 2 && m.spooled_batches < 10, "{m:?}");
    assert_eq!(m.dropped_spool_full + m.spooled_batches, 40, "{m:?}");
    // The newest batch is among the survivors.
    let newest = std::fs::read_dir(dir.path().join("spool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gz"))
        .max()
        .unwrap();
    let batch: Value =
        serde_json::from_slice(&super::testing::gunzip(&std::fs::read(newest).unwrap())).unwrap();
    assert_eq!(
        batch["execution_summaries"][0]["execution_id"],
        last.to_string()
    );
    telemetry.shutdown(WAIT).unwrap();
}

#[test]
fn telemetry_is_off_without_a_cloud_url() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path());
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .task("spam")
        .build()
        .unwrap();
    rt.execute(&json!({"text": "hello"})).unwrap();
    rt.flush(WAIT).unwrap();
    assert_eq!(rt.health().telemetry, None);
    assert!(!dir.path().join("telemetry").exists());
    let disabled = DeploymentConfig::from_yaml_str(
        "cloud:\n  api_url: http://127.0.0.1:9\ntelemetry:\n  enabled: false\n",
        "test",
    )
    .unwrap();
    let rt = runtime(dir.path(), disabled);
    assert_eq!(rt.health().telemetry, None);
}

#[test]
fn corrupt_spool_files_from_an_earlier_run_are_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path());
    let spool_dir = dir.path().join("telemetry/spool/spam");
    std::fs::create_dir_all(&spool_dir).unwrap();
    let name = format!("{:016}-{}.json.gz", 0, Uuid::new_v4());
    std::fs::write(spool_dir.join(&name), b"\x1f\x8b\x08 torn").unwrap();
    let collector = TestCollector::start();
    let rt = runtime(dir.path(), config(&collector.url(), "balanced", "", ""));
    rt.execute(&json!({"text": "hello"})).unwrap();
    rt.flush(WAIT).unwrap();
    let m = telemetry(&rt);
    assert_eq!((m.dropped_corrupt, m.sent), (1, 1));
    assert!(spool_dir.join("corrupt").join(&name).exists());
    assert_eq!(collector.requests().len(), 1);
}

#[test]
fn health_serializes_telemetry_metrics() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path());
    let collector = TestCollector::start();
    let rt = runtime(dir.path(), config(&collector.url(), "strict", "", ""));
    let health = serde_json::to_value(rt.health()).unwrap();
    for key in [
        "spooled_batches",
        "spooled_bytes",
        "sent",
        "retries",
        "dropped_spool_full",
        "dropped_permanent",
        "last_error",
    ] {
        assert!(health["telemetry"].get(key).is_some(), "{key}: {health}");
    }
    assert_eq!(health["telemetry"]["privacy_mode"], "strict");
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<TelemetryBatch>();
    check::<TelemetryMetrics>();
    check::<Telemetry>();
}

#[test]
fn heartbeats_report_the_runtime_state_and_ride_on_batches() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path());
    let collector = TestCollector::start();
    let rt = runtime(
        dir.path(),
        config(
            &collector.url(),
            "balanced",
            "  heartbeat_interval_sec: 3600\n  batch_size: 2\n",
            "runtime:\n  deployment_id: edge-hb-1\n",
        ),
    );
    // The first heartbeat goes as soon as the runtime is built.
    wait_for("the first heartbeat", WAIT, || {
        !collector.heartbeats().is_empty()
    });
    let hb: Heartbeat = serde_json::from_value(collector.heartbeats()[0].clone()).unwrap();
    assert_eq!(hb.format, HEARTBEAT_FORMAT);
    assert_eq!(
        (hb.deployment_id.as_str(), hb.task_id.as_str()),
        ("edge-hb-1", "spam")
    );
    assert_eq!((hb.active_version, hb.interval_sec), (1, 3600));
    assert_eq!(hb.status, "ok");
    assert!(hb.rollout.is_none());
    // Counted once the answer is read (just after the collector recorded it).
    wait_for("the heartbeat counted", WAIT, || {
        telemetry(&rt).heartbeats_sent == 1
    });
    // Batches spooled after it carry it.
    for text in ["win a prize", "hello"] {
        rt.execute(&json!({ "text": text })).unwrap();
    }
    rt.flush(WAIT).unwrap();
    let batches = collector.batches();
    assert!(!batches.is_empty());
    for batch in &batches {
        let parsed: TelemetryBatch = serde_json::from_value(batch.clone()).unwrap();
        let carried = parsed.heartbeat.expect("the batch carries the heartbeat");
        assert_eq!(carried.deployment_id, "edge-hb-1");
        assert_eq!(carried.active_version, 1);
    }
    // One interval is an hour: no second heartbeat in this test.
    assert_eq!(collector.heartbeats().len(), 1);
    rt.shutdown(WAIT).unwrap();
}

#[test]
fn heartbeat_interval_zero_sends_none() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path());
    let collector = TestCollector::start();
    let rt = runtime(
        dir.path(),
        config(
            &collector.url(),
            "balanced",
            "  heartbeat_interval_sec: 0\n  batch_size: 1\n",
            "",
        ),
    );
    rt.execute(&json!({ "text": "hello" })).unwrap();
    rt.flush(WAIT).unwrap();
    let batches = collector.batches();
    assert_eq!(batches.len(), 1);
    assert!(batches[0].get("heartbeat").is_none());
    rt.shutdown(WAIT).unwrap();
    assert!(collector.heartbeats().is_empty());
    assert_eq!(telemetry_sent_heartbeats(&rt), 0);
}

fn telemetry_sent_heartbeats(rt: &Runtime) -> u64 {
    rt.health().telemetry.map_or(0, |t| t.heartbeats_sent)
}

/// `storage.encryption`: spool files are sealed on disk; after a key rotation (the old key
/// in `old_keys`) they are opened and uploaded as the plain gzip JSON the collector
/// expects; with the old key gone they go to `corrupt/`, never uploaded.
#[cfg(unix)]
#[test]
fn encrypted_spool_files_upload_decrypted_after_a_rotation() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    install(dir.path());
    let key = |name: &str, byte: u8| {
        let path = dir.path().join(name);
        std::fs::write(&path, hex::encode([byte; 32])).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.display().to_string()
    };
    let (k1, k2) = (key("k1", 1), key("k2", 2));
    let storage = |current: &str, old: Option<&str>| {
        let old = old.map_or(String::new(), |o| {
            format!("    old_keys:\n      - key_file: {o}\n")
        });
        format!(
            "privacy:\n  pii_detection: false\nstorage:\n  encryption:\n    key_file: {current}\n{old}"
        )
    };
    let spooled = |spool: &Path| -> Vec<Vec<u8>> {
        let mut names: Vec<_> = std::fs::read_dir(spool)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".json.gz"))
            .collect();
        names.sort();
        names.iter().map(|p| std::fs::read(p).unwrap()).collect()
    };
    let spool_dir = dir.path().join("telemetry/spool/spam");

    // Collector down: two batches sealed with k1.
    let down = closed_port_url();
    let rt = runtime(
        dir.path(),
        config(
            &down,
            "permissive",
            "  batch_size: 1\n",
            &storage(&k1, None),
        ),
    );
    rt.execute(&json!({"text": "my secret prize"})).unwrap();
    rt.execute(&json!({"text": "another secret"})).unwrap();
    let _ = rt.flush(Duration::from_millis(300));
    rt.shutdown(WAIT).unwrap();
    let files = spooled(&spool_dir);
    assert_eq!(files.len(), 2);
    for bytes in &files {
        assert!(crate::crypt::is_encrypted(bytes), "sealed on disk");
        assert!(
            super::testing::try_gunzip(bytes).is_none(),
            "no gzip in clear"
        );
    }
    drop(rt);

    // Rotated to k2 (k1 listed): the old batches and a new one arrive as plain gzip JSON.
    let collector = TestCollector::start();
    let rt = runtime(
        dir.path(),
        config(
            &collector.url(),
            "permissive",
            "  batch_size: 1\n",
            &storage(&k2, Some(&k1)),
        ),
    );
    rt.execute(&json!({"text": "third secret"})).unwrap();
    rt.flush(WAIT).unwrap();
    let texts: Vec<String> = collector
        .batches()
        .iter()
        .map(|b| {
            b["execution_summaries"][0]["input"]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(texts, ["my secret prize", "another secret", "third secret"]);
    assert_eq!(telemetry(&rt).dropped_corrupt, 0);
    rt.shutdown(WAIT).unwrap();
    drop(rt);

    // A batch sealed with k1 where only k2 is configured: moved aside, never uploaded.
    let other = tempfile::tempdir().unwrap();
    install(other.path());
    let other_spool = other.path().join("telemetry/spool/spam");
    std::fs::create_dir_all(&other_spool).unwrap();
    let orphan = format!("{:016}-{}.json.gz", 0, Uuid::new_v4());
    std::fs::write(other_spool.join(&orphan), &files[0]).unwrap();
    let rt = runtime(
        other.path(),
        config(
            &collector.url(),
            "permissive",
            "  batch_size: 1\n",
            &storage(&k2, None),
        ),
    );
    rt.flush(WAIT).unwrap();
    assert_eq!(telemetry(&rt).dropped_corrupt, 1);
    assert!(other_spool.join("corrupt").join(&orphan).exists());
    assert_eq!(collector.batches().len(), 3, "never uploaded");
}
