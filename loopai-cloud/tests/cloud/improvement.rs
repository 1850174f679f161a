//! The improvement engine end to end: a deployment's runtime validates against an oracle
//! that knows words the specification never showed, its telemetry reaches the collector,
//! and the engine learns and publishes a better version; an unlearnable task is escalated.

use std::path::Path;
use std::time::Duration;

use loopai_cloud::{CloudServer, ImprovementAction, ImprovementConfig, ImprovementEngine};
use loopai_core::{ArtifactStore, DeploymentConfig, FnOracle, NewArtifact, OracleAnswer, Runtime};
use serde_json::{json, Value};

const TASK: &str = "fruit";
const FILLER: &[&str] = &[
    "the", "a", "and", "to", "of", "in", "is", "it", "you", "that",
];

/// Deterministic texts: filler words around one signal word of the class.
fn texts(signals: &[(&str, &str)], n: usize, seed: u64) -> Vec<(String, String)> {
    let mut x = seed;
    let mut next = move || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as usize
    };
    (0..n)
        .map(|_| {
            let (label, signal) = signals[next() % signals.len()];
            let mut words: Vec<&str> = (0..6 + next() % 6)
                .map(|_| FILLER[next() % FILLER.len()])
                .collect();
            let at = next() % words.len();
            words.insert(at, signal);
            (words.join(" "), label.to_owned())
        })
        .collect()
}

fn spec(examples: &[(String, String)]) -> Value {
    json!({
        "name": TASK,
        "description": "Which fruit family a text is about.",
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        "output_schema": {"type": "string", "enum": ["a", "b"]},
        "examples": examples.iter().map(|(t, l)| json!({"input": {"text": t}, "output": l})).collect::<Vec<_>>(),
    })
}

fn install_from_cloud(cloud: &Path, data: &Path, version: u32) {
    let dir = cloud.join(format!("artifacts/{TASK}/v{version}"));
    let program = std::fs::read(dir.join("program.json")).unwrap();
    let meta: Value =
        serde_json::from_slice(&std::fs::read(dir.join("metadata.json")).unwrap()).unwrap();
    let mut new = NewArtifact::default();
    for key in ["input_schema", "output_schema"] {
        new.extra.insert(key.into(), meta[key].clone());
    }
    ArtifactStore::open(data, TASK)
        .unwrap()
        .install(&program, new, true)
        .unwrap();
}

#[test]
fn a_failing_version_is_regenerated_from_the_oracles_answers_and_published() {
    let cloud = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(cloud.path().join("specs")).unwrap();
    // The spec knows "apple" and "banana"; live traffic says "apricot" and "blueberry".
    let spec_examples = texts(&[("a", "apple"), ("b", "banana")], 80, 1);
    std::fs::write(
        cloud.path().join(format!("specs/{TASK}.json")),
        spec(&spec_examples).to_string(),
    )
    .unwrap();
    let engine = ImprovementEngine::new(
        cloud.path(),
        ImprovementConfig::default().with_min_samples(50),
    )
    .unwrap();
    let publish =
        |task: &str, program: &[u8], meta: NewArtifact| engine.publish_locally(task, program, meta);
    // v1 from the spec alone.
    let spec_value = spec(&spec_examples);
    let task_spec = loopai_synth::TaskSpec::from_json(spec_value.to_string().as_bytes()).unwrap();
    let v1 = loopai_synth::synthesize(&task_spec, &loopai_synth::SynthOptions::default()).unwrap();
    let mut meta = v1.new_artifact();
    meta.extra
        .insert("input_schema".into(), spec_value["input_schema"].clone());
    meta.extra
        .insert("output_schema".into(), spec_value["output_schema"].clone());
    assert_eq!(publish(TASK, &v1.program_json, meta).unwrap(), 1);

    let mut server = CloudServer::builder()
        .dir(cloud.path())
        .port(0)
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    install_from_cloud(cloud.path(), data.path(), 1);
    let oracle = FnOracle::shared(|req| {
        let text = req.input["text"].as_str().unwrap_or("");
        let a = text.contains("apple") || text.contains("apricot");
        Ok(OracleAnswer::new(json!(if a { "a" } else { "b" })))
    });
    let yaml = format!(
        "cloud:\n  api_url: {}\nsampling:\n  strategy: random\n  rate: 1\nvalidation:\n  queue_capacity: 1000\ntelemetry:\n  batch_size: 50\n",
        server.url()
    );
    let run = |version: u32, seed: u64| {
        let rt = Runtime::builder()
            .data_dir(data.path())
            .task(TASK)
            .config(DeploymentConfig::from_yaml_str(&yaml, "test").unwrap())
            .oracle(oracle.clone())
            .build()
            .unwrap();
        assert_eq!(rt.active_version(), version);
        for (text, _) in texts(&[("a", "apricot"), ("b", "blueberry")], 120, seed) {
            rt.execute(&json!({ "text": text })).unwrap();
        }
        rt.flush(Duration::from_secs(60)).unwrap();
        rt.shutdown(Duration::from_secs(30)).unwrap();
    };
    run(1, 2);

    let actions = engine.run_once(&publish).unwrap();
    let [ImprovementAction::Published {
        from_version: 1,
        version: 2,
        failure_rate,
        oracle_examples,
        ..
    }] = actions.as_slice()
    else {
        panic!("expected v2 to be published: {actions:?}");
    };
    assert!(*failure_rate > 0.15, "{failure_rate}");
    assert!(*oracle_examples > 20, "{oracle_examples}");
    // Nothing more to do while v2 has no validations.
    assert!(engine.run_once(&publish).unwrap().is_empty());

    // The deployment runs v2: it agrees with the oracle, and the attempt is settled.
    install_from_cloud(cloud.path(), data.path(), 2);
    run(2, 3);
    assert!(engine.run_once(&publish).unwrap().is_empty());
    let state: Value = serde_json::from_slice(
        &std::fs::read(cloud.path().join(format!("improvement/{TASK}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(state["attempts"][0]["outcome"], "successful", "{state}");
    server.shutdown(Duration::from_secs(10)).unwrap();
}

/// A stored telemetry line: one failed validation of `version` per case (`(text, oracle
/// answer)`), with the executions' inputs.
fn failing_batch(version: u32, cases: &[(String, String)], seed: u64) -> String {
    let n = cases.len();
    let ids: Vec<String> = (0..n)
        .map(|i| format!("00000000-0000-4000-8000-{:012x}", seed * 10_000 + i as u64))
        .collect();
    let summaries: Vec<Value> = cases
        .iter()
        .zip(&ids)
        .map(|((t, _), id)| {
            json!({
        "execution_id": id, "input_hash": "h", "input": {"text": t}, "output": "x",
        "confidence": 0.9, "latency_ms": 0.01, "status": "success", "sampled": true,
        "timestamp": "2026-11-25T00:00:00Z"})
        })
        .collect();
    let validations: Vec<Value> = cases
        .iter()
        .zip(&ids)
        .map(|((_, l), id)| {
            json!({
        "execution_id": id, "program_version": version, "oracle_output": l,
        "oracle_latency_ms": 1.0, "oracle_cost": 0.0, "match": false,
        "similarity_score": 0.0, "comparison_method": "exact",
        "validated_at": "2026-11-25T00:00:00Z"})
        })
        .collect();
    json!({
        "format": "loopai.telemetry/1",
        "batch_id": format!("00000000-0000-4000-9000-{:012x}", seed),
        "deployment_id": "edge", "task_id": TASK, "program_version": version,
        "timestamp": "2026-11-25T00:00:00Z", "window_start": "2026-11-25T00:00:00Z",
        "window_end": "2026-11-25T00:00:00Z", "privacy_mode": "balanced",
        "metrics": {"executions": n, "by_status": {"success": n, "abstain": 0, "error": 0, "timeout": 0},
            "latency_ms": null, "mean_confidence": 0.9, "sampled": n, "validations": n,
            "matches": 0, "match_rate": 0.0, "outputs": {}},
        "execution_summaries": summaries,
        "sampled_validations": validations,
    })
    .to_string()
}

/// `n` failed validations of `version` whose oracle answer is a coin flip on the same
/// word (nothing a program can learn).
fn noisy_batch(version: u32, n: usize, seed: u64) -> String {
    failing_batch(
        version,
        &texts(&[("a", "kiwi"), ("b", "kiwi")], n, seed),
        seed,
    )
}

#[test]
fn an_unlearnable_task_is_escalated_once_until_its_spec_changes() {
    let cloud = tempfile::tempdir().unwrap();
    for dir in ["specs", "telemetry/fruit"] {
        std::fs::create_dir_all(cloud.path().join(dir)).unwrap();
    }
    let spec_path = cloud.path().join(format!("specs/{TASK}.json"));
    std::fs::write(
        &spec_path,
        spec(&texts(&[("a", "apple"), ("b", "banana")], 40, 5)).to_string(),
    )
    .unwrap();
    std::fs::write(
        cloud.path().join("telemetry/fruit/2026-11-25.jsonl"),
        format!("{}\n", noisy_batch(1, 200, 7)),
    )
    .unwrap();
    // The default: escalation after 3 consecutive unsuccessful attempts.
    let engine = ImprovementEngine::new(
        cloud.path(),
        ImprovementConfig::default().with_min_samples(100),
    )
    .unwrap();
    let published = std::cell::Cell::new(0);
    let publish = |_: &str, _: &[u8], _: NewArtifact| {
        published.set(published.get() + 1);
        Ok(99)
    };
    for attempt in 1..=2 {
        let actions = engine.run_once(&publish).unwrap();
        assert!(
            matches!(
                actions.as_slice(),
                [ImprovementAction::Unsuccessful {
                    from_version: 1,
                    ..
                }]
            ),
            "attempt {attempt}: {actions:?}"
        );
    }
    let actions = engine.run_once(&publish).unwrap();
    assert!(
        matches!(
            actions.as_slice(),
            [ImprovementAction::Escalated { attempts: 3, .. }]
        ),
        "{actions:?}"
    );
    assert_eq!(
        published.get(),
        0,
        "an unsuccessful attempt publishes nothing"
    );
    let escalations = std::fs::read_to_string(cloud.path().join("escalations.jsonl")).unwrap();
    let record: Value = serde_json::from_str(escalations.lines().next().unwrap()).unwrap();
    assert_eq!(record["task_id"], TASK);
    assert!(!record["failing_examples"].as_array().unwrap().is_empty());
    // Escalated: no more attempts while the spec is unchanged.
    assert!(engine.run_once(&publish).unwrap().is_empty());
    assert_eq!(escalations.lines().count(), 1);
    // A new spec resumes regeneration.
    std::fs::write(
        &spec_path,
        spec(&texts(&[("a", "apple"), ("b", "banana")], 41, 6)).to_string(),
    )
    .unwrap();
    assert!(!engine.run_once(&publish).unwrap().is_empty());
}

/// A rules program for the fruit task that always answers `label`.
fn constant_program(label: &str) -> Vec<u8> {
    json!({"format": "loopai.program/1", "task": TASK,
        "inputs": [{"name": "text", "path": "/text", "type": "text"}],
        "decide": {"op": "rules", "rules": [{"when": {"always": true}, "then": label, "confidence": 0.9}]},
        "output": {"kind": "label", "labels": ["a", "b"]}})
    .to_string()
    .into_bytes()
}

fn upload(base: &str, program: Vec<u8>) -> u32 {
    let metadata = json!({
        "synthesis_strategy": "rule",
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        "output_schema": {"type": "string", "enum": ["a", "b"]},
    });
    let archive =
        loopai_core::ArtifactArchive::new(program, Some(metadata.to_string().into_bytes()))
            .pack()
            .unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .post(format!("{base}/api/v1/artifacts/{TASK}/upload"))
        .send(&archive[..])
        .unwrap();
    let text = response.body_mut().read_to_string().unwrap();
    assert_eq!(response.status().as_u16(), 201, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    u32::try_from(body["version"].as_u64().unwrap()).unwrap()
}

/// Executes live traffic in rounds (each flushed: telemetry uploaded, rollout checked)
/// until `done` holds; panics after a generous deadline.
fn drive(rt: &Runtime, seed: &mut u64, what: &str, mut done: impl FnMut(&Runtime) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !done(rt) {
        assert!(
            std::time::Instant::now() < deadline,
            "still waiting for: {what}"
        );
        *seed += 1;
        for (text, _) in texts(&[("a", "apricot"), ("b", "blueberry")], 40, *seed) {
            rt.execute(&json!({ "text": text })).unwrap();
        }
        let _ = rt.flush(Duration::from_secs(10));
    }
}

#[test]
fn the_loop_regenerates_canaries_and_promotes_and_rolls_back_a_worse_version() {
    let cloud = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(cloud.path().join("specs")).unwrap();
    let spec_examples = texts(&[("a", "apple"), ("b", "banana")], 80, 1);
    std::fs::write(
        cloud.path().join(format!("specs/{TASK}.json")),
        spec(&spec_examples).to_string(),
    )
    .unwrap();
    let start = |port: u16, improve: bool| {
        let mut builder = CloudServer::builder().dir(cloud.path()).port(port);
        if improve {
            builder = builder.improvement(
                ImprovementConfig::default().with_min_samples(50),
                Duration::from_millis(200),
            );
        }
        builder.build().unwrap().spawn().unwrap()
    };
    let mut server = start(0, true);
    let url = server.url();
    let port = server.local_addr().port();
    // A deliberately weak v1: it always answers "b".
    assert_eq!(upload(&url, constant_program("b")), 1);

    let data = tempfile::tempdir().unwrap();
    let oracle = FnOracle::shared(|req| {
        let text = req.input["text"].as_str().unwrap_or("");
        let a = text.contains("apple") || text.contains("apricot");
        Ok(OracleAnswer::new(json!(if a { "a" } else { "b" })))
    });
    let yaml = format!(
        "cloud:\n  api_url: {url}\n  refresh_interval_sec: 1\n  startup_wait_sec: 60\n\
         sampling:\n  strategy: random\n  rate: 1\nvalidation:\n  queue_capacity: 1000\n\
         telemetry:\n  batch_size: 40\n  upload_interval_sec: 1\n\
         rollout:\n  stages: [0.5, 1.0]\n  min_samples_per_stage: 30\n  min_validations_per_stage: 20\n  check_interval_ms: 50\n"
    );
    let build = || {
        Runtime::builder()
            .data_dir(data.path())
            .task(TASK)
            .config(DeploymentConfig::from_yaml_str(&yaml, "test").unwrap())
            .oracle(oracle.clone())
            .build()
            .unwrap()
    };
    let rt = build();
    assert_eq!(
        rt.active_version(),
        1,
        "the first version comes from the cloud"
    );
    let mut seed = 100;
    // v1 fails half the oracle's answers: telemetry takes that to the cloud, which
    // regenerates v2 and notifies; the runtime downloads it, canaries it and promotes it.
    drive(&rt, &mut seed, "a regenerated version promoted", |rt| {
        rt.active_version() >= 2
    });
    let good = rt.active_version();
    let status = rt.rollout().unwrap();
    assert_eq!(
        (status.canary_version, status.state),
        (good, loopai_core::RolloutState::Promoted)
    );
    let meta_path = cloud
        .path()
        .join(format!("artifacts/{TASK}/v{good}/metadata.json"));
    let metadata: Value = serde_json::from_slice(&std::fs::read(meta_path).unwrap()).unwrap();
    assert!(metadata["improved_from"]["version"].is_u64(), "{metadata}");
    // The regenerated version agrees with the oracle.
    let before = rt.validation_metrics();
    drive(&rt, &mut seed, "validations of the good version", |rt| {
        rt.validation_metrics().validated >= before.validated + 100
    });
    let metrics = rt.validation_metrics();
    let v = metrics.versions.iter().find(|v| v.version == good).unwrap();
    assert!(v.rolling_match_rate.unwrap() > 0.9, "{v:?}");

    // The cloud restarts without the engine (so that it does not answer v3 with a v4),
    // and a worse v3 is published by hand.
    server.shutdown(Duration::from_secs(10)).unwrap();
    let mut server = start(port, false);
    let bad = upload(&url, constant_program("b"));
    assert!(bad > good);
    drive(&rt, &mut seed, "the worse version's canary", |rt| {
        rt.rollout().is_some_and(|s| s.canary_version == bad)
    });
    // A restart in the middle of the rollout resumes it.
    let stage = rt.rollout().unwrap();
    if stage.state == loopai_core::RolloutState::InProgress {
        rt.shutdown(Duration::from_secs(10)).unwrap();
        drop(rt);
        let rt2 = build();
        let resumed = rt2.rollout().unwrap();
        assert_eq!(resumed.canary_version, bad);
        assert!(resumed.stage >= stage.stage, "{resumed:?}");
        drive(&rt2, &mut seed, "the worse version rolled back", |rt| {
            rt.rollout()
                .is_some_and(|s| s.state != loopai_core::RolloutState::InProgress)
        });
        assert_eq!(
            rt2.rollout().unwrap().state,
            loopai_core::RolloutState::RolledBack
        );
        assert_eq!(rt2.active_version(), good);
        rt2.shutdown(Duration::from_secs(10)).unwrap();
    } else {
        assert_eq!(stage.state, loopai_core::RolloutState::RolledBack);
        assert_eq!(rt.active_version(), good);
        rt.shutdown(Duration::from_secs(10)).unwrap();
    }
    server.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_published_version_that_gathers_no_validations_does_not_stall_the_engine() {
    let cloud = tempfile::tempdir().unwrap();
    for dir in ["specs", "telemetry/fruit"] {
        std::fs::create_dir_all(cloud.path().join(dir)).unwrap();
    }
    std::fs::write(
        cloud.path().join(format!("specs/{TASK}.json")),
        spec(&texts(&[("a", "apple"), ("b", "banana")], 40, 5)).to_string(),
    )
    .unwrap();
    // v1 fails every validation of a learnable task: "apricot" is "a", "blueberry" "b".
    let learnable = texts(&[("a", "apricot"), ("b", "blueberry")], 200, 8);
    let batch = failing_batch(1, &learnable, 9);
    std::fs::write(
        cloud.path().join("telemetry/fruit/2026-11-25.jsonl"),
        format!("{batch}\n"),
    )
    .unwrap();
    let engine = ImprovementEngine::new(
        cloud.path(),
        ImprovementConfig::default()
            .with_min_samples(100)
            .with_pending_timeout(Duration::ZERO),
    )
    .unwrap();
    let next = std::cell::Cell::new(1);
    let publish = |_: &str, _: &[u8], _: NewArtifact| {
        next.set(next.get() + 1);
        Ok(next.get())
    };
    let first = engine.run_once(&publish).unwrap();
    assert!(
        matches!(
            first.as_slice(),
            [ImprovementAction::Published { version: 2, .. }]
        ),
        "{first:?}"
    );
    // v2 never gets a validation (its canary was rolled back early, say): with a zero
    // timeout its attempt is settled unsuccessful at once and v1 is tried again.
    let second = engine.run_once(&publish).unwrap();
    assert!(
        matches!(
            second.as_slice(),
            [ImprovementAction::Published {
                from_version: 1,
                version: 3,
                ..
            }]
        ),
        "{second:?}"
    );
    let state: Value = serde_json::from_slice(
        &std::fs::read(cloud.path().join(format!("improvement/{TASK}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(state["attempts"][0]["outcome"], "unsuccessful", "{state}");
    assert!(state["attempts"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("gathered 0 validations"));
}
