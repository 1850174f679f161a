//! Fixtures shared by the criterion benches (`benches/execute.rs`) and the latency tool
//! (`src/bin/latency.rs`): representative texts and programs, all generated
//! deterministically so that the benches need no data set.
//!
//! * [`sms_texts`]: a handful of SMS-like texts of about 100 characters.
//! * [`email_texts`]: e-mail-like texts of about 5 KB (headers, prose, URLs, numbers).
//! * [`fixtures`]: the benched programs: rules only, a linear model over hashed word 1–2-grams
//!   and char 2–4-grams (2^18 buckets each, seeded random weights), the hybrid of the two,
//!   and `examples/spam/program.json`.

use std::path::Path;

use base64::Engine as _;
use loopai_core::{ArtifactStore, NewArtifact, Runtime};
use serde_json::{json, Value};

/// The example program shipped in `examples/spam`.
pub const SPAM_EXAMPLE: &[u8] = include_bytes!("../../examples/spam/program.json");

/// Hash bits of both n-gram features of the linear model (2^18 buckets each).
pub const HASH_BITS: u32 = 18;

/// A small deterministic PRNG (SplitMix64), so fixtures are identical on every run.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform index in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A uniform float in `[-1, 1)`.
    pub fn signed_unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// SMS-like texts, 80–160 characters, a mix of spam and ham, mostly ASCII with a few
/// non-ASCII characters (as real SMS corpora have).
pub fn sms_texts() -> Vec<String> {
    [
        "WINNER!! As a valued network customer you have been selected to receive a £900 prize reward! To claim call 09061701461.",
        "Hey, are we still on for dinner tomorrow? I'll be home around 7, text me if you're running late.",
        "URGENT! Your mobile number has won a cash award of $2000. Call 08000930705 now to claim your bonus, T&C apply.",
        "Ok lol sorry I missed your call, was in a meeting. Gonna grab lunch later, want anything from the café?",
        "FREE entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005. Text FA to 87121 to receive entry question.",
        "I'm gonna be home soon and i don't want to talk about this stuff anymore tonight, k? I've cried enough today.",
        "Congratulations ur awarded 500 of CD vouchers or 125gift guaranteed & Free entry 2 100 wkly draw txt MUSIC to 87066",
        "Thanks for the lift yesterday :) see you at the game on Sunday, my brother is coming too. Love to your mum x",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "is",
    "you",
    "that",
    "it",
    "for",
    "on",
    "with",
    "as",
    "are",
    "this",
    "be",
    "at",
    "have",
    "from",
    "or",
    "your",
    "by",
    "not",
    "we",
    "can",
    "will",
    "all",
    "our",
    "free",
    "offer",
    "money",
    "business",
    "email",
    "list",
    "click",
    "here",
    "remove",
    "order",
    "credit",
    "mortgage",
    "rate",
    "software",
    "linux",
    "kernel",
    "patch",
    "release",
    "package",
    "mailing",
    "thread",
    "question",
    "install",
    "server",
    "network",
    "meeting",
    "report",
    "project",
    "schedule",
    "please",
    "thanks",
    "regards",
    "investment",
    "guaranteed",
    "million",
    "opportunity",
    "subscribe",
    "newsletter",
    "account",
    "security",
    "update",
    "version",
    "bug",
    "fix",
    "build",
    "debian",
    "redhat",
    "perl",
    "python",
    "spam",
    "filter",
    "razor",
    "bayesian",
    "probability",
    "headers",
    "received",
    "message",
    "text",
];

/// An e-mail-like text of about `target` bytes: RFC 822-style headers, then paragraphs
/// of words with URLs, e-mail addresses, numbers, amounts and some shouting.
pub fn email_text(seed: u64, target: usize) -> String {
    let mut rng = SplitMix::new(seed);
    let mut out = String::with_capacity(target + 200);
    out.push_str(&format!(
        "From: user{}@example.com\nTo: list@lists.example.org\nSubject: Re: [{}] {} {} {}\n\
         Date: Mon, 2{} Sep 2002 1{}:4{}:0{} +0100\nMessage-Id: <{:x}@mail.example.com>\n\
         Content-Type: text/plain; charset=us-ascii\n\n",
        rng.below(1000),
        WORDS[rng.below(WORDS.len())],
        WORDS[rng.below(WORDS.len())],
        WORDS[rng.below(WORDS.len())],
        WORDS[rng.below(WORDS.len())],
        rng.below(10),
        rng.below(10),
        rng.below(10),
        rng.below(10),
        rng.next_u64(),
    ));
    let mut sentence_len = 0;
    while out.len() < target {
        let r = rng.below(100);
        let word = match r {
            0 => format!(
                "http://www.example{}.com/{}",
                rng.below(50),
                WORDS[rng.below(WORDS.len())]
            ),
            1 => format!("someone{}@example.net", rng.below(100)),
            2..=4 => format!("{}", rng.below(100_000)),
            5 => format!("${}.{:02}", rng.below(10_000), rng.below(100)),
            6..=7 => WORDS[rng.below(WORDS.len())].to_uppercase(),
            _ => WORDS[rng.below(WORDS.len())].to_string(),
        };
        if sentence_len == 0 {
            let mut cs = word.chars();
            if let Some(c) = cs.next() {
                out.extend(c.to_uppercase());
                out.push_str(cs.as_str());
            }
        } else {
            out.push(' ');
            out.push_str(&word);
        }
        sentence_len += 1;
        if sentence_len > 6 + rng.below(12) {
            out.push_str(if rng.below(8) == 0 { "!\n" } else { ". " });
            if rng.below(5) == 0 {
                out.push_str("\n\n> ");
            }
            sentence_len = 0;
        }
    }
    let end = (0..=target.min(out.len()))
        .rev()
        .find(|&i| out.is_char_boundary(i))
        .unwrap_or(0);
    out.truncate(end);
    out
}

/// A few e-mail-like texts of about 5 KB each.
pub fn email_texts() -> Vec<String> {
    (0..4).map(|i| email_text(0xe3a1 + i, 5 * 1024)).collect()
}

/// Wraps texts as execution inputs `{"text": ...}`.
pub fn inputs(texts: &[String]) -> Vec<Value> {
    texts.iter().map(|t| json!({ "text": t })).collect()
}

fn inputs_json() -> Value {
    json!([{"name": "text", "path": "/text", "type": "text", "max_bytes": 65536, "on_oversize": "truncate"}])
}

fn preprocess_json() -> Value {
    json!([{"name": "clean", "from": "text", "steps": [{"op": "lowercase"}, {"op": "collapse_whitespace"}]}])
}

fn rule_features() -> Vec<Value> {
    vec![
        json!({"name": "urgency", "op": "keywords", "source": "clean", "whole_words": true,
               "terms": ["claim now", "call now", "act now", "urgent", "limited time", "expires", "final notice"]}),
        json!({"name": "reward", "op": "keywords", "source": "clean", "whole_words": true,
               "terms": ["prize", "winner", "won", "free", "cash", "award", "voucher", "bonus", "guaranteed"]}),
        json!({"name": "money", "op": "regex", "source": "text", "pattern": "[£$€]\\s?[0-9]", "mode": "count"}),
        json!({"name": "premium_number", "op": "regex", "source": "text",
               "pattern": "\\b0?9[0-9]{9}\\b|\\b8[0-9]{4}\\b", "mode": "match"}),
        json!({"name": "upper_ratio", "op": "stat", "source": "text", "stat": "upper_ratio"}),
    ]
}

/// Rules that decide only on clearly spammy texts (the hybrid falls through to the model).
fn spam_rules() -> Value {
    json!({"op": "rules", "rules": [
        {"name": "reward with money", "when": {"all": [{"feature": "reward", "gt": 0}, {"feature": "money", "gt": 0}]},
         "then": "spam", "confidence": 0.97},
        {"name": "urgent reward", "when": {"all": [{"feature": "urgency", "gt": 0}, {"feature": "reward", "gt": 0}]},
         "then": "spam", "confidence": 0.95},
        {"name": "premium-rate number", "when": {"all": [{"feature": "premium_number", "eq": 1},
            {"any": [{"feature": "reward", "gt": 0}, {"feature": "urgency", "gt": 0}]}]},
         "then": "spam", "confidence": 0.93},
        {"name": "shouting", "when": {"all": [{"feature": "upper_ratio", "gt": 0.6}, {"not": {"feature": "reward", "eq": 0}}]},
         "then": "spam", "confidence": 0.9}
    ]})
}

fn ngram_features() -> Vec<Value> {
    vec![
        json!({"name": "words", "op": "word_ngrams", "source": "clean", "n": [1, 2],
               "hash": {"bits": HASH_BITS, "seed": 0}}),
        json!({"name": "chars", "op": "char_ngrams", "source": "clean", "n": [2, 4], "within_words": true,
               "hash": {"bits": HASH_BITS, "seed": 1}}),
    ]
}

/// `"base64:"` + little-endian `f32` bytes of `n` seeded random weights in `[-scale, scale)`.
pub fn packed_weights(seed: u64, n: usize, scale: f32) -> String {
    let mut rng = SplitMix::new(seed);
    let mut bytes = Vec::with_capacity(n * 4);
    for _ in 0..n {
        bytes.extend_from_slice(&(rng.signed_unit() * scale).to_le_bytes());
    }
    format!(
        "base64:{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// Logistic model over `words` and `chars` (dimension 2 × 2^18, width 1).
fn linear_model() -> Value {
    let dim = 2usize << HASH_BITS;
    json!({"op": "linear", "inputs": ["words", "chars"], "classes": ["ham", "spam"], "link": "sigmoid",
           "weights": packed_weights(42, dim, 0.5), "bias": [-0.3]})
}

fn program(features: Vec<Value>, decide: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "format": "loopai.program/1",
        "task": "spam",
        "inputs": inputs_json(),
        "preprocess": preprocess_json(),
        "features": features,
        "decide": decide,
        "output": {"kind": "label", "labels": ["spam", "ham"], "abstain_below": 0.6},
    }))
    .expect("program JSON serializes")
}

/// Rules only: keyword sets, two regexes and a stat, four rules then a default.
pub fn rules_program() -> Vec<u8> {
    let mut decide = spam_rules();
    decide["rules"].as_array_mut().expect("rules array").push(
        json!({"name": "default", "when": {"always": true}, "then": "ham", "confidence": 0.7}),
    );
    program(rule_features(), decide)
}

/// A linear model over hashed word 1–2-grams and char 2–4-grams within words.
pub fn linear_hashed_program() -> Vec<u8> {
    program(ngram_features(), linear_model())
}

/// The rules of [`rules_program`] (without the default), then the linear model.
pub fn hybrid_program() -> Vec<u8> {
    let mut features = rule_features();
    features.extend(ngram_features());
    program(
        features,
        json!({"op": "first", "steps": [spam_rules(), linear_model()]}),
    )
}

/// Variants of [`linear_hashed_program`] that take one cost away at a time, to see where
/// the time goes (`breakdown/linear_hashed_sms/*` in the benches).
pub fn linear_breakdown() -> Vec<(&'static str, Vec<u8>)> {
    let words = ngram_features().swap_remove(0);
    let chars = ngram_features().swap_remove(1);
    let model = |inputs: &[&str], bits: u32| {
        let dim = inputs.len() << bits;
        json!({"op": "linear", "inputs": inputs, "classes": ["ham", "spam"], "link": "sigmoid",
               "weights": packed_weights(42, dim, 0.5), "bias": [-0.3]})
    };
    let with_bits = |mut f: Value, bits: u32| {
        f["hash"]["bits"] = json!(bits);
        f
    };
    let raw_source = |mut f: Value| {
        f["source"] = json!("text");
        f
    };
    let always = json!({"op": "rules", "rules": [{"when": {"always": true}, "then": "ham", "confidence": 0.7}]});
    vec![
        ("full", linear_hashed_program()),
        (
            "no_preprocess",
            program(
                vec![raw_source(words.clone()), raw_source(chars.clone())],
                model(&["words", "chars"], HASH_BITS),
            ),
        ),
        (
            "words_only",
            program(vec![words.clone()], model(&["words"], HASH_BITS)),
        ),
        (
            "chars_only",
            program(vec![chars.clone()], model(&["chars"], HASH_BITS)),
        ),
        (
            "bits_10",
            program(
                vec![with_bits(words.clone(), 10), with_bits(chars.clone(), 10)],
                model(&["words", "chars"], 10),
            ),
        ),
        ("features_no_model", program(vec![words, chars], always)),
    ]
}

/// A benched program: a short name (used in bench ids) and its JSON.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// Bench id component: `rules`, `linear_hashed`, `hybrid`, `spam_example`.
    pub name: &'static str,
    /// The program document.
    pub program: Vec<u8>,
}

/// Every benched program.
pub fn fixtures() -> Vec<Fixture> {
    vec![
        Fixture {
            name: "rules",
            program: rules_program(),
        },
        Fixture {
            name: "linear_hashed",
            program: linear_hashed_program(),
        },
        Fixture {
            name: "hybrid",
            program: hybrid_program(),
        },
        Fixture {
            name: "spam_example",
            program: SPAM_EXAMPLE.to_vec(),
        },
    ]
}

/// Installs `program` as the active artifact of its task (its `"task"` field, `spam` when
/// it has none) in `data_dir` and starts a [`Runtime`] on it.
pub fn runtime_for(data_dir: &Path, program: &[u8]) -> loopai_core::Result<Runtime> {
    let task = serde_json::from_slice::<Value>(program)
        .ok()
        .and_then(|v| v["task"].as_str().map(str::to_string))
        .unwrap_or_else(|| "spam".to_string());
    ArtifactStore::open(data_dir, &task)?.install(program, NewArtifact::default(), true)?;
    Runtime::builder().data_dir(data_dir).task(&task).build()
}

/// Execution inputs from a JSONL file: each line is an input object, or a labelled row
/// `{"input": {...}, "output": ...}` (as in `test.jsonl` of the datasets) whose input is
/// taken. Blank lines are skipped.
pub fn read_inputs(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut inputs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        inputs.push(match v.get("input") {
            Some(input) if input.is_object() => input.clone(),
            _ => v,
        });
    }
    if inputs.is_empty() {
        return Err(format!("{}: no input", path.display()));
    }
    Ok(inputs)
}

/// The command-line options shared by the tools: `--program-file FILE`, `--inputs
/// FILE.jsonl`, `--json FILE`, and the remaining positional arguments.
#[derive(Debug, Default)]
pub struct ToolArgs {
    /// A program document to bench instead of a fixture.
    pub program_file: Option<std::path::PathBuf>,
    /// Inputs to execute instead of the fixture texts.
    pub inputs: Option<std::path::PathBuf>,
    /// Where to also write the figures as JSON.
    pub json: Option<std::path::PathBuf>,
    /// The other arguments, in order.
    pub positional: Vec<String>,
}

impl ToolArgs {
    /// Parses `args` (without the program name).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<ToolArgs, String> {
        let mut out = ToolArgs::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let slot = match arg.as_str() {
                "--program-file" => &mut out.program_file,
                "--inputs" => &mut out.inputs,
                "--json" => &mut out.json,
                _ if arg.starts_with("--") => return Err(format!("unknown option {arg}")),
                _ => {
                    out.positional.push(arg);
                    continue;
                }
            };
            let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
            *slot = Some(value.into());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loopai_core::Program;

    #[test]
    fn fixtures_compile_and_classify_every_text() {
        let texts: Vec<Value> = inputs(&sms_texts())
            .into_iter()
            .chain(inputs(&email_texts()))
            .collect();
        for f in fixtures() {
            let p = Program::from_json(&f.program).unwrap_or_else(|e| panic!("{}: {e}", f.name));
            for t in &texts {
                let o = p.evaluate(t).unwrap();
                assert!(o.label.is_some(), "{} abstained without output", f.name);
            }
        }
    }

    #[test]
    fn texts_have_the_advertised_sizes() {
        for t in sms_texts() {
            assert!((80..=170).contains(&t.len()), "{} bytes: {t}", t.len());
        }
        for t in email_texts() {
            assert!((5000..=5120).contains(&t.len()), "{} bytes", t.len());
        }
        assert_eq!(email_text(1, 5000), email_text(1, 5000), "deterministic");
    }

    #[test]
    fn tool_args_split_options_from_positionals() {
        let args = |v: &[&str]| ToolArgs::parse(v.iter().map(|s| s.to_string()));
        let a = args(&["rules", "--json", "out.json", "sms", "--inputs", "t.jsonl"]).unwrap();
        assert_eq!(a.positional, ["rules", "sms"]);
        assert_eq!(a.json.unwrap().to_str(), Some("out.json"));
        assert_eq!(a.inputs.unwrap().to_str(), Some("t.jsonl"));
        assert!(a.program_file.is_none());
        assert_eq!(args(&["--json"]).unwrap_err(), "--json needs a value");
        assert_eq!(args(&["--jsn", "x"]).unwrap_err(), "unknown option --jsn");
    }

    #[test]
    fn inputs_are_read_from_labelled_rows_or_bare_objects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(
            &path,
            "{\"input\": {\"text\": \"a\"}, \"output\": \"ham\"}\n\n{\"text\": \"b\"}\n",
        )
        .unwrap();
        let got = read_inputs(&path).unwrap();
        assert_eq!(got, vec![json!({"text": "a"}), json!({"text": "b"})]);
        std::fs::write(&path, "{\"text\": \n").unwrap();
        assert!(read_inputs(&path).unwrap_err().contains("t.jsonl:1: "));
    }

    #[test]
    fn runtime_for_installs_under_the_programs_task() {
        let dir = tempfile::tempdir().unwrap();
        let mut program: Value = serde_json::from_slice(&rules_program()).unwrap();
        program["task"] = json!("sms-spam");
        let rt = runtime_for(dir.path(), &serde_json::to_vec(&program).unwrap()).unwrap();
        assert_eq!(rt.task(), "sms-spam");
    }
}

/// The bench tools and criterion benches allocate with mimalloc, like the shipped
/// artifacts (the Python module, libloopai, the `loopai` binary): with glibc's malloc the
/// dataset writer thread's frees of records allocated by `execute` contend on an arena
/// lock. Embedders of `loopai-core` choose their own allocator; see README "Performance".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
