//! Learns an extraction program from generated order e-mails (train phrasings) and prints
//! its per-field exact match on held-out e-mails written with other phrasings.
//!
//! ```text
//! cargo run --release -p loopai-synth --example extract_eval -- [--train N] [--test N] [--seed S] [--program FILE] [--show-errors N]
//! ```

#[path = "../tests/extract_data/mod.rs"]
mod extract_data;

use std::time::Instant;

use extract_data::{examples, score, spec, Templates};
use loopai_synth::{synthesize, SynthOptions, TaskSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut train = 300usize;
    let mut test = 1000usize;
    let mut seed = 1u64;
    let mut program_out: Option<String> = None;
    let mut show_errors = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a}: missing value"));
        match a.as_str() {
            "--train" => train = value()?.parse()?,
            "--test" => test = value()?.parse()?,
            "--seed" => seed = value()?.parse()?,
            "--program" => program_out = Some(value()?),
            "--show-errors" => show_errors = value()?.parse()?,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let spec_value = spec(examples(seed, train, Templates::Train));
    let task = TaskSpec::from_json(serde_json::to_string(&spec_value)?.as_bytes())?;
    let t0 = Instant::now();
    let synthesis = synthesize(&task, &SynthOptions::default().with_seed(seed))?;
    let synth_secs = t0.elapsed().as_secs_f64();
    print!("{}", synthesis.report_text());
    if let Some(path) = program_out {
        std::fs::write(&path, &synthesis.program_json)?;
    }
    let program = loopai_core::Program::from_json(&synthesis.program_json)?;
    let held_out = examples(seed.wrapping_add(1_000_003), test, Templates::Test);
    let t0 = Instant::now();
    let (per_field, all) = score(&program, &held_out);
    let per_exec_us = t0.elapsed().as_secs_f64() * 1e6 / held_out.len().max(1) as f64;
    println!();
    println!(
        "held-out ({} examples, unseen phrasings; trained on {train}, seed {seed}):",
        held_out.len()
    );
    println!(
        "  {:<10} {:>12} {:>10}",
        "field", "exact match", "cv (train)"
    );
    for ((name, ok, n), report) in per_field.iter().zip(&synthesis.fields) {
        println!(
            "  {:<10} {:>12.4} {:>10.4}",
            name,
            *ok as f64 / *n as f64,
            report.cv_exact_match
        );
    }
    println!(
        "  {:<10} {:>12.4} {:>10.4}",
        "(object)",
        all as f64 / held_out.len().max(1) as f64,
        synthesis.cv_accuracy
    );
    for ex in held_out.iter() {
        if show_errors == 0 {
            break;
        }
        let got = program.evaluate(&ex["input"])?.output;
        let wrong: Vec<String> = extract_data::FIELDS
            .iter()
            .filter(|f| {
                let (want, have) = (&ex["output"][**f], &got[**f]);
                match (want.as_f64(), have.as_f64()) {
                    (Some(a), Some(b)) => a != b,
                    _ => want != have,
                }
            })
            .map(|f| format!("{f}: want {}, got {}", ex["output"][*f], got[*f]))
            .collect();
        if !wrong.is_empty() {
            show_errors -= 1;
            println!("error: {:?}\n  {}", ex["input"]["text"], wrong.join("; "));
        }
    }
    println!("synthesis {synth_secs:.2} s; evaluation {per_exec_us:.1} µs per e-mail (this build)");
    Ok(())
}
