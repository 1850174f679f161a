//! PII detection and redaction: [`PiiFilter`], [`PiiKind`], [`PiiMatch`].
//!
//! Detection is a fixed set of *detectors*, each a linear-time `regex` that proposes
//! candidates and a check that validates them (Luhn, mod-97, octet ranges, SSN rules, digit
//! counts, boundaries). Validated candidates of all detectors are then resolved into
//! non-overlapping matches, longest first, and on equal length by kind specificity
//! (`Email`, `Iban`, `CreditCard`, `Ssn`, `Ip`, `Phone`).
//!
//! Linear time: every regex search is linear; a rejected candidate restarts the search one
//! character after its start, and candidates of the numeric detectors are bounded in length
//! (at most ~170 bytes), so the total work is `O(len * detectors * max_candidate_len)`.
//! E-mail candidates are not bounded but are never re-searched from inside.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv6Addr;
use std::ops::Range;
use std::str::FromStr;
use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

/// The kinds of personal data that [`PiiFilter`] detects.
///
/// New kinds may be added in minor releases, so matches need a wildcard arm.
///
/// ```
/// use loopai_core::PiiKind;
/// assert_eq!(PiiKind::CreditCard.placeholder(), "[CREDIT_CARD]");
/// assert_eq!(PiiKind::CreditCard.name(), "credit_card");
/// assert_eq!(PiiKind::ALL.len(), 6);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PiiKind {
    /// E-mail addresses (`local@domain.tld`, plus-addressing, subdomains, Unicode domains).
    Email,
    /// Phone numbers in international (`+44 20 7946 0958`, `0033 1 42 68 53 00`) and
    /// national (`(415) 555-2671`, `020 7946 0958`, `07700 900123`) formats.
    Phone,
    /// US Social Security numbers (`123-45-6789`, `123 45 6789`) with valid area, group
    /// and serial.
    Ssn,
    /// Payment card numbers: 12–19 digits in a length and IIN range that a card network
    /// issues (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro, Mir,
    /// RuPay, ...), optionally grouped by spaces or dashes, Luhn-valid.
    CreditCard,
    /// IBANs, grouped by 4 or not, with valid length and mod-97 check digits.
    Iban,
    /// IPv4 and IPv6 addresses.
    Ip,
}

impl PiiKind {
    /// Every kind.
    pub const ALL: [PiiKind; 6] = [
        PiiKind::Email,
        PiiKind::Phone,
        PiiKind::Ssn,
        PiiKind::CreditCard,
        PiiKind::Iban,
        PiiKind::Ip,
    ];

    /// The text that replaces a match in redacted output: `[EMAIL]`, `[PHONE]`, `[SSN]`,
    /// `[CREDIT_CARD]`, `[IBAN]` or `[IP]`.
    pub const fn placeholder(self) -> &'static str {
        match self {
            PiiKind::Email => "[EMAIL]",
            PiiKind::Phone => "[PHONE]",
            PiiKind::Ssn => "[SSN]",
            PiiKind::CreditCard => "[CREDIT_CARD]",
            PiiKind::Iban => "[IBAN]",
            PiiKind::Ip => "[IP]",
        }
    }

    /// A short, stable, snake_case name (`"email"`, `"credit_card"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::Ssn => "ssn",
            PiiKind::CreditCard => "credit_card",
            PiiKind::Iban => "iban",
            PiiKind::Ip => "ip",
        }
    }

    /// Overlap tie-breaker: lower is more specific.
    const fn rank(self) -> u8 {
        match self {
            PiiKind::Email => 0,
            PiiKind::Iban => 1,
            PiiKind::CreditCard => 2,
            PiiKind::Ssn => 3,
            PiiKind::Ip => 4,
            PiiKind::Phone => 5,
        }
    }

    const fn bit(self) -> u8 {
        1 << self.rank()
    }
}

impl fmt::Display for PiiKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One detected entity: its kind and its byte range in the text.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PiiMatch {
    /// What was found.
    pub kind: PiiKind,
    /// Where, in bytes (always on `char` boundaries).
    pub range: Range<usize>,
}

/// Finds and redacts personal data in text and JSON values.
///
/// The detectors are compiled once per process and shared, so `PiiFilter::new()` is
/// cheap after the first call; a filter is `Send + Sync` and can be shared freely.
/// [`Default`] enables every [`PiiKind`]. Formats, validation rules and the measured
/// precision are documented in `docs/privacy.md`.
///
/// ```
/// use loopai_core::{PiiFilter, PiiKind};
/// use serde_json::json;
///
/// let filter = PiiFilter::new();
/// assert_eq!(
///     filter.redact("Call +44 20 7946 0958 or mail a.b@c.org"),
///     "Call [PHONE] or mail [EMAIL]"
/// );
/// // Validation: a Luhn-invalid number and an order id are left alone.
/// assert_eq!(filter.redact("order 4111 1111 1111 1112, ref 123456789"),
///            "order 4111 1111 1111 1112, ref 123456789");
///
/// let found = filter.find("card 4111-1111-1111-1111");
/// assert_eq!(found[0].kind, PiiKind::CreditCard);
/// assert_eq!(found[0].range, 5..24);
///
/// let value = json!({"text": "ssn 078-05-1120", "ip": ["10.0.0.1"], "n": 3});
/// assert_eq!(filter.redact_value(&value),
///            json!({"text": "ssn [SSN]", "ip": ["[IP]"], "n": 3}));
///
/// let emails_only = PiiFilter::with_kinds(&[PiiKind::Email]);
/// assert_eq!(emails_only.redact("x@y.io 10.0.0.1"), "[EMAIL] 10.0.0.1");
/// ```
#[derive(Clone, Copy)]
pub struct PiiFilter {
    mask: u8,
    detectors: &'static [Detector],
}

impl fmt::Debug for PiiFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds: Vec<PiiKind> = PiiKind::ALL
            .into_iter()
            .filter(|k| self.mask & k.bit() != 0)
            .collect();
        f.debug_struct("PiiFilter").field("kinds", &kinds).finish()
    }
}

impl Default for PiiFilter {
    fn default() -> Self {
        PiiFilter::new()
    }
}

/// JSON values nested deeper than this are replaced whole by `"[REDACTED]"` in
/// [`PiiFilter::redact_value`] (parsed JSON is at most 128 deep anyway).
const MAX_VALUE_DEPTH: usize = 128;

impl PiiFilter {
    /// A filter for every [`PiiKind`].
    pub fn new() -> Self {
        PiiFilter::with_kinds(&PiiKind::ALL)
    }

    /// A filter for the given kinds only.
    pub fn with_kinds(kinds: &[PiiKind]) -> Self {
        PiiFilter {
            mask: kinds.iter().fold(0, |m, k| m | k.bit()),
            detectors: detectors(),
        }
    }

    /// Whether this filter detects `kind`.
    pub fn detects(&self, kind: PiiKind) -> bool {
        self.mask & kind.bit() != 0
    }

    /// The entities in `text`: validated, non-overlapping, in text order.
    ///
    /// Overlapping candidates resolve to the longest; on equal spans the more specific kind
    /// wins (a Luhn-valid card number beats a phone number).
    pub fn find(&self, text: &str) -> Vec<PiiMatch> {
        let stats = TextStats::of(text);
        if !stats.any() {
            return Vec::new();
        }
        let mut candidates = Vec::new();
        for detector in self.detectors {
            if self.mask & detector.kind.bit() != 0 && stats.allows(detector.check) {
                detector.scan(text, &mut candidates);
            }
        }
        resolve(candidates)
    }

    /// `text` with every entity replaced by its kind's [placeholder](PiiKind::placeholder).
    /// Borrows (no allocation) when nothing is found.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let matches = self.find(text);
        if matches.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for m in matches {
            out.push_str(&text[last..m.range.start]);
            out.push_str(m.kind.placeholder());
            last = m.range.end;
        }
        out.push_str(&text[last..]);
        Cow::Owned(out)
    }

    /// A copy of `value` with every string redacted, recursively.
    ///
    /// Object keys are kept as they are (they are field names, not data). Integers are
    /// checked through their decimal form, so `{"card": 4111111111111111}` becomes
    /// `{"card": "[CREDIT_CARD]"}`. Values nested deeper than 128 levels are replaced by
    /// the string `"[REDACTED]"` rather than risk the stack.
    pub fn redact_value(&self, value: &Value) -> Value {
        self.redact_value_at(value, 0)
    }

    fn redact_value_at(&self, value: &Value, depth: usize) -> Value {
        if depth >= MAX_VALUE_DEPTH {
            return Value::String("[REDACTED]".to_owned());
        }
        match value {
            Value::String(s) => Value::String(self.redact(s).into_owned()),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| self.redact_value_at(v, depth + 1))
                    .collect(),
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.redact_value_at(v, depth + 1)))
                    .collect(),
            ),
            Value::Number(n) if n.is_i64() || n.is_u64() => {
                let digits = n.to_string();
                match self.redact(&digits) {
                    Cow::Owned(redacted) => Value::String(redacted),
                    Cow::Borrowed(_) => value.clone(),
                }
            }
            other => other.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Detectors

/// What validates a detector's candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Email,
    Ssn,
    Card,
    Iban,
    Ipv4,
    Ipv6,
    /// `+CC ...` or `00CC ...`: 7–15 digits (E.164; 8–15 after `00`) without the prefix
    /// and a `(0)` trunk; not SSN-shaped.
    PhoneIntl,
    /// National numbers with a trunk `0`, grouped: 9–12 digits, not a date.
    PhoneNationalGrouped,
    /// Fixed layouts (NANP, `0` + 9–11 digits, a few mobile layouts): boundaries only.
    PhoneFixed,
}

struct Detector {
    kind: PiiKind,
    check: Check,
    regex: Regex,
}

impl fmt::Debug for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Detector")
            .field("kind", &self.kind)
            .field("check", &self.check)
            .field("regex", &self.regex.as_str())
            .finish()
    }
}

/// Separators inside phone numbers: space, `.`, `-`, and their typographic variants as
/// pasted from web pages and word processors (no-break spaces, non-breaking hyphen, en dash).
const SEP: &str = r"[ .\-\x{A0}\x{202F}\x{2011}\x{2013}]";

/// Separators inside international numbers: [`SEP`], or a line break (a number wrapped
/// at the end of a line).
const INTL_SEP: &str = r"(?:[ .\-\x{A0}\x{202F}\x{2011}\x{2013}]|\r?\n)";

fn detector_specs() -> Vec<(PiiKind, Check, String)> {
    let card_sep = r"[ \-\x{A0}\x{202F}\x{2011}\x{2013}]";
    // A parenthesised group inside an international number: `+44 (0)20`, `+1 (415)`.
    const PAREN: &str =
        r"[ .\-\x{A0}\x{202F}\x{2011}\x{2013}]?\(\d{1,5}\)[ .\-\x{A0}\x{202F}\x{2011}\x{2013}]?";
    let mut specs = vec![
        (
            PiiKind::Email,
            Check::Email,
            concat!(
                r"[\p{L}\p{N}!#$%&*+?^_~\-]+(?:['.][\p{L}\p{N}!#$%&*+?^_~\-]+)*@",
                r"(?:[\p{L}\p{N}](?:[\p{L}\p{N}\-]*[\p{L}\p{N}])?\.)+",
                r"(?:xn--[a-zA-Z0-9\-]{1,59}|[a-zA-Z]{2,63}|\p{L}{2,63})"
            )
            .to_owned(),
        ),
        (
            PiiKind::Ssn,
            Check::Ssn,
            r"\d{3}-\d{2}-\d{4}|\d{3} \d{2} \d{4}".to_owned(),
        ),
        (
            PiiKind::Iban,
            Check::Iban,
            r"[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11,30}".to_owned(),
        ),
        (
            PiiKind::Ip,
            Check::Ipv4,
            r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}".to_owned(),
        ),
        (
            PiiKind::Ip,
            Check::Ipv6,
            r"[0-9A-Fa-f]{0,4}(?::(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|[0-9A-Fa-f]{1,4})?){2,8}"
                .to_owned(),
        ),
        (
            PiiKind::CreditCard,
            Check::Card,
            r"[2-689]\d{11,18}".to_owned(),
        ),
        // A line break only after a second group: `+44 20` / `7946 0958`, not `+1500` / `2000`.
        (
            PiiKind::Phone,
            Check::PhoneIntl,
            format!(
                r"(?:(?:\+|00)[1-9]\d{{0,14}}|\(\+[1-9]\d{{0,3}}\))(?:(?:{SEP}|{PAREN})\d{{1,14}}(?:(?:{INTL_SEP}|{PAREN})\d{{1,14}}){{0,7}})?"
            ),
        ),
        (
            PiiKind::Phone,
            Check::PhoneNationalGrouped,
            format!(
                r"(?:\(0[1-9]\d{{0,4}}\){SEP}?|0[1-9]\d{{0,4}}(?:{SEP}|/))\d{{2,8}}(?:{SEP}\d{{2,8}}){{0,4}}"
            ),
        ),
        // A parenthesised area code without a trunk 0 (Brazil, Mexico: (11) 91234-5678),
        // or after the trunk 8 (Russia and neighbours: 8 (495) 123-45-67).
        (
            PiiKind::Phone,
            Check::PhoneNationalGrouped,
            format!(r"(?:\([1-9]\d\)|8 ?\(\d{{3,5}}\)){SEP}?\d{{2,5}}(?:{SEP}\d{{2,5}}){{1,3}}"),
        ),
        // A trunk 0 followed by 9–11 digits: 09061701461, 07700900123.
        (
            PiiKind::Phone,
            Check::PhoneFixed,
            r"0[1-9]\d{8,10}".to_owned(),
        ),
        // NANP: (415) 555-2671, 415.555.2671, 1-800-555-0199.
        (
            PiiKind::Phone,
            Check::PhoneFixed,
            format!(
                r"(?:1{SEP}?)?(?:\([2-9]\d{{2}}\){SEP}?|[2-9]\d{{2}}{SEP})[2-9]\d{{2}}{SEP}\d{{4}}"
            ),
        ),
        // Mobile layouts without a trunk 0: India 98765 43210, Spain 612 34 56 78,
        // China 138 0013 8000.
        (
            PiiKind::Phone,
            Check::PhoneFixed,
            r"[6-9]\d{4}[ \-]\d{5}|[6-9]\d{2}(?: \d{2}){3}|1[3-9]\d[ \-]\d{4}[ \-]\d{4}".to_owned(),
        ),
    ];
    for layout in [
        r"\d{3}S\d{4}S\d{4}S\d{4}",         // 4-4-4-4
        r"\d{3}S\d{4}S\d{4}S\d{4}S\d{1,3}", // 4-4-4-4-3 (17–19 digits)
        r"\d{3}S\d{6}S\d{4,5}",             // 4-6-5 (Amex), 4-6-4 (Diners)
        r"\d{3}S\d{4}S\d{4}S\d{1,3}",       // 13–15 digits
        r"\d{3}S\d{4}S\d{5}",               // 4-4-5
        r"\d{3}S\d{4}S\d{4}",               // 4-4-4 (12-digit Maestro)
    ] {
        specs.push((
            PiiKind::CreditCard,
            Check::Card,
            format!("[2-689]{}", layout.replace('S', card_sep)),
        ));
    }
    specs
}

fn detectors() -> &'static [Detector] {
    static DETECTORS: OnceLock<Vec<Detector>> = OnceLock::new();
    DETECTORS.get_or_init(|| {
        detector_specs()
            .into_iter()
            .filter_map(|(kind, check, pattern)| match Regex::new(&pattern) {
                Ok(regex) => Some(Detector { kind, check, regex }),
                // The patterns are constants covered by tests; never panic at run time.
                Err(e) => {
                    log::error!("privacy: built-in {kind} pattern does not compile: {e}");
                    None
                }
            })
            .collect()
    })
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    kind: PiiKind,
    start: usize,
    end: usize,
}

impl Detector {
    fn scan(&self, text: &str, out: &mut Vec<Candidate>) {
        let mut pos = 0;
        while pos < text.len() {
            let Some(m) = self.regex.find_at(text, pos) else {
                break;
            };
            match self.accept(text, m.start(), m.end()) {
                Some(end) => {
                    out.push(Candidate {
                        kind: self.kind,
                        start: m.start(),
                        end,
                    });
                    pos = end;
                }
                // E-mail candidates are unbounded: never re-search inside them.
                None if self.check == Check::Email => pos = m.end(),
                None => pos = next_char_boundary(text, m.start()),
            }
        }
    }

    /// The end of the accepted entity starting at `start` (at most `end`), if any.
    fn accept(&self, text: &str, start: usize, end: usize) -> Option<usize> {
        let s = &text[start..end];
        match self.check {
            Check::Email => email_ok(text, start, end).then_some(end),
            Check::Ssn => (ssn_ok(s) && numeric_boundary(text, start, end, "-./:")).then_some(end),
            Check::Card => (card_ok(s)
                && numeric_boundary(text, start, end, "-./:")
                && !after_digit_group(text, start)
                && !(count_digits(s) == 12 && continues_grouped(text, end)))
            .then_some(end),
            Check::Iban => iban_end(text, start, end),
            Check::Ipv4 => (ipv4_ok(s) && numeric_boundary(text, start, end, ".")).then_some(end),
            Check::Ipv6 => ipv6_end(text, start, end),
            Check::PhoneIntl => {
                let valid = |len: &usize| {
                    let sub = &s[..*len];
                    let min = if sub.starts_with("00") { 8 } else { 7 };
                    (min..=15).contains(&intl_phone_digits(sub))
                        && !ssn_shaped(sub)
                        && !after_digit_group(text, start)
                        && numeric_boundary(text, start, start + len, "-./:")
                };
                // Across a line break only when the first line alone is not a number: a
                // complete number ends at the end of its line (the next may start a card).
                let first_line = s.find(['\r', '\n']).unwrap_or(s.len());
                group_ends(&s[..first_line])
                    .find(valid)
                    .or_else(|| group_ends(s).find(|&len| len > first_line && valid(&len)))
                    .map(|len| start + len)
            }
            Check::PhoneNationalGrouped => group_ends(s)
                .find(|&len| {
                    let sub = &s[..len];
                    (9..=12).contains(&count_digits(sub))
                        && !looks_like_date(sub)
                        && !looks_like_date(after_paren(sub))
                        && !year_range(after_paren(sub))
                        && !ssn_shaped(sub)
                        && !after_digit_group(text, start)
                        && numeric_boundary(text, start, start + len, "-./:")
                })
                .map(|len| start + len),
            Check::PhoneFixed => (numeric_boundary(text, start, end, "-./:")
                && !after_digit_group(text, start))
            .then_some(end),
        }
    }
}

/// Which detectors can possibly match, from one pass over the bytes.
#[derive(Debug, Clone, Copy)]
struct TextStats {
    digits: usize,
    at: bool,
    colons: usize,
}

impl TextStats {
    fn of(text: &str) -> TextStats {
        let mut stats = TextStats {
            digits: 0,
            at: false,
            colons: 0,
        };
        for &b in text.as_bytes() {
            match b {
                b'0'..=b'9' => stats.digits += 1,
                b'@' => stats.at = true,
                b':' => stats.colons += 1,
                _ => {}
            }
        }
        stats
    }

    fn any(&self) -> bool {
        self.at || self.colons >= 2 || self.digits >= 4
    }

    fn allows(&self, check: Check) -> bool {
        match check {
            Check::Email => self.at,
            Check::Ipv6 => self.colons >= 2,
            Check::Ipv4 | Check::Iban => self.digits >= 4,
            _ => self.digits >= 7,
        }
    }
}

/// Longest first, then most specific kind; then back into text order.
fn resolve(mut candidates: Vec<Candidate>) -> Vec<PiiMatch> {
    if candidates.len() > 1 {
        candidates.sort_by(|a, b| {
            (b.end - b.start)
                .cmp(&(a.end - a.start))
                .then(a.kind.rank().cmp(&b.kind.rank()))
                .then(a.start.cmp(&b.start))
        });
    }
    let mut chosen: BTreeMap<usize, (usize, PiiKind)> = BTreeMap::new();
    for c in candidates {
        let before = chosen
            .range(..=c.start)
            .next_back()
            .is_some_and(|(_, &(end, _))| end > c.start);
        let after = chosen
            .range(c.start..)
            .next()
            .is_some_and(|(&start, _)| start < c.end);
        if !before && !after {
            chosen.insert(c.start, (c.end, c.kind));
        }
    }
    chosen
        .into_iter()
        .map(|(start, (end, kind))| PiiMatch {
            kind,
            range: start..end,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Checks

fn next_char_boundary(text: &str, i: usize) -> usize {
    let mut j = i + 1;
    while j < text.len() && !text.is_char_boundary(j) {
        j += 1;
    }
    j
}

fn char_before(text: &str, i: usize) -> Option<char> {
    text[..i].chars().next_back()
}

fn char_after(text: &str, i: usize) -> Option<char> {
    text[i..].chars().next()
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether a number next to `c` is glued to a word: a letter, digit or `_`, except the
/// letters of scripts written without spaces between words (Han, kana, Hangul, Thai),
/// where a number directly follows or precedes the text around it (`電話番号は090-1234-5678です`).
fn glues(c: char) -> bool {
    is_word(c) && !spaceless_script(c)
}

fn spaceless_script(c: char) -> bool {
    matches!(c,
        '\u{0E00}'..='\u{0E7F}'     // Thai
        | '\u{1100}'..='\u{11FF}'   // Hangul Jamo
        | '\u{3040}'..='\u{30FF}'   // Hiragana, Katakana
        | '\u{3130}'..='\u{318F}'   // Hangul compatibility Jamo
        | '\u{3400}'..='\u{4DBF}'   // CJK extension A
        | '\u{4E00}'..='\u{9FFF}'   // CJK unified ideographs
        | '\u{AC00}'..='\u{D7AF}'   // Hangul syllables
        | '\u{F900}'..='\u{FAFF}'   // CJK compatibility ideographs
        | '\u{FF66}'..='\u{FF9F}'   // half-width Katakana
    )
}

/// Not glued to a word, and not part of a longer number joined by one of `joiners`
/// (`1.2.3.4.5`, `12-123-45-6789`). A leading `-`, `.`, `/` or `:` after a digit counts
/// as a joiner on the left whatever `joiners` says.
fn numeric_boundary(text: &str, start: usize, end: usize, joiners: &str) -> bool {
    if let Some(c) = char_before(text, start) {
        if glues(c) {
            return false;
        }
        if "-./:".contains(c)
            && char_before(text, start - c.len_utf8()).is_some_and(|d| d.is_ascii_digit())
        {
            return false;
        }
    }
    if let Some(c) = char_after(text, end) {
        if glues(c) {
            return false;
        }
        if joiners.contains(c)
            && char_after(text, end + c.len_utf8()).is_some_and(|d| d.is_ascii_digit())
        {
            return false;
        }
    }
    true
}

/// Whether `start` follows one space after a group that makes it the middle of a longer
/// grouped number: 3 or more digits (`6564 0038 4475 4799`, but not `£1.50 0870...`), or
/// an IBAN-like group of 4 upper-case letters and digits with a digit (`DE84 4045 ...`).
fn after_digit_group(text: &str, start: usize) -> bool {
    let Some(before) = text[..start].strip_suffix(' ') else {
        return false;
    };
    let token: Vec<u8> = before
        .bytes()
        .rev()
        .take_while(u8::is_ascii_alphanumeric)
        .take(5)
        .collect();
    let digits = token.iter().take_while(|b| b.is_ascii_digit()).count();
    digits >= 3
        || (token.len() == 4
            && token.iter().any(u8::is_ascii_digit)
            && token
                .iter()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()))
}

/// Lengths of the prefixes of `s` that end a digit group, longest first.
fn group_ends(s: &str) -> impl Iterator<Item = usize> + '_ {
    let bytes = s.as_bytes();
    (1..=bytes.len()).rev().filter(move |&i| {
        bytes[i - 1].is_ascii_digit() && (i == bytes.len() || !bytes[i].is_ascii_digit())
    })
}

fn count_digits(s: &str) -> usize {
    s.bytes().filter(u8::is_ascii_digit).count()
}

fn digits_of(s: &str) -> impl Iterator<Item = u32> + '_ {
    s.bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| u32::from(b - b'0'))
}

/// Digits of an international number, without the `00` prefix and a `(0)` trunk.
fn intl_phone_digits(s: &str) -> usize {
    let prefix = if s.starts_with("00") { 2 } else { 0 };
    let trunk = if s.contains("(0)") { 1 } else { 0 };
    count_digits(s).saturating_sub(prefix + trunk)
}

/// `dd.mm.yyyy`, `yyyy-mm-dd` and the like at the start of `s` (`dd.mm.yy` only when at
/// most one more group follows: `01 05 12 34 56` is a French phone number).
fn looks_like_date(s: &str) -> bool {
    let groups: Vec<&str> = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    if groups.len() < 3 {
        return false;
    }
    let n = |g: &str| g.parse::<u32>().unwrap_or(u32::MAX);
    let (a, b, c) = (groups[0], groups[1], groups[2]);
    let day_month = |d: &str, m: &str| {
        d.len() <= 2 && m.len() <= 2 && (1..=31).contains(&n(d)) && (1..=12).contains(&n(m))
    };
    let long_year = |y: &str| y.len() == 4 && (1900..=2099).contains(&n(y));
    let year = |y: &str| long_year(y) || (y.len() == 2 && groups.len() <= 4);
    ((day_month(a, b) || day_month(b, a)) && year(c)) || (long_year(a) && day_month(c, b))
}

/// The text after a parenthesised area code, or all of `s`.
fn after_paren(s: &str) -> &str {
    s.split_once(')').map_or(s, |(_, rest)| rest)
}

/// Exactly two 4-digit years 1900–2099: `2019-2020` (after an area code: `(10) 2019-2020`).
fn year_range(s: &str) -> bool {
    let groups: Vec<&str> = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    groups.len() == 2
        && groups
            .iter()
            .all(|g| g.len() == 4 && g.parse::<u32>().is_ok_and(|y| (1900..=2099).contains(&y)))
}

fn email_ok(text: &str, start: usize, end: usize) -> bool {
    let s = &text[start..end];
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    local.len() <= 64
        && domain.len() <= 253
        && domain.split('.').all(|label| label.len() <= 63)
        && !char_before(text, start).is_some_and(|c| c == '@' || c == '.')
}

/// `ddd-dd-dddd` or `ddd dd dddd`: left to the SSN detector, valid or not.
fn ssn_shaped(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 11
        && (b[3] == b'-' || b[3] == b' ')
        && b[6] == b[3]
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 3 || i == 6 || c.is_ascii_digit())
}

/// US SSN: area not 000, 666 or 9xx; group not 00; serial not 0000.
fn ssn_ok(s: &str) -> bool {
    let d: Vec<u32> = digits_of(s).collect();
    if d.len() != 9 {
        return false;
    }
    let area = d[0] * 100 + d[1] * 10 + d[2];
    let group = d[3] * 10 + d[4];
    let serial = d[5] * 1000 + d[6] * 100 + d[7] * 10 + d[8];
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// 12–19 digits in a length and IIN range that a network issues ([`card_network`]), one
/// kind of separator at most, Luhn-valid.
fn card_ok(s: &str) -> bool {
    let mut separators = s.chars().filter(|c| !c.is_ascii_digit());
    if let Some(first) = separators.next() {
        if separators.any(|c| c != first) {
            return false;
        }
    }
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_digit).collect();
    card_network(&digits).is_some() && luhn_ok(s)
}

/// Whether a grouped number goes on after `end`: a separator and a digit (`5018 1234 5673`
/// is the start of `5018 1234 5673 0001`, not a 12-digit card).
fn continues_grouped(text: &str, end: usize) -> bool {
    char_after(text, end).is_some_and(|sep| {
        CARD_SEPARATORS.contains(&sep)
            && char_after(text, end + sep.len_utf8()).is_some_and(|d| d.is_ascii_digit())
    })
}

/// What may separate the groups of a card number (the `card_sep` of the detectors).
const CARD_SEPARATORS: &[char] = &[' ', '-', '\u{A0}', '\u{202F}', '\u{2011}', '\u{2013}'];

/// One row of [`CARD_IINS`]: the number's first digits, read as a number of as many digits
/// as `lo`, lie in `lo..=hi`, and the number has a length in `lengths`.
struct Iin {
    network: &'static str,
    lo: u32,
    hi: u32,
    lengths: &'static [usize],
}

const fn iin(network: &'static str, lo: u32, hi: u32, lengths: &'static [usize]) -> Iin {
    Iin {
        network,
        lo,
        hi,
        lengths,
    }
}

const LEN_12_19: &[usize] = &[12, 13, 14, 15, 16, 17, 18, 19];
const LEN_14_19: &[usize] = &[14, 15, 16, 17, 18, 19];
const LEN_16_19: &[usize] = &[16, 17, 18, 19];
const LEN_16: &[usize] = &[16];

/// The IIN ranges and lengths that card networks issue (the networks' published tables, as
/// collected by ISO/IEC 7812 registries). A Luhn-valid number outside them (an order id,
/// a timestamp) is not a card. Maestro alone issues 12- and 13-digit numbers besides
/// Visa's 13, and only from its own IINs; its wider 50 and 56–69 ranges count from 16
/// digits, so that EAN-13 barcodes and 12-digit ids starting with 5 or 6 stay numbers.
/// The first row that matches names the network.
const CARD_IINS: &[Iin] = &[
    iin("Visa", 4, 4, &[13, 16, 19]),
    iin("Mastercard", 51, 55, LEN_16),
    iin("Mastercard", 2221, 2720, LEN_16),
    iin("American Express", 34, 34, &[15]),
    iin("American Express", 37, 37, &[15]),
    iin("Diners Club", 300, 305, LEN_14_19),
    iin("Diners Club", 3095, 3095, LEN_14_19),
    iin("Diners Club", 36, 36, LEN_14_19),
    iin("Diners Club", 38, 39, LEN_14_19),
    iin("Discover", 6011, 6011, LEN_16_19),
    iin("Discover", 644, 649, LEN_16_19),
    iin("Discover", 65, 65, LEN_16_19),
    iin("JCB", 3528, 3589, LEN_16_19),
    iin("UnionPay", 62, 62, LEN_16_19),
    iin("Maestro", 5018, 5018, LEN_12_19),
    iin("Maestro", 5020, 5020, LEN_12_19),
    iin("Maestro", 5038, 5038, LEN_12_19),
    iin("Maestro", 5893, 5893, LEN_12_19),
    iin("Maestro", 6304, 6304, LEN_12_19),
    iin("Maestro", 6759, 6759, LEN_12_19),
    iin("Maestro", 6761, 6763, LEN_12_19),
    iin("Maestro", 676770, 676770, LEN_12_19),
    iin("Maestro", 676774, 676774, LEN_12_19),
    iin("Mir", 2200, 2204, LEN_16_19),
    iin("BORICA", 2205, 2205, LEN_16),
    iin("RuPay", 60, 60, LEN_16),
    iin("RuPay", 81, 82, LEN_16),
    iin("RuPay", 508, 508, LEN_16),
    iin("Troy", 9792, 9792, LEN_16),
    iin("Verve", 506099, 506198, &[16, 18, 19]),
    iin("Verve", 507865, 507964, &[16, 18, 19]),
    iin("Verve", 650002, 650027, &[16, 18, 19]),
    iin("Dankort", 5019, 5019, LEN_16),
    iin("InterPayment", 636, 636, LEN_16_19),
    iin("UzCard", 8600, 8600, LEN_16),
    iin("Humo", 9860, 9860, LEN_16),
    // Last: the wide ranges, after the networks that issue inside them.
    iin("Maestro", 50, 50, LEN_16_19),
    iin("Maestro", 56, 69, LEN_16_19),
];

/// The network that issues card numbers with these digits (IIN range and length), if any.
fn card_network(digits: &[u8]) -> Option<&'static str> {
    CARD_IINS
        .iter()
        .find(|iin| {
            let width = iin.lo.checked_ilog10().map_or(1, |l| l as usize + 1);
            iin.lengths.contains(&digits.len())
                && digits.len() >= width
                && digits[..width]
                    .iter()
                    .try_fold(0u32, |n, &d| {
                        d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
                    })
                    .is_some_and(|prefix| (iin.lo..=iin.hi).contains(&prefix))
        })
        .map(|iin| iin.network)
}

/// The Luhn checksum over the digits of `s`.
pub(crate) fn luhn_ok(s: &str) -> bool {
    let digits: Vec<u32> = digits_of(s).collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    !digits.is_empty() && sum % 10 == 0
}

/// IBAN lengths per country (the SWIFT IBAN registry); other countries: 15–34.
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BR", 29),
    ("BY", 28),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("GT", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IQ", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LC", 32),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NL", 18),
    ("NO", 15),
    ("PK", 24),
    ("PL", 28),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("SA", 24),
    ("SC", 31),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("ST", 25),
    ("SV", 28),
    ("TL", 23),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VA", 22),
    ("VG", 24),
    ("XK", 20),
];

/// Valid length for its country and `mod 97 == 1`; `s` may contain spaces. Letters may
/// be upper or lower case; one with a lower-case letter must name a registry country.
pub(crate) fn iban_ok(s: &str) -> bool {
    let lower = s.bytes().any(|b| b.is_ascii_lowercase());
    let compact: Vec<u8> = s
        .bytes()
        .filter(|&b| b != b' ')
        .map(|b| b.to_ascii_uppercase())
        .collect();
    let len = compact.len();
    if !(15..=34).contains(&len) {
        return false;
    }
    let country = std::str::from_utf8(&compact[..2]).unwrap_or("");
    match IBAN_LENGTHS.binary_search_by(|(c, _)| c.cmp(&country)) {
        Ok(i) if IBAN_LENGTHS[i].1 != len => return false,
        Err(_) if lower => return false,
        _ => {}
    }
    iban_mod97(&compact) == Some(1)
}

/// The IBAN remainder: first four characters moved to the end, letters as 10..=35.
pub(crate) fn iban_mod97(compact: &[u8]) -> Option<u32> {
    let mut rem: u32 = 0;
    for &b in compact[4..].iter().chain(&compact[..4]) {
        rem = match b {
            b'0'..=b'9' => (rem * 10 + u32::from(b - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(b - b'A') + 10) % 97,
            _ => return None,
        };
    }
    Some(rem)
}

/// The end of a valid IBAN at `start`, dropping trailing groups that are not part of it.
fn iban_end(text: &str, start: usize, end: usize) -> Option<usize> {
    let mut end = end;
    loop {
        let s = &text[start..end];
        if iban_ok(s) && word_boundary(text, start, end) {
            return Some(end);
        }
        end = start + s.rfind(' ')?;
    }
}

fn word_boundary(text: &str, start: usize, end: usize) -> bool {
    !char_before(text, start).is_some_and(glues) && !char_after(text, end).is_some_and(glues)
}

fn ipv4_ok(s: &str) -> bool {
    s.split('.')
        .all(|o| o.parse::<u32>().is_ok_and(|v| v <= 255))
}

/// A valid IPv6 address with at least two non-empty groups and four hex digits (so that
/// `::1`, `a::b` and `C::D` in code are not addresses), a trailing `:` dropped if need be.
fn ipv6_end(text: &str, start: usize, end: usize) -> Option<usize> {
    let mut s = &text[start..end];
    if Ipv6Addr::from_str(s).is_err() {
        s = s.strip_suffix(':')?;
        Ipv6Addr::from_str(s).ok()?;
    }
    let end = start + s.len();
    let groups = s.split([':', '.']).filter(|g| !g.is_empty()).count();
    let hex = s.bytes().filter(u8::is_ascii_hexdigit).count();
    let before_ok = !char_before(text, start).is_some_and(|c| glues(c) || c == ':' || c == '.');
    let after_ok = match char_after(text, end) {
        None => true,
        Some(c) if glues(c) => false,
        Some(c @ (':' | '.')) => {
            !char_after(text, end + c.len_utf8()).is_some_and(|d| d.is_ascii_hexdigit())
        }
        Some(_) => true,
    };
    (groups >= 2 && hex >= 4 && before_ok && after_ok).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kinds(text: &str) -> Vec<(PiiKind, &str)> {
        PiiFilter::new()
            .find(text)
            .into_iter()
            .map(|m| (m.kind, &text[m.range]))
            .collect()
    }

    #[test]
    fn every_builtin_pattern_compiles() {
        assert_eq!(detectors().len(), detector_specs().len());
    }

    #[test]
    fn filter_is_send_sync_and_cheap_to_copy() {
        fn assert_send_sync<T: Send + Sync + Copy>() {}
        assert_send_sync::<PiiFilter>();
    }

    #[test]
    fn brief_example_redacts_phone_and_email() {
        assert_eq!(
            PiiFilter::new().redact("Call +44 20 7946 0958 or mail a.b@c.org"),
            "Call [PHONE] or mail [EMAIL]"
        );
    }

    #[test]
    fn clean_text_is_borrowed() {
        let text = "Ok lar... Joking wif u oni... see you at 10:30 on 2024-01-15, £1000";
        assert!(matches!(PiiFilter::new().redact(text), Cow::Borrowed(_)));
    }

    #[test]
    fn phone_formats_from_the_issue_are_found_whole() {
        for phone in [
            "+1 (415) 555-2671",
            "415-555-2671",
            "(415) 555 2671",
            "415.555.2671",
            "+44 20 7946 0958",
            "+44 (0)20 7946 0958",
            "020 7946 0958",
            "07700 900123",
            "+49 30 901820",
            "+33 1 42 68 53 00",
            "+91 98765 43210",
            "0033 1 42 68 53 00",
            "+1-800-555-0199",
            "1-800-555-0199",
            "09061701461",
            "+4915112345678",
            "030/901820",
            "98765 43210",
            "612 34 56 78",
        ] {
            let text = format!("call {phone}, thanks");
            assert_eq!(kinds(&text), vec![(PiiKind::Phone, phone)], "{text}");
        }
    }

    #[test]
    fn numbers_that_are_not_phones_are_left_alone() {
        for text in [
            "order 123456789 shipped",
            "it costs £1000 or $2,500.00",
            "back in 2024, at 10:30",
            "on 2024-01-15 and 15.01.2024 and 01/02/2024 12 people",
            "text STOP to 87121",
            "version 1.2.3.4.5 released",
            "999.1.1.1 is no address",
            "4111 1111 1111 1112 fails Luhn",
            "GB82 WEST 1234 5698 7654 33 has a bad check",
            "ssn 666-12-3456 or 123-00-4567 or 912-12-3456",
            "4155552671 is a bare number",
            "Result::Ok and std::vec and 10:30:45",
        ] {
            assert_eq!(kinds(text), vec![], "{text}");
        }
    }

    #[test]
    fn other_kinds_are_found() {
        assert_eq!(kinds("x 078-05-1120."), vec![(PiiKind::Ssn, "078-05-1120")]);
        assert_eq!(
            kinds("pay to GB82 WEST 1234 5698 7654 32 EUR"),
            vec![(PiiKind::Iban, "GB82 WEST 1234 5698 7654 32")]
        );
        assert_eq!(
            kinds("DE89370400440532013000."),
            vec![(PiiKind::Iban, "DE89370400440532013000")]
        );
        assert_eq!(
            kinds("amex 3782 822463 10005!"),
            vec![(PiiKind::CreditCard, "3782 822463 10005")]
        );
        assert_eq!(
            kinds("host 192.168.1.20:8080 and [2001:db8::8a2e:370:7334]:443"),
            vec![
                (PiiKind::Ip, "192.168.1.20"),
                (PiiKind::Ip, "2001:db8::8a2e:370:7334")
            ]
        );
        assert_eq!(
            kinds("mapped ::ffff:192.0.2.128 here"),
            vec![(PiiKind::Ip, "::ffff:192.0.2.128")]
        );
        assert_eq!(
            kinds("mail jane.doe+news@mail.example.co.uk, or jürgen@bücher.de"),
            vec![
                (PiiKind::Email, "jane.doe+news@mail.example.co.uk"),
                (PiiKind::Email, "jürgen@bücher.de")
            ]
        );
    }

    #[test]
    fn card_beats_phone_on_the_same_span_and_longest_wins() {
        // 16 digits with a trunk 0 would be too long for a phone; a Luhn-valid 13-digit
        // number starting like a national phone is a card.
        let text = "4012888888881881";
        assert_eq!(kinds(text), vec![(PiiKind::CreditCard, text)]);
        let text = "john.4155552671@example.com";
        assert_eq!(kinds(text), vec![(PiiKind::Email, text)]);
    }

    #[test]
    fn cards_of_12_to_19_digits_are_found_in_their_networks_ranges() {
        for text in [
            "5018 1234 5673",            // Maestro, 12 digits
            "6304-1234-5674",            // Maestro, 12 digits, dashes
            "675912345674",              // Maestro, 12 digits, bare
            "6759\u{a0}0012\u{a0}34561", // Maestro, 13 digits, no-break spaces
            "2204 1234 5678 9015",       // Mir
            "8171 1234 5678 9011",       // RuPay
            "9792 1234 5678 9018",       // Troy
            "6763 1234 5678 9012 344",   // Maestro, 19 digits
        ] {
            assert_eq!(
                kinds(&format!("card {text}.")),
                vec![(PiiKind::CreditCard, text)]
            );
        }
        assert_eq!(card_network(b"501812345673"), Some("Maestro"));
        assert_eq!(card_network(b"2720123456789010"), Some("Mastercard"));
        assert_eq!(card_network(b"5060991234567895"), Some("Verve"));
    }

    #[test]
    fn luhn_valid_numbers_outside_every_iin_range_or_length_are_not_cards() {
        for text in [
            "ts 20240315103000 ok",              // 14 digits, 2024 is no IIN
            "ref 2000 1234 5678 9011",           // 16 digits, 2000 is no IIN
            "order #412312345678 shipped",       // Visa issues no 12-digit numbers
            "event_us=1710123456789014",         // nothing starts with 1
            "card 5018 1234 5673 0001 declined", // a 12-digit Maestro prefix of a longer number
        ] {
            assert_eq!(kinds(text), vec![], "{text}");
        }
        assert_eq!(card_network(b"412312345678"), None);
        assert_eq!(card_network(b"6011123456789"), None);
    }

    #[test]
    fn kinds_can_be_selected() {
        let f = PiiFilter::with_kinds(&[PiiKind::Ip]);
        assert!(f.detects(PiiKind::Ip) && !f.detects(PiiKind::Email));
        assert_eq!(f.redact("a@b.io 10.1.2.3"), "a@b.io [IP]");
    }

    #[test]
    fn redact_value_keeps_keys_and_checks_integers() {
        let v = json!({"a@b.io": ["c@d.io", {"n": 4111111111111111_u64, "f": 1.5, "b": true}]});
        assert_eq!(
            PiiFilter::new().redact_value(&v),
            json!({"a@b.io": ["[EMAIL]", {"n": "[CREDIT_CARD]", "f": 1.5, "b": true}]})
        );
    }

    #[test]
    fn deep_values_are_replaced_not_recursed() {
        let mut v = json!("x@y.io");
        for _ in 0..200 {
            v = json!([v]);
        }
        let out = PiiFilter::new().redact_value(&v);
        assert!(!serde_json::to_string(&out).unwrap().contains("x@y.io"));
    }

    #[test]
    fn validators() {
        assert!(luhn_ok("4111111111111111") && !luhn_ok("4111111111111112"));
        assert!(iban_ok("DE89 3704 0044 0532 0130 00"));
        assert!(!iban_ok("DE89 3704 0044 0532 0130 0")); // wrong length for DE
        assert!(ssn_ok("078-05-1120") && !ssn_ok("000-12-3456") && !ssn_ok("123-45-0000"));
        assert!(looks_like_date("01-02-2024 12") && looks_like_date("2024.01.15 10"));
        assert!(!looks_like_date("020 7946 0958") && !looks_like_date("07.31.45.57.85"));
    }

    #[test]
    fn adversarial_inputs_stay_fast_and_do_not_panic() {
        let f = PiiFilter::new();
        for unit in [
            "1.", "1-", "1 ", "a:", "+1 ", "é1", "@a.", "00", "::", "+1 2\n", "(11) 2", "a1 ",
        ] {
            let text = unit.repeat(20_000);
            let _ = f.find(&text);
        }
    }
}
