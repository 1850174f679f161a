//! Execute + logging throughput (buffered durability) with 1 and 2 threads, and the
//! latency the execution log adds to `execute`.
//!
//! ```text
//! cargo run --release -p loopai-benches --bin throughput -- [PROGRAM] [N]
//!     [--program-file FILE] [--inputs FILE.jsonl] [--json OUT.json]
//! ```
//! `PROGRAM`: `minimal` (one rule: isolates the cost of the runtime and its log), `rules`,
//! `linear_hashed`, `hybrid` or `spam_example` (default `rules`); `N`:
//! executions per thread (default 500 000). `--program-file` benches a program document,
//! `--inputs` executes the inputs of a JSONL file instead of the SMS fixture texts, and
//! `--json` also writes the figures to a file. Each phase uses a fresh data directory; the
//! wall time includes `flush`, so every counted execution is on disk. The added latency is
//! the difference of the per-call medians of `Runtime::execute` and `Program::evaluate`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopai_benches::{fixtures, inputs, read_inputs, runtime_for, sms_texts, ToolArgs};
use loopai_core::Program;
use serde_json::{json, Value};

fn median_ns(mut samples: Vec<u64>) -> u64 {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn main() -> ExitCode {
    let args = match ToolArgs::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let which = args.positional.first().map_or("rules", String::as_str);
    let n: usize = args
        .positional
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(500_000);
    let minimal = br#"{"format": "loopai.program/1", "task": "spam",
        "inputs": [{"name": "text", "path": "/text", "type": "text"}],
        "decide": {"op": "rules", "rules": [{"when": {"always": true}, "then": "ham", "confidence": 0.9}]},
        "output": {"kind": "label", "labels": ["spam", "ham"]}}"#;
    let (which, program_json) = if let Some(path) = &args.program_file {
        match std::fs::read(path) {
            Ok(bytes) => (
                path.file_stem()
                    .map_or("program".into(), |s| s.to_string_lossy().into_owned()),
                bytes,
            ),
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    } else if which == "minimal" {
        (which.to_string(), minimal.to_vec())
    } else if let Some(f) = fixtures().into_iter().find(|f| f.name == which) {
        (which.to_string(), f.program)
    } else {
        eprintln!("unknown program {which:?}");
        return ExitCode::from(2);
    };
    let (texts_name, texts): (String, Arc<Vec<Value>>) = match &args.inputs {
        Some(path) => match read_inputs(path) {
            Ok(set) => (path.display().to_string(), Arc::new(set)),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => ("SMS texts".to_string(), Arc::new(inputs(&sms_texts()))),
    };

    // Per-call medians: evaluate alone, then execute with logging.
    let program = match Program::from_json(&program_json) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{which}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let timed = |f: &mut dyn FnMut(&Value)| -> u64 {
        let mut samples = Vec::with_capacity(100_000);
        for i in 0..110_000 {
            let input = &texts[i % texts.len()];
            let t = Instant::now();
            f(input);
            let ns = t.elapsed().as_nanos() as u64;
            if i >= 10_000 {
                samples.push(ns);
            }
        }
        median_ns(samples)
    };
    let eval_p50 = timed(&mut |input| {
        std::hint::black_box(program.evaluate(input).unwrap());
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = runtime_for(dir.path(), &program_json).expect("runtime");
    let exec_p50 = timed(&mut |input| {
        std::hint::black_box(runtime.execute(input).unwrap());
    });
    runtime.shutdown(Duration::from_secs(60)).expect("shutdown");
    println!("program {which}, {texts_name}, buffered logging");
    println!(
        "  p50 evaluate (no logging)     {:>8.3} µs",
        eval_p50 as f64 / 1e3
    );
    println!(
        "  p50 execute (with logging)    {:>8.3} µs",
        exec_p50 as f64 / 1e3
    );
    println!(
        "  added by Runtime + logging    {:>8.3} µs",
        exec_p50.saturating_sub(eval_p50) as f64 / 1e3
    );

    let mut phases = Vec::new();
    for threads in [1usize, 2] {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = runtime_for(dir.path(), &program_json).expect("runtime");
        let start = Instant::now();
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (runtime, texts) = (runtime.clone(), texts.clone());
                std::thread::spawn(move || {
                    for i in 0..n {
                        let input = &texts[(i + t * 7) % texts.len()];
                        std::hint::black_box(runtime.execute(input).unwrap());
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker");
        }
        runtime.flush(Duration::from_secs(120)).expect("flush");
        let secs = start.elapsed().as_secs_f64();
        let written = runtime.health().dataset.written;
        assert_eq!(written as usize, n * threads, "every execution logged");
        let per_sec = (n * threads) as f64 / secs;
        println!(
            "  {threads} thread(s): {per_sec:>9.0} logged executions/s ({} executions, {secs:.2} s incl. flush)",
            n * threads,
        );
        phases.push(json!({
            "threads": threads,
            "executions": n * threads,
            "seconds": secs,
            "per_sec": per_sec,
        }));
        runtime.shutdown(Duration::from_secs(60)).expect("shutdown");
    }
    if let Some(path) = &args.json {
        let doc = json!({
            "tool": "throughput",
            "program": which,
            "inputs": texts_name,
            "logging": "buffered",
            "evaluate_p50_ns": eval_p50,
            "execute_p50_ns": exec_p50,
            "added_ns": exec_p50.saturating_sub(eval_p50),
            "threads": phases,
        });
        if let Err(e) = std::fs::write(path, doc.to_string()) {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
