//! Value shapes: the texts a field's values take in the examples generalised to a regex
//! (no capture groups), FlashFill-style — each value cut into runs of one character class,
//! values with the same run structure merged into one pattern with length ranges, the
//! constant runs that contain a letter kept literally (`1Z`, `ORD`), digits always
//! generalised.

use std::collections::BTreeMap;

/// Character classes of runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Upper,
    Lower,
    Digit,
}

/// How finely values are cut into runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grain {
    /// Upper-case letters, lower-case letters and digits are separate runs.
    Fine,
    /// Letters and digits form one run (`X7K2P9`), with the set of classes seen.
    Merged,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    /// A run of letters/digits: its class set (bit per [`Class`]).
    Run(u8),
    /// A separator character, kept literally.
    Sep(char),
}

fn class_of(c: char) -> Option<Class> {
    if c.is_ascii_digit() {
        Some(Class::Digit)
    } else if c.is_uppercase() {
        Some(Class::Upper)
    } else if c.is_alphabetic() {
        Some(Class::Lower)
    } else {
        None
    }
}

/// Cuts a value into runs: (key, text).
fn runs(value: &str, grain: Grain) -> Vec<(Key, String)> {
    let mut out: Vec<(Key, String)> = Vec::new();
    for c in value.chars() {
        match class_of(c) {
            Some(cl) => {
                let bit = 1u8 << (cl as u8);
                let joins = match out.last() {
                    Some((Key::Run(bits), _)) => match grain {
                        Grain::Fine => *bits == bit,
                        Grain::Merged => true,
                    },
                    _ => false,
                };
                if joins {
                    if let Some((Key::Run(bits), text)) = out.last_mut() {
                        *bits |= bit;
                        text.push(c);
                    }
                } else {
                    out.push((Key::Run(bit), c.to_string()));
                }
            }
            None => out.push((Key::Sep(c), c.to_string())),
        }
    }
    out
}

/// The regex class of a set of classes.
fn class_regex(bits: u8) -> String {
    let mut s = String::new();
    if bits & (1 << Class::Upper as u8) != 0 {
        s.push_str("A-Z");
    }
    if bits & (1 << Class::Lower as u8) != 0 {
        s.push_str("a-z");
    }
    if bits & (1 << Class::Digit as u8) != 0 {
        s.push_str("0-9");
    }
    format!("[{s}]")
}

fn quantifier(min: usize, max: usize, loose: bool) -> String {
    if loose {
        "+".to_string()
    } else if min == max {
        if min == 1 {
            String::new()
        } else {
            format!("{{{min}}}")
        }
    } else {
        format!("{{{min},{max}}}")
    }
}

/// Longest common prefix of strings (in chars).
fn common_prefix<'a>(texts: &[&'a str]) -> &'a str {
    let Some(first) = texts.first() else {
        return "";
    };
    let mut end = first.len();
    for t in &texts[1..] {
        end = first
            .char_indices()
            .zip(t.chars())
            .take_while(|((_, a), b)| a == b)
            .map(|((i, a), _)| i + a.len_utf8())
            .last()
            .unwrap_or(0)
            .min(end);
    }
    &first[..end]
}

/// The shape of `values` (at least one): an alternation over their run structures (at
/// most `max_groups`, else `None`), `\b`-bounded where a value starts or ends with a
/// letter or digit. `loose` lets lengths grow beyond the ones seen.
pub(crate) fn infer(
    values: &[&str],
    grain: Grain,
    loose: bool,
    max_groups: usize,
) -> Option<String> {
    let mut groups: BTreeMap<Vec<Key>, Vec<Vec<String>>> = BTreeMap::new();
    for v in values {
        if v.is_empty() {
            continue;
        }
        let r = runs(v, grain);
        // Merged runs group by structure only (the class sets are unioned below).
        let key: Vec<Key> = r
            .iter()
            .map(|(k, _)| match (grain, k) {
                (Grain::Merged, Key::Run(_)) => Key::Run(0),
                _ => k.clone(),
            })
            .collect();
        groups
            .entry(key)
            .or_default()
            .push(r.into_iter().map(|(_, t)| t).collect());
    }
    if groups.is_empty() || groups.len() > max_groups {
        return None;
    }
    // Larger groups first: the alternation tries the commonest shape first.
    let mut groups: Vec<(Vec<Key>, Vec<Vec<String>>)> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    let mut alts = Vec::new();
    for (key, members) in &groups {
        let mut re = String::new();
        for (pos, k) in key.iter().enumerate() {
            let texts: Vec<&str> = members.iter().map(|m| m[pos].as_str()).collect();
            match k {
                Key::Sep(c) => re.push_str(&regex::escape(&c.to_string())),
                Key::Run(_) => {
                    let bits = texts.iter().fold(0u8, |acc, t| {
                        acc | t
                            .chars()
                            .filter_map(class_of)
                            .fold(0u8, |a, c| a | 1 << (c as u8))
                    });
                    let lens: Vec<usize> = texts.iter().map(|t| t.chars().count()).collect();
                    let (min, max) = (
                        lens.iter().copied().min().unwrap_or(1),
                        lens.iter().copied().max().unwrap_or(1),
                    );
                    let prefix = if members.len() >= 2 {
                        common_prefix(&texts)
                    } else {
                        ""
                    };
                    // A constant is kept only when it has a letter: numbers vary.
                    let prefix = if prefix.chars().any(char::is_alphabetic) {
                        // Keep whole letter-bearing prefix up to its last letter.
                        let cut = prefix
                            .char_indices()
                            .filter(|(_, c)| c.is_alphabetic())
                            .map(|(i, c)| i + c.len_utf8())
                            .next_back()
                            .unwrap_or(0);
                        &prefix[..cut]
                    } else {
                        ""
                    };
                    let p = prefix.chars().count();
                    re.push_str(&regex::escape(prefix));
                    if max > p {
                        let rest_bits = texts.iter().fold(0u8, |acc, t| {
                            acc | t
                                .chars()
                                .skip(p)
                                .filter_map(class_of)
                                .fold(0u8, |a, c| a | 1 << (c as u8))
                        });
                        let rest_bits = if rest_bits == 0 { bits } else { rest_bits };
                        re.push_str(&class_regex(rest_bits));
                        re.push_str(&quantifier(min.saturating_sub(p).max(1), max - p, loose));
                    }
                }
            }
        }
        alts.push(re);
    }
    let body = if alts.len() == 1 {
        alts.remove(0)
    } else {
        format!("(?:{})", alts.join("|"))
    };
    let starts_word = values
        .iter()
        .any(|v| v.chars().next().is_some_and(char::is_alphanumeric));
    let ends_word = values
        .iter()
        .any(|v| v.chars().last().is_some_and(char::is_alphanumeric));
    Some(format!(
        "{}{body}{}",
        if starts_word { r"\b" } else { "" },
        if ends_word { r"\b" } else { "" }
    ))
}

/// An alternation of the literal values (longest first, so none hides a longer one).
pub(crate) fn literals(values: &[&str]) -> String {
    let mut v: Vec<&str> = values.to_vec();
    v.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    v.dedup();
    // A value that starts (ends) with a letter or digit must start (end) a word: `DKK`
    // is not a currency inside `1ZYDKKP17`.
    let alts: Vec<String> = v
        .iter()
        .map(|s| {
            let b = |c: Option<char>| {
                if c.is_some_and(char::is_alphanumeric) {
                    r"\b"
                } else {
                    ""
                }
            };
            format!(
                "{}{}{}",
                b(s.chars().next()),
                regex::escape(s),
                b(s.chars().last())
            )
        })
        .collect();
    format!("(?:{})", alts.join("|"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    #[test]
    fn shapes_generalise_classes_and_keep_letter_constants() {
        let ups = [
            "1Z999AA10123456784",
            "1Z12345E0205271688",
            "1ZA4F9720394852011",
        ];
        let re = infer(&ups, Grain::Merged, false, 8).unwrap();
        assert_eq!(re, r"\b1Z[A-Z0-9]{16}\b");
        let ids = ["ORD-48213", "ORD-1200567"];
        let re = infer(&ids, Grain::Fine, false, 8).unwrap();
        assert_eq!(re, r"\bORD\-[0-9]{5,7}\b");
        let r = Regex::new(&re).unwrap();
        assert!(r.is_match("see ORD-99120 now"));
        assert!(!r.is_match("ORD-12"));
        let loose = infer(&ids, Grain::Fine, true, 8).unwrap();
        assert!(Regex::new(&loose).unwrap().is_match("ORD-12"));
        assert_eq!(literals(&["$", "€", "USD"]), r"(?:\bUSD\b|€|\$)");
    }
}
