//! `loopai cloud serve`: the real binary on a free port, a real HTTP client.

#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Not a timed assertion: only how long to wait before declaring the server hung.
const HANG: Duration = Duration::from_secs(60);

#[test]
fn cloud_serve_accepts_a_batch_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_loopai"))
        .args(["cloud", "serve", "--port", "0", "--dir"])
        .arg(dir.path())
        .env_remove("LOOPAI_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loopai runs");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            let _ = tx.send(line.clone());
            all.push(line);
        }
        all
    });
    let url = loop {
        let line = rx.recv_timeout(HANG).unwrap_or_else(|e| {
            panic!(
                "no `listening on` line ({e}); child: {:?}",
                child.try_wait()
            )
        });
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(HANG))
        .build()
        .into();
    let batch = serde_json::json!({
        "batch_id": "cli-b1", "deployment_id": "edge-1", "task_id": "spam",
        "program_version": 1, "timestamp": "2026-11-25T04:23:14Z",
        "execution_summaries": [], "sampled_validations": [], "metrics": {}
    });
    for expected in ["accepted", "duplicate"] {
        let mut resp = agent
            .post(format!("{url}/api/v1/telemetry"))
            .send(batch.to_string().as_bytes())
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let body: serde_json::Value =
            serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(body["status"], expected, "{body}");
    }

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    let log = reader.join().unwrap().join("\n");
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        log.contains("running OPEN as a development server"),
        "{log}"
    );
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
    assert!(log.contains("stopped after"), "{log}");

    let task_dir = dir.path().join("telemetry/spam");
    let files: Vec<_> = std::fs::read_dir(&task_dir).unwrap().collect();
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
    let stored: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert_eq!(stored, batch);
}

#[test]
fn cloud_serve_refuses_a_bad_keys_file_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.jsonl");
    std::fs::write(
        &keys,
        "# ok\n{\"key\": \"short\", \"role\": \"deployment\", \"deployment_id\": \"d\"}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_loopai"))
        .args(["cloud", "serve", "--port", "0", "--dir"])
        .arg(dir.path())
        .arg("--api-keys")
        .arg(&keys)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("keys.jsonl:2: key: must be 16-256 bytes"),
        "{stderr}"
    );
}
