//! Training-side feature extraction. It reproduces, step for step, what the runtime computes
//! for the `inputs`, `preprocess` and n-gram `features` this module emits (the pipeline is
//! specified in `docs/program-format.md`), so that a model trained here scores exactly as
//! the compiled program does. The integration tests check this equality on every strategy.

use std::sync::{Arc, LazyLock};

use loopai_core::__private::fnv::Fnv;
use loopai_core::__private::text::is_unspaced;
use regex::Regex;
use serde_json::{json, Value};
use unicode_normalization::UnicodeNormalization;

use crate::inputs::TextField;
use crate::spec::pointer;
use crate::structured::Encoding;
use crate::tfidf::{self, Vocab};

/// Text input limit used by generated programs (the runtime's default limit); longer
/// documents are truncated at a UTF-8 boundary (`on_oversize: "truncate"`).
pub(crate) const MAX_INPUT_BYTES: usize = 64 << 10;

static URL_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)\b(?:https?://|www\.)[^\s<>"']+"#).expect("URL pattern compiles")
});
static EMAIL_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b[a-z0-9._%+\-]+@[a-z0-9.\-]+\.[a-z]{2,}\b").expect("e-mail pattern compiles")
});

const URL_WITH: &str = " __url__ ";
const EMAIL_WITH: &str = " __email__ ";

/// One hashed n-gram feature over a field's clean view.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NgramSpec {
    /// Word n-grams (`alnum` tokens) or character n-grams within words.
    pub words: bool,
    pub n_min: usize,
    pub n_max: usize,
    pub bits: u32,
    pub seed: u64,
    /// `log1p` weighting (else `count`).
    pub log1p: bool,
    /// `l2` normalisation.
    pub l2: bool,
    /// Character n-grams only inside `alnum` tokens (padded with a space), else over the
    /// whole view (punctuation and spacing included).
    pub within_words: bool,
    /// Read the field's head view (the first [`HEAD_BYTES`] of the clean view) instead of
    /// the whole clean view: bounds the cost of character n-grams on long documents.
    pub head: bool,
    /// Word n-grams with `alnum_cjk` tokens: each character of a script written without
    /// spaces (Chinese, Japanese, Thai, ...) is a token of its own.
    pub cjk: bool,
}

/// Size of the head view that character n-grams read.
pub(crate) const HEAD_BYTES: usize = 512;

impl NgramSpec {
    fn suffix(&self) -> &'static str {
        if self.words {
            "words"
        } else {
            "chars"
        }
    }

    /// Short description for reports: `w1-2`, `c2-5`.
    pub(crate) fn short(&self) -> String {
        format!(
            "{}{}-{}",
            if self.words {
                "w"
            } else if self.within_words {
                "cw"
            } else {
                "c"
            },
            self.n_min,
            self.n_max
        )
    }
}

/// The whole text pipeline of a program: its text inputs, one clean view per input and the
/// n-gram features of each view.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FeatureConfig {
    pub fields: Vec<TextField>,
    pub ngrams: Vec<NgramSpec>,
    /// `truncate` step at the end of each clean view.
    pub view_max_bytes: usize,
    /// TF-IDF vocabularies, one per group (field by field, n-gram by n-gram, as
    /// [`groups`](Self::groups) lists them); empty for hashed n-grams.
    pub vocabs: Vec<Arc<Vocab>>,
    /// The number and category fields, after the text fields in the model's inputs.
    pub structured: Encoding,
}

/// Where a model's n-gram input group starts in the concatenated vector.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Group {
    pub feature: String,
    pub offset: u32,
    pub dim: u32,
}

impl FeatureConfig {
    /// The groups in the order the model's `inputs` lists them: for each field, each n-gram.
    pub(crate) fn groups(&self) -> Vec<Group> {
        let mut out = Vec::new();
        let mut offset = 0u32;
        for f in &self.fields {
            for ng in &self.ngrams {
                let dim = match self.vocabs.get(out.len()) {
                    Some(v) => v.len() as u32,
                    None => 1u32 << ng.bits,
                };
                out.push(Group {
                    feature: format!("{}.{}", f.name, ng.suffix()),
                    offset,
                    dim,
                });
                offset += dim;
            }
        }
        for g in self.structured.groups() {
            out.push(Group {
                feature: g.feature,
                offset,
                dim: g.dim,
            });
            offset += g.dim;
        }
        out
    }

    /// Where the number and category inputs start in the model's input vector.
    pub(crate) fn text_dim(&self) -> u32 {
        let text_groups = self.fields.len() * self.ngrams.len();
        self.groups().iter().take(text_groups).map(|g| g.dim).sum()
    }

    /// Total model input dimension.
    pub(crate) fn dim(&self) -> usize {
        self.groups().iter().map(|g| g.dim as usize).sum()
    }

    /// Name of a field's clean view.
    pub(crate) fn view_name(field: &TextField) -> String {
        format!("{}.clean", field.name)
    }

    /// The program's `inputs`.
    pub(crate) fn inputs_json(&self) -> Value {
        let mut inputs: Vec<Value> = self
            .fields
            .iter()
            .map(|f| {
                json!({"name": f.name, "path": pointer(&f.key), "type": "text",
                       "required": f.required, "max_bytes": MAX_INPUT_BYTES,
                       "on_oversize": "truncate"})
            })
            .collect();
        inputs.extend(self.structured.inputs_json());
        Value::Array(inputs)
    }

    /// Name of a field's head view.
    pub(crate) fn head_name(field: &TextField) -> String {
        format!("{}.head", field.name)
    }

    fn uses_head(&self) -> bool {
        self.ngrams.iter().any(|g| g.head)
    }

    /// The program's `preprocess`.
    pub(crate) fn preprocess_json(&self) -> Value {
        let mut out = Vec::new();
        for f in &self.fields {
            out.push(
                json!({"name": Self::view_name(f), "from": f.name, "steps": [
                    {"op": "nfkc"}, {"op": "lowercase"},
                    {"op": "replace", "kind": "url", "with": URL_WITH},
                    {"op": "replace", "kind": "email", "with": EMAIL_WITH},
                    {"op": "truncate", "max_bytes": self.view_max_bytes}
                ]}),
            );
            if self.uses_head() {
                out.push(
                    json!({"name": Self::head_name(f), "from": Self::view_name(f),
                    "steps": [{"op": "truncate", "max_bytes": HEAD_BYTES}]}),
                );
            }
        }
        Value::Array(out)
    }

    /// The program's n-gram `features`.
    pub(crate) fn features_json(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for f in &self.fields {
            for ng in &self.ngrams {
                let mut v = json!({
                    "name": format!("{}.{}", f.name, ng.suffix()),
                    "op": if ng.words { "word_ngrams" } else { "char_ngrams" },
                    "source": if ng.head { Self::head_name(f) } else { Self::view_name(f) },
                    "n": [ng.n_min, ng.n_max],
                });
                match self.vocabs.get(out.len()) {
                    Some(vocab) => {
                        v["vocabulary"] = json!(vocab.terms);
                        v["idf"] = Value::String(crate::linear::pack_f32(&vocab.idf));
                        v["weighting"] = json!("sublinear");
                        v["normalize"] = json!("l2");
                    }
                    None => {
                        v["hash"] = json!({"bits": ng.bits, "seed": ng.seed});
                        v["weighting"] = json!(if ng.log1p { "log1p" } else { "count" });
                        v["normalize"] = json!(if ng.l2 { "l2" } else { "none" });
                    }
                }
                if !ng.words {
                    v["within_words"] = Value::Bool(ng.within_words);
                } else if ng.cjk {
                    v["tokens"] = Value::String("alnum_cjk".into());
                }
                out.push(v);
            }
        }
        out.extend(self.structured.features_json());
        out
    }

    /// The clean view of each field of one input object (missing fields are `""`).
    pub(crate) fn views(&self, input: &Value) -> Vec<String> {
        self.fields
            .iter()
            .map(|f| {
                let raw = input.get(&f.key).and_then(Value::as_str).unwrap_or("");
                clean_view(raw, self.view_max_bytes)
            })
            .collect()
    }

    /// The model input vector of one example, from its clean views, with entries in the
    /// runtime's summation order.
    pub(crate) fn vectorize(&self, views: &[String], out: &mut Vec<(u32, f32)>) {
        out.clear();
        if !self.vocabs.is_empty() {
            let mut scratch = tfidf::Scratch::default();
            let mut offset = 0u32;
            let mut g = 0;
            for view in views {
                for ng in &self.ngrams {
                    let vocab = &self.vocabs[g];
                    vocab.vectorize(ng, view, offset, &mut scratch, out);
                    offset += vocab.len() as u32;
                    g += 1;
                }
            }
            return;
        }
        let mut scratch = Scratch::default();
        let mut offset = 0u32;
        for view in views {
            for ng in &self.ngrams {
                let view = if ng.head {
                    truncate_str(view, HEAD_BYTES)
                } else {
                    view.as_str()
                };
                sparse_features(ng, view, &mut scratch);
                out.extend(scratch.out.iter().map(|&(i, v)| (i + offset, v)));
                offset += 1u32 << ng.bits;
            }
        }
    }
}

/// The runtime's input truncation and clean-view steps.
pub(crate) fn clean_view(raw: &str, view_max_bytes: usize) -> String {
    let s = truncate_str(raw, MAX_INPUT_BYTES);
    let nf: String = if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        let n: String = s.nfkc().collect();
        let mut l = String::with_capacity(n.len());
        for c in n.chars() {
            l.extend(c.to_lowercase());
        }
        l
    };
    let a = replace_all(&URL_RE, &nf, URL_WITH);
    let b = replace_all(&EMAIL_RE, &a, EMAIL_WITH);
    truncate_str(&b, view_max_bytes).to_string()
}

fn replace_all(re: &Regex, src: &str, with: &str) -> String {
    let mut dst = String::with_capacity(src.len());
    let mut last = 0;
    for m in re.find_iter(src) {
        dst.push_str(&src[last..m.start()]);
        dst.push_str(with);
        last = m.end();
    }
    dst.push_str(&src[last..]);
    dst
}

/// The longest prefix of at most `max` bytes ending on a char boundary.
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

/// Is `c` part of an `alnum` token?
#[inline]
pub(crate) fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Byte ranges of the `alnum` tokens of `text`.
pub(crate) fn tokenize(text: &str, out: &mut Vec<(usize, usize)>) {
    tokenize_mode(text, false, out);
}

/// Byte ranges of the `alnum` tokens of `text`, or with `cjk` of its `alnum_cjk` tokens
/// (every character of [`is_unspaced`](loopai_core::__private::text::is_unspaced) a token of its own).
pub(crate) fn tokenize_mode(text: &str, cjk: bool, out: &mut Vec<(usize, usize)>) {
    out.clear();
    let mut start = None;
    for (i, c) in text.char_indices() {
        if cjk && is_unspaced(c) {
            if let Some(s) = start.take() {
                out.push((s, i));
            }
            out.push((i, i + c.len_utf8()));
            continue;
        }
        match (is_word_char(c), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, text.len()));
    }
}

/// Share of the letters of `views` that belong to scripts written without spaces.
pub(crate) fn unspaced_share<'a>(views: impl Iterator<Item = &'a str>) -> f64 {
    let (mut unspaced, mut letters) = (0u64, 0u64);
    for v in views {
        for c in v.chars().filter(|&c| is_word_char(c)) {
            letters += 1;
            unspaced += u64::from(is_unspaced(c));
        }
    }
    if letters == 0 {
        0.0
    } else {
        unspaced as f64 / letters as f64
    }
}

/// The runtime's bucket: the top `bits` bits of the finished hash.
#[inline]
fn bucket(h: Fnv, bits: u32) -> u32 {
    (h.finish() >> (64 - bits)) as u32
}

#[derive(Default)]
struct Scratch {
    tokens: Vec<(usize, usize)>,
    offsets: Vec<usize>,
    pad: String,
    out: Vec<(u32, f32)>,
}

fn char_ngrams(ng: &NgramSpec, t: &str, offsets: &mut Vec<usize>, out: &mut Vec<(u32, f32)>) {
    offsets.clear();
    offsets.extend(t.char_indices().map(|(i, _)| i));
    offsets.push(t.len());
    let bytes = t.as_bytes();
    let n = offsets.len() - 1;
    for i in 0..n {
        let mut h = Fnv::new(ng.seed);
        for k in 0..ng.n_max.min(n - i) {
            h.write(&bytes[offsets[i + k]..offsets[i + k + 1]]);
            if k + 1 >= ng.n_min {
                out.push((bucket(h, ng.bits), 1.0));
            }
        }
    }
}

/// The runtime's sparse n-gram vector of `t` (local bucket indices).
fn sparse_features(ng: &NgramSpec, t: &str, s: &mut Scratch) {
    let out = &mut s.out;
    out.clear();
    if ng.words {
        tokenize_mode(t, ng.cjk, &mut s.tokens);
        let bytes = t.as_bytes();
        let toks = &s.tokens;
        for i in 0..toks.len() {
            let mut h = Fnv::new(ng.seed);
            for n in 0..ng.n_max.min(toks.len() - i) {
                let (a, b) = toks[i + n];
                if n > 0 {
                    h.write_u8(b' ');
                }
                h.write(&bytes[a..b]);
                if n + 1 >= ng.n_min {
                    out.push((bucket(h, ng.bits), 1.0));
                }
            }
        }
    } else if !ng.within_words {
        char_ngrams(ng, t, &mut s.offsets, out);
    } else {
        tokenize(t, &mut s.tokens);
        for &(a, b) in s.tokens.iter() {
            s.pad.clear();
            s.pad.push(' ');
            s.pad.push_str(&t[a..b]);
            s.pad.push(' ');
            char_ngrams(ng, &s.pad, &mut s.offsets, out);
        }
    }
    if !ng.log1p && !ng.l2 {
        return;
    }
    out.sort_unstable_by_key(|e| e.0);
    let mut w = 0usize;
    for r in 0..out.len() {
        if w > 0 && out[w - 1].0 == out[r].0 {
            out[w - 1].1 += out[r].1;
        } else {
            out[w] = out[r];
            w += 1;
        }
    }
    out.truncate(w);
    if ng.log1p {
        out.iter_mut()
            .for_each(|e| e.1 = libm::log1p(f64::from(e.1)) as f32);
    }
    if ng.l2 {
        let norm: f64 = out.iter().map(|e| f64::from(e.1) * f64::from(e.1)).sum();
        if norm > 0.0 {
            let inv = 1.0 / libm::sqrt(norm);
            out.iter_mut()
                .for_each(|e| e.1 = (f64::from(e.1) * inv) as f32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_the_documented_reference_values() {
        let mut h = Fnv::new(0);
        h.write(b"free");
        assert_eq!(h.finish(), loopai_core::ngram_hash(0, "free"));
        let mut h = Fnv::new(7);
        h.write(b"free prize");
        assert_eq!(h.finish(), 0xa949_58cb_4d19_478a);
    }

    #[test]
    fn clean_view_lowercases_normalizes_and_replaces() {
        let v = clean_view("Visit WWW.Example.com or mail A.B@c.org ﬁ ÀB", 1000);
        assert_eq!(v, "visit  __url__  or mail  __email__  fi àb");
        assert_eq!(clean_view("héllo", 2), "h");
    }
}
