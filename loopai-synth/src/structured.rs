//! Number and category fields: their encodings fitted on the examples (no label is
//! looked at), the program inputs and features that compute them (`number`, `scale`,
//! `bins`, `one_hot`, `missing`), the training-side model inputs, which reproduce the
//! runtime's values bit for bit, and the conditions the rule learner can test (thresholds,
//! ranges, values, missing).
//!
//! Per field, the model sees: for a number, its value scaled by the examples' mean and
//! standard deviation (clipped to ±[`CLIP`]; left out for naive Bayes, which needs
//! non-negative inputs) and its quantile bin (one-hot); for a category, its value one-hot
//! (values not seen in the examples share an "other" bucket); for an optional field, a
//! missing-value flag. A missing number reads the examples' mean.

use serde_json::{json, Value};

use crate::inputs::{category, DeclKind, FieldDecl};
use crate::spec::{pointer, Example};

/// Scaled numbers are clipped to `[-CLIP, CLIP]` standard deviations.
pub(crate) const CLIP: f64 = 8.0;
/// Most bins of a number (quantile edges: one fewer).
const MAX_BINS: usize = 32;
/// Most thresholds the rule learner tries per number (each gives two conditions).
const MAX_THRESHOLDS: usize = 256;
/// Most values of a category learnt from the examples (the others are "other").
const MAX_VALUES: usize = 1000;
/// Ranges tried by the rule learner span at most this many bins.
const MAX_RANGE_BINS: usize = 8;

/// A number or category field with its fitted encoding.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Field {
    pub key: String,
    pub name: String,
    pub required: bool,
    pub kind: Fitted,
}

/// The fitted encoding of a field.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Fitted {
    Number {
        /// Mean of the examples' values (also the value of a missing number).
        mean: f64,
        /// Their standard deviation (1 when they are all equal).
        std: f64,
        /// Bin edges at quantiles, strictly increasing (empty: no `bins` feature).
        edges: Vec<f64>,
        /// Candidate thresholds of rules, strictly increasing.
        thresholds: Vec<f64>,
    },
    Category {
        /// The values with a bucket of their own.
        values: Vec<String>,
    },
}

/// One example's number and category fields, as the runtime reads them.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Row {
    /// Per field: a number (the mean when missing), or a category's bucket (the number of
    /// values for "other", -1 when missing).
    pub value: Vec<f64>,
    pub missing: Vec<bool>,
}

/// Fits the encodings of `decls` on the examples' inputs. `max_postings` bounds the rule
/// learner's work: thresholds per number × examples.
pub(crate) fn fit(decls: &[FieldDecl], examples: &[Example], max_postings: usize) -> Vec<Field> {
    let n = examples.len().max(1);
    let max_thresholds = (max_postings / n).clamp(16, MAX_THRESHOLDS);
    decls
        .iter()
        .map(|d| {
            let values = examples.iter().filter_map(|e| e.input.get(&d.key));
            let kind = match &d.kind {
                DeclKind::Number => {
                    let mut xs: Vec<f64> = values.filter_map(Value::as_f64).collect();
                    fit_number(&mut xs, max_thresholds)
                }
                DeclKind::Category(Some(listed)) => Fitted::Category {
                    values: listed.clone(),
                },
                DeclKind::Category(None) => Fitted::Category {
                    values: frequent_values(values.filter_map(category)),
                },
            };
            Field {
                key: d.key.clone(),
                name: d.name.clone(),
                required: d.required,
                kind,
            }
        })
        .collect()
}

fn fit_number(xs: &mut [f64], max_thresholds: usize) -> Fitted {
    if xs.is_empty() {
        return Fitted::Number {
            mean: 0.0,
            std: 1.0,
            edges: Vec::new(),
            thresholds: Vec::new(),
        };
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    let std = var.sqrt();
    let std = if std.is_finite() && std > 1e-12 * mean.abs().max(1.0) {
        std
    } else {
        1.0
    };
    xs.sort_by(f64::total_cmp);
    Fitted::Number {
        mean,
        std,
        edges: cut_points(xs, MAX_BINS),
        thresholds: cut_points(xs, max_thresholds + 1),
    }
}

/// At most `parts - 1` cut points that split sorted `xs` into about equal parts, each
/// half-way between two consecutive distinct values (so every value is on one side).
fn cut_points(xs: &[f64], parts: usize) -> Vec<f64> {
    let mut distinct: Vec<f64> = xs.to_vec();
    distinct.dedup();
    let mid = |i: usize| distinct[i - 1] + (distinct[i] - distinct[i - 1]) / 2.0;
    let mut out: Vec<f64> = Vec::new();
    if distinct.len() <= parts {
        out.extend((1..distinct.len()).map(mid));
    } else {
        for k in 1..parts {
            let q = xs[k * xs.len() / parts];
            let at = distinct.partition_point(|&d| d < q);
            if at > 0 {
                out.push(mid(at));
            }
        }
    }
    out.dedup();
    out.retain(|e| e.is_finite());
    out
}

/// The values of a category seen in the examples, the most frequent first (ties in
/// byte order), at most [`MAX_VALUES`].
fn frequent_values<'a>(seen: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for v in seen {
        *counts.entry(v).or_default() += 1;
    }
    let mut values: Vec<(&str, usize)> = counts.into_iter().collect();
    values.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    values
        .into_iter()
        .take(MAX_VALUES)
        .map(|(v, _)| v.to_string())
        .collect()
}

/// The fields of one input object.
pub(crate) fn row(fields: &[Field], input: &Value) -> Row {
    let mut out = Row::default();
    for f in fields {
        let v = input.get(&f.key).filter(|v| !v.is_null());
        out.missing.push(v.is_none());
        out.value.push(match &f.kind {
            Fitted::Number { mean, .. } => v.and_then(Value::as_f64).unwrap_or(*mean),
            Fitted::Category { values } => match v.and_then(category) {
                Some(s) => values.iter().position(|x| x == s).unwrap_or(values.len()) as f64,
                None => -1.0,
            },
        });
    }
    out
}

/// A model input group: a feature and its dimension.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Group {
    pub feature: String,
    pub dim: u32,
}

/// The number and category part of a feature configuration.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Encoding {
    pub fields: Vec<Field>,
    /// Models read scaled numbers (not naive Bayes, whose inputs must be non-negative).
    pub scaled: bool,
}

impl Encoding {
    /// Does the model read field `f`'s missing flag? (Only optional fields have one.)
    fn flagged(f: &Field) -> bool {
        !f.required
    }

    /// The model's input groups, in the order of the model's `inputs`.
    pub(crate) fn groups(&self) -> Vec<Group> {
        let mut out = Vec::new();
        let g = |name: &str, suffix: &str, dim: usize| Group {
            feature: format!("{name}.{suffix}"),
            dim: dim as u32,
        };
        for f in &self.fields {
            match &f.kind {
                Fitted::Number { edges, .. } => {
                    if self.scaled {
                        out.push(g(&f.name, "z", 1));
                    }
                    if !edges.is_empty() {
                        out.push(g(&f.name, "bins", edges.len() + 1));
                    }
                }
                Fitted::Category { values } => out.push(g(&f.name, "cat", values.len() + 1)),
            }
            if Self::flagged(f) {
                out.push(g(&f.name, "missing", 1));
            }
        }
        out
    }

    /// The program's `inputs` of these fields.
    pub(crate) fn inputs_json(&self) -> Vec<Value> {
        self.fields
            .iter()
            .map(|f| {
                let mut v =
                    json!({"name": f.name, "path": pointer(&f.key), "required": f.required});
                match &f.kind {
                    Fitted::Number { mean, .. } => {
                        v["type"] = json!("number");
                        if !f.required {
                            v["default"] = json!(mean);
                        }
                    }
                    Fitted::Category { .. } => v["type"] = json!("category"),
                }
                v
            })
            .collect()
    }

    /// The program's features of these fields: what models read, plus `NAME.num` of each
    /// number (rules compare it with thresholds).
    pub(crate) fn features_json(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for f in &self.fields {
            let name = &f.name;
            match &f.kind {
                Fitted::Number {
                    mean, std, edges, ..
                } => {
                    out.push(json!({"name": format!("{name}.num"), "op": "number", "input": name}));
                    if self.scaled {
                        out.push(
                            json!({"name": format!("{name}.z"), "op": "scale", "input": name,
                            "mean": mean, "std": std, "clip": CLIP}),
                        );
                    }
                    if !edges.is_empty() {
                        out.push(json!({"name": format!("{name}.bins"), "op": "bins",
                            "input": name, "edges": edges}));
                    }
                }
                Fitted::Category { values } => {
                    out.push(json!({"name": format!("{name}.cat"), "op": "one_hot",
                        "input": name, "values": values}));
                }
            }
            if Self::flagged(f) {
                out.push(
                    json!({"name": format!("{name}.missing"), "op": "missing", "input": name}),
                );
            }
        }
        out
    }

    /// Appends the model inputs of `row` from `offset` on, in the runtime's order.
    pub(crate) fn vectorize(&self, row: &Row, mut offset: u32, out: &mut Vec<(u32, f32)>) {
        for (i, f) in self.fields.iter().enumerate() {
            let v = row.value[i];
            match &f.kind {
                Fitted::Number {
                    mean, std, edges, ..
                } => {
                    if self.scaled {
                        let z = scaled(v, *mean, *std);
                        if z != 0.0 {
                            out.push((offset, z));
                        }
                        offset += 1;
                    }
                    if !edges.is_empty() {
                        let bin = edges.partition_point(|&e| e <= v);
                        out.push((offset + bin as u32, 1.0));
                        offset += edges.len() as u32 + 1;
                    }
                }
                Fitted::Category { values } => {
                    if v >= 0.0 {
                        out.push((offset + v as u32, 1.0));
                    }
                    offset += values.len() as u32 + 1;
                }
            }
            if Self::flagged(f) {
                if row.missing[i] {
                    out.push((offset, 1.0));
                }
                offset += 1;
            }
        }
    }
}

/// The runtime's `scale` value with `clip` = [`CLIP`].
fn scaled(x: f64, mean: f64, std: f64) -> f32 {
    let z = ((x - mean) / std).clamp(-CLIP, CLIP);
    z.clamp(-f64::from(f32::MAX), f64::from(f32::MAX)) as f32
}

/// A condition on one number or category field that a rule can test.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cond {
    AtLeast {
        field: usize,
        t: f64,
    },
    Below {
        field: usize,
        t: f64,
    },
    /// `lo <= x < hi`.
    Between {
        field: usize,
        lo: f64,
        hi: f64,
    },
    /// The category has the value of `bucket`.
    Is {
        field: usize,
        bucket: usize,
    },
    Missing {
        field: usize,
    },
}

impl Cond {
    /// Does it hold for `row`, as the runtime evaluates its JSON?
    pub(crate) fn holds(&self, row: &Row) -> bool {
        match *self {
            Cond::AtLeast { field, t } => row.value[field] >= t,
            Cond::Below { field, t } => row.value[field] < t,
            Cond::Between { field, lo, hi } => row.value[field] >= lo && row.value[field] < hi,
            Cond::Is { field, bucket } => row.value[field] == bucket as f64,
            Cond::Missing { field } => row.missing[field],
        }
    }

    /// The rule condition (`when`).
    pub(crate) fn json(&self, fields: &[Field]) -> Value {
        match *self {
            Cond::AtLeast { field, t } => {
                json!({"feature": format!("{}.num", fields[field].name), "ge": t})
            }
            Cond::Below { field, t } => {
                json!({"feature": format!("{}.num", fields[field].name), "lt": t})
            }
            Cond::Between { field, lo, hi } => {
                json!({"feature": format!("{}.num", fields[field].name), "ge": lo, "lt": hi})
            }
            Cond::Is { field, bucket } => {
                let Fitted::Category { values } = &fields[field].kind else {
                    unreachable!("value conditions are built for categories only")
                };
                json!({"feature": format!("{}.cat", fields[field].name), "in": [values[bucket]]})
            }
            Cond::Missing { field } => {
                json!({"feature": format!("{}.missing", fields[field].name), "gt": 0})
            }
        }
    }

    /// For rule names: `lines >= 12.5`, `priority = "high"`.
    pub(crate) fn describe(&self, fields: &[Field]) -> String {
        match *self {
            Cond::AtLeast { field, t } => format!("{} >= {t}", fields[field].name),
            Cond::Below { field, t } => format!("{} < {t}", fields[field].name),
            Cond::Between { field, lo, hi } => format!("{lo} <= {} < {hi}", fields[field].name),
            Cond::Is { field, bucket } => match &fields[field].kind {
                Fitted::Category { values } => {
                    format!("{} = {:?}", fields[field].name, values[bucket])
                }
                Fitted::Number { .. } => String::new(),
            },
            Cond::Missing { field } => format!("{} missing", fields[field].name),
        }
    }
}

/// Every condition the rule learner may test, with the examples where it holds (sorted);
/// conditions holding for fewer than two examples are left out.
pub(crate) fn conditions(fields: &[Field], rows: &[Row]) -> Vec<(Cond, Vec<u32>)> {
    let mut conds = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        match &f.kind {
            Fitted::Number {
                edges, thresholds, ..
            } => {
                for &t in thresholds {
                    conds.push(Cond::AtLeast { field: i, t });
                    conds.push(Cond::Below { field: i, t });
                }
                for a in 0..edges.len() {
                    for b in a + 1..edges.len().min(a + MAX_RANGE_BINS + 1) {
                        conds.push(Cond::Between {
                            field: i,
                            lo: edges[a],
                            hi: edges[b],
                        });
                    }
                }
            }
            Fitted::Category { values } => {
                conds.extend((0..values.len()).map(|bucket| Cond::Is { field: i, bucket }));
            }
        }
        if Encoding::flagged(f) {
            conds.push(Cond::Missing { field: i });
        }
    }
    conds
        .into_iter()
        .filter_map(|c| {
            let post: Vec<u32> = (0..rows.len())
                .filter(|&r| c.holds(&rows[r]))
                .map(|r| r as u32)
                .collect();
            (post.len() >= 2).then_some((c, post))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_points_separate_distinct_values_at_quantiles() {
        assert_eq!(cut_points(&[1.0, 1.0, 2.0, 4.0], 32), [1.5, 3.0]);
        assert!(cut_points(&[5.0, 5.0], 32).is_empty());
        let xs: Vec<f64> = (0..1000).map(f64::from).collect();
        let cuts = cut_points(&xs, 4);
        assert_eq!(cuts, [249.5, 499.5, 749.5]);
    }

    #[test]
    fn vectors_follow_the_group_order_and_the_runtime_values() {
        let fields = vec![
            Field {
                key: "n".into(),
                name: "n".into(),
                required: false,
                kind: Fitted::Number {
                    mean: 10.0,
                    std: 4.0,
                    edges: vec![5.0, 20.0],
                    thresholds: vec![],
                },
            },
            Field {
                key: "c".into(),
                name: "c".into(),
                required: true,
                kind: Fitted::Category {
                    values: vec!["a".into(), "b".into()],
                },
            },
        ];
        let enc = Encoding {
            fields,
            scaled: true,
        };
        let names: Vec<(String, u32)> = enc
            .groups()
            .into_iter()
            .map(|g| (g.feature, g.dim))
            .collect();
        assert_eq!(
            names,
            [
                ("n.z".to_string(), 1),
                ("n.bins".to_string(), 3),
                ("n.missing".to_string(), 1),
                ("c.cat".to_string(), 3)
            ]
        );
        let r = row(&enc.fields, &json!({"n": 17, "c": "zz"}));
        let mut out = Vec::new();
        enc.vectorize(&r, 100, &mut out);
        assert_eq!(out, [(100, 1.75), (102, 1.0), (107, 1.0)]);
        let r = row(&enc.fields, &json!({"c": "b"}));
        out.clear();
        enc.vectorize(&r, 0, &mut out);
        // Missing: the mean (z = 0, no entry), its bin, the flag.
        assert_eq!(out, [(2, 1.0), (4, 1.0), (6, 1.0)]);
    }
}
