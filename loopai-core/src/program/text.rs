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

/// Pushes the byte ranges of the tokens of `text` into `out`.
///
/// `alnum`: maximal runs of alphanumeric characters and `_`; `whitespace`: maximal runs
/// of non-whitespace characters.
pub(crate) fn tokenize(text: &str, alnum: bool, out: &mut Vec<(u32, u32)>) {
    out.clear();
    let bytes = text.as_bytes();
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
    let mut start = None;
    for (i, c) in text.char_indices() {
        let inside = if alnum {
            is_word_char(c)
        } else {
            !c.is_whitespace()
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
            // Every URL match contains "://" or "www." (any case).
            Placeholder::Url => b.iter().enumerate().any(|(i, &c)| match c {
                b':' => b[i + 1..].starts_with(b"//"),
                b'w' | b'W' => b.len() >= i + 4 && b[i..i + 4].eq_ignore_ascii_case(b"www."),
                _ => false,
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
        for c in src.chars() {
            if dst.len() >= cap {
                break;
            }
            dst.extend(c.to_lowercase());
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
        tokenize("Win £100, now!", true, &mut out);
        let words: Vec<_> = out
            .iter()
            .map(|&(s, e)| &"Win £100, now!"[s as usize..e as usize])
            .collect();
        assert_eq!(words, ["Win", "100", "now"]);
        tokenize("hi there_you 42", true, &mut out);
        assert_eq!(out, [(0, 2), (3, 12), (13, 15)]);
        tokenize("a  b\tc!", false, &mut out);
        assert_eq!(out, [(0, 1), (3, 4), (5, 7)]);
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
        ] {
            for kind in [Placeholder::Url, Placeholder::Email, Placeholder::Number] {
                if kind.regex().is_match(text) {
                    assert!(kind.may_match(text), "{kind:?} on {text:?}");
                }
            }
        }
        assert!(!Placeholder::Url.may_match("plain words only"));
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
