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
