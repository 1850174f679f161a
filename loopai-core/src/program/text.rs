//! Text primitives shared by preprocessing and features: the documented n-gram hash,
//! tokenization and the fixed placeholder patterns. Everything here is part of the
//! `loopai.program/1` format: changing a result changes what programs compute.

use std::sync::LazyLock;

use regex::Regex;
use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};

/// The documented hash of an n-gram string: `fmix64(fnv1a64(seed, utf8))`.
pub fn ngram_hash(seed: u64, text: &str) -> u64 {
    crate::fnv::hash(seed, text.as_bytes())
}

/// Bucket of a finished hash for a table of `2^bits` entries (`bits` in 1..=24).
#[inline]
pub(crate) fn bucket(hash: u64, bits: u32) -> u32 {
    (hash >> (64 - bits)) as u32
}

/// Is `c` part of a word token (`alnum` tokenizer)?
#[inline]
pub(crate) fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// ASCII bytes that belong to `alnum` tokens.
static ASCII_WORD: [bool; 128] = {
    let mut t = [false; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'_';
        b += 1;
    }
    t
};

/// How `word_ngrams` splits a text into tokens (`tokens` in the format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenMode {
    /// Maximal runs of alphanumeric characters and `_`.
    Alnum,
    /// Maximal runs of non-whitespace characters.
    Whitespace,
    /// As `Alnum`, except that every character of a script written without spaces between
    /// words ([`is_unspaced`]) is a token of its own.
    AlnumCjk,
}

/// Is `c` in a script written without spaces between words: Thai and Lao
/// (U+0E00–U+0EFF), Myanmar (U+1000–U+109F), Khmer (U+1780–U+17FF), Hiragana and Katakana
/// (U+3040–U+30FF, U+31F0–U+31FF, U+FF66–U+FF9F), CJK ideographs (U+3400–U+4DBF,
/// U+4E00–U+9FFF, U+F900–U+FAFF, U+20000–U+3134F)? Fixed ranges, so that the result never
/// depends on a Unicode table version.
#[inline]
pub fn is_unspaced(c: char) -> bool {
    matches!(u32::from(c),
        0x0E00..=0x0EFF
        | 0x1000..=0x109F
        | 0x1780..=0x17FF
        | 0x3040..=0x30FF
        | 0x31F0..=0x31FF
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xF900..=0xFAFF
        | 0xFF66..=0xFF9F
        | 0x20000..=0x3134F)
}

/// Pushes the byte ranges of the tokens of `text` into `out` (see [`TokenMode`]).
pub(crate) fn tokenize(text: &str, mode: TokenMode, out: &mut Vec<(u32, u32)>) {
    out.clear();
    let bytes = text.as_bytes();
    let alnum = mode != TokenMode::Whitespace;
    if text.is_ascii() {
        let n = bytes.len();
        let mut i = 0;
        while i < n {
            // Skip separators, then take a run of token bytes.
            while i < n && !ascii_inside(bytes[i], alnum) {
                i += 1;
            }
            let start = i;
            while i < n && ascii_inside(bytes[i], alnum) {
                i += 1;
            }
            if i > start {
                out.push((start as u32, i as u32));
            }
        }
        return;
    }
    // Mostly ASCII text with a few other characters: ASCII bytes are classified by the
    // table, only the others are decoded.
    let mut start = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let c = if b < 0x80 {
            let inside = ascii_inside(b, alnum);
            match (inside, start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    out.push((s as u32, i as u32));
                    start = None;
                }
                _ => {}
            }
            i += 1;
            continue;
        } else {
            text[i..]
                .chars()
                .next()
                .expect("a char starts at a byte >= 0x80")
        };
        let at = i;
        i += c.len_utf8();
        if mode == TokenMode::AlnumCjk && is_unspaced(c) {
            if let Some(s) = start.take() {
                out.push((s as u32, at as u32));
            }
            out.push((at as u32, i as u32));
            continue;
        }
        let inside = if alnum {
            is_word_char(c)
        } else {
            !c.is_whitespace()
        };
        match (inside, start) {
            (true, None) => start = Some(at),
            (false, Some(s)) => {
                out.push((s as u32, at as u32));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s as u32, bytes.len() as u32));
    }
}

#[inline(always)]
fn ascii_inside(b: u8, alnum: bool) -> bool {
    if alnum {
        ASCII_WORD[usize::from(b & 0x7f)]
    } else {
        !b.is_ascii_whitespace()
    }
}

/// Placeholder-replacement patterns (`preprocess` step `replace`). Fixed by the format.
pub(crate) static URL_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)\b(?:https?://|www\.)[^\s<>"']+"#).expect("URL pattern compiles")
});
pub(crate) static EMAIL_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b[a-z0-9._%+\-]+@[a-z0-9.\-]+\.[a-z]{2,}\b").expect("e-mail pattern compiles")
});
pub(crate) static NUMBER_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[0-9]+(?:[.,][0-9]+)*").expect("number pattern compiles"));

/// Which fixed pattern a `replace` step uses; each has a cheap necessary condition that
/// lets most texts skip the regex search entirely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placeholder {
    Url,
    Email,
    Number,
}

impl Placeholder {
    pub(crate) fn regex(self) -> &'static Regex {
        match self {
            Placeholder::Url => &URL_RE,
            Placeholder::Email => &EMAIL_RE,
            Placeholder::Number => &NUMBER_RE,
        }
    }

    /// False only when the pattern certainly cannot match `text`.
    #[inline]
    pub(crate) fn may_match(self, text: &str) -> bool {
        let b = text.as_bytes();
        match self {
            // Every URL match contains "://" or "www." (any case). The candidates are
            // found by memchr's vectorised search: a long text costs a few instructions
            // per 16 or 32 bytes instead of a comparison per byte.
            Placeholder::Url => memchr::memchr3_iter(b':', b'w', b'W', b).any(|i| match b[i] {
                b':' => b[i + 1..].starts_with(b"//"),
                _ => b.len() >= i + 4 && b[i..i + 4].eq_ignore_ascii_case(b"www."),
            }),
            Placeholder::Email => b.contains(&b'@'),
            Placeholder::Number => b.iter().any(u8::is_ascii_digit),
        }
    }
}

/// Cuts `s` to [`truncate_str`]`(s, max)`.
#[inline]
fn cut(s: &mut String, max: usize) {
    let keep = truncate_str(s, max).len();
    s.truncate(keep);
}

/// Writes `src` into `dst` with every match of `re` replaced by `with`, cut at `cap`
/// bytes (at a UTF-8 boundary): the same text as replacing everything and then cutting,
/// without ever building more than `cap` plus one piece.
pub(crate) fn replace_into(re: &Regex, src: &str, with: &str, dst: &mut String, cap: usize) {
    dst.clear();
    let mut last = 0;
    for m in re.find_iter(src) {
        dst.push_str(&src[last..m.start()]);
        dst.push_str(with);
        last = m.end();
        if dst.len() >= cap {
            cut(dst, cap);
            return;
        }
    }
    dst.push_str(&src[last..]);
    cut(dst, cap);
}

/// Unicode NFKC of `src` into `dst`, cut at `cap` bytes (at a UTF-8 boundary).
pub(crate) fn nfkc_into(src: &str, dst: &mut String, cap: usize) {
    dst.clear();
    if src.is_ascii() || is_nfkc_quick(src.chars()) == IsNormalized::Yes {
        dst.push_str(src);
    } else {
        for c in src.nfkc() {
            if dst.len() >= cap {
                break;
            }
            dst.push(c);
        }
    }
    cut(dst, cap);
}

/// Unicode lowercase of `src` into `dst` (`char::to_lowercase`), cut at `cap` bytes (at a
/// UTF-8 boundary).
pub(crate) fn lowercase_into(src: &str, dst: &mut String, cap: usize) {
    dst.clear();
    if src.is_ascii() {
        dst.push_str(src);
        dst.make_ascii_lowercase();
    } else {
        // Runs of ASCII are copied and lowered at once, other characters one by one. A
        // run may go past `cap`: the cut below gives the same prefix as stopping there.
        let bytes = src.as_bytes();
        let mut i = 0;
        while i < bytes.len() && dst.len() < cap {
            let run = bytes[i..].iter().take_while(|b| b.is_ascii()).count();
            if run > 0 {
                let from = dst.len();
                dst.push_str(&src[i..i + run]);
                dst.as_mut_str()[from..].make_ascii_lowercase();
                i += run;
                continue;
            }
            let c = src[i..]
                .chars()
                .next()
                .expect("a char starts at a non-ASCII byte");
            dst.extend(c.to_lowercase());
            i += c.len_utf8();
        }
    }
    cut(dst, cap);
}

/// Trims and collapses every run of whitespace to one ASCII space.
pub(crate) fn collapse_whitespace_into(src: &str, dst: &mut String) {
    dst.clear();
    let mut pending_space = false;
    for part in src.split(char::is_whitespace) {
        if part.is_empty() {
            continue;
        }
        if pending_space {
            dst.push(' ');
        }
        dst.push_str(part);
        pending_space = true;
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
#[inline]
pub(crate) fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fnv::{fmix64, Fnv, FNV_OFFSET};

    #[test]
    fn ngram_hash_is_fixed_across_releases() {
        // These values are part of the format: programs store weights by bucket.
        assert_eq!(ngram_hash(0, ""), fmix64(FNV_OFFSET));
        assert_eq!(ngram_hash(0, "free"), 0x469b_fc5d_67aa_e2de);
        assert_eq!(ngram_hash(7, "free prize"), 0xa949_58cb_4d19_478a);
        let mut h = Fnv::new(7);
        h.write(b"free");
        h.write_u8(b' ');
        h.write(b"prize");
        assert_eq!(h.finish(), ngram_hash(7, "free prize"));
    }

    #[test]
    fn tokenize_ascii_and_unicode_agree_on_word_runs() {
        let mut out = Vec::new();
        tokenize("Win £100, now!", TokenMode::Alnum, &mut out);
        let words: Vec<_> = out
            .iter()
            .map(|&(s, e)| &"Win £100, now!"[s as usize..e as usize])
            .collect();
        assert_eq!(words, ["Win", "100", "now"]);
        tokenize("hi there_you 42", TokenMode::Alnum, &mut out);
        assert_eq!(out, [(0, 2), (3, 12), (13, 15)]);
        tokenize("a  b\tc!", TokenMode::Whitespace, &mut out);
        assert_eq!(out, [(0, 1), (3, 4), (5, 7)]);
        tokenize("hi there_you 42", TokenMode::AlnumCjk, &mut out);
        assert_eq!(out, [(0, 2), (3, 12), (13, 15)]);
    }

    /// The char-by-char definitions the fast paths must agree with.
    fn tokenize_by_chars(text: &str, mode: TokenMode) -> Vec<(u32, u32)> {
        let (mut out, mut start) = (Vec::new(), None);
        for (i, c) in text.char_indices() {
            if mode == TokenMode::AlnumCjk && is_unspaced(c) {
                if let Some(s) = start.take() {
                    out.push((s as u32, i as u32));
                }
                out.push((i as u32, (i + c.len_utf8()) as u32));
                continue;
            }
            let inside = match mode {
                TokenMode::Whitespace => !c.is_whitespace(),
                _ => is_word_char(c),
            };
            match (inside, start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    out.push((s as u32, i as u32));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            out.push((s as u32, text.len() as u32));
        }
        out
    }

    fn lowercase_by_chars(src: &str, cap: usize) -> String {
        let mut dst = String::new();
        for c in src.chars() {
            if dst.len() >= cap {
                break;
            }
            dst.extend(c.to_lowercase());
        }
        truncate_str(&dst, cap).to_string()
    }

    #[test]
    fn mixed_text_fast_paths_agree_with_the_char_by_char_definitions() {
        // ASCII with a few other characters, as in most long documents: accented and
        // Greek capitals, a capital whose lowercase is two chars (İ), ideographs and kana,
        // Thai, non-ASCII spaces, digits of other scripts.
        let palette = [
            "a", "Z", "_", "7", " ", "\n", "\t", ".", "-", "@", "É", "ß", "Σ", "İ", "ǅ", "日",
            "本", "カ", "ไ", "\u{a0}", "\u{3000}", "٣", "é", "Ω", "ﬁ", "😀",
        ];
        let mut rng = fastrand::Rng::with_seed(5);
        let mut out = Vec::new();
        let mut dst = String::new();
        for round in 0..2000 {
            let len = rng.usize(0..40);
            let t: String = (0..len)
                .map(|_| {
                    // Mostly ASCII letters.
                    if rng.u8(..4) > 0 {
                        palette[rng.usize(..4)]
                    } else {
                        palette[rng.usize(..palette.len())]
                    }
                })
                .collect();
            for mode in [TokenMode::Alnum, TokenMode::Whitespace, TokenMode::AlnumCjk] {
                tokenize(&t, mode, &mut out);
                assert_eq!(
                    out,
                    tokenize_by_chars(&t, mode),
                    "round {round} {mode:?} {t:?}"
                );
            }
            for cap in [usize::MAX, rng.usize(0..50)] {
                lowercase_into(&t, &mut dst, cap);
                assert_eq!(
                    dst,
                    lowercase_by_chars(&t, cap),
                    "round {round} cap {cap} {t:?}"
                );
            }
        }
    }

    #[test]
    fn alnum_cjk_tokens_split_unspaced_scripts_into_characters() {
        let words = |t: &'static str, mode| {
            let mut out = Vec::new();
            tokenize(t, mode, &mut out);
            out.iter()
                .map(|&(s, e)| &t[s as usize..e as usize])
                .collect::<Vec<_>>()
        };
        let t = "退款到账了吗? refund_2 東京タワー, สวัสดี ok";
        assert_eq!(
            words(t, TokenMode::AlnumCjk),
            [
                "退", "款", "到", "账", "了", "吗", "refund_2", "東", "京", "タ", "ワ", "ー", "ส",
                "ว", "ั", "ส", "ด", "ี", "ok"
            ]
        );
        // The plain alnum tokenizer keeps a run of ideographs as one token.
        assert_eq!(words("退款到账 ok", TokenMode::Alnum), ["退款到账", "ok"]);
        // Hangul is written with spaces: words stay whole.
        assert_eq!(words("환불 요청", TokenMode::AlnumCjk), ["환불", "요청"]);
    }

    #[test]
    fn placeholder_prechecks_never_skip_a_match() {
        for text in [
            "see HTTP://x.io",
            "WwW.example.com",
            "a@b.co",
            "x1",
            "ftp://h/p",
            "no match here",
            "wwwwwww.example.org",
            "wow, a:/b and then http://late.example",
            &format!("{}https://far.example/p", "word, ".repeat(40)),
        ] {
            for kind in [Placeholder::Url, Placeholder::Email, Placeholder::Number] {
                if kind.regex().is_match(text) {
                    assert!(kind.may_match(text), "{kind:?} on {text:?}");
                }
            }
        }
        assert!(!Placeholder::Url.may_match("plain words only"));
        for text in ["ends in www", "ends in :/", "w", ":", "www", "a:/ /b wWw,"] {
            assert!(!Placeholder::Url.may_match(text), "{text:?}");
        }
        assert!(!Placeholder::Number.may_match("no digits"));
    }

    #[test]
    fn preprocessing_helpers() {
        let mut dst = String::new();
        collapse_whitespace_into("  a \n\t b  ", &mut dst);
        assert_eq!(dst, "a b");
        lowercase_into("ÀB", &mut dst, usize::MAX);
        assert_eq!(dst, "àb");
        nfkc_into("ﬁ①", &mut dst, usize::MAX);
        assert_eq!(dst, "fi1");
        replace_into(
            &URL_RE,
            "see http://x.io/a?b=1 or www.y.com.",
            "URL",
            &mut dst,
            usize::MAX,
        );
        assert_eq!(dst, "see URL or URL");
        replace_into(&EMAIL_RE, "mail a.b@c.org now", "@", &mut dst, usize::MAX);
        assert_eq!(dst, "mail @ now");
        replace_into(&NUMBER_RE, "call 0800 123,45 x2", "#", &mut dst, usize::MAX);
        assert_eq!(dst, "call # # x#");
        assert_eq!(truncate_str("héllo", 2), "h");
        // Capped steps give the prefix of the uncapped result, cut at a char boundary.
        replace_into(&NUMBER_RE, "a 1 b 2", "ééé", &mut dst, 6);
        assert_eq!(dst, "a éé");
        nfkc_into("ﬁﬁﬁ", &mut dst, 3);
        assert_eq!(dst, "fif");
        lowercase_into("ÀÀÀ", &mut dst, 5);
        assert_eq!(dst, "àà");
        assert_eq!(truncate_str("héllo", 3), "hé");
    }
}
