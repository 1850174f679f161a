//! Encryption at rest through a runtime (`storage.encryption`, issue #19 item 2): the
//! execution logs and the daily analytics hold no plaintext, read back with the key (the
//! runtime's stats, the reader, `read_stats`), refuse to be read without it, survive a torn
//! tail and a key rotation.
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use time::Date;

use super::analytics::{read_stats, read_stats_with, write_stats_with, DailyAggregate};
use super::{DatasetLayout, DatasetReader};
use crate::clock::Timestamp;
use crate::config::DeploymentConfig;
use crate::crypt::{self, is_encrypted};
use crate::error::{ErrorKind, Result};
use crate::runtime::Runtime;
use crate::testing::{TestClock, DAY1};

const RULES: &[u8] = br#"{"format": "loopai.program/1", "task": "spam",
  "inputs": [{"name": "text", "path": "/text", "type": "text"}],
  "features": [{"name": "prize", "op": "keywords", "source": "text", "terms": ["prize"]}],
  "decide": {"op": "rules", "rules": [
    {"when": {"feature": "prize", "gt": 0}, "then": "spam", "confidence": 0.95},
    {"when": {"always": true}, "then": "ham", "confidence": 0.8}]},
  "output": {"kind": "label", "labels": ["spam", "ham"]}}"#;

/// A data dir with `RULES` installed as `spam`.
fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    crate::testing::install(dir.path(), RULES, true);
    dir
}

/// A private key file `name` holding 32 times `byte`.
fn write_key(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, hex::encode([byte; 32])).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `storage.encryption` with the key file `current` and `old` ones.
fn encrypted(current: &Path, old: &[&Path]) -> DeploymentConfig {
    let mut yaml = format!(
        "storage:\n  encryption:\n    key_file: {}\n",
        current.display()
    );
    if !old.is_empty() {
        yaml.push_str("    old_keys:\n");
        for k in old {
            yaml.push_str(&format!("      - key_file: {}\n", k.display()));
        }
    }
    DeploymentConfig::from_yaml_str(&yaml, "test").unwrap()
}

fn build(dir: &Path, config: &DeploymentConfig) -> Result<Runtime> {
    Runtime::builder()
        .data_dir(dir)
        .task("spam")
        .clock(TestClock::at(DAY1 + 1000))
        .config(config.clone())
        .build()
}

/// The day of `DAY1`.
fn day() -> Date {
    crate::clock::parse_day("2025-11-25").unwrap()
}

fn contains(bytes: &[u8], needle: &[u8]) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// Issue #19 item 2 through a runtime: the logs hold no plaintext, read back with the
/// key (stats, the reader), refuse to be read without it, survive a torn tail and a key
/// rotation.
#[test]
fn a_runtime_with_encryption_writes_no_plaintext_and_reads_back_with_the_key() {
    use std::io::Write;

    let dir = data_dir();
    let (k1, k2) = (
        write_key(dir.path(), "k1", 1),
        write_key(dir.path(), "k2", 2),
    );
    let first = encrypted(&k1, &[]);
    let build = |config: &DeploymentConfig| build(dir.path(), config);
    let day = day();
    let file = dir.path().join("datasets/spam/executions/2025-11-25.jsonl");
    let count = |config: &DeploymentConfig| {
        DatasetReader::new(dir.path(), "spam")
            .with_config(config)
            .unwrap()
            .executions(day, day)
            .unwrap()
            .collect::<Result<Vec<_>>>()
            .unwrap()
            .len()
    };

    let rt = build(&first).unwrap();
    for _ in 0..3 {
        rt.execute(&json!({"text": "my secret prize"})).unwrap();
    }
    rt.flush(Duration::from_secs(10)).unwrap();
    let bytes = std::fs::read(&file).unwrap();
    assert!(is_encrypted(&bytes));
    assert!(
        !bytes.windows(6).any(|w| w == b"secret"),
        "plaintext on disk"
    );
    assert_eq!(
        rt.stats(1).unwrap()[0].total,
        3,
        "stats read the encrypted log"
    );
    rt.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(count(&first), 3);
    let err = DatasetReader::new(dir.path(), "spam")
        .executions(day, day)
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("is encrypted"), "{err}");
    assert!(err.to_string().contains("2025-11-25.jsonl"), "{err}");

    // A torn last frame (a crash mid-append) is cut when the log is reopened.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap()
        .write_all(&[40, 0, 0, 0, 1, 2, 3])
        .unwrap();
    assert_eq!(count(&first), 3, "the reader leaves a torn tail out");
    let rt = build(&first).unwrap();
    rt.execute(&json!({"text": "after the crash"})).unwrap();
    rt.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(count(&first), 4);

    // Rotation: k2 encrypts, k1 still decrypts; today's file is rewritten with k2.
    let rotated = encrypted(&k2, &[&k1]);
    let rt = build(&rotated).unwrap();
    rt.execute(&json!({"text": "rotated"})).unwrap();
    rt.shutdown(Duration::from_secs(10)).unwrap();
    let only_k2 = encrypted(&k2, &[]);
    assert_eq!(count(&only_k2), 5);
    let err = DatasetReader::new(dir.path(), "spam")
        .with_config(&first)
        .unwrap()
        .executions(day, day)
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string().contains("not among the configured keys"),
        "{err}"
    );

    // Retention compresses an encrypted file whole; it still reads back.
    let policy = crate::dataset::RetentionPolicy::from_config(&only_k2);
    let layout = DatasetLayout::new(dir.path(), "spam");
    let today = crate::clock::parse_day("2025-11-28").unwrap();
    let report = crate::dataset::apply_retention(&layout, &policy, today).unwrap();
    assert_eq!(report.compressed.len(), 1, "{report:?}");
    assert!(!file.exists());
    assert_eq!(
        count(&only_k2),
        5,
        "the .gz of an encrypted file reads back"
    );

    // A key that cannot be loaded is a clear configuration error.
    let unset = DeploymentConfig::from_yaml_str(
        "storage:\n  encryption:\n    key_env: LOOPAI_TEST_UNSET_DATA_KEY\n",
        "test",
    )
    .unwrap();
    let err = build(&unset).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.to_string()
            .contains("LOOPAI_TEST_UNSET_DATA_KEY is not set"),
        "{err}"
    );
}

/// The daily analytics file is sealed as one frame with the current key: no count, label or
/// date in clear; it reads back through the runtime's stats, a reader with the keys, and a
/// restart (which adds to it); without the key it is an error naming the file.
#[test]
fn daily_analytics_are_sealed_and_read_back_through_a_restart() {
    let dir = data_dir();
    let k1 = write_key(dir.path(), "k1", 1);
    let config = encrypted(&k1, &[]);
    let layout = DatasetLayout::new(dir.path(), "spam");
    let file = layout.stats_file(day());

    let rt = build(dir.path(), &config).unwrap();
    for text in ["a prize", "a prize", "hello"] {
        rt.execute(&json!({ "text": text })).unwrap();
    }
    rt.shutdown(Duration::from_secs(10)).unwrap();
    let bytes = std::fs::read(&file).unwrap();
    assert!(is_encrypted(&bytes), "the analytics file is sealed");
    for clear in [&b"total"[..], b"spam", b"ham", b"2025-11-25", b"task_id"] {
        assert!(!contains(&bytes, clear), "{:?} in clear", clear);
    }

    // Without keys: a clear error naming the file.
    let err = read_stats(&layout, day()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("is encrypted"), "{err}");
    assert!(
        err.to_string().contains("daily-stats-2025-11-25.json"),
        "{err}"
    );
    let err = DatasetReader::new(dir.path(), "spam")
        .stats(1, day())
        .unwrap_err();
    assert!(
        err.to_string().contains("daily-stats-2025-11-25.json"),
        "{err}"
    );

    // With the key: the reader, then a restart that adds an execution and reseals.
    let reader = DatasetReader::new(dir.path(), "spam")
        .with_config(&config)
        .unwrap();
    let stats = reader.stats(1, day()).unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(
        (stats[0].total, stats[0].output_distribution["spam"]),
        (3, 2)
    );
    let rt = build(dir.path(), &config).unwrap();
    rt.execute(&json!({"text": "prize again"})).unwrap();
    assert_eq!(rt.stats(1).unwrap()[0].total, 4, "the runtime's stats");
    rt.shutdown(Duration::from_secs(10)).unwrap();
    let keys = crypt::key_ring(config.storage.encryption.as_ref().unwrap()).unwrap();
    let stored = read_stats_with(&layout, day(), Some(&keys))
        .unwrap()
        .unwrap();
    assert_eq!((stored.total, stored.output_distribution["spam"]), (4, 3));
    assert!(is_encrypted(&std::fs::read(&file).unwrap()));

    // Rebuilding from the (encrypted) logs writes the file sealed again.
    std::fs::remove_file(&file).unwrap();
    let rebuilt = reader.rebuild_stats(day(), Timestamp(DAY1 + 5000)).unwrap();
    assert_eq!(rebuilt.total, 4);
    assert!(is_encrypted(&std::fs::read(&file).unwrap()));
    assert_eq!(reader.stats(1, day()).unwrap()[0], rebuilt);
}

/// Rotation: a file sealed with an old key listed in `old_keys` reads back; with the old key
/// gone it is an error naming the file and the key id. A plain file (written before
/// encryption was turned on) still reads; a damaged sealed one is an error naming it.
#[test]
fn analytics_of_an_old_key_plain_or_damaged_files() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (
        write_key(dir.path(), "k1", 1),
        write_key(dir.path(), "k2", 2),
    );
    let layout = DatasetLayout::new(dir.path(), "spam");
    let ring =
        |c: &DeploymentConfig| crypt::key_ring(c.storage.encryption.as_ref().unwrap()).unwrap();
    let old = ring(&encrypted(&k1, &[]));
    let rotated = ring(&encrypted(&k2, &[&k1]));
    let only_new = ring(&encrypted(&k2, &[]));
    let d = day();
    let stats = DailyAggregate::new("spam", d).to_stats(Timestamp(1));
    write_stats_with(&layout, &stats, Some(&old)).unwrap();

    assert_eq!(
        read_stats_with(&layout, d, Some(&rotated)).unwrap(),
        Some(stats.clone())
    );
    let err = read_stats_with(&layout, d, Some(&only_new)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let msg = err.to_string();
    assert!(msg.contains("daily-stats-2025-11-25.json"), "{msg}");
    assert!(msg.contains("not among the configured keys"), "{msg}");
    assert!(msg.contains(&old.current().id_hex()), "{msg}");

    // Plain, from before encryption: read with or without keys.
    write_stats_with(&layout, &stats, None).unwrap();
    assert_eq!(
        read_stats_with(&layout, d, Some(&only_new)).unwrap(),
        Some(stats.clone())
    );

    // A flipped bit in a sealed file: an error naming the file, never garbage.
    write_stats_with(&layout, &stats, Some(&only_new)).unwrap();
    let path = layout.stats_file(d);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let err = read_stats_with(&layout, d, Some(&only_new)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.to_string().contains("fails authentication"), "{err}");
    assert!(
        err.to_string().contains("daily-stats-2025-11-25.json"),
        "{err}"
    );
    // Cut short: damage too (a document is written atomically, never torn).
    std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
    let err = read_stats_with(&layout, d, Some(&only_new)).unwrap_err();
    assert!(err.to_string().contains("does not match the file"), "{err}");
}
