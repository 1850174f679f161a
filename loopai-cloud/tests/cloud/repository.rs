//! The artifact repository and notifications over real HTTP (127.0.0.1:0), with real
//! runtimes refreshing from them. Waits poll observable state with a generous deadline;
//! nothing asserts how long anything took.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopai_cloud::{ApiKeys, CloudServer, CloudServerBuilder, ServerHandle};
use loopai_core::{
    ArtifactArchive, ArtifactSigner, ArtifactStore, DeploymentConfig, ErrorKind, NewArtifact,
    Runtime,
};
use serde_json::{json, Value};

const SHUTDOWN: Duration = Duration::from_secs(10);
/// Not a timed assertion: how long to wait before declaring something hung.
const HANG: Duration = Duration::from_secs(60);
const DEPLOYMENT_KEY: &str = "dk_0123456789abcdef0123";
const PUBLISHER_KEY: &str = "pk_0123456789abcdef0123";

/// A program for task `spam` that answers `label` to everything.
fn program(label: &str) -> Vec<u8> {
    json!({
        "format": "loopai.program/1", "task": "spam",
        "inputs": [{"name": "text", "path": "/text", "type": "text"}],
        "decide": {"op": "rules", "rules": [
            {"when": {"always": true}, "then": label, "confidence": 0.9}]},
        "output": {"kind": "label", "labels": ["spam", "ham"]}
    })
    .to_string()
    .into_bytes()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(HANG))
        .build()
        .into()
}

fn builder(dir: &Path) -> CloudServerBuilder {
    CloudServer::builder()
        .dir(dir)
        .port(0)
        .worker_threads(2)
        .heartbeat(Duration::from_secs(1))
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

/// POSTs an upload; returns the status and the JSON body.
fn upload(base: &str, key: Option<&str>, task: &str, body: &[u8], query: &str) -> (u16, Value) {
    let mut request = agent().post(format!("{base}/api/v1/artifacts/{task}/upload{query}"));
    if let Some(key) = key {
        request = request.header("Authorization", format!("Bearer {key}"));
    }
    let mut response = request.send(body).unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn publish(base: &str, label: &str) -> u32 {
    let (status, body) = upload(base, None, "spam", &program(label), "");
    assert_eq!(status, 201, "{body}");
    u32::try_from(body["version"].as_u64().unwrap()).unwrap()
}

/// Refresh settings for `api_url`. New versions are activated at once (`rollout.enabled:
/// false`): these tests are about the repository and the refresh; the canary that a
/// refresh starts by default is tested with the whole loop.
fn config(api_url: &str, extra: &str) -> DeploymentConfig {
    DeploymentConfig::from_yaml_str(
        &format!(
            "cloud:\n  api_url: {api_url}\n{extra}telemetry:\n  enabled: false\nrollout:\n  enabled: false\n"
        ),
        "test",
    )
    .unwrap()
}

fn runtime(data_dir: &Path, config: DeploymentConfig) -> loopai_core::Result<Runtime> {
    Runtime::builder()
        .data_dir(data_dir)
        .task("spam")
        .config(config)
        .build()
}

/// Polls `cond` until it holds; panics with `what` after [`HANG`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG;
    while !cond() {
        assert!(Instant::now() < deadline, "still waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn output(rt: &Runtime) -> (String, u32) {
    let r = rt.execute(&json!({"text": "hello"})).unwrap();
    (r.output.as_str().unwrap().to_owned(), r.version)
}

fn start(dir: &Path) -> ServerHandle {
    builder(dir).build().unwrap().spawn().unwrap()
}

#[test]
fn a_published_version_is_installed_and_activated_while_executing() {
    let cloud = tempfile::tempdir().unwrap();
    let mut server = start(cloud.path());
    let url = server.url();
    assert_eq!(publish(&url, "ham"), 1);

    let data = tempfile::tempdir().unwrap();
    // No cached program: build waits for the first download.
    let rt = runtime(
        data.path(),
        config(
            &url,
            "  refresh_interval_sec: 1\n  notifications: false\n  startup_wait_sec: 30\n",
        ),
    )
    .unwrap();
    assert_eq!(output(&rt), ("ham".to_owned(), 1));

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (rt, stop, ok, failed) = (rt.clone(), stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match rt.execute(&json!({"text": "hello"})) {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    // The list (a program upload through a version directory: metadata kept).
    let metadata = json!({"synthesis_strategy": "rule", "description": "spam filter v2"});
    let archive = ArtifactArchive::new(program("spam"), Some(metadata.to_string().into_bytes()))
        .pack()
        .unwrap();
    let (status, entry) = upload(&url, None, "spam", &archive, "");
    assert_eq!(status, 201, "{entry}");
    assert_eq!(entry["version"], 2);
    let list: Value = serde_json::from_str(
        &agent()
            .get(format!("{url}/api/v1/artifacts/spam/versions"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(list["format"], "loopai.versions/1");
    assert_eq!(list["versions"].as_array().unwrap().len(), 2);
    assert_eq!(list["versions"][1], entry);

    wait_until("v2 active", || rt.active_version() == 2);
    let seen = ok.load(Ordering::Relaxed);
    wait_until("executions on v2", || ok.load(Ordering::Relaxed) > seen);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no execution failed across the swap"
    );
    assert_eq!(output(&rt), ("spam".to_owned(), 2));
    let store = rt.artifacts();
    assert_eq!(store.active_version().unwrap(), Some(2));
    let v2 = store.load(2).unwrap().metadata;
    assert_eq!(v2.synthesis_strategy, "rule");
    assert_eq!(v2.extra["description"], "spam filter v2");
    let refresh = rt.health().refresh.unwrap();
    assert_eq!((refresh.installed, refresh.last_installed), (2, Some(2)));
    assert_eq!(refresh.available_version, Some(2));
    assert_eq!(refresh.notifications, "off");
    rt.shutdown(SHUTDOWN).unwrap();
    server.shutdown(SHUTDOWN).unwrap();
}

#[test]
fn a_notification_triggers_a_refresh_long_before_the_poll_interval() {
    let cloud = tempfile::tempdir().unwrap();
    let mut server = start(cloud.path());
    let url = server.url();
    publish(&url, "ham");
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(data.path(), config(&url, "  refresh_interval_sec: 86400\n")).unwrap();
    // The start-up check is done and the stream is open: from now on, only a notification
    // can cause a check within the next day.
    wait_until("first check and stream connected", || {
        let r = rt.health().refresh.unwrap();
        r.checks >= 2 && r.notifications == "connected"
    });
    let checks = rt.health().refresh.unwrap().checks;
    let received = rt.health().refresh.unwrap().notifications_received;
    assert_eq!(publish(&url, "spam"), 2);
    wait_until("v2 active", || rt.active_version() == 2);
    let r = rt.health().refresh.unwrap();
    assert!(r.notifications_received > received, "{r:?}");
    assert!(r.checks > checks, "{r:?}");
    assert_eq!(output(&rt), ("spam".to_owned(), 2));
    // Shutdown ends the server's streams and the runtime's listener.
    rt.shutdown(SHUTDOWN).unwrap();
    server.shutdown(SHUTDOWN).unwrap();
}

#[test]
fn the_versions_list_is_revalidated_with_its_etag() {
    let cloud = tempfile::tempdir().unwrap();
    let mut server = start(cloud.path());
    let url = server.url();
    let versions = format!("{url}/api/v1/artifacts/spam/versions");
    let missing = agent().get(&versions).call().unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    publish(&url, "ham");
    let first = agent().get(&versions).call().unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let again = agent()
        .get(&versions)
        .header("If-None-Match", &etag)
        .call()
        .unwrap();
    assert_eq!(again.status().as_u16(), 304);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
    publish(&url, "spam");
    let changed = agent()
        .get(&versions)
        .header("If-None-Match", &etag)
        .call()
        .unwrap();
    assert_eq!(changed.status().as_u16(), 200);
    assert_ne!(changed.headers()["etag"].to_str().unwrap(), etag);

    // A runtime polling an unchanged list gets 304s.
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(
        data.path(),
        config(&url, "  refresh_interval_sec: 1\n  notifications: false\n"),
    )
    .unwrap();
    wait_until("a 304", || rt.health().refresh.unwrap().not_modified >= 1);
    assert_eq!(rt.active_version(), 2);
    rt.shutdown(SHUTDOWN).unwrap();
    server.shutdown(SHUTDOWN).unwrap();
}

/// A data directory with `program(label)` installed and active as v1.
fn cached(label: &str) -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    ArtifactStore::open(data.path(), "spam")
        .unwrap()
        .install(&program(label), NewArtifact::default(), true)
        .unwrap();
    data
}

#[test]
fn a_tampered_download_is_refused_and_reported_in_health() {
    let cloud = tempfile::tempdir().unwrap();
    let mut server = start(cloud.path());
    let url = server.url();
    publish(&url, "ham");
    publish(&url, "spam");
    let download = cloud.path().join("artifacts/spam/v2/download");
    let mut bytes = std::fs::read(&download).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x55;
    std::fs::write(&download, bytes).unwrap();

    let data = cached("ham");
    let rt = runtime(
        data.path(),
        config(&url, "  refresh_interval_sec: 1\n  notifications: false\n"),
    )
    .unwrap();
    wait_until("a refusal", || rt.health().refresh.unwrap().refused >= 1);
    let r = rt.health().refresh.unwrap();
    let error = r.last_error.unwrap();
    assert!(error.contains("/v2/download: sha256 mismatch"), "{error}");
    assert_eq!(r.available_version, Some(2));
    assert_eq!(r.installed, 0);
    assert_eq!(
        rt.artifacts().versions().unwrap(),
        vec![1],
        "never installed"
    );
    assert_eq!(output(&rt), ("ham".to_owned(), 1));
    rt.shutdown(SHUTDOWN).unwrap();
    server.shutdown(SHUTDOWN).unwrap();
}

#[test]
fn signatures_are_checked_against_the_trusted_keys() {
    let signer = ArtifactSigner::generate().unwrap();
    let stranger = ArtifactSigner::generate().unwrap();
    let cloud = tempfile::tempdir().unwrap();
    let key_file = cloud.path().join("signing.key");
    std::fs::write(&key_file, signer.secret_key_hex()).unwrap();
    let mut server = builder(&cloud.path().join("repo"))
        .signing_key_file(&key_file)
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    let url = server.url();
    publish(&url, "ham");
    publish(&url, "spam");

    // With trusted keys every load from the cache verifies a signature: a locally
    // installed (unsigned) version is not run.
    let data = cached("ham");
    let untrusting = format!(
        "  notifications: false\n  startup_wait_sec: 1\n  trusted_keys: [\"{}\"]\n",
        stranger.public_key_hex()
    );
    let err = runtime(data.path(), config(&url, &untrusting)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Artifact);
    assert!(
        err.message()
            .ends_with("unsigned (no artifact.sig with its artifact.tar.gz), but cloud.trusted_keys requires a signature at every load"),
        "{err}"
    );

    // Signed by a key this deployment does not trust: refused, nothing installed.
    let empty = tempfile::tempdir().unwrap();
    let err = runtime(empty.path(), config(&url, &untrusting)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Artifact);
    assert!(
        err.message()
            .contains("signature: not valid for any key in cloud.trusted_keys"),
        "{err}"
    );
    assert_eq!(
        ArtifactStore::open(empty.path(), "spam")
            .unwrap()
            .versions()
            .unwrap(),
        Vec::<u32>::new()
    );

    // Trusted: accepted, also as the first download of an empty cache.
    let empty = tempfile::tempdir().unwrap();
    let trusting = format!(
        "  notifications: false\n  startup_wait_sec: 30\n  trusted_keys: [\"{}\", \"{}\"]\n",
        stranger.public_key_hex(),
        signer.public_key_hex()
    );
    let rt = runtime(empty.path(), config(&url, &trusting)).unwrap();
    assert_eq!(output(&rt), ("spam".to_owned(), 2));
    rt.shutdown(SHUTDOWN).unwrap();
    server.shutdown(SHUTDOWN).unwrap();
}

/// A loopback URL where nothing listens.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

#[test]
fn with_the_cloud_down_at_start_up_the_cached_version_is_served() {
    let data = cached("ham");
    let url = closed_port_url();
    let rt = runtime(data.path(), config(&url, "  notifications: false\n")).unwrap();
    assert_eq!(output(&rt), ("ham".to_owned(), 1));
    wait_until("a failed check", || {
        rt.health().refresh.unwrap().last_error.is_some()
    });
    let health = rt.health();
    assert_eq!(health.status, "ok");
    let r = health.refresh.unwrap();
    assert_eq!((r.last_success, r.installed), (None, 0));
    assert!(r
        .last_error
        .unwrap()
        .starts_with(&format!("{url}/api/v1/artifacts/spam/versions: ")));
    assert_eq!(output(&rt), ("ham".to_owned(), 1));
    rt.shutdown(SHUTDOWN).unwrap();
}

#[test]
fn without_a_cache_and_with_the_cloud_down_build_fails_after_the_startup_wait() {
    let data = tempfile::tempdir().unwrap();
    let url = closed_port_url();
    let err = runtime(
        data.path(),
        config(&url, "  notifications: false\n  startup_wait_sec: 1\n"),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Artifact);
    let message = err.message();
    assert!(
        message.starts_with("task \"spam\" has no cached program in "),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "none could be downloaded from {url}/api/v1/artifacts/spam/versions within cloud.startup_wait_sec (1 s); last error: {url}/api/v1/artifacts/spam/versions: "
        )),
        "{message}"
    );
}

/// A static file server: `GET /api/v1/<path>` serves `<root>/<path>`, nothing else.
struct StaticServer {
    url: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl StaticServer {
    fn start(root: &Path) -> StaticServer {
        use axum::extract::{Path as UrlPath, State};
        use axum::http::StatusCode;
        async fn file(
            State(root): State<Arc<std::path::PathBuf>>,
            UrlPath(path): UrlPath<String>,
        ) -> (StatusCode, Vec<u8>) {
            if path.split('/').any(|c| c == ".." || c.is_empty()) {
                return (StatusCode::NOT_FOUND, Vec::new());
            }
            match std::fs::read(root.join(path)) {
                Ok(bytes) => (StatusCode::OK, bytes),
                Err(_) => (StatusCode::NOT_FOUND, Vec::new()),
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/api/v1/{*path}", axum::routing::get(file))
            .with_state(Arc::new(root.to_owned()));
        runtime.spawn(async move { axum::serve(listener, app).await });
        StaticServer {
            url,
            runtime: Some(runtime),
        }
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[test]
fn the_static_file_layout_is_accepted_by_the_runtime() {
    // The reference cloud's storage directory is the static layout: publish there, stop
    // the server, serve the directory as plain files (no ETag, no notifications).
    let cloud = tempfile::tempdir().unwrap();
    let mut server = start(cloud.path());
    publish(&server.url(), "ham");
    publish(&server.url(), "spam");
    server.shutdown(SHUTDOWN).unwrap();
    let files = StaticServer::start(cloud.path());

    let data = tempfile::tempdir().unwrap();
    let rt = runtime(
        data.path(),
        config(
            &files.url,
            "  notifications: false\n  startup_wait_sec: 30\n",
        ),
    )
    .unwrap();
    assert_eq!(output(&rt), ("spam".to_owned(), 2));
    let r = rt.health().refresh.unwrap();
    assert_eq!(
        (r.installed, r.available_version, r.refused),
        (1, Some(2), 0)
    );
    rt.shutdown(SHUTDOWN).unwrap();
}

#[test]
fn uploads_are_validated_and_need_a_publisher_key() {
    let cloud = tempfile::tempdir().unwrap();
    let mut server = builder(cloud.path())
        .api_keys(keys())
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    let url = server.url();
    let good = program("ham");

    let (status, body) = upload(&url, None, "spam", &good, "");
    assert_eq!(status, 401, "{body}");
    let (status, body) = upload(&url, Some(DEPLOYMENT_KEY), "spam", &good, "");
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"],
        "this endpoint needs a publisher key, not a deployment key"
    );

    let mut bad: Value = serde_json::from_slice(&good).unwrap();
    bad["decide"]["rules"][0]["confidence"] = json!(2);
    let (status, body) = upload(
        &url,
        Some(PUBLISHER_KEY),
        "spam",
        bad.to_string().as_bytes(),
        "",
    );
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("program.json: decide.rules[0].confidence"),
        "{error}"
    );
    let (status, body) = upload(&url, Some(PUBLISHER_KEY), "ham", &good, "");
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"],
        "program.json: task: the program is for task \"spam\", not \"ham\""
    );
    let schema = json!({"output_schema": {"type": "string", "enum": ["spam"]}});
    let archive = ArtifactArchive::new(good.clone(), Some(schema.to_string().into_bytes()))
        .pack()
        .unwrap();
    let (status, body) = upload(&url, Some(PUBLISHER_KEY), "spam", &archive, "");
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("metadata.json: output_schema: "),
        "{body}"
    );
    assert!(
        !cloud.path().join("artifacts/spam/v1").exists(),
        "refusals leave no trace"
    );

    let (status, body) = upload(&url, Some(PUBLISHER_KEY), "spam", &good, "?version=3");
    assert_eq!((status, body["version"].as_u64()), (201, Some(3)), "{body}");
    let (status, body) = upload(&url, Some(PUBLISHER_KEY), "spam", &good, "?version=3");
    assert_eq!(status, 409, "{body}");
    let (status, body) = upload(&url, Some(PUBLISHER_KEY), "spam", &good, "");
    assert_eq!((status, body["version"].as_u64()), (201, Some(4)), "{body}");

    // Deployment and publisher keys read; nobody else does.
    let versions = format!("{url}/api/v1/artifacts/spam/versions");
    for (key, expected) in [
        (None, 401),
        (Some(DEPLOYMENT_KEY), 200),
        (Some(PUBLISHER_KEY), 200),
    ] {
        let mut request = agent().get(&versions);
        if let Some(key) = key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        assert_eq!(
            request.call().unwrap().status().as_u16(),
            expected,
            "{key:?}"
        );
    }
    let download = agent()
        .get(format!("{url}/api/v1/artifacts/spam/v3/download"))
        .header("Authorization", format!("Bearer {DEPLOYMENT_KEY}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_vec()
        .unwrap();
    assert_eq!(ArtifactArchive::unpack(&download).unwrap().program, good);
    server.shutdown(SHUTDOWN).unwrap();

    // A deployment with its key refreshes from the protected repository.
    let mut server = builder(cloud.path())
        .api_keys(keys())
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(
        data.path(),
        config(
            &server.url(),
            &format!("  api_key: {DEPLOYMENT_KEY}\n  startup_wait_sec: 30\n"),
        ),
    )
    .unwrap();
    assert_eq!(output(&rt).1, 4);
    wait_until("stream connected", || {
        rt.health().refresh.unwrap().notifications == "connected"
    });
    rt.shutdown(SHUTDOWN).unwrap();
    server.shutdown(SHUTDOWN).unwrap();
}
