//! Trains on real data sets and the peer fixtures, scores held-out data, prints tables.
//!
//! ```text
//! cargo run --release -p loopai-synth --example eval_datasets -- DATA_DIR [NAME...] [--strategy S] [--seed N]
//! ```
//!
//! For each NAME (default: `sms-spam spamassassin`; `none` for the peer fixtures only) it trains on `DATA_DIR/NAME/spec.json`
//! (the train split), scores `DATA_DIR/NAME/test.jsonl` with the compiled program and prints
//! dataset, chosen strategy, CV accuracy, test accuracy, synthesis seconds, execute p50/p99
//! (measured in-process over the test inputs) and program bytes. Missing data sets are
//! fetched (and cached) with `shared/data/fetch_datasets.py` when that script is found
//! beside the repository. Then the peer fixtures (`loopai-synth/tests/data/peer-fixtures`):
//! train on even ids, score odd ids, beside that project's published figures (a fixture
//! whose even ids hold a single label is split in pairs instead: ids 4m+1, 4m+2 train).
//! The synthesis reports go to stderr; `EVAL_SHOW_ERRORS=1` also prints every wrong
//! test prediction and the runtime's training accuracy of the peer programs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use loopai_core::Program;
use loopai_synth::{score, synthesize, Example, Strategy, SynthOptions, TaskSpec};
use serde_json::{json, Value};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut data_dir: Option<PathBuf> = None;
    let mut names = Vec::new();
    let mut options = SynthOptions::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--strategy" => {
                options.strategy = args.next().ok_or("--strategy needs a value")?.parse()?
            }
            "--seed" => options.seed = args.next().ok_or("--seed needs a value")?.parse()?,
            _ if data_dir.is_none() => data_dir = Some(PathBuf::from(a)),
            _ => names.push(a),
        }
    }
    let data_dir =
        data_dir.ok_or("usage: eval_datasets DATA_DIR [NAME...] [--strategy S] [--seed N]")?;
    if names.is_empty() {
        names = vec!["sms-spam".into(), "spamassassin".into()];
    }
    println!(
        "{:<14} {:<8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>10}  model",
        "dataset", "strategy", "cv acc", "test acc", "synth s", "p50 µs", "p99 µs", "bytes"
    );
    for name in names.iter().filter(|n| *n != "none") {
        let dir = data_dir.join(name);
        if !dir.join("spec.json").exists() {
            fetch(&data_dir, name)?;
        }
        let spec = TaskSpec::from_path(&dir.join("spec.json"))?;
        let mut test = TaskSpec::from_json(br#"{"name": "t", "output_schema": {}}"#)?;
        test.add_examples_path(&dir.join("test.jsonl"))?;
        let row = evaluate(name, &spec, &test.examples, &options)?;
        println!("{row}");
    }

    let peer = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/peer-fixtures");
    println!();
    println!("peer fixtures (train even ids, score odd ids; published: that project's LLM-generated programs)");
    println!(
        "{:<34} {:>5} {:<8} {:>7} {:>8} {:>9}  {:>8}",
        "fixture", "train", "strategy", "cv acc", "test acc", "published", "p50 µs"
    );
    for (file, published) in PEER {
        let (spec, test) = peer_split(&peer.join(file))?;
        let s = synthesize(&spec, &options)?;
        let program = Program::from_json(&s.program_json)?;
        let (acc, p50, _) = run_test(&program, &s.labels, &test)?;
        if std::env::var_os("EVAL_SHOW_ERRORS").is_some() {
            let (tr, _, _) = run_test(&program, &s.labels, &spec.examples)?;
            eprintln!(
                "{}\nruntime train acc {tr} trainer {}",
                s.report_text(),
                s.train_accuracy
            );
        }
        println!(
            "{:<34} {:>5} {:<8} {:>7.4} {:>8.4} {:>9}  {:>8.2}",
            file.trim_end_matches(".json"),
            spec.examples.len(),
            s.strategy,
            s.cv_accuracy,
            acc,
            published.map_or("-".to_string(), |p| format!("{p:.3}")),
            p50
        );
    }
    Ok(())
}

/// Fixture files and the published accuracy of that project's programs on them.
const PEER: [(&str, Option<f64>); 6] = [
    ("phase0_binary_sentiment_trivial.json", None),
    ("phase1_language_detection.json", Some(0.80)),
    ("phase1_sentiment_3class.json", Some(0.95)),
    ("phase1_spam_detection.json", Some(0.90)),
    ("phase2_email_categorization.json", Some(0.615)),
    ("phase2_intent_classification.json", Some(0.873)),
];

fn evaluate(
    name: &str,
    spec: &TaskSpec,
    test: &[Example],
    options: &SynthOptions,
) -> Result<String, Box<dyn std::error::Error>> {
    let t = Instant::now();
    let s = synthesize(spec, options)?;
    let secs = t.elapsed().as_secs_f64();
    eprintln!("{}", s.report_text());
    let program = Program::from_json(&s.program_json)?;
    let (acc, p50, p99) = run_test(&program, &s.labels, test)?;
    let strategy: Strategy = s.strategy;
    Ok(format!(
        "{:<14} {:<8} {:>7.4} {:>8.4} {:>8.2} {:>8.2} {:>8.2} {:>10}  {}",
        name,
        strategy,
        s.cv_accuracy,
        acc,
        secs,
        p50,
        p99,
        s.program_json.len(),
        s.model
    ))
}

/// Test accuracy and execute p50/p99 in µs (after one warm-up pass).
fn run_test(
    program: &Program,
    labels: &[String],
    test: &[Example],
) -> Result<(f64, f64, f64), Box<dyn std::error::Error>> {
    for e in test {
        program.evaluate(&e.input)?;
    }
    let mut predicted = Vec::with_capacity(test.len());
    let mut lat = Vec::with_capacity(test.len());
    for e in test {
        let t = Instant::now();
        let out = program.evaluate(&e.input)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        if std::env::var_os("EVAL_SHOW_ERRORS").is_some() && out.output != e.output {
            eprintln!(
                "ERR want {} got {} conf {:.3}: {:.150}",
                e.output,
                out.output,
                out.confidence,
                e.input["text"].as_str().unwrap_or("")
            );
        }
        predicted.push(out.output);
    }
    let expected: Vec<Value> = test.iter().map(|e| e.output.clone()).collect();
    let r = score(labels, &expected, &predicted, &lat);
    Ok((
        r.accuracy,
        r.latency_p50_us.unwrap_or(0.0),
        r.latency_p99_us.unwrap_or(0.0),
    ))
}

/// A peer fixture as a spec of its even ids and the odd ids as test examples.
fn peer_split(path: &Path) -> Result<(TaskSpec, Vec<Example>), Box<dyn std::error::Error>> {
    let doc: Value = serde_json::from_slice(&std::fs::read(path)?)?;
    let cases = doc["test_cases"].as_array().ok_or("test_cases missing")?;
    let mut labels: Vec<String> = Vec::new();
    let (mut train, mut test) = (Vec::new(), Vec::new());
    // Even ids train, odd ids test; when that leaves a label out of training (a fixture
    // whose labels alternate with the id), pairs: ids 4m+1, 4m+2 train.
    let even = |id: u64| id % 2 == 0;
    let train_labels: std::collections::HashSet<&str> = cases
        .iter()
        .filter(|c| c["id"].as_u64().is_some_and(even))
        .filter_map(|c| c["expected_output"].as_str())
        .collect();
    let all_labels: std::collections::HashSet<&str> = cases
        .iter()
        .filter_map(|c| c["expected_output"].as_str())
        .collect();
    let in_train = |id: u64| {
        if train_labels.len() == all_labels.len() {
            even(id)
        } else {
            id % 4 == 1 || id % 4 == 2
        }
    };
    for c in cases {
        let label = c["expected_output"]
            .as_str()
            .ok_or("label missing")?
            .to_string();
        if !labels.contains(&label) {
            labels.push(label.clone());
        }
        let ex = Example {
            input: json!({"text": c["input"]}),
            output: Value::String(label),
        };
        if in_train(c["id"].as_u64().ok_or("id missing")?) {
            train.push(ex);
        } else {
            test.push(ex);
        }
    }
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("peer");
    let spec = TaskSpec::from_json(
        json!({
            "name": name,
            "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
            "output_schema": {"type": "string", "enum": labels},
            "examples": train,
        })
        .to_string()
        .as_bytes(),
    )?;
    Ok((spec, test))
}

/// Runs `shared/data/fetch_datasets.py DATA_DIR NAME` (cached downloads).
fn fetch(data_dir: &Path, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/fetch_datasets.py");
    if !script.exists() {
        return Err(format!(
            "{} is missing and the fetch script {} was not found",
            data_dir.join(name).display(),
            script.display()
        )
        .into());
    }
    eprintln!("fetching {name} into {} ...", data_dir.display());
    let status = std::process::Command::new("python3")
        .arg(&script)
        .arg(data_dir)
        .arg(name)
        .status()?;
    if !status.success() {
        return Err(format!("{} failed: {status}", script.display()).into());
    }
    Ok(())
}
