//! A telemetry load generator for the reference cloud: CLIENTS threads upload BATCHES
//! well-formed `loopai.telemetry/1` batches (each with SUMMARIES execution summaries and a
//! validation for every fifth) round-robin over the given instances, one request at a time
//! per client with keep-alive. A failed upload (connection refused or reset, 5xx) is
//! retried on the next instance, as a deployment would (uploads are idempotent), for up to
//! 60 s. Prints one JSON line: accepted, duplicate, retries, failed, seconds, batches/s.
//!
//! ```text
//! cloud_ingest --url http://127.0.0.1:8080 [--url ...] [--clients 16] [--batches 20000]
//!              [--summaries 10] [--first-id 0]
//! ```
//!
//! Batch ids are UUIDs numbered from `--first-id`, so two runs with the same ids test
//! de-duplication and runs with disjoint ids add new batches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Args {
    urls: Vec<String>,
    clients: usize,
    batches: u64,
    summaries: usize,
    first_id: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        urls: Vec::new(),
        clients: 16,
        batches: 20_000,
        summaries: 10,
        first_id: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag}: missing value"));
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: expected a number, got {v:?}"))
        };
        match flag.as_str() {
            "--url" => args.urls.push(value()?.trim_end_matches('/').to_owned()),
            "--clients" => args.clients = number(value()?)? as usize,
            "--batches" => args.batches = number(value()?)?,
            "--summaries" => args.summaries = number(value()?)? as usize,
            "--first-id" => args.first_id = number(value()?)?,
            "-h" | "--help" => {
                println!("cloud_ingest --url URL [--url URL ...] [--clients N] [--batches N] [--summaries N] [--first-id N]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if args.urls.is_empty() {
        return Err("--url: at least one instance is required".into());
    }
    if args.clients == 0 {
        return Err("--clients: must be at least 1".into());
    }
    Ok(args)
}

fn uuid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

fn batch(n: u64, summaries: usize) -> Vec<u8> {
    let ids: Vec<String> = (0..summaries as u64)
        .map(|i| format!("00000000-0000-4000-9{:03x}-{:012x}", i & 0xfff, n))
        .collect();
    let validations: Vec<Value> = ids
        .iter()
        .step_by(5)
        .map(|id| {
            json!({"execution_id": id, "program_version": 1, "oracle_output": "spam",
                "oracle_latency_ms": 120.0, "oracle_cost": 0.0002, "match": n % 7 != 0,
                "similarity_score": 1.0, "comparison_method": "exact",
                "validated_at": "2026-12-07T08:00:00.000Z"})
        })
        .collect();
    let v = validations.len();
    json!({
        "format": "loopai.telemetry/1", "batch_id": uuid(n),
        "deployment_id": format!("edge-{}", n % 8), "task_id": "spam", "program_version": 1,
        "timestamp": "2026-12-07T08:00:00.000Z", "window_start": "2026-12-07T07:59:00.000Z",
        "window_end": "2026-12-07T08:00:00.000Z", "privacy_mode": "balanced",
        "metrics": {"executions": summaries, "by_status": {"success": summaries, "abstain": 0, "error": 0, "timeout": 0},
            "latency_ms": {"p50": 0.004, "p95": 0.006, "p99": 0.01, "mean": 0.005, "max": 0.02},
            "mean_confidence": 0.93, "sampled": summaries, "validations": v, "matches": v,
            "match_rate": 1.0, "outputs": {"spam": summaries}},
        "execution_summaries": ids.iter().map(|id| json!({
            "execution_id": id, "input_hash": "9f86d081884c7d65", "input": {"text": "win a free prize now"},
            "output": "spam", "confidence": 0.93, "latency_ms": 0.004, "status": "success",
            "sampled": true, "timestamp": "2026-12-07T07:59:30.000Z"})).collect::<Vec<_>>(),
        "sampled_validations": validations,
    })
    .to_string()
    .into_bytes()
}

#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    duplicate: AtomicU64,
    retries: AtomicU64,
    failed: AtomicU64,
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cloud_ingest: {e}");
            std::process::exit(2);
        }
    };
    let counts = Counts::default();
    let next = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for c in 0..args.clients {
            let (args, counts, next) = (&args, &counts, &next);
            s.spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(30)))
                    .build()
                    .into();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= args.batches {
                        return;
                    }
                    let body = batch(args.first_id + i, args.summaries);
                    let began = Instant::now();
                    let mut attempt = 0usize;
                    loop {
                        let url = &args.urls[(i as usize + c + attempt) % args.urls.len()];
                        let answer = agent
                            .post(format!("{url}/api/v1/telemetry"))
                            .header("Content-Type", "application/json")
                            .send(&body[..])
                            .and_then(|mut r| {
                                let status = r.status().as_u16();
                                r.body_mut().read_to_string().map(|t| (status, t))
                            });
                        match answer {
                            Ok((200, text)) if text.contains("\"accepted\"") => {
                                counts.accepted.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((200, text)) if text.contains("\"duplicate\"") => {
                                counts.duplicate.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((status, text)) if (400..500).contains(&status) => {
                                eprintln!("cloud_ingest: batch {i} refused: {status} {text}");
                                counts.failed.fetch_add(1, Ordering::Relaxed);
                            }
                            _ if began.elapsed() < Duration::from_secs(60) => {
                                counts.retries.fetch_add(1, Ordering::Relaxed);
                                attempt += 1;
                                std::thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                            other => {
                                eprintln!("cloud_ingest: batch {i} gave up: {other:?}");
                                counts.failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        break;
                    }
                }
            });
        }
    });
    let seconds = start.elapsed().as_secs_f64();
    let stored = counts.accepted.load(Ordering::Relaxed) + counts.duplicate.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({
            "instances": args.urls.len(),
            "clients": args.clients,
            "batches": args.batches,
            "summaries_per_batch": args.summaries,
            "accepted": counts.accepted.load(Ordering::Relaxed),
            "duplicate": counts.duplicate.load(Ordering::Relaxed),
            "retries": counts.retries.load(Ordering::Relaxed),
            "failed": counts.failed.load(Ordering::Relaxed),
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "batches_per_sec": (stored as f64 / seconds).round(),
        })
    );
    if counts.failed.load(Ordering::Relaxed) > 0 {
        std::process::exit(1);
    }
}
