//! Crash safety: `loopai exec` in durable mode is killed with SIGKILL at random moments;
//! every execution it reported must be on disk and every line of every file must parse.
//!
//! `LOOPAI_CRASH_ITERATIONS` sets the number of kills (default 50); `scripts/crash-loop.sh`
//! runs a longer loop.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{loopai, repo};

/// A small deterministic generator, so a failing iteration can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn every_line_parses(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for sub in ["executions", "validations"] {
        let Ok(entries) = std::fs::read_dir(dir.join("datasets/spam").join(sub)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for (i, line) in text.lines().enumerate() {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{}:{}: {e}: {line:?}", path.display(), i + 1));
                out.push(v);
            }
        }
    }
    out
}

#[test]
fn sigkill_never_loses_a_reported_execution() {
    let iterations: u64 = std::env::var("LOOPAI_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let status = loopai()
        .args(["artifacts", "install", "--task", "spam", "--data-dir"])
        .arg(data)
        .arg(repo().join("examples/spam/program.json"))
        .status()
        .unwrap();
    assert!(status.success());
    let config = data.join("durable.yaml");
    std::fs::write(&config, "storage:\n  durability: durable\n").unwrap();

    let mut rng = Lcg(0x5eed);
    let mut reported: HashSet<String> = HashSet::new();
    for iteration in 0..iterations {
        let mut child = loopai()
            .args(["exec", "--task", "spam", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(data)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || {
            for i in 0u64.. {
                let line =
                    format!("{{\"text\": \"message {iteration}/{i}: win a free prize now\"}}\n");
                if stdin.write_all(line.as_bytes()).is_err() {
                    break;
                }
            }
        });
        // Kill after a random number of results, or a random short delay, whichever first.
        let kill_after = 1 + rng.next() % 200;
        let deadline = Instant::now() + Duration::from_millis(20 + rng.next() % 150);
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut seen = 0;
        let mut line = String::new();
        while seen < kill_after && Instant::now() < deadline {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            reported.insert(v["execution_id"].as_str().unwrap().to_string());
            seen += 1;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Results already printed before the kill count as reported too.
        line.clear();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                reported.insert(v["execution_id"].as_str().unwrap().to_string());
            }
            line.clear();
        }
        feeder.join().unwrap();
    }
    // Reopen (a normal run repairs any torn tail), then check.
    let out = loopai()
        .args([
            "exec",
            "--task",
            "spam",
            "--input",
            r#"{"text": "after the crashes"}"#,
            "--config",
        ])
        .arg(&config)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let on_disk: HashSet<String> = every_line_parses(data)
        .iter()
        .map(|v| v["execution_id"].as_str().unwrap().to_string())
        .collect();
    let missing: Vec<_> = reported.difference(&on_disk).collect();
    assert!(
        missing.is_empty(),
        "{} reported executions missing: {missing:?}",
        missing.len()
    );
    assert!(!reported.is_empty());
    eprintln!(
        "{iterations} kills: {} reported executions, all on disk ({} records in total)",
        reported.len(),
        on_disk.len()
    );
}
