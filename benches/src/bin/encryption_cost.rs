//! The cost of encryption at rest (`storage.encryption`), plain and encrypted side by side
//! in one run, interleaved so that a machine whose load changes during the run biases
//! neither variant.
//!
//! ```text
//! cargo run --release -p loopai-benches --bin encryption_cost -- [ROUNDS] [N] [plain|encrypted]
//!     [--json OUT.json]
//! ```
//!
//! Two runtimes on the `rules` program (SMS-sized inputs, buffered durability), one with
//! the log encrypted, execute `N` inputs per round (default 100 000, in batches of 20 000,
//! below the writer queue's capacity so that `execute` never waits for the writer) for
//! `ROUNDS` rounds (default 10), alternating which variant goes first. Per round and
//! variant it reports:
//!
//! * **execute ns**: the caller's time per `Runtime::execute` (sealing happens on the
//!   writer thread, so this is what encryption costs the execute path, contention
//!   included);
//! * **logged/s**: executions per second until they are all on disk (each batch ends with
//!   `flush`), i.e. the writer's throughput;
//! * **CPU ns**: the CPU time of all the process's threads (caller, writer, the runtime's
//!   background threads; Linux `/proc/self/task/*/schedstat`) per logged execution: what a
//!   saturated machine, where every cycle counts, pays. It depends much less on other
//!   processes' load than the wall-clock figures.
//!
//! It prints the medians and the median of the per-round ratios encrypted/plain (a paired
//! figure: both variants of a round ran under the same load), and the load average before
//! and after. With a third argument only that variant runs (for `valgrind --tool=callgrind`,
//! whose instruction counts do not depend on the load: see `docs/datasets.md`).

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use loopai_benches::{inputs, rules_program, sms_texts, ToolArgs};
use loopai_core::{ArtifactStore, DeploymentConfig, NewArtifact, Runtime};
use serde_json::{json, Value};

/// Executions between two flushes (below the default queue capacity of 65 536).
const BATCH: usize = 20_000;

/// A runtime on `rules` in `dir`, with the log encrypted when `encrypted`.
fn runtime(dir: &Path, encrypted: bool) -> Result<Runtime, String> {
    ArtifactStore::open(dir, "spam")
        .and_then(|s| s.install(&rules_program(), NewArtifact::default(), true))
        .map_err(|e| format!("installing the program: {e}"))?;
    let yaml = if encrypted {
        let key = dir.join("data.key");
        std::fs::write(&key, "11".repeat(32)).map_err(|e| format!("{}: {e}", key.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("{}: {e}", key.display()))?;
        }
        format!("storage:\n  encryption:\n    key_file: {}\n", key.display())
    } else {
        String::new()
    };
    let config = DeploymentConfig::from_yaml_str(&yaml, "bench").map_err(|e| e.to_string())?;
    Runtime::builder()
        .data_dir(dir)
        .task("spam")
        .config(config)
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))
}

/// One variant's figures for one round.
#[derive(Debug, Clone, Copy)]
struct Sample {
    execute_ns: f64,
    logged_per_s: f64,
    cpu_ns: f64,
}

/// The CPU time of every thread of this process so far, in nanoseconds (Linux; 0
/// elsewhere).
fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Executes `n` inputs in batches, each followed by a flush.
fn round(rt: &Runtime, set: &[Value], n: usize, offset: &mut usize) -> Result<Sample, String> {
    let (mut executing, mut total) = (Duration::ZERO, Duration::ZERO);
    let cpu_before = cpu_ns();
    let mut done = 0;
    while done < n {
        let batch = BATCH.min(n - done);
        let start = Instant::now();
        for _ in 0..batch {
            *offset = (*offset + 1) % set.len();
            std::hint::black_box(rt.execute(&set[*offset]).map_err(|e| e.to_string())?);
        }
        let executed = Instant::now();
        rt.flush(Duration::from_secs(120))
            .map_err(|e| format!("flush: {e}"))?;
        executing += executed - start;
        total += start.elapsed();
        done += batch;
    }
    Ok(Sample {
        execute_ns: executing.as_nanos() as f64 / n as f64,
        logged_per_s: n as f64 / total.as_secs_f64(),
        cpu_ns: cpu_ns().saturating_sub(cpu_before) as f64 / n as f64,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("encryption_cost: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args = ToolArgs::parse(std::env::args().skip(1))?;
    let number = |i: usize, default: usize| -> Result<usize, String> {
        match args.positional.get(i) {
            Some(s) => s
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("argument {}: {s:?} is not a positive number", i + 1)),
            None => Ok(default),
        }
    };
    let rounds = number(0, 10)?;
    let n = number(1, 100_000)?;
    let variants: Vec<(&str, bool)> = match args.positional.get(2).map(String::as_str) {
        None | Some("both") => vec![("plain", false), ("encrypted", true)],
        Some("plain") => vec![("plain", false)],
        Some("encrypted") => vec![("encrypted", true)],
        Some(other) => {
            return Err(format!(
                "argument 3: {other:?}: expected plain, encrypted or both"
            ))
        }
    };
    let set = inputs(&sms_texts());
    let dirs: Vec<tempfile::TempDir> = variants
        .iter()
        .map(|_| tempfile::tempdir().map_err(|e| format!("temporary directory: {e}")))
        .collect::<Result<_, _>>()?;
    let runtimes: Vec<Runtime> = variants
        .iter()
        .zip(&dirs)
        .map(|((_, encrypted), dir)| runtime(dir.path(), *encrypted))
        .collect::<Result<_, _>>()?;
    let load_before = loadavg();
    let mut offset = 0;
    // Warm-up: caches, the day's file open, the allocator.
    for rt in &runtimes {
        round(rt, &set, BATCH.min(n), &mut offset)?;
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    for r in 0..rounds {
        for k in 0..variants.len() {
            // Alternate which variant goes first.
            let i = if r % 2 == 0 {
                k
            } else {
                variants.len() - 1 - k
            };
            samples[i].push(round(&runtimes[i], &set, n, &mut offset)?);
        }
    }
    for rt in &runtimes {
        rt.shutdown(Duration::from_secs(60))
            .map_err(|e| format!("shutdown: {e}"))?;
    }
    let load_after = loadavg();

    println!(
        "encryption at rest: {rounds} rounds x {n} executions per variant (rules program, SMS inputs, buffered durability)"
    );
    println!("load average (1, 5, 15 min): before {load_before}, after {load_after}");
    println!(
        "{:<10} {:>14} {:>14} {:>16} {:>16} {:>10}",
        "variant", "execute ns", "(min..max)", "logged/s", "(min..max)", "CPU ns"
    );
    let mut report = serde_json::Map::new();
    for ((name, _), s) in variants.iter().zip(&samples) {
        let ex: Vec<f64> = s.iter().map(|s| s.execute_ns).collect();
        let th: Vec<f64> = s.iter().map(|s| s.logged_per_s).collect();
        let cpu: Vec<f64> = s.iter().map(|s| s.cpu_ns).collect();
        let range = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            (lo, hi)
        };
        let (exl, exh) = range(&ex);
        let (thl, thh) = range(&th);
        println!(
            "{name:<10} {:>14.0} {:>14} {:>16.0} {:>16} {:>10.0}",
            median(ex.clone()),
            format!("{exl:.0}..{exh:.0}"),
            median(th.clone()),
            format!("{thl:.0}..{thh:.0}"),
            median(cpu.clone())
        );
        report.insert(
            (*name).to_owned(),
            json!({"execute_ns": ex, "logged_per_s": th, "cpu_ns": cpu,
                   "execute_ns_median": median(ex.clone()), "logged_per_s_median": median(th.clone()),
                   "cpu_ns_median": median(cpu.clone())}),
        );
    }
    if samples.len() == 2 {
        let paired = |f: &dyn Fn(&Sample) -> f64| {
            median(
                samples[0]
                    .iter()
                    .zip(&samples[1])
                    .map(|(p, e)| f(e) / f(p))
                    .collect(),
            )
        };
        let ex = paired(&|s| s.execute_ns);
        let th = paired(&|s| s.logged_per_s);
        let cpu = paired(&|s| s.cpu_ns);
        println!(
            "encrypted/plain, median of per-round ratios: execute {:+.1}% ns, logged/s {:+.1}% (target: no worse than -10%), CPU per logged execution {:+.1}%",
            (ex - 1.0) * 100.0,
            (th - 1.0) * 100.0,
            (cpu - 1.0) * 100.0
        );
        report.insert(
            "ratio".into(),
            json!({"execute_ns": ex, "logged_per_s": th, "cpu_ns": cpu}),
        );
    }
    report.insert(
        "load".into(),
        json!({"before": load_before, "after": load_after}),
    );
    if let Some(path) = &args.json {
        let text =
            serde_json::to_string_pretty(&Value::Object(report)).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
