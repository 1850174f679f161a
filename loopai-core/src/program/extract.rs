//! Extraction fields (`output.kind = "extract"`): their JSON form, compilation, and the
//! evaluation of one field — find the value with a regex (the `occurrence`-th match whose
//! capture normalises), fall back to further patterns, normalise it to the field's type
//! (numbers in several notations, dates to ISO 8601, a mapping table for strings).
//!
//! The normalisations are part of the format (`docs/program-format.md`) and are exported
//! (through `loopai_core::__private::extract`) so that a generator reproduces the runtime
//! exactly.

use std::collections::{BTreeMap, HashSet};

use regex::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::Result;
use crate::program::raw::{check_name, idx, join, perr, typed};

/// Most fallback patterns of one field.
const MAX_FALLBACKS: usize = 16;
/// Most date formats of one field, and the longest one in bytes.
const MAX_DATE_FORMATS: usize = 32;
const MAX_DATE_FORMAT_BYTES: usize = 64;
/// Most entries of a field's `map`, and the longest key or value in bytes.
const MAX_MAP_ENTRIES: usize = 4096;
const MAX_MAP_BYTES: usize = 256;
/// `occurrence` lies in `-MAX_OCCURRENCE..MAX_OCCURRENCE`.
const MAX_OCCURRENCE: i64 = 64;
/// Largest integer an `integer` field returns (2^53, exact in every JSON reader).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_992.0;

// ---------------------------------------------------------------------------------------
// JSON form

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExtractOutput {
    #[allow(dead_code)]
    pub(super) kind: String,
    pub(super) source: String,
    pub(super) fields: Vec<RawExtractField>,
    #[serde(default)]
    pub(super) abstain_below: f64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawGroup {
    Index(usize),
    Name(String),
}

#[derive(Deserialize, Clone, Copy, Default)]
#[serde(rename_all = "snake_case")]
enum RawFieldType {
    #[default]
    String,
    Number,
    Integer,
    Date,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExtractField {
    pub(super) name: String,
    pattern: String,
    #[serde(default)]
    group: Option<RawGroup>,
    #[serde(default)]
    occurrence: i64,
    #[serde(default)]
    fallbacks: Vec<RawAlternative>,
    #[serde(default, rename = "type")]
    ty: RawFieldType,
    #[serde(default = "yes")]
    required: bool,
    #[serde(default)]
    number_format: Option<NumberFormat>,
    #[serde(default)]
    formats: Option<Vec<String>>,
    #[serde(default)]
    map: Option<BTreeMap<String, String>>,
    #[serde(default)]
    case: Option<Case>,
    #[serde(default)]
    confidence_found: Option<f64>,
    #[serde(default)]
    confidence_missing: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlternative {
    pattern: String,
    #[serde(default)]
    group: Option<RawGroup>,
    #[serde(default)]
    occurrence: i64,
}

fn yes() -> bool {
    true
}

/// How a `number` or `integer` field reads the digits it captured.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum NumberFormat {
    /// The trimmed text as a JSON-like decimal (`1234.5`, `-3e2`); the default.
    #[default]
    Plain,
    /// `.` is the decimal point; `,`, spaces and apostrophes group digits (`1,234.50`).
    Dot,
    /// `,` is the decimal point; `.`, spaces and apostrophes group digits (`1.234,50`).
    Comma,
    /// Decided per value: with both `.` and `,` the later one is the decimal point; with
    /// one of them once, it groups digits when exactly three digits follow it and the
    /// digits before it are 1–3 and do not start with 0 (`1.234` is 1234, `12.50` is 12.5),
    /// and is the decimal point otherwise; used more than once, it groups digits.
    Auto,
}

/// Case change of a `string` field's value.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Case {
    Upper,
    Lower,
}

// ---------------------------------------------------------------------------------------
// Plan

/// Which capture group holds the value.
#[derive(Debug, Clone, Copy)]
enum Group {
    /// This group.
    Index(usize),
    /// The first group that took part in the match (`"group": "*"`): lets one pattern
    /// offer the value in several contexts.
    FirstParticipating,
}

#[derive(Debug)]
struct Locator {
    regex: Regex,
    group: Group,
    occurrence: i64,
}

#[derive(Debug)]
enum Normalize {
    String {
        map: BTreeMap<String, String>,
        case: Option<Case>,
    },
    Number(NumberFormat),
    Integer(NumberFormat),
    Date(Vec<DateFormat>),
}

/// A compiled extraction field.
#[derive(Debug)]
pub(crate) struct ExtractField {
    pub name: String,
    locators: Vec<Locator>,
    normalize: Normalize,
    pub required: bool,
    pub confidence_found: f64,
    pub confidence_missing: f64,
}

/// Compiles one field; `regex` compiles a pattern within the program's limits (errors
/// name the path given).
pub(super) fn compile_field(
    f: &RawExtractField,
    path: &str,
    regex: &mut dyn FnMut(&str, &str) -> Result<Regex>,
) -> Result<ExtractField> {
    check_name(&f.name, &join(path, "name"))?;
    if f.fallbacks.len() > MAX_FALLBACKS {
        return Err(perr(
            &join(path, "fallbacks"),
            format!("at most {MAX_FALLBACKS} fallback patterns"),
        ));
    }
    let mut locators = vec![locator(
        &f.pattern,
        f.group.as_ref(),
        f.occurrence,
        path,
        regex,
    )?];
    for (i, alt) in f.fallbacks.iter().enumerate() {
        locators.push(locator(
            &alt.pattern,
            alt.group.as_ref(),
            alt.occurrence,
            &idx(&join(path, "fallbacks"), i),
            regex,
        )?);
    }
    let only = |key: &str, given: bool, kinds: &str| -> Result<()> {
        if given {
            Err(perr(
                &join(path, key),
                format!("only allowed with \"type\": {kinds}"),
            ))
        } else {
            Ok(())
        }
    };
    let numeric = matches!(f.ty, RawFieldType::Number | RawFieldType::Integer);
    let string = matches!(f.ty, RawFieldType::String);
    only(
        "number_format",
        f.number_format.is_some() && !numeric,
        "\"number\" or \"integer\"",
    )?;
    only(
        "formats",
        f.formats.is_some() && !matches!(f.ty, RawFieldType::Date),
        "\"date\"",
    )?;
    only("map", f.map.is_some() && !string, "\"string\"")?;
    only("case", f.case.is_some() && !string, "\"string\"")?;
    let normalize = match f.ty {
        RawFieldType::String => {
            let map = f.map.clone().unwrap_or_default();
            if map.len() > MAX_MAP_ENTRIES {
                return Err(perr(
                    &join(path, "map"),
                    format!("{} entries, at most {MAX_MAP_ENTRIES}", map.len()),
                ));
            }
            if let Some((k, _)) = map
                .iter()
                .find(|(k, v)| k.len() > MAX_MAP_BYTES || v.len() > MAX_MAP_BYTES)
            {
                return Err(perr(
                    &join(path, "map"),
                    format!("entry {k:.40?}: keys and values are at most {MAX_MAP_BYTES} bytes"),
                ));
            }
            Normalize::String { map, case: f.case }
        }
        RawFieldType::Number => Normalize::Number(f.number_format.unwrap_or_default()),
        RawFieldType::Integer => Normalize::Integer(f.number_format.unwrap_or_default()),
        RawFieldType::Date => {
            let fpath = join(path, "formats");
            let Some(formats) = &f.formats else {
                return Err(perr(
                    &fpath,
                    "missing (a date field lists its formats, e.g. [\"%d.%m.%Y\", \"%B %d, %Y\"])",
                ));
            };
            if formats.is_empty() || formats.len() > MAX_DATE_FORMATS {
                return Err(perr(
                    &fpath,
                    format!("between 1 and {MAX_DATE_FORMATS} formats are required"),
                ));
            }
            let mut parsed = Vec::new();
            for (i, s) in formats.iter().enumerate() {
                parsed.push(DateFormat::parse(s).map_err(|e| perr(&idx(&fpath, i), e))?);
            }
            Normalize::Date(parsed)
        }
    };
    let confidence = |v: Option<f64>, default: f64, key: &str| -> Result<f64> {
        match v {
            None => Ok(default),
            Some(p) if (0.0..=1.0).contains(&p) => Ok(p),
            Some(p) => Err(perr(
                &join(path, key),
                format!("must be between 0 and 1, got {p}"),
            )),
        }
    };
    Ok(ExtractField {
        name: f.name.clone(),
        locators,
        normalize,
        required: f.required,
        confidence_found: confidence(f.confidence_found, 1.0, "confidence_found")?,
        confidence_missing: confidence(f.confidence_missing, 0.0, "confidence_missing")?,
    })
}

fn locator(
    pattern: &str,
    group: Option<&RawGroup>,
    occurrence: i64,
    path: &str,
    regex: &mut dyn FnMut(&str, &str) -> Result<Regex>,
) -> Result<Locator> {
    let re = regex(pattern, &join(path, "pattern"))?;
    let group = match group {
        None => Group::Index(usize::from(re.captures_len() > 1)),
        Some(RawGroup::Index(g)) => {
            if *g >= re.captures_len() {
                return Err(perr(
                    &join(path, "group"),
                    format!("the pattern has no group {g}"),
                ));
            }
            Group::Index(*g)
        }
        Some(RawGroup::Name(n)) if n == "*" => {
            if re.captures_len() < 2 {
                return Err(perr(
                    &join(path, "group"),
                    "\"*\" needs a pattern with capture groups",
                ));
            }
            Group::FirstParticipating
        }
        Some(RawGroup::Name(n)) => Group::Index(
            re.capture_names()
                .position(|x| x == Some(n.as_str()))
                .ok_or_else(|| {
                    perr(
                        &join(path, "group"),
                        format!("the pattern has no group named {n:?}"),
                    )
                })?,
        ),
    };
    if !(-MAX_OCCURRENCE..MAX_OCCURRENCE).contains(&occurrence) {
        return Err(perr(
            &join(path, "occurrence"),
            format!(
                "must be between {} and {} (0 = first match, -1 = last), got {occurrence}",
                -MAX_OCCURRENCE,
                MAX_OCCURRENCE - 1
            ),
        ));
    }
    Ok(Locator {
        regex: re,
        group,
        occurrence,
    })
}

/// Checks that field names are unique.
pub(super) fn check_unique(fields: &[RawExtractField], path: &str) -> Result<()> {
    let mut names = HashSet::new();
    for (i, f) in fields.iter().enumerate() {
        if !names.insert(f.name.as_str()) {
            return Err(perr(
                &join(&idx(path, i), "name"),
                format!("duplicate field {:?}", f.name),
            ));
        }
    }
    Ok(())
}

/// Parses the raw output object (for the compiler).
pub(super) fn raw_output(value: &Value) -> Result<RawExtractOutput> {
    typed(value, "output")
}

// ---------------------------------------------------------------------------------------
// Evaluation

impl ExtractField {
    /// The field's value in `text`: the first locator that yields a normalised value.
    pub(crate) fn extract(&self, text: &str) -> Option<Value> {
        self.locators
            .iter()
            .find_map(|l| self.locate(l, text).map(|f| f.0))
    }

    /// What [`extract`](Self::extract) finds, with the index of the pattern that found it
    /// and the byte range of the capture in `text` (for `explain`).
    pub(crate) fn locate_explained(
        &self,
        text: &str,
    ) -> Option<(usize, std::ops::Range<usize>, Value)> {
        self.locators
            .iter()
            .enumerate()
            .find_map(|(i, l)| self.locate(l, text).map(|(v, span)| (i, span, v)))
    }

    fn locate(&self, l: &Locator, text: &str) -> Option<(Value, std::ops::Range<usize>)> {
        let mut seen = 0i64;
        // For a negative occurrence, the last |occurrence| values, oldest first.
        let keep = usize::try_from(-l.occurrence).unwrap_or(0);
        let mut last: std::collections::VecDeque<(Value, std::ops::Range<usize>)> =
            std::collections::VecDeque::new();
        for caps in l.regex.captures_iter(text) {
            let m = match l.group {
                Group::Index(g) => caps.get(g),
                Group::FirstParticipating => caps.iter().skip(1).flatten().next(),
            };
            let Some(v) = m.and_then(|m| Some((self.normalize(m.as_str())?, m.range()))) else {
                continue;
            };
            if l.occurrence >= 0 {
                if seen == l.occurrence {
                    return Some(v);
                }
                seen += 1;
            } else {
                if last.len() == keep {
                    last.pop_front();
                }
                last.push_back(v);
            }
        }
        if l.occurrence < 0 && last.len() == keep {
            return last.pop_front();
        }
        None
    }

    fn normalize(&self, s: &str) -> Option<Value> {
        match &self.normalize {
            Normalize::String { map, case } => {
                let v = map.get(s).map_or(s, String::as_str);
                Some(Value::String(match case {
                    None => v.to_string(),
                    Some(Case::Upper) => v.to_uppercase(),
                    Some(Case::Lower) => v.to_lowercase(),
                }))
            }
            Normalize::Number(f) => parse_number(s, *f)
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number),
            Normalize::Integer(f) => parse_number(s, *f)
                .filter(|x| x.fract() == 0.0 && x.abs() <= MAX_SAFE_INTEGER)
                .map(|x| Value::from(x as i64)),
            Normalize::Date(formats) => formats.iter().find_map(|f| f.apply(s)).map(Value::String),
        }
    }
}

/// Evaluates every field: the output object, the number found, whether a required one is
/// missing, and each field's confidence (`confidence_found` or `confidence_missing`).
pub(crate) fn extract_all(
    fields: &[ExtractField],
    text: &str,
) -> (Map<String, Value>, bool, Vec<f64>) {
    let mut map = Map::new();
    let mut missing_required = false;
    let mut scores = Vec::with_capacity(fields.len());
    for field in fields {
        match field.extract(text) {
            Some(v) => {
                scores.push(field.confidence_found);
                map.insert(field.name.clone(), v);
            }
            None => {
                missing_required |= field.required;
                scores.push(field.confidence_missing);
                map.insert(field.name.clone(), Value::Null);
            }
        }
    }
    (map, missing_required, scores)
}

// ---------------------------------------------------------------------------------------
// Numbers

fn is_group_space(c: char) -> bool {
    matches!(
        c,
        ' ' | '\u{a0}' | '\u{2009}' | '\u{202f}' | '\'' | '\u{2019}'
    )
}

/// Reads a number written in `format` (see [`NumberFormat`]); `None` when the text is not
/// one. Signs `+` and `-` may lead; surrounding whitespace is ignored; anything else
/// (currency symbols, letters) makes it not a number.
pub fn parse_number(text: &str, format: NumberFormat) -> Option<f64> {
    let t = text.trim();
    if format == NumberFormat::Plain {
        return t.parse::<f64>().ok().filter(|x| x.is_finite());
    }
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let first_last_digits = body.as_bytes().first().is_some_and(u8::is_ascii_digit)
        && body.as_bytes().last().is_some_and(u8::is_ascii_digit);
    if !first_last_digits {
        return None;
    }
    let decimal = match format {
        NumberFormat::Plain | NumberFormat::Dot => Some('.'),
        NumberFormat::Comma => Some(','),
        NumberFormat::Auto => {
            let (dot, comma) = (body.rfind('.'), body.rfind(','));
            match (dot, comma) {
                (Some(d), Some(c)) => Some(if d > c { '.' } else { ',' }),
                (None, None) => None,
                (Some(p), None) | (None, Some(p)) => {
                    let c = if dot.is_some() { '.' } else { ',' };
                    let before: String = body[..p].chars().filter(char::is_ascii_digit).collect();
                    let after = &body[p + 1..];
                    let grouping = body.matches(c).count() > 1
                        || (after.len() == 3
                            && after.bytes().all(|b| b.is_ascii_digit())
                            && (1..=3).contains(&before.len())
                            && !before.starts_with('0'));
                    (!grouping).then_some(c)
                }
            }
        }
    };
    let mut s = String::with_capacity(body.len() + 1);
    if neg {
        s.push('-');
    }
    let mut seen_decimal = false;
    for c in body.chars() {
        if c.is_ascii_digit() {
            s.push(c);
        } else if Some(c) == decimal {
            if seen_decimal {
                return None;
            }
            seen_decimal = true;
            s.push('.');
        } else if (c == '.' || c == ',' || is_group_space(c)) && !seen_decimal {
            // A grouping character (the other of `.`/`,`, a space, an apostrophe).
        } else {
            return None;
        }
    }
    s.parse::<f64>().ok().filter(|x| x.is_finite())
}

// ---------------------------------------------------------------------------------------
// Dates

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum DatePart {
    Year4,
    Year2,
    Month,
    Day,
    MonthName,
    MonthAbbrev,
    Space,
    Literal(char),
}

/// A date format (`%Y-%m-%d`, `%B %d, %Y`, ...): see `docs/program-format.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateFormat {
    parts: Vec<DatePart>,
}

impl DateFormat {
    /// Parses a format string; the error says what is wrong.
    pub fn parse(format: &str) -> std::result::Result<DateFormat, String> {
        if format.is_empty() || format.len() > MAX_DATE_FORMAT_BYTES {
            return Err(format!(
                "a date format is 1 to {MAX_DATE_FORMAT_BYTES} bytes"
            ));
        }
        let mut parts = Vec::new();
        let mut chars = format.chars();
        let (mut y, mut m, mut d) = (0, 0, 0);
        while let Some(c) = chars.next() {
            parts.push(match c {
                '%' => match chars.next() {
                    Some('Y') => {
                        y += 1;
                        DatePart::Year4
                    }
                    Some('y') => {
                        y += 1;
                        DatePart::Year2
                    }
                    Some('m') => {
                        m += 1;
                        DatePart::Month
                    }
                    Some('B') => {
                        m += 1;
                        DatePart::MonthName
                    }
                    Some('b') => {
                        m += 1;
                        DatePart::MonthAbbrev
                    }
                    Some('d') => {
                        d += 1;
                        DatePart::Day
                    }
                    Some('%') => DatePart::Literal('%'),
                    Some(other) => {
                        return Err(format!(
                            "{format:?}: unknown directive %{other} (known: %Y %y %m %d %B %b %%)"
                        ))
                    }
                    None => return Err(format!("{format:?}: ends with a lone %")),
                },
                ' ' => DatePart::Space,
                c => DatePart::Literal(c),
            });
        }
        if (y, m, d) != (1, 1, 1) {
            return Err(format!(
                "{format:?}: needs exactly one year (%Y or %y), one month (%m, %B or %b) and \
                 one day (%d)"
            ));
        }
        Ok(DateFormat { parts })
    }

    /// The date in `text` (trimmed) as ISO 8601 `YYYY-MM-DD`, when the whole text has this
    /// format and is a real calendar date.
    pub fn apply(&self, text: &str) -> Option<String> {
        let mut s = text.trim();
        let (mut year, mut month, mut day) = (0u32, 0u32, 0u32);
        for part in &self.parts {
            match part {
                DatePart::Year4 => {
                    year = digits(&mut s, 4, 4)?;
                }
                DatePart::Year2 => {
                    let yy = digits(&mut s, 2, 2)?;
                    year = if yy < 69 { 2000 + yy } else { 1900 + yy };
                }
                DatePart::Month => month = digits(&mut s, 1, 2)?,
                DatePart::Day => {
                    day = digits(&mut s, 1, 2)?;
                    for suffix in ["st", "nd", "rd", "th"] {
                        if s.len() >= 2 && s.as_bytes()[..2].eq_ignore_ascii_case(suffix.as_bytes())
                        {
                            s = &s[2..];
                            break;
                        }
                    }
                }
                DatePart::MonthName => {
                    let (i, len) = MONTHS.iter().enumerate().find_map(|(i, name)| {
                        (s.len() >= name.len()
                            && s.as_bytes()[..name.len()].eq_ignore_ascii_case(name.as_bytes()))
                        .then_some((i, name.len()))
                    })?;
                    month = i as u32 + 1;
                    s = &s[len..];
                }
                DatePart::MonthAbbrev => {
                    let i = MONTHS.iter().position(|name| {
                        s.len() >= 3
                            && s.as_bytes()[..3].eq_ignore_ascii_case(&name.as_bytes()[..3])
                    })?;
                    month = i as u32 + 1;
                    s = &s[3..];
                    if month == 9
                        && s.as_bytes()
                            .first()
                            .is_some_and(|b| b.eq_ignore_ascii_case(&b't'))
                    {
                        s = &s[1..];
                    }
                    s = s.strip_prefix('.').unwrap_or(s);
                }
                DatePart::Space => {
                    let rest = s.trim_start();
                    if rest.len() == s.len() {
                        return None;
                    }
                    s = rest;
                }
                DatePart::Literal(c) => s = s.strip_prefix(*c)?,
            }
        }
        if !s.is_empty() || !(1..=12).contains(&month) || day == 0 || year > 9999 {
            return None;
        }
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        let days = match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        (day <= days).then(|| format!("{year:04}-{month:02}-{day:02}"))
    }
}

/// Takes `min..=max` ASCII digits (as many as there are, up to `max`) from the front of
/// `s`.
fn digits(s: &mut &str, min: usize, max: usize) -> Option<u32> {
    let n = s.bytes().take(max).take_while(u8::is_ascii_digit).count();
    if n < min {
        return None;
    }
    let v = s[..n].parse().ok()?;
    *s = &s[n..];
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_in_each_notation() {
        use NumberFormat::*;
        let cases: &[(&str, NumberFormat, Option<f64>)] = &[
            ("1,234.50", Dot, Some(1234.5)),
            ("1.234,50", Comma, Some(1234.5)),
            ("1 234,50", Comma, Some(1234.5)),
            ("1'234.50", Dot, Some(1234.5)),
            ("1.234,50", Auto, Some(1234.5)),
            ("1,234.50", Auto, Some(1234.5)),
            ("12.50", Auto, Some(12.5)),
            ("12,50", Auto, Some(12.5)),
            ("1.234", Auto, Some(1234.0)),
            ("0.125", Auto, Some(0.125)),
            ("1.234.567", Auto, Some(1234567.0)),
            ("-3,5", Auto, Some(-3.5)),
            ("1.2.3", Dot, None),
            ("$12", Auto, None),
            ("12.", Auto, None),
            (" 42 ", Plain, Some(42.0)),
            ("4e2", Plain, Some(400.0)),
            ("inf", Plain, None),
        ];
        for (text, f, want) in cases {
            assert_eq!(parse_number(text, *f), *want, "{text:?} as {f:?}");
        }
    }

    #[test]
    fn dates_normalise_to_iso() {
        let cases = [
            ("%Y-%m-%d", "2026-03-05", Some("2026-03-05")),
            ("%d.%m.%Y", "5.3.2026", Some("2026-03-05")),
            ("%m/%d/%Y", "03/05/2026", Some("2026-03-05")),
            ("%B %d, %Y", "march 5th, 2026", Some("2026-03-05")),
            ("%d %b %Y", "5 Sept. 2026", Some("2026-09-05")),
            ("%d %b %Y", "05  Mar 2026", Some("2026-03-05")),
            ("%d/%m/%y", "29/02/24", Some("2024-02-29")),
            ("%d/%m/%y", "29/02/23", None),
            ("%d/%m/%y", "01/01/70", Some("1970-01-01")),
            ("%m/%d/%Y", "13/05/2026", None),
            ("%Y-%m-%d", "2026-03-05x", None),
        ];
        for (f, text, want) in cases {
            let f = DateFormat::parse(f).unwrap();
            assert_eq!(f.apply(text).as_deref(), want, "{text:?} as {f:?}");
        }
        assert!(DateFormat::parse("%Y-%m")
            .unwrap_err()
            .contains("exactly one"));
        assert!(DateFormat::parse("%Y-%m-%q").unwrap_err().contains("%q"));
    }
}
