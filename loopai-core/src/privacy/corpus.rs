//! A deterministic, generated PII corpus for measuring the [`PiiFilter`](super::PiiFilter).
//!
//! Used by the unit tests and, through `#[path]`, by `examples/pii_report.rs`, so it only
//! depends on `std`, `fastrand` and a `PiiKind` in the parent module.

#![allow(dead_code)]

use std::ops::Range;

use super::PiiKind;

/// One entity placed in a sample text.
#[derive(Debug, Clone)]
pub struct Entity {
    pub kind: PiiKind,
    pub raw: String,
    pub range: Range<usize>,
}

impl Entity {
    /// The entity without separators: digits only for numeric kinds, alphanumerics for
    /// e-mails, IBANs and IPv6 addresses.
    pub fn compact(&self) -> String {
        let numeric = matches!(
            self.kind,
            PiiKind::Phone | PiiKind::Ssn | PiiKind::CreditCard
        ) || (self.kind == PiiKind::Ip && !self.raw.contains(':'));
        self.raw
            .chars()
            .filter(|c| {
                if numeric {
                    c.is_ascii_digit()
                } else {
                    c.is_alphanumeric()
                }
            })
            .collect()
    }
}

/// A text with the entities it contains.
#[derive(Debug, Clone)]
pub struct Sample {
    pub text: String,
    pub entities: Vec<Entity>,
}

/// A text that contains no PII.
#[derive(Debug, Clone)]
pub struct Negative {
    pub text: String,
    /// What kind of distractor it is (`"order"`, `"invalid_luhn"`, ...).
    pub category: &'static str,
    /// Built from an invalid entity (bad Luhn, bad IBAN check, octet > 255, bad SSN
    /// area): no detector may accept it as that kind.
    pub invalid_of: Option<PiiKind>,
}

#[derive(Debug, Clone)]
pub struct Corpus {
    pub positives: Vec<Sample>,
    pub negatives: Vec<Negative>,
}

/// `per_kind` samples whose first entity is of each kind (some carry a second or third
/// entity of another kind), and `per_kind` negatives of each distractor category.
pub fn generate(seed: u64, per_kind: usize) -> Corpus {
    let mut g = Gen {
        rng: fastrand::Rng::with_seed(seed),
    };
    let mut positives = Vec::new();
    for kind in PiiKind::ALL {
        for _ in 0..per_kind {
            positives.push(g.sample(kind));
        }
    }
    let mut negatives = Vec::new();
    for _ in 0..per_kind {
        negatives.extend(g.negatives());
    }
    Corpus {
        positives,
        negatives,
    }
}

struct Gen {
    rng: fastrand::Rng,
}

const OPENERS: &[&str] = &[
    "",
    "Hi, ",
    "Hello! ",
    "URGENT: ",
    "ok so ",
    "Reminder - ",
    "Re: ",
    "FYI ",
    "\"",
    "(",
    "Dear customer, ",
    ">> ",
];

const CLOSERS: &[&str] = &[
    "",
    ".",
    ",",
    "!",
    "?",
    " thanks",
    ". See you soon",
    ";",
    ")",
    "\"",
    "...",
    " tomorrow.",
    "\n",
    " :)",
    "]",
];

const JOINERS: &[&str] = &[" or ", " and ", ", ", " / ", "; also ", "\n"];

const WRAPS: &[(&str, &str)] = &[
    ("", ""),
    ("", ""),
    ("", ""),
    ("(", ")"),
    ("[", "]"),
    ("<", ">"),
    ("'", "'"),
    ("\"", "\""),
    ("", ":"),
];

fn lead(kind: PiiKind) -> &'static [&'static str] {
    match kind {
        PiiKind::Email => &["mail me at ", "email: ", "contact ", "write to ", "cc ", ""],
        PiiKind::Phone => &[
            "call me on ",
            "my number is ",
            "tel: ",
            "Phone: ",
            "ring ",
            "text me at ",
            "",
        ],
        PiiKind::Ssn => &["SSN ", "ssn: ", "social security number ", "my SSN is ", ""],
        PiiKind::CreditCard => &[
            "card ",
            "pay with ",
            "CC: ",
            "my visa is ",
            "card number ",
            "",
        ],
        PiiKind::Iban => &["IBAN ", "iban: ", "transfer to ", "account ", ""],
        _ => &["from ", "server ", "IP: ", "login from ", "host ", ""],
    }
}

impl Gen {
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.usize(..items.len())]
    }

    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.rng.u8(0..10)))
            .collect()
    }

    fn digit_from(&mut self, lo: u8, hi: u8) -> char {
        char::from(b'0' + self.rng.u8(lo..=hi))
    }

    fn sample(&mut self, first: PiiKind) -> Sample {
        let count = match self.rng.u8(0..10) {
            0..=5 => 1,
            6..=8 => 2,
            _ => 3,
        };
        let mut text = String::from(*self.pick(OPENERS));
        let mut entities = Vec::new();
        for i in 0..count {
            let kind = if i == 0 {
                first
            } else {
                *self.pick(&PiiKind::ALL)
            };
            if i > 0 {
                let joiner = *self.pick(JOINERS);
                text.push_str(joiner);
            }
            let lead = *self.pick(lead(kind));
            text.push_str(lead);
            let (open, close) = *self.pick(WRAPS);
            text.push_str(open);
            let raw = self.entity(kind);
            let start = text.len();
            text.push_str(&raw);
            entities.push(Entity {
                kind,
                raw,
                range: start..text.len(),
            });
            text.push_str(close);
        }
        let closer = *self.pick(CLOSERS);
        text.push_str(closer);
        Sample { text, entities }
    }

    pub fn entity(&mut self, kind: PiiKind) -> String {
        match kind {
            PiiKind::Email => self.email(),
            PiiKind::Phone => self.phone(),
            PiiKind::Ssn => self.ssn(),
            PiiKind::CreditCard => {
                let digits = self.card_digits();
                self.group_card(&digits)
            }
            PiiKind::Iban => {
                let iban = self.iban(true);
                self.group_iban(&iban)
            }
            _ => self.ip(),
        }
    }

    fn email(&mut self) -> String {
        const FIRST: &[&str] = &["john", "jane", "a", "maria", "li", "o'neil", "chris", "Ana"];
        const LAST: &[&str] = &["doe", "smith", "müller", "garcia", "wang", "x", "O-Brien"];
        const DOMAINS: &[&str] = &[
            "example.com",
            "mail.example.co.uk",
            "corp.acme.io",
            "uni-heidelberg.de",
            "gmail.com",
            "Example.ORG",
            "xn--bcher-kva.de",
            "bücher.de",
            "sub.a1.b2.net",
            "yahoo.fr",
        ];
        let first = self.pick(FIRST).replace('\'', "");
        let last = *self.pick(LAST);
        let local = match self.rng.u8(0..8) {
            0 => format!("{first}.{last}"),
            1 => format!("{first}_{last}{}", self.rng.u16(1..100)),
            2 => format!("{first}+{}", self.pick(&["news", "spam", "x-1"])),
            3 => format!("{}{last}", &first[..1]),
            4 => format!("{first}.{last}+tag"),
            5 => format!("{first}{}", self.rng.u16(1..3000)),
            6 => format!("{first}-{last}"),
            _ => first.to_uppercase(),
        };
        format!("{local}@{}", self.pick(DOMAINS))
    }

    fn phone(&mut self) -> String {
        let n = |g: &mut Gen, k: usize| g.digits(k);
        match self.rng.u8(0..24) {
            // NANP
            0..=5 => {
                let area = format!("{}{}", self.digit_from(2, 9), n(self, 2));
                let exch = format!("{}{}", self.digit_from(2, 9), n(self, 2));
                let line = n(self, 4);
                let f = self.rng.u8(0..12);
                match f {
                    0 => format!("({area}) {exch}-{line}"),
                    1 => format!("{area}-{exch}-{line}"),
                    2 => format!("{area}.{exch}.{line}"),
                    3 => format!("{area} {exch} {line}"),
                    4 => format!("({area}){exch}-{line}"),
                    5 => format!("+1 ({area}) {exch}-{line}"),
                    6 => format!("+1 {area}-{exch}-{line}"),
                    7 => format!("+1-{area}-{exch}-{line}"),
                    8 => format!("+1.{area}.{exch}.{line}"),
                    9 => format!("1-{area}-{exch}-{line}"),
                    10 => format!("1 ({area}) {exch} {line}"),
                    _ => format!("+1{area}{exch}{line}"),
                }
            }
            // UK
            6..=9 => {
                let f = self.rng.u8(0..11);
                let (a, b) = (n(self, 4), n(self, 4));
                let mob = format!("7{}", n(self, 3));
                let m6 = n(self, 6);
                match f {
                    0 => format!("020 {a} {b}"),
                    1 => format!("+44 20 {a} {b}"),
                    2 => format!("+44 (0)20 {a} {b}"),
                    3 => format!("0044 20 {a} {b}"),
                    4 => format!("0{mob} {m6}"),
                    5 => format!("+44 {mob} {m6}"),
                    6 => format!("0{mob}{m6}"),
                    7 => format!("09{}", n(self, 9)),
                    8 => format!("0800 {} {}", n(self, 3), n(self, 4)),
                    9 => format!("0161 {} {}", n(self, 3), n(self, 4)),
                    _ => format!("+44 161 {} {}", n(self, 3), n(self, 4)),
                }
            }
            // Germany
            10..=12 => match self.rng.u8(0..8) {
                0 => format!("+49 30 {}", n(self, 7)),
                1 => format!("030 {}", n(self, 8)),
                2 => format!("030/{}", n(self, 7)),
                3 => format!("+49 (0)30 {}", n(self, 7)),
                4 => format!("+49 151 {}", n(self, 8)),
                5 => format!("0151 {}", n(self, 8)),
                6 => format!("+4915{}", n(self, 9)),
                _ => format!("089 {} {}", n(self, 4), n(self, 4)),
            },
            // France
            13..=15 => {
                let p: Vec<String> = (0..4).map(|_| n(self, 2)).collect();
                let d = self.digit_from(1, 7);
                match self.rng.u8(0..6) {
                    0 => format!("+33 {d} {} {} {} {}", p[0], p[1], p[2], p[3]),
                    1 => format!("0{d} {} {} {} {}", p[0], p[1], p[2], p[3]),
                    2 => format!("0{d}.{}.{}.{}.{}", p[0], p[1], p[2], p[3]),
                    3 => format!("0033 {d} {} {} {} {}", p[0], p[1], p[2], p[3]),
                    4 => format!("+33 (0){d} {} {} {} {}", p[0], p[1], p[2], p[3]),
                    _ => format!("0{d}-{}-{}-{}-{}", p[0], p[1], p[2], p[3]),
                }
            }
            // India
            16..=17 => {
                let a = format!("{}{}", self.digit_from(6, 9), n(self, 4));
                let b = n(self, 5);
                match self.rng.u8(0..4) {
                    0 => format!("+91 {a} {b}"),
                    1 => format!("+91-{a}{b}"),
                    2 => format!("{a} {b}"),
                    _ => format!("0{a}{b}"),
                }
            }
            // Elsewhere
            _ => match self.rng.u8(0..14) {
                0 => format!("+61 4{} {} {}", n(self, 2), n(self, 3), n(self, 3)),
                1 => format!("04{} {} {}", n(self, 2), n(self, 3), n(self, 3)),
                2 => format!("(02) {} {}", n(self, 4), n(self, 4)),
                3 => format!("+81 90-{}-{}", n(self, 4), n(self, 4)),
                4 => format!("090-{}-{}", n(self, 4), n(self, 4)),
                5 => format!("+55 11 9{}-{}", n(self, 4), n(self, 4)),
                6 => format!(
                    "+34 6{} {} {} {}",
                    n(self, 2),
                    n(self, 2),
                    n(self, 2),
                    n(self, 2)
                ),
                7 => format!(
                    "6{} {} {} {}",
                    n(self, 2),
                    n(self, 2),
                    n(self, 2),
                    n(self, 2)
                ),
                8 => format!("+31 6 {}", n(self, 8)),
                9 => format!("06-{}", n(self, 8)),
                10 => format!("+86 138 {} {}", n(self, 4), n(self, 4)),
                11 => format!("139 {} {}", n(self, 4), n(self, 4)),
                12 => format!("+39 3{} {} {}", n(self, 2), n(self, 3), n(self, 4)),
                _ => format!("+65 {} {}", n(self, 4), n(self, 4)),
            },
        }
    }

    fn ssn(&mut self) -> String {
        let area = loop {
            let a = self.rng.u16(1..900);
            if a != 666 {
                break a;
            }
        };
        let group = self.rng.u16(1..100);
        let serial = self.rng.u16(1..10000);
        let sep = if self.rng.u8(0..3) == 0 { ' ' } else { '-' };
        format!("{area:03}{sep}{group:02}{sep}{serial:04}")
    }

    /// A Luhn-valid card number from a realistic IIN range and length.
    pub fn card_digits(&mut self) -> String {
        let (prefix, len): (String, usize) = match self.rng.u8(0..16) {
            0..=2 => ("4".into(), *self.pick(&[16, 16, 16, 13, 19])),
            3 => (format!("5{}", self.digit_from(1, 5)), 16),
            4 => (format!("{}", self.rng.u16(2221..2721)), 16),
            5 => (format!("3{}", self.pick(&['4', '7'])), 15),
            6 => ("6011".into(), 16),
            7 => (
                format!("65{}", self.digit_from(0, 9)),
                *self.pick(&[16, 19]),
            ),
            8 => (format!("30{}", self.digit_from(0, 5)), 14),
            9 => (format!("{}", self.rng.u16(3528..3590)), 16),
            10 => ("62".into(), *self.pick(&[16, 17, 18, 19])),
            11 => ("6759".into(), *self.pick(&[16, 18, 19])),
            // Maestro at every length it is issued in, 12 and 13 included.
            12 => (
                (*self.pick(&[
                    "5018", "5020", "5038", "5893", "6304", "6759", "6761", "6762", "6763",
                ]))
                .to_owned(),
                self.rng.usize(12..20),
            ),
            // Mir.
            13 => (
                format!("220{}", self.digit_from(0, 4)),
                *self.pick(&[16, 19]),
            ),
            // RuPay, Troy, Humo, UzCard, Dankort, BORICA.
            14 => (
                (*self.pick(&[
                    "60", "81", "82", "508", "9792", "9860", "8600", "5019", "2205",
                ]))
                .to_owned(),
                16,
            ),
            // Verve.
            _ => (
                format!("{}", self.rng.u32(506099..506199)),
                *self.pick(&[16, 18, 19]),
            ),
        };
        let mut digits = prefix;
        let body = self.digits(len - 1 - digits.len());
        digits.push_str(&body);
        digits.push(luhn_check_digit(&digits));
        digits
    }

    /// A Luhn-valid number of 12–19 digits that no network issues: a prefix outside every
    /// IIN range (`1`, `7`, `9` but Troy and Humo, `20`, `31`), or a 12-digit Visa-like
    /// number (Visa issues 13, 16 and 19 digits).
    fn luhn_valid_not_a_card(&mut self) -> String {
        let (prefix, len): (String, usize) = match self.rng.u8(0..5) {
            0 => (
                format!("{}", self.pick(&['1', '7'])),
                self.rng.usize(12..20),
            ),
            1 => (
                format!("9{}", self.digit_from(0, 6)),
                self.rng.usize(12..20),
            ),
            2 => (
                format!("20{}", self.digit_from(0, 9)),
                self.rng.usize(12..20),
            ),
            3 => ("31".into(), self.rng.usize(12..20)),
            _ => ("4".into(), 12),
        };
        let mut digits = prefix;
        let body = self.digits(len - 1 - digits.len());
        digits.push_str(&body);
        digits.push(luhn_check_digit(&digits));
        digits
    }

    fn group_card(&mut self, digits: &str) -> String {
        let sep = *self.pick(&["", " ", " ", "-"]);
        if sep.is_empty() {
            return digits.to_owned();
        }
        let layout: &[usize] = match digits.len() {
            12 => &[4, 4, 4],
            13 => &[4, 4, 5],
            14 => &[4, 6, 4],
            15 => &[4, 6, 5],
            16 => &[4, 4, 4, 4],
            17 => &[4, 4, 4, 4, 1],
            18 => &[4, 4, 4, 4, 2],
            _ => &[4, 4, 4, 4, 3],
        };
        let mut out = String::new();
        let mut at = 0;
        for (i, &len) in layout.iter().enumerate() {
            if i > 0 {
                out.push_str(sep);
            }
            out.push_str(&digits[at..at + len]);
            at += len;
        }
        out
    }

    /// A compact IBAN; with `valid` false, its check digits are wrong.
    pub fn iban(&mut self, valid: bool) -> String {
        const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let letters = |g: &mut Gen, k: usize| -> String {
            (0..k)
                .map(|_| char::from(UPPER[g.rng.usize(..26)]))
                .collect()
        };
        let (country, bban) = match self.rng.u8(0..16) {
            0 => ("DE", self.digits(18)),
            1 => ("GB", format!("{}{}", letters(self, 4), self.digits(14))),
            2 => ("FR", self.digits(23)),
            3 => ("ES", self.digits(20)),
            4 => ("IT", format!("{}{}", letters(self, 1), self.digits(22))),
            5 => ("NL", format!("{}{}", letters(self, 4), self.digits(10))),
            6 => ("BE", self.digits(12)),
            7 => ("CH", self.digits(17)),
            8 => ("AT", self.digits(16)),
            9 => ("PL", self.digits(24)),
            10 => ("SE", self.digits(20)),
            11 => ("NO", self.digits(11)),
            12 => ("PT", self.digits(21)),
            13 => ("IE", format!("{}{}", letters(self, 4), self.digits(14))),
            14 => ("DK", self.digits(14)),
            _ => ("SA", format!("{}{}", self.digits(2), self.digits(18))),
        };
        let mut rearranged: Vec<u8> = bban.bytes().collect();
        rearranged.extend_from_slice(country.as_bytes());
        rearranged.extend_from_slice(b"00");
        let rem = mod97(&rearranged);
        let valid_check = 98 - rem;
        let check = if valid {
            valid_check
        } else {
            loop {
                let c = self.rng.u32(2..99);
                if c % 97 != valid_check % 97 {
                    break c;
                }
            }
        };
        format!("{country}{check:02}{bban}")
    }

    fn group_iban(&mut self, iban: &str) -> String {
        if self.rng.bool() {
            return iban.to_owned();
        }
        iban.as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap_or(""))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn ip(&mut self) -> String {
        match self.rng.u8(0..10) {
            0..=4 => {
                let first = *self.pick(&[10u16, 172, 192, 8, 1, 100, 203, 255]);
                let first = if self.rng.bool() {
                    first
                } else {
                    self.rng.u16(1..256)
                };
                format!(
                    "{first}.{}.{}.{}",
                    self.rng.u16(0..256),
                    self.rng.u16(0..256),
                    self.rng.u16(0..256)
                )
            }
            5 => format!(
                "::ffff:{}.{}.{}.{}",
                self.rng.u16(1..256),
                self.rng.u16(0..256),
                self.rng.u16(0..256),
                self.rng.u16(1..256)
            ),
            _ => {
                let mut groups: Vec<u16> = (0..8).map(|_| self.rng.u16(..)).collect();
                if self.rng.bool() {
                    groups[0] = *self.pick(&[0x2001, 0xfe80, 0x2a00, 0xfd12]);
                }
                let zeros = self.rng.usize(0..5);
                let at = self.rng.usize(1..(9 - zeros.max(1)));
                for g in groups.iter_mut().skip(at).take(zeros) {
                    *g = 0;
                }
                let addr =
                    std::net::Ipv6Addr::from(<[u16; 8]>::try_from(groups).unwrap_or_default());
                match self.rng.u8(0..4) {
                    // Compressed, as std prints it.
                    0 | 1 => addr.to_string(),
                    // Full, with leading zeros.
                    2 => addr
                        .segments()
                        .iter()
                        .map(|s| format!("{s:04x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                    // Compressed, upper case.
                    _ => addr.to_string().to_uppercase(),
                }
            }
        }
    }

    /// One negative of each distractor category.
    fn negatives(&mut self) -> Vec<Negative> {
        let mut out = Vec::new();
        let mut push = |text: String, category, invalid_of| {
            out.push(Negative {
                text,
                category,
                invalid_of,
            })
        };
        let order_len = self.rng.usize(4..12);
        let order = format!("{}{}", self.digit_from(1, 9), self.digits(order_len));
        push(
            format!("Your order #{order} has shipped, ref {}", self.digits(5)),
            "order",
            None,
        );
        push(
            format!(
                "Only £{} today, was ${},{}.99 and €{}",
                self.rng.u16(1..5000),
                self.rng.u16(1..99),
                self.digits(3),
                self.rng.u16(1..999)
            ),
            "price",
            None,
        );
        let (y, m, d) = (
            self.rng.u16(1990..2031),
            self.rng.u16(1..13),
            self.rng.u16(1..29),
        );
        let date = match self.rng.u8(0..5) {
            0 => format!("{y}-{m:02}-{d:02}"),
            1 => format!("{d:02}/{m:02}/{y}"),
            2 => format!("{d:02}.{m:02}.{y}"),
            3 => format!("{d:02}-{m:02}-{y} {} people", self.rng.u8(2..60)),
            _ => format!("{d}.{m}.{}", y % 100),
        };
        push(
            format!(
                "See you on {date} at {}:{:02}",
                self.rng.u8(0..24),
                self.rng.u8(0..60)
            ),
            "date_time",
            None,
        );
        push(
            format!(
                "upgrade to v{}.{}.{} or build {}.{}.{}.{}.{}",
                self.rng.u8(0..20),
                self.rng.u8(0..20),
                self.rng.u8(0..100),
                self.rng.u8(0..20),
                self.rng.u8(0..20),
                self.rng.u16(0..20000),
                self.rng.u16(0..9999),
                self.rng.u8(0..9)
            ),
            "version",
            None,
        );
        push(
            format!(
                "Text WIN to {} or call {}; {} x {}g, score {}-{}, {}%",
                self.digits(5),
                self.digits(4),
                self.rng.u8(1..10),
                self.rng.u16(1..1000),
                self.rng.u8(0..9),
                self.rng.u8(0..9),
                self.rng.u8(0..100)
            ),
            "short_code",
            None,
        );
        push(
            format!("bare number {}{}", self.digit_from(1, 9), self.digits(9)),
            "bare_number",
            None,
        );
        // Deterministic invalid entities.
        // At most 16 digits: a longer grouped number whose first 16 digits happen to be
        // Luhn-valid is (rightly) redacted as a card followed by something else.
        let mut card = loop {
            let card = self.card_digits();
            if card.len() <= 16 {
                break card;
            }
        };
        let last = card.pop().map_or(0, |c| c as u8 - b'0');
        card.push(char::from(b'0' + (last + 1 + self.rng.u8(0..9)) % 10));
        let card = self.group_card(&card);
        push(
            format!("card {card} declined"),
            "invalid_luhn",
            Some(PiiKind::CreditCard),
        );
        let number = self.luhn_valid_not_a_card();
        let number = self.group_card(&number);
        push(
            format!(
                "{} {number} logged",
                self.pick(&["order", "ref", "ts", "id", "tracking"])
            ),
            "luhn_no_iin",
            Some(PiiKind::CreditCard),
        );
        let iban = self.iban(false);
        let iban = self.group_iban(&iban);
        push(
            format!("IBAN {iban} rejected"),
            "invalid_iban",
            Some(PiiKind::Iban),
        );
        let bad_octet = self.rng.u16(256..1000);
        let ip = match self.rng.u8(0..3) {
            0 => format!(
                "{bad_octet}.{}.{}.{}",
                self.rng.u8(..),
                self.rng.u8(..),
                self.rng.u8(..)
            ),
            1 => format!(
                "{}.{}.{bad_octet}.{}",
                self.rng.u8(..),
                self.rng.u8(..),
                self.rng.u8(..)
            ),
            _ => format!(
                "{}.{}.{}.{}.{}",
                self.rng.u8(..),
                self.rng.u8(..),
                self.rng.u8(..),
                self.rng.u8(..),
                self.rng.u8(..)
            ),
        };
        push(format!("from {ip} today"), "invalid_ip", Some(PiiKind::Ip));
        let ssn = match self.rng.u8(0..5) {
            0 => format!(
                "666-{:02}-{:04}",
                self.rng.u8(1..100),
                self.rng.u16(1..10000)
            ),
            1 => format!(
                "000-{:02}-{:04}",
                self.rng.u8(1..100),
                self.rng.u16(1..10000)
            ),
            2 => format!(
                "{}-{:02}-{:04}",
                self.rng.u16(900..1000),
                self.rng.u8(1..100),
                self.rng.u16(1..10000)
            ),
            3 => format!(
                "{:03}-00-{:04}",
                self.rng.u16(1..900),
                self.rng.u16(1..10000)
            ),
            _ => format!(
                "{:03}-{:02}-0000",
                self.rng.u16(1..900),
                self.rng.u8(1..100)
            ),
        };
        push(
            format!("SSN {ssn} is not valid"),
            "invalid_ssn",
            Some(PiiKind::Ssn),
        );
        out
    }
}

fn mod97(digits_and_letters: &[u8]) -> u32 {
    let mut rem = 0u32;
    for &b in digits_and_letters {
        rem = if b.is_ascii_digit() {
            (rem * 10 + u32::from(b - b'0')) % 97
        } else {
            (rem * 100 + u32::from(b - b'A') + 10) % 97
        };
    }
    rem
}

/// The digit that makes `payload` + digit Luhn-valid.
pub fn luhn_check_digit(payload: &str) -> char {
    let sum: u32 = payload
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
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
    char::from(b'0' + ((10 - sum % 10) % 10) as u8)
}

/// A flagged negative: category, the kind it is an invalid instance of, text, matches.
pub type FalsePositive = (
    &'static str,
    Option<PiiKind>,
    String,
    Vec<(PiiKind, String)>,
);

/// Per-kind recall of `find` over the positives, and the negatives it flagged.
pub struct Report {
    pub found: Vec<(PiiKind, usize, usize)>,
    pub misses: Vec<(PiiKind, String)>,
    pub false_positives: Vec<FalsePositive>,
}

impl Report {
    pub fn recall(&self, kind: PiiKind) -> f64 {
        self.found
            .iter()
            .find(|(k, _, _)| *k == kind)
            .map_or(0.0, |&(_, found, total)| found as f64 / total.max(1) as f64)
    }
}

/// Measures `find` (a `PiiFilter::find`-like function returning `(kind, range)` pairs).
pub fn measure(corpus: &Corpus, find: impl Fn(&str) -> Vec<(PiiKind, Range<usize>)>) -> Report {
    let mut found: Vec<(PiiKind, usize, usize)> = PiiKind::ALL.iter().map(|&k| (k, 0, 0)).collect();
    let mut misses = Vec::new();
    for sample in &corpus.positives {
        let matches = find(&sample.text);
        for e in &sample.entities {
            let hit = matches
                .iter()
                .any(|(k, r)| *k == e.kind && r.start <= e.range.start && r.end >= e.range.end);
            if let Some(slot) = found.iter_mut().find(|(k, _, _)| *k == e.kind) {
                slot.2 += 1;
                if hit {
                    slot.1 += 1;
                }
            }
            if !hit {
                misses.push((e.kind, sample.text.clone()));
            }
        }
    }
    let mut false_positives = Vec::new();
    for n in &corpus.negatives {
        let matches = find(&n.text);
        if !matches.is_empty() {
            let spans = matches
                .into_iter()
                .map(|(k, r)| (k, n.text[r].to_owned()))
                .collect();
            false_positives.push((n.category, n.invalid_of, n.text.clone(), spans));
        }
    }
    Report {
        found,
        misses,
        false_positives,
    }
}
