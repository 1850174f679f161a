//! Several instances on one PostgreSQL database (started by the test itself, see `pg.rs`):
//! uploads de-duplicated across instances, publications numbered without collisions,
//! notifications crossing instances, one improvement pass at a time, and an instance
//! killed under load losing and duplicating nothing. Waits poll observable state; nothing
//! asserts how long anything took.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopai_cloud::{CloudServer, ImprovementConfig, ServerHandle};
use parking_lot::RwLock;
use serde_json::{json, Value};

use crate::pg::PgServer;

const SHUTDOWN: Duration = Duration::from_secs(10);
/// Not a timed assertion: how long to wait before declaring something hung.
const HANG: Duration = Duration::from_secs(60);
/// The improvement pass lock's key (docs/cloud.md).
const PASS_LOCK: i64 = 0x6c6f_6f70_6169_6970;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn instance(dir: &Path, url: &str) -> ServerHandle {
    CloudServer::builder()
        .dir(dir)
        .database(url)
        .port(0)
        .worker_threads(2)
        .heartbeat(Duration::from_millis(200))
        .build()
        .unwrap()
        .spawn()
        .unwrap()
}

/// The `batch_id` (a UUID, as loopai.telemetry/1 has it) numbered `n`.
fn id(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// A well-formed batch with `n` executions and validations of `task` v1.
fn batch(batch_id: &str, task: &str, n: usize) -> Value {
    let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    json!({
        "format": "loopai.telemetry/1", "batch_id": batch_id, "deployment_id": "edge-1",
        "task_id": task, "program_version": 1,
        "timestamp": "2026-11-25T00:00:00Z", "window_start": "2026-11-25T00:00:00Z",
        "window_end": "2026-11-25T00:00:00Z", "privacy_mode": "balanced",
        "metrics": {"executions": n, "by_status": {"success": n, "abstain": 0, "error": 0, "timeout": 0},
            "latency_ms": null, "mean_confidence": 0.9, "sampled": n, "validations": n,
            "matches": 0, "match_rate": 0.0, "outputs": {}},
        "execution_summaries": ids.iter().map(|id| json!({
            "execution_id": id, "input_hash": "h", "input": {"text": "x"}, "output": "a",
            "confidence": 0.9, "latency_ms": 0.01, "status": "success", "sampled": true,
            "timestamp": "2026-11-25T00:00:00Z"})).collect::<Vec<_>>(),
        "sampled_validations": ids.iter().map(|id| json!({
            "execution_id": id, "program_version": 1, "oracle_output": "b",
            "oracle_latency_ms": 1.0, "oracle_cost": 0.0, "match": false,
            "similarity_score": 0.0, "comparison_method": "exact",
            "validated_at": "2026-11-25T00:00:00Z"})).collect::<Vec<_>>(),
    })
}

/// POSTs a batch; the status and the response's `status` field.
fn post(base: &str, body: &Value) -> Result<(u16, String), String> {
    let mut response = agent()
        .post(format!("{base}/api/v1/telemetry"))
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok((status, value["status"].as_str().unwrap_or(&text).to_owned()))
}

fn health(base: &str) -> Value {
    let text = agent()
        .get(format!("{base}/health"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A program for `task` that answers `label` to everything.
fn program(task: &str, label: &str) -> Vec<u8> {
    json!({
        "format": "loopai.program/1", "task": task,
        "inputs": [{"name": "text", "path": "/text", "type": "text"}],
        "decide": {"op": "rules", "rules": [
            {"when": {"always": true}, "then": label, "confidence": 0.9}]},
        "output": {"kind": "label", "labels": ["a", "b"]}
    })
    .to_string()
    .into_bytes()
}

fn upload(base: &str, task: &str, body: &[u8]) -> (u16, Value) {
    let mut response = agent()
        .post(format!("{base}/api/v1/artifacts/{task}/upload"))
        .send(body)
        .unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn versions(base: &str, task: &str) -> Vec<u64> {
    let mut response = agent()
        .get(format!("{base}/api/v1/artifacts/{task}/versions"))
        .call()
        .unwrap();
    if response.status().as_u16() == 404 {
        return Vec::new();
    }
    let list: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    list["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect()
}

#[test]
fn pg_a_batch_sent_to_two_instances_is_stored_once() {
    let Some(pg) = PgServer::start() else { return };
    let url = pg.database("dedup");
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut a = instance(dirs[0].path(), &url);
    let mut b = instance(dirs[1].path(), &url);
    assert_eq!(health(&a.url())["storage"], "postgres");

    // The same batch to both instances at once, then again to each.
    let body = batch(&id(1), "spam", 3);
    let (ua, ub) = (a.url(), b.url());
    let results: Vec<(u16, String)> = std::thread::scope(|s| {
        let x = s.spawn(|| post(&ua, &body).unwrap());
        let y = s.spawn(|| post(&ub, &body).unwrap());
        vec![x.join().unwrap(), y.join().unwrap()]
    });
    let mut statuses: Vec<&str> = results.iter().map(|(_, s)| s.as_str()).collect();
    statuses.sort();
    assert_eq!(statuses, ["accepted", "duplicate"], "{results:?}");
    assert_eq!(post(&ua, &body).unwrap(), (200, "duplicate".to_owned()));
    assert_eq!(post(&ub, &body).unwrap(), (200, "duplicate".to_owned()));
    // A batch that is not loopai.telemetry/1 is kept whole, without child rows.
    let loose = json!({"batch_id": "b-loose", "task_id": "spam", "timestamp": 1, "extra": [1]});
    assert_eq!(post(&ub, &loose).unwrap(), (200, "accepted".to_owned()));

    assert_eq!(health(&ua)["telemetry_batches"], 2);
    assert_eq!(health(&ub)["telemetry_batches"], 2);
    assert_eq!(
        pg.psql("dedup", "SELECT count(*) FROM execution_summaries"),
        "3"
    );
    assert_eq!(
        pg.psql(
            "dedup",
            "SELECT count(*), count(*) FILTER (WHERE NOT matched), min(program_version) FROM validations WHERE task_id = 'spam'"
        ),
        "3|3|1"
    );
    assert_eq!(
        pg.psql(
            "dedup",
            "SELECT batch -> 'extra' FROM telemetry_batches WHERE batch_id = 'b-loose'"
        ),
        "[1]"
    );
    assert_eq!(
        pg.psql(
            "dedup",
            "SELECT deployment_id, last_batch_at IS NOT NULL FROM deployments"
        ),
        "edge-1|t"
    );
    // A restarted instance starts without reading the batches, and still knows them.
    a.shutdown(SHUTDOWN).unwrap();
    let mut a = instance(dirs[0].path(), &url);
    assert_eq!(
        post(&a.url(), &body).unwrap(),
        (200, "duplicate".to_owned())
    );
    a.shutdown(SHUTDOWN).unwrap();
    b.shutdown(SHUTDOWN).unwrap();
}

#[test]
fn pg_a_batch_whose_fleet_figures_fail_is_not_stored_and_a_duplicate_adds_nothing() {
    let Some(pg) = PgServer::start() else { return };
    let url = pg.database("figures");
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut a = instance(dirs[0].path(), &url);
    let mut b = instance(dirs[1].path(), &url);
    let (ua, ub) = (a.url(), b.url());
    let stored = |batch_id: &str| {
        pg.psql(
            "figures",
            &format!(
                "SELECT (SELECT count(*) FROM telemetry_batches WHERE batch_id = '{batch_id}')
                      || '|' || (SELECT count(*) FROM execution_summaries WHERE batch_id = '{batch_id}')
                      || '|' || (SELECT count(*) FROM validations WHERE batch_id = '{batch_id}')"
            ),
        )
    };
    let daily = |task: &str| {
        pg.psql(
            "figures",
            &format!(
                "SELECT coalesce(sum(batches), 0) || '|' || coalesce(sum(executions), 0)
                 FROM fleet_daily WHERE task_id = '{task}'"
            ),
        )
    };

    // The figure update of task "poison" fails (a constraint injected into fleet_daily):
    // the batch is refused and nothing of it is stored.
    pg.psql(
        "figures",
        "ALTER TABLE fleet_daily ADD CONSTRAINT injected_failure CHECK (task_id <> 'poison')",
    );
    let poison = batch(&id(1), "poison", 2);
    let (status, text) = post(&ua, &poison).unwrap();
    assert_eq!(status, 500, "{text}");
    assert!(
        text.contains("fleet_daily") || text.contains("figures"),
        "{text}"
    );
    assert_eq!(stored(&id(1)), "0|0|0");
    assert_eq!(daily("poison"), "0|0");
    assert_eq!(
        pg.psql("figures", "SELECT count(*) FROM fleet_deployments"),
        "0"
    );

    // Once the figures can be written, the same batch is stored with them, once, whichever
    // instance gets it again.
    pg.psql(
        "figures",
        "ALTER TABLE fleet_daily DROP CONSTRAINT injected_failure",
    );
    assert_eq!(post(&ub, &poison).unwrap(), (200, "accepted".to_owned()));
    assert_eq!(stored(&id(1)), "1|2|2");
    assert_eq!(daily("poison"), "1|2");
    for base in [&ua, &ub] {
        assert_eq!(post(base, &poison).unwrap(), (200, "duplicate".to_owned()));
    }
    assert_eq!(daily("poison"), "1|2");
    // A second batch adds to the figures.
    assert_eq!(
        post(&ua, &batch(&id(2), "poison", 3)).unwrap(),
        (200, "accepted".to_owned())
    );
    assert_eq!(daily("poison"), "2|5");
    assert_eq!(
        pg.psql(
            "figures",
            "SELECT deployment_id, task_id, batch_version FROM fleet_deployments"
        ),
        "edge-1|poison|1"
    );
    a.shutdown(SHUTDOWN).unwrap();
    b.shutdown(SHUTDOWN).unwrap();
}

#[test]
fn pg_concurrent_publications_on_three_instances_never_collide() {
    let Some(pg) = PgServer::start() else { return };
    let url = pg.database("publish");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut servers: Vec<ServerHandle> = dirs.iter().map(|d| instance(d.path(), &url)).collect();
    let urls: Vec<String> = servers.iter().map(ServerHandle::url).collect();
    const PER_THREAD: usize = 6;
    let got: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|t| {
                let urls = &urls;
                s.spawn(move || {
                    (0..PER_THREAD)
                        .map(|i| {
                            let base = &urls[(t + i) % urls.len()];
                            let label = if (t + i) % 2 == 0 { "a" } else { "b" };
                            let (status, body) = upload(base, "spam", &program("spam", label));
                            assert_eq!(status, 201, "{body}");
                            body["version"].as_u64().unwrap()
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=36).collect::<Vec<u64>>(), "{got:?}");
    // Every instance lists every version and serves every archive.
    for base in &urls {
        assert_eq!(versions(base, "spam"), (1..=36).collect::<Vec<u64>>());
        let mut response = agent()
            .get(format!("{base}/api/v1/artifacts/spam/v36/download"))
            .call()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let archive = response.body_mut().read_to_vec().unwrap();
        let unpacked = loopai_core::ArtifactArchive::unpack(&archive).unwrap();
        loopai_core::Program::from_json(&unpacked.program).unwrap();
    }
    // A requested number that exists is refused on any instance.
    let mut response = agent()
        .post(format!(
            "{}/api/v1/artifacts/spam/upload?version=7",
            urls[2]
        ))
        .send(&program("spam", "a")[..])
        .unwrap();
    assert_eq!(response.status().as_u16(), 409);
    let refused: Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(
        refused["error"],
        "version: v7 of task \"spam\" already exists (versions are immutable)"
    );
    for s in &mut servers {
        s.shutdown(SHUTDOWN).unwrap();
    }
}

/// Reads server-sent events from `reader` until an `artifact` event; returns its data.
fn next_artifact_event(reader: &mut impl BufRead) -> Value {
    let mut event = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).unwrap();
        assert!(n > 0, "the notification stream ended");
        let line = line.trim_end();
        if let Some(name) = line.strip_prefix("event:") {
            event = name.trim().to_owned();
        } else if let Some(data) = line.strip_prefix("data:") {
            if event == "artifact" {
                return serde_json::from_str(data.trim()).unwrap();
            }
        }
    }
}

#[test]
fn pg_a_publication_reaches_a_deployment_listening_on_another_instance() {
    let Some(pg) = PgServer::start() else { return };
    let url = pg.database("notify");
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut a = instance(dirs[0].path(), &url);
    let mut b = instance(dirs[1].path(), &url);
    // b's listener is connected once it shows in pg_stat_activity as LISTENing.
    pg.wait_for(
        "notify",
        "SELECT count(*) >= 2 FROM pg_stat_activity WHERE query LIKE 'LISTEN loopai_artifacts%'",
        "t",
        HANG,
    );
    let mut response = agent()
        .get(format!("{}/api/v1/notifications/spam", b.url()))
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut reader = BufReader::new(response.body_mut().as_reader());
    let (status, body) = upload(&a.url(), "spam", &program("spam", "a"));
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        next_artifact_event(&mut reader),
        json!({"task": "spam", "version": 1})
    );
    let (status, _) = upload(&a.url(), "spam", &program("spam", "b"));
    assert_eq!(status, 201);
    assert_eq!(
        next_artifact_event(&mut reader),
        json!({"task": "spam", "version": 2})
    );
    drop(reader);
    a.shutdown(SHUTDOWN).unwrap();
    b.shutdown(SHUTDOWN).unwrap();
}

#[test]
fn pg_an_instance_killed_under_load_loses_and_duplicates_nothing() {
    let Some(pg) = PgServer::start() else { return };
    let url = pg.database("kill");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let servers: Vec<RwLock<Option<ServerHandle>>> = dirs
        .iter()
        .map(|d| RwLock::new(Some(instance(d.path(), &url))))
        .collect();
    let urls: Arc<RwLock<Vec<String>>> = Arc::new(RwLock::new(
        servers
            .iter()
            .map(|s| s.read().as_ref().unwrap().url())
            .collect(),
    ));
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 150;
    let sent = AtomicUsize::new(0);
    let (accepted, duplicates, retries) = std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let urls = Arc::clone(&urls);
                let sent = &sent;
                s.spawn(move || {
                    let (mut accepted, mut duplicates, mut retries) = (0, 0, 0);
                    for i in 0..PER_CLIENT {
                        let body = batch(&id((c * 1000 + i) as u64), "load", 2);
                        let mut attempt = 0;
                        let start = Instant::now();
                        loop {
                            let base = urls.read()[(i + attempt + c) % 3].clone();
                            match post(&base, &body) {
                                Ok((200, status)) if status == "accepted" => accepted += 1,
                                Ok((200, status)) if status == "duplicate" => duplicates += 1,
                                // Refused, or the instance is down: retry (uploads are
                                // idempotent), on the next instance.
                                _ => {
                                    retries += 1;
                                    attempt += 1;
                                    assert!(start.elapsed() < HANG, "batch c{c}-{i} never stored");
                                    std::thread::sleep(Duration::from_millis(5));
                                    continue;
                                }
                            }
                            break;
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    (accepted, duplicates, retries)
                })
            })
            .collect();
        // Under load: kill instance 1 (connections in flight dropped), restart it.
        while sent.load(Ordering::Relaxed) < CLIENTS * PER_CLIENT / 3 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut killed = servers[1].write().take().unwrap();
        killed.shutdown(Duration::ZERO).ok();
        drop(killed);
        while sent.load(Ordering::Relaxed) < CLIENTS * PER_CLIENT / 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let restarted = instance(dirs[1].path(), &url);
        urls.write()[1] = restarted.url();
        *servers[1].write() = Some(restarted);
        clients.into_iter().fold((0, 0, 0), |acc, h| {
            let (a, d, r) = h.join().unwrap();
            (acc.0 + a, acc.1 + d, acc.2 + r)
        })
    });
    let total = CLIENTS * PER_CLIENT;
    // Every batch answered once as accepted, or as duplicate after a retry whose first
    // try was stored before its answer was lost.
    assert_eq!(accepted + duplicates, total);
    assert!(
        duplicates <= retries,
        "{duplicates} duplicates, {retries} retries"
    );
    // Nothing lost, nothing stored twice.
    assert_eq!(
        pg.psql(
            "kill",
            "SELECT count(*), count(DISTINCT batch_id) FROM telemetry_batches"
        ),
        format!("{total}|{total}")
    );
    assert_eq!(
        pg.psql("kill", "SELECT count(*) FROM execution_summaries"),
        (2 * total).to_string()
    );
    assert_eq!(
        pg.psql("kill", "SELECT count(*) FROM validations"),
        (2 * total).to_string()
    );
    for s in &servers {
        if let Some(mut h) = s.write().take() {
            h.shutdown(SHUTDOWN).unwrap();
        }
    }
}

#[test]
fn pg_improvement_passes_run_one_at_a_time_across_instances() {
    let Some(pg) = PgServer::start() else { return };
    let url = pg.database("improve");
    const TASK: &str = "fruit";
    let spec = json!({
        "name": TASK,
        "description": "Which fruit family a text is about.",
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        "output_schema": {"type": "string", "enum": ["a", "b"]},
        "examples": (0..40).map(|i| {
            let (word, label) = if i % 2 == 0 { ("apple", "a") } else { ("banana", "b") };
            json!({"input": {"text": format!("the {word} number {i}")}, "output": label})
        }).collect::<Vec<_>>(),
    });
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    for d in &dirs {
        std::fs::create_dir_all(d.path().join("specs")).unwrap();
        std::fs::write(
            d.path().join(format!("specs/{TASK}.json")),
            spec.to_string(),
        )
        .unwrap();
    }
    // Hold the pass lock from outside (advisory locks are per database): no instance may
    // run a pass meanwhile.
    let held = format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND ((classid::bigint << 32) | objid::bigint) = {PASS_LOCK}"
    );
    let holder = pg.session("improve", &format!("SELECT pg_advisory_lock({PASS_LOCK})"));
    pg.wait_for("improve", &held, "1", HANG);

    let servers: Vec<ServerHandle> = dirs
        .iter()
        .map(|d| {
            CloudServer::builder()
                .dir(d.path())
                .database(&url)
                .port(0)
                .worker_threads(2)
                .improvement(
                    ImprovementConfig::default().with_min_samples(20),
                    Duration::from_millis(50),
                )
                .build()
                .unwrap()
                .spawn()
                .unwrap()
        })
        .collect();
    let urls: Vec<String> = servers.iter().map(ServerHandle::url).collect();
    // v1 answers "a" to everything; deployments report it failing on "banana" and
    // "blueberry" texts.
    let meta =
        json!({"input_schema": spec["input_schema"], "output_schema": spec["output_schema"]});
    let archive =
        loopai_core::ArtifactArchive::new(program(TASK, "a"), Some(meta.to_string().into_bytes()))
            .pack()
            .unwrap();
    assert_eq!(upload(&urls[0], TASK, &archive).0, 201);
    for k in 0..4 {
        let mut body = batch(&id(k as u64), TASK, 20);
        for (i, s) in body["execution_summaries"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .enumerate()
        {
            let word = if i % 2 == 0 { "blueberry" } else { "banana" };
            s["input"] = json!({"text": format!("a {word} here {k} {i}")});
        }
        assert_eq!(
            post(&urls[k % 2], &body).unwrap(),
            (200, "accepted".to_owned())
        );
    }
    // Both instances try, and skip, while the lock is held elsewhere.
    let start = Instant::now();
    while urls
        .iter()
        .any(|u| health(u)["improvement"]["skipped"].as_u64().unwrap() < 3)
    {
        assert!(start.elapsed() < HANG, "the instances never tried a pass");
        std::thread::sleep(Duration::from_millis(20));
    }
    for u in &urls {
        assert_eq!(health(u)["improvement"]["passes"], 0);
    }
    assert_eq!(versions(&urls[1], TASK), [1]);

    // Released: one instance improves v1 into v2; the other's later passes see the
    // pending attempt and do nothing more.
    drop(holder);
    let start = Instant::now();
    while versions(&urls[1], TASK).len() < 2 {
        assert!(
            start.elapsed() < HANG,
            "v2 was never published; state {}; passes {:?}",
            pg.psql("improve", "SELECT state FROM improvement_state"),
            urls.iter()
                .map(|u| health(u)["improvement"].clone())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let after: Vec<u64> = urls
        .iter()
        .map(|u| health(u)["improvement"]["passes"].as_u64().unwrap())
        .collect();
    let start = Instant::now();
    while urls
        .iter()
        .zip(&after)
        .any(|(u, n)| health(u)["improvement"]["passes"].as_u64().unwrap() < n + 3)
    {
        assert!(
            start.elapsed() < HANG,
            "the instances stopped running passes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(versions(&urls[0], TASK), [1, 2]);
    assert_eq!(
        pg.psql(
            "improve",
            &format!("SELECT jsonb_array_length(state -> 'attempts'), state -> 'attempts' -> 0 ->> 'outcome', state -> 'attempts' -> 0 ->> 'version' FROM improvement_state WHERE task_id = '{TASK}'")
        ),
        "1|pending|2"
    );
    for mut s in servers {
        s.shutdown(SHUTDOWN).unwrap();
    }
}

#[test]
fn pg_a_spec_given_to_one_instance_is_used_by_a_pass_on_another() {
    let Some(pg) = PgServer::start() else { return };
    let url = pg.database("specs");
    const TASK: &str = "fruit";
    let spec = json!({
        "name": TASK,
        "description": "Which fruit family a text is about.",
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        "output_schema": {"type": "string", "enum": ["a", "b"]},
        "examples": (0..40).map(|i| {
            let (word, label) = if i % 2 == 0 { ("apple", "a") } else { ("banana", "b") };
            json!({"input": {"text": format!("the {word} number {i}")}, "output": label})
        }).collect::<Vec<_>>(),
    });
    // Instance A has the spec file (and a file that is not a spec, skipped); it runs no
    // improvement pass. Instance B has no specs directory at all and runs the passes.
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let specs = dirs[0].path().join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::write(specs.join(format!("{TASK}.json")), spec.to_string()).unwrap();
    std::fs::write(specs.join("broken.json"), "[not json").unwrap();
    let mut a = instance(dirs[0].path(), &url);
    assert_eq!(
        pg.psql("specs", "SELECT task_id, length(sha256) FROM task_specs"),
        format!("{TASK}|64")
    );
    assert_eq!(
        pg.psql("specs", "SELECT max(version) FROM loopai_schema_migrations"),
        "3"
    );
    let mut b = CloudServer::builder()
        .dir(dirs[1].path())
        .database(&url)
        .port(0)
        .worker_threads(2)
        .improvement(
            ImprovementConfig::default().with_min_samples(20),
            Duration::from_millis(50),
        )
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    let (ua, ub) = (a.url(), b.url());
    // v1 answers "a" to everything; deployments report it failing on "banana" texts.
    let meta =
        json!({"input_schema": spec["input_schema"], "output_schema": spec["output_schema"]});
    let archive =
        loopai_core::ArtifactArchive::new(program(TASK, "a"), Some(meta.to_string().into_bytes()))
            .pack()
            .unwrap();
    assert_eq!(upload(&ua, TASK, &archive).0, 201);
    for k in 0..2 {
        let mut body = batch(&id(k as u64), TASK, 20);
        for (i, s) in body["execution_summaries"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .enumerate()
        {
            s["input"] = json!({"text": format!("a banana here {k} {i}")});
        }
        assert_eq!(post(&ua, &body).unwrap(), (200, "accepted".to_owned()));
    }
    // B, whose directory has no spec, learns v2 from the spec A was given.
    let start = Instant::now();
    while versions(&ub, TASK).len() < 2 {
        assert!(start.elapsed() < HANG, "instance B never improved the task");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(health(&ub)["improvement"]["passes"].as_u64().unwrap() >= 1);
    assert_eq!(health(&ua)["improvement"]["passes"], 0);
    assert!(!dirs[1].path().join("specs").exists());
    let attempts = pg.psql("specs", "SELECT count(*) FROM improvement_state");
    assert_eq!(attempts, "1");
    // A file placed while B runs is imported at its next improvement tick.
    std::fs::create_dir_all(dirs[1].path().join("specs")).unwrap();
    std::fs::write(dirs[1].path().join("specs/other.json"), spec.to_string()).unwrap();
    pg.wait_for(
        "specs",
        "SELECT string_agg(task_id, ',' ORDER BY task_id) FROM task_specs",
        &format!("{TASK},other"),
        HANG,
    );

    // A changed file is imported again by the next instance start (or improvement tick).
    let mut changed = spec.clone();
    changed["description"] = json!("Which fruit family a text is about (revised).");
    std::fs::write(specs.join(format!("{TASK}.json")), changed.to_string()).unwrap();
    a.shutdown(SHUTDOWN).unwrap();
    let mut a = instance(dirs[0].path(), &url);
    assert_eq!(
        pg.psql(
            "specs",
            &format!("SELECT convert_from(body, 'UTF8')::jsonb ->> 'description' FROM task_specs WHERE task_id = '{TASK}'")
        ),
        "Which fruit family a text is about (revised)."
    );
    a.shutdown(SHUTDOWN).unwrap();
    b.shutdown(SHUTDOWN).unwrap();
}

#[test]
fn pg_a_bad_database_url_is_a_config_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let err = CloudServer::builder()
        .dir(dir.path())
        .database("postgres://u@127.0.0.1:1/x?sslmode=require")
        .port(0)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), loopai_cloud::ErrorKind::Config);
    assert!(
        err.message().starts_with("database: sslmode=require"),
        "{err}"
    );
    let err = CloudServer::builder()
        .dir(dir.path())
        .database("nonsense://")
        .port(0)
        .build()
        .unwrap_err();
    assert!(
        err.message()
            .starts_with("database: not a PostgreSQL connection string"),
        "{err}"
    );
    // Nothing listens on port 1: a clear I/O error naming the database, no password.
    let err = CloudServer::builder()
        .dir(dir.path())
        .database("postgres://u:secret@127.0.0.1:1/x?connect_timeout=2")
        .port(0)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), loopai_cloud::ErrorKind::Io);
    assert!(
        err.message().contains("postgres://u@127.0.0.1:1/x"),
        "{err}"
    );
    assert!(!err.message().contains("secret"), "{err}");
}
