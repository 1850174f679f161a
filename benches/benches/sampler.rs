//! Cost of the sampling decision that `Runtime::execute` makes for every execution
//! (`Sampler::decide`; target: at most 50 ns).
//!
//! Ids read `sampler/<strategies>`. Each iteration decides for one execution id, cycling
//! through 1024 random ids, confidences and output classes, with the clock advancing by
//! 1 ms per decision (so `temporal` decays and `stratified` crosses hour boundaries).
//!
//! Run with `cargo bench -p loopai-benches --bench sampler`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use loopai_benches::SplitMix;
use loopai_core::{DeploymentConfig, Sampler};
use uuid::Uuid;

const CASES: [(&str, &str); 4] = [
    ("random", "strategy: random\n  rate: 0.05"),
    (
        "uncertainty",
        "strategy: uncertainty\n  rate: 0.05\n  uncertainty_threshold: 0.7",
    ),
    (
        "stratified",
        "strategy: stratified\n  stratified_min_per_class: 10",
    ),
    (
        "all_four",
        "strategy: [random, uncertainty, stratified, temporal]\n  rate: 0.05\n  uncertainty_threshold: 0.7\n  stratified_min_per_class: 10\n  temporal_boost_rate: 0.5\n  temporal_half_life_sec: 600",
    ),
];

fn decide(c: &mut Criterion) {
    let mut rng = SplitMix::new(7);
    let cases: Vec<(Uuid, Option<usize>, f64)> = (0..1024)
        .map(|_| {
            let id = uuid::Builder::from_random_bytes(
                (u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())).to_le_bytes(),
            )
            .into_uuid();
            let class = Some(rng.below(4));
            let confidence = 0.5 + rng.below(500) as f64 / 1000.0;
            (id, class, confidence)
        })
        .collect();
    let mut group = c.benchmark_group("sampler");
    for (name, yaml) in CASES {
        let config = DeploymentConfig::from_yaml_str(&format!("sampling:\n  {yaml}\n"), name)
            .expect("valid sampling config");
        let sampler = Sampler::new(&config.sampling, 1_764_028_800_000);
        let mut i = 0usize;
        let mut now = 1_764_028_800_000i64;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                now += 1;
                let (id, class, confidence) = &cases[i];
                black_box(sampler.decide(black_box(id), *class, *confidence, now))
            })
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
    targets = decide
}
criterion_main!(benches);
