//! `loopai tasks add|list` and the gateway figures of `loopai stats`, on a data directory
//! whose call log is written by the gateway library.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use loopai_core::DeploymentConfig;
use loopai_gateway::{ChatRequest, Decision, Gateway, UpstreamAnswer};
use serde_json::Value;

fn loopai(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loopai"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("loopai runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const SPEC: &str = r#"{"name": "spam", "description": "SMS spam?",
  "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
  "output_schema": {"type": "string", "enum": ["spam", "ham"]},
  "examples": [{"input": {"text": "win a prize"}, "output": "spam"}]}"#;

#[test]
fn tasks_add_registers_a_spec_without_a_program_and_list_shows_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spam.json");
    std::fs::write(&spec, SPEC).unwrap();
    let o = loopai(&["tasks", "add", spec.to_str().unwrap()], dir.path());
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("task spam: registered (2 labels: spam, ham; 1 example(s))"));
    assert!(dir.path().join("artifacts/spam/spec.json").is_file());

    // Calls through the gateway library: two labels from the "upstream", one outside.
    let config = DeploymentConfig::from_yaml_str(
        "gateway:\n  upstream: {base_url: 'http://127.0.0.1:9/v1'}\n",
        "test",
    )
    .unwrap();
    let gw = Gateway::open(dir.path(), &config).unwrap();
    for answer in ["spam", "ham", "no idea"] {
        let r =
            ChatRequest::parse(br#"{"messages": [{"role": "user", "content": "hello"}]}"#).unwrap();
        let Decision::Forward(p) = gw.decide(Some("spam"), &r).unwrap() else {
            panic!("shadow forwards")
        };
        let _ = gw.record_upstream(p, &UpstreamAnswer::new(Some(answer), Some(10), 5.0));
    }
    gw.shutdown(Duration::from_secs(10)).unwrap();

    let o = loopai(&["tasks", "list", "--json"], dir.path());
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let t = &v[0];
    assert_eq!(t["task"], "spam");
    assert_eq!(t["state"], "shadow");
    assert_eq!(t["labels"], 3, "1 spec example + 2 oracle labels");
    assert_eq!(t["outside_labels"], 1);
    assert_eq!(t["calls"], 3);
    assert_eq!(t["coverage"], 0.0);
    let o = loopai(&["tasks", "list"], dir.path());
    let out = text(&o.stdout);
    assert!(
        out.contains("STATE") && out.contains("spam") && out.contains("shadow"),
        "{out}"
    );

    let o = loopai(&["stats", "--task", "spam"], dir.path());
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("gateway: state shadow, labels 3"), "{out}");
    assert!(
        out.contains("upstream calls 3 (0 failed), upstream tokens 30"),
        "{out}"
    );
    // --json: the days and the same gateway figures as `tasks list --json`.
    let o = loopai(&["stats", "--task", "spam", "--json"], dir.path());
    assert!(o.status.success(), "{}", text(&o.stderr));
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(s["days"].is_array(), "{s}");
    assert_eq!(s["gateway"], v[0], "{s}");
    assert_eq!(s["gateway"]["upstream_calls"], 3);
    assert_eq!(s["gateway"]["upstream_tokens"], 30);
}

#[test]
fn tasks_add_refuses_a_bad_spec_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bad.json");
    std::fs::write(
        &spec,
        r#"{"name": "spam", "output_schema": {"type": "string", "enum": ["spam"]}}"#,
    )
    .unwrap();
    let o = loopai(&["tasks", "add", spec.to_str().unwrap()], dir.path());
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("spec.output_schema.enum: only one label"),
        "{err}"
    );
    assert!(!dir.path().join("artifacts/spam/spec.json").exists());
    let o = loopai(&["tasks", "list"], dir.path());
    assert!(
        text(&o.stdout).contains("no gateway task"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn tasks_add_registers_an_extraction_spec_as_written_and_list_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("order.json");
    let body = r#"{"name": "order", "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
      "output_schema": {"type": "object", "required": ["order_id"], "properties": {
        "order_id": {"type": "string"}, "amount": {"type": ["number", "null"]}}}}"#;
    std::fs::write(&spec, body).unwrap();
    let o = loopai(&["tasks", "add", spec.to_str().unwrap()], dir.path());
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("task order: registered (extraction of 2 field(s); 0 example(s))"),
        "{}",
        text(&o.stdout)
    );
    // Stored as written: the fields keep their order.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("artifacts/order/spec.json")).unwrap(),
        body
    );
    let o = loopai(&["tasks", "list", "--json"], dir.path());
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["task"], "order");
    assert_eq!(v[0]["state"], "shadow");
    assert_eq!(v[0]["labels"], 0);

    // A field type the extractor cannot learn is refused, naming the field.
    std::fs::write(&spec, body.replace("\"number\", \"null\"", "\"boolean\"")).unwrap();
    let o = loopai(&["tasks", "add", spec.to_str().unwrap()], dir.path());
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("spec.output_schema.properties.amount.type"),
        "{err}"
    );
}

/// With `storage.encryption` in the data directory's configuration, `tasks list` and
/// `stats` read the gateway's encrypted call log (issue #19 item 2).
#[cfg(unix)]
#[test]
fn tasks_list_and_stats_read_an_encrypted_call_log() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spam.json");
    std::fs::write(&spec, SPEC).unwrap();
    let o = loopai(&["tasks", "add", spec.to_str().unwrap()], dir.path());
    assert!(o.status.success(), "{}", text(&o.stderr));
    let key = keys.path().join("key");
    std::fs::write(&key, "5a".repeat(32)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let yaml = format!(
        "gateway:\n  upstream: {{base_url: 'http://127.0.0.1:9/v1'}}\nstorage:\n  encryption:\n    key_file: {}\n",
        key.display()
    );
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::write(dir.path().join("config/deployment.yaml"), &yaml).unwrap();
    let config = DeploymentConfig::from_yaml_str(&yaml, "test").unwrap();
    let gw = Gateway::open(dir.path(), &config).unwrap();
    for answer in ["spam", "ham"] {
        let r =
            ChatRequest::parse(br#"{"messages": [{"role": "user", "content": "hello there"}]}"#)
                .unwrap();
        let Decision::Forward(p) = gw.decide(Some("spam"), &r).unwrap() else {
            panic!("shadow forwards")
        };
        let _ = gw.record_upstream(p, &UpstreamAnswer::new(Some(answer), Some(10), 5.0));
    }
    gw.shutdown(Duration::from_secs(10)).unwrap();
    let log = std::fs::read_dir(dir.path().join("datasets/spam/gateway"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&log).unwrap();
    assert!(bytes.starts_with(b"LOOPAIE1"));
    assert!(!bytes.windows(11).any(|w| w == b"hello there"));

    let o = loopai(&["tasks", "list", "--json"], dir.path());
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v[0]["calls"].as_u64(), v[0]["labels"].as_u64()),
        (Some(2), Some(3))
    );
    let o = loopai(&["stats", "--task", "spam"], dir.path());
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("gateway: state shadow, labels 3"));
}
