//! Extractor recipes: how one field's pattern is built from training examples — a value
//! shape (built-in for numbers, dates, e-mails and currencies; inferred from the values
//! otherwise) in a context (none and the n-th match, the tokens right next to the value,
//! or anchor words before it), optionally falling back to the bare shape. A recipe is
//! cross-validated as a whole: on each fold it is rebuilt from the other folds' examples.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{json, Map, Value};

use super::locate::{
    date_regex, is_currency_token, Occurrence, CURRENCIES, DATE_FORMATS, NOTATIONS,
};
use super::schema::{Expected, FieldKind, FieldSpec};
use super::shape::{self, Grain};

/// The longest pattern the generator writes (the format allows 4 KiB).
const MAX_PATTERN: usize = 4000;
/// At most this many anchor words or adjacent tokens per pattern.
const MAX_ANCHORS: usize = 8;
const MAX_TOKENS: usize = 12;
/// How far before the value anchor words are looked for (in bytes, same line).
const WINDOW: usize = 60;

/// A number with optional digit grouping and decimals (`1.234,50`, `1,234.50`, `12.50`).
const NUMBER: &str =
    "(?:[0-9]{1,3}(?:[.,'\u{a0}\u{2009}\u{202f}][0-9]{3})+(?:[.,][0-9]+)?|[0-9]+(?:[.,][0-9]+)?)";
/// An integer.
const INTEGER: &str = r"[0-9]+";
/// An e-mail address (never ends with a dot).
const EMAIL: &str = r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b";
/// Spacing allowed between a value and an adjacent token.
const ADJ_SPACE: &str = "[ \t\u{a0}]?";

/// Which value shape a recipe uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShapeKind {
    /// The type's own shape: numbers, dates (the known formats), e-mail addresses,
    /// currencies (known symbols and codes).
    Builtin,
    /// Inferred, letters and digits merged into runs, any length.
    MergedLoose,
    /// Inferred, letters and digits merged into runs, the lengths seen.
    MergedTight,
    /// Inferred, one run per character class, the lengths seen.
    FineTight,
    /// The values seen, literally.
    Literals,
}

/// Where a recipe looks for the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    /// The n-th match of the shape anywhere (0 first, -1 last).
    Anywhere(i64),
    /// Next to the tokens seen right before and/or after the value.
    Adjacent { left: bool, right: bool },
    /// After one of the anchor words seen before the value on its line.
    AfterWords,
}

/// One way to build a field's pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recipe {
    pub shape: ShapeKind,
    pub context: Context,
    /// Whether the bare shape (first match) is tried when the context finds nothing.
    pub fallback: bool,
}

impl fmt::Display for Recipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shape = match self.shape {
            ShapeKind::Builtin => "builtin",
            ShapeKind::MergedLoose => "shape~",
            ShapeKind::MergedTight => "shape",
            ShapeKind::FineTight => "shape-fine",
            ShapeKind::Literals => "literals",
        };
        match self.context {
            Context::Anywhere(0) => write!(f, "{shape} first")?,
            Context::Anywhere(-1) => write!(f, "{shape} last")?,
            Context::Anywhere(k) => write!(f, "{shape} match {k}")?,
            Context::Adjacent { left, right } => write!(
                f,
                "{shape} next to {}",
                match (left, right) {
                    (true, true) => "tokens before/after",
                    (true, false) => "tokens before",
                    _ => "tokens after",
                }
            )?,
            Context::AfterWords => write!(f, "{shape} after anchor words")?,
        }
        if self.fallback {
            f.write_str(", else first")?;
        }
        Ok(())
    }
}

impl Recipe {
    /// Simplicity rank for tie-breaking (lower is simpler). For typed fields (numbers,
    /// dates, e-mails) the type's own shape comes first whatever the context: a shape
    /// inferred from the examples only narrows the type (`[0-9]+\.[0-9]+` misses
    /// `1.234,50`); for strings the simpler context comes first.
    pub(crate) fn rank(&self, kind: FieldKind) -> u32 {
        let context = match self.context {
            Context::Anywhere(0) => 0,
            Context::Anywhere(-1) => 1,
            Context::Anywhere(_) => 2,
            Context::Adjacent { left, right } if left != right => 3,
            Context::Adjacent { .. } => 4,
            Context::AfterWords => 5,
        };
        let shape = match self.shape {
            ShapeKind::Builtin => 0,
            ShapeKind::MergedLoose => 1,
            ShapeKind::MergedTight => 2,
            ShapeKind::FineTight => 3,
            ShapeKind::Literals => 4,
        };
        // A fallback degrades gracefully on texts unlike the examples: preferred on a tie.
        let fallback = u32::from(!self.fallback && context >= 3);
        if kind == FieldKind::String {
            context * 20 + shape * 2 + fallback
        } else {
            shape * 20 + context * 2 + fallback
        }
    }

    /// Every recipe worth trying for a field of `kind`.
    pub(crate) fn all(kind: FieldKind, currency_like: bool) -> Vec<Recipe> {
        let shapes: &[ShapeKind] = match kind {
            FieldKind::Number | FieldKind::Integer => &[
                ShapeKind::Builtin,
                ShapeKind::MergedLoose,
                ShapeKind::FineTight,
            ],
            FieldKind::Date => &[ShapeKind::Builtin],
            FieldKind::Email => &[ShapeKind::Builtin, ShapeKind::MergedTight],
            FieldKind::String if currency_like => &[ShapeKind::Builtin, ShapeKind::Literals],
            FieldKind::String => &[
                ShapeKind::MergedLoose,
                ShapeKind::MergedTight,
                ShapeKind::FineTight,
                ShapeKind::Literals,
            ],
        };
        let mut out = Vec::new();
        for &shape in shapes {
            for k in [0, 1, -1] {
                out.push(Recipe {
                    shape,
                    context: Context::Anywhere(k),
                    fallback: false,
                });
            }
            for context in [
                Context::Adjacent {
                    left: true,
                    right: false,
                },
                Context::Adjacent {
                    left: false,
                    right: true,
                },
                Context::Adjacent {
                    left: true,
                    right: true,
                },
                Context::AfterWords,
            ] {
                for fallback in [false, true] {
                    out.push(Recipe {
                        shape,
                        context,
                        fallback,
                    });
                }
            }
        }
        out
    }
}

/// What the recipes learn from: one field over every example.
pub(crate) struct FieldData<'a> {
    pub spec: &'a FieldSpec,
    pub expected: Vec<Expected>,
    /// Where each example's value appears in its text.
    pub found: Vec<Vec<Occurrence>>,
    pub texts: &'a [String],
    /// Whether the values are currencies (codes, or written as symbols).
    pub currency_like: bool,
}

impl FieldData<'_> {
    /// The first occurrence in each of `train` that has one: (example, occurrence).
    fn firsts<'s>(
        &'s self,
        train: &'s [usize],
    ) -> impl Iterator<Item = (usize, &'s Occurrence)> + 's {
        train
            .iter()
            .filter_map(|&i| self.found[i].first().map(|o| (i, o)))
    }

    fn span(&self, i: usize, o: &Occurrence) -> &str {
        &self.texts[i][o.start..o.end]
    }
}

/// Builds the field's program JSON (without `name`) for `recipe` from the `train`
/// examples; `None` when the recipe does not apply (nothing to learn it from).
pub(crate) fn build(
    recipe: &Recipe,
    data: &FieldData,
    train: &[usize],
) -> Option<Map<String, Value>> {
    let values: Vec<&str> = data.firsts(train).map(|(i, o)| data.span(i, o)).collect();
    let mut field = Map::new();
    let kind = data.spec.kind;
    // Normalisation.
    match kind {
        FieldKind::Number | FieldKind::Integer => {
            let mut counts = [0usize; 3];
            for (_, o) in data.firsts(train) {
                for (b, c) in counts.iter_mut().enumerate() {
                    if o.notations & (1 << b) != 0 {
                        *c += 1;
                    }
                }
            }
            let best = (0..3).max_by_key(|&b| (counts[b], 3 - b)).unwrap_or(0);
            field.insert(
                "type".into(),
                json!(if kind == FieldKind::Number {
                    "number"
                } else {
                    "integer"
                }),
            );
            field.insert("number_format".into(), json!(NOTATIONS[best].1));
        }
        FieldKind::Date => {
            field.insert("type".into(), json!("date"));
            field.insert("formats".into(), json!(date_formats(data, train)));
        }
        FieldKind::String | FieldKind::Email => {
            let mut map = BTreeMap::new();
            for (i, o) in data.firsts(train) {
                if let Expected::Text(v) = &data.expected[i] {
                    let raw = data.span(i, o);
                    if raw != v {
                        map.entry(raw.to_string()).or_insert_with(|| v.clone());
                    }
                }
            }
            if data.currency_like {
                for (code, other) in CURRENCIES {
                    for alias in other.iter() {
                        map.entry(alias.to_string())
                            .or_insert_with(|| code.to_string());
                    }
                }
            }
            if !map.is_empty() {
                field.insert("map".into(), json!(map));
            }
        }
    }
    // Shape.
    let shape = match (recipe.shape, kind) {
        (ShapeKind::Builtin, FieldKind::Number) => NUMBER.to_string(),
        (ShapeKind::Builtin, FieldKind::Integer) => INTEGER.to_string(),
        (ShapeKind::Builtin, FieldKind::Date) => {
            let formats: Vec<String> = field
                .get("formats")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(date_regex))
                        .collect()
                })
                .unwrap_or_default();
            format!(r"\b(?:{})\b", formats.join("|"))
        }
        (ShapeKind::Builtin, FieldKind::Email) => EMAIL.to_string(),
        (ShapeKind::Builtin, FieldKind::String) if data.currency_like => {
            let mut all: BTreeSet<&str> = values.iter().copied().collect();
            for (code, other) in CURRENCIES {
                all.insert(code);
                all.extend(other.iter().copied());
            }
            shape::literals(&all.into_iter().collect::<Vec<_>>())
        }
        (ShapeKind::Builtin, _) => return None,
        (_, _) if values.is_empty() => return None,
        (ShapeKind::MergedLoose, _) => shape::infer(&values, Grain::Merged, true, 8)?,
        (ShapeKind::MergedTight, _) => shape::infer(&values, Grain::Merged, false, 8)?,
        (ShapeKind::FineTight, _) => shape::infer(&values, Grain::Fine, false, 8)?,
        (ShapeKind::Literals, _) => {
            let distinct: BTreeSet<&str> = values.iter().copied().collect();
            if distinct.len() > 40 || distinct.len() * 2 > values.len().max(2) {
                return None;
            }
            shape::literals(&distinct.into_iter().collect::<Vec<_>>())
        }
    };
    let bare = format!("({shape})");
    let (pattern, group, occurrence) = match recipe.context {
        Context::Anywhere(k) => (bare.clone(), json!(1), k),
        Context::Adjacent { left, right } => {
            let before = if left {
                adjacent(data, train, true, &shape)
            } else {
                None
            };
            let after = if right {
                adjacent(data, train, false, &shape)
            } else {
                None
            };
            match (before, after) {
                (Some(b), Some(a)) => (
                    format!("(?:{b}{ADJ_SPACE}({shape})|({shape}){ADJ_SPACE}{a})"),
                    json!("*"),
                    0,
                ),
                (Some(b), None) if !right => (format!("{b}{ADJ_SPACE}({shape})"), json!(1), 0),
                (None, Some(a)) if !left => (format!("({shape}){ADJ_SPACE}{a}"), json!(1), 0),
                _ => return None,
            }
        }
        Context::AfterWords => {
            let (words, gap) = anchor_words(data, train)?;
            (
                format!(
                    r"(?i:\b(?:{})\b)[^\n]{{0,{gap}}}?({shape})",
                    words.join("|")
                ),
                json!(1),
                0,
            )
        }
    };
    if pattern.len() > MAX_PATTERN || bare.len() > MAX_PATTERN {
        return None;
    }
    field.insert("pattern".into(), json!(pattern));
    field.insert("group".into(), group);
    if occurrence != 0 {
        field.insert("occurrence".into(), json!(occurrence));
    }
    if recipe.fallback {
        if matches!(recipe.context, Context::Anywhere(_)) {
            return None;
        }
        field.insert("fallbacks".into(), json!([{"pattern": bare}]));
    }
    Some(field)
}

/// The date formats of a field: those of the examples, commonest first, then every other
/// known one (so that texts in a format the examples lack still read).
fn date_formats(data: &FieldData, train: &[usize]) -> Vec<&'static str> {
    let mut counts = vec![0usize; DATE_FORMATS.len()];
    for (_, o) in data.firsts(train) {
        if let Some(f) = o.date_format {
            counts[f] += 1;
        }
    }
    let mut order: Vec<usize> = (0..DATE_FORMATS.len()).collect();
    order.sort_by_key(|&f| (std::cmp::Reverse(counts[f]), f));
    order.into_iter().map(|f| DATE_FORMATS[f]).collect()
}

/// The token right before (or after) a value: a run of letters/digits or of other
/// non-space characters (at most 4), after at most one space.
fn token_at(text: &str, start: usize, end: usize, before: bool) -> Option<String> {
    let is_space = |c: char| c == ' ' || c == '\t' || c == '\u{a0}';
    if before {
        let mut s = &text[..start];
        if let Some(c) = s.chars().next_back().filter(|&c| is_space(c)) {
            s = &s[..s.len() - c.len_utf8()];
        }
        let last = s.chars().next_back()?;
        let alnum = last.is_alphanumeric();
        let tok: String = s
            .chars()
            .rev()
            .take_while(|&c| !c.is_whitespace() && c.is_alphanumeric() == alnum)
            .take(if alnum { 32 } else { 4 })
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Some(tok)
    } else {
        let mut s = &text[end..];
        if let Some(c) = s.chars().next().filter(|&c| is_space(c)) {
            s = &s[c.len_utf8()..];
        }
        let first = s.chars().next()?;
        let alnum = first.is_alphanumeric();
        Some(
            s.chars()
                .take_while(|&c| !c.is_whitespace() && c.is_alphanumeric() == alnum)
                .take(if alnum { 32 } else { 4 })
                .collect(),
        )
    }
}

/// The regex class of a token next to a value: digits as a class, currencies as every
/// known currency, words case-insensitively, other characters literally.
fn token_class(tok: &str, before: bool) -> String {
    if tok.chars().all(|c| c.is_ascii_digit()) {
        "[0-9]".to_string()
    } else if is_currency_token(tok) {
        let mut all: BTreeSet<&str> = BTreeSet::new();
        for (code, other) in CURRENCIES {
            all.insert(code);
            all.extend(other.iter().copied());
        }
        shape::literals(&all.into_iter().collect::<Vec<_>>())
    } else if tok.chars().all(char::is_alphanumeric) {
        let w = regex::escape(&tok.to_lowercase());
        if before {
            format!(r"(?i:\b{w})")
        } else {
            format!(r"(?i:{w}\b)")
        }
    } else {
        regex::escape(tok)
    }
}

/// The regex of the tokens next to the values that mark them: of the matches of `shape`
/// in the training texts that have the token next to them (before or after), at least
/// 70% are the value. `None` when there is no such token.
fn adjacent(data: &FieldData, train: &[usize], before: bool, shape: &str) -> Option<String> {
    let re = regex::Regex::new(shape).ok()?;
    // token class -> (matches that are the value, matches)
    let mut stats: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut n = 0usize;
    for &i in train {
        let text = &data.texts[i];
        n += usize::from(!data.found[i].is_empty());
        for m in re.find_iter(text) {
            let Some(tok) = token_at(text, m.start(), m.end(), before) else {
                continue;
            };
            if tok.is_empty() {
                continue;
            }
            let hit = data.found[i]
                .iter()
                .any(|o| o.start == m.start() && o.end == m.end());
            let e = stats.entry(token_class(&tok, before)).or_default();
            e.0 += usize::from(hit);
            e.1 += 1;
        }
    }
    let min = if n >= 10 { 2 } else { 1 };
    let mut toks: Vec<(String, usize)> = stats
        .into_iter()
        .filter(|(_, (hit, all))| *hit >= min && *hit * 10 >= *all * 7)
        .map(|(t, (hit, _))| (t, hit))
        .collect();
    toks.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    toks.truncate(MAX_TOKENS);
    if toks.is_empty() {
        return None;
    }
    let alts: Vec<String> = toks.into_iter().map(|(t, _)| t).collect();
    Some(format!("(?:{})", alts.join("|")))
}

/// Lower-cased words (letters only, 2+ characters) of a text with their byte ends.
fn words(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut end = 0;
    for (i, c) in text.char_indices() {
        if c.is_alphabetic() {
            cur.extend(c.to_lowercase());
            end = i + c.len_utf8();
        } else if !cur.is_empty() {
            if cur.chars().count() >= 2 {
                out.push((std::mem::take(&mut cur), end));
            }
            cur.clear();
        }
    }
    if cur.chars().count() >= 2 {
        out.push((cur, end));
    }
    out
}

/// Anchor words: words seen shortly before the values (on the same line) that rarely
/// appear elsewhere, chosen greedily to cover the examples; and the largest gap (in
/// characters) between an anchor and its value.
fn anchor_words(data: &FieldData, train: &[usize]) -> Option<(Vec<String>, usize)> {
    // Per example: words in the window before the value (with the distance to it), and
    // every word of the text.
    let mut near: Vec<(usize, BTreeMap<String, usize>)> = Vec::new();
    let mut present: BTreeMap<String, usize> = BTreeMap::new();
    for &i in train {
        let text = &data.texts[i];
        let all: BTreeSet<String> = words(text).into_iter().map(|(w, _)| w).collect();
        for w in all {
            *present.entry(w).or_default() += 1;
        }
    }
    for (i, o) in data.firsts(train) {
        let text = &data.texts[i];
        let line_start = text[..o.start].rfind('\n').map_or(0, |p| p + 1);
        let mut from = o.start.saturating_sub(WINDOW).max(line_start);
        while !text.is_char_boundary(from) {
            from += 1;
        }
        let ws = words(&text[from..o.start]);
        let mut m = BTreeMap::new();
        for (w, end) in ws.iter().rev().take(4) {
            let dist = text[from + end..o.start].chars().count();
            m.entry(w.clone()).or_insert(dist);
        }
        near.push((i, m));
    }
    if near.is_empty() {
        return None;
    }
    let min_cover = if near.len() >= 10 { 2 } else { 1 };
    let mut covered = vec![false; near.len()];
    let mut chosen: Vec<String> = Vec::new();
    while chosen.len() < MAX_ANCHORS {
        let mut cover: BTreeMap<&str, usize> = BTreeMap::new();
        let mut total: BTreeMap<&str, usize> = BTreeMap::new();
        for (k, (_, m)) in near.iter().enumerate() {
            for w in m.keys() {
                *total.entry(w).or_default() += 1;
                if !covered[k] {
                    *cover.entry(w).or_default() += 1;
                }
            }
        }
        let best = cover
            .iter()
            .filter(|(w, &c)| c >= min_cover && !chosen.iter().any(|x| x == *w))
            .map(|(w, &c)| {
                let precision =
                    total[w] as f64 / present.get(*w).copied().unwrap_or(1).max(1) as f64;
                (w, c, precision)
            })
            .filter(|(_, _, p)| *p >= 0.5)
            .max_by(|a, b| {
                (a.1 as f64 * a.2)
                    .total_cmp(&(b.1 as f64 * b.2))
                    .then(b.0.cmp(a.0))
            });
        let Some((w, _, _)) = best else { break };
        let w = w.to_string();
        for (k, (_, m)) in near.iter().enumerate() {
            if m.contains_key(&w) {
                covered[k] = true;
            }
        }
        chosen.push(w);
        if covered.iter().filter(|&&c| !c).count() * 20 <= near.len() {
            break;
        }
    }
    if chosen.is_empty() {
        return None;
    }
    let gap = near
        .iter()
        .filter_map(|(_, m)| chosen.iter().filter_map(|w| m.get(w)).min().copied())
        .max()
        .unwrap_or(0);
    let words = chosen.iter().map(|w| regex::escape(w)).collect();
    Some((words, (gap + 4).clamp(1, 64)))
}
