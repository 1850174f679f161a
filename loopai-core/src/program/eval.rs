//! Execution of a compiled plan. No compilation happens here, and allocation is limited
//! to the result itself: intermediate buffers live in a per-thread scratch area.

use std::cell::RefCell;

use serde_json::Value;

use super::plan::*;
use super::raw::kind_of;
use super::structured::{self, Fields};
use super::text::{self, bucket, TokenMode};
use super::vocab::VocabTable;
use super::{DecisionId, Outcome};
use crate::error::{Error, ErrorKind, Result};
use crate::fnv::Fnv;

#[derive(Default)]
struct Scratch {
    views: Vec<String>,
    tmp: String,
    pad: String,
    /// Finished n-gram hashes of one feature, before their vocabulary lookups.
    hashes: Vec<u64>,
    table: Vec<u32>,
    /// Dense position map for [`dedupe_dense`]: all zeros between calls.
    slots: Vec<u16>,
    tokens: Vec<(u32, u32)>,
    offsets: Vec<u32>,
    sparse: Vec<Vec<(u32, f32)>>,
    scalars: Vec<f64>,
    stack: Vec<f64>,
    z: Vec<f64>,
    /// Sparse model inputs of a tree, sorted by index (see [`TreeInputs`]).
    lookup: Vec<(usize, f64)>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn input_error(pointer: &str, msg: impl std::fmt::Display) -> Error {
    let at = if pointer.is_empty() {
        "(root)"
    } else {
        pointer
    };
    Error::new(ErrorKind::InvalidInput, format!("input {at}: {msg}"))
}

/// Resolved text of slot `slot`.
#[inline]
fn slot_text<'a>(plan: &Plan, texts: &[&'a str], views: &'a [String], slot: usize) -> &'a str {
    if slot < plan.text_inputs {
        texts[slot]
    } else {
        &views[slot - plan.text_inputs]
    }
}

pub(crate) fn evaluate(plan: &Plan, input: &Value) -> Result<Outcome> {
    evaluate_traced(plan, input, None)
}

/// What an evaluation computed on the way to its outcome, for [`super::explain`]: the
/// text of every slot (inputs, then views), every feature's sparse entries and scalar.
#[derive(Debug, Default)]
pub(crate) struct Trace {
    pub texts: Vec<String>,
    pub sparse: Vec<Vec<(u32, f32)>>,
    pub scalars: Vec<f64>,
}

/// [`evaluate`], copying what it computed into `trace` when one is given.
pub(crate) fn evaluate_traced(
    plan: &Plan,
    input: &Value,
    trace: Option<&mut Trace>,
) -> Result<Outcome> {
    if !input.is_object() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("input: expected a JSON object, got {}", kind_of(input)),
        ));
    }
    let mut texts: [&str; MAX_INPUTS] = [""; MAX_INPUTS];
    let mut fields = Fields::default();
    for (i, inp) in plan.inputs.iter().enumerate() {
        let found = resolve(input, &inp.tokens).filter(|v| !v.is_null());
        fields.missing[i] = found.is_none();
        let numbers = &mut fields.numbers;
        match (&inp.kind, found) {
            (
                InputKind::Text {
                    slot,
                    max_bytes,
                    truncate,
                },
                Some(v),
            ) => {
                let s = v.as_str().ok_or_else(|| {
                    input_error(
                        &inp.pointer,
                        format!("expected a string, got {}", kind_of(v)),
                    )
                })?;
                if s.len() > *max_bytes {
                    if !*truncate {
                        return Err(input_error(
                            &inp.pointer,
                            format!("{} bytes, over the limit of {max_bytes} bytes", s.len()),
                        ));
                    }
                    texts[*slot] = text::truncate_str(s, *max_bytes);
                } else {
                    texts[*slot] = s;
                }
            }
            (InputKind::Number { slot, .. }, Some(v)) => {
                numbers[*slot] = v.as_f64().ok_or_else(|| {
                    input_error(
                        &inp.pointer,
                        format!("expected a number, got {}", kind_of(v)),
                    )
                })?;
            }
            (InputKind::Number { slot, default }, None) => match default {
                Some(d) => numbers[*slot] = *d,
                None if inp.required => {
                    return Err(input_error(
                        &inp.pointer,
                        format!("required field `{}` is missing", inp.name),
                    ))
                }
                None => numbers[*slot] = 0.0,
            },
            (InputKind::Category { slot }, Some(v)) => {
                fields.categories[*slot] = Some(match v {
                    Value::String(s) => s.as_str(),
                    Value::Bool(true) => "true",
                    Value::Bool(false) => "false",
                    other => {
                        return Err(input_error(
                            &inp.pointer,
                            format!("expected a string or a boolean, got {}", kind_of(other)),
                        ))
                    }
                });
            }
            (InputKind::Text { .. } | InputKind::Category { .. }, None) => {
                if inp.required {
                    return Err(input_error(
                        &inp.pointer,
                        format!("required field `{}` is missing", inp.name),
                    ));
                }
            }
        }
    }
    let go = |s: &mut Scratch| {
        let outcome = run(plan, &texts, &fields, s);
        if let Some(t) = trace {
            t.texts = texts[..plan.text_inputs]
                .iter()
                .map(|x| x.to_string())
                .collect();
            t.texts.extend(s.views[..plan.views.len()].iter().cloned());
            t.sparse = s.sparse[..plan.features.len()].to_vec();
            t.scalars = s.scalars[..plan.features.len()].to_vec();
        }
        outcome
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => Ok(go(&mut s)),
        // Only reachable if evaluation re-entered itself on this thread; stay correct.
        Err(_) => Ok(go(&mut Scratch::default())),
    })
}

fn run(plan: &Plan, texts: &[&str], fields: &Fields<'_>, s: &mut Scratch) -> Outcome {
    // Text views. Every step's output is cut at `cap` bytes: inputs and earlier views are
    // within it, and the steps that can grow a text (nfkc, lowercase, replace) stop there,
    // so that chained replacements cannot grow a view without bound.
    let cap = plan.view_max_bytes;
    if s.views.len() < plan.views.len() {
        s.views.resize_with(plan.views.len(), String::new);
    }
    for (i, view) in plan.views.iter().enumerate() {
        let (done, rest) = s.views.split_at_mut(i);
        let dst = &mut rest[0];
        let src = if view.from < plan.text_inputs {
            texts[view.from]
        } else {
            done[view.from - plan.text_inputs].as_str()
        };
        dst.clear();
        dst.push_str(src);
        for step in &view.steps {
            match step {
                StepPlan::Nfkc => text::nfkc_into(dst, &mut s.tmp, cap),
                StepPlan::Lowercase => {
                    if dst.is_ascii() {
                        dst.make_ascii_lowercase();
                        continue;
                    }
                    text::lowercase_into(dst, &mut s.tmp, cap)
                }
                StepPlan::CollapseWhitespace => text::collapse_whitespace_into(dst, &mut s.tmp),
                StepPlan::Replace { kind, with } => {
                    if !kind.may_match(dst) {
                        continue;
                    }
                    text::replace_into(kind.regex(), dst, with, &mut s.tmp, cap)
                }
                StepPlan::Truncate(max) => {
                    let keep = text::truncate_str(dst, *max).len();
                    dst.truncate(keep);
                    continue;
                }
            }
            std::mem::swap(dst, &mut s.tmp);
        }
    }

    // Features.
    let nf = plan.features.len();
    if s.sparse.len() < nf {
        s.sparse.resize_with(nf, Vec::new);
    }
    s.scalars.clear();
    s.scalars.resize(nf, 0.0);
    // `s.tokens` holds the tokens of (source, mode) when `Some`: n-gram features on one
    // text share them.
    let mut tokenized: Option<(usize, TokenMode)> = None;
    for (f, feature) in plan.features.iter().enumerate() {
        let value = match feature {
            FeaturePlan::Sparse(sp) => {
                let t = slot_text(plan, texts, &s.views, sp.source);
                let out = &mut s.sparse[f];
                let mode = if sp.words {
                    sp.tokens
                } else {
                    TokenMode::Alnum
                };
                let key = (sp.source, mode);
                let fresh = tokenized != Some(key);
                sparse_features(
                    sp,
                    t,
                    fresh,
                    &mut s.tokens,
                    &mut s.offsets,
                    &mut s.pad,
                    &mut s.hashes,
                    &mut s.table,
                    &mut s.slots,
                    out,
                );
                if sp.words || sp.within_words {
                    tokenized = Some(key);
                }
                0.0
            }
            FeaturePlan::Keywords(k) => {
                let t = slot_text(plan, texts, &s.views, k.source);
                keyword_count(k, t)
            }
            FeaturePlan::Regex(r) => {
                let t = slot_text(plan, texts, &s.views, r.source);
                if r.count {
                    r.re.find_iter(t).take(r.max_count as usize).count() as f64
                } else {
                    f64::from(u8::from(r.re.is_match(t)))
                }
            }
            FeaturePlan::Stat { source, stat } => {
                let t = slot_text(plan, texts, &s.views, *source);
                tokenized = None;
                stat_value(*stat, t, &mut s.tokens)
            }
            FeaturePlan::Number(slot) => fields.numbers[*slot],
            FeaturePlan::Scale { .. }
            | FeaturePlan::Bins { .. }
            | FeaturePlan::OneHot { .. }
            | FeaturePlan::Missing(_) => structured::value(feature, fields, &mut s.sparse[f]),
        };
        s.scalars[f] = value;
    }

    match &plan.output {
        OutputPlan::Label {
            labels,
            abstain_below,
        } => {
            let c = labels.len();
            let need = c * 2 * (MAX_DECISION_DEPTH + 2);
            if s.stack.len() < need {
                s.stack.resize(need, 0.0);
            }
            let decide = plan
                .decide
                .as_ref()
                .expect("label programs have a decision");
            let ctx = Ctx {
                sparse: &s.sparse,
                scalars: &s.scalars,
            };
            let (out, stack) = s.stack.split_at_mut(c);
            out.fill(0.0);
            let decided = decide_into(decide, &ctx, out, stack, &mut s.z, &mut s.lookup)
                .filter(|_| out.iter().all(|p| p.is_finite()));
            match decided {
                Some(id) => {
                    let mut best = 0;
                    for i in 1..c {
                        if out[i] > out[best] {
                            best = i;
                        }
                    }
                    let confidence = out[best].clamp(0.0, 1.0);
                    Outcome {
                        output: Value::String(labels[best].clone()),
                        label: Some(best),
                        confidence,
                        scores: out.to_vec(),
                        abstained: confidence < *abstain_below,
                        decided_by: Some(DecisionId(id)),
                    }
                }
                None => Outcome {
                    output: Value::Null,
                    label: None,
                    confidence: 0.0,
                    scores: vec![0.0; c],
                    abstained: true,
                    decided_by: None,
                },
            }
        }
        OutputPlan::Extract {
            source,
            fields,
            abstain_below,
        } => {
            let t = slot_text(plan, texts, &s.views, *source);
            let (map, missing_required, scores) = super::extract::extract_all(fields, t);
            let confidence = scores.iter().sum::<f64>() / fields.len() as f64;
            Outcome {
                output: Value::Object(map),
                label: None,
                confidence,
                scores,
                abstained: missing_required || confidence < *abstain_below,
                decided_by: None,
            }
        }
    }
}

fn seed_of(sp: &SparsePlan) -> u64 {
    match sp.index {
        NgramIndex::Hashed { seed, .. } => seed,
        NgramIndex::Vocabulary(_) => 0,
    }
}

/// Character n-grams of `t` (n in `n_min..=n_max`, counted in chars): `sink` gets the
/// hash state of each, in order.
#[inline(always)]
fn char_ngrams(sp: &SparsePlan, t: &str, offsets: &mut Vec<u32>, mut sink: impl FnMut(Fnv)) {
    let seed = seed_of(sp);
    let bytes = t.as_bytes();
    if t.is_ascii() {
        let n = bytes.len();
        for i in 0..n {
            let mut h = Fnv::new(seed);
            for k in 0..sp.n_max.min(n - i) {
                h.write_u8(bytes[i + k]);
                if k + 1 >= sp.n_min {
                    sink(h);
                }
            }
        }
        return;
    }
    offsets.clear();
    offsets.extend(t.char_indices().map(|(i, _)| i as u32));
    offsets.push(bytes.len() as u32);
    let n = offsets.len() - 1;
    for i in 0..n {
        let mut h = Fnv::new(seed);
        for k in 0..sp.n_max.min(n - i) {
            h.write(&bytes[offsets[i + k] as usize..offsets[i + k + 1] as usize]);
            if k + 1 >= sp.n_min {
                sink(h);
            }
        }
    }
}

/// The n-grams of `sp` over `t`: `sink` gets the hash state of each, in the order the
/// format defines (which is the order of the feature's entries before merging).
#[inline(always)]
fn ngrams(
    sp: &SparsePlan,
    t: &str,
    tokenize: bool,
    tokens: &mut Vec<(u32, u32)>,
    offsets: &mut Vec<u32>,
    pad: &mut String,
    mut sink: impl FnMut(Fnv),
) {
    if sp.words {
        if tokenize {
            text::tokenize(t, sp.tokens, tokens);
        }
        let seed = seed_of(sp);
        let bytes = t.as_bytes();
        for i in 0..tokens.len() {
            let mut h = Fnv::new(seed);
            for n in 0..sp.n_max.min(tokens.len() - i) {
                let (a, b) = tokens[i + n];
                if n > 0 {
                    h.write_u8(b' ');
                }
                h.write(&bytes[a as usize..b as usize]);
                if n + 1 >= sp.n_min {
                    sink(h);
                }
            }
        }
    } else if sp.within_words {
        if tokenize {
            text::tokenize(t, TokenMode::Alnum, tokens);
        }
        for &(a, b) in tokens.iter() {
            pad.clear();
            pad.push(' ');
            pad.push_str(&t[a as usize..b as usize]);
            pad.push(' ');
            char_ngrams(sp, pad, offsets, &mut sink);
        }
    } else {
        char_ngrams(sp, t, offsets, sink);
    }
}

/// How many n-grams ahead of the one it looks up [`lookup_all`] prefetches.
const PREFETCH_AHEAD: usize = 8;

/// Pushes `(index, 1)` for every hash of `hashes` found in `vocab`, in order. The slots of
/// later hashes are prefetched while earlier ones are looked up: on a table larger than
/// the caches, the lookups then wait for memory together instead of one after another.
/// Each hash's home slot is computed once, when it is prefetched, and kept in a ring
/// until its lookup.
fn lookup_all(vocab: &VocabTable, hashes: &[u64], out: &mut Vec<(u32, f32)>) {
    let mut homes = [0usize; PREFETCH_AHEAD];
    for (slot, &h) in homes.iter_mut().zip(hashes) {
        *slot = vocab.home_of(h);
        vocab.prefetch_slot(*slot);
    }
    for (i, &h) in hashes.iter().enumerate() {
        let ring = i % PREFETCH_AHEAD;
        let home = homes[ring];
        if let Some(&next) = hashes.get(i + PREFETCH_AHEAD) {
            homes[ring] = vocab.home_of(next);
            vocab.prefetch_slot(homes[ring]);
        }
        if let Some(&j) = vocab.get_from(home, h) {
            out.push((j, 1.0));
        }
    }
}

/// Merges entries with the same index, summing their values, keeping the order in which
/// each index first appears (deterministic; O(n) with a scratch open-addressing table).
fn dedupe(out: &mut Vec<(u32, f32)>, table: &mut Vec<u32>) {
    let n = out.len();
    if n < 2 {
        return;
    }
    let size = (2 * n).next_power_of_two();
    let mask = size - 1;
    table.clear();
    table.resize(size, u32::MAX);
    let mut w = 0usize;
    for r in 0..n {
        let (idx, v) = out[r];
        let mut slot = ((u64::from(idx).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize) & mask;
        loop {
            let at = table[slot];
            if at == u32::MAX {
                table[slot] = w as u32;
                out[w] = (idx, v);
                w += 1;
                break;
            }
            if out[at as usize].0 == idx {
                out[at as usize].1 += v;
                break;
            }
            slot = (slot + 1) & mask;
        }
    }
    out.truncate(w);
}

/// Largest feature dimension deduplicated with a dense position map (2 bytes per index,
/// per thread: 512 KiB at most); larger ones, and inputs with 65 535 n-grams or more, use
/// the hash table of [`dedupe`].
const DENSE_DEDUPE_MAX_DIM: usize = 1 << 18;

/// Same result as [`dedupe`] (first-appearance order, values summed in input order), with
/// a dense map from index to position: no hashing, no probing, no data-dependent branch.
/// `slots` is all zeros on entry and on return; `out` has fewer than 65 535 entries.
fn dedupe_dense(out: &mut Vec<(u32, f32)>, slots: &mut Vec<u16>, dim: usize) {
    if out.len() < 2 {
        return;
    }
    if slots.len() < dim {
        slots.resize(dim, 0);
    }
    let mut w = 0usize;
    for r in 0..out.len() {
        let (idx, v) = out[r];
        let slot = &mut slots[idx as usize];
        let seen = *slot as usize;
        let new = seen == 0;
        // `w <= r`: writing `out[w]` never clobbers an entry still to be read.
        let pos = if new { w } else { seen - 1 };
        let sum = if new { v } else { out[pos].1 + v };
        out[pos] = (idx, sum);
        *slot = (pos + 1) as u16;
        w += usize::from(new);
    }
    out.truncate(w);
    for &(idx, _) in out.iter() {
        slots[idx as usize] = 0;
    }
}

/// `ln(1 + count)` for the occurrence count of an n-gram: small counts come from a table
/// filled with the same `libm::log1p`, so results are identical.
#[inline]
fn log1p_count(count: u32) -> f32 {
    static TABLE: std::sync::LazyLock<[f32; 256]> =
        std::sync::LazyLock::new(|| std::array::from_fn(|c| libm::log1p(c as f64) as f32));
    match TABLE.get(count as usize) {
        Some(&v) => v,
        None => libm::log1p(f64::from(count)) as f32,
    }
}

/// `1 + ln(count)` as `f32` (`count >= 1`: merged entries count at least one n-gram).
fn sublinear_count(count: u32) -> f32 {
    static TABLE: std::sync::LazyLock<[f32; 256]> = std::sync::LazyLock::new(|| {
        std::array::from_fn(|c| (1.0 + libm::log(c.max(1) as f64)) as f32)
    });
    match TABLE.get(count as usize) {
        Some(&v) => v,
        None => (1.0 + libm::log(f64::from(count))) as f32,
    }
}

#[allow(clippy::too_many_arguments)]
fn sparse_features(
    sp: &SparsePlan,
    t: &str,
    tokenize: bool,
    tokens: &mut Vec<(u32, u32)>,
    offsets: &mut Vec<u32>,
    pad: &mut String,
    hashes: &mut Vec<u64>,
    table: &mut Vec<u32>,
    slots: &mut Vec<u16>,
    out: &mut Vec<(u32, f32)>,
) {
    out.clear();
    match &sp.index {
        NgramIndex::Hashed { bits, .. } => {
            let bits = *bits;
            ngrams(sp, t, tokenize, tokens, offsets, pad, |h| {
                out.push((bucket(h.finish(), bits), 1.0))
            });
        }
        NgramIndex::Vocabulary(vocab) => {
            hashes.clear();
            ngrams(sp, t, tokenize, tokens, offsets, pad, |h| {
                hashes.push(h.finish())
            });
            lookup_all(vocab, hashes, out);
        }
    }
    if sp.weighting == Weighting::Count && !sp.l2 && sp.idf.is_none() {
        return;
    }
    if sp.dim <= DENSE_DEDUPE_MAX_DIM && out.len() < usize::from(u16::MAX) {
        dedupe_dense(out, slots, sp.dim);
    } else {
        dedupe(out, table);
    }
    match sp.weighting {
        Weighting::Count => {}
        Weighting::Binary => out.iter_mut().for_each(|e| e.1 = 1.0),
        // Every n-gram is emitted with value 1, so the merged values are exact counts
        // (f32 is exact up to 2^24, more n-grams than an input can have).
        Weighting::Log1p => out.iter_mut().for_each(|e| e.1 = log1p_count(e.1 as u32)),
        Weighting::Sublinear => out
            .iter_mut()
            .for_each(|e| e.1 = sublinear_count(e.1 as u32)),
    }
    if let Some(idf) = &sp.idf {
        out.iter_mut()
            .for_each(|e| e.1 = (f64::from(e.1) * f64::from(idf[e.0 as usize])) as f32);
    }
    if sp.l2 {
        let norm: f64 = out.iter().map(|e| f64::from(e.1) * f64::from(e.1)).sum();
        if norm > 0.0 {
            let inv = 1.0 / libm::sqrt(norm);
            out.iter_mut()
                .for_each(|e| e.1 = (f64::from(e.1) * inv) as f32);
        }
    }
}

fn keyword_count(k: &KeywordsPlan, t: &str) -> f64 {
    let mut n = 0u32;
    for m in k.ac.find_iter(t) {
        if k.whole_words {
            let before = t[..m.start()].chars().next_back();
            let after = t[m.end()..].chars().next();
            if before.is_some_and(text::is_word_char) || after.is_some_and(text::is_word_char) {
                continue;
            }
        }
        n += 1;
    }
    f64::from(n)
}

fn stat_value(stat: Stat, t: &str, tokens: &mut Vec<(u32, u32)>) -> f64 {
    match stat {
        Stat::Chars => t.chars().count() as f64,
        Stat::Bytes => t.len() as f64,
        Stat::Words => {
            text::tokenize(t, TokenMode::Alnum, tokens);
            tokens.len() as f64
        }
        Stat::DigitRatio => {
            let (mut digits, mut total) = (0u32, 0u32);
            for c in t.chars() {
                total += 1;
                digits += u32::from(c.is_ascii_digit());
            }
            if total == 0 {
                0.0
            } else {
                f64::from(digits) / f64::from(total)
            }
        }
        Stat::UpperRatio => {
            let (mut upper, mut letters) = (0u32, 0u32);
            for c in t.chars().filter(|c| c.is_alphabetic()) {
                letters += 1;
                upper += u32::from(c.is_uppercase());
            }
            if letters == 0 {
                0.0
            } else {
                f64::from(upper) / f64::from(letters)
            }
        }
        Stat::UrlCount => text::URL_RE.find_iter(t).count() as f64,
        Stat::EmailCount => text::EMAIL_RE.find_iter(t).count() as f64,
        Stat::NumberCount => text::NUMBER_RE.find_iter(t).count() as f64,
    }
}

/// How many entries ahead of the one it adds [`linear_scores`] prefetches the row of.
const ROW_PREFETCH_AHEAD: usize = 8;

/// Adds the inputs' contributions to the scores `z` (which hold the bias): for each input
/// group in order, each entry in order, each column in order: the summation order of the
/// format, so that every form of the weights and every width gives identical scores.
#[inline(always)]
fn linear_scores<W: WeightRows>(m: &LinearPlan, w: &W, ctx: &Ctx<'_>, z: &mut [f64]) {
    let width = m.width;
    for g in &m.groups {
        if !g.sparse {
            let v = ctx.scalars[g.feature];
            if v != 0.0 {
                let row = g.offset * width;
                for (c, zc) in z.iter_mut().enumerate() {
                    *zc += f64::from(w.at(row + c, c)) * v;
                }
            }
            continue;
        }
        let entries = &ctx.sparse[g.feature];
        for &(i, _) in entries.iter().take(ROW_PREFETCH_AHEAD) {
            w.prefetch((g.offset + i as usize) * width);
        }
        match width {
            // Widths 1 (sigmoid) and 2: accumulators in registers.
            1 => {
                let mut z0 = z[0];
                for (k, &(i, v)) in entries.iter().enumerate() {
                    if let Some(&(next, _)) = entries.get(k + ROW_PREFETCH_AHEAD) {
                        w.prefetch(g.offset + next as usize);
                    }
                    z0 += f64::from(w.at(g.offset + i as usize, 0)) * f64::from(v);
                }
                z[0] = z0;
            }
            2 => {
                let (mut z0, mut z1) = (z[0], z[1]);
                for (k, &(i, v)) in entries.iter().enumerate() {
                    if let Some(&(next, _)) = entries.get(k + ROW_PREFETCH_AHEAD) {
                        w.prefetch((g.offset + next as usize) * 2);
                    }
                    let v = f64::from(v);
                    let r = (g.offset + i as usize) * 2;
                    z0 += f64::from(w.at(r, 0)) * v;
                    z1 += f64::from(w.at(r + 1, 1)) * v;
                }
                z[0] = z0;
                z[1] = z1;
            }
            _ => {
                for (k, &(i, v)) in entries.iter().enumerate() {
                    if let Some(&(next, _)) = entries.get(k + ROW_PREFETCH_AHEAD) {
                        w.prefetch((g.offset + next as usize) * width);
                    }
                    let row = (g.offset + i as usize) * width;
                    let v = f64::from(v);
                    for (c, zc) in z.iter_mut().enumerate() {
                        *zc += f64::from(w.at(row + c, c)) * v;
                    }
                }
            }
        }
    }
}

struct Ctx<'a> {
    sparse: &'a [Vec<(u32, f32)>],
    scalars: &'a [f64],
}

fn argmax_prob(p: &[f64]) -> f64 {
    p.iter().copied().fold(0.0, f64::max)
}

/// Evaluates `d`, writing a distribution over output labels into `out` (pre-zeroed).
/// Returns the id of the deciding rule/model, or `None` when it abstains.
fn decide_into(
    d: &DecisionPlan,
    ctx: &Ctx<'_>,
    out: &mut [f64],
    stack: &mut [f64],
    z: &mut Vec<f64>,
    lookup: &mut Vec<(usize, f64)>,
) -> Option<u32> {
    match d {
        DecisionPlan::Rules(rules) => {
            let rule = rules.iter().find(|r| cond(&r.when, ctx))?;
            let c = out.len();
            let rest = if c > 1 {
                (1.0 - rule.confidence) / (c - 1) as f64
            } else {
                0.0
            };
            out.fill(rest);
            out[rule.label] = if c > 1 { rule.confidence } else { 1.0 };
            Some(rule.id)
        }
        DecisionPlan::Linear(m) => {
            z.clear();
            z.extend_from_slice(&m.bias);
            match &m.weights {
                Weights::F32(w) => linear_scores(m, &F32Rows(w), ctx, z),
                Weights::Int8 { codes, levels } => {
                    linear_scores(m, &Int8Rows { codes, levels }, ctx, z)
                }
            }
            // Huge inputs can overflow the scores: infinities are clamped (the order is
            // kept), and a NaN score makes the model abstain rather than answer.
            for zc in z.iter_mut() {
                if zc.is_nan() {
                    return None;
                }
                *zc = zc.clamp(-f64::MAX, f64::MAX);
            }
            if m.sigmoid {
                let p1 = 1.0 / (1.0 + libm::exp(-z[0] * m.inv_temperature));
                out[m.classes[0]] = 1.0 - p1;
                out[m.classes[1]] = p1;
            } else {
                let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0;
                for zc in z.iter_mut() {
                    *zc = libm::exp((*zc - max) * m.inv_temperature);
                    sum += *zc;
                }
                for (k, &cls) in m.classes.iter().enumerate() {
                    out[cls] = z[k] / sum;
                }
            }
            let _ = m.bayes;
            if argmax_prob(out) < m.min_confidence {
                out.fill(0.0);
                return None;
            }
            Some(m.id)
        }
        DecisionPlan::Tree(t) => {
            let mut node = 0usize;
            let mut inputs = TreeInputs::new(lookup);
            while t.feature[node] != u32::MAX {
                let x = inputs.value(&t.groups, t.feature[node] as usize, ctx);
                node = if x <= f64::from(t.threshold[node]) {
                    t.left[node] as usize
                } else {
                    t.right[node] as usize
                };
            }
            let k = t.classes.len();
            let leaf = &t.value[node * k..(node + 1) * k];
            let sum: f64 = leaf.iter().map(|&v| f64::from(v)).sum();
            for (j, &cls) in t.classes.iter().enumerate() {
                out[cls] = f64::from(leaf[j]) / sum;
            }
            if argmax_prob(out) < t.min_confidence {
                out.fill(0.0);
                return None;
            }
            Some(t.id)
        }
        DecisionPlan::First(steps) => {
            for step in steps {
                if let Some(id) = decide_into(step, ctx, out, stack, z, lookup) {
                    return Some(id);
                }
                out.fill(0.0);
            }
            None
        }
        DecisionPlan::Vote {
            members,
            min_confidence,
            id,
        } => {
            let c = out.len();
            let (child, deeper) = stack.split_at_mut(c);
            let mut total = 0.0;
            for (w, member) in members {
                child.fill(0.0);
                if decide_into(member, ctx, child, deeper, z, lookup).is_some() {
                    total += w;
                    for (o, p) in out.iter_mut().zip(child.iter()) {
                        *o += w * p;
                    }
                }
            }
            if total == 0.0 {
                return None;
            }
            out.iter_mut().for_each(|o| *o /= total);
            if argmax_prob(out) < *min_confidence {
                out.fill(0.0);
                return None;
            }
            Some(*id)
        }
    }
}

/// Sparse lookups a tree walk does by scanning before it sorts its sparse inputs once.
const TREE_SCANS: u32 = 8;

/// The model inputs of one tree walk. A lookup in a sparse input scans its entries; a
/// walk that does more than [`TREE_SCANS`] of them sorts the entries of all its sparse
/// inputs once and then searches them, so that a deep tree over a long text costs
/// `O(entries * log(entries) + depth * log(entries))`, not `O(depth * entries)`.
struct TreeInputs<'s> {
    lookup: &'s mut Vec<(usize, f64)>,
    scans: u32,
}

impl<'s> TreeInputs<'s> {
    fn new(lookup: &'s mut Vec<(usize, f64)>) -> Self {
        TreeInputs { lookup, scans: 0 }
    }

    /// The value of flattened model input `index` (as [`feature_value`]).
    fn value(&mut self, groups: &[InputGroup], index: usize, ctx: &Ctx<'_>) -> f64 {
        let g = group_of(groups, index);
        if !g.sparse {
            return ctx.scalars[g.feature];
        }
        if self.scans < TREE_SCANS {
            self.scans += 1;
            if self.scans == TREE_SCANS {
                self.sort(groups, ctx);
            }
            return feature_value(groups, index, ctx);
        }
        match self.lookup.binary_search_by_key(&index, |e| e.0) {
            Ok(at) => self.lookup[at].1,
            Err(_) => std::iter::empty::<f64>().sum(),
        }
    }

    /// Fills `lookup` with the sparse entries of `groups`, by flattened index, the values
    /// of one index summed in entry order (the sum [`feature_value`] computes).
    fn sort(&mut self, groups: &[InputGroup], ctx: &Ctx<'_>) {
        let all = &mut *self.lookup;
        all.clear();
        for g in groups.iter().filter(|g| g.sparse) {
            all.extend(
                ctx.sparse[g.feature]
                    .iter()
                    .map(|&(i, v)| (g.offset + i as usize, f64::from(v))),
            );
        }
        // Stable: entries of one index keep their order.
        all.sort_by_key(|e| e.0);
        let (mut w, mut r) = (0, 0);
        while r < all.len() {
            let index = all[r].0;
            let end = r + all[r..].iter().take_while(|e| e.0 == index).count();
            let sum: f64 = all[r..end].iter().map(|e| e.1).sum();
            all[w] = (index, sum);
            w += 1;
            r = end;
        }
        all.truncate(w);
    }
}

/// The input group holding flattened model input `index` (offsets increase).
fn group_of(groups: &[InputGroup], index: usize) -> &InputGroup {
    let after = groups.partition_point(|g| g.offset <= index);
    &groups[after
        .checked_sub(1)
        .expect("index validated at compile time")]
}

/// The value of flattened model input `index`.
fn feature_value(groups: &[InputGroup], index: usize, ctx: &Ctx<'_>) -> f64 {
    let g = group_of(groups, index);
    match g.sparse {
        true => {
            let local = (index - g.offset) as u32;
            ctx.sparse[g.feature]
                .iter()
                .filter(|e| e.0 == local)
                .map(|e| f64::from(e.1))
                .sum()
        }
        false => ctx.scalars[g.feature],
    }
}

fn cond(c: &CondPlan, ctx: &Ctx<'_>) -> bool {
    match c {
        CondPlan::All(list) => list.iter().all(|x| cond(x, ctx)),
        CondPlan::Any(list) => list.iter().any(|x| cond(x, ctx)),
        CondPlan::Not(x) => !cond(x, ctx),
        CondPlan::Always => true,
        CondPlan::In { feature, buckets } => {
            let v = ctx.scalars[*feature];
            v >= 0.0 && buckets.binary_search(&(v as u32)).is_ok()
        }
        CondPlan::Cmp {
            feature,
            cmp,
            value,
        } => {
            let v = ctx.scalars[*feature];
            match cmp {
                Cmp::Gt => v > *value,
                Cmp::Ge => v >= *value,
                Cmp::Lt => v < *value,
                Cmp::Le => v <= *value,
                Cmp::Eq => v == *value,
                Cmp::Ne => v != *value,
            }
        }
    }
}

// Hooks for `explain`: the evaluator's own arithmetic on a traced evaluation, so that an
// explanation agrees with `evaluate` bit for bit.

/// The distribution `d` writes over `labels` output labels for traced features, and the
/// id of the deciding rule or model (`None`: it abstained).
pub(crate) fn decide_traced(
    d: &DecisionPlan,
    trace: &Trace,
    labels: usize,
) -> (Vec<f64>, Option<u32>) {
    let ctx = Ctx {
        sparse: &trace.sparse,
        scalars: &trace.scalars,
    };
    let mut out = vec![0.0; labels];
    let mut stack = vec![0.0; labels * 2 * (MAX_DECISION_DEPTH + 2)];
    let (mut z, mut lookup) = (Vec::new(), Vec::new());
    let id = decide_into(d, &ctx, &mut out, &mut stack, &mut z, &mut lookup);
    (out, id)
}

/// Whether condition `c` holds on traced features.
pub(crate) fn holds(c: &CondPlan, trace: &Trace) -> bool {
    cond(
        c,
        &Ctx {
            sparse: &trace.sparse,
            scalars: &trace.scalars,
        },
    )
}

/// The value of flattened model input `index` of a model over `groups`.
pub(crate) fn model_input(groups: &[InputGroup], index: usize, trace: &Trace) -> f64 {
    feature_value(
        groups,
        index,
        &Ctx {
            sparse: &trace.sparse,
            scalars: &trace.scalars,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_and_hashed_dedupe_agree_bit_for_bit() {
        let mut rng = fastrand::Rng::with_seed(7);
        let (mut table, mut slots) = (Vec::new(), Vec::new());
        for round in 0..500 {
            let dim = 1usize << rng.u32(1..12);
            let n = rng.usize(0..400);
            let input: Vec<(u32, f32)> = (0..n)
                .map(|_| (rng.u32(..dim as u32), rng.f32() * 4.0))
                .collect();
            let mut hashed = input.clone();
            dedupe(&mut hashed, &mut table);
            let mut dense = input.clone();
            dedupe_dense(&mut dense, &mut slots, dim);
            assert_eq!(
                hashed
                    .iter()
                    .map(|e| (e.0, e.1.to_bits()))
                    .collect::<Vec<_>>(),
                dense
                    .iter()
                    .map(|e| (e.0, e.1.to_bits()))
                    .collect::<Vec<_>>(),
                "round {round}"
            );
            assert!(slots.iter().all(|&s| s == 0), "slots left dirty");
        }
    }
}
