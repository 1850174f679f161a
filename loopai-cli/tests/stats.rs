//! `loopai stats` on a dataset written by hand.

mod common;

use std::fs;
use std::path::Path;
use std::process::Output;

use common::{loopai, stderr, stdout};

use loopai_core::{
    day_string, Clock, DatasetLayout, ExecutionRecord, SystemClock, Timestamp, ValidationRecord,
};
use serde_json::{json, Value};

const DAY_MS: i64 = 86_400_000;

fn loopai_stats(dir: &Path, extra: &[&str]) -> Output {
    loopai()
        .args(["stats", "--task", "spam", "--data-dir"])
        .arg(dir)
        .args(extra)
        .output()
        .expect("loopai runs")
}

fn execution(
    n: u32,
    at: Timestamp,
    version: u32,
    output: Value,
    latency_ms: f64,
) -> ExecutionRecord {
    let status = if output.is_null() { "error" } else { "success" };
    let mut r: ExecutionRecord = serde_json::from_value(json!({
        "execution_id": format!("00000000-0000-4000-8000-{n:012}"),
        "task_id": "spam",
        "program_version": version,
        "input": {"text": format!("message {n}")},
        "output": output,
        "confidence": 0.9,
        "latency_ms": latency_ms,
        "status": status,
        "sampled": n % 2 == 0,
        "timestamp": at.to_string(),
    }))
    .unwrap();
    if status == "error" {
        r.error = Some("input /text: expected a string, got a number".into());
        r.confidence = 0.0;
    }
    r
}

fn append<T: serde::Serialize>(path: &Path, records: &[T]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut bytes = fs::read(path).unwrap_or_default();
    for r in records {
        serde_json::to_writer(&mut bytes, r).unwrap();
        bytes.push(b'\n');
    }
    fs::write(path, bytes).unwrap();
}

/// Yesterday: 3 × spam (v3) and 1 error, 2 validations (1 match); today: 2 × ham (v4).
fn write_dataset(dir: &Path) -> (String, String) {
    let now = Timestamp(SystemClock.now_millis());
    let yesterday = Timestamp(now.millis() - DAY_MS);
    let layout = DatasetLayout::new(dir, "spam");
    let y: Vec<_> = (0..3)
        .map(|n| execution(n, yesterday, 3, json!("spam"), 1.0 + f64::from(n)))
        .chain([execution(3, yesterday, 3, Value::Null, 0.5)])
        .collect();
    append(&layout.executions_file(yesterday.day()), &y);
    let id = y[0].execution_id;
    append(
        &layout.validations_file(yesterday.day()),
        &[
            ValidationRecord::new(
                id,
                3,
                json!("spam"),
                200.0,
                0.0,
                true,
                1.0,
                "exact",
                yesterday,
            ),
            ValidationRecord::new(
                id,
                3,
                json!("ham"),
                200.0,
                0.0,
                false,
                0.0,
                "exact",
                yesterday,
            ),
        ],
    );
    let t: Vec<_> = (10..12)
        .map(|n| execution(n, now, 4, json!("ham"), 0.25))
        .collect();
    append(&layout.executions_file(now.day()), &t);
    (day_string(yesterday.day()), day_string(now.day()))
}

#[test]
fn stats_prints_a_table_per_day() {
    let dir = tempfile::tempdir().unwrap();
    let (yesterday, today) = write_dataset(dir.path());
    let o = loopai_stats(dir.path(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("task spam: 2 of the last 7 day(s)"),
        "{out}"
    );
    let header = lines.iter().position(|l| l.starts_with("date")).unwrap();
    for col in [
        "total", "success", "p50 ms", "p95 ms", "p99 ms", "match", "outputs", "versions",
    ] {
        assert!(lines[header].contains(col), "{out}");
    }
    let row_y = lines[header + 1];
    let row_t = lines[header + 2];
    assert!(row_y.starts_with(&yesterday), "{out}");
    assert!(row_t.starts_with(&today), "{out}");
    for cell in ["4", "75.0%", "50.0%", "spam 75.0%, null 25.0%", "v3 100.0%"] {
        assert!(row_y.contains(cell), "{cell:?} in {row_y:?}");
    }
    for cell in ["2", "100.0%", "ham 100.0%", "v4 100.0%", "0.250"] {
        assert!(row_t.contains(cell), "{cell:?} in {row_t:?}");
    }
    // No validations today: no match rate.
    assert!(row_t.contains(" - "), "{row_t:?}");
    // Read-only without --rebuild.
    assert!(!dir.path().join("datasets/spam/analytics").exists());
}

#[test]
fn stats_json_lists_daily_stats_and_rebuild_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let (yesterday, today) = write_dataset(dir.path());
    let o = loopai_stats(dir.path(), &["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stats: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let days = stats.as_array().unwrap();
    assert_eq!(days.len(), 2);
    let y = &days[0];
    assert_eq!(y["date"], json!(yesterday));
    assert_eq!(y["task_id"], json!("spam"));
    assert_eq!(
        (
            &y["total"],
            &y["successful"],
            &y["failed"],
            &y["sampled_count"]
        ),
        (&json!(4), &json!(3), &json!(1), &json!(2))
    );
    assert_eq!(y["success_rate"], json!(0.75));
    assert_eq!(y["output_distribution"], json!({"null": 1, "spam": 3}));
    assert_eq!(y["versions"], json!({"v3": 4}));
    assert_eq!(
        y["validations"],
        json!({"total": 2, "matched": 1, "match_rate": 0.5})
    );
    assert_eq!(y["latency_ms"]["max"], json!(3.0));
    assert_eq!(days[1]["date"], json!(today));
    assert_eq!(days[1]["validations"]["match_rate"], Value::Null);

    let o = loopai_stats(dir.path(), &["--json", "--rebuild", "--days", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rebuilt: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(rebuilt.as_array().unwrap().len(), 2);
    assert_eq!(rebuilt[0]["output_distribution"], y["output_distribution"]);
    for day in [&yesterday, &today] {
        let file = dir
            .path()
            .join(format!("datasets/spam/analytics/daily-stats-{day}.json"));
        assert!(file.exists(), "{}", file.display());
    }
    // --days 1: today only.
    let o = loopai_stats(dir.path(), &["--json", "--days", "1"]);
    let one: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(one.as_array().unwrap().len(), 1);
}

#[test]
fn stats_without_data_says_so_and_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    // The task exists (its artifact cache does) but never ran. (A task that does not
    // exist is an error: see cli.rs.)
    std::fs::create_dir_all(dir.path().join("artifacts/spam")).unwrap();
    let o = loopai_stats(dir.path(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("no data for task spam in the last 7 day(s)"),
        "{}",
        stdout(&o)
    );
    let o = loopai_stats(dir.path(), &["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "[]");
    assert!(
        stderr(&o).starts_with("no data for task spam"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn stats_names_the_file_and_line_of_a_malformed_record() {
    let dir = tempfile::tempdir().unwrap();
    let (_, today) = write_dataset(dir.path());
    let file = dir
        .path()
        .join(format!("datasets/spam/executions/{today}.jsonl"));
    let mut bytes = fs::read(&file).unwrap();
    bytes.extend_from_slice(b"{\"oops\": 1}\n");
    fs::write(&file, bytes).unwrap();
    let o = loopai_stats(dir.path(), &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!("{}:3: invalid record: ", file.display())),
        "{}",
        stderr(&o)
    );
}

/// `storage.encryption` in the data dir's deployment.yaml: `loopai exec` seals the daily
/// analytics file, `loopai stats` (and `--rebuild`) read it with the key, and without the
/// key `loopai stats` fails naming the file.
#[cfg(unix)]
#[test]
fn stats_reads_sealed_analytics_with_the_key_and_names_the_file_without_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("data.key");
    fs::write(&key, "3c".repeat(32)).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let deployment = dir.path().join("config/deployment.yaml");
    fs::create_dir_all(deployment.parent().unwrap()).unwrap();
    fs::write(
        &deployment,
        format!("storage:\n  encryption:\n    key_file: {}\n", key.display()),
    )
    .unwrap();
    let o = common::run(
        loopai()
            .args(["artifacts", "install", "--task", "spam", "--data-dir"])
            .arg(dir.path())
            .arg(common::repo().join("examples/spam/program.json")),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for text in ["win a free prize now", "see you at lunch"] {
        let o = common::run(
            loopai()
                .args(["exec", "--task", "spam", "--input"])
                .arg(json!({ "text": text }).to_string())
                .arg("--data-dir")
                .arg(dir.path()),
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let analytics = dir.path().join("datasets/spam/analytics");
    let files: Vec<_> = fs::read_dir(&analytics)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let sealed = |path: &Path| {
        let bytes = fs::read(path).unwrap();
        bytes.starts_with(b"LOOPAIE1") && !bytes.windows(5).any(|w| w == b"total")
    };
    assert!(sealed(&files[0]), "the analytics file is sealed");

    let o = loopai_stats(dir.path(), &["--json", "--days", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let days: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(days[0]["total"], json!(2));
    assert_eq!(days[0]["output_distribution"]["spam"], json!(1));
    let o = loopai_stats(dir.path(), &["--json", "--days", "1", "--rebuild"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rebuilt: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(rebuilt[0]["total"], json!(2));
    assert!(sealed(&files[0]), "--rebuild writes it sealed");

    // Without the key: an error naming the file.
    fs::write(&deployment, "storage:\n  retention_days: 30\n").unwrap();
    let o = loopai_stats(dir.path(), &["--days", "1"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("is encrypted"), "{err}");
    assert!(err.contains("daily-stats-"), "{err}");
}
