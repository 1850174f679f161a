//! Privacy: what leaves the process, and in which form.
//!
//! * [`PiiFilter`] finds and redacts personal data (`privacy.pii_detection`).
//! * [`KeyedHasher`] hashes inputs with HMAC-SHA256 and the deployment secret
//!   (`privacy.hash_inputs`, and the `input_hash` of every uploaded record).
//! * [`PrivacyPolicy`] combines them with the [`PrivacyMode`] into the decisions the
//!   dataset writer and the telemetry queue apply to each record.
//!
//! The rules are documented in `docs/privacy.md`.

mod hash;
mod pii;

#[cfg(test)]
pub(crate) mod corpus;
#[cfg(test)]
mod review_set;

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::Value;

use crate::config::{PrivacyConfig, PrivacyMode};

pub(crate) use hash::write_canonical;
pub use hash::{KeyedHasher, HMAC_KEY_FILE, HMAC_KEY_LEN};
pub use pii::{PiiFilter, PiiKind, PiiMatch};

/// The privacy decisions for one deployment: [`PrivacyMode`] (`telemetry.privacy_mode`)
/// plus the `privacy` section, with the filter and the keyed hasher they need.
///
/// | mode | records uploaded | input in an uploaded record |
/// |------|------------------|-----------------------------|
/// | `strict` | none: aggregates and keyed hashes only | — ([`upload_value`](Self::upload_value) is `None`) |
/// | `balanced` | sampled | PII redacted when `pii_detection` (the default) |
/// | `permissive` | all | PII redacted when `pii_detection` (set it to `false` for raw) |
///
/// Every uploaded record carries [`input_hash`](Self::input_hash); with `hash_inputs`,
/// the local execution logs store that hash instead of the input
/// ([`local_input`](Self::local_input)).
///
/// ```
/// use loopai_core::{KeyedHasher, PrivacyConfig, PrivacyMode, PrivacyPolicy};
/// use serde_json::json;
///
/// let input = json!({"text": "call me on 07700 900123"});
/// let hasher = KeyedHasher::new(b"secret");
///
/// let balanced = PrivacyPolicy::new(PrivacyMode::Balanced, &PrivacyConfig::default(), hasher.clone());
/// assert_eq!(balanced.upload_value(&input), Some(json!({"text": "call me on [PHONE]"})));
/// assert_eq!(balanced.local_input(&input).into_owned(), input);
///
/// let strict = PrivacyPolicy::new(PrivacyMode::Strict, &PrivacyConfig::default(), hasher);
/// assert!(!strict.uploads_records());
/// assert_eq!(strict.upload_value(&input), None);
/// assert_eq!(strict.input_hash(&input).len(), 64);
/// ```
#[derive(Debug, Clone)]
pub struct PrivacyPolicy {
    mode: PrivacyMode,
    pii_detection: bool,
    hash_inputs: bool,
    filter: PiiFilter,
    hasher: Arc<KeyedHasher>,
}

impl PrivacyPolicy {
    /// The policy for `mode` and the `privacy` section, hashing with `hasher`.
    pub fn new(mode: PrivacyMode, config: &PrivacyConfig, hasher: KeyedHasher) -> Self {
        PrivacyPolicy {
            mode,
            pii_detection: config.pii_detection,
            hash_inputs: config.hash_inputs,
            filter: PiiFilter::new(),
            hasher: Arc::new(hasher),
        }
    }

    /// The privacy mode.
    pub fn mode(&self) -> PrivacyMode {
        self.mode
    }

    /// The PII filter (every kind).
    pub fn filter(&self) -> &PiiFilter {
        &self.filter
    }

    /// The keyed hasher.
    pub fn hasher(&self) -> &KeyedHasher {
        &self.hasher
    }

    /// Whether records (inputs, outputs) may be uploaded at all: `false` in `strict`, where
    /// only aggregates and keyed hashes leave the process.
    pub fn uploads_records(&self) -> bool {
        !matches!(self.mode, PrivacyMode::Strict)
    }

    /// The form in which `value` (an input or an output) may be uploaded: `None` in
    /// `strict`; redacted by [`PiiFilter::redact_value`] when `pii_detection` is on;
    /// as is otherwise.
    pub fn upload_value(&self, value: &Value) -> Option<Value> {
        if !self.uploads_records() {
            None
        } else if self.pii_detection {
            Some(self.filter.redact_value(value))
        } else {
            Some(value.clone())
        }
    }

    /// The keyed hash of `value` ([`KeyedHasher::hash_value`]): the `input_hash` of
    /// uploaded records in every mode.
    pub fn input_hash(&self, value: &Value) -> String {
        self.hasher.hash_value(value)
    }

    /// What the local execution log stores for `input`: the input itself, or with
    /// `privacy.hash_inputs` its keyed hash as a JSON string.
    pub fn local_input<'a>(&self, input: &'a Value) -> Cow<'a, Value> {
        if self.hash_inputs {
            Cow::Owned(Value::String(self.input_hash(input)))
        } else {
            Cow::Borrowed(input)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(pii_detection: bool, hash_inputs: bool) -> PrivacyConfig {
        PrivacyConfig {
            pii_detection,
            hash_inputs,
            ..PrivacyConfig::default()
        }
    }

    #[test]
    fn policy_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<PrivacyPolicy>();
        assert_send_sync::<PiiFilter>();
    }

    #[test]
    fn modes_decide_what_is_uploaded() {
        let input = json!({"text": "mail bob@example.com"});
        let h = KeyedHasher::new(b"k");
        let p = |mode, pii| PrivacyPolicy::new(mode, &config(pii, false), h.clone());
        assert_eq!(p(PrivacyMode::Strict, true).upload_value(&input), None);
        assert_eq!(p(PrivacyMode::Strict, false).upload_value(&input), None);
        let redacted = json!({"text": "mail [EMAIL]"});
        assert_eq!(
            p(PrivacyMode::Balanced, true).upload_value(&input),
            Some(redacted.clone())
        );
        assert_eq!(
            p(PrivacyMode::Permissive, true).upload_value(&input),
            Some(redacted)
        );
        assert_eq!(
            p(PrivacyMode::Permissive, false).upload_value(&input),
            Some(input.clone())
        );
    }

    #[test]
    fn hash_inputs_replaces_local_inputs_by_their_keyed_hash() {
        let input = json!({"text": "078-05-1120"});
        let h = KeyedHasher::new(b"k");
        let p = PrivacyPolicy::new(PrivacyMode::Balanced, &config(true, true), h.clone());
        assert_eq!(
            p.local_input(&input).into_owned(),
            Value::String(h.hash_value(&input))
        );
        let p = PrivacyPolicy::new(PrivacyMode::Balanced, &config(true, false), h);
        assert!(matches!(p.local_input(&input), Cow::Borrowed(_)));
    }

    #[test]
    fn a_12_digit_maestro_never_leaves_the_process_in_any_mode() {
        let input = json!({"text": "Maestro 5018 1234 5673, or 6304-1234-5674"});
        let redacted = json!({"text": "Maestro [CREDIT_CARD], or [CREDIT_CARD]"});
        let h = KeyedHasher::new(b"k");
        for mode in [PrivacyMode::Balanced, PrivacyMode::Permissive] {
            let p = PrivacyPolicy::new(mode, &PrivacyConfig::default(), h.clone());
            assert_eq!(p.upload_value(&input), Some(redacted.clone()), "{mode:?}");
        }
        let strict = PrivacyPolicy::new(PrivacyMode::Strict, &PrivacyConfig::default(), h);
        assert_eq!(strict.upload_value(&input), None);
    }

    #[test]
    fn generated_corpus_recall_is_at_least_99_percent_per_kind() {
        let corpus = corpus::generate(0x5eed_0002, 250);
        let filter = PiiFilter::new();
        let report = corpus::measure(&corpus, |t| {
            filter
                .find(t)
                .into_iter()
                .map(|m| (m.kind, m.range))
                .collect()
        });
        for &(kind, found, total) in &report.found {
            assert!(total >= 250, "{kind}: only {total} instances");
            let recall = found as f64 / total as f64;
            assert!(
                recall >= 0.99,
                "{kind}: recall {recall:.4} ({found}/{total}); misses: {:#?}",
                report
                    .misses
                    .iter()
                    .filter(|(k, _)| *k == kind)
                    .take(10)
                    .collect::<Vec<_>>()
            );
        }
        // Redaction removes every entity, down to its digits.
        for sample in &corpus.positives {
            let redacted = filter.redact(&sample.text);
            let compact: String = redacted.chars().filter(|c| c.is_alphanumeric()).collect();
            for e in &sample.entities {
                assert!(
                    !compact.contains(&e.compact()),
                    "{} -> {redacted}",
                    sample.text
                );
            }
        }
    }

    #[test]
    fn generated_negatives_are_not_redacted() {
        let corpus = corpus::generate(0x5eed_0003, 250);
        let filter = PiiFilter::new();
        let report = corpus::measure(&corpus, |t| {
            filter
                .find(t)
                .into_iter()
                .map(|m| (m.kind, m.range))
                .collect()
        });
        // Invalid entities are never accepted as their kind.
        let wrong: Vec<_> = report
            .false_positives
            .iter()
            .filter(|(_, invalid_of, _, spans)| {
                invalid_of.is_some_and(|kind| spans.iter().any(|(k, _)| *k == kind))
            })
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
        // Deterministic distractors (everything but the digits inside an invalid IBAN,
        // which may legitimately hold a Luhn-valid card number) are never flagged.
        let flagged: Vec<_> = report
            .false_positives
            .iter()
            .filter(|(category, ..)| *category != "invalid_iban")
            .collect();
        assert!(flagged.is_empty(), "{flagged:#?}");
        let inside_iban = report.false_positives.len();
        assert!(inside_iban * 100 <= corpus.negatives.len(), "{inside_iban}");
    }

    /// In strict mode, everything derived from an input for upload is its keyed hash: no
    /// byte sequence of the input (8 bytes or more) appears in it. And `redact_value` over
    /// the generated PII corpus leaves no entity, in any form, in the serialized output.
    #[test]
    fn strict_uploads_and_redacted_values_never_leak_inputs() {
        let corpus = corpus::generate(0x5eed_0001, 60);
        let policy = PrivacyPolicy::new(
            PrivacyMode::Strict,
            &PrivacyConfig::default(),
            KeyedHasher::new(b"k"),
        );
        let filter = PiiFilter::new();
        for sample in &corpus.positives {
            let input = json!({"text": sample.text, "meta": {"raw": [sample.entities[0].raw]}});
            assert_eq!(policy.upload_value(&input), None);
            let payload = json!({"input_hash": policy.input_hash(&input), "output": "ham"});
            let payload = serde_json::to_string(&payload).unwrap();
            let raw = serde_json::to_string(&input).unwrap();
            for window in raw.as_bytes().windows(8) {
                assert!(
                    !payload.as_bytes().windows(8).any(|w| w == window),
                    "strict payload leaks {:?}",
                    String::from_utf8_lossy(window)
                );
            }
            let redacted = serde_json::to_string(&filter.redact_value(&input)).unwrap();
            let compact: String = redacted
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect();
            for entity in &sample.entities {
                assert!(!redacted.contains(&entity.raw), "{redacted}");
                assert!(!compact.contains(&entity.compact()), "{redacted}");
            }
        }
    }
}
