//! Latency of `Program::evaluate` and `Runtime::execute` on SMS-sized (~100 B) and
//! e-mail-sized (~5 KB) texts, for each program of `loopai_benches::fixtures()`.
//!
//! Ids read `evaluate/<program>/<text>` and `execute/<program>/<text>`. Each iteration
//! runs one input, cycling through a handful of texts so no single text is over-fitted
//! by the branch predictor; the reported time is per input.
//!
//! Run with `cargo bench -p loopai-benches`; filter with e.g.
//! `cargo bench -p loopai-benches -- linear_hashed/sms`.
//!
//! A program of your own (a synthesized one, too large to be a fixture) on inputs of your
//! own: `LOOPAI_BENCH_PROGRAM=program.json LOOPAI_BENCH_INPUTS=inputs.jsonl cargo bench -p
//! loopai-benches -- synthesized` adds `evaluate/synthesized/<inputs>` and
//! `execute/synthesized/<inputs>` (inputs as `read_inputs` reads them: input objects or
//! `{"input": ...}` rows). `benches/long-documents.sh` runs it on 5 KB texts of the
//! SpamAssassin and State of the Union datasets.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use loopai_benches::{
    email_texts, fixtures, inputs, linear_breakdown, read_inputs, runtime_for, sms_texts,
};
use loopai_core::{NewArtifact, Program};
use serde_json::Value;

fn text_sets() -> Vec<(&'static str, Vec<Value>)> {
    vec![
        ("sms", inputs(&sms_texts())),
        ("email", inputs(&email_texts())),
    ]
}

fn mean_bytes(set: &[Value]) -> u64 {
    let total: usize = set
        .iter()
        .map(|v| v["text"].as_str().map_or(0, str::len))
        .sum();
    (total / set.len()) as u64
}

fn bench_cycle<M: criterion::measurement::Measurement>(
    group: &mut BenchmarkGroup<'_, M>,
    id: &str,
    set: &[Value],
    mut run: impl FnMut(&Value),
) {
    group.throughput(Throughput::Bytes(mean_bytes(set)));
    let mut i = 0;
    group.bench_function(id, |b| {
        b.iter(|| {
            i = (i + 1) % set.len();
            run(black_box(&set[i]));
        })
    });
}

fn evaluate(c: &mut Criterion) {
    let sets = text_sets();
    for f in fixtures() {
        let program = Program::from_json(&f.program).expect("fixture compiles");
        let mut group = c.benchmark_group(format!("evaluate/{}", f.name));
        for (text, set) in &sets {
            bench_cycle(&mut group, text, set, |input| {
                black_box(program.evaluate(input).expect("evaluates"));
            });
        }
        group.finish();
    }
}

fn execute(c: &mut Criterion) {
    let sets = text_sets();
    for f in fixtures() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = runtime_for(dir.path(), &f.program).expect("runtime starts");
        let mut group = c.benchmark_group(format!("execute/{}", f.name));
        for (text, set) in &sets {
            bench_cycle(&mut group, text, set, |input| {
                black_box(runtime.execute(input).expect("executes"));
            });
        }
        group.finish();
    }
}

/// The program and inputs named by `LOOPAI_BENCH_PROGRAM` and `LOOPAI_BENCH_INPUTS`, when
/// both are set (the bench is skipped otherwise). A set that cannot be read is a failure,
/// not a silent skip.
fn synthesized(c: &mut Criterion) {
    let (Some(program), Some(inputs)) = (
        std::env::var_os("LOOPAI_BENCH_PROGRAM"),
        std::env::var_os("LOOPAI_BENCH_INPUTS"),
    ) else {
        return;
    };
    let inputs = std::path::PathBuf::from(inputs);
    let bytes = std::fs::read(&program)
        .unwrap_or_else(|e| panic!("LOOPAI_BENCH_PROGRAM {}: {e}", program.to_string_lossy()));
    let set = read_inputs(&inputs).unwrap_or_else(|e| panic!("LOOPAI_BENCH_INPUTS {e}"));
    let name = inputs
        .file_stem()
        .map_or("inputs".into(), |s| s.to_string_lossy().into_owned());
    let compiled = Program::from_json(&bytes).expect("LOOPAI_BENCH_PROGRAM compiles");
    let mut group = c.benchmark_group("evaluate/synthesized");
    bench_cycle(&mut group, &name, &set, |input| {
        black_box(compiled.evaluate(input).expect("evaluates"));
    });
    group.finish();
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = runtime_for(dir.path(), &bytes).expect("runtime starts");
    let mut group = c.benchmark_group("execute/synthesized");
    bench_cycle(&mut group, &name, &set, |input| {
        black_box(runtime.execute(input).expect("executes"));
    });
    group.finish();
}

/// `execute` during a canary rollout at 50% (the canary is the same program): the cost
/// of routing (hashing the canonical input, or a caller's key) and of the per-arm counters.
/// Ids read `execute_canary/<program>/<input|key>`; compare with `execute/<program>/sms`.
fn execute_canary(c: &mut Criterion) {
    let set = inputs(&sms_texts());
    for f in fixtures()
        .into_iter()
        .filter(|f| f.name == "rules" || f.name == "linear_hashed")
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = runtime_for(dir.path(), &f.program).expect("runtime starts");
        runtime
            .artifacts()
            .install(&f.program, NewArtifact::default(), false)
            .expect("installs v2");
        runtime.begin_rollout(2).expect("rollout starts");
        let mut group = c.benchmark_group(format!("execute_canary/{}", f.name));
        bench_cycle(&mut group, "input", &set, |input| {
            black_box(runtime.execute(input).expect("executes"));
        });
        bench_cycle(&mut group, "key", &set, |input| {
            black_box(
                runtime
                    .execute_with_key(input, "user-1234")
                    .expect("executes"),
            );
        });
        group.finish();
    }
}

/// Where the time of `linear_hashed` on SMS goes: variants that drop one cost each.
fn breakdown(c: &mut Criterion) {
    let set = inputs(&sms_texts());
    let mut group = c.benchmark_group("breakdown/linear_hashed_sms");
    for (name, program) in linear_breakdown() {
        let program = Program::from_json(&program).expect("variant compiles");
        bench_cycle(&mut group, name, &set, |input| {
            black_box(program.evaluate(input).expect("evaluates"));
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(60)
}

criterion_group! {
    name = benches;
    config = config();
    targets = evaluate, execute, synthesized, execute_canary, breakdown
}
criterion_main!(benches);
