//! The collector over real HTTP: a server bound to 127.0.0.1:0, a real client (ureq).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::Duration;

use flate2::write::GzEncoder;
use loopai_cloud::{ApiKeys, CloudServer, CloudServerBuilder, ErrorKind, ServerHandle};
use serde_json::{json, Value};

const SHUTDOWN: Duration = Duration::from_secs(10);
const DEPLOYMENT_KEY: &str = "dk_0123456789abcdef0123";
const PUBLISHER_KEY: &str = "pk_0123456789abcdef0123";

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn builder(dir: &Path) -> CloudServerBuilder {
    CloudServer::builder().dir(dir).port(0).worker_threads(2)
}

fn start(dir: &Path) -> ServerHandle {
    builder(dir).build().unwrap().spawn().unwrap()
}

fn keys() -> ApiKeys {
    ApiKeys::parse(
        &format!(
            "{{\"key\": \"{DEPLOYMENT_KEY}\", \"role\": \"deployment\", \"deployment_id\": \"edge-1\"}}\n\
             {{\"key\": \"{PUBLISHER_KEY}\", \"role\": \"publisher\", \"name\": \"ci\"}}\n"
        ),
        "keys",
    )
    .unwrap()
}

fn batch(batch_id: &str, task_id: &str) -> Value {
    json!({
        "batch_id": batch_id,
        "deployment_id": "edge-1",
        "task_id": task_id,
        "program_version": 3,
        "timestamp": "2026-11-25T04:23:14.123Z",
        "execution_summaries": [{"execution_id": "e1", "output": "spam", "confidence": 0.93}],
        "sampled_validations": [],
        "metrics": {"executions": 120, "abstain_rate": 0.01},
        "future_field": {"nested": [1, 2, 3]}
    })
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

struct Reply {
    status: u16,
    body: Value,
    www_authenticate: Option<String>,
}

fn post_raw(handle: &ServerHandle, body: &[u8], headers: &[(&str, &str)]) -> Reply {
    let mut req = agent()
        .post(format!("{}/api/v1/telemetry", handle.url()))
        .header("Content-Type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send(body).expect("the request is answered");
    reply(&mut resp)
}

fn reply(resp: &mut ureq::http::Response<ureq::Body>) -> Reply {
    let status = resp.status().as_u16();
    let www_authenticate = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.body_mut().read_to_string().unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: {text:?}: {e}"));
    Reply {
        status,
        body,
        www_authenticate,
    }
}

fn post(handle: &ServerHandle, batch: &Value) -> Reply {
    post_raw(handle, batch.to_string().as_bytes(), &[])
}

fn post_gzip(handle: &ServerHandle, batch: &Value) -> Reply {
    post_raw(
        handle,
        &gzip(batch.to_string().as_bytes()),
        &[("Content-Encoding", "gzip")],
    )
}

fn assert_status(r: &Reply, status: u16, batch_status: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.body["status"], batch_status, "{}", r.body);
}

fn assert_error(r: &Reply, status: u16, starts_with: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let msg = r.body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", r.body));
    assert!(
        msg.starts_with(starts_with),
        "{msg:?} should start with {starts_with:?}"
    );
}

/// Every `*.jsonl` file under `<dir>/telemetry/<task>/`, each line parsed (panics on a line
/// that is not JSON or a file not ending in a newline).
fn stored(dir: &Path, task: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let task_dir = dir.join("telemetry").join(task);
    let mut files: Vec<PathBuf> = fs::read_dir(&task_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{}",
            file.display()
        );
        for line in text.lines() {
            out.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")));
        }
    }
    out
}

fn day_files(dir: &Path, task: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir.join("telemetry").join(task))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn plain_and_gzip_batches_are_stored_verbatim_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let (b1, b2) = (batch("b-plain", "spam"), batch("b-gzip", "spam"));
    assert_status(&post(&server, &b1), 200, "accepted");
    let r = post_gzip(&server, &b2);
    assert_status(&r, 200, "accepted");
    assert_eq!(r.body["batch_id"], "b-gzip");
    assert_eq!(stored(dir.path(), "spam"), vec![b1, b2]);
    let files = day_files(dir.path(), "spam");
    assert_eq!(files.len(), 1, "{files:?}");
    let day = files[0].strip_suffix(".jsonl").unwrap();
    assert!(loopai_core::parse_day(day).is_some(), "{day}");
    server.shutdown(SHUTDOWN).unwrap();
}

#[test]
fn a_duplicate_batch_id_is_stored_once_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let b = batch("b-dup", "spam");
    assert_status(&post(&server, &b), 200, "accepted");
    assert_status(&post_gzip(&server, &b), 200, "duplicate");
    // Same id, other task: still the same batch.
    assert_status(&post(&server, &batch("b-dup", "other")), 200, "duplicate");
    server.shutdown(SHUTDOWN).unwrap();

    let mut server = start(dir.path());
    assert_status(&post(&server, &b), 200, "duplicate");
    assert_status(&post(&server, &batch("b-new", "spam")), 200, "accepted");
    server.shutdown(SHUTDOWN).unwrap();
    let ids: Vec<Value> = stored(dir.path(), "spam")
        .into_iter()
        .map(|b| b["batch_id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("b-dup"), json!("b-new")]);
    assert!(!dir.path().join("telemetry/other").exists());
}

#[test]
fn malformed_batches_get_400_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    assert_error(
        &post_raw(&server, b"{\"batch_id\": ", &[]),
        400,
        "body is not valid JSON",
    );
    assert_error(
        &post_raw(&server, b"[]", &[]),
        400,
        "a batch must be a JSON object",
    );
    let mut b = batch("x", "spam");
    b.as_object_mut().unwrap().remove("batch_id");
    assert_error(&post(&server, &b), 400, "batch_id: missing");
    assert_error(
        &post(&server, &batch("x", "../etc")),
        400,
        "task_id: task id \"../etc\"",
    );
    assert_error(
        &post(&server, &batch("x", "")),
        400,
        "task_id: task id \"\": must not be empty",
    );
    let mut b = batch("x", "spam");
    b["timestamp"] = json!(true);
    assert_error(
        &post(&server, &b),
        400,
        "timestamp: expected an RFC 3339 string",
    );
    assert_error(
        &post_raw(&server, b"not gzip", &[("Content-Encoding", "gzip")]),
        400,
        "invalid gzip body",
    );
    assert_error(
        &post_raw(&server, b"{}", &[("Content-Encoding", "br")]),
        415,
        "Content-Encoding \"br\" is not supported",
    );
    assert!(!dir.path().join("telemetry/spam").exists());
    // Unknown routes answer JSON too.
    let mut resp = agent()
        .get(format!("{}/api/v1/nothing", server.url()))
        .call()
        .unwrap();
    assert_error(&reply(&mut resp), 404, "no endpoint GET /api/v1/nothing");
    server.shutdown(SHUTDOWN).unwrap();
}

#[test]
fn api_keys_give_401_for_missing_or_unknown_and_403_for_wrong_role_or_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys.jsonl");
    fs::write(
        &keys_file,
        format!(
            "# test keys\n{{\"key\": \"{DEPLOYMENT_KEY}\", \"role\": \"deployment\", \"deployment_id\": \"edge-1\"}}\n\n\
             {{\"key\": \"{PUBLISHER_KEY}\", \"role\": \"publisher\"}}\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = builder(&data).api_keys_file(&keys_file).build().unwrap();
    assert!(server.requires_api_keys());
    let mut server = server.spawn().unwrap();
    let body = batch("b-auth", "spam").to_string();
    let send = |auth: Option<&str>, body: &str| match auth {
        Some(a) => post_raw(&server, body.as_bytes(), &[("Authorization", a)]),
        None => post_raw(&server, body.as_bytes(), &[]),
    };
    let r = send(None, &body);
    assert_error(&r, 401, "missing `Authorization: Bearer <key>` header");
    assert_eq!(
        r.www_authenticate.as_deref(),
        Some("Bearer realm=\"loopai\"")
    );
    assert_error(
        &send(Some("Bearer dk_not_a_known_key_at_all"), &body),
        401,
        "unknown API key",
    );
    assert_error(
        &send(Some(&format!("Basic {DEPLOYMENT_KEY}")), &body),
        401,
        "Authorization header must use the Bearer scheme",
    );
    assert_error(
        &send(Some(&format!("Bearer {PUBLISHER_KEY}")), &body),
        403,
        "this endpoint needs a deployment key, not a publisher key",
    );
    let mut other = batch("b-other", "spam");
    other["deployment_id"] = json!("edge-2");
    assert_error(
        &send(
            Some(&format!("Bearer {DEPLOYMENT_KEY}")),
            &other.to_string(),
        ),
        403,
        "deployment_id: this key belongs to deployment \"edge-1\", not \"edge-2\"",
    );
    assert_eq!(fs::read_dir(data.join("telemetry")).unwrap().count(), 0);
    assert_status(
        &send(Some(&format!("Bearer {DEPLOYMENT_KEY}")), &body),
        200,
        "accepted",
    );
    assert_eq!(stored(&data, "spam").len(), 1);
    let mut health = agent()
        .get(format!("{}/health", server.url()))
        .call()
        .unwrap();
    let health = reply(&mut health);
    assert_eq!(health.status, 200);
    assert_eq!(
        health.body,
        json!({"status": "ok", "auth": "api_keys", "telemetry_batches": 1,
               "artifact_tasks": 0, "signing_key": null, "storage": "files",
               "improvement": {"passes": 0, "skipped": 0}})
    );
    server.shutdown(SHUTDOWN).unwrap();
}

#[test]
fn without_keys_the_server_is_open_and_health_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let server = builder(dir.path()).build().unwrap();
    assert!(!server.requires_api_keys());
    let mut server = server.spawn().unwrap();
    assert_status(
        &post_raw(
            &server,
            batch("b", "spam").to_string().as_bytes(),
            &[("Authorization", "Bearer whatever")],
        ),
        200,
        "accepted",
    );
    let mut health = agent()
        .get(format!("{}/health", server.url()))
        .call()
        .unwrap();
    let health = reply(&mut health);
    assert_eq!(health.body["auth"], "open");
    assert_eq!(health.body["telemetry_batches"], 1);
    server.shutdown(SHUTDOWN).unwrap();
}

#[test]
fn bodies_over_the_limit_get_413_compressed_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 2048;
    let mut server = builder(dir.path())
        .max_body_bytes(limit)
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    let mut big = batch("b-big", "spam");
    big["padding"] = json!("x".repeat(limit));
    let big = big.to_string();
    // Declared too large (Content-Length).
    assert_error(
        &post_raw(&server, big.as_bytes(), &[]),
        413,
        "request body exceeds 2048 bytes",
    );
    // Streamed (chunked, no Content-Length) past the limit.
    let mut reader = big.as_bytes();
    let mut resp = agent()
        .post(format!("{}/api/v1/telemetry", server.url()))
        .send(ureq::SendBody::from_reader(&mut reader))
        .unwrap();
    assert_error(&reply(&mut resp), 413, "request body exceeds 2048 bytes");
    // Small when compressed, too large once decompressed (a tiny "gzip bomb").
    let compressed = gzip(big.as_bytes());
    assert!(compressed.len() < limit, "{}", compressed.len());
    assert_error(
        &post_raw(&server, &compressed, &[("Content-Encoding", "gzip")]),
        413,
        "decompressed request body exceeds 2048 bytes",
    );
    assert!(!dir.path().join("telemetry/spam").exists());
    // Just under the limit is fine.
    let mut fits = batch("b-fits", "spam");
    let room = limit - fits.to_string().len() - "\"padding\":\"\",".len();
    fits["padding"] = json!("x".repeat(room));
    assert_eq!(fits.to_string().len(), limit);
    assert_status(&post_gzip(&server, &fits), 200, "accepted");
    server.shutdown(SHUTDOWN).unwrap();
}

#[test]
fn a_torn_tail_is_cut_at_restart_and_every_file_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    assert_status(&post(&server, &batch("b1", "spam")), 200, "accepted");
    assert_status(&post(&server, &batch("b2", "spam")), 200, "accepted");
    server.shutdown(SHUTDOWN).unwrap();
    let files = day_files(dir.path(), "spam");
    let path = dir.path().join("telemetry/spam").join(&files[0]);
    // A crash in the middle of writing b3.
    let torn = batch("b3", "spam").to_string();
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&torn.as_bytes()[..torn.len() / 2]).unwrap();
    drop(f);

    let mut server = start(dir.path());
    let ids = |dir: &Path| -> Vec<Value> {
        stored(dir, "spam")
            .into_iter()
            .map(|b| b["batch_id"].clone())
            .collect()
    };
    assert_eq!(ids(dir.path()), vec![json!("b1"), json!("b2")]);
    // b3 was never acknowledged: its retry is accepted, b1's is a duplicate.
    assert_status(&post(&server, &batch("b3", "spam")), 200, "accepted");
    assert_status(&post(&server, &batch("b1", "spam")), 200, "duplicate");
    server.shutdown(SHUTDOWN).unwrap();
    assert_eq!(ids(dir.path()), vec![json!("b1"), json!("b2"), json!("b3")]);
}

#[test]
fn concurrent_posts_store_each_batch_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let threads = 8;
    let per_thread = 10;
    let barrier = Barrier::new(threads);
    let results: Vec<Vec<(String, String)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (server, barrier) = (&server, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let mut out = Vec::new();
                    for i in 0..per_thread {
                        // Every thread sends shared-<i> (contended) and own-<t>-<i>.
                        for id in [format!("shared-{i}"), format!("own-{t}-{i}")] {
                            let r = if (t + i) % 2 == 0 {
                                post(server, &batch(&id, "spam"))
                            } else {
                                post_gzip(server, &batch(&id, "spam"))
                            };
                            assert_eq!(r.status, 200, "{}", r.body);
                            out.push((id, r.body["status"].as_str().unwrap().to_owned()));
                        }
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<(String, String)> = results.into_iter().flatten().collect();
    for i in 0..per_thread {
        let id = format!("shared-{i}");
        let accepted = all
            .iter()
            .filter(|(b, s)| *b == id && s == "accepted")
            .count();
        let duplicate = all
            .iter()
            .filter(|(b, s)| *b == id && s == "duplicate")
            .count();
        assert_eq!((accepted, duplicate), (1, threads - 1), "{id}");
    }
    assert!(all
        .iter()
        .filter(|(b, _)| b.starts_with("own-"))
        .all(|(_, s)| s == "accepted"));
    let mut ids: Vec<String> = stored(dir.path(), "spam")
        .into_iter()
        .map(|b| b["batch_id"].as_str().unwrap().to_owned())
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "a batch was stored twice");
    assert_eq!(n, per_thread + threads * per_thread);
    server.shutdown(SHUTDOWN).unwrap();
}

#[test]
fn builder_and_bind_errors_are_reported_not_panicked() {
    let err = CloudServer::builder().build().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().starts_with("dir:"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let err = builder(dir.path())
        .api_keys(keys())
        .api_keys_file("k")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let missing = dir.path().join("missing.jsonl");
    let err = builder(dir.path())
        .api_keys_file(&missing)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.message().contains("missing.jsonl"), "{err}");

    let mut first = start(dir.path());
    let taken = builder(dir.path())
        .port(first.local_addr().port())
        .build()
        .unwrap();
    let err = taken.spawn().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(
        err.message().starts_with(&first.local_addr().to_string()),
        "{err}"
    );
    first.shutdown(SHUTDOWN).unwrap();
    // A second shutdown is a no-op.
    first.shutdown(SHUTDOWN).unwrap();
}

/// The runtime's own telemetry uploader (loopai-core) against the collector: its gzip
/// batches are accepted with a deployment key and stored as one line each.
#[test]
fn the_runtime_uploader_delivers_its_batches_to_the_collector() {
    use loopai_core::{ArtifactStore, DeploymentConfig, NewArtifact, Runtime};

    let cloud_dir = tempfile::tempdir().unwrap();
    let mut server = builder(cloud_dir.path())
        .api_keys(keys())
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let program =
        fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/spam/program.json"))
            .unwrap();
    ArtifactStore::open(data_dir.path(), "spam")
        .unwrap()
        .install(&program, NewArtifact::default(), true)
        .unwrap();
    let yaml = format!(
        "cloud:\n  api_url: {}\n  api_key: {DEPLOYMENT_KEY}\nruntime:\n  deployment_id: edge-1\n\
         telemetry:\n  privacy_mode: strict\n",
        server.url()
    );
    let runtime = Runtime::builder()
        .data_dir(data_dir.path())
        .task("spam")
        .config(DeploymentConfig::from_yaml_str(&yaml, "test").unwrap())
        .build()
        .unwrap();
    for text in ["WIN a FREE prize", "see you at lunch", "call now to claim"] {
        runtime.execute(&json!({ "text": text })).unwrap();
    }
    runtime.flush(Duration::from_secs(30)).unwrap();
    runtime.shutdown(Duration::from_secs(30)).unwrap();
    server.shutdown(SHUTDOWN).unwrap();

    let batches = stored(cloud_dir.path(), "spam");
    assert!(!batches.is_empty());
    let executions: u64 = batches
        .iter()
        .map(|b| {
            assert_eq!(b["format"], "loopai.telemetry/1", "{b}");
            assert_eq!(b["deployment_id"], "edge-1");
            assert_eq!(b["privacy_mode"], "strict");
            b["metrics"]["executions"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(executions, 3);
    // Restarted, the collector still knows these batches: a re-send is a duplicate.
    let mut server = builder(cloud_dir.path())
        .api_keys(keys())
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    let r = post_raw(
        &server,
        batches[0].to_string().as_bytes(),
        &[("Authorization", &format!("Bearer {DEPLOYMENT_KEY}"))],
    );
    assert_status(&r, 200, "duplicate");
    server.shutdown(SHUTDOWN).unwrap();
}
