//! `loopai cloud serve`: the real binary on a free port, a real HTTP client.

#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use common::{loopai, sigterm};
use std::sync::mpsc;
use std::time::Duration;

/// Not a timed assertion: only how long to wait before declaring the server hung.
const HANG: Duration = Duration::from_secs(60);

#[test]
fn cloud_serve_accepts_a_batch_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = loopai()
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

    sigterm(&child);
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
    let out = loopai()
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

#[test]
fn cloud_serve_refuses_an_unreachable_database_naming_it_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1; the flag wins over the environment variable.
    let out = loopai()
        .args(["cloud", "serve", "--port", "0", "--dir"])
        .arg(dir.path())
        .args([
            "--database",
            "postgres://loopai:hunter2@127.0.0.1:1/cloud?connect_timeout=2",
        ])
        .env("LOOPAI_DATABASE_URL", "postgres://other@127.0.0.1:2/x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("database postgres://loopai@127.0.0.1:1/cloud: no connection"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    // The environment variable when there is no flag.
    let out = loopai()
        .args(["cloud", "serve", "--port", "0", "--dir"])
        .arg(dir.path())
        .env(
            "LOOPAI_DATABASE_URL",
            "postgres://u@127.0.0.1:1/x?sslmode=require",
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("database: sslmode=require"), "{stderr}");
}

fn spam_program(label: &str) -> String {
    serde_json::json!({
        "format": "loopai.program/1", "task": "spam",
        "inputs": [{"name": "text", "path": "/text", "type": "text"}],
        "decide": {"op": "rules", "rules": [
            {"when": {"always": true}, "then": label, "confidence": 0.9}]},
        "output": {"kind": "label", "labels": ["spam", "ham"]}
    })
    .to_string()
}

#[test]
fn publish_uploads_a_program_or_a_version_dir_signed_with_a_keygen_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("signing.key");
    let out = loopai()
        .args(["cloud", "keygen", "--out"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let public_key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(public_key.len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = loopai()
        .args(["cloud", "keygen", "--out"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(!again.status.success(), "never overwrites a key");

    let keys = loopai_cloud::ApiKeys::parse(
        "{\"key\": \"pk_0123456789abcdef0123\", \"role\": \"publisher\"}\n\
         {\"key\": \"dk_0123456789abcdef0123\", \"role\": \"deployment\", \"deployment_id\": \"e\"}",
        "keys",
    )
    .unwrap();
    let mut server = loopai_cloud::CloudServer::builder()
        .dir(dir.path().join("repo"))
        .port(0)
        .worker_threads(1)
        .api_keys(keys)
        .signing_key_file(&key_file)
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    let url = server.url();
    let publish = |key: &str, path: &Path| {
        loopai()
            .args([
                "publish",
                "--api-url",
                &url,
                "--api-key",
                key,
                "--task",
                "spam",
            ])
            .arg(path)
            .output()
            .unwrap()
    };
    let file = dir.path().join("program.json");
    std::fs::write(&file, spam_program("ham")).unwrap();
    let out = publish("pk_0123456789abcdef0123", &file);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("published spam v1 (archive sha256 "),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with(", signed)"), "{stdout}");

    let version_dir = dir.path().join("v7");
    std::fs::create_dir(&version_dir).unwrap();
    std::fs::write(version_dir.join("program.json"), spam_program("spam")).unwrap();
    std::fs::write(
        version_dir.join("metadata.json"),
        r#"{"synthesis_strategy": "rule", "description": "from a dir"}"#,
    )
    .unwrap();
    let out = publish("pk_0123456789abcdef0123", &version_dir);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .starts_with("published spam v2 "));
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("repo/artifacts/spam/v2/metadata.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["description"], "from a dir");
    let list: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("repo/artifacts/spam/versions")).unwrap(),
    )
    .unwrap();
    let entry = &list["versions"][1];
    loopai_core::verify_artifact_signature(
        &[public_key],
        entry["sha256"].as_str().unwrap(),
        entry["signature"].as_str().unwrap(),
    )
    .unwrap();

    // Refusals exit non-zero and say why.
    let out = publish("dk_0123456789abcdef0123", &file);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HTTP 403: this endpoint needs a publisher key, not a deployment key"),
        "{stderr}"
    );
    std::fs::write(&file, "{\"format\": \"loopai.program/1\"}").unwrap();
    let out = publish("pk_0123456789abcdef0123", &file);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("HTTP 400: program.json: "), "{stderr}");
    server.shutdown(Duration::from_secs(10)).unwrap();
}
