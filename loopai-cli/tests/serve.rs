//! `loopai serve` end to end: synthesize into a fresh data directory, serve it on a free
//! port, execute over HTTP, stop with SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{loopai, repo, sigterm};

/// Reads stderr lines until one contains `marker`; panics with everything read if the
/// stream ends first (the server exited).
fn wait_for(lines: &mut impl Iterator<Item = std::io::Result<String>>, marker: &str) -> String {
    let mut seen = Vec::new();
    for line in lines {
        let line = line.unwrap();
        if line.contains(marker) {
            return line;
        }
        seen.push(line);
    }
    panic!("no {marker:?} on stderr; got:\n{}", seen.join("\n"));
}

#[test]
fn serve_executes_a_synthesized_program_and_flushes_at_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let o = loopai()
        .args(["synth", "--quiet", "--data-dir"])
        .arg(dir.path())
        .arg(repo().join("examples/spam/spec.json"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let mut child = loopai()
        .args(["serve", "--task", "spam", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = wait_for(&mut lines, "listening on ");
    let url = listening
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    let ready = wait_for(&mut lines, "ready");
    assert!(ready.contains("spam v1"), "{ready}");

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .post(format!("{url}/execute"))
        .header("Content-Type", "application/json")
        .send(r#"{"input": {"text": "WIN a FREE prize, call now"}}"#)
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(v["output"], "spam", "{v}");
    assert_eq!(v["version"], 1, "{v}");

    sigterm(&child);
    wait_for(&mut lines, "SIGTERM: draining");
    wait_for(&mut lines, "stopped");
    assert!(child.wait().unwrap().success());

    let logs = dir.path().join("datasets/spam/executions");
    let records: usize = std::fs::read_dir(logs)
        .unwrap()
        .map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .lines()
                .count()
        })
        .sum();
    assert_eq!(records, 1);
}

#[test]
fn serve_refuses_central_mode_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let o = loopai()
        .args(["serve", "--tasks", "a,b", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("requires API keys"), "{err}");
}

/// Issue #15: a running `loopai serve` follows `loopai artifacts activate|rollback` and
/// `loopai rollout start|promote` run as separate processes, within its follow interval,
/// without a restart and without a failed request; it takes over (drives) the rollout the
/// short-lived `loopai rollout start` released.
#[test]
fn serve_follows_activate_rollback_and_rollouts_from_the_cli_without_failed_requests() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        let o = loopai()
            .args(args)
            .args(["--data-dir"])
            .arg(dir.path())
            .args(["--task", "spam"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "loopai {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let program = repo().join("examples/spam/program.json");
    let program = program.to_str().unwrap();
    cli(&["artifacts", "install", program]);
    cli(&["artifacts", "install", "--no-activate", program]);

    let mut child = loopai()
        .args([
            "serve",
            "--task",
            "spam",
            "--port",
            "0",
            "--follow-interval",
            "0.2",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = wait_for(&mut lines, "listening on ");
    let url = listening
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    wait_for(&mut lines, "ready");
    // Keep reading the server's log, so that it never blocks on a full pipe.
    let log = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        })
    };

    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(u16, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let client = {
        let (stop, seen, url) = (stop.clone(), seen.clone(), url.clone());
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let body = serde_json::json!({"input": {"text": format!("hello number {i}")}});
                let (status, version) = match agent
                    .post(format!("{url}/execute"))
                    .header("Content-Type", "application/json")
                    .send(body.to_string())
                {
                    Ok(mut r) => {
                        let status = r.status().as_u16();
                        let v: serde_json::Value = r
                            .body_mut()
                            .read_to_string()
                            .ok()
                            .and_then(|t| serde_json::from_str(&t).ok())
                            .unwrap_or_default();
                        (status, v["version"].as_u64().unwrap_or(0))
                    }
                    Err(_) => (0, 0),
                };
                seen.lock().unwrap().push((status, version));
            }
        })
    };
    // Waits until the responses after this call are served by exactly `versions`, 50 in
    // a row (a rollout at 10% serves both versions among any 50 distinct inputs with
    // overwhelming probability, and keeps doing so).
    let served = |what: &str, versions: &[u64]| {
        let deadline = Instant::now() + Duration::from_secs(60);
        let from = seen.lock().unwrap().len();
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = seen.lock().unwrap();
            let recent = &now[from..];
            if recent.len() >= 50 {
                let tail = &recent[recent.len() - 50..];
                let mut got: Vec<u64> = tail.iter().map(|&(_, v)| v).collect();
                got.sort_unstable();
                got.dedup();
                if got == versions {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "never served {what} ({versions:?}); last: {:?}",
                &recent[recent.len().saturating_sub(20)..]
            );
        }
    };
    served("v1 at start", &[1]);
    cli(&["artifacts", "activate", "2"]);
    served("v2 after `artifacts activate 2`", &[2]);
    cli(&["artifacts", "rollback"]);
    served("v1 after `artifacts rollback`", &[1]);
    let out = cli(&["rollout", "start", "2"]);
    assert!(out.contains("canary rollout of v2 started"), "{out}");
    served("both versions during the rollout", &[1, 2]);
    // The server took the rollout over from the exited CLI: it drives it now.
    let driver = format!(":{}:", child.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: serde_json::Value = serde_json::from_str(&cli(&["rollout", "status"])).unwrap();
        if status["driver"]
            .as_str()
            .is_some_and(|d| d.contains(&driver))
        {
            assert_eq!(status["state"], "in_progress", "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server never drove the rollout: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = cli(&["rollout", "promote"]);
    assert!(out.contains("v2 is active"), "{out}");
    served("v2 after `rollout promote`", &[2]);

    stop.store(true, Ordering::SeqCst);
    client.join().unwrap();
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
    let seen = seen.lock().unwrap();
    let failed = seen.iter().filter(|&&(status, _)| status != 200).count();
    eprintln!(
        "{} requests across the switches, {failed} failed",
        seen.len()
    );
    assert_eq!(failed, 0, "server log:\n{}", log.lock().unwrap().join("\n"));
    let status: serde_json::Value = serde_json::from_str(&cli(&["rollout", "status"])).unwrap();
    assert_eq!(status["state"], "promoted", "{status}");
}
