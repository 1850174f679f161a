//! What the gateway's integration tests share: the spam task, a deterministic SMS-like
//! stream and the chat request of one message.
#![allow(dead_code)] // each test binary uses its own share of it

use std::time::Duration;

use loopai_gateway::ChatRequest;
use loopai_synth::TaskSpec;

/// How long a test waits for the gateway's background work.
pub const WAIT: Duration = Duration::from_secs(120);

/// The words of the stream's spam and ham messages.
pub const SPAM: [&str; 10] = [
    "win", "free", "prize", "claim", "cash", "urgent", "offer", "winner", "txt", "reward",
];
pub const HAM: [&str; 10] = [
    "lunch", "meeting", "tomorrow", "home", "love", "dinner", "work", "movie", "later", "mum",
];

/// The `spam` task: a text in, `spam` or `ham` out, no examples.
pub fn spec() -> TaskSpec {
    TaskSpec::from_json(
        br#"{"name": "spam", "description": "Is this SMS spam?",
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        "output_schema": {"type": "string", "enum": ["spam", "ham"]}}"#,
    )
    .unwrap()
}

/// A deterministic SMS-like stream: (text, label).
pub fn messages(n: usize, seed: u64) -> Vec<(String, &'static str)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n)
        .map(|_| {
            let spam = rng.bool();
            let words = if spam { &SPAM } else { &HAM };
            let mut text = vec!["the", "you"];
            for _ in 0..rng.usize(3..7) {
                text.push(words[rng.usize(..words.len())]);
            }
            rng.shuffle(&mut text);
            (text.join(" "), if spam { "spam" } else { "ham" })
        })
        .collect()
}

/// The chat request of `text` as the user's message, routed to `spam` by its model.
pub fn request(text: &str) -> ChatRequest {
    let body = serde_json::json!({"model": "sms-model", "messages": [
        {"role": "system", "content": "Answer spam or ham."},
        {"role": "user", "content": text}]});
    ChatRequest::parse(body.to_string().as_bytes()).unwrap()
}
