//! The human-readable report of a synthesis run (`loopai synth`'s table and notes).

use std::fmt::{self, Write as _};

use loopai_core::NewArtifact;
use serde_json::{json, Map};

use crate::metrics::write_class_table;

use super::Synthesis;

impl Synthesis {
    /// The artifact metadata for installing the program: `synthesis_strategy`,
    /// `confidence_score` (the CV accuracy; absent when not cross-validated), `complexity_metrics` (rules, features,
    /// keywords, weights, sparse_dims, program_bytes, model, cv_folds, examples),
    /// `generation_time_sec`, `generation_cost` 0 and `llm_provider` `"none"`.
    pub fn new_artifact(&self) -> NewArtifact {
        let s = &self.stats;
        let mut m = Map::new();
        m.insert("rules".into(), json!(s.rules));
        m.insert("features".into(), json!(s.features));
        m.insert("keywords".into(), json!(s.keywords));
        m.insert("weights".into(), json!(s.weights));
        m.insert("sparse_dims".into(), json!(s.sparse_dims));
        m.insert("program_bytes".into(), json!(self.program_json.len()));
        m.insert("model".into(), json!(self.model));
        m.insert("cv_folds".into(), json!(self.folds));
        m.insert("examples".into(), json!(self.examples));
        m.insert("trusted".into(), json!(self.trusted));
        if !self.fields.is_empty() {
            m.insert("fields".into(), json!(self.fields));
        }
        if !self.warnings.is_empty() {
            m.insert("warnings".into(), json!(self.warnings));
        }
        NewArtifact {
            synthesis_strategy: self.strategy.as_str().to_string(),
            confidence_score: (self.folds > 0).then_some(self.cv_accuracy),
            complexity_metrics: m,
            llm_provider: Some("none".to_string()),
            generation_cost: 0.0,
            generation_time_sec: self.elapsed.as_secs_f64(),
            ..NewArtifact::default()
        }
    }

    /// A human-readable report: each candidate's CV accuracy and latency, the choice, its
    /// per-class precision/recall and the time taken; for extraction, each field's
    /// extractor and cross-validated exact match.
    pub fn report_text(&self) -> String {
        if !self.fields.is_empty() {
            return crate::extract::report_text(self);
        }
        let mut s = String::new();
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        if self.folds > 0 {
            let _ = writeln!(
                s,
                "synthesized from {} examples, {} labels, {}-fold cross-validation",
                self.examples,
                self.labels.len(),
                self.folds
            );
        } else {
            let _ = writeln!(
                s,
                "synthesized from {} examples, {} labels, not cross-validated (one label has examples)",
                self.examples,
                self.labels.len(),
            );
        }
        let w = self
            .candidates
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(10);
        let _ = writeln!(
            s,
            "  {:<w$}  {:>7}  {:>7}  {:>11}  {:>11}  {:>5}",
            "candidate", "cv acc", "cv mF1", "latency µs", "bytes", "rules"
        );
        for c in &self.candidates {
            let _ = writeln!(
                s,
                "{} {:<w$}  {:>7}  {:>7}  {:>11}  {:>11}  {:>5}",
                if c.chosen { "*" } else { " " },
                c.name,
                Acc(c.cv_accuracy),
                Acc(c.cv_macro_f1),
                c.est_latency_us
                    .map_or("-".to_string(), |l| format!("{l:.2}")),
                c.program_bytes,
                c.rules
            );
        }
        let _ = writeln!(
            s,
            "chosen: {} ({}), cv accuracy {}{}, training accuracy {:.4}{}",
            self.model,
            self.strategy,
            Acc(self.cv_accuracy),
            self.accuracy_target
                .map_or(String::new(), |t| format!(" (target {t})")),
            self.train_accuracy,
            match self.metric {
                crate::spec::Metric::Accuracy => String::new(),
                m => format!("; picked by cv {}", m.as_str()),
            }
        );
        if let Some(c) = self
            .candidates
            .iter()
            .find(|c| c.chosen && !c.per_class.is_empty())
        {
            let _ = writeln!(s, "cross-validated per-class metrics:");
            let _ = write_class_table(&mut s, &c.per_class);
        }
        for note in &self.notes {
            let _ = writeln!(s, "note: {note}");
        }
        if !self.trusted {
            let _ = writeln!(
                s,
                "not trusted: the program is not activated unless asked (--activate-anyway)"
            );
        }
        let _ = writeln!(
            s,
            "program: {} bytes, {} features, {} rules; time {:.2} s",
            self.program_json.len(),
            self.stats.features,
            self.stats.rules,
            self.elapsed.as_secs_f64()
        );
        s
    }
}

/// An accuracy for the report: four decimals, or "not measured" for NaN.
struct Acc(f64);

impl fmt::Display for Acc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_nan() {
            f.pad("not measured")
        } else {
            f.pad(&format!("{:.4}", self.0))
        }
    }
}
