//! Latency distribution of `Runtime::execute` (criterion reports means and medians; this
//! also reports the tail).
//!
//! ```text
//! cargo run --release -p loopai-benches --bin latency -- [PROGRAM] [TEXTS] [N]
//! ```
//! `PROGRAM`: `rules`, `linear_hashed` (default), `hybrid`, `spam_example` or `all`;
//! `TEXTS`: `sms` (default), `email` or `all`; `N`: timed executions (default 200 000),
//! after N/10 untimed warm-up executions. Each execution is timed on its own with
//! `Instant` (which adds some 20–40 ns), cycling through the fixture texts.

use std::process::ExitCode;
use std::time::Instant;

use loopai_benches::{email_texts, fixtures, inputs, runtime_for, sms_texts};

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map_or("linear_hashed", String::as_str);
    let texts = args.get(1).map_or("sms", String::as_str);
    let n: usize = match args.get(2).map(|s| s.parse()) {
        None => 200_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("N must be a positive integer");
            return ExitCode::from(2);
        }
    };
    let sets = [
        ("sms", inputs(&sms_texts())),
        ("email", inputs(&email_texts())),
    ];
    let chosen: Vec<_> = fixtures()
        .into_iter()
        .filter(|f| which == "all" || f.name == which)
        .collect();
    if chosen.is_empty() || !["sms", "email", "all"].contains(&texts) {
        eprintln!(
            "usage: latency [rules|linear_hashed|hybrid|spam_example|all] [sms|email|all] [N]"
        );
        return ExitCode::from(2);
    }
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "execute", "n", "p50 ns", "p90 ns", "p99 ns", "p99.9 ns", "max ns"
    );
    for f in &chosen {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => {
                eprintln!("tempdir: {e}");
                return ExitCode::FAILURE;
            }
        };
        let runtime = match runtime_for(dir.path(), &f.program) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{}: {e}", f.name);
                return ExitCode::FAILURE;
            }
        };
        for (name, set) in sets.iter().filter(|(s, _)| texts == "all" || *s == texts) {
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
                    eprintln!("{}/{name}: {e}", f.name);
                    return ExitCode::FAILURE;
                }
            }
            ns.sort_unstable();
            println!(
                "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
                format!("{}/{name}", f.name),
                n,
                percentile(&ns, 50.0),
                percentile(&ns, 90.0),
                percentile(&ns, 99.0),
                percentile(&ns, 99.9),
                ns[n - 1]
            );
        }
    }
    ExitCode::SUCCESS
}
