//! Heartbeats, the query API and the dashboard over real HTTP: a server on 127.0.0.1:0, a
//! real runtime reporting to it, a real client (ureq).

use std::fs;
use std::path::Path;
use std::time::Duration;

use loopai_cloud::{ApiKeys, CloudServer, ServerHandle};
use serde_json::{json, Value};

const SHUTDOWN: Duration = Duration::from_secs(10);
const DEPLOYMENT_KEY: &str = "dk_fleet_0123456789abcdef";
const VIEWER_KEY: &str = "vk_fleet_0123456789abcdef";
const PUBLISHER_KEY: &str = "pk_fleet_0123456789abcdef";

fn keys() -> ApiKeys {
    ApiKeys::parse(
        &format!(
            "{{\"key\": \"{DEPLOYMENT_KEY}\", \"role\": \"deployment\", \"deployment_id\": \"edge-1\"}}\n\
             {{\"key\": \"{VIEWER_KEY}\", \"role\": \"viewer\", \"name\": \"ops\"}}\n\
             {{\"key\": \"{PUBLISHER_KEY}\", \"role\": \"publisher\", \"name\": \"ci\"}}\n"
        ),
        "keys",
    )
    .unwrap()
}

fn start(dir: &Path) -> ServerHandle {
    CloudServer::builder()
        .dir(dir)
        .port(0)
        .worker_threads(2)
        .api_keys(keys())
        .build()
        .unwrap()
        .spawn()
        .unwrap()
}

/// Redirects are answers here, not followed.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

struct Reply {
    status: u16,
    text: String,
    headers: Vec<(String, String)>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read(mut resp: ureq::http::Response<ureq::Body>) -> Reply {
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    Reply {
        status: resp.status().as_u16(),
        text: resp.body_mut().read_to_string().unwrap_or_default(),
        headers,
    }
}

fn get(server: &ServerHandle, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = agent().get(format!("{}{path}", server.url()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    read(req.call().expect("answered"))
}

fn get_as(server: &ServerHandle, path: &str, key: &str) -> Reply {
    get(server, path, &[("Authorization", &format!("Bearer {key}"))])
}

fn post(server: &ServerHandle, path: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = agent().post(format!("{}{path}", server.url()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    read(req.send(body.as_bytes()).expect("answered"))
}

fn batch(id: &str, task: &str, version: u32, day: &str, executions: u64, matches: u64) -> Value {
    json!({
        "format": "loopai.telemetry/1", "batch_id": id, "deployment_id": "edge-1",
        "task_id": task, "program_version": version, "timestamp": format!("{day}T12:00:00.000Z"),
        "metrics": {"executions": executions,
            "by_status": {"success": executions, "abstain": 0, "error": 0, "timeout": 0},
            "latency_ms": {"p50": 0.01, "p95": 0.02, "p99": 0.03, "mean": 0.01, "max": 0.05},
            "sampled": 10, "validations": 10, "matches": matches},
        "sampled_validations": [{"oracle_cost": 0.001}],
        "execution_summaries": []
    })
}

fn upload(server: &ServerHandle, b: &Value) {
    let r = post(
        server,
        "/api/v1/telemetry",
        &b.to_string(),
        &[("Authorization", &format!("Bearer {DEPLOYMENT_KEY}"))],
    );
    assert_eq!(r.status, 200, "{}", r.text);
}

#[test]
fn a_runtime_reports_heartbeats_and_batches_that_the_query_api_shows() {
    use loopai_core::{ArtifactStore, DeploymentConfig, NewArtifact, Runtime};

    let cloud_dir = tempfile::tempdir().unwrap();
    let mut server = start(cloud_dir.path());
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
         telemetry:\n  heartbeat_interval_sec: 3600\n",
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
    // The heartbeat goes at start, on the telemetry thread: wait for the cloud to have it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let deployment = loop {
        let r = get_as(&server, "/api/v1/query/deployments", VIEWER_KEY);
        assert_eq!(r.status, 200, "{}", r.text);
        let d = r.json()["items"][0].clone();
        if !d["heartbeat"].is_null() {
            break d;
        }
        assert!(std::time::Instant::now() < deadline, "no heartbeat: {d}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(deployment["deployment_id"], "edge-1");
    assert_eq!(deployment["task_id"], "spam");
    assert_eq!(deployment["health"], "ok");
    assert_eq!(deployment["active_version"], 1);
    assert_eq!(deployment["heartbeat"]["interval_sec"], 3600);
    assert_eq!(deployment["heartbeat"]["format"], "loopai.heartbeat/1");
    let task = get_as(&server, "/api/v1/query/tasks/spam", VIEWER_KEY).json();
    assert_eq!(task["executions"], 3, "{task}");
    assert_eq!(task["versions"], json!([1]));
    let daily = get_as(&server, "/api/v1/query/tasks/spam/daily", PUBLISHER_KEY).json();
    assert_eq!(daily["total"], 1);
    assert_eq!(daily["items"][0]["executions"], 3);
    runtime.shutdown(Duration::from_secs(30)).unwrap();
    server.shutdown(SHUTDOWN).unwrap();
    // Restarted, the cloud still has the figures and the deployment's last state.
    let mut server = start(cloud_dir.path());
    let task = get_as(&server, "/api/v1/query/tasks/spam", VIEWER_KEY).json();
    assert_eq!(task["executions"], 3);
    let d = get_as(&server, "/api/v1/query/deployments?task=spam", VIEWER_KEY).json();
    assert_eq!(d["items"][0]["heartbeat"]["active_version"], 1);
    server.shutdown(SHUTDOWN).unwrap();
}

#[test]
fn the_query_api_needs_a_reader_key_pages_and_names_bad_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    for (i, (version, day)) in [(1, "2026-11-01"), (1, "2026-11-02"), (2, "2026-11-02")]
        .into_iter()
        .enumerate()
    {
        upload(
            &server,
            &batch(&format!("b{i}"), "spam", version, day, 100, 9),
        );
    }
    // The same day and version again: summed.
    upload(&server, &batch("b3", "spam", 2, "2026-11-02", 50, 10));
    let path = "/api/v1/query/tasks/spam/daily";
    assert_eq!(get(&server, path, &[]).status, 401);
    assert_eq!(get_as(&server, path, "nope-nope-nope-nope").status, 401);
    let r = get_as(&server, path, DEPLOYMENT_KEY);
    assert_eq!(r.status, 403);
    assert!(r.text.contains("viewer or publisher"), "{}", r.text);
    // Pages of two.
    let first = get_as(&server, &format!("{path}?limit=2"), VIEWER_KEY).json();
    assert_eq!(first["total"], 3);
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    assert_eq!(first["items"][0]["day"], "2026-11-01");
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let second = get_as(
        &server,
        &format!("{path}?limit=2&cursor={cursor}"),
        VIEWER_KEY,
    )
    .json();
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert!(second["next_cursor"].is_null());
    let last = &second["items"][0];
    assert_eq!(
        (last["day"].as_str(), last["version"].as_u64()),
        (Some("2026-11-02"), Some(2))
    );
    assert_eq!(last["executions"], 150);
    assert_eq!(
        (last["validations"].as_u64(), last["matches"].as_u64()),
        (Some(20), Some(19))
    );
    assert_eq!(last["match_rate"], 0.95);
    assert_eq!(last["oracle_cost"], 0.002);
    assert_eq!(last["batches"], 2);
    // Filters.
    let v1 = get_as(
        &server,
        &format!("{path}?version=1&from=2026-11-02"),
        VIEWER_KEY,
    )
    .json();
    assert_eq!(v1["total"], 1);
    // Errors name the parameter.
    for (query, status, message) in [
        ("?limit=0", 400, "limit: must be between 1 and 1000, got 0"),
        ("?cursor=x", 400, "cursor: \"x\" is not a cursor"),
        ("?from=yesterday", 400, "from: expected a day as YYYY-MM-DD"),
        ("?verison=1", 400, "verison: unknown query parameter"),
    ] {
        let r = get_as(&server, &format!("{path}{query}"), VIEWER_KEY);
        assert_eq!(r.status, status, "{query}: {}", r.text);
        let error = r.json()["error"].as_str().unwrap_or("").to_owned();
        assert!(error.starts_with(message), "{query}: {error}");
    }
    let r = get_as(&server, "/api/v1/query/tasks/ham/daily", VIEWER_KEY);
    assert_eq!(r.status, 404, "{}", r.text);
    // The other lists.
    let tasks = get_as(&server, "/api/v1/query/tasks", VIEWER_KEY).json();
    assert_eq!(tasks["items"][0]["task_id"], "spam");
    assert_eq!(tasks["items"][0]["executions"], 350);
    for list in [
        "/api/v1/query/tasks/spam/rollouts",
        "/api/v1/query/tasks/spam/improvements",
        "/api/v1/query/escalations",
        "/api/v1/query/escalations?task=spam",
    ] {
        let r = get_as(&server, list, VIEWER_KEY);
        assert_eq!(r.status, 200, "{list}: {}", r.text);
        assert_eq!(r.json()["total"], 0, "{list}");
    }
    server.shutdown(SHUTDOWN).unwrap();
}

#[test]
fn rollouts_improvements_and_escalations_are_listed_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    // What the improvement engine leaves: its state and an escalation.
    fs::create_dir_all(dir.path().join("improvement")).unwrap();
    fs::write(
        dir.path().join("improvement/spam.json"),
        json!({"attempts": [
            {"at": "2026-11-01T00:00:00Z", "from_version": 1, "failure_rate": 0.3, "samples": 100,
             "version": 2, "outcome": "unsuccessful", "reason": "v2 failed too"},
            {"at": "2026-11-02T00:00:00Z", "from_version": 2, "failure_rate": 0.25, "samples": 120,
             "version": null, "outcome": "unsuccessful", "reason": "cross-validated accuracy 0.7"}
        ]})
        .to_string(),
    )
    .unwrap();
    fs::write(
        dir.path().join("escalations.jsonl"),
        format!(
            "{}\n{}\n",
            json!({"task_id": "other", "escalated_at": "2026-11-01T00:00:00Z", "failing_examples": []}),
            json!({"task_id": "spam", "escalated_at": "2026-11-03T00:00:00Z",
                   "consecutive_unsuccessful_attempts": 3,
                   "failing_examples": [{"input": {"text": "cheap meds"}, "output": "spam"}]})
        ),
    )
    .unwrap();
    let mut server = start(dir.path());
    let mut b = batch("r1", "spam", 2, "2026-11-02", 10, 10);
    b["rollout_events"] = json!([
        {"at": "2026-11-02T10:00:00.000Z", "kind": "started", "stable_version": 1, "canary_version": 2,
         "stage": 0, "fraction": 0.01, "reason": "a new version"},
        {"at": "2026-11-02T11:00:00.000Z", "kind": "rolled_back", "stable_version": 1, "canary_version": 2,
         "stage": 0, "fraction": 0.0, "reason": "canary match rate 0.71 < 0.93"}
    ]);
    upload(&server, &b);
    let rollouts = get_as(&server, "/api/v1/query/tasks/spam/rollouts", VIEWER_KEY).json();
    assert_eq!(rollouts["total"], 2);
    assert_eq!(rollouts["items"][0]["kind"], "rolled_back");
    assert_eq!(rollouts["items"][0]["deployment_id"], "edge-1");
    assert_eq!(
        rollouts["items"][0]["reason"],
        "canary match rate 0.71 < 0.93"
    );
    let attempts = get_as(&server, "/api/v1/query/tasks/spam/improvements", VIEWER_KEY).json();
    assert_eq!(attempts["total"], 2);
    assert_eq!(attempts["items"][0]["from_version"], 2);
    let esc = get_as(&server, "/api/v1/query/escalations?task=spam", VIEWER_KEY).json();
    assert_eq!(esc["total"], 1);
    assert_eq!(
        esc["items"][0]["failing_examples"][0]["input"]["text"],
        "cheap meds"
    );
    assert_eq!(
        get_as(&server, "/api/v1/query/escalations", VIEWER_KEY).json()["total"],
        2
    );
    // The task page shows all of it.
    let page = get_as(&server, "/tasks/spam", VIEWER_KEY);
    assert_eq!(page.status, 200);
    for text in [
        "canary match rate 0.71 &lt; 0.93",
        "cross-validated accuracy 0.7",
        "cheap meds",
        "<svg",
    ] {
        assert!(
            page.text.contains(text),
            "{text} missing from the task page"
        );
    }
    server.shutdown(SHUTDOWN).unwrap();
}

#[test]
fn heartbeats_are_checked_like_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let hb = |deployment: &str| {
        json!({"format": "loopai.heartbeat/1", "deployment_id": deployment, "task_id": "spam",
            "timestamp": "2026-11-25T04:24:00.000Z", "interval_sec": 30, "status": "ok",
            "active_version": 4,
            "rollout": {"state": "in_progress", "stable_version": 3, "canary_version": 4,
                        "stage": 1, "fraction": 0.05},
            "queues": {"dataset_pending": 1, "validation_queued": 2, "telemetry_spooled": 3,
                       "telemetry_pending_records": 4},
            "last_error": null})
        .to_string()
    };
    let auth = format!("Bearer {DEPLOYMENT_KEY}");
    let path = "/api/v1/heartbeats";
    assert_eq!(post(&server, path, &hb("edge-1"), &[]).status, 401);
    let viewer = format!("Bearer {VIEWER_KEY}");
    assert_eq!(
        post(&server, path, &hb("edge-1"), &[("Authorization", &viewer)]).status,
        403
    );
    let r = post(&server, path, &hb("edge-2"), &[("Authorization", &auth)]);
    assert_eq!(r.status, 403);
    assert!(
        r.text.contains("belongs to deployment \\\"edge-1\\\""),
        "{}",
        r.text
    );
    let r = post(
        &server,
        path,
        "{\"format\": 1}",
        &[("Authorization", &auth)],
    );
    assert_eq!(r.status, 400);
    assert!(r.text.contains("format: invalid type"), "{}", r.text);
    let r = post(&server, path, &hb("edge-1"), &[("Authorization", &auth)]);
    assert_eq!(r.status, 200, "{}", r.text);
    let d = get_as(&server, "/api/v1/query/deployments", VIEWER_KEY).json();
    let d = &d["items"][0];
    assert_eq!(d["active_version"], 4);
    assert_eq!(d["heartbeat"]["rollout"]["canary_version"], 4);
    assert_eq!(d["heartbeat"]["queues"]["validation_queued"], 2);
    server.shutdown(SHUTDOWN).unwrap();
}

#[test]
fn the_dashboard_signs_in_with_a_cookie_and_escapes_what_deployments_send() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let mut b = batch("x1", "spam", 1, "2026-11-02", 10, 9);
    b["heartbeat"] = json!({"format": "loopai.heartbeat/1", "deployment_id": "edge-1",
        "task_id": "spam", "timestamp": "2026-11-02T12:00:00.000Z", "interval_sec": 30,
        "status": "ok", "active_version": 1, "last_error": "<script>alert(1)</script>"});
    upload(&server, &b);
    // Not signed in: to the form.
    let r = get(&server, "/", &[]);
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/login"));
    assert_eq!(get(&server, "/login", &[]).status, 200);
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let r = post(&server, "/login", "key=wrong-wrong-wrong-wrong", &form);
    assert_eq!(r.status, 401);
    assert!(r.text.contains("unknown API key"));
    let r = post(&server, "/login", &format!("key={DEPLOYMENT_KEY}"), &form);
    assert_eq!(r.status, 403);
    let r = post(&server, "/login", &format!("key={VIEWER_KEY}"), &form);
    assert_eq!(r.status, 303, "{}", r.text);
    let cookie = r.header("set-cookie").unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let page = get(&server, "/", &[("Cookie", &pair)]);
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'none'"));
    assert!(page.text.contains("edge-1"));
    assert!(page.text.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!page.text.contains("<script>"));
    let task = get(&server, "/tasks/spam", &[("Cookie", &pair)]);
    assert_eq!(task.status, 200);
    assert!(task.text.contains("<svg"));
    assert_eq!(
        get(&server, "/tasks/nope", &[("Cookie", &pair)]).status,
        404
    );
    let out = post(&server, "/logout", "", &[("Cookie", &pair)]);
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    server.shutdown(SHUTDOWN).unwrap();
}

/// Two instances on one PostgreSQL database (started by the test, see `pg.rs`) answer for
/// the whole fleet: what one ingests, the other shows, and a batch sent to both counts once.
#[test]
fn pg_two_instances_share_the_fleet_figures_heartbeats_and_dashboard() {
    let Some(pg) = crate::pg::PgServer::start() else {
        return;
    };
    let url = pg.database("fleet");
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let instance = |dir: &Path| {
        CloudServer::builder()
            .dir(dir)
            .database(&url)
            .port(0)
            .worker_threads(2)
            .api_keys(keys())
            .build()
            .unwrap()
            .spawn()
            .unwrap()
    };
    let mut a = instance(dirs[0].path());
    let mut b = instance(dirs[1].path());
    upload(&a, &batch("p1", "spam", 1, "2026-11-01", 100, 9));
    upload(&b, &batch("p2", "spam", 1, "2026-11-01", 50, 10));
    let mut with_events = batch("p3", "spam", 2, "2026-11-02", 10, 10);
    with_events["rollout_events"] = json!([{"at": "2026-11-02T10:00:00.000Z", "kind": "promoted",
        "stable_version": 1, "canary_version": 2, "stage": 3, "fraction": 1.0, "reason": "all stages passed"}]);
    upload(&a, &with_events);
    // The same batch to the other instance: a duplicate, not counted again.
    let again = post(
        &b,
        "/api/v1/telemetry",
        &with_events.to_string(),
        &[("Authorization", &format!("Bearer {DEPLOYMENT_KEY}"))],
    );
    assert!(again.text.contains("duplicate"), "{}", again.text);
    let hb = json!({"format": "loopai.heartbeat/1", "deployment_id": "edge-1", "task_id": "spam",
        "timestamp": "2026-11-25T04:24:00.000Z", "interval_sec": 30, "status": "ok",
        "active_version": 2, "last_error": null});
    let r = post(
        &a,
        "/api/v1/heartbeats",
        &hb.to_string(),
        &[("Authorization", &format!("Bearer {DEPLOYMENT_KEY}"))],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    for server in [&a, &b] {
        let daily = get_as(server, "/api/v1/query/tasks/spam/daily", VIEWER_KEY).json();
        assert_eq!(daily["total"], 2, "{daily}");
        let first = &daily["items"][0];
        assert_eq!(
            (first["day"].as_str(), first["version"].as_u64()),
            (Some("2026-11-01"), Some(1))
        );
        assert_eq!(
            (first["executions"].as_u64(), first["batches"].as_u64()),
            (Some(150), Some(2))
        );
        assert_eq!(first["match_rate"], 0.95);
        assert_eq!(daily["items"][1]["executions"], 10);
        let task = get_as(server, "/api/v1/query/tasks/spam", VIEWER_KEY).json();
        assert_eq!(
            (task["executions"].as_u64(), task["deployments"].as_u64()),
            (Some(160), Some(1))
        );
        let d = get_as(server, "/api/v1/query/deployments", VIEWER_KEY).json();
        assert_eq!(d["items"][0]["active_version"], 2, "{d}");
        assert_eq!(d["items"][0]["health"], "ok");
        let rollouts = get_as(server, "/api/v1/query/tasks/spam/rollouts", VIEWER_KEY).json();
        assert_eq!(rollouts["total"], 1);
        assert_eq!(rollouts["items"][0]["reason"], "all stages passed");
        assert_eq!(
            get_as(server, "/api/v1/query/tasks/ham", VIEWER_KEY).status,
            404
        );
        let page = get_as(server, "/tasks/spam", VIEWER_KEY);
        assert_eq!(page.status, 200);
        assert!(page.text.contains("all stages passed") && page.text.contains("<svg"));
    }
    a.shutdown(SHUTDOWN).unwrap();
    b.shutdown(SHUTDOWN).unwrap();
}
