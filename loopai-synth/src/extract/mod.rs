//! Extraction synthesis: from examples whose output is an object of typed fields, learn an
//! `output.kind = "extract"` program — per field, candidate extractors built from the
//! examples (value shapes, context anchors, n-th match; see [`recipe`]), each
//! cross-validated by exact match, the most accurate (the simplest on a tie) kept, with
//! the field's confidence taken from its out-of-fold precision.

use std::time::Instant;

use loopai_core::{Error, ErrorKind, Program, ProgramLimits, Result};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::rng::Rng;
use crate::spec::{pointer, TaskSpec};
use crate::synth::folds::par_map;
use crate::synth::{CandidateReport, Strategy, SynthOptions, Synthesis};

mod locate;
mod recipe;
pub(crate) mod schema;
mod shape;

use locate::Locator;
use recipe::{FieldData, Recipe};
use schema::{Expected, FieldKind};

/// The program's text input (the source of every field).
const SOURCE: &str = "text";

/// What synthesis learnt for one extracted field.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct FieldReport {
    /// The field name.
    pub name: String,
    /// Its type: `string`, `email`, `number`, `integer` or `date`.
    pub kind: String,
    /// The chosen extractor, e.g. `builtin after anchor words, else first`.
    pub extractor: String,
    /// Cross-validated exact-match accuracy of the chosen extractor (a `null` is right
    /// when the expected value is `null`).
    pub cv_exact_match: f64,
    /// Of the held-out examples where the extractor found a value, the share that was
    /// right (NaN when it found none).
    pub cv_precision: f64,
    /// Examples whose expected value is not `null`.
    pub with_value: usize,
    /// Of those, how many show the value in their text (in a form the generator reads).
    pub located: usize,
    /// Exact-match accuracy of the final program on the training examples.
    pub train_exact_match: f64,
    /// Candidate extractors cross-validated for this field.
    pub candidates: usize,
}

/// Learns an extraction program (the spec's output schema is an object).
pub(crate) fn synthesize(spec: &TaskSpec, options: &SynthOptions) -> Result<Synthesis> {
    let start = Instant::now();
    spec.validate()?;
    if !matches!(options.strategy, Strategy::Auto | Strategy::Extract) {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "strategy: {} does not apply to an extraction task (an object output); use \
                 auto or extract",
                options.strategy
            ),
        ));
    }
    let fields =
        schema::fields(&spec.output_schema).map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;
    let n = spec.examples.len();
    if n < 2 {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "spec.examples: an extraction task needs at least 2 examples to learn and \
             cross-validate from",
        ));
    }
    let expected: Vec<Vec<Expected>> = fields
        .iter()
        .map(|f| {
            spec.examples
                .iter()
                .enumerate()
                .map(|(i, ex)| {
                    schema::expected(f, &ex.output, &format!("spec.examples[{i}].output"))
                        .unwrap_or(Expected::Null)
                })
                .collect()
        })
        .collect();
    let locator = Locator::new();

    // The source text: the text field where the most values are found.
    let text_fields =
        crate::inputs::InputFields::of(&spec.input_schema, spec.examples.iter().map(|e| &e.input))?
            .text;
    if text_fields.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "spec.input_schema: no text (string) field to extract from",
        ));
    }
    let mut best: Option<(usize, usize)> = None;
    for (t, tf) in text_fields.iter().enumerate() {
        let texts = texts_of(spec, &tf.key);
        let hits: usize = fields
            .iter()
            .zip(&expected)
            .map(|(f, exp)| {
                (0..n)
                    .filter(|&i| !locator.find(f.kind, &exp[i], &texts[i]).is_empty())
                    .count()
            })
            .sum();
        if best.is_none_or(|(_, h)| hits > h) {
            best = Some((t, hits));
        }
    }
    let source = &text_fields[best.map_or(0, |b| b.0)];
    let texts = texts_of(spec, &source.key);

    // Folds: a seeded shuffle dealt round-robin.
    let k = options.folds.clamp(2, 20).min(n);
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(options.seed).shuffle(&mut order);
    let mut fold = vec![0usize; n];
    for (pos, &i) in order.iter().enumerate() {
        fold[i] = pos % k;
    }

    let progress = options.progress.as_deref();
    let mut field_jsons = Vec::new();
    let mut reports = Vec::new();
    let mut oof_chosen: Vec<Vec<Value>> = Vec::new();
    let mut candidates = Vec::new();
    let mut warnings = Vec::new();
    let threads = match options.threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(4),
        t => t,
    };
    if let Some(p) = progress {
        p.stage(
            "extract: cross-validate extractors",
            (fields.len() * k) as u64,
        );
    }
    let learnt = par_map(fields.len(), threads, |j| -> Result<Learnt> {
        let (f, exp) = (&fields[j], &expected[j]);
        let mut field_warnings = Vec::new();
        let found: Vec<_> = (0..n)
            .map(|i| locator.find(f.kind, &exp[i], &texts[i]))
            .collect();
        let currency_like = f.kind == FieldKind::String && {
            let vals: Vec<&str> = exp
                .iter()
                .filter_map(|e| match e {
                    Expected::Text(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect();
            !vals.is_empty() && vals.iter().all(|v| locate::is_currency_token(v))
        };
        let data = FieldData {
            spec: f,
            expected: exp.clone(),
            found,
            texts: &texts,
            currency_like,
        };
        let recipes = Recipe::all(f.kind, currency_like);
        // Out-of-fold predictions of every recipe.
        let mut oof: Vec<Vec<Value>> = vec![vec![Value::Null; n]; recipes.len()];
        for fo in 0..k {
            let train: Vec<usize> = (0..n).filter(|&i| fold[i] != fo).collect();
            let test: Vec<usize> = (0..n).filter(|&i| fold[i] == fo).collect();
            let built: Vec<(usize, Map<String, Value>)> = recipes
                .iter()
                .enumerate()
                .filter_map(|(r, rec)| recipe::build(rec, &data, &train).map(|b| (r, b)))
                .collect();
            for chunk in built.chunks(64) {
                let program = field_program(
                    spec,
                    &source.key,
                    chunk
                        .iter()
                        .map(|(r, b)| (format!("r{r}"), b.clone(), false, None))
                        .collect(),
                )?;
                for &i in &test {
                    let out = program
                        .evaluate(&spec.examples[i].input)
                        .map(|o| o.output)
                        .unwrap_or(Value::Null);
                    for (r, _) in chunk {
                        oof[*r][i] = out.get(format!("r{r}")).cloned().unwrap_or(Value::Null);
                    }
                }
            }
            if let Some(p) = progress {
                p.advance(1);
            }
        }
        let acc =
            |r: usize| (0..n).filter(|&i| exp[i].matches(&oof[r][i])).count() as f64 / n as f64;
        let all_train: Vec<usize> = (0..n).collect();
        let mut pick: Option<(usize, f64)> = None;
        for (r, rec) in recipes.iter().enumerate() {
            // Only recipes that can be built from every example compete.
            if recipe::build(rec, &data, &all_train).is_none() {
                continue;
            }
            let a = acc(r);
            let better = match pick {
                None => true,
                Some((p, pa)) => a > pa || (a == pa && rec.rank(f.kind) < recipes[p].rank(f.kind)),
            };
            if better {
                pick = Some((r, a));
            }
        }
        let with_value = exp.iter().filter(|e| **e != Expected::Null).count();
        let located = (0..n).filter(|&i| !data.found[i].is_empty()).count();
        if with_value > 0 && located * 2 < with_value {
            field_warnings.push(format!(
                "field {:?}: only {located} of {with_value} example values appear in the \
                 texts in a form the generator reads; the field cannot be learnt from them",
                f.name
            ));
        }
        let (chosen, cv, built) = match pick {
            Some((r, a)) => (
                Some(recipes[r]),
                a,
                recipe::build(&recipes[r], &data, &all_train),
            ),
            None => (None, 0.0, None),
        };
        let chosen_oof = match pick {
            Some((r, _)) => oof[r].clone(),
            None => vec![Value::Null; n],
        };
        // Out-of-fold precision when found, and when not.
        let (mut f_ok, mut f_n, mut m_ok, mut m_n) = (0usize, 0usize, 0usize, 0usize);
        for i in 0..n {
            let ok = exp[i].matches(&chosen_oof[i]);
            if chosen_oof[i].is_null() {
                m_n += 1;
                m_ok += usize::from(ok);
            } else {
                f_n += 1;
                f_ok += usize::from(ok);
            }
        }
        let smooth = |ok: usize, n: usize| (ok as f64 + 1.0) / (n as f64 + 2.0);
        let confidence = (smooth(f_ok, f_n), smooth(m_ok, m_n));
        let body = built.unwrap_or_else(|| {
            // Nothing can be learnt: a pattern that never matches keeps the field null.
            let mut m = Map::new();
            m.insert("pattern".into(), json!("[^\\s\\S]"));
            m
        });
        let field_json: FieldJson = (f.name.clone(), body, !f.nullable, Some(confidence));
        let extractor = chosen.map_or("none (never matches)".to_string(), |r| r.to_string());
        if let Some(p) = progress {
            p.candidate(&format!("{}: {extractor}", f.name), cv);
        }
        let candidate = CandidateReport {
            strategy: Strategy::Extract,
            name: format!("{}: {extractor}", f.name),
            cv_accuracy: cv,
            cv_macro_f1: f64::NAN,
            per_class: Vec::new(),
            est_latency_us: None,
            program_bytes: 0,
            rules: 0,
            chosen: true,
        };
        let report = FieldReport {
            name: f.name.clone(),
            kind: f.kind.as_str().to_string(),
            extractor,
            cv_exact_match: cv,
            cv_precision: if f_n == 0 {
                f64::NAN
            } else {
                f_ok as f64 / f_n as f64
            },
            with_value,
            located,
            train_exact_match: 0.0,
            candidates: recipes.len(),
        };
        Ok((field_json, candidate, report, chosen_oof, field_warnings))
    });
    if let Some(p) = progress {
        p.finish_stage();
    }
    for l in learnt {
        let (field_json, candidate, report, chosen_oof, field_warnings) = l?;
        field_jsons.push(field_json);
        candidates.push(candidate);
        reports.push(report);
        oof_chosen.push(chosen_oof);
        warnings.extend(field_warnings);
    }

    // The final program, and its accuracy on the training examples.
    let program_value = program_value(spec, &source.key, field_jsons);
    let program_json = serde_json::to_vec_pretty(&program_value)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("serializing the program: {e}")))?;
    let program = Program::from_json_with_limits(&program_json, &options.limits).map_err(|e| {
        Error::new(
            ErrorKind::Internal,
            format!("generated extraction program does not compile (a loopai-synth bug): {e}"),
        )
    })?;
    let mut all_ok = 0usize;
    let mut field_ok = vec![0usize; fields.len()];
    let mut latencies = Vec::new();
    for (i, ex) in spec.examples.iter().enumerate() {
        let t0 = Instant::now();
        let out = program
            .evaluate(&ex.input)
            .map(|o| o.output)
            .unwrap_or(Value::Null);
        latencies.push(t0.elapsed().as_secs_f64() * 1e6);
        let mut all = true;
        for (j, f) in fields.iter().enumerate() {
            let ok = expected[j][i].matches(out.get(&f.name).unwrap_or(&Value::Null));
            field_ok[j] += usize::from(ok);
            all &= ok;
        }
        all_ok += usize::from(all);
    }
    for (r, ok) in reports.iter_mut().zip(&field_ok) {
        r.train_exact_match = *ok as f64 / n as f64;
    }
    let cv_object = (0..n)
        .filter(|&i| (0..fields.len()).all(|j| expected[j][i].matches(&oof_chosen[j][i])))
        .count() as f64
        / n as f64;
    latencies.sort_by(f64::total_cmp);
    let latency = latencies.get(latencies.len() / 2).copied();
    for c in &mut candidates {
        c.est_latency_us = latency;
        c.program_bytes = program_json.len();
    }

    // Trust: every field must reach the target and beat always answering null.
    let mut trusted = true;
    for (r, exp) in reports.iter().zip(&expected) {
        let nulls = exp.iter().filter(|e| **e == Expected::Null).count() as f64 / n as f64;
        if r.cv_exact_match <= nulls + 1e-9 {
            trusted = false;
            warnings.push(format!(
                "field {:?}: cross-validated exact match {:.4} is no better than always \
                 answering null ({nulls:.4}); add examples",
                r.name, r.cv_exact_match
            ));
        }
        if let Some(t) = spec.accuracy_target {
            if r.cv_exact_match < t {
                trusted = false;
                warnings.push(format!(
                    "field {:?}: cross-validated exact match {:.4} is below the spec's \
                     accuracy_target {t}",
                    r.name, r.cv_exact_match
                ));
            }
        }
    }
    if n < 10 {
        warnings.push(format!(
            "only {n} examples: the cross-validated figures rest on that many cases and may \
             be far off"
        ));
    }
    Ok(Synthesis {
        stats: program.stats().clone(),
        program_json,
        strategy: Strategy::Extract,
        model: "extract".to_string(),
        cv_accuracy: cv_object,
        trusted,
        notes: Vec::new(),
        train_accuracy: all_ok as f64 / n as f64,
        candidates,
        labels: Vec::new(),
        fields: reports,
        examples: n,
        folds: k,
        accuracy_target: spec.accuracy_target,
        metric: crate::spec::Metric::Accuracy,
        elapsed: start.elapsed(),
        warnings,
    })
}

/// Each example's text in `key` ("" when absent or not a string).
fn texts_of(spec: &TaskSpec, key: &str) -> Vec<String> {
    spec.examples
        .iter()
        .map(|ex| {
            ex.input
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// A field: name, body, required, confidences (found, missing).
type FieldJson = (String, Map<String, Value>, bool, Option<(f64, f64)>);

/// What is learnt for one field: its program JSON, report lines, the chosen extractor's
/// out-of-fold predictions and warnings.
type Learnt = (
    FieldJson,
    CandidateReport,
    FieldReport,
    Vec<Value>,
    Vec<String>,
);

fn program_value(spec: &TaskSpec, key: &str, fields: Vec<FieldJson>) -> Value {
    let fields: Vec<Value> = fields
        .into_iter()
        .map(|(name, body, required, confidence)| {
            let mut m = Map::new();
            m.insert("name".into(), json!(name));
            m.extend(body);
            m.insert("required".into(), json!(required));
            if let Some((found, missing)) = confidence {
                m.insert("confidence_found".into(), json!(round4(found)));
                m.insert("confidence_missing".into(), json!(round4(missing)));
            }
            Value::Object(m)
        })
        .collect();
    let mut p = json!({
        "format": loopai_core::PROGRAM_FORMAT,
        "task": spec.name,
        "inputs": [{"name": SOURCE, "path": pointer(key), "type": "text", "required": false,
                    "max_bytes": 65536, "on_oversize": "truncate"}],
        "output": {"kind": "extract", "source": SOURCE, "fields": fields},
        "metadata": {"generator": "loopai-synth extract"},
    });
    if !spec.description.is_empty() {
        p["description"] = json!(spec.description);
    }
    p
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).floor() / 10_000.0
}

/// A program of the given fields, compiled (for cross-validation).
fn field_program(spec: &TaskSpec, key: &str, fields: Vec<FieldJson>) -> Result<Program> {
    let v = program_value(spec, key, fields);
    Program::from_value(&v, &ProgramLimits::default()).map_err(|e| {
        Error::new(
            ErrorKind::Internal,
            format!("a candidate extractor does not compile (a loopai-synth bug): {e}"),
        )
    })
}

/// The report of an extraction synthesis: per field, the extractor chosen and its
/// cross-validated exact match.
pub(crate) fn report_text(s: &Synthesis) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for w in &s.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    let _ = writeln!(
        out,
        "extraction synthesized from {} examples, {} fields, {}-fold cross-validation",
        s.examples,
        s.fields.len(),
        s.folds
    );
    let w = s
        .fields
        .iter()
        .map(|f| f.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let e = s
        .fields
        .iter()
        .map(|f| f.extractor.chars().count())
        .max()
        .unwrap_or(9)
        .max(9);
    let _ = writeln!(
        out,
        "  {:<w$}  {:<7}  {:>8}  {:>9}  {:>9}  {:>10}  {:<e$}",
        "field", "type", "cv exact", "precision", "train", "located", "extractor"
    );
    for f in &s.fields {
        let _ = writeln!(
            out,
            "  {:<w$}  {:<7}  {:>8.4}  {:>9}  {:>9.4}  {:>10}  {:<e$}",
            f.name,
            f.kind,
            f.cv_exact_match,
            if f.cv_precision.is_nan() {
                "-".to_string()
            } else {
                format!("{:.4}", f.cv_precision)
            },
            f.train_exact_match,
            format!("{}/{}", f.located, f.with_value),
            f.extractor
        );
    }
    let _ = writeln!(
        out,
        "whole object: cv exact match {:.4}{}, training {:.4}",
        s.cv_accuracy,
        s.accuracy_target
            .map_or(String::new(), |t| format!(" (per-field target {t})")),
        s.train_accuracy
    );
    for note in &s.notes {
        let _ = writeln!(out, "note: {note}");
    }
    if !s.trusted {
        let _ = writeln!(
            out,
            "not trusted: the program is not activated unless asked (--activate-anyway)"
        );
    }
    let _ = writeln!(
        out,
        "program: {} bytes, {} regexes, median {:.1} µs per execution; time {:.2} s",
        s.program_json.len(),
        s.stats.regexes,
        s.candidates
            .first()
            .and_then(|c| c.est_latency_us)
            .unwrap_or(f64::NAN),
        s.elapsed.as_secs_f64()
    );
    out
}
