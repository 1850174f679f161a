//! Rule mining: high-precision keyword rules per class, found by sequential covering over
//! the word unigrams and bigrams of the clean views.
//!
//! A term is a token (`alnum` run) or two tokens separated by exactly one space in the
//! clean view, which is precisely when a `keywords` feature with `whole_words: true` finds
//! it. Consecutive rules for the same class and field share one `keywords` feature.
//! Number and category fields add their conditions ([`Cond`]: thresholds, ranges, values,
//! missing) as atoms beside the terms; each such rule tests one condition.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use serde_json::{json, Value};

use crate::features::{is_word_char, tokenize, FeatureConfig};
use crate::structured::{Cond, Row};

/// Longest term considered, in bytes (longer tokens are mostly encoded noise).
const MAX_TERM_BYTES: usize = 40;

/// Every term of the examples with its postings (the examples containing it), then every
/// condition on the number and category fields with the examples where it holds. An atom
/// id below `terms.len()` is a term, the others are conditions.
#[derive(Debug, Default)]
pub(crate) struct TermIndex {
    /// `(field, term)`.
    pub terms: Vec<(usize, String)>,
    /// Conditions on number and category fields, atoms `terms.len()..`.
    pub conds: Vec<Cond>,
    /// Sorted example ids per atom.
    pub postings: Vec<Vec<u32>>,
}

impl TermIndex {
    /// Indexes the clean views (`views[example][field]`); terms seen in one example only
    /// are dropped (no rule can use them).
    pub(crate) fn build(views: &[Vec<String>]) -> TermIndex {
        let mut map: HashMap<(usize, u64), usize> = HashMap::new();
        let mut idx = TermIndex::default();
        let mut tokens = Vec::new();
        for (doc, fields) in views.iter().enumerate() {
            for (f, view) in fields.iter().enumerate() {
                tokenize(view, &mut tokens);
                for i in 0..tokens.len() {
                    let (a, b) = tokens[i];
                    let mut ends = vec![b];
                    if let Some(&(c, d)) = tokens.get(i + 1) {
                        if c == b + 1 && view.as_bytes()[b] == b' ' {
                            ends.push(d);
                        }
                    }
                    for end in ends {
                        if end - a > MAX_TERM_BYTES {
                            continue;
                        }
                        let term = &view[a..end];
                        let key = (f, loopai_core::ngram_hash(0, term));
                        let id = *map.entry(key).or_insert_with(|| {
                            idx.terms.push((f, term.to_string()));
                            idx.postings.push(Vec::new());
                            idx.terms.len() - 1
                        });
                        let p = &mut idx.postings[id];
                        if p.last() != Some(&(doc as u32)) {
                            p.push(doc as u32);
                        }
                    }
                }
            }
        }
        // Drop singletons, keeping the first-seen order.
        let mut terms = Vec::new();
        let mut postings = Vec::new();
        for (t, p) in idx.terms.into_iter().zip(idx.postings) {
            if p.len() >= 2 {
                terms.push(t);
                postings.push(p);
            }
        }
        TermIndex {
            terms,
            conds: Vec::new(),
            postings,
        }
    }

    /// Adds conditions on number and category fields with their postings.
    pub(crate) fn add_conditions(&mut self, conds: Vec<(Cond, Vec<u32>)>) {
        for (c, post) in conds {
            self.conds.push(c);
            self.postings.push(post);
        }
    }

    /// The text field of a term atom; `None` for a condition (it groups with no other).
    fn group_of(&self, atom: usize) -> Option<usize> {
        self.terms.get(atom).map(|t| t.0)
    }

    /// The condition of a condition atom.
    fn cond(&self, atom: usize) -> Option<&Cond> {
        atom.checked_sub(self.terms.len())
            .and_then(|i| self.conds.get(i))
    }
}

/// One mined rule: any of `terms` (of one text field) present → `class`; or, without a
/// field, its one condition atom holds → `class`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rule {
    pub field: Option<usize>,
    /// Atom ids in the [`TermIndex`].
    pub terms: Vec<usize>,
    pub class: usize,
    pub confidence: f64,
}

/// A decision list: rules in order, then an optional default class with its confidence.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RuleList {
    pub rules: Vec<Rule>,
    pub default: Option<(usize, f64)>,
}

/// Mining settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MineParams {
    /// Least precision `pos / (pos + neg + 1)` on the examples a rule newly covers.
    pub min_precision: f64,
    /// Most terms in the whole list.
    pub max_terms: usize,
    /// Most rules (keyword features) in the list.
    pub max_rules: usize,
    /// End with a default rule (majority class of the examples no rule covers).
    pub with_default: bool,
}

/// Mines a decision list from the examples `rows` (labels `y`).
pub(crate) fn mine(
    index: &TermIndex,
    y: &[usize],
    rows: &[usize],
    classes: usize,
    p: MineParams,
) -> RuleList {
    let n_docs = y.len();
    let mut in_train = vec![false; n_docs];
    for &r in rows {
        in_train[r] = true;
    }
    let min_support = ((rows.len() as f64 * 0.002).ceil() as usize).max(2);
    // Candidates: (score, support, term, class).
    let mut counts = vec![0usize; classes];
    let mut cands: Vec<(f64, usize, usize, usize)> = Vec::new();
    for (t, post) in index.postings.iter().enumerate() {
        counts.iter_mut().for_each(|c| *c = 0);
        let mut total = 0;
        for &d in post {
            if in_train[d as usize] {
                counts[y[d as usize]] += 1;
                total += 1;
            }
        }
        if total < min_support {
            continue;
        }
        let (c, &pos) = counts
            .iter()
            .enumerate()
            .max_by_key(|&(i, &v)| (v, std::cmp::Reverse(i)))
            .expect("classes > 0");
        let score = pos as f64 / (total as f64 + 1.0);
        if pos >= min_support && score >= p.min_precision {
            cands.push((score, pos, t, c));
        }
    }
    // Classes from the rarest to the most frequent: rules for rare classes come first, so
    // that broad rules of a frequent class cannot swallow them; with a default, the most
    // frequent class is left to it.
    let mut class_n = vec![0usize; classes];
    for &r in rows {
        class_n[y[r]] += 1;
    }
    let mut order: Vec<usize> = (0..classes).filter(|&c| class_n[c] > 0).collect();
    order.sort_by_key(|&c| (class_n[c], c));
    if p.with_default {
        order.pop();
    }
    let rank = |c: usize| order.iter().position(|&o| o == c);
    cands.retain(|cand| rank(cand.3).is_some());
    cands.sort_by(|a, b| {
        rank(a.3)
            .cmp(&rank(b.3))
            .then(b.0.total_cmp(&a.0))
            .then(b.1.cmp(&a.1))
            .then(a.2.cmp(&b.2))
    });
    let mut covered = vec![false; n_docs];
    let mut picked: Vec<(usize, usize, usize, usize)> = Vec::new(); // term, class, pos, neg
    for &(_, _, t, c) in &cands {
        if picked.len() >= p.max_terms {
            break;
        }
        let (mut pos, mut neg) = (0usize, 0usize);
        for &d in &index.postings[t] {
            let d = d as usize;
            if in_train[d] && !covered[d] {
                if y[d] == c {
                    pos += 1;
                } else {
                    neg += 1;
                }
            }
        }
        // A term is taken when it is precise on the examples no earlier term covers, or
        // when it only re-covers examples of its class (a synonym: it generalises better
        // than the covering alone, which keeps one term per pattern). Candidates are all
        // precise on the whole training set already.
        let precise_rest =
            pos >= min_support && (pos as f64) / ((pos + neg) as f64 + 1.0) >= p.min_precision;
        if !precise_rest && neg > 0 {
            continue;
        }
        // A new rule group would exceed the feature budget.
        let field = index.group_of(t);
        let continues = field.is_some()
            && picked
                .last()
                .is_some_and(|&(lt, lc, _, _)| lc == c && index.group_of(lt) == field);
        let groups = group_count(index, &picked);
        if !continues && groups >= p.max_rules {
            continue;
        }
        for &d in &index.postings[t] {
            if in_train[d as usize] {
                covered[d as usize] = true;
            }
        }
        picked.push((t, c, pos, neg));
    }
    let mut rules: Vec<Rule> = Vec::new();
    let mut stats: Vec<(usize, usize)> = Vec::new();
    for &(t, c, pos, neg) in &picked {
        let field = index.group_of(t);
        match rules.last_mut() {
            Some(r) if field.is_some() && r.class == c && r.field == field => {
                // A term containing an earlier term of the group adds nothing (the shorter
                // one fires wherever it does) and could hide it from the leftmost-longest
                // matcher when it fails the whole-word test.
                let term = &index.terms[t].1;
                if r.terms
                    .iter()
                    .any(|&u| contains_words(term, &index.terms[u].1))
                {
                    continue;
                }
                r.terms.push(t);
                let s = stats.last_mut().expect("one stat per rule");
                s.0 += pos;
                s.1 += neg;
            }
            _ => {
                rules.push(Rule {
                    field,
                    terms: vec![t],
                    class: c,
                    confidence: 0.0,
                });
                stats.push((pos, neg));
            }
        }
    }
    for (r, &(pos, neg)) in rules.iter_mut().zip(&stats) {
        r.confidence = round4((pos as f64 + 1.0) / ((pos + neg) as f64 + 2.0));
    }
    let default = if p.with_default {
        let mut left = vec![0usize; classes];
        let mut all = vec![0usize; classes];
        for &r in rows {
            all[y[r]] += 1;
            if !covered[r] {
                left[y[r]] += 1;
            }
        }
        let pick = if left.iter().sum::<usize>() > 0 {
            &left
        } else {
            &all
        };
        let (c, &k) = pick
            .iter()
            .enumerate()
            .max_by_key(|&(i, &v)| (v, std::cmp::Reverse(i)))
            .expect("classes > 0");
        let total: usize = pick.iter().sum();
        Some((
            c,
            round4((k as f64 + 1.0) / (total as f64 + classes as f64)),
        ))
    } else {
        None
    };
    RuleList { rules, default }
}

/// Does `long` contain `short` as whole words?
fn contains_words(long: &str, short: &str) -> bool {
    long.match_indices(short).any(|(i, _)| {
        let before = long[..i].chars().next_back();
        let after = long[i + short.len()..].chars().next();
        !(before.is_some_and(is_word_char) || after.is_some_and(is_word_char))
    })
}

fn group_count(index: &TermIndex, picked: &[(usize, usize, usize, usize)]) -> usize {
    let mut groups = 0;
    let mut last: Option<(usize, Option<usize>)> = None;
    for &(t, c, _, _) in picked {
        let key = (c, index.group_of(t));
        if key.1.is_none() || last != Some(key) {
            groups += 1;
            last = Some(key);
        }
    }
    groups
}

/// Does a whole-word match of the automaton's terms occur in `t`?
fn fires(ac: &AhoCorasick, t: &str) -> bool {
    ac.find_iter(t).any(|m| {
        let before = t[..m.start()].chars().next_back();
        let after = t[m.end()..].chars().next();
        !(before.is_some_and(is_word_char) || after.is_some_and(is_word_char))
    })
}

/// The runtime requires a rule's confidence to exceed `1 / labels` (so its label gets the
/// highest score): a lower estimate (say a default rule at the class prior) is raised just
/// above that share. The rule's label, and so accuracy, is unchanged.
fn above_share(confidence: f64, labels: usize) -> f64 {
    if labels < 2 {
        return confidence;
    }
    let share = 1.0 / labels as f64;
    if confidence > share {
        confidence
    } else {
        ((share * 1e4).floor() + 1.0) / 1e4
    }
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

impl RuleList {
    /// For each example of `which`, the index of the first rule that fires (`rules.len()`
    /// = none), matching exactly as the runtime does: terms as its `keywords` feature
    /// (Aho-Corasick, leftmost-longest, non-overlapping, whole words) in the clean views
    /// (`views[example][field]`), conditions on the number and category fields (`rows`).
    pub(crate) fn first_match(
        &self,
        index: &TermIndex,
        views: &[Vec<String>],
        rows: &[Row],
        which: &[usize],
    ) -> Vec<usize> {
        let automata: Vec<Option<AhoCorasick>> = self
            .rules
            .iter()
            .map(|r| {
                r.field.map(|_| {
                    AhoCorasickBuilder::new()
                        .match_kind(MatchKind::LeftmostLongest)
                        .build(r.terms.iter().map(|&t| index.terms[t].1.as_str()))
                        .expect("mined terms build an automaton")
                })
            })
            .collect();
        which
            .iter()
            .map(|&e| {
                self.rules
                    .iter()
                    .zip(&automata)
                    .position(|(r, ac)| match (r.field, ac) {
                        (Some(f), Some(ac)) => fires(ac, &views[e][f]),
                        _ => index.cond(r.terms[0]).is_some_and(|c| c.holds(&rows[e])),
                    })
                    .unwrap_or(self.rules.len())
            })
            .collect()
    }

    /// The predicted class of each example of `which` (`None` = the list abstains).
    pub(crate) fn predict(
        &self,
        index: &TermIndex,
        views: &[Vec<String>],
        rows: &[Row],
        which: &[usize],
    ) -> Vec<Option<usize>> {
        self.first_match(index, views, rows, which)
            .into_iter()
            .map(|k| match self.rules.get(k) {
                Some(r) => Some(r.class),
                None => self.default.map(|d| d.0),
            })
            .collect()
    }

    /// The `keywords` features and the `rules` decision of this list.
    pub(crate) fn to_json(
        &self,
        index: &TermIndex,
        config: &FeatureConfig,
        labels: &[String],
    ) -> (Vec<Value>, Value) {
        let mut features = Vec::new();
        let mut rules = Vec::new();
        for (k, r) in self.rules.iter().enumerate() {
            let Some(field) = r.field.map(|f| &config.fields[f]) else {
                let Some(cond) = index.cond(r.terms[0]) else {
                    continue;
                };
                let fields = &config.structured.fields;
                rules.push(
                    json!({"name": format!("{}: {}", labels[r.class], cond.describe(fields)),
                    "when": cond.json(fields), "then": labels[r.class],
                    "confidence": above_share(r.confidence, labels.len())}),
                );
                continue;
            };
            let feature = format!("rule{}.{}", k + 1, field.name);
            let terms: Vec<&str> = r.terms.iter().map(|&t| index.terms[t].1.as_str()).collect();
            let mut name = format!("{}: ", labels[r.class]);
            for (i, t) in terms.iter().take(3).enumerate() {
                if i > 0 {
                    name.push_str(", ");
                }
                name.push_str(&format!("{t:?}"));
            }
            if terms.len() > 3 {
                name.push_str(&format!(" (+{})", terms.len() - 3));
            }
            features.push(json!({"name": feature, "op": "keywords",
                "source": FeatureConfig::view_name(field), "terms": terms, "whole_words": true}));
            rules.push(json!({"name": name, "when": {"feature": feature, "gt": 0},
                "then": labels[r.class], "confidence": above_share(r.confidence, labels.len())}));
        }
        if let Some((c, conf)) = self.default {
            rules.push(json!({"name": format!("default: {}", labels[c]),
                "when": {"always": true}, "then": labels[c], "confidence": above_share(conf, labels.len())}));
        }
        (features, json!({"op": "rules", "rules": rules}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keeps_bigrams_only_across_a_single_space() {
        let views = vec![
            vec!["free prize, now".to_string()],
            vec!["free prize now!".to_string()],
        ];
        let idx = TermIndex::build(&views);
        let terms: Vec<&str> = idx.terms.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(terms, ["free", "free prize", "prize", "now"]);
    }

    #[test]
    fn mining_finds_a_precise_keyword_and_a_default() {
        let views: Vec<Vec<String>> = (0..40)
            .map(|i| {
                vec![if i % 4 == 0 {
                    format!("win cash {i}")
                } else {
                    format!("see you {i}")
                }]
            })
            .collect();
        let y: Vec<usize> = (0..40).map(|i| usize::from(i % 4 == 0)).collect();
        let idx = TermIndex::build(&views);
        let rows: Vec<usize> = (0..40).collect();
        let list = mine(
            &idx,
            &y,
            &rows,
            2,
            MineParams {
                min_precision: 0.9,
                max_terms: 10,
                max_rules: 10,
                with_default: true,
            },
        );
        assert_eq!(
            list.predict(&idx, &views, &vec![Row::default(); 40], &rows),
            y.iter().map(|&c| Some(c)).collect::<Vec<_>>()
        );
    }
}
