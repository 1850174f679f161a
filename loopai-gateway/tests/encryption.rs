//! Encryption at rest of the gateway's files (`storage.encryption`, issue #19 item 2): the
//! call log and `gateway.json` hold no input or label in clear, read back with the key
//! (counters and calibration restored), refuse a wrong or missing key with an error naming
//! the file, survive a torn tail, and files written in clear before still read.
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use loopai_core::{DeploymentConfig, ErrorKind};
use loopai_gateway::{add_task, summarize, Decision, Gateway, TaskState, UpstreamAnswer};

mod common;
use common::{messages, request, spec, HAM, SPAM, WAIT};

const MAGIC: &[u8] = b"LOOPAIE1";

/// A private key file `name` holding 32 times `byte`.
fn write_key(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{byte:02x}").repeat(32)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Learning at 60 labels, one pass; `storage` is the YAML of the `storage` section.
fn config(storage: &str) -> DeploymentConfig {
    DeploymentConfig::from_yaml_str(
        &format!(
            "gateway:\n  upstream: {{base_url: 'http://127.0.0.1:9/v1'}}\n  max_disagreement: 0.05\n  routes:\n    - {{task: spam, model: sms-model}}\nsampling: {{rate: 0}}\nlearn: {{min_examples: 60, growth: 100, seed: 7}}\n{storage}"
        ),
        "test",
    )
    .unwrap()
}

fn encrypted(key: &Path) -> DeploymentConfig {
    config(&format!(
        "storage:\n  encryption:\n    key_file: {}\n",
        key.display()
    ))
}

/// Sends `text`; a forwarded call gets `label` from the stand-in upstream. Returns whether
/// the program answered.
fn call(gw: &Gateway, text: &str, label: &str) -> bool {
    match gw.decide(None, &request(text)).unwrap() {
        Decision::Local(_) => true,
        Decision::Forward(pending) => {
            gw.record_upstream(pending, &UpstreamAnswer::new(Some(label), Some(40), 100.0));
            false
        }
        _ => unreachable!(),
    }
}

fn contains(bytes: &[u8], needle: &[u8]) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// The call log's files, sorted.
fn call_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("datasets/spam/gateway"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// `bytes` start with the encrypted magic and hold no input word, label or JSON key.
fn assert_sealed(bytes: &[u8], what: &str) {
    assert!(bytes.starts_with(MAGIC), "{what}: not encrypted");
    // Words of four letters or more: a shorter one turns up in random bytes by chance.
    for word in SPAM.iter().chain(&HAM).filter(|w| w.len() >= 4) {
        assert!(
            !contains(bytes, word.as_bytes()),
            "{what}: {word:?} in clear"
        );
    }
    for clear in [
        &b"\"spam\""[..],
        b"\"ham\"",
        b"\"input\"",
        b"\"label\"",
        b"holdout",
        b"learned_at",
    ] {
        assert!(
            !contains(bytes, clear),
            "{what}: {:?} in clear",
            String::from_utf8_lossy(clear)
        );
    }
}

#[test]
fn with_encryption_the_call_log_and_gateway_json_hold_no_plaintext_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    add_task(dir.path(), &spec()).unwrap();
    let key = write_key(keys.path(), "key", 1);
    let enc = encrypted(&key);
    let gw = Gateway::open(dir.path(), &enc).unwrap();
    let stream = messages(400, 42);
    for (text, label) in &stream[..60] {
        call(&gw, text, label);
    }
    gw.wait_idle(WAIT).unwrap();
    let mut local = 0;
    for (text, label) in &stream[60..] {
        local += usize::from(call(&gw, text, label));
    }
    gw.wait_idle(WAIT).unwrap();
    let before = gw.stats().tasks[0].clone();
    assert_eq!(before.active_version, Some(1), "{before:?}");
    assert!(local > 0 && before.forwarded > 0, "{before:?}");
    assert_eq!(before.state, TaskState::Serving, "{before:?}");
    gw.shutdown(WAIT).unwrap();

    // On disk: nothing in clear.
    let files = call_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert_sealed(&std::fs::read(&files[0]).unwrap(), "the call log");
    let stored = dir.path().join("artifacts/spam/gateway.json");
    assert_sealed(&std::fs::read(&stored).unwrap(), "gateway.json");

    // Restarted with the key: counters and calibration come back.
    let gw = Gateway::open(dir.path(), &enc).unwrap();
    let after = gw.stats().tasks[0].clone();
    assert_eq!(
        (
            after.calls,
            after.local,
            after.forwarded,
            after.oracle_labels
        ),
        (
            before.calls,
            before.local,
            before.forwarded,
            before.oracle_labels
        )
    );
    assert_eq!(after.upstream_tokens, before.upstream_tokens);
    assert_eq!(after.calibration_pairs, before.calibration_pairs);
    assert_eq!(after.threshold, before.threshold);
    assert_eq!(after.state, TaskState::Serving);
    gw.shutdown(WAIT).unwrap();
    let offline = summarize(dir.path(), Some(&enc)).unwrap();
    assert_eq!(offline[0].oracle_labels, before.oracle_labels);
    assert_eq!(offline[0].threshold, before.threshold);

    // A wrong key: a configuration error naming the key the files need.
    let wrong = write_key(keys.path(), "wrong", 2);
    let err = Gateway::open(dir.path(), &encrypted(&wrong)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        err.to_string().contains("not among the configured keys"),
        "{err}"
    );
    // Without the key: the files are refused, named, by the gateway and the offline summary.
    let err = Gateway::open(dir.path(), &config("")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("no key is configured"), "{err}");
    let err = summarize(dir.path(), None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("gateway.json"), "{err}");
    let err = summarize(dir.path(), Some(&encrypted(&wrong))).unwrap_err();
    assert!(err.to_string().contains("gateway.json"), "{err}");
    // A missing key is a start-up error naming where it was looked for.
    let missing = config("storage:\n  encryption:\n    key_env: LOOPAI_GATEWAY_TEST_UNSET_KEY\n");
    let err = Gateway::open(dir.path(), &missing).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.to_string().contains("storage.encryption.key_env"),
        "{err}"
    );
}

#[test]
fn plain_files_still_read_are_resealed_on_append_and_a_torn_tail_is_tolerated() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    add_task(dir.path(), &spec()).unwrap();
    // Written in clear, before encryption was turned on.
    let gw = Gateway::open(dir.path(), &config("")).unwrap();
    for (text, label) in &messages(5, 1) {
        assert!(!call(&gw, text, label));
    }
    gw.shutdown(WAIT).unwrap();
    let today = call_files(dir.path()).remove(0);
    let old_day = today.with_file_name("calls-2000-01-01.jsonl");
    std::fs::copy(&today, &old_day).unwrap();
    assert!(contains(&std::fs::read(&today).unwrap(), b"\"input\""));

    // Turned on: the plain files read; appending to today's rewrites it encrypted.
    let key = write_key(keys.path(), "key", 3);
    let enc = encrypted(&key);
    let gw = Gateway::open(dir.path(), &enc).unwrap();
    assert_eq!(gw.stats().tasks[0].calls, 10);
    for (text, label) in &messages(3, 2) {
        call(&gw, text, label);
    }
    gw.shutdown(WAIT).unwrap();
    let sealed = std::fs::read(&today).unwrap();
    assert_sealed(&sealed, "today's call log");
    assert!(
        std::fs::read(&old_day).unwrap().starts_with(b"{"),
        "an older day is left as it was"
    );
    let gw = Gateway::open(dir.path(), &enc).unwrap();
    let t = gw.stats().tasks[0].clone();
    assert_eq!((t.calls, t.forwarded, t.oracle_labels), (13, 13, 13));
    gw.shutdown(WAIT).unwrap();
    // With a wrong key, or none, the encrypted day is refused, named.
    let wrong = encrypted(&write_key(keys.path(), "wrong", 4));
    for (c, why) in [
        (&wrong, "not among the configured keys"),
        (&config(""), "no key is configured"),
    ] {
        let err = Gateway::open(dir.path(), c).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(
            err.to_string().contains(&today.display().to_string()),
            "{err}"
        );
        assert!(err.to_string().contains(why), "{err}");
    }

    // A torn last frame (a crash while writing) is skipped, as a torn line is.
    std::fs::write(&today, &sealed[..sealed.len() - 7]).unwrap();
    let gw = Gateway::open(dir.path(), &enc).unwrap();
    assert_eq!(gw.stats().tasks[0].calls, 12);
    // Appending after it cuts the torn tail first: every record stays readable.
    call(&gw, &messages(1, 3)[0].0, "ham");
    gw.shutdown(WAIT).unwrap();
    let gw = Gateway::open(dir.path(), &enc).unwrap();
    assert_eq!(gw.stats().tasks[0].calls, 13);
    gw.shutdown(WAIT).unwrap();

    // A damaged frame before the last one is an error naming the file.
    let mut damaged = std::fs::read(&today).unwrap();
    damaged[8 + 1 + 8 + 4 + 12] ^= 1;
    std::fs::write(&today, &damaged).unwrap();
    let err = Gateway::open(dir.path(), &enc).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert!(
        err.to_string().contains(&today.display().to_string()),
        "{err}"
    );
    assert!(err.to_string().contains("fails authentication"), "{err}");
}
