//! `Runtime::execute` latency with and without validation against a slow oracle: the
//! validation queue must keep the oracle off the execute path.
//!
//! ```text
//! cargo run --release -p loopai-benches --bin validation -- [N] [ORACLE_MS]
//! ```
//! `N`: timed executions per scenario (default 200 000, after N/10 untimed warm-up ones);
//! `ORACLE_MS`: how long the in-process oracle sleeps per call (default 50). Scenarios,
//! all on the `linear_hashed` program with SMS texts and 2 validation workers:
//!
//! * `no_sampling`: `sampling.rate: 0` — nothing is validated;
//! * `sampled_5pct`: `sampling.rate: 0.05` — each sample is queued (`try_send`) and the
//!   queue of 1024 soon fills, since the oracle validates 2 / ORACLE_MS per second;
//! * `sampled_100pct`: `sampling.rate: 1` — every execution is sampled; nearly all find
//!   the queue full and are skipped.
//!
//! Each execution is timed on its own with `Instant` (which adds some 20–40 ns).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use loopai_benches::{fixtures, inputs, sms_texts};
use loopai_core::{ArtifactStore, DeploymentConfig, FnOracle, NewArtifact, OracleAnswer, Runtime};
use serde_json::json;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parse = |i: usize, default: u64| match args.get(i).map(|s| s.parse::<u64>()) {
        None => Some(default),
        Some(Ok(n)) if n > 0 => Some(n),
        Some(_) => None,
    };
    let (Some(n), Some(oracle_ms)) = (parse(0, 200_000), parse(1, 50)) else {
        eprintln!("usage: validation [N] [ORACLE_MS] (positive integers)");
        return ExitCode::from(2);
    };
    let n = n as usize;
    let program = fixtures()
        .into_iter()
        .find(|f| f.name == "linear_hashed")
        .map(|f| f.program)
        .unwrap_or_default();
    let set = inputs(&sms_texts());
    println!(
        "{:<16} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>10} {:>10} {:>11}",
        "scenario",
        "n",
        "p50 ns",
        "p90 ns",
        "p99 ns",
        "p99.9 ns",
        "max ns",
        "sampled",
        "validated",
        "queue_full"
    );
    for (name, rate) in [
        ("no_sampling", 0.0),
        ("sampled_5pct", 0.05),
        ("sampled_100pct", 1.0),
    ] {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => {
                eprintln!("tempdir: {e}");
                return ExitCode::FAILURE;
            }
        };
        let sleep = Duration::from_millis(oracle_ms);
        let oracle = FnOracle::shared(move |_| {
            std::thread::sleep(sleep);
            Ok(OracleAnswer::new(json!("spam")))
        });
        let yaml = format!(
            "sampling:\n  strategy: random\n  rate: {rate}\nvalidation:\n  workers: 2\n  queue_capacity: 1024\n"
        );
        let built = ArtifactStore::open(dir.path(), "spam")
            .and_then(|s| s.install(&program, NewArtifact::default(), true))
            .and_then(|_| DeploymentConfig::from_yaml_str(&yaml, name))
            .and_then(|config| {
                Runtime::builder()
                    .data_dir(dir.path())
                    .task("spam")
                    .config(config)
                    .oracle(oracle)
                    .build()
            });
        let runtime = match built {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{name}: {e}");
                return ExitCode::FAILURE;
            }
        };
        for i in 0..n / 10 {
            std::hint::black_box(runtime.execute(&set[i % set.len()]).ok());
        }
        let before = runtime.validation_metrics();
        let mut ns = Vec::with_capacity(n);
        let mut sampled = 0u64;
        for i in 0..n {
            let input = &set[i % set.len()];
            let t = Instant::now();
            let r = runtime.execute(std::hint::black_box(input));
            ns.push(t.elapsed().as_nanos() as u64);
            match r {
                Ok(r) => sampled += u64::from(r.sampled),
                Err(e) => {
                    eprintln!("{name}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let after = runtime.validation_metrics();
        ns.sort_unstable();
        println!(
            "{:<16} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>10} {:>10} {:>11}",
            name,
            n,
            percentile(&ns, 50.0),
            percentile(&ns, 90.0),
            percentile(&ns, 99.0),
            percentile(&ns, 99.9),
            ns[n - 1],
            sampled,
            after.validated - before.validated,
            after.skipped_queue_full - before.skipped_queue_full,
        );
        // Queued samples are discarded at shutdown; the workers finish their current call.
        let _ = runtime.shutdown(Duration::from_millis(2 * oracle_ms + 500));
    }
    ExitCode::SUCCESS
}
