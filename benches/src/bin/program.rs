//! Per-call latency of a task's active program (for instance a synthesized one) on the
//! inputs of a JSONL file, through the same [`Executor`] as `loopai eval` and
//! `Runtime::execute` (schemas included), without the execution log.
//!
//! ```text
//! cargo run --release -p loopai-benches --bin program -- DATA_DIR TASK INPUTS.jsonl [ROUNDS]
//! ```
//! `INPUTS.jsonl`: one `{"input": {...}, ...}` (or a bare input object) a line. Every input
//! is executed `ROUNDS` times (default 20) after one warm-up round, each call timed on its
//! own with `Instant` (which adds some 20–40 ns).

use std::process::ExitCode;
use std::time::Instant;

use loopai_core::{ArtifactStore, Error, ErrorKind, Executor, ProgramLimits};
use serde_json::Value;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(data_dir), Some(task), Some(inputs_path)) = (args.first(), args.get(1), args.get(2))
    else {
        eprintln!("usage: program DATA_DIR TASK INPUTS.jsonl [ROUNDS]");
        return ExitCode::from(2);
    };
    let rounds: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(20);
    let loaded = ArtifactStore::open(data_dir.as_ref(), task).and_then(|store| {
        store.load_active()?.ok_or_else(|| {
            Error::new(
                ErrorKind::Artifact,
                format!("task {task:?} has no active program"),
            )
        })
    });
    let executor = match loaded.and_then(|a| Executor::from_artifact(&a, &ProgramLimits::default()))
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{data_dir}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let text = match std::fs::read_to_string(inputs_path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{inputs_path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut inputs = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(mut o)) => inputs.push(o.remove("input").unwrap_or(Value::Object(o))),
            Ok(_) | Err(_) => {
                eprintln!("{inputs_path}:{}: not a JSON object", i + 1);
                return ExitCode::FAILURE;
            }
        }
    }
    if inputs.is_empty() {
        eprintln!("{inputs_path}: no inputs");
        return ExitCode::FAILURE;
    }
    for input in &inputs {
        std::hint::black_box(executor.execute(input).ok());
    }
    let mut ns = Vec::with_capacity(inputs.len() * rounds);
    for _ in 0..rounds {
        for input in &inputs {
            let t = Instant::now();
            let r = executor.execute(std::hint::black_box(input));
            ns.push(t.elapsed().as_nanos() as u64);
            if let Err(e) = r {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ns.sort_unstable();
    println!(
        "{} inputs x {rounds} rounds: p50 {:.2} µs, p90 {:.2} µs, p99 {:.2} µs, mean {:.2} µs",
        inputs.len(),
        percentile(&ns, 50.0) as f64 / 1e3,
        percentile(&ns, 90.0) as f64 / 1e3,
        percentile(&ns, 99.0) as f64 / 1e3,
        ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1e3,
    );
    ExitCode::SUCCESS
}
