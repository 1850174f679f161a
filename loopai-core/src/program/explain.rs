//! Explanations: why a program decided what it did on one input.
//!
//! [`Program::explain`](super::Program::explain) evaluates the program exactly as
//! [`evaluate`](super::Program::evaluate) does (same validation, same arithmetic: the
//! outcome comes from the evaluator itself, with the features it computed kept in a
//! [`Trace`]), then walks the compiled decision over those features: the rule that fired
//! with every condition and the feature value it saw, the per-class scores of a model with
//! its largest contributions traced back to the n-grams, keywords and regex matches of this
//! input, the splits of a tree, the steps of `first` and the members of `vote`, and which
//! threshold made a decision abstain. The JSON shape is documented in
//! `docs/program-format.md` ("Explanations") and is the same from every language.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use super::eval::{self, Trace};
use super::plan::*;
use super::text::{self, bucket, TokenMode};
use super::Program;
use crate::error::Result;
use crate::fnv::Fnv;

/// Most contributions listed per class by default.
pub const DEFAULT_TOP_K: usize = 10;
/// Most input strings listed as the sources of one feature dimension.
const MAX_SOURCES: usize = 8;

/// Options of [`Program::explain`] and `Runtime::explain_with`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExplainOptions {
    /// Most contributions listed per class of a `linear` or `naive_bayes` model (default
    /// 10); the others are summed in `rest_contribution`.
    pub top_k: usize,
}

impl Default for ExplainOptions {
    fn default() -> Self {
        ExplainOptions {
            top_k: DEFAULT_TOP_K,
        }
    }
}

impl ExplainOptions {
    /// The default options with another `top_k`.
    pub fn with_top_k(mut self, top_k: usize) -> Self {
        self.top_k = top_k;
        self
    }
}

/// Why a program decided what it did on one input: see [`Program::explain`] and
/// `docs/program-format.md` ("Explanations") for the JSON form.
///
/// `output`, `confidence`, `abstained` and `decided_by` are exactly what executing the
/// program on the same input gives.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Explanation {
    /// The task id of the program.
    pub task: String,
    /// The artifact version explained (0 for a program explained on its own).
    pub version: u32,
    /// The output, as execution returns it.
    pub output: Value,
    /// The confidence, as execution returns it.
    pub confidence: f64,
    /// Whether the program abstained.
    pub abstained: bool,
    /// The path of the deciding rule or model (`decide.steps[0].rules[2]`), if any.
    pub decided_by: Option<String>,
    /// Why the program abstained (`None` when it did not).
    pub abstention: Option<Abstention>,
    /// The decision path: a tree of nodes tagged by `op`.
    pub decision: Decision,
}

/// Why a program abstained.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Abstention {
    /// `abstain_below` (the confidence is below `output.abstain_below`), `no_decision`
    /// (every decision abstained: the decision tree says why), `non_finite_scores`, or
    /// `missing_required` (an extraction's required field was not found).
    pub reason: &'static str,
    /// The confidence compared with the threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// The configured threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// The required fields not found (`missing_required`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
}

/// The decision path of an [`Explanation`]; serializes as a tree of JSON objects tagged by
/// `op` (`rules`, `linear`, `naive_bayes`, `tree`, `first`, `vote`, `extract`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision(Node);

impl Decision {
    /// The decision path as a JSON value.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(&self.0).unwrap_or(Value::Null)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Node {
    Rules {
        path: String,
        decided: bool,
        rules_tried: usize,
        fired: Option<FiredRule>,
        probabilities: Vec<LabelProb>,
        #[serde(skip_serializing_if = "Option::is_none")]
        abstain: Option<NodeAbstain>,
    },
    Linear(Model),
    NaiveBayes(Model),
    Tree {
        path: String,
        decided: bool,
        splits: Vec<Split>,
        leaf: usize,
        min_confidence: f64,
        probabilities: Vec<LabelProb>,
        #[serde(skip_serializing_if = "Option::is_none")]
        abstain: Option<NodeAbstain>,
    },
    First {
        path: String,
        decided: bool,
        steps: Vec<Node>,
        probabilities: Vec<LabelProb>,
    },
    Vote {
        path: String,
        decided: bool,
        min_confidence: f64,
        members: Vec<Member>,
        probabilities: Vec<LabelProb>,
        #[serde(skip_serializing_if = "Option::is_none")]
        abstain: Option<NodeAbstain>,
    },
    Extract {
        fields: Vec<FieldNode>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct LabelProb {
    label: String,
    probability: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct NodeAbstain {
    /// `min_confidence`, `no_rule_matched`, `no_member_decided` or `non_finite_score`.
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    confidence: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    threshold: Option<f64>,
}

impl NodeAbstain {
    fn reason(reason: &'static str) -> Self {
        NodeAbstain {
            reason,
            confidence: None,
            threshold: None,
        }
    }

    fn below(confidence: f64, threshold: f64) -> Self {
        NodeAbstain {
            reason: "min_confidence",
            confidence: Some(confidence),
            threshold: Some(threshold),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct FiredRule {
    index: usize,
    path: String,
    then: String,
    confidence: f64,
    when: Cond,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "test", rename_all = "snake_case")]
enum Cond {
    All {
        holds: bool,
        conditions: Vec<Cond>,
    },
    Any {
        holds: bool,
        conditions: Vec<Cond>,
    },
    Not {
        holds: bool,
        condition: Box<Cond>,
    },
    Always {
        holds: bool,
    },
    Compare {
        holds: bool,
        feature: String,
        cmp: &'static str,
        threshold: f64,
        value: f64,
        sources: Vec<String>,
    },
    In {
        holds: bool,
        feature: String,
        values: Vec<String>,
        value: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Model {
    path: String,
    decided: bool,
    link: &'static str,
    temperature: f64,
    min_confidence: f64,
    classes: Vec<ClassScore>,
    #[serde(skip_serializing_if = "Option::is_none")]
    abstain: Option<NodeAbstain>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct ClassScore {
    label: String,
    probability: f64,
    score: f64,
    bias: f64,
    contributions: Vec<Contribution>,
    rest_count: usize,
    rest_contribution: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Contribution {
    feature: String,
    /// The dimension within a vector feature (n-gram bucket or vocabulary index, bin,
    /// category bucket); absent for a number-valued feature.
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    value: f64,
    weight: f64,
    contribution: f64,
    sources: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Split {
    node: usize,
    feature: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    value: f64,
    threshold: f64,
    went: &'static str,
    sources: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Member {
    weight: f64,
    decision: Node,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct FieldNode {
    name: String,
    found: bool,
    value: Value,
    required: bool,
    confidence: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pattern: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    matched: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    end: Option<usize>,
}

impl Program {
    /// Explains the program's decision on one input: the same outcome as
    /// [`evaluate`](Program::evaluate) (same errors too), with the decision path that led
    /// to it.
    ///
    /// ```
    /// use loopai_core::{ExplainOptions, Program};
    /// use serde_json::json;
    ///
    /// let program = Program::from_json(br#"{
    ///   "format": "loopai.program/1", "task": "spam",
    ///   "inputs": [{"name": "text", "path": "/text", "type": "text"}],
    ///   "features": [{"name": "prize", "op": "keywords", "source": "text", "terms": ["prize"]}],
    ///   "decide": {"op": "rules", "rules": [
    ///     {"when": {"feature": "prize", "gt": 0}, "then": "spam", "confidence": 0.9},
    ///     {"when": {"always": true}, "then": "ham", "confidence": 0.6}]},
    ///   "output": {"kind": "label", "labels": ["spam", "ham"]}
    /// }"#)?;
    /// let why = program.explain(&json!({"text": "a prize"}), &ExplainOptions::default())?;
    /// assert_eq!(why.output, "spam");
    /// let decision = why.decision.to_value();
    /// assert_eq!(decision["fired"]["index"], 0);
    /// assert_eq!(decision["fired"]["when"]["value"], 1.0);
    /// assert_eq!(decision["fired"]["when"]["sources"], json!(["prize"]));
    /// # Ok::<(), loopai_core::Error>(())
    /// ```
    pub fn explain(&self, input: &Value, options: &ExplainOptions) -> Result<Explanation> {
        let plan = &self.plan;
        let mut trace = Trace::default();
        let outcome = eval::evaluate_traced(plan, input, Some(&mut trace))?;
        let walker = Walker {
            plan,
            trace: &trace,
            input,
            top_k: options.top_k,
            sources: HashMap::new(),
        };
        let decided_by = outcome
            .decided_by
            .and_then(|id| self.decision_path(id))
            .map(str::to_owned);
        let (decision, abstention) = match &plan.output {
            OutputPlan::Label {
                labels,
                abstain_below,
            } => {
                let decide = plan
                    .decide
                    .as_ref()
                    .expect("label programs have a decision");
                let mut walker = walker;
                let node = walker.node(decide, "decide", labels);
                let abstention = outcome.abstained.then(|| {
                    if outcome.decided_by.is_some() {
                        Abstention {
                            reason: "abstain_below",
                            confidence: Some(outcome.confidence),
                            threshold: Some(*abstain_below),
                            fields: Vec::new(),
                        }
                    } else if node_decided(&node) {
                        Abstention {
                            reason: "non_finite_scores",
                            confidence: None,
                            threshold: None,
                            fields: Vec::new(),
                        }
                    } else {
                        Abstention {
                            reason: "no_decision",
                            confidence: None,
                            threshold: None,
                            fields: Vec::new(),
                        }
                    }
                });
                (node, abstention)
            }
            OutputPlan::Extract {
                source,
                fields,
                abstain_below,
            } => {
                let t = &trace.texts[*source];
                let mut nodes = Vec::with_capacity(fields.len());
                let mut missing = Vec::new();
                for f in fields {
                    let node = match f.locate_explained(t) {
                        Some((pattern, span, value)) => FieldNode {
                            name: f.name.clone(),
                            found: true,
                            value,
                            required: f.required,
                            confidence: f.confidence_found,
                            pattern: Some(pattern),
                            matched: Some(t[span.clone()].to_string()),
                            start: Some(span.start),
                            end: Some(span.end),
                        },
                        None => {
                            if f.required {
                                missing.push(f.name.clone());
                            }
                            FieldNode {
                                name: f.name.clone(),
                                found: false,
                                value: Value::Null,
                                required: f.required,
                                confidence: f.confidence_missing,
                                pattern: None,
                                matched: None,
                                start: None,
                                end: None,
                            }
                        }
                    };
                    nodes.push(node);
                }
                let abstention = outcome.abstained.then(|| {
                    if missing.is_empty() {
                        Abstention {
                            reason: "abstain_below",
                            confidence: Some(outcome.confidence),
                            threshold: Some(*abstain_below),
                            fields: Vec::new(),
                        }
                    } else {
                        Abstention {
                            reason: "missing_required",
                            confidence: None,
                            threshold: None,
                            fields: missing,
                        }
                    }
                });
                (Node::Extract { fields: nodes }, abstention)
            }
        };
        Ok(Explanation {
            task: plan.task.clone(),
            version: 0,
            output: outcome.output,
            confidence: outcome.confidence,
            abstained: outcome.abstained,
            decided_by,
            abstention,
            decision: Decision(decision),
        })
    }
}

fn node_decided(node: &Node) -> bool {
    match node {
        Node::Rules { decided, .. }
        | Node::Tree { decided, .. }
        | Node::First { decided, .. }
        | Node::Vote { decided, .. } => *decided,
        Node::Linear(m) | Node::NaiveBayes(m) => m.decided,
        Node::Extract { .. } => true,
    }
}

struct Walker<'a> {
    plan: &'a Plan,
    trace: &'a Trace,
    input: &'a Value,
    top_k: usize,
    /// Per n-gram feature: the strings of this input behind each dimension.
    sources: HashMap<usize, HashMap<u32, Vec<String>>>,
}

/// A sparse or scalar model input, merged: `(group, local index or None, value)`.
type Entry = (usize, Option<u32>, f64);

impl Walker<'_> {
    fn probabilities(&self, out: &[f64], labels: &[String]) -> Vec<LabelProb> {
        labels
            .iter()
            .zip(out)
            .map(|(label, &probability)| LabelProb {
                label: label.clone(),
                probability,
            })
            .collect()
    }

    fn node(&mut self, d: &DecisionPlan, path: &str, labels: &[String]) -> Node {
        let (out, id) = eval::decide_traced(d, self.trace, labels.len());
        let decided = id.is_some();
        let probabilities = self.probabilities(&out, labels);
        match d {
            DecisionPlan::Rules(rules) => {
                let fired = rules.iter().position(|r| eval::holds(&r.when, self.trace));
                let rules_tried = fired.map_or(rules.len(), |i| i + 1);
                let fired = fired.map(|index| {
                    let r = &rules[index];
                    FiredRule {
                        index,
                        path: self.plan.decision_names[r.id as usize].clone(),
                        then: labels[r.label].clone(),
                        confidence: r.confidence,
                        when: self.cond(&r.when),
                    }
                });
                let abstain = fired
                    .is_none()
                    .then(|| NodeAbstain::reason("no_rule_matched"));
                Node::Rules {
                    path: path.to_string(),
                    decided,
                    rules_tried,
                    fired,
                    probabilities,
                    abstain,
                }
            }
            DecisionPlan::Linear(m) => {
                let model = self.model(m, path, decided, labels);
                if m.bayes {
                    Node::NaiveBayes(model)
                } else {
                    Node::Linear(model)
                }
            }
            DecisionPlan::Tree(t) => self.tree(t, path, decided, probabilities),
            DecisionPlan::First(steps) => {
                let mut nodes = Vec::new();
                for (i, step) in steps.iter().enumerate() {
                    let node = self.node(step, &format!("{path}.steps[{i}]"), labels);
                    let done = node_decided(&node);
                    nodes.push(node);
                    if done {
                        break;
                    }
                }
                Node::First {
                    path: path.to_string(),
                    decided,
                    steps: nodes,
                    probabilities,
                }
            }
            DecisionPlan::Vote {
                members,
                min_confidence,
                ..
            } => {
                let mut nodes = Vec::with_capacity(members.len());
                let mut total = 0.0;
                let mut mix = vec![0.0; labels.len()];
                for (i, (w, member)) in members.iter().enumerate() {
                    let node = self.node(member, &format!("{path}.members[{i}].decide"), labels);
                    let (child, id) = eval::decide_traced(member, self.trace, labels.len());
                    if id.is_some() {
                        total += w;
                        for (o, p) in mix.iter_mut().zip(&child) {
                            *o += w * p;
                        }
                    }
                    nodes.push(Member {
                        weight: *w,
                        decision: node,
                    });
                }
                let abstain = if decided {
                    None
                } else if total == 0.0 {
                    Some(NodeAbstain::reason("no_member_decided"))
                } else {
                    let best = mix.iter().map(|o| o / total).fold(0.0, f64::max);
                    Some(NodeAbstain::below(best, *min_confidence))
                };
                Node::Vote {
                    path: path.to_string(),
                    decided,
                    min_confidence: *min_confidence,
                    members: nodes,
                    probabilities,
                    abstain,
                }
            }
        }
    }

    fn cond(&mut self, c: &CondPlan) -> Cond {
        let holds = eval::holds(c, self.trace);
        match c {
            CondPlan::All(list) => Cond::All {
                holds,
                conditions: list.iter().map(|x| self.cond(x)).collect(),
            },
            CondPlan::Any(list) => Cond::Any {
                holds,
                conditions: list.iter().map(|x| self.cond(x)).collect(),
            },
            CondPlan::Not(x) => Cond::Not {
                holds,
                condition: Box::new(self.cond(x)),
            },
            CondPlan::Always => Cond::Always { holds },
            CondPlan::Cmp {
                feature,
                cmp,
                value,
            } => Cond::Compare {
                holds,
                feature: self.plan.feature_names[*feature].clone(),
                cmp: match cmp {
                    Cmp::Gt => "gt",
                    Cmp::Ge => "ge",
                    Cmp::Lt => "lt",
                    Cmp::Le => "le",
                    Cmp::Eq => "eq",
                    Cmp::Ne => "ne",
                },
                threshold: *value,
                value: self.trace.scalars[*feature],
                sources: self.scalar_sources(*feature),
            },
            CondPlan::In { feature, buckets } => {
                let (values, value) = match &self.plan.features[*feature] {
                    FeaturePlan::OneHot { slot, values } => {
                        let mut names: Vec<(u32, &String)> = values
                            .iter()
                            .filter(|(_, b)| buckets.binary_search(b).is_ok())
                            .map(|(v, &b)| (b, v))
                            .collect();
                        names.sort();
                        (
                            names.into_iter().map(|(_, v)| v.clone()).collect(),
                            self.category(*slot),
                        )
                    }
                    _ => (Vec::new(), None),
                };
                Cond::In {
                    holds,
                    feature: self.plan.feature_names[*feature].clone(),
                    values,
                    value,
                }
            }
        }
    }

    /// The value of category input `slot` in this input (`None` when missing).
    fn category(&self, slot: usize) -> Option<String> {
        let inp = self
            .plan
            .inputs
            .iter()
            .find(|i| matches!(i.kind, InputKind::Category { slot: s } if s == slot))?;
        match resolve(self.input, &inp.tokens)? {
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// The merged model inputs of `groups` that are non-zero in this input, in group order
    /// and first appearance.
    fn entries(&self, groups: &[InputGroup]) -> Vec<Entry> {
        let mut out = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            if g.sparse {
                let mut at: HashMap<u32, usize> = HashMap::new();
                for &(i, v) in &self.trace.sparse[g.feature] {
                    match at.get(&i) {
                        Some(&k) => {
                            let e: &mut Entry = &mut out[k];
                            e.2 += f64::from(v);
                        }
                        None => {
                            at.insert(i, out.len());
                            out.push((gi, Some(i), f64::from(v)));
                        }
                    }
                }
            } else {
                let v = self.trace.scalars[g.feature];
                if v != 0.0 {
                    out.push((gi, None, v));
                }
            }
        }
        out
    }

    fn model(&mut self, m: &LinearPlan, path: &str, decided: bool, labels: &[String]) -> Model {
        // Scores, summed in the evaluator's order (bias, then each input entry).
        let mut z = m.bias.clone();
        for g in &m.groups {
            if g.sparse {
                for &(i, v) in &self.trace.sparse[g.feature] {
                    let row = (g.offset + i as usize) * m.width;
                    for (k, zc) in z.iter_mut().enumerate() {
                        *zc += f64::from(m.weights.at(row + k, k)) * f64::from(v);
                    }
                }
            } else {
                let v = self.trace.scalars[g.feature];
                if v != 0.0 {
                    let row = g.offset * m.width;
                    for (k, zc) in z.iter_mut().enumerate() {
                        *zc += f64::from(m.weights.at(row + k, k)) * v;
                    }
                }
            }
        }
        let nan = z.iter().any(|x| x.is_nan());
        z.iter_mut().for_each(|x| *x = x.clamp(-f64::MAX, f64::MAX));
        let k_classes = m.classes.len();
        // Per model class: its score, bias and the column sign of its weights.
        let per_class: Vec<(f64, f64, usize, f64)> = if m.sigmoid {
            vec![(-z[0], -m.bias[0], 0, -1.0), (z[0], m.bias[0], 0, 1.0)]
        } else {
            (0..k_classes).map(|k| (z[k], m.bias[k], k, 1.0)).collect()
        };
        let probs: Vec<f64> = if nan {
            vec![0.0; k_classes]
        } else if m.sigmoid {
            let p1 = 1.0 / (1.0 + libm::exp(-z[0] * m.inv_temperature));
            vec![1.0 - p1, p1]
        } else {
            let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = z
                .iter()
                .map(|zc| libm::exp((zc - max) * m.inv_temperature))
                .collect();
            let sum: f64 = e.iter().sum();
            e.iter().map(|x| x / sum).collect()
        };
        let entries = self.entries(&m.groups);
        let mut classes = Vec::with_capacity(k_classes);
        for (k, &(score, bias, col, sign)) in per_class.iter().enumerate() {
            let mut all: Vec<(f64, f64, &Entry)> = entries
                .iter()
                .map(|e| {
                    let g = &m.groups[e.0];
                    let row = g.offset + e.1.map_or(0, |i| i as usize);
                    let w = sign * f64::from(m.weights.at(row * m.width + col, col));
                    (w * e.2, w, e)
                })
                .filter(|c| c.0 != 0.0)
                .collect();
            all.sort_by(|a, b| {
                b.0.abs()
                    .total_cmp(&a.0.abs())
                    .then_with(|| {
                        let (fa, fb) = (m.groups[a.2 .0].feature, m.groups[b.2 .0].feature);
                        self.plan.feature_names[fa].cmp(&self.plan.feature_names[fb])
                    })
                    .then_with(|| a.2 .1.cmp(&b.2 .1))
            });
            let rest = all.len().saturating_sub(self.top_k);
            let rest_contribution = all.iter().skip(self.top_k).map(|c| c.0).sum();
            let mut contributions = Vec::with_capacity(all.len().min(self.top_k));
            for &(contribution, weight, &(gi, index, value)) in all.iter().take(self.top_k) {
                let feature = m.groups[gi].feature;
                contributions.push(Contribution {
                    feature: self.plan.feature_names[feature].clone(),
                    index: index.map(|i| i as usize),
                    value,
                    weight,
                    contribution,
                    sources: self.sources(feature, index),
                });
            }
            classes.push(ClassScore {
                label: labels[m.classes[k]].clone(),
                probability: probs[k],
                score,
                bias,
                contributions,
                rest_count: rest,
                rest_contribution,
            });
        }
        let abstain = if decided {
            None
        } else if nan {
            Some(NodeAbstain::reason("non_finite_score"))
        } else {
            Some(NodeAbstain::below(
                probs.iter().copied().fold(0.0, f64::max),
                m.min_confidence,
            ))
        };
        Model {
            path: path.to_string(),
            decided,
            link: if m.sigmoid { "sigmoid" } else { "softmax" },
            temperature: 1.0 / m.inv_temperature,
            min_confidence: m.min_confidence,
            classes,
            abstain,
        }
    }

    fn tree(
        &mut self,
        t: &TreePlan,
        path: &str,
        decided: bool,
        probabilities: Vec<LabelProb>,
    ) -> Node {
        let mut node = 0usize;
        let mut splits = Vec::new();
        while t.feature[node] != u32::MAX {
            let index = t.feature[node] as usize;
            let x = eval::model_input(&t.groups, index, self.trace);
            let g = t
                .groups
                .iter()
                .rev()
                .find(|g| g.offset <= index)
                .expect("tree inputs are validated at load");
            let local = g.sparse.then(|| (index - g.offset) as u32);
            let threshold = f64::from(t.threshold[node]);
            let left = x <= threshold;
            splits.push(Split {
                node,
                feature: self.plan.feature_names[g.feature].clone(),
                index: local.map(|i| i as usize),
                value: x,
                threshold,
                went: if left { "left" } else { "right" },
                sources: self.sources(g.feature, local),
            });
            node = if left { t.left[node] } else { t.right[node] } as usize;
        }
        let abstain = (!decided).then(|| {
            let k = t.classes.len();
            let leaf = &t.value[node * k..(node + 1) * k];
            let sum: f64 = leaf.iter().map(|&v| f64::from(v)).sum();
            let best = leaf.iter().map(|&v| f64::from(v) / sum).fold(0.0, f64::max);
            NodeAbstain::below(best, t.min_confidence)
        });
        Node::Tree {
            path: path.to_string(),
            decided,
            splits,
            leaf: node,
            min_confidence: t.min_confidence,
            probabilities,
            abstain,
        }
    }

    /// The strings of this input behind dimension `index` of `feature` (or behind the
    /// value of a number-valued feature).
    fn sources(&mut self, feature: usize, index: Option<u32>) -> Vec<String> {
        let Some(index) = index else {
            return self.scalar_sources(feature);
        };
        match &self.plan.features[feature] {
            FeaturePlan::Sparse(sp) => {
                let trace = self.trace;
                self.sources
                    .entry(feature)
                    .or_insert_with(|| ngram_sources(sp, &trace.texts[sp.source]))
                    .get(&index)
                    .cloned()
                    .unwrap_or_default()
            }
            FeaturePlan::OneHot { slot, values } => {
                let observed = self.category(*slot);
                match observed {
                    Some(v) if values.get(&v).copied().unwrap_or(values.len() as u32) == index => {
                        vec![v]
                    }
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        }
    }

    /// Keyword and regex matches behind a number-valued feature.
    fn scalar_sources(&self, feature: usize) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |s: &str| {
            if out.len() < MAX_SOURCES && !out.iter().any(|o| o == s) {
                out.push(s.to_string());
            }
        };
        match &self.plan.features[feature] {
            FeaturePlan::Keywords(k) => {
                let t = &self.trace.texts[k.source];
                for m in k.ac.find_iter(t) {
                    if k.whole_words {
                        let before = t[..m.start()].chars().next_back();
                        let after = t[m.end()..].chars().next();
                        if before.is_some_and(text::is_word_char)
                            || after.is_some_and(text::is_word_char)
                        {
                            continue;
                        }
                    }
                    add(&t[m.range()]);
                }
            }
            FeaturePlan::Regex(r) => {
                let t = &self.trace.texts[r.source];
                let most = if r.count { r.max_count as usize } else { 1 };
                for m in r.re.find_iter(t).take(most) {
                    add(m.as_str());
                }
            }
            _ => {}
        }
        out
    }
}

/// The n-grams of `t` behind each dimension of `sp`: `t` tokenized and hashed again
/// exactly as the evaluator does (see "Features" in `docs/program-format.md`).
fn ngram_sources(sp: &SparsePlan, t: &str) -> HashMap<u32, Vec<String>> {
    let mut map: HashMap<u32, Vec<String>> = HashMap::new();
    let seed = match sp.index {
        NgramIndex::Hashed { seed, .. } => seed,
        NgramIndex::Vocabulary(_) => 0,
    };
    let mut add = |s: &str| {
        let mut h = Fnv::new(seed);
        h.write(s.as_bytes());
        let h = h.finish();
        let at = match &sp.index {
            NgramIndex::Hashed { bits, .. } => Some(bucket(h, *bits)),
            NgramIndex::Vocabulary(v) => v.get(&h).copied(),
        };
        if let Some(at) = at {
            let list = map.entry(at).or_default();
            if list.len() < MAX_SOURCES && !list.iter().any(|x| x == s) {
                list.push(s.to_string());
            }
        }
    };
    let mut tokens = Vec::new();
    if sp.words {
        text::tokenize(t, sp.tokens, &mut tokens);
        let mut gram = String::new();
        for i in 0..tokens.len() {
            gram.clear();
            for n in 0..sp.n_max.min(tokens.len() - i) {
                let (a, b) = tokens[i + n];
                if n > 0 {
                    gram.push(' ');
                }
                gram.push_str(&t[a as usize..b as usize]);
                if n + 1 >= sp.n_min {
                    add(&gram);
                }
            }
        }
    } else if sp.within_words {
        text::tokenize(t, TokenMode::Alnum, &mut tokens);
        for &(a, b) in &tokens {
            let padded = format!(" {} ", &t[a as usize..b as usize]);
            char_ngrams(sp, &padded, &mut add);
        }
    } else {
        char_ngrams(sp, t, &mut add);
    }
    map
}

fn char_ngrams(sp: &SparsePlan, t: &str, add: &mut impl FnMut(&str)) {
    let mut offsets: Vec<usize> = t.char_indices().map(|(i, _)| i).collect();
    offsets.push(t.len());
    let n = offsets.len() - 1;
    for i in 0..n {
        for k in 0..sp.n_max.min(n - i) {
            if k + 1 >= sp.n_min {
                add(&t[offsets[i]..offsets[i + k + 1]]);
            }
        }
    }
}

#[cfg(test)]
#[path = "explain_tests.rs"]
mod tests;
