//! Where an example's expected value appears in its text: type-aware, since the text
//! writes `1.234,50` for the number 1234.5, `5 March 2026` for 2026-03-05 and `€` for
//! EUR. Also the built-in knowledge the generalisation uses: date formats, currencies.

use loopai_core::__private::extract::{parse_number, DateFormat, NumberFormat};
use regex::Regex;

use super::schema::{Expected, FieldKind};

/// Date formats the generator knows, in its order of preference.
pub(crate) const DATE_FORMATS: &[&str] = &[
    "%Y-%m-%d",
    "%d.%m.%Y",
    "%d/%m/%Y",
    "%m/%d/%Y",
    "%d-%m-%Y",
    "%Y/%m/%d",
    "%B %d, %Y",
    "%B %d %Y",
    "%d %B %Y",
    "%d %B, %Y",
    "%d. %B %Y",
    "%b %d, %Y",
    "%b %d %Y",
    "%d %b %Y",
    "%d %b, %Y",
    "%d-%b-%Y",
    "%d.%m.%y",
    "%d/%m/%y",
    "%m/%d/%y",
];

/// Currencies: ISO code and the other ways texts write it.
pub(crate) const CURRENCIES: &[(&str, &[&str])] = &[
    ("EUR", &["€", "euro", "euros", "Euro", "EURO"]),
    ("USD", &["$", "US$", "USD$"]),
    ("GBP", &["£"]),
    ("JPY", &["¥", "円"]),
    ("INR", &["₹", "Rs."]),
    ("CAD", &["C$", "CA$"]),
    ("AUD", &["A$", "AU$"]),
    ("CHF", &["Fr.", "SFr."]),
    ("KRW", &["₩"]),
    ("BRL", &["R$"]),
    ("PLN", &["zł"]),
    ("SEK", &[]),
    ("NOK", &[]),
    ("DKK", &[]),
    ("CNY", &["元"]),
    ("MXN", &["MX$"]),
    ("NZD", &["NZ$"]),
    ("HKD", &["HK$"]),
    ("SGD", &["S$"]),
    ("ZAR", &[]),
    ("TRY", &["₺"]),
    ("RUB", &["₽"]),
];

/// Whether `s` is a currency code or symbol the generator knows.
pub(crate) fn is_currency_token(s: &str) -> bool {
    CURRENCIES
        .iter()
        .any(|(code, other)| *code == s || other.contains(&s))
}

/// One place the value appears.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Occurrence {
    /// Byte range in the text.
    pub start: usize,
    pub end: usize,
    /// For numbers, which notations read it as the value: bit 0 `auto`, 1 `dot`, 2 `comma`.
    pub notations: u8,
    /// For dates, the index in [`DATE_FORMATS`] that reads it.
    pub date_format: Option<usize>,
}

/// The notations a number field may use, with their bits in [`Occurrence::notations`].
pub(crate) const NOTATIONS: [(NumberFormat, &str); 3] = [
    (NumberFormat::Auto, "auto"),
    (NumberFormat::Dot, "dot"),
    (NumberFormat::Comma, "comma"),
];

/// Compiled once per synthesis.
pub(crate) struct Locator {
    numbers: Vec<Regex>,
    dates: Vec<(DateFormat, Regex)>,
}

impl Locator {
    pub(crate) fn new() -> Locator {
        let numbers = [
            r"[0-9]+(?:[.,][0-9]+)*",
            "[0-9]{1,3}(?:[ '\u{a0}\u{2009}\u{202f}\u{2019}][0-9]{3})+(?:[.,][0-9]+)?",
        ]
        .iter()
        .filter_map(|p| Regex::new(p).ok())
        .collect();
        let dates = DATE_FORMATS
            .iter()
            .filter_map(|f| {
                let format = DateFormat::parse(f).ok()?;
                let re = Regex::new(&format!(r"\b{}\b", date_regex(f))).ok()?;
                Some((format, re))
            })
            .collect();
        Locator { numbers, dates }
    }

    /// Every occurrence of `value` in `text`, in text order (empty for `null`).
    pub(crate) fn find(&self, kind: FieldKind, value: &Expected, text: &str) -> Vec<Occurrence> {
        let mut out = Vec::new();
        match (kind, value) {
            (_, Expected::Null) => {}
            (FieldKind::Number | FieldKind::Integer, Expected::Number(x)) => {
                for re in &self.numbers {
                    for m in re.find_iter(text) {
                        let mut bits = 0u8;
                        for (i, (f, _)) in NOTATIONS.iter().enumerate() {
                            if parse_number(m.as_str(), *f) == Some(*x) {
                                bits |= 1 << i;
                            }
                        }
                        if bits != 0 && !out.iter().any(|o: &Occurrence| o.start == m.start()) {
                            out.push(Occurrence {
                                start: m.start(),
                                end: m.end(),
                                notations: bits,
                                date_format: None,
                            });
                        }
                    }
                }
            }
            (FieldKind::Date, Expected::Text(iso)) => {
                for (i, (f, re)) in self.dates.iter().enumerate() {
                    for m in re.find_iter(text) {
                        if f.apply(m.as_str()).as_deref() == Some(iso.as_str())
                            && !out.iter().any(|o: &Occurrence| o.start == m.start())
                        {
                            out.push(Occurrence {
                                start: m.start(),
                                end: m.end(),
                                notations: 0,
                                date_format: Some(i),
                            });
                        }
                    }
                }
            }
            (_, Expected::Text(s)) => {
                let mut push = |start: usize, end: usize| {
                    if !out.iter().any(|o: &Occurrence| o.start == start) {
                        out.push(Occurrence {
                            start,
                            end,
                            notations: 0,
                            date_format: None,
                        });
                    }
                };
                for (i, _) in text.match_indices(s.as_str()) {
                    push(i, i + s.len());
                }
                if let Some((_, other)) = CURRENCIES.iter().find(|(code, _)| code == s) {
                    for alias in other.iter() {
                        for (i, _) in text.match_indices(alias) {
                            push(i, i + alias.len());
                        }
                    }
                }
            }
            (_, Expected::Number(_)) => {}
        }
        out.sort_by_key(|o| (o.start, std::cmp::Reverse(o.end)));
        out
    }
}

/// The regex (no groups) of the texts a date format reads; see the program format.
pub(crate) fn date_regex(format: &str) -> String {
    let mut re = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => re.push_str(match chars.next() {
                Some('Y') => "[0-9]{4}",
                Some('y') => "[0-9]{2}",
                Some('m') => "[0-9]{1,2}",
                Some('d') => "[0-9]{1,2}(?i:st|nd|rd|th)?",
                Some('B') => "(?i:january|february|march|april|may|june|july|august|september|october|november|december)",
                Some('b') => r"(?i:jan|feb|mar|apr|may|jun|jul|aug|sept|sep|oct|nov|dec)\.?",
                _ => "%",
            }),
            ' ' => re.push_str(r"\s+"),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_found_in_the_notation_the_text_uses() {
        let l = Locator::new();
        let text = "Paid €1.234,50 on 5 March 2026 for 3 items";
        let n = l.find(FieldKind::Number, &Expected::Number(1234.5), text);
        assert_eq!(n.len(), 1);
        assert_eq!(&text[n[0].start..n[0].end], "1.234,50");
        assert_eq!(n[0].notations, 0b101);
        let d = l.find(FieldKind::Date, &Expected::Text("2026-03-05".into()), text);
        assert_eq!(&text[d[0].start..d[0].end], "5 March 2026");
        let c = l.find(FieldKind::String, &Expected::Text("EUR".into()), text);
        assert_eq!(&text[c[0].start..c[0].end], "€");
        assert!(is_currency_token("$") && is_currency_token("USD") && !is_currency_token("ORD"));
    }
}
