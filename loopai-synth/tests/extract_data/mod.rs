//! A seeded generator of realistic extraction examples: order confirmations and shipping
//! notices in free text, with order numbers, amounts with currencies (`€1.234,50`,
//! `$1,234.50`, `12.50 USD`, `CHF 1'234.50`), dates in several formats, e-mail addresses
//! and tracking codes (UPS, FedEx, USPS, DHL), each absent now and then. Two disjoint
//! template sets: [`Templates::Train`] and [`Templates::Test`], so that a test on the
//! second measures how a program learnt from the first generalises to new phrasings.
//!
//! Shared by the integration tests and `examples/extract_eval.rs`.

#![allow(dead_code)]

use serde_json::{json, Map, Value};

/// The fields, in output order.
pub const FIELDS: [&str; 6] = ["order_id", "total", "currency", "date", "email", "tracking"];

/// Which phrasings to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Templates {
    Train,
    Test,
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }
    fn alnum(&mut self, n: usize) -> String {
        const A: &[u8] = b"ABCDEFGHJKLMNPRSTUVWXYZ0123456789";
        (0..n).map(|_| char::from(A[self.below(A.len())])).collect()
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Thousands-grouped integer part.
fn group(int: u64, sep: &str) -> String {
    let s = int.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push_str(sep);
        }
        out.push(c);
    }
    out
}

/// An amount and currency written as a text would: (text, value, currency code).
fn amount(r: &mut Rng) -> (String, f64, &'static str) {
    let big = r.chance(0.3);
    let cents = if big {
        100_000 + r.below(900_000) as u64
    } else {
        100 + r.below(49_900) as u64
    };
    let whole = r.chance(0.15);
    let cents = if whole { cents / 100 * 100 } else { cents };
    let (int, frac) = (cents / 100, cents % 100);
    let value = cents as f64 / 100.0;
    let en = format!("{}.{frac:02}", group(int, ","));
    let de = format!("{},{frac:02}", group(int, "."));
    let en_short = if whole { group(int, ",") } else { en.clone() };
    let currency = r.pick(&["EUR", "EUR", "USD", "USD", "GBP", "CHF"]);
    let text = match currency {
        "EUR" => match r.below(4) {
            0 => format!("€{de}"),
            1 => format!("{de} €"),
            2 => format!("{de} EUR"),
            _ => format!("EUR {de}"),
        },
        "USD" => match r.below(4) {
            0 => format!("${en_short}"),
            1 => format!("{en} USD"),
            2 => format!("USD {en}"),
            _ => format!("US${en}"),
        },
        "GBP" => match r.below(2) {
            0 => format!("£{en_short}"),
            _ => format!("{en} GBP"),
        },
        _ => format!("CHF {}.{frac:02}", group(int, "'")),
    };
    (text, value, currency)
}

/// A date written in one of several formats: (text, ISO).
fn date(r: &mut Rng) -> (String, String) {
    let y = 2024 + r.below(4);
    let m = 1 + r.below(12);
    let d = 1 + r.below(28);
    let iso = format!("{y:04}-{m:02}-{d:02}");
    let name = MONTHS[m - 1];
    let text = match r.below(7) {
        0 => iso.clone(),
        1 => format!("{d:02}.{m:02}.{y}"),
        2 => format!("{name} {d}, {y}"),
        3 => format!("{d} {} {y}", &name[..3]),
        4 => format!("{m:02}/{d:02}/{y}"),
        5 => format!("{d} {name} {y}"),
        _ => format!("{} {d}, {y}", &name[..3]),
    };
    (text, iso)
}

fn email(r: &mut Rng) -> String {
    let first = r.pick(&[
        "anna", "james", "li", "maria", "tom", "sofia", "noah", "emma", "lukas", "zoe",
    ]);
    let last = r.pick(&[
        "smith", "garcia", "mueller", "rossi", "chen", "dubois", "novak", "kim",
    ]);
    let domain = r.pick(&[
        "example.com",
        "mail.example.org",
        "shop-mail.net",
        "post.example.co.uk",
        "inbox.io",
    ]);
    match r.below(4) {
        0 => format!("{first}.{last}@{domain}"),
        1 => format!("{}{last}@{domain}", &first[..1]),
        2 => format!("{first}_{last}{}@{domain}", r.below(100)),
        _ => format!("{first}+orders@{domain}"),
    }
}

/// A tracking code and its carrier.
fn tracking(r: &mut Rng) -> (String, &'static str) {
    match r.below(4) {
        0 => (
            format!("1Z{}{}{}", r.alnum(6), r.digits(2), r.digits(8)),
            "UPS",
        ),
        1 => (r.digits(12), "FedEx"),
        2 => (format!("9400{}", r.digits(18)), "USPS"),
        _ => (format!("JD{}", r.digits(18)), "DHL"),
    }
}

fn order_id(r: &mut Rng) -> (String, String) {
    match r.below(3) {
        0 => {
            let len = 5 + r.below(3);
            let id = format!("ORD-{}", r.digits(len));
            (id.clone(), id)
        }
        1 => {
            let id = format!("PO{}", r.digits(8));
            (id.clone(), id)
        }
        _ => {
            let id = format!("{}{}", 1 + r.below(9), r.digits(5));
            (format!("#{id}"), id)
        }
    }
}

/// Phrasings per field; `{}` is the value.
struct Set {
    greet: &'static [&'static str],
    order: &'static [&'static str],
    amount: &'static [&'static str],
    date: &'static [&'static str],
    email: &'static [&'static str],
    tracking: &'static [&'static str],
    filler: &'static [&'static str],
    close: &'static [&'static str],
}

const TRAIN: Set = Set {
    greet: &["Hi {name},", "Hello {name},", "Dear {name},", ""],
    order: &[
        "Thank you for your order {}.",
        "Your order number is {}.",
        "Order {} has been confirmed.",
        "We are processing order {} now.",
    ],
    amount: &[
        "The total was {}.",
        "Total: {}",
        "You were charged {} for {qty} items.",
        "Order total {} (shipping included).",
    ],
    date: &[
        "Order date: {}.",
        "It was placed on {}.",
        "Expected delivery: {}.",
    ],
    email: &[
        "We will send updates to {}.",
        "Contact: {}",
        "Your account e-mail is {}.",
    ],
    tracking: &[
        "Tracking number: {}.",
        "Track your parcel ({carrier}) with {}.",
        "The {carrier} tracking code is {}.",
    ],
    filler: &[
        "Call us at +1 (555) 010-{d4} if anything is missing.",
        "Your card ending in {d4} was used.",
        "We packed {qty} items in 1 box.",
        "Thanks for shopping with us!",
        "Returns are free within 30 days.",
    ],
    close: &[
        "Best regards, the Shop team",
        "Cheers",
        "",
        "-- Customer service",
    ],
};

const TEST: Set = Set {
    greet: &[
        "Good morning {name}!",
        "{name}, here is your receipt.",
        "Greetings,",
        "",
    ],
    order: &[
        "Reference for your purchase: {}.",
        "Purchase {} is ready to ship.",
        "Confirmation no. {} attached.",
        "Regarding purchase {}:",
    ],
    amount: &[
        "Amount paid: {}.",
        "We charged {} to your card ending in {d4}.",
        "Grand total {} incl. VAT.",
        "Payment of {} received for {qty} articles.",
    ],
    date: &["Date of purchase: {}.", "Processed {}.", "Arrives {}."],
    email: &[
        "Questions? Write to {}.",
        "A receipt was e-mailed to {}.",
        "Reply-To: {}",
    ],
    tracking: &[
        "Shipment {} is on its way via {carrier}.",
        "Use code {} on the {carrier} website.",
        "Parcel ID {} ({carrier}).",
    ],
    filler: &[
        "Our hotline +44 20 7946 {d4} is open 9-17.",
        "{qty} articles were packed.",
        "Please keep this message for your records.",
        "Unit {d2}, 221 Baker Street, London.",
    ],
    close: &["Kind regards", "Your support team", "", "Thank you."],
};

/// `n` examples (`{"input": {"text": ...}, "output": {...}}`) from `templates`.
pub fn examples(seed: u64, n: usize, templates: Templates) -> Vec<Value> {
    let set = match templates {
        Templates::Train => &TRAIN,
        Templates::Test => &TEST,
    };
    let mut r = Rng(seed ^ 0x0e17_ac70);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut out_obj = Map::new();
        for f in FIELDS {
            out_obj.insert(f.to_string(), Value::Null);
        }
        let qty = (1 + r.below(9)).to_string();
        let d4 = r.digits(4);
        let d2 = (1 + r.below(40)).to_string();
        let name = r.pick(&["Anna", "James", "Li", "Maria", "Tom", "Sofia"]);
        let fill = |s: &str, v: &str, carrier: &str| {
            s.replace("{}", v)
                .replace("{qty}", &qty)
                .replace("{d4}", &d4)
                .replace("{d2}", &d2)
                .replace("{name}", name)
                .replace("{carrier}", carrier)
        };
        let mut parts: Vec<String> = Vec::new();
        if r.chance(0.9) {
            let (text, id) = order_id(&mut r);
            parts.push(fill(r.pick(set.order), &text, ""));
            out_obj.insert("order_id".into(), json!(id));
        }
        if r.chance(0.85) {
            let (text, value, code) = amount(&mut r);
            parts.push(fill(r.pick(set.amount), &text, ""));
            out_obj.insert("total".into(), json!(value));
            out_obj.insert("currency".into(), json!(code));
        }
        if r.chance(0.85) {
            let (text, iso) = date(&mut r);
            parts.push(fill(r.pick(set.date), &text, ""));
            out_obj.insert("date".into(), json!(iso));
        }
        if r.chance(0.8) {
            let e = email(&mut r);
            parts.push(fill(r.pick(set.email), &e, ""));
            out_obj.insert("email".into(), json!(e));
        }
        if r.chance(0.75) {
            let (code, carrier) = tracking(&mut r);
            parts.push(fill(r.pick(set.tracking), &code, carrier));
            out_obj.insert("tracking".into(), json!(code));
        }
        for _ in 0..r.below(3) {
            parts.push(fill(r.pick(set.filler), "", ""));
        }
        // Shuffle the sentences (Fisher–Yates).
        for i in (1..parts.len()).rev() {
            let j = r.below(i + 1);
            parts.swap(i, j);
        }
        let greet = fill(r.pick(set.greet), "", "");
        let close = fill(r.pick(set.close), "", "");
        let sep = if r.chance(0.5) { "\n" } else { " " };
        let mut text = String::new();
        if !greet.is_empty() {
            text.push_str(&greet);
            text.push('\n');
        }
        text.push_str(&parts.join(sep));
        if !close.is_empty() {
            text.push('\n');
            text.push_str(&close);
        }
        out.push(json!({"input": {"text": text}, "output": Value::Object(out_obj)}));
    }
    out
}

/// A specification of the task with these examples.
pub fn spec(examples: Vec<Value>) -> Value {
    json!({
        "name": "order-extract",
        "description": "order details from order confirmation and shipping e-mails",
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        "output_schema": {"type": "object", "properties": {
            "order_id": {"type": ["string", "null"]},
            "total": {"type": ["number", "null"]},
            "currency": {"type": ["string", "null"]},
            "date": {"type": ["string", "null"], "format": "date"},
            "email": {"type": ["string", "null"], "format": "email"},
            "tracking": {"type": ["string", "null"]}
        }},
        "examples": examples,
    })
}

/// Per-field exact match of `program` on `examples`: (field, correct, total), plus
/// whole-object matches.
pub fn score(
    program: &loopai_core::Program,
    examples: &[Value],
) -> (Vec<(String, usize, usize)>, usize) {
    let mut per = vec![0usize; FIELDS.len()];
    let mut all = 0;
    for ex in examples {
        let got = program
            .evaluate(&ex["input"])
            .map(|o| o.output)
            .unwrap_or(Value::Null);
        let mut ok_all = true;
        for (j, f) in FIELDS.iter().enumerate() {
            let want = &ex["output"][f];
            let have = got.get(f).unwrap_or(&Value::Null);
            let ok = match (want, have) {
                (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
                (a, b) => a == b,
            };
            per[j] += usize::from(ok);
            ok_all &= ok;
        }
        all += usize::from(ok_all);
    }
    (
        FIELDS
            .iter()
            .zip(per)
            .map(|(f, c)| (f.to_string(), c, examples.len()))
            .collect(),
        all,
    )
}
