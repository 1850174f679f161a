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

/// Every record of the dataset, read through the reader with the configuration's keys
/// (encrypted files: every frame authenticates, every record parses).
fn every_record_decrypts(dir: &Path, config: &Path) -> Vec<serde_json::Value> {
    let config = loopai_core::DeploymentConfig::from_file(config).unwrap();
    let reader = loopai_core::DatasetReader::new(dir, "spam")
        .with_config(&config)
        .unwrap();
    let days = reader.execution_days().unwrap();
    let (Some(&from), Some(&to)) = (days.first(), days.last()) else {
        return Vec::new();
    };
    reader
        .executions(from, to)
        .unwrap()
        .map(|r| serde_json::to_value(r.unwrap()).unwrap())
        .collect()
}

fn iterations(default: u64) -> u64 {
    std::env::var("LOOPAI_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn sigkill_never_loses_a_reported_execution() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("durable.yaml");
    std::fs::write(&config, "storage:\n  durability: durable\n").unwrap();
    crash_loop(dir.path(), &config, iterations(50), every_line_parses);
}

/// The same with `storage.encryption`: a kill mid-append leaves a torn frame, which the
/// next run cuts; nothing reported is lost and nothing on disk is plaintext (logs and
/// daily analytics).
#[cfg(unix)]
#[test]
fn sigkill_never_loses_a_reported_execution_with_encryption() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("data.key");
    std::fs::write(&key, "5a".repeat(32)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.path().join("encrypted.yaml");
    std::fs::write(
        &config,
        format!(
            "storage:\n  durability: durable\n  encryption:\n    key_file: {}\n",
            key.display()
        ),
    )
    .unwrap();
    crash_loop(dir.path(), &config, iterations(20), |data| {
        every_record_decrypts(data, &config)
    });
    let logs = dir.path().join("datasets/spam/executions");
    for entry in std::fs::read_dir(logs).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(bytes.starts_with(b"LOOPAIE1"));
        assert!(
            !bytes.windows(5).any(|w| w == b"prize"),
            "plaintext on disk"
        );
    }
    // The daily analytics written at the final run's shutdown are sealed as well. A run
    // killed while writing them leaves its temporary (`.tmp-*`, removed by a later write
    // once an hour old): it holds a prefix of sealed bytes, never plaintext.
    let analytics = dir.path().join("datasets/spam/analytics");
    let mut sealed = 0;
    for entry in std::fs::read_dir(analytics).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") {
            let head = &bytes[..bytes.len().min(8)];
            assert!(
                b"LOOPAIE1".starts_with(head),
                "{name}: plaintext in a temporary"
            );
            assert!(
                !bytes.windows(5).any(|w| w == b"prize"),
                "{name}: plaintext"
            );
            continue;
        }
        assert!(
            bytes.starts_with(b"LOOPAIE1"),
            "{name}: daily analytics in clear"
        );
        sealed += 1;
    }
    assert!(sealed >= 1);
}

fn crash_loop(
    data: &Path,
    config: &Path,
    iterations: u64,
    records: impl Fn(&Path) -> Vec<serde_json::Value>,
) {
    let status = loopai()
        .args(["artifacts", "install", "--task", "spam", "--data-dir"])
        .arg(data)
        .arg(repo().join("examples/spam/program.json"))
        .status()
        .unwrap();
    assert!(status.success());

    let mut rng = Lcg(0x5eed);
    let mut reported: HashSet<String> = HashSet::new();
    for iteration in 0..iterations {
        let mut child = loopai()
            .args(["exec", "--task", "spam", "--config"])
            .arg(config)
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
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let on_disk: HashSet<String> = records(data)
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
