//! Evaluates a program on the inputs of a JSONL file, a fixed number of times, with no
//! timing and no execution log: the workload for an instruction count, which unlike a
//! time does not depend on what else the machine runs.
//!
//! ```text
//! cargo build --release -p loopai-benches --bin evaluate_calls
//! valgrind --tool=callgrind --toggle-collect='loopai_core::program::Program::evaluate' \
//!     target/release/evaluate_calls PROGRAM.json INPUTS.jsonl [ROUNDS]
//! ```
//! Every input is evaluated once untimed (compiling nothing: the program is compiled
//! before), then `ROUNDS` (default 3) more times; the tool prints how many calls were made
//! in all, so that callgrind's total over `Program::evaluate` divided by it is the
//! instruction count of one evaluation. `benches/long-documents.sh` does this. It also
//! prints the inputs whose evaluations took longest in total (line number in the file,
//! bytes of the input, mean time): where a tail comes from.

use std::process::ExitCode;
use std::time::Instant;

use loopai_benches::read_inputs;
use loopai_core::Program;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(program), Some(inputs)) = (args.first(), args.get(1)) else {
        eprintln!("usage: evaluate_calls PROGRAM.json INPUTS.jsonl [ROUNDS]");
        return ExitCode::from(2);
    };
    let rounds: usize = match args.get(2).map(|s| s.parse::<usize>()) {
        None => 3,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("ROUNDS must be a non-negative integer, got {:?}", args[2]);
            return ExitCode::from(2);
        }
    };
    let bytes = match std::fs::read(program) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let program = match Program::from_json(&bytes) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let set = match read_inputs(inputs.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut calls = 0usize;
    let mut ns = vec![0u128; set.len()];
    for _ in 0..=rounds {
        for (i, input) in set.iter().enumerate() {
            let t = Instant::now();
            if let Err(e) = program.evaluate(std::hint::black_box(input)) {
                eprintln!("{inputs}: {e}");
                return ExitCode::FAILURE;
            }
            ns[i] += t.elapsed().as_nanos();
            calls += 1;
        }
    }
    println!(
        "{calls} evaluations ({} inputs, {} rounds)",
        set.len(),
        rounds + 1
    );
    let mut order: Vec<usize> = (0..set.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(ns[i]));
    for &i in order.iter().take(5) {
        let bytes = serde_json::to_string(&set[i]).map_or(0, |s| s.len());
        println!(
            "  input {} ({bytes} bytes of JSON): mean {} ns",
            i + 1,
            ns[i] / (rounds as u128 + 1)
        );
    }
    ExitCode::SUCCESS
}
