//! End-to-end tests of the `loopai` binary.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Output, Stdio};

use common::{example, loopai, repo, run, stderr, stdout};

fn install_example(dir: &Path) {
    let o = run(loopai()
        .args(["artifacts", "install", "--task", "spam", "--data-dir"])
        .arg(dir)
        .arg("--spec")
        .arg(example("spec.json"))
        .arg(example("program.json")));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("installed spam v1"),
        "{}",
        stdout(&o)
    );
}

fn exec_stdin(dir: &Path, input: &str) -> Output {
    let mut child = loopai()
        .args(["exec", "--task", "spam", "--data-dir"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The child may exit before reading everything (e.g. a refused artifact).
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    child.wait_with_output().unwrap()
}

#[test]
fn quick_start_installs_and_executes_the_example() {
    let dir = tempfile::tempdir().unwrap();
    install_example(dir.path());
    let o = exec_stdin(dir.path(), "{\"text\":\"WIN a FREE prize, call now\"}\n");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    for key in [
        "execution_id",
        "output",
        "confidence",
        "version",
        "latency_ms",
        "status",
        "sampled",
    ] {
        assert!(v.get(key).is_some(), "{key} missing in {v}");
    }
    assert_eq!(v["output"], "spam");
    assert_eq!(v["version"], 1);
    assert_eq!(v["status"], "success");
}

#[test]
fn exec_with_input_flag_prints_one_result() {
    let dir = tempfile::tempdir().unwrap();
    install_example(dir.path());
    let o = run(loopai()
        .args([
            "exec",
            "--task",
            "spam",
            "--input",
            r#"{"text": "see you at home for dinner"}"#,
            "--data-dir",
        ])
        .arg(dir.path()));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["output"], "ham");
}

#[test]
fn exec_explain_prints_the_decision_path_and_logs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    install_example(dir.path());
    let text = r#"{"text": "WIN a FREE prize, call now"}"#;
    let o = run(loopai()
        .args([
            "exec",
            "--task",
            "spam",
            "--explain",
            "--input",
            text,
            "--data-dir",
        ])
        .arg(dir.path()));
    assert!(o.status.success(), "{}", stderr(&o));
    let why: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!((&why["task"], &why["version"]), (&"spam".into(), &1.into()));
    assert!(why["decision"]["op"].is_string(), "{why}");
    assert!(why["decided_by"].is_string(), "{why}");
    let executions = dir.path().join("datasets/spam/executions");
    let logged = std::fs::read_dir(&executions).map_or(0, |d| d.count());
    assert_eq!(logged, 0, "explain logged an execution");

    // The same answer as executing, for each line of a stream.
    let inputs = format!("{text}\n{{\"text\": \"see you at home for dinner\"}}\n");
    let mut child = loopai()
        .args([
            "exec",
            "--task",
            "spam",
            "--explain",
            "--top-k",
            "1",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(inputs.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let explained: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let o = exec_stdin(dir.path(), &inputs);
    assert!(o.status.success(), "{}", stderr(&o));
    let executed: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(explained.len(), 2);
    for (why, result) in explained.iter().zip(&executed) {
        assert_eq!(why["output"], result["output"]);
        assert_eq!(why["confidence"], result["confidence"]);
        assert_eq!(why["decided_by"], result["decided_by"]);
    }
    // `--top-k` without `--explain` is refused.
    let o = run(loopai()
        .args([
            "exec",
            "--task",
            "spam",
            "--top-k",
            "3",
            "--input",
            text,
            "--data-dir",
        ])
        .arg(dir.path()));
    assert!(!o.status.success());
}

#[test]
fn exec_streams_each_result_before_the_next_input_arrives() {
    let dir = tempfile::tempdir().unwrap();
    install_example(dir.path());
    let mut child = loopai()
        .args(["exec", "--task", "spam", "--data-dir"])
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    for text in ["claim your free prize now", "ok see you later"] {
        writeln!(stdin, "{}", serde_json::json!({ "text": text })).unwrap();
        stdin.flush().unwrap();
        // stdin stays open: the result must arrive anyway.
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(v["output"].is_string(), "{line}");
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn bad_input_lines_are_reported_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    install_example(dir.path());
    let o = exec_stdin(
        dir.path(),
        "{\"text\": \"hello\"}\nnot json\n{\"txt\": 1}\n{\"text\": \"free prize, claim now\"}\n",
    );
    assert!(!o.status.success());
    assert_eq!(stdout(&o).lines().count(), 2);
    let err = stderr(&o);
    assert!(err.contains("stdin line 2: input: not valid JSON"), "{err}");
    assert!(
        err.contains("stdin line 3: input (root): missing required property \"text\""),
        "{err}"
    );
    assert!(err.contains("2 of 4 input lines failed"), "{err}");
}

#[test]
fn tampered_program_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    install_example(dir.path());
    let path = dir.path().join("artifacts/spam/v1/program.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("0.97", "0.10");
    std::fs::write(&path, text).unwrap();
    let o = exec_stdin(dir.path(), "{\"text\": \"hi\"}\n");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("sha256 mismatch"), "{}", stderr(&o));
}

fn check_refused(program: &str, expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("program.json");
    std::fs::write(&file, program).unwrap();
    let o = run(loopai().args(["program", "check"]).arg(&file));
    assert!(!o.status.success(), "check accepted: {program}");
    assert!(
        stderr(&o).contains(expect),
        "expected {expect:?} in {}",
        stderr(&o)
    );
    let o = run(loopai()
        .args(["artifacts", "install", "--task", "spam", "--data-dir"])
        .arg(dir.path())
        .arg(&file));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(expect),
        "expected {expect:?} in {}",
        stderr(&o)
    );
    assert!(
        !dir.path().join("artifacts/spam/v1").exists(),
        "nothing may be installed"
    );
}

#[test]
fn malformed_programs_are_refused_naming_the_place() {
    let good = std::fs::read_to_string(example("program.json")).unwrap();
    check_refused(
        "{\"format\": \"loopai.program/1\",",
        "not valid JSON at line 1",
    );
    check_refused(
        &good.replacen("\"description\"", "\"descripton\"", 1),
        "unknown field `descripton`",
    );
    check_refused(
        &good.replacen("[£$€]\\\\s?[0-9]", "[£$€", 1),
        "features[2].pattern: invalid regex",
    );
    check_refused(
        &good.replacen("\"mode\": \"count\"", "\"mode\": 3", 1),
        "features[2].mode: invalid type",
    );
    check_refused(
        &good.replacen("\"confidence\": 0.97", "\"confidence\": \"high\"", 1),
        "decide.steps[0].rules[0].confidence: invalid type",
    );
}

#[test]
fn install_refuses_labels_the_spec_does_not_allow_and_wrong_task() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    std::fs::write(
        &spec,
        r#"{"name": "spam", "output_schema": {"type": "string", "enum": ["junk", "ok"]}}"#,
    )
    .unwrap();
    let o = run(loopai()
        .args(["artifacts", "install", "--task", "spam", "--data-dir"])
        .arg(dir.path())
        .arg("--spec")
        .arg(&spec)
        .arg(example("program.json")));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("output_schema.enum does not allow"),
        "{}",
        stderr(&o)
    );
    let o = run(loopai()
        .args(["artifacts", "install", "--task", "other", "--data-dir"])
        .arg(dir.path())
        .arg(example("program.json")));
    assert!(
        stderr(&o).contains("the program is for task \"spam\", not \"other\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn list_activate_and_rollback() {
    let dir = tempfile::tempdir().unwrap();
    install_example(dir.path());
    let o = run(loopai()
        .args([
            "artifacts",
            "install",
            "--no-activate",
            "--task",
            "spam",
            "--data-dir",
        ])
        .arg(dir.path())
        .arg(example("program.json")));
    assert!(o.status.success(), "{}", stderr(&o));
    let list = |dir: &Path| {
        let o = run(loopai()
            .args([
                "artifacts",
                "list",
                "--json",
                "--task",
                "spam",
                "--data-dir",
            ])
            .arg(dir));
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()
    };
    let v = list(dir.path());
    assert_eq!(v["active"], 1);
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);
    let o = run(loopai()
        .args(["artifacts", "activate", "2", "--task", "spam", "--data-dir"])
        .arg(dir.path()));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(list(dir.path())["active"], 2);
    let o = run(loopai()
        .args(["artifacts", "rollback", "--task", "spam", "--data-dir"])
        .arg(dir.path()));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(list(dir.path())["active"], 1);
    let o = run(loopai()
        .args(["artifacts", "activate", "9", "--task", "spam", "--data-dir"])
        .arg(dir.path()));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("v9"), "{}", stderr(&o));
}

#[test]
fn list_marks_damaged_versions_and_fails_when_the_active_one_is() {
    let dir = tempfile::tempdir().unwrap();
    install_example(dir.path());
    let list = |dir: &Path| {
        run(loopai()
            .args(["artifacts", "list", "--task", "spam", "--data-dir"])
            .arg(dir))
    };
    let o = list(dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains("DAMAGED"), "{}", stdout(&o));
    // program.json modified after install.
    let program = dir.path().join("artifacts/spam/v1/program.json");
    let mut bytes = std::fs::read(&program).unwrap();
    bytes.push(b' ');
    std::fs::write(&program, &bytes).unwrap();
    let o = list(dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with("* v1 ") && l.contains(" DAMAGED ")),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("damaged: artifacts/spam/v1/program.json: size mismatch"));
    assert!(
        stderr(&o).contains("the active version of spam is damaged"),
        "{}",
        stderr(&o)
    );
    let o = run(loopai()
        .args([
            "artifacts",
            "list",
            "--json",
            "--task",
            "spam",
            "--data-dir",
        ])
        .arg(dir.path()));
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["versions"][0]["damaged"]
        .as_str()
        .unwrap()
        .contains("size mismatch"));
    assert!(v["active_damaged"].is_string());

    // With trusted keys, a local (unsigned) install is damaged for the runtime too.
    let dir = tempfile::tempdir().unwrap();
    install_example(dir.path());
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/deployment.yaml"),
        format!("cloud:\n  trusted_keys: [\"{}\"]\n", "ab".repeat(32)),
    )
    .unwrap();
    let o = list(dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("unsigned"), "{}", stdout(&o));
}

#[test]
fn exec_without_an_installed_program_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let o = exec_stdin(dir.path(), "{\"text\": \"hi\"}\n");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("has no active program"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn broken_config_is_reported_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    install_example(dir.path());
    let cfg = dir.path().join("deployment.yaml");
    std::fs::write(&cfg, "sampling:\n  rate: 1.5\n").unwrap();
    let o = run(loopai()
        .args(["exec", "--task", "spam", "--input", "{}", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path()));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("sampling.rate"), "{}", stderr(&o));
}

#[test]
fn synth_then_eval_scores_exactly_what_exec_returns() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(loopai()
        .args(["synth", "--quiet", "--seed", "3", "--data-dir"])
        .arg(dir.path())
        .arg(example("spec.json")));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("installed spam v1, active"),
        "{}",
        stdout(&o)
    );
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("artifacts/spam/v1/metadata.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["llm_provider"], "none");
    assert_eq!(meta["generation_cost"], 0.0);
    assert!(meta["confidence_score"].as_f64().unwrap() > 0.9);
    assert!(
        meta["complexity_metrics"]["program_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        meta["output_schema"].is_object(),
        "the spec's schemas are recorded"
    );

    // A test file from the spec's own examples: eval's accuracy equals exec's agreement.
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(example("spec.json")).unwrap()).unwrap();
    let examples = spec["examples"].as_array().unwrap();
    let test = dir.path().join("test.jsonl");
    let lines: Vec<String> = examples.iter().map(|e| e.to_string()).collect();
    std::fs::write(&test, lines.join("\n")).unwrap();
    let o = run(loopai()
        .args(["eval", "--json", "--task", "spam", "--data-dir"])
        .arg(dir.path())
        .arg(&test));
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let inputs: String = examples
        .iter()
        .map(|e| format!("{}\n", e["input"]))
        .collect();
    let o = exec_stdin(dir.path(), &inputs);
    let agree = stdout(&o)
        .lines()
        .zip(examples)
        .filter(|(line, e)| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["output"] == e["output"]
        })
        .count();
    let accuracy = report["accuracy"].as_f64().unwrap();
    assert_eq!(accuracy, agree as f64 / examples.len() as f64);
    assert_eq!(report["n"], examples.len());
    // The text report says what its latency figures include.
    let o = run(loopai()
        .args(["eval", "--task", "spam", "--data-dir"])
        .arg(dir.path())
        .arg(&test));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("after one untimed warm-up call"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn synth_prints_one_progress_line_per_stage_and_candidate_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(loopai()
        .args(["synth", "--seed", "3", "--data-dir"])
        .arg(dir.path())
        .arg(example("spec.json")));
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(!err.contains('\r'), "no bar redraws: {err:?}");
    for expected in [
        "] preprocess (",
        "] tf-idf vocabulary [w1-2] (",
        "] vectorize [w1-2,c1-5] ",
        "] ml/svm[w1-2,c1-5] (",
        "] ml/logreg[w1-2] (",
        "] ml/naive_bayes[w1-2] (",
        // What a stage is doing: the first step line is always printed.
        "]   ml/svm[w1-2] fold ",
        "] trained ml/svm[w1-2,c1-5] C=",
        "] trained rule/keywords (",
        "] measure latency (",
    ] {
        assert!(err.contains(expected), "{expected:?} missing in:\n{err}");
    }
    assert!(err.lines().all(|l| l.starts_with('[')), "{err}");
    // --quiet: nothing.
    let o = run(loopai()
        .args(["synth", "--quiet", "--seed", "3", "--data-dir"])
        .arg(dir.path())
        .arg(example("spec.json")));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
}

#[test]
fn synth_reports_a_bad_spec_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    std::fs::write(
        &spec,
        r#"{"name": "t", "description": "d", "input_schema": {"type": "object"},
            "output_schema": {"type": "string", "enum": ["a", "b"]},
            "examples": [{"input": {"text": "x"}, "output": "maybe"}]}"#,
    )
    .unwrap();
    let o = run(loopai()
        .args(["synth", "--data-dir"])
        .arg(dir.path())
        .arg(&spec));
    assert!(!o.status.success());
    assert!(
        stderr(&o).starts_with(&format!(
            "error: {}: spec.examples[0].output: \"maybe\" is not one of output_schema.enum",
            spec.display()
        )),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("examples[0].output"), "{}", stderr(&o));
    assert!(
        !dir.path().join("artifacts").exists(),
        "nothing is created for a refused spec"
    );

    // A syntax error: file, line and column.
    std::fs::write(&spec, "{\"name\": \"t\",\n}").unwrap();
    let o = run(loopai()
        .args(["synth", "--data-dir"])
        .arg(dir.path())
        .arg(&spec));
    assert!(!o.status.success());
    assert_eq!(
        stderr(&o),
        format!(
            "error: {}:2:1: not valid JSON: trailing comma\n",
            spec.display()
        )
    );

    // A program given as a spec.
    let o = run(loopai()
        .args(["synth", "--data-dir"])
        .arg(dir.path())
        .arg(example("program.json")));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("this looks like a program (loopai.program/1), not a task specification; install it with `loopai artifacts install`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn synth_keeps_an_untrusted_program_inactive_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    // One example a label: cross-validation can confirm nothing.
    std::fs::write(
        &spec,
        r#"{"name": "工单分类", "input_schema": {"type": "object",
            "properties": {"text": {"type": "string"}}},
            "output_schema": {"type": "string", "enum": ["退款", "物流", "账户"]},
            "examples": [{"input": {"text": "我要退款"}, "output": "退款"},
                         {"input": {"text": "快递还没到"}, "output": "物流"},
                         {"input": {"text": "密码忘了"}, "output": "账户"}]}"#,
    )
    .unwrap();
    let o = run(loopai()
        .args(["synth", "--quiet", "--data-dir"])
        .arg(dir.path())
        .arg(&spec));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("have a single example"), "{out}");
    assert!(out.contains("not trusted"), "{out}");
    assert!(
        out.contains("installed 工单分类 v1, not activated"),
        "{out}"
    );
    let o = run(loopai()
        .args(["synth", "--quiet", "--activate-anyway", "--data-dir"])
        .arg(dir.path())
        .arg(&spec));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("installed 工单分类 v2, active"),
        "{}",
        stdout(&o)
    );
    let o = run(loopai()
        .args(["synth", "--no-activate", "--activate-anyway", "--data-dir"])
        .arg(dir.path())
        .arg(&spec));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
}

/// Starts a rollout of v2 with a runtime, as a refresh would, then stops the runtime.
fn begin_rollout_of_v2(dir: &Path) {
    let rt = loopai_core::Runtime::builder()
        .data_dir(dir)
        .task("spam")
        .build()
        .unwrap();
    rt.begin_rollout(2).unwrap();
    rt.shutdown(std::time::Duration::from_secs(10)).unwrap();
}

fn artifacts(dir: &Path, args: &[&str]) -> Output {
    let o = run(loopai()
        .arg("artifacts")
        .args(args)
        .args(["--task", "spam", "--data-dir"])
        .arg(dir));
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    o
}

fn rollout_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&stdout(&artifacts(dir, &["rollout"]))).unwrap()
}

#[test]
fn promote_and_rollback_work_with_a_rollout_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    install_example(dir.path());
    for _ in 0..2 {
        artifacts(
            dir.path(),
            &[
                "install",
                "--no-activate",
                example("program.json").to_str().unwrap(),
            ],
        );
    }
    assert_eq!(rollout_json(dir.path()), serde_json::Value::Null);
    let o = run(loopai()
        .args(["artifacts", "promote", "--task", "spam", "--data-dir"])
        .arg(dir.path()));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no rollout in progress"),
        "{}",
        stderr(&o)
    );

    // Rollback during a rollout aborts it: v1 stays active, v2 is marked rolled back.
    begin_rollout_of_v2(dir.path());
    let r = rollout_json(dir.path());
    assert_eq!(
        (r["state"].as_str(), r["canary_version"].as_u64()),
        (Some("in_progress"), Some(2))
    );
    let o = artifacts(dir.path(), &["rollback"]);
    assert!(
        stdout(&o).contains("rollout of v2 rolled back: v1 stays active"),
        "{}",
        stdout(&o)
    );
    let r = rollout_json(dir.path());
    assert_eq!(r["state"], "rolled_back");
    assert_eq!(
        r["recent_events"].as_array().unwrap().last().unwrap()["kind"],
        "rolled_back"
    );
    let store = loopai_core::ArtifactStore::open(dir.path(), "spam").unwrap();
    assert_eq!(store.active_version().unwrap(), Some(1));

    // Promote finishes a rollout in progress: its canary becomes active.
    let rt = loopai_core::Runtime::builder()
        .data_dir(dir.path())
        .task("spam")
        .build()
        .unwrap();
    assert!(
        rt.begin_rollout(2).is_err(),
        "a rolled-back canary is not retried"
    );
    rt.begin_rollout(3).unwrap();
    rt.shutdown(std::time::Duration::from_secs(10)).unwrap();
    drop(rt);
    let o = artifacts(dir.path(), &["promote"]);
    assert_eq!(stdout(&o).trim(), "spam v3 is active");
    assert_eq!(rollout_json(dir.path())["state"], "promoted");
    assert_eq!(store.active_version().unwrap(), Some(3));
    // With a version: activates it; without a rollout, rollback is the version rollback.
    artifacts(dir.path(), &["promote", "2"]);
    assert_eq!(store.active_version().unwrap(), Some(2));
    let o = artifacts(dir.path(), &["rollback"]);
    assert_eq!(stdout(&o).trim(), "spam rolled back: v1 is active");
}

#[test]
fn improve_needs_oracle_answers_and_starts_a_canary_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let spec = repo().join("examples/spam/spec.json");
    let o = run(loopai().args(["synth", spec.to_str().unwrap(), "--data-dir", d, "--quiet"]));
    assert!(o.status.success(), "{}", stderr(&o));
    // No validation yet: nothing to learn from, and it says so.
    let o = run(loopai().args(["improve", "--data-dir", d, "--task", "spam", "--quiet"]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no oracle-labelled execution"),
        "{}",
        stderr(&o)
    );
    // Validations written as a runtime with an oracle writes them: executions, then the
    // oracle's answers.
    let rt = loopai_core::Runtime::builder()
        .data_dir(d)
        .task("spam")
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for (i, text) in [
        "claim your free prize now",
        "lunch at noon?",
        "urgent: win cash",
    ]
    .iter()
    .cycle()
    .take(30)
    .enumerate()
    {
        let r = rt
            .execute(&serde_json::json!({ "text": format!("{text} {i}") }))
            .unwrap();
        let label = if text.contains("lunch") {
            "ham"
        } else {
            "spam"
        };
        ids.push((r.execution_id, r.version, label));
    }
    for (id, version, label) in ids {
        rt.record_validation(loopai_core::ValidationRecord::new(
            id,
            version,
            serde_json::json!(label),
            1.0,
            0.0,
            true,
            1.0,
            "exact",
            loopai_core::Timestamp(rt_now()),
        ))
        .unwrap();
    }
    rt.shutdown(std::time::Duration::from_secs(10)).unwrap();
    drop(rt);
    let o = run(loopai().args(["improve", "--data-dir", d, "--task", "spam", "--quiet"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("oracle-labelled examples: 30"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("canary rollout started"),
        "{}",
        stdout(&o)
    );
    let o = run(loopai().args(["artifacts", "rollout", "--data-dir", d, "--task", "spam"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("\"canary_version\": 2"),
        "{}",
        stdout(&o)
    );
}

fn rt_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Runs `loopai ARGS --data-dir DIR --task TASK` and checks that it fails naming what is
/// wrong, and that nothing was created for the mistyped task.
fn check_missing_task(args: &[&str], extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    install_example(dir.path());
    let o = run(loopai()
        .args(args)
        .args(["--task", "spamm", "--data-dir"])
        .arg(dir.path())
        .args(extra));
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
    let expected = format!(
        "error: task \"spamm\" has no active program: there is no task \"spamm\" in {} (tasks there: `spam`); did you mean `spam`?\n",
        dir.path().join("artifacts").display()
    );
    assert_eq!(stderr(&o), expected, "{args:?}");
    assert!(
        !dir.path().join("artifacts/spamm").exists(),
        "{args:?} created the task"
    );
    assert!(
        !dir.path().join("datasets/spamm").exists(),
        "{args:?} created a dataset"
    );

    let missing = dir.path().join("no-such-dir");
    let o = run(loopai()
        .args(args)
        .args(["--task", "spam", "--data-dir"])
        .arg(&missing)
        .args(extra));
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "data dir {}: no such directory",
            missing.display()
        )),
        "{args:?}: {}",
        stderr(&o)
    );
    assert!(!missing.exists(), "{args:?} created the data dir");
}

#[test]
fn exec_of_a_missing_task_suggests_the_closest_and_creates_nothing() {
    check_missing_task(&["exec", "--input", r#"{"text": "hi"}"#], &[]);
}

#[test]
fn eval_of_a_missing_task_suggests_the_closest_and_creates_nothing() {
    let test = example("inputs.jsonl");
    check_missing_task(&["eval"], &[test.to_str().unwrap()]);
}

#[test]
fn artifacts_list_of_a_missing_task_suggests_the_closest_and_creates_nothing() {
    check_missing_task(&["artifacts", "list"], &[]);
}

#[test]
fn rollout_status_of_a_missing_task_suggests_the_closest_and_creates_nothing() {
    check_missing_task(&["artifacts", "rollout"], &[]);
}

#[test]
fn stats_of_a_missing_task_suggests_the_closest_and_creates_nothing() {
    check_missing_task(&["stats"], &[]);
}

#[test]
fn stats_of_an_installed_task_without_executions_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    install_example(dir.path());
    let o = run(loopai()
        .args(["stats", "--task", "spam", "--data-dir"])
        .arg(dir.path()));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("no data for task spam"),
        "{}",
        stdout(&o)
    );
}

/// A ticket-routing spec over a text, a number, a category and an optional boolean; the
/// label depends on all but the text: VIP tickets are urgent, then high-priority ones of
/// more than 20 lines, the rest normal.
fn ticket_spec() -> serde_json::Value {
    let mut examples = Vec::new();
    let mut state = 7u64;
    let mut next = |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let words = [
        "printer", "login", "invoice", "screen", "network", "update", "mail",
    ];
    for _ in 0..300 {
        let subject = format!(
            "{} {} problem",
            words[next(7) as usize],
            words[next(7) as usize]
        );
        let lines = 1 + next(60);
        let priority = ["low", "medium", "high"][next(3) as usize];
        let mut input =
            serde_json::json!({"subject": subject, "lines": lines, "priority": priority});
        let vip = match next(4) {
            0 => Some(true),
            1 => Some(false),
            _ => None,
        };
        if let Some(v) = vip {
            input["vip"] = v.into();
        }
        let label = if vip == Some(true) {
            "urgent"
        } else if priority == "high" && lines > 20 {
            "escalate"
        } else {
            "normal"
        };
        examples.push(serde_json::json!({"input": input, "output": label}));
    }
    serde_json::json!({
        "name": "tickets",
        "input_schema": {"type": "object", "properties": {
            "subject": {"type": "string"}, "lines": {"type": "integer"},
            "priority": {"type": "string", "enum": ["low", "medium", "high"]},
            "vip": {"type": "boolean"}}, "required": ["subject", "lines", "priority"]},
        "output_schema": {"type": "string", "enum": ["urgent", "escalate", "normal"]},
        "examples": examples,
    })
}

#[test]
fn synth_and_exec_a_structured_spec_without_a_hand_written_program() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("tickets.json");
    std::fs::write(&spec, ticket_spec().to_string()).unwrap();
    let o = run(loopai()
        .args(["synth", "--quiet", "--seed", "1", "--data-dir"])
        .arg(dir.path())
        .arg(&spec));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("installed tickets v1, active"),
        "{}",
        stdout(&o)
    );
    let program: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("artifacts/tickets/v1/program.json")).unwrap(),
    )
    .unwrap();
    let types: Vec<&str> = program["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["text", "number", "category", "category"],
        "{program}"
    );
    let cases = [
        (
            r#"{"subject": "printer problem", "lines": 3, "priority": "low", "vip": true}"#,
            "urgent",
        ),
        (
            r#"{"subject": "login problem", "lines": 45, "priority": "high"}"#,
            "escalate",
        ),
        (
            r#"{"subject": "login problem", "lines": 45, "priority": "high", "vip": false}"#,
            "escalate",
        ),
        (
            r#"{"subject": "login problem", "lines": 5, "priority": "high"}"#,
            "normal",
        ),
        (
            r#"{"subject": "mail problem", "lines": 50, "priority": "medium"}"#,
            "normal",
        ),
    ];
    for (input, want) in cases {
        let o = run(loopai()
            .args(["exec", "--task", "tickets", "--input", input, "--data-dir"])
            .arg(dir.path()));
        assert!(o.status.success(), "{input}: {}", stderr(&o));
        let out: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(out["output"], want, "{input}: {out}");
    }
    // An input that does not match the schema is refused with the field's path.
    let o = run(loopai()
        .args([
            "exec",
            "--task",
            "tickets",
            "--input",
            r#"{"subject": "x", "lines": "many", "priority": "high"}"#,
            "--data-dir",
        ])
        .arg(dir.path()));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/lines"), "{}", stderr(&o));
}

/// `loopai synth` learns an extraction task (an object output), reports each field's
/// cross-validated exact match, installs and activates the program, and `loopai exec`
/// answers with the extracted object (normalised amount, ISO date).
#[test]
fn synth_learns_an_extraction_task_and_exec_returns_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let words = ["invoice", "receipt", "order", "parcel"];
    let months = ["January", "March", "May", "July", "September", "November"];
    let mut examples = Vec::new();
    for i in 0..24usize {
        let id = format!("ORD-{}", 10_000 + i * 7919 % 90_000);
        let (whole, cents) = (3 + i * 37 % 900, i * 13 % 100);
        let day = 1 + i % 28;
        let month = 1 + 2 * (i % 6);
        let (amount, total) = if i % 2 == 0 {
            (
                format!("€{whole},{cents:02}"),
                whole as f64 + cents as f64 / 100.0,
            )
        } else {
            (
                format!("${whole}.{cents:02}"),
                whole as f64 + cents as f64 / 100.0,
            )
        };
        let text = format!(
            "Your {} {id} of {} {day}, 2026 comes to {amount}. {} items.",
            words[i % 4],
            months[i % 6],
            1 + i % 5
        );
        let date = if i % 5 == 4 {
            serde_json::Value::Null
        } else {
            serde_json::json!(format!("2026-{month:02}-{day:02}"))
        };
        let text = if date.is_null() {
            text.replace(&format!(" of {} {day}, 2026", months[i % 6]), "")
        } else {
            text
        };
        examples.push(serde_json::json!({"input": {"text": text},
            "output": {"order_id": id, "total": total, "date": date}}));
    }
    let spec = serde_json::json!({
        "name": "orders",
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
        "output_schema": {"type": "object", "required": ["order_id", "total"], "properties": {
            "order_id": {"type": "string"}, "total": {"type": "number"},
            "date": {"type": ["string", "null"], "format": "date"}}},
        "examples": examples,
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let o = run(loopai()
        .args(["synth", "--quiet", "--data-dir"])
        .arg(dir.path())
        .arg(&spec_path));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("installed orders v1, active"), "{out}");
    for field in ["order_id", "total", "date"] {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(field) && l.contains("1.0000")),
            "{field} is reported with its cv exact match:\n{out}"
        );
    }
    let o = run(loopai()
        .args(["exec", "--task", "orders", "--data-dir"])
        .arg(dir.path())
        .args([
            "--input",
            r#"{"text": "Your receipt ORD-55555 of May 9, 2026 comes to €1.234,50. 2 items."}"#,
        ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        v["output"],
        serde_json::json!({"order_id": "ORD-55555", "total": 1234.5, "date": "2026-05-09"})
    );
}
