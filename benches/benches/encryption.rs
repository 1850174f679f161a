//! The cost of encryption at rest (`storage.encryption`) on the execute path and on the
//! dataset writer's throughput, each with encryption off and on.
//!
//! * `encryption_execute/<plain|encrypted>`: one `Runtime::execute` of an SMS-sized input
//!   (`rules` program); sealing happens on the writer thread, so this measures what the
//!   caller sees.
//! * `encryption_writer/<plain|encrypted>`: executions logged per second: each sample
//!   executes its iterations' inputs and then flushes the log, so the time covers writing
//!   (and sealing) every record. Throughput is in executions.
//!
//! Run with `cargo bench -p loopai-benches --bench encryption`. On a shared machine prefer
//! `src/bin/encryption_cost.rs`, which interleaves the variants and also reports CPU time
//! per logged execution (figures in `docs/datasets.md`).

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use loopai_benches::{inputs, rules_program, sms_texts};
use loopai_core::{ArtifactStore, DeploymentConfig, NewArtifact, Runtime};

/// A runtime on `rules` in `dir`, with the log encrypted when `encrypted`.
fn runtime(dir: &Path, encrypted: bool) -> Runtime {
    ArtifactStore::open(dir, "spam")
        .expect("store")
        .install(&rules_program(), NewArtifact::default(), true)
        .expect("installs");
    let yaml = if encrypted {
        let key = dir.join("data.key");
        std::fs::write(&key, "11".repeat(32)).expect("key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        format!("storage:\n  encryption:\n    key_file: {}\n", key.display())
    } else {
        String::new()
    };
    Runtime::builder()
        .data_dir(dir)
        .task("spam")
        .config(DeploymentConfig::from_yaml_str(&yaml, "bench").expect("config"))
        .build()
        .expect("runtime starts")
}

fn execute(c: &mut Criterion) {
    let set = inputs(&sms_texts());
    let mut group = c.benchmark_group("encryption_execute");
    group.throughput(Throughput::Elements(1));
    for (name, encrypted) in [("plain", false), ("encrypted", true)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = runtime(dir.path(), encrypted);
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % set.len();
                black_box(rt.execute(black_box(&set[i])).expect("executes"));
            })
        });
        rt.shutdown(Duration::from_secs(30)).expect("shuts down");
    }
    group.finish();
}

fn writer(c: &mut Criterion) {
    let set = inputs(&sms_texts());
    let mut group = c.benchmark_group("encryption_writer");
    group.throughput(Throughput::Elements(1));
    for (name, encrypted) in [("plain", false), ("encrypted", true)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = runtime(dir.path(), encrypted);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for i in 0..iters {
                    rt.execute(&set[i as usize % set.len()]).expect("executes");
                }
                rt.flush(Duration::from_secs(60)).expect("flushes");
                start.elapsed()
            })
        });
        rt.shutdown(Duration::from_secs(30)).expect("shuts down");
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = execute, writer
}
criterion_main!(benches);
