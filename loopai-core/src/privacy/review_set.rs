//! An independent, hand-written review set for the [`PiiFilter`](super::PiiFilter):
//! realistic chat messages, e-mails, support tickets, log lines, JSON-ish text and
//! multilingual text, with PII in real-world formats, plus hard negatives (timestamps,
//! ids, hashes, versions, amounts, ISBNs, coordinates, dates, MAC addresses...).
//!
//! It is written independently of `corpus.rs` (no generator): every case is a literal.
//! Entities are marked inline as `«k|text»`, `k` being `e` (e-mail), `p` (phone), `s`
//! (SSN), `c` (card), `b` (IBAN) or `i` (IP); the markers are removed to get the text.
//! A marked entity counts as found when one match of its kind covers it exactly.

use super::{PiiFilter, PiiKind};

/// Texts with marked entities. Every unmarked span must stay unredacted.
pub(crate) const POSITIVES: &[&str] = &[
    // ---- e-mail -------------------------------------------------------------------
    "From: Alice Martin <«e|alice.martin@example.com»>",
    "Reply-To: \"Support\" <«e|support+ticket-4411@help.example.org»>",
    "please write to \"«e|jane.doe@example.net»\" instead",
    "<a href=\"mailto:«e|bob.smith@example.com»\">mail me</a>",
    "mailto:«e|sales@example.com»?subject=Quote%20request",
    "Contact: «e|John.Doe@Example.COM»",
    "my work address is «e|PRIYA.SHARMA@INFOSYS.CO.IN».",
    "send it to «e|tom@bbc.co.uk», thanks!",
    "is «e|hello@studio.design» still monitored?",
    "ping «e|dev@startup.technology»; cc «e|ops@startup.technology»",
    "Mail an «e|jürgen.müller@bücher.de» bitte",
    "punycode: «e|info@xn--bcher-kva.de»",
    "(«e|maria_garcia@correo.es»)",
    "emails: «e|a.b@c.io»,«e|x_y@z.dev»",
    "{\"email\":\"«e|user123@mail.example.com»\",\"plan\":\"pro\"}",
    "email=«e|first.last@sub.domain.example.org»&ref=newsletter",
    "Can someone reset «e|o'brien@example.ie»'s password?",
    "user «e|k.tanaka@example.jp» logged in",
    "Mon adresse : «e|élodie.dupont@exemple.fr» !",
    "Her address is «e|nora-lee99@example.museum»...",
    "[«e|noreply@github.com»] build failed",
    "'«e|single@quoted.com»'",
    "CC:«e|finance@acme-corp.com»",
    "user <«e|ADMIN@EXAMPLE.ORG»> wrote:",
    "forward to «e|first.last+filter@gmail.com»?",
    "«e|a@b.co»",
    // ---- phone: North America ---------------------------------------------------------
    "Call me at «p|(212) 555-0147» after 5pm",
    "my cell is «p|212-555-0147», text first",
    "office: «p|212.555.0147»",
    "Support line «p|+1 212 555 0147» (24/7)",
    "WhatsApp «p|+12125550147»",
    "dial «p|1 (800) 555-0199» for billing",
    "Toll free: «p|1-800-555-0199».",
    "<a href=\"tel:«p|+1-212-555-0147»\">call</a>",
    "tel:«p|+14155552671»",
    "phone=«p|+1 (415) 555-2671»;",
    "Reach Dave on «p|(415)555-2671», ext. 12",
    "Direct: «p|415-555-2671» x123",
    "{\"phone\": \"«p|+1 646 555 0182»\"}",
    "fax «p|+1.415.555.2671»",
    "Canada: «p|+1 604 555 0134»",
    // ---- phone: Europe ----------------------------------------------------------------
    "UK mobile «p|+44 7700 900123»",
    "ring «p|07700 900 123» tonight",
    "London office «p|020 7946 0958»",
    "Manchester «p|0161 496 0000»",
    "Tel. «p|+44 (0)161 496 0000»",
    "Durchwahl «p|+49 30 901820»",
    "Telefon: «p|030 12345678»",
    "Handy «p|0151 23456789»",
    "mobil «p|+49 151 23456789»",
    "Tel.: «p|+49 (0)89 636 48018»",
    "Ruf an: «p|0049 89 636 48018»",
    "Fax: «p|030-1234567»",
    "Telefon «p|(030) 1234567»",
    "Appelez le «p|06 12 34 56 78» svp",
    "mon portable : «p|+33 6 12 34 56 78»",
    "bureau «p|01.42.68.53.00»",
    "standard «p|01-42-68-53-00»",
    "Tel «p|+33 (0)1 42 68 53 00»",
    "bel me op «p|06-12345678»",
    "kantoor «p|+31 20 123 4567»",
    "vast nummer «p|020-1234567»",
    "llámame al «p|+34 612 34 56 78»",
    "móvil «p|612 34 56 78»",
    "chiamami al «p|+39 06 6982 1234»",
    "ufficio «p|06 6982 1234»",
    "ring «p|+46 8 123 456 78»",
    "zadzwoń «p|+48 22 123 45 67»",
    "Tel. «p|+41 44 668 18 00»",
    "Ruf «p|+43 1 58058 0»",
    "call «p|+353 1 234 5678»",
    "телефон «p|+7 495 123-45-67»",
    "мобильный «p|+7 (912) 345-67-89»",
    // ---- phone: rest of the world -----------------------------------------------------
    "mera number «p|+91 98765 43210» hai",
    "call «p|+91-98765-43210»",
    "WhatsApp «p|98765 43210»",
    "電話 «p|+81 3-1234-5678»",
    "携帯 «p|090-1234-5678»",
    "会社 «p|03-1234-5678»",
    "手机 «p|+86 138 0013 8000»",
    "手机：«p|138 0013 8000»",
    "call «p|+61 2 9876 5432»",
    "office «p|(02) 9876 5432»",
    "mobile «p|0412 345 678»",
    "mobile «p|+61 412 345 678»",
    "ligue «p|+55 11 91234-5678»",
    "«p|+52 55 1234 5678» (CDMX)",
    "call «p|+27 21 123 4567»",
    "cell «p|082 123 4567»",
    "«p|+82 10-1234-5678»",
    "휴대폰 «p|010-1234-5678»",
    "«p|+65 6123 4567»",
    "HK office «p|+852 2123 4567»",
    "«p|+971 4 123 4567»",
    "call «p|+234 803 123 4567»",
    "Ext: «p|+1 212 555 0147» ext. 12",
    "Contact «p|+44 20 7946 0958»?",
    // ---- SSN ----------------------------------------------------------------------------
    "SSN: «s|078-05-1120»",
    "my social is «s|219-09-9999», please keep it safe",
    "ssn=«s|536-22-1234»&dob=1980-01-01",
    "Social Security Number «s|123 45 6789».",
    "{\"ssn\":\"«s|401-23-4567»\"}",
    "SSN#«s|372-44-1092»",
    "the applicant («s|529-78-3310») was approved",
    // ---- credit cards -------------------------------------------------------------------
    "Visa «c|4111 1111 1111 1111» exp 12/26",
    "card: «c|4012888888881881»",
    "charge «c|4242-4242-4242-4242».",
    "Mastercard «c|5555 5555 5555 4444»!",
    "MC «c|5105105105105100»",
    "new MC range «c|2223 0031 2200 3222»",
    "Amex «c|3782 822463 10005», CVV 1234",
    "amex: «c|371449635398431».",
    "Amex «c|3714-496353-98431»",
    "Discover «c|6011 1111 1111 1117»",
    "discover «c|6011000990139424»;",
    "Diners «c|3056 930902 5904»",
    "Diners «c|38520000023237»",
    "JCB «c|3530 1113 3330 0000»",
    "JCB «c|3566002020360505»",
    "UnionPay «c|6200 0000 0000 0005»",
    "Maestro «c|6759649826438453»",
    "{\"pan\":\"«c|4000056655665556»\"}",
    "card_number=«c|5200828282828210»&cvc=123",
    "Paid with «c|4111111111111111», thanks",
    "(«c|5555-5555-5555-4444»)",
    // 12–19 digits outside 13–16: Maestro 12/13/19, Mir, RuPay, Troy, Verve, Dankort...
    "Maestro «c|5018 1234 5673» exp 09/27",
    "maestro card «c|675912345674»",
    "Maestro UK «c|6304-1234-5674»",
    "Maestro «c|5893 1234 5673», thanks",
    "card «c|6759 0012 34561»",
    "Maestro «c|6763 1234 5678 9012 344»",
    "Карта Мир «c|2204 1234 5678 9015»",
    "Мир «c|2201 1234 5678 9012 349»",
    "RuPay «c|6071 1234 5678 9016»",
    "RuPay «c|8171-1234-5678-9011»",
    "Troy «c|9792 1234 5678 9018»",
    "Verve «c|5060991234567895»",
    "Dankort «c|5019 1234 5678 9013»",
    "UnionPay «c|6200 1234 5678 9012 347»",
    "Discover «c|64451234567890129»",
    "Mastercard «c|2720 1234 5678 9010»",
    // ---- IBAN ---------------------------------------------------------------------------
    "Bitte überweisen an «b|DE89 3704 0044 0532 0130 00».",
    "IBAN: «b|DE89370400440532013000»",
    "pay to «b|GB29 NWBK 6016 1331 9268 19»",
    "virement sur «b|FR14 2004 1010 0505 0001 3M02 606»",
    "cuenta «b|ES91 2100 0418 4502 0005 1332»",
    "IBAN «b|IT60 X054 2811 1010 0000 0123 456»",
    "rekening «b|NL91 ABNA 0417 1643 00»",
    "compte «b|BE68 5390 0754 7034»",
    "Konto «b|CH93 0076 2011 6238 5295 7»",
    "Konto «b|AT61 1904 3002 3457 3201»",
    "konto «b|PL61 1090 1014 0000 0712 1981 2874»",
    "konto «b|SE45 5000 0000 0583 9825 7466»",
    "konto «b|NO93 8601 1117 947»",
    "konto «b|DK50 0040 0440 1162 43»",
    "tili «b|FI21 1234 5600 0007 85»",
    "account «b|IE29 AIBK 9311 5212 3456 78»",
    "conta «b|PT50 0002 0123 1234 5678 9015 4»",
    "compte «b|LU28 0019 4006 4475 0000»",
    "IBAN «b|SA03 8000 0000 6080 1016 7519»",
    "IBAN «b|MT84 MALT 0110 0001 2345 MTLC AST0 01S»",
    "hesap «b|TR33 0006 1005 1978 6457 8413 26»",
    "IBAN «b|AE07 0331 2345 6789 0123 456»",
    "λογαριασμός «b|GR16 0110 1250 0000 0001 2300 695»",
    "számla «b|HU42 1177 3016 1111 1018 0000 0000»",
    "účet «b|CZ65 0800 0000 1920 0014 5399»",
    "{\"iban\":\"«b|GB29NWBK60161331926819»\"}",
    "iban: «b|de89 3704 0044 0532 0130 00»",
    "iban «b|gb29nwbk60161331926819»",
    "IBAN «b|DE89 37040044 0532013000»",
    "IBAN «b|FR1420041010050500013M02606».",
    // ---- IP -----------------------------------------------------------------------------
    "GET http://«i|192.168.0.12»:8080/admin HTTP/1.1",
    "db connect client=«i|10.0.0.1»:5432 user=app",
    "Failed password for root from «i|203.0.113.7» port 22 ssh2",
    "allow «i|10.0.0.0»/8 and «i|172.16.0.0»/12",
    "X-Forwarded-For: «i|203.0.113.195», «i|70.41.3.18»",
    "ip=«i|172.16.254.1»;",
    "my IP is «i|8.8.8.8».",
    "listening on [«i|2001:db8::1»]:443",
    "http://[«i|2001:db8:85a3::8a2e:370:7334»]/index.html",
    "addr «i|2001:0db8:85a3:0000:0000:8a2e:0370:7334»",
    "peer «i|2001:DB8::FF00:42:8329» connected",
    "link-local «i|fe80::1ff:fe23:4567:890a»%eth0",
    "mapped «i|::ffff:10.0.0.1»",
    "route «i|2001:db8::»/32",
    "{\"remote_addr\":\"«i|198.51.100.23»\"}",
    "nginx: «i|198.51.100.23» - - [15/Mar/2024:10:30:00 +0000] \"GET / HTTP/1.1\" 200",
    // ---- harder layouts ------------------------------------------------------------
    "Tel.\u{a0}«p|06\u{a0}12\u{a0}34\u{a0}56\u{a0}78»",
    "Tél : «p|+33\u{202f}1\u{202f}42\u{202f}68\u{202f}53\u{202f}00»",
    "call «p|212–555–0147» (en dashes)",
    "Please call «p|+44 20\n7946 0958» today",
    "电话号码是«p|138-0013-8000»，谢谢",
    "電話番号は«p|090-1234-5678»です",
    "連絡先：«e|tanaka@example.co.jp»まで",
    "휴대폰은 «p|010-1234-5678»입니다",
    "«p|(+44) 20 7946 0958»",
    "«p|+49 (30) 901820»",
    "ligue «p|(11) 91234-5678»",
    "звоните «p|8 (495) 123-45-67»",
    "chiamami «p|333 123 4567»",
    "Email:«e|bob@example.com»",
    "(email «e|bob@example.com.au»)",
    "«e|info@example.xn--p1ai»",
    "IBAN:«b|DE89370400440532013000»",
    "IBAN «b|DE89 3704 0044 0532 0130 00» BIC COBADEFFXXX",
    "subnet «i|192.168.1.1»/24",
    "IPv4=«i|127.0.0.1»",
    "ping «i|1.1.1.1» and «i|fe80::1»%eth0",
    "Visa «c|4222222222222»",
    "Maestro «c|6799 9901 0000 0000 019»",
    "{\"card\": «c|4111111111111111», \"cvv\": 123}",
    "card «c|4111 1111 1111 1111»\nexp 12/26",
    "SSN: «s|078-05-1120»\n",
    // ---- mixed ----------------------------------------------------------------------
    "Ticket #48213: customer «e|jane@example.com» («p|+44 7700 900123») paid with «c|4111 1111 1111 1111» from «i|81.2.69.160»",
    "Name: J. Doe\nSSN: «s|078-05-1120»\nPhone: «p|(212) 555-0147»\nEmail: «e|jdoe@example.com»",
    "Hola, soy Ana. Mi IBAN es «b|ES91 2100 0418 4502 0005 1332» y mi móvil «p|+34 612 34 56 78».",
];

/// Hard negatives: text with numbers and symbols that are not personal data.
pub(crate) const NEGATIVES: &[&str] = &[
    // timestamps and dates
    "2024-03-15T10:30:00Z",
    "2024-03-15T10:30:00.123+02:00",
    "[2024-03-15 10:30:00,123] INFO worker-3 processed 1523 items in 0.532s",
    "Fri, 15 Mar 2024 10:30:00 +0200",
    "ts=1710498600 level=info msg=started",
    "created_at: 2024/03/15 14:30:59",
    "due 15/03/2024, paid 03/15/2024",
    "Datum: 15.03.2024, 16.03.2024",
    "le 15-03-2024 à 14h30",
    "between 2019-2024 and 2020-2021",
    "March 15, 2024 at 10:30 AM",
    "date 20240315 build 1234",
    "10:30:45.123456",
    "uptime 12:34:56, load 0.12 0.34 0.56",
    // ids, hashes, uuids
    "request_id=550e8400-e29b-41d4-a716-446655440000",
    "UUID 123e4567-e89b-12d3-a456-426614174000",
    "md5 d41d8cd98f00b204e9800998ecf8427e",
    "commit a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "fingerprint SHA256:43:51:43:a1:b5:fc:8b:b7:0a:3a:a9:b1:0f:66:73:a8",
    "trace 4bf92f3577b34da6a3ce929d0e0e4736 span 00f067aa0ba902b7",
    "object id 507f1f77bcf86cd799439011",
    // versions
    "upgraded to v2.14.3 from 2.13.0",
    "release 1.2.3-beta.4+build.5678",
    "Python 3.11.4 on Linux 6.5.0-27-generic",
    "Windows 10.0.19045.3693",
    "Mozilla/5.0 Chrome/120.0.6099.109 Safari/537.36",
    "node v18.19.0, npm 10.2.3",
    "kernel 5.15.0-1051-azure",
    // order and tracking numbers
    "Order #112-7654321-1234567 has shipped",
    "UPS tracking 1Z999AA10123456784",
    "USPS 9400 1000 0000 0000 0000 00",
    "Invoice INV-2024-000123, ticket #4521987",
    "booking ref ABC123, flight LH 1234, seat 23A",
    "PO 4500012345 line 10",
    // amounts
    "Total: $1,234,567.89 (USD)",
    "Betrag: 12.345,67 € inkl. MwSt.",
    "montant 1 234 567,89 €",
    "CHF 1'234.50 per month",
    "JPY 1,000,000 or ¥1000000",
    "revenue grew +12.5% to €2.3bn",
    "balance: -1,250.00 EUR",
    // ISBN and product codes
    "ISBN 978-3-16-148410-0",
    "ISBN-10 0-306-40615-2",
    "SKU AB-12345-XL, model RX-7800",
    "part no. 1234-5678-90",
    // coordinates and math
    "location 48.8584, 2.2945",
    "lat=-33.8688&lng=151.2093",
    "40°44′54.3″N 73°59′08.4″W",
    "3 + 4 = 7 and 1234 * 5678 = 7006652",
    "pi ≈ 3.14159265358979",
    "6.02214076e23 and 1.602176634e-19",
    "matrix [[1, 2, 3], [4, 5, 6]]",
    // MAC addresses and network-ish, not IPs
    "MAC 00:1A:2B:3C:4D:5E",
    "hwaddr 00-1a-2b-3c-4d-5e",
    "cisco 001a.2b3c.4d5e",
    "std::vec::Vec and Result::Ok",
    "localhost ::1 loopback",
    "port 8080, pid 12345, fd 7",
    "at com.example.Foo.bar(Foo.java:123)",
    "error E1234: exit code 137",
    // phone-like but invalid or too short
    "call 555-0100 ext 4",
    "(123) 456-7890 is not a valid US number",
    "000-000-0000",
    "short code 87121",
    "room 101, floor 3, building 12",
    // card-like and IBAN-like but invalid
    "card 4111 1111 1111 1112",
    "IBAN DE89 3704 0044 0532 0130 01 bounced",
    "ssn 000-12-3456 and 666-45-6789 are invalid",
    "bare 123456789",
    // barcodes and epoch milliseconds (13 digits, like a Visa)
    "EAN 5901234123457",
    "GTIN 4006381333931",
    "ISBN 9783161484100",
    "epoch_ms=1710498600123",
    "id 1234567890128",
    // Luhn-valid by chance, but in no network's IIN range or length
    "ts 20240315103000 ok",
    "ref 2000 1234 5678 9011",
    "ticket 3100123456789018 closed",
    "order #412312345678 shipped",
    "tracking 7001 1234 5678 9019",
    "event_us=1710123456789014",
    "batch 9000 1234 5678 9012 348",
    "msisdn 447700900114",
    "order 7091 2345 6788",
    // a 12-digit Maestro prefix inside a longer number that fails Luhn
    "card 5018 1234 5673 0001 declined",
    // near misses of the wider rules (line breaks, lower case, parentheses, no-break spaces)
    "delta +1500\n2000 rows copied",
    "step (10) 2019-2020 season",
    "see note (12) 2024-03-15",
    "hash ab12cd34ef56ab78cd90ef12ab34",
    "token de12ab34cd56ef78ab90cd12ef34ab56",
    "Preis 1\u{a0}234\u{a0}567,89\u{a0}€",
    "ratio 3:2 and 16:9, build 2024.03.15.1",
    "at 8 (100) items per box",
    "価格は12,800円です",
    "注文番号：2024031512345",
    // misc
    "Score: 12-10, 3-2 after extra time",
    "chapter 3.2.1, page 45-67",
    "Dimensions 1920x1080, 60Hz",
    "temperature 21.5°C, humidity 45%",
];

/// Per-kind recall and every miss and false positive.
pub(crate) struct Review {
    pub found: Vec<(PiiKind, usize, usize)>,
    pub misses: Vec<(PiiKind, String, String)>,
    /// Matches on unmarked text: (text, kind, matched text).
    pub false_positives: Vec<(String, PiiKind, String)>,
    /// Negatives with any match: (text, kind, matched text).
    pub negative_hits: Vec<(String, PiiKind, String)>,
}

/// Splits a marked case into its text and its entities (kind, byte range).
pub(crate) fn parse(marked: &str) -> (String, Vec<(PiiKind, std::ops::Range<usize>)>) {
    let mut text = String::new();
    let mut entities = Vec::new();
    let mut rest = marked;
    while let Some(open) = rest.find('«') {
        text.push_str(&rest[..open]);
        let after = &rest[open + '«'.len_utf8()..];
        let (tag, after) = after.split_once('|').expect("marker has a kind");
        let (value, after) = after.split_once('»').expect("marker is closed");
        let kind = match tag {
            "e" => PiiKind::Email,
            "p" => PiiKind::Phone,
            "s" => PiiKind::Ssn,
            "c" => PiiKind::CreditCard,
            "b" => PiiKind::Iban,
            "i" => PiiKind::Ip,
            other => panic!("unknown kind {other:?} in {marked:?}"),
        };
        let start = text.len();
        text.push_str(value);
        entities.push((kind, start..text.len()));
        rest = after;
    }
    text.push_str(rest);
    (text, entities)
}

pub(crate) fn review(filter: &PiiFilter) -> Review {
    let mut counts: Vec<(PiiKind, usize, usize)> =
        PiiKind::ALL.iter().map(|&k| (k, 0, 0)).collect();
    let mut misses = Vec::new();
    let mut false_positives = Vec::new();
    for marked in POSITIVES {
        let (text, entities) = parse(marked);
        let found = filter.find(&text);
        for (kind, range) in &entities {
            let hit = found.iter().any(|m| m.kind == *kind && m.range == *range);
            let slot = counts.iter_mut().find(|c| c.0 == *kind).expect("kind");
            slot.2 += 1;
            if hit {
                slot.1 += 1;
            } else {
                misses.push((*kind, text[range.clone()].to_owned(), text.clone()));
            }
        }
        for m in found {
            if !entities.iter().any(|(k, r)| *k == m.kind && *r == m.range) {
                false_positives.push((text.clone(), m.kind, text[m.range].to_owned()));
            }
        }
    }
    let mut negative_hits = Vec::new();
    for text in NEGATIVES {
        for m in filter.find(text) {
            negative_hits.push(((*text).to_owned(), m.kind, text[m.range].to_owned()));
        }
    }
    Review {
        found: counts,
        misses,
        false_positives,
        negative_hits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known misses, documented in `docs/privacy.md` as limitations: a national number
    /// without a trunk `0` in a layout that is not listed (an Italian mobile).
    const MIN_RECALL: f64 = 0.95;

    #[test]
    fn review_set_recall_is_at_least_95_percent_per_kind() {
        let r = review(&PiiFilter::new());
        // The figures of docs/privacy.md: `cargo test -p loopai-core --lib review_set --
        // --nocapture`.
        for (kind, found, total) in &r.found {
            eprintln!("review set recall {kind}: {found}/{total}");
        }
        eprintln!(
            "review set: {} extra or partial matches, {} of {} hard negatives with a match",
            r.false_positives.len(),
            r.negative_hits
                .iter()
                .map(|(text, ..)| text)
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            NEGATIVES.len()
        );
        for (kind, found, total) in &r.found {
            assert!(*total >= 8, "{kind}: only {total} cases");
            let recall = *found as f64 / *total as f64;
            assert!(
                recall >= MIN_RECALL,
                "{kind}: recall {found}/{total}; misses: {:?}",
                r.misses
            );
        }
    }

    #[test]
    fn review_set_positives_have_no_extra_or_partial_matches() {
        let r = review(&PiiFilter::new());
        assert_eq!(r.false_positives, vec![]);
    }

    #[test]
    fn review_set_hard_negatives_have_no_match() {
        let r = review(&PiiFilter::new());
        assert_eq!(r.negative_hits, vec![]);
    }

    #[test]
    fn review_set_markers_parse() {
        let (text, entities) = parse("a «e|x@y.io» b «p|+44 20 7946 0958»");
        assert_eq!(text, "a x@y.io b +44 20 7946 0958");
        assert_eq!(
            entities,
            vec![(PiiKind::Email, 2..8), (PiiKind::Phone, 11..27)]
        );
        assert!(POSITIVES.len() >= 200 && NEGATIVES.len() >= 80);
    }
}
