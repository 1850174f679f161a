//! A collector outage, end to end: the runtime's telemetry spool (loopai-core) keeps the
//! batches across the outage and a runtime restart, and the collector stores each exactly
//! once when it comes back on the same address.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use flate2::read::GzDecoder;
use loopai_cloud::{CloudServer, ServerHandle};
use loopai_core::{
    ArtifactStore, DeploymentConfig, ErrorKind, NewArtifact, Runtime, TelemetryMetrics,
};
use serde_json::{json, Value};

/// How long any awaited condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `condition` until it holds, failing the test with `what` at the deadline.
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "still waiting after {DEADLINE:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn telemetry(runtime: &Runtime) -> TelemetryMetrics {
    runtime
        .health()
        .telemetry
        .expect("telemetry is on (cloud.api_url is set)")
}

/// The `batch_id`s of the batches waiting in the spool, read from the files themselves.
fn spooled_batch_ids(data_dir: &Path) -> Vec<String> {
    let spool = data_dir.join("telemetry/spool/spam");
    let mut ids = Vec::new();
    for entry in fs::read_dir(&spool).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".json.gz") {
            continue;
        }
        let mut text = String::new();
        GzDecoder::new(fs::File::open(&path).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        let batch: Value = serde_json::from_str(&text).unwrap();
        let id = batch["batch_id"].as_str().unwrap().to_owned();
        assert!(name.contains(&id), "{name} holds batch {id}");
        ids.push(id);
    }
    ids
}

/// Every batch stored by the collector under `<dir>/telemetry/spam/`, one per line.
fn stored_batches(cloud_dir: &Path) -> Vec<Value> {
    let mut batches = Vec::new();
    for entry in fs::read_dir(cloud_dir.join("telemetry/spam")).unwrap() {
        let text = fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            batches.push(serde_json::from_str(line).unwrap());
        }
    }
    batches
}

fn start_runtime(data_dir: &Path, yaml: &str) -> Runtime {
    Runtime::builder()
        .data_dir(data_dir)
        .task("spam")
        .config(DeploymentConfig::from_yaml_str(yaml, "test").unwrap())
        .build()
        .unwrap()
}

fn execute(runtime: &Runtime, texts: &[&str]) {
    for text in texts {
        runtime.execute(&json!({ "text": text })).unwrap();
    }
}

/// The collector on `port`, retrying while the address is briefly unavailable.
fn start_collector(cloud_dir: &Path, port: u16) -> ServerHandle {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let spawned = CloudServer::builder()
            .dir(cloud_dir)
            .port(port)
            .worker_threads(2)
            .build()
            .and_then(CloudServer::spawn);
        match spawned {
            Ok(handle) => return handle,
            Err(e) if Instant::now() < deadline => {
                eprintln!("collector on port {port} not started yet: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot start the collector on port {port}: {e}"),
        }
    }
}

#[test]
fn batches_spooled_during_an_outage_are_delivered_exactly_once_after_a_restart() {
    // A port with nothing listening: the collector is down.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data_dir = tempfile::tempdir().unwrap();
    let program =
        fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/spam/program.json"))
            .unwrap();
    ArtifactStore::open(data_dir.path(), "spam")
        .unwrap()
        .install(&program, NewArtifact::default(), true)
        .unwrap();
    // Batches of 2 records; no time-based cut during the test.
    let yaml = format!(
        "cloud:\n  api_url: http://127.0.0.1:{port}\n\
         telemetry:\n  batch_size: 2\n  upload_interval_sec: 3600\n  request_timeout_sec: 5\n  \
         privacy_mode: strict\n"
    );

    // First run: 5 executions = 2 full batches, then flush cuts the third. Nothing can be
    // delivered, so flush times out and the spool grows.
    let first = start_runtime(data_dir.path(), &yaml);
    execute(
        &first,
        &["WIN a FREE prize", "see you at lunch", "call now", "ok"],
    );
    wait_for("2 full batches spooled", || {
        telemetry(&first).spooled_batches == 2
    });
    execute(&first, &["one more"]);
    let err = first.flush(Duration::from_millis(300)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    wait_for(
        "3 batches cut and spooled, and an upload attempt failed",
        || {
            let m = telemetry(&first);
            m.batches_cut == 3 && m.spooled_batches == 3 && m.retries >= 1
        },
    );
    let m = telemetry(&first);
    assert_eq!(m.sent, 0, "{m:?}");
    assert!(m.last_error.is_some(), "{m:?}");
    let first_ids = spooled_batch_ids(data_dir.path());
    assert_eq!(first_ids.len(), 3);
    // Shutting down with the collector down is not an error: the batches stay spooled.
    first.shutdown(Duration::from_secs(10)).unwrap();
    drop(first);
    assert_eq!(spooled_batch_ids(data_dir.path()).len(), 3);

    // Second run, still during the outage: it keeps the first run's batches and adds its
    // own (one full batch, one cut by flush).
    let second = start_runtime(data_dir.path(), &yaml);
    execute(&second, &["hello again", "WIN WIN WIN", "last one"]);
    let err = second.flush(Duration::from_millis(300)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    wait_for("2 more batches cut and spooled", || {
        let m = telemetry(&second);
        m.batches_cut == 2 && m.spooled_batches == 5
    });
    assert_eq!(telemetry(&second).sent, 0);
    let all_ids: BTreeSet<String> = spooled_batch_ids(data_dir.path()).into_iter().collect();
    assert_eq!(all_ids.len(), 5);
    assert!(first_ids.iter().all(|id| all_ids.contains(id)));

    // The collector comes back on the same address: one flush delivers everything.
    let cloud_dir = tempfile::tempdir().unwrap();
    let mut server = start_collector(cloud_dir.path(), port);
    second.flush(Duration::from_secs(60)).unwrap();
    let m = telemetry(&second);
    assert_eq!((m.spooled_batches, m.sent), (0, 5), "{m:?}");
    assert!(m.last_error.is_none(), "{m:?}");
    assert!(spooled_batch_ids(data_dir.path()).is_empty());
    second.shutdown(Duration::from_secs(10)).unwrap();
    server.shutdown(Duration::from_secs(10)).unwrap();

    // Exactly once: every batch the runtimes cut is on the collector's disk, one line each.
    let stored = stored_batches(cloud_dir.path());
    let mut stored_ids: Vec<String> = stored
        .iter()
        .map(|b| b["batch_id"].as_str().unwrap().to_owned())
        .collect();
    stored_ids.sort();
    let expected: Vec<String> = all_ids.into_iter().collect();
    assert_eq!(
        stored_ids, expected,
        "stored batch ids (no duplicates, none missing)"
    );
    let executions: u64 = stored
        .iter()
        .map(|b| b["metrics"]["executions"].as_u64().unwrap())
        .sum();
    assert_eq!(executions, 8);
}
