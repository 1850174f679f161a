//! Measures the PII filter: per-kind recall on the generated corpus, false positives on
//! its distractors and, given SMS datasets, on real messages, plus a quick timing.
//!
//! ```text
//! cargo run --release -p loopai-core --example pii_report -- \
//!     /work/datasets/sms-spam/test.jsonl /work/datasets/sms-spam/spec.json
//! ```
//!
//! Each argument is a `.jsonl` file of `{"input": {"text": ...}, "output": "ham"|"spam"}`
//! lines or a `.json` spec whose `examples` array holds such objects. Missing files are
//! skipped with a note, so the example also runs where the datasets are absent.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use loopai_core::{PiiFilter, PiiKind};

#[path = "../src/privacy/corpus.rs"]
mod corpus;

const SEED: u64 = 0x5eed_2024;
const PER_KIND: usize = 1000;

fn main() {
    let filter = PiiFilter::new();
    let find = |t: &str| -> Vec<(PiiKind, std::ops::Range<usize>)> {
        filter
            .find(t)
            .into_iter()
            .map(|m| (m.kind, m.range))
            .collect()
    };

    let corpus = corpus::generate(SEED, PER_KIND);
    let report = corpus::measure(&corpus, find);
    println!("== generated corpus (seed {SEED:#x}, {PER_KIND} samples per kind) ==");
    for &(kind, found, total) in &report.found {
        println!(
            "recall {:<12} {:>7.3}%  ({found}/{total})",
            kind.name(),
            100.0 * found as f64 / total as f64
        );
    }
    for (kind, text) in report.misses.iter().take(10) {
        println!("  missed {kind}: {text:?}");
    }
    let mut by_category: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for n in &corpus.negatives {
        by_category.entry(n.category).or_default().1 += 1;
    }
    for (category, ..) in &report.false_positives {
        by_category.entry(category).or_default().0 += 1;
    }
    println!("false positives on distractors:");
    for (category, (fp, total)) in &by_category {
        println!("  {category:<12} {fp}/{total}");
    }
    for (category, _, text, spans) in report.false_positives.iter().take(10) {
        println!("  [{category}] {text:?} -> {spans:?}");
    }

    for arg in std::env::args().skip(1) {
        sms_report(&filter, Path::new(&arg));
    }
}

fn load(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let records: Vec<serde_json::Value> = if path.extension().is_some_and(|e| e == "jsonl") {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?
    } else {
        let spec: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        spec["examples"].as_array().cloned().unwrap_or_default()
    };
    Ok(records
        .iter()
        .filter_map(|r| {
            let text = r["input"]["text"].as_str()?;
            let label = r["output"].as_str()?;
            Some((text.to_owned(), label.to_owned()))
        })
        .collect())
}

fn sms_report(filter: &PiiFilter, path: &Path) {
    println!("\n== {} ==", path.display());
    let messages = match load(path) {
        Ok(m) => m,
        Err(e) => {
            println!("skipped: {e}");
            return;
        }
    };
    for label in ["ham", "spam"] {
        let texts: Vec<&str> = messages
            .iter()
            .filter(|(_, l)| l == label)
            .map(|(t, _)| t.as_str())
            .collect();
        let mut flagged = Vec::new();
        let mut per_kind: BTreeMap<&str, usize> = BTreeMap::new();
        for text in &texts {
            let found = filter.find(text);
            if !found.is_empty() {
                for m in &found {
                    *per_kind.entry(m.kind.name()).or_default() += 1;
                }
                flagged.push((*text, found));
            }
        }
        println!(
            "{label}: {} of {} messages with a redaction ({:.2}%), matches per kind {per_kind:?}",
            flagged.len(),
            texts.len(),
            100.0 * flagged.len() as f64 / texts.len().max(1) as f64
        );
        for (text, found) in flagged.iter().take(if label == "ham" { 50 } else { 15 }) {
            let spans: Vec<String> = found
                .iter()
                .map(|m| format!("{}={:?}", m.kind, &text[m.range.clone()]))
                .collect();
            println!("  {}  <-  {:?}", spans.join(", "), truncate(text, 90));
        }
        if label == "ham" && !texts.is_empty() {
            timing(filter, &texts);
        }
    }
}

fn timing(filter: &PiiFilter, texts: &[&str]) {
    let rounds = 200;
    let bytes: usize = texts.iter().map(|t| t.len()).sum();
    let start = Instant::now();
    let mut redacted = 0usize;
    for _ in 0..rounds {
        for text in texts {
            redacted += filter.redact(text).len();
        }
    }
    let per_message = start.elapsed().as_nanos() as f64 / (rounds * texts.len()) as f64;
    println!(
        "timing: redact over ham averages {:.0} ns per message ({:.0} bytes average){}",
        per_message,
        bytes as f64 / texts.len() as f64,
        if redacted == 0 { "!" } else { "" }
    );
    let clean =
        "Hey, are we still on for dinner tonight? I'll be there around 8, call me if you're late";
    let with_digits =
        "Ur order 123456789 ships 2024-01-15 at 10:30, total £1000. Ref 87121 pls reply";
    for (name, text) in [("clean", clean), ("digits", with_digits)] {
        let n = 200_000;
        let start = Instant::now();
        let mut len = 0;
        for _ in 0..n {
            len += filter.redact(std::hint::black_box(text)).len();
        }
        println!(
            "timing: {name} {}-char SMS: {:.0} ns per redact ({len})",
            text.len(),
            start.elapsed().as_nanos() as f64 / n as f64
        );
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}
