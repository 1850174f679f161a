//! Latency distribution of `Runtime::execute` (criterion reports means and medians; this
//! also reports the tail).
//!
//! ```text
//! cargo run --release -p loopai-benches --bin latency -- [PROGRAM] [TEXTS] [N]
//!     [--program-file FILE] [--inputs FILE.jsonl] [--json OUT.json]
//! ```
//! `PROGRAM`: `rules`, `linear_hashed` (default), `hybrid`, `spam_example` or `all`;
//! `TEXTS`: `sms` (default), `email` or `all`; `N`: timed executions (default 200 000),
//! after N/10 untimed warm-up executions. `--program-file` benches a program document
//! instead of the fixtures, `--inputs` executes the inputs of a JSONL file (input objects
//! or `{"input": ...}` rows) instead of the fixture texts, and `--json` also writes the
//! rows to a file. Each execution is timed on its own with `Instant` (which adds some
//! 20–40 ns), cycling through the inputs; execution logging is on (buffered).

use std::process::ExitCode;
use std::time::Instant;

use loopai_benches::{
    email_texts, fixtures, inputs, read_inputs, runtime_for, sms_texts, Fixture, ToolArgs,
};
use serde_json::{json, Value};

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

const USAGE: &str =
    "usage: latency [rules|linear_hashed|hybrid|spam_example|all] [sms|email|all] [N] \
     [--program-file FILE] [--inputs FILE.jsonl] [--json OUT.json]";

fn main() -> ExitCode {
    let args = match ToolArgs::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let which = args
        .positional
        .first()
        .map_or("linear_hashed", String::as_str);
    let texts = args.positional.get(1).map_or("sms", String::as_str);
    let n: usize = match args.positional.get(2).map(|s| s.parse()) {
        None => 200_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("N must be a positive integer");
            return ExitCode::from(2);
        }
    };
    let sets: Vec<(String, Vec<Value>)> = match &args.inputs {
        Some(path) => match read_inputs(path) {
            Ok(set) => {
                let name = path
                    .file_stem()
                    .map_or("inputs".into(), |s| s.to_string_lossy().into_owned());
                vec![(name, set)]
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => [
            ("sms", inputs(&sms_texts())),
            ("email", inputs(&email_texts())),
        ]
        .into_iter()
        .filter(|(s, _)| texts == "all" || *s == texts)
        .map(|(s, set)| (s.to_string(), set))
        .collect(),
    };
    let chosen: Vec<(String, Vec<u8>)> = match &args.program_file {
        Some(path) => match std::fs::read(path) {
            Ok(bytes) => vec![(
                path.file_stem()
                    .map_or("program".into(), |s| s.to_string_lossy().into_owned()),
                bytes,
            )],
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => fixtures()
            .into_iter()
            .filter(|f| which == "all" || f.name == which)
            .map(|Fixture { name, program }| (name.to_string(), program))
            .collect(),
    };
    if chosen.is_empty() || sets.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "execute", "n", "p50 ns", "p90 ns", "p99 ns", "p99.9 ns", "max ns"
    );
    let mut rows = Vec::new();
    for (program_name, program) in &chosen {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => {
                eprintln!("tempdir: {e}");
                return ExitCode::FAILURE;
            }
        };
        let runtime = match runtime_for(dir.path(), program) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{program_name}: {e}");
                return ExitCode::FAILURE;
            }
        };
        for (name, set) in &sets {
            for i in 0..n / 10 {
                std::hint::black_box(runtime.execute(&set[i % set.len()]).ok());
            }
            let mut ns = Vec::with_capacity(n);
            for i in 0..n {
                let input = &set[i % set.len()];
                let t = Instant::now();
                let r = runtime.execute(std::hint::black_box(input));
                ns.push(t.elapsed().as_nanos() as u64);
                if let Err(e) = r {
                    eprintln!("{program_name}/{name}: {e}");
                    return ExitCode::FAILURE;
                }
            }
            ns.sort_unstable();
            let row = json!({
                "name": format!("{program_name}/{name}"),
                "n": n,
                "p50_ns": percentile(&ns, 50.0),
                "p90_ns": percentile(&ns, 90.0),
                "p99_ns": percentile(&ns, 99.0),
                "p999_ns": percentile(&ns, 99.9),
                "max_ns": ns[n - 1],
            });
            println!(
                "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
                row["name"].as_str().unwrap_or(""),
                n,
                row["p50_ns"],
                row["p90_ns"],
                row["p99_ns"],
                row["p999_ns"],
                row["max_ns"]
            );
            rows.push(row);
        }
    }
    if let Some(path) = &args.json {
        let doc = json!({ "tool": "latency", "logging": "buffered", "rows": rows });
        if let Err(e) = std::fs::write(path, doc.to_string()) {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
