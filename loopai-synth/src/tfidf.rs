//! TF-IDF vocabularies: the n-grams of the training texts counted by document frequency,
//! the most frequent kept (a budget bounds the program's size), each with its inverse
//! document frequency `ln((1 + n) / (1 + df)) + 1` (scikit-learn's smoothed IDF). A program
//! carries them as a `vocabulary` index with `idf` factors, `sublinear` TF and `l2`
//! normalisation; [`Vocab::vectorize`] computes the vectors exactly as the runtime does
//! (same entry order, same `f32`/`f64` steps), so a model trained here scores as the
//! program does.

use std::collections::HashMap;

use loopai_core::__private::fnv::Fnv;

use crate::features::{tokenize_mode, truncate_str, NgramSpec, HEAD_BYTES};

#[derive(Default)]
pub(crate) struct Scratch {
    tokens: Vec<(usize, usize)>,
    offsets: Vec<usize>,
    pad: String,
    text: String,
    hits: Vec<(u32, f32)>,
    slots: HashMap<u32, usize>,
}

/// The part of a field's view that `ng` reads (its head for character n-grams on long
/// documents).
fn source<'a>(ng: &NgramSpec, view: &'a str) -> &'a str {
    if ng.head {
        truncate_str(view, HEAD_BYTES)
    } else {
        view
    }
}

/// Calls `f(hash, text)` for every n-gram of `t` in the runtime's order; `hash` is the
/// vocabulary hash (`ngram_hash(0, text)`), `text` is only built when `with_text`.
fn each_ngram(
    ng: &NgramSpec,
    t: &str,
    s: &mut Scratch,
    with_text: bool,
    f: &mut dyn FnMut(u64, &str),
) {
    if ng.words {
        tokenize_mode(t, ng.cjk, &mut s.tokens);
        let bytes = t.as_bytes();
        let toks = &s.tokens;
        for i in 0..toks.len() {
            let mut h = Fnv::new(0);
            s.text.clear();
            for n in 0..ng.n_max.min(toks.len() - i) {
                let (a, b) = toks[i + n];
                if n > 0 {
                    h.write_u8(b' ');
                    if with_text {
                        s.text.push(' ');
                    }
                }
                h.write(&bytes[a..b]);
                if with_text {
                    s.text.push_str(&t[a..b]);
                }
                if n + 1 >= ng.n_min {
                    f(h.finish(), &s.text);
                }
            }
        }
    } else if ng.within_words {
        tokenize_mode(t, false, &mut s.tokens);
        for k in 0..s.tokens.len() {
            let (a, b) = s.tokens[k];
            s.pad.clear();
            s.pad.push(' ');
            s.pad.push_str(&t[a..b]);
            s.pad.push(' ');
            let pad = std::mem::take(&mut s.pad);
            chars(ng, &pad, &mut s.offsets, with_text, f);
            s.pad = pad;
        }
    } else {
        chars(ng, t, &mut s.offsets, with_text, f);
    }
}

fn chars(
    ng: &NgramSpec,
    t: &str,
    offsets: &mut Vec<usize>,
    with_text: bool,
    f: &mut dyn FnMut(u64, &str),
) {
    offsets.clear();
    offsets.extend(t.char_indices().map(|(i, _)| i));
    offsets.push(t.len());
    let bytes = t.as_bytes();
    let n = offsets.len() - 1;
    for i in 0..n {
        let mut h = Fnv::new(0);
        for k in 0..ng.n_max.min(n - i) {
            h.write(&bytes[offsets[i + k]..offsets[i + k + 1]]);
            if k + 1 >= ng.n_min {
                let text = if with_text {
                    &t[offsets[i]..offsets[i + k + 1]]
                } else {
                    ""
                };
                f(h.finish(), text);
            }
        }
    }
}

/// Document frequencies of the n-grams of `ng` over some texts.
#[derive(Debug, Default)]
pub(crate) struct DocFreq {
    pub docs: usize,
    pub df: HashMap<u64, u32>,
}

impl DocFreq {
    /// Counts the n-grams of each text once.
    pub(crate) fn count<'a>(ng: &NgramSpec, views: impl Iterator<Item = &'a str>) -> DocFreq {
        let mut out = DocFreq::default();
        let mut s = Scratch::default();
        let mut seen: Vec<u64> = Vec::new();
        for view in views {
            out.docs += 1;
            seen.clear();
            each_ngram(ng, source(ng, view), &mut s, false, &mut |h, _| {
                seen.push(h)
            });
            seen.sort_unstable();
            seen.dedup();
            for &h in &seen {
                *out.df.entry(h).or_insert(0) += 1;
            }
        }
        out
    }

    /// Adds the counts of `other` (texts disjoint from this one's).
    pub(crate) fn merge(&mut self, other: DocFreq) {
        self.docs += other.docs;
        for (h, c) in other.df {
            *self.df.entry(h).or_insert(0) += c;
        }
    }
}

/// A ranked vocabulary: terms by decreasing document frequency (ties by hash), so that the
/// first `m` terms are the vocabulary of budget `m`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Vocab {
    /// Terms in index order (an empty string stands in for an empty vocabulary: no
    /// n-gram is empty, so it never matches).
    pub terms: Vec<String>,
    /// Inverse document frequency of each term.
    pub idf: Vec<f32>,
    hashes: Vec<u64>,
    index: HashMap<u64, u32>,
}

impl Vocab {
    /// The `max_terms` most frequent n-grams of `df`, their texts looked up in `views`
    /// (the texts `df` counted).
    pub(crate) fn build<'a>(
        ng: &NgramSpec,
        df: &DocFreq,
        max_terms: usize,
        views: impl Iterator<Item = &'a str>,
    ) -> Vocab {
        let mut ranked: Vec<(u32, u64)> = df.df.iter().map(|(&h, &c)| (c, h)).collect();
        ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked.truncate(max_terms);
        let mut want: HashMap<u64, usize> = ranked
            .iter()
            .enumerate()
            .map(|(i, &(_, h))| (h, i))
            .collect();
        let mut terms = vec![String::new(); ranked.len()];
        let mut s = Scratch::default();
        for view in views {
            if want.is_empty() {
                break;
            }
            each_ngram(ng, source(ng, view), &mut s, true, &mut |h, text| {
                if let Some(i) = want.remove(&h) {
                    terms[i] = text.to_string();
                }
            });
        }
        let n = df.docs as f64;
        let idf = ranked
            .iter()
            .map(|&(c, _)| (libm::log((1.0 + n) / (1.0 + f64::from(c))) + 1.0) as f32)
            .collect();
        let hashes: Vec<u64> = ranked.iter().map(|e| e.1).collect();
        let mut v = Vocab {
            terms,
            idf,
            hashes,
            index: HashMap::new(),
        };
        if v.terms.is_empty() {
            v.terms.push(String::new());
            v.idf.push(1.0);
            v.hashes.push(loopai_core::ngram_hash(0, ""));
        }
        v.index = v
            .hashes
            .iter()
            .enumerate()
            .map(|(i, &h)| (h, i as u32))
            .collect();
        v
    }

    /// The first `m` terms (at least one).
    pub(crate) fn prefix(&self, m: usize) -> Vocab {
        let m = m.clamp(1, self.terms.len());
        if m == self.terms.len() {
            return self.clone();
        }
        let hashes = self.hashes[..m].to_vec();
        Vocab {
            terms: self.terms[..m].to_vec(),
            idf: self.idf[..m].to_vec(),
            index: hashes
                .iter()
                .enumerate()
                .map(|(i, &h)| (h, i as u32))
                .collect(),
            hashes,
        }
    }

    /// Number of terms.
    pub(crate) fn len(&self) -> usize {
        self.terms.len()
    }

    /// Bytes of the terms' texts.
    pub(crate) fn text_bytes(&self) -> usize {
        self.terms.iter().map(String::len).sum()
    }

    /// The runtime's vector of `view` for feature `ng` with this vocabulary (`sublinear`
    /// weighting, `idf`, `l2`), appended to `out` with `offset` added to the indices.
    pub(crate) fn vectorize(
        &self,
        ng: &NgramSpec,
        view: &str,
        offset: u32,
        s: &mut Scratch,
        out: &mut Vec<(u32, f32)>,
    ) {
        let mut hits = std::mem::take(&mut s.hits);
        let mut slots = std::mem::take(&mut s.slots);
        hits.clear();
        slots.clear();
        // Occurrences merged, in the order each index first appears.
        each_ngram(ng, source(ng, view), s, false, &mut |h, _| {
            if let Some(&j) = self.index.get(&h) {
                match slots.get(&j) {
                    Some(&at) => hits[at].1 += 1.0,
                    None => {
                        slots.insert(j, hits.len());
                        hits.push((j, 1.0));
                    }
                }
            }
        });
        for e in hits.iter_mut() {
            let tf = (1.0 + libm::log(f64::from(e.1))) as f32;
            e.1 = (f64::from(tf) * f64::from(self.idf[e.0 as usize])) as f32;
        }
        let norm: f64 = hits.iter().map(|e| f64::from(e.1) * f64::from(e.1)).sum();
        if norm > 0.0 {
            let inv = 1.0 / libm::sqrt(norm);
            hits.iter_mut()
                .for_each(|e| e.1 = (f64::from(e.1) * inv) as f32);
        }
        out.extend(hits.iter().map(|&(j, v)| (j + offset, v)));
        s.hits = hits;
        s.slots = slots;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words() -> NgramSpec {
        NgramSpec {
            words: true,
            n_min: 1,
            n_max: 2,
            bits: 0,
            seed: 0,
            log1p: false,
            l2: true,
            within_words: false,
            head: false,
            cjk: false,
        }
    }

    #[test]
    fn terms_are_ranked_by_document_frequency_with_smoothed_idf() {
        let docs = ["a b a", "a c", "b a"];
        let df = DocFreq::count(&words(), docs.iter().copied());
        assert_eq!(df.docs, 3);
        let v = Vocab::build(&words(), &df, 3, docs.iter().copied());
        // df: a 3, b 2, "b a" 2, then "a b", "a c", c (1 each, by hash).
        assert_eq!(v.terms[0], "a");
        let mut next: Vec<&str> = v.terms[1..3].iter().map(String::as_str).collect();
        next.sort();
        assert_eq!(next, ["b", "b a"]);
        assert_eq!(v.idf[0], 1.0);
        assert_eq!(v.idf[1], (libm::log(4.0 / 3.0) + 1.0) as f32);
        assert_eq!(v.prefix(1).terms, ["a"]);
        // Nothing to count: one term that never matches.
        let empty = Vocab::build(
            &words(),
            &DocFreq::count(&words(), [""].into_iter()),
            9,
            [""].into_iter(),
        );
        assert_eq!(empty.terms, [""]);
        let mut out = Vec::new();
        empty.vectorize(&words(), "a b", 0, &mut Scratch::default(), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn vectors_match_the_runtime_bit_for_bit() {
        let docs = [
            "the cat sat on the mat",
            "the dog ate the cat food",
            "a cat a dog",
        ];
        for ng in [
            words(),
            NgramSpec {
                words: false,
                n_min: 1,
                n_max: 4,
                ..words()
            },
        ] {
            let df = DocFreq::count(&ng, docs.iter().copied());
            let v = Vocab::build(&ng, &df, 1000, docs.iter().copied());
            let program = serde_json::json!({
                "format": "loopai.program/1", "task": "t",
                "inputs": [{"name": "text", "path": "/text", "type": "text"}],
                "features": [{"name": "f", "op": if ng.words { "word_ngrams" } else { "char_ngrams" },
                    "source": "text", "n": [ng.n_min, ng.n_max], "vocabulary": v.terms,
                    "idf": v.idf, "weighting": "sublinear", "normalize": "l2"}],
                "decide": {"op": "linear", "inputs": ["f"], "classes": ["a", "b"], "link": "sigmoid",
                    "weights": (0..v.len()).map(|i| (i % 7) as f64 - 3.0).collect::<Vec<_>>(), "bias": [0.25]},
                "output": {"kind": "label", "labels": ["a", "b"]}
            });
            let p = loopai_core::Program::from_value(&program, &Default::default()).unwrap();
            let w: Vec<f32> = (0..v.len()).map(|i| (i % 7) as f32 - 3.0).collect();
            for text in ["the cat the cat the cat", "dog food on a mat", "zzz", "cat"] {
                let mut x = Vec::new();
                v.vectorize(&ng, text, 0, &mut Scratch::default(), &mut x);
                let mut z = 0.25;
                for &(i, val) in &x {
                    z += f64::from(w[i as usize]) * f64::from(val);
                }
                let p1 = 1.0 / (1.0 + libm::exp(-z));
                let o = p.evaluate(&serde_json::json!({ "text": text })).unwrap();
                assert_eq!(o.scores[1], p1, "{text:?}");
            }
        }
    }
}
