//! Rule conditions: parsing and validation of `when` into a [`CondPlan`].
//!
//! A condition is `{"all": [...]}`, `{"any": [...]}`, `{"not": c}`, `{"always": true}`, a
//! comparison of a number-valued feature with one or more of `gt ge lt le eq ne` (all must
//! hold, so `{"feature": "lines", "ge": 3, "lt": 10}` is a range), or a category test
//! `{"feature": F, "in": [values]}` on a `one_hot` feature.

use std::collections::HashMap;

use serde_json::Value;

use super::plan::{Cmp, CondPlan, FeatureShape, MAX_CONDITION_DEPTH};
use crate::error::Result;
use crate::program::raw::{idx, join, kind_of, object, perr};

/// Most nodes of one rule condition (each comparison operator and `in` counts as one).
const MAX_NODES: usize = 1024;

/// The features a condition may name.
pub(super) struct Conditions<'a> {
    pub(super) features: &'a HashMap<String, usize>,
    pub(super) shapes: &'a [FeatureShape],
}

impl Conditions<'_> {
    pub(super) fn condition(
        &self,
        value: &Value,
        path: &str,
        depth: usize,
        nodes: &mut usize,
    ) -> Result<CondPlan> {
        if depth >= MAX_CONDITION_DEPTH {
            return Err(perr(
                path,
                format!("conditions nest deeper than {MAX_CONDITION_DEPTH}"),
            ));
        }
        count(nodes, path)?;
        let obj = object(value, path)?;
        if let Some(v) = obj.get("all").or_else(|| obj.get("any")) {
            let key = if obj.contains_key("all") {
                "all"
            } else {
                "any"
            };
            if obj.len() != 1 {
                return Err(perr(
                    path,
                    format!("`{key}` must be the only key of its object"),
                ));
            }
            let list = v.as_array().ok_or_else(|| {
                perr(
                    &join(path, key),
                    format!("expected an array, got {}", kind_of(v)),
                )
            })?;
            if list.is_empty() {
                return Err(perr(&join(path, key), "must not be empty"));
            }
            let mut out = Vec::with_capacity(list.len());
            for (i, c) in list.iter().enumerate() {
                out.push(self.condition(c, &idx(&join(path, key), i), depth + 1, nodes)?);
            }
            return Ok(if key == "all" {
                CondPlan::All(out)
            } else {
                CondPlan::Any(out)
            });
        }
        if let Some(v) = obj.get("not") {
            if obj.len() != 1 {
                return Err(perr(path, "`not` must be the only key of its object"));
            }
            return Ok(CondPlan::Not(Box::new(self.condition(
                v,
                &join(path, "not"),
                depth + 1,
                nodes,
            )?)));
        }
        if let Some(v) = obj.get("always") {
            if obj.len() != 1 || v != &Value::Bool(true) {
                return Err(perr(
                    path,
                    "`always` takes the value true and no other keys",
                ));
            }
            return Ok(CondPlan::Always);
        }
        let name = match obj.get("feature") {
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(perr(
                    &join(path, "feature"),
                    format!("expected a string, got {}", kind_of(other)),
                ))
            }
            None => {
                return Err(perr(
                    path,
                    "expected one of `all`, `any`, `not`, `always` or a `feature` comparison",
                ))
            }
        };
        let fpath = join(path, "feature");
        let feature = *self
            .features
            .get(name)
            .ok_or_else(|| perr(&fpath, format!("unknown feature {name:?}")))?;
        let shape = &self.shapes[feature];
        if obj.len() < 2 {
            return Err(perr(
                path,
                "a comparison has `feature` and one or more of gt, ge, lt, le, eq, ne (or `in` for a category)",
            ));
        }
        if let Some(list) = obj.get("in") {
            return self.category_test(obj.len(), feature, name, shape, list, path);
        }
        match shape {
            FeatureShape::Scalar => {}
            FeatureShape::Sparse { .. } => {
                return Err(perr(
                    &fpath,
                    format!(
                        "feature {name:?} is a vector (n-grams or bins); conditions need a number-valued feature"
                    ),
                ))
            }
            FeatureShape::Category { .. } => {
                return Err(perr(
                    &fpath,
                    format!(
                        "feature {name:?} is a category; test it with `in`: {{\"feature\": {name:?}, \"in\": [values]}}"
                    ),
                ))
            }
        }
        // Every operator must hold: two of them make a range.
        let mut all = Vec::with_capacity(obj.len() - 1);
        for (key, v) in obj.iter().filter(|(k, _)| k.as_str() != "feature") {
            let cmp = match key.as_str() {
                "gt" => Cmp::Gt,
                "ge" => Cmp::Ge,
                "lt" => Cmp::Lt,
                "le" => Cmp::Le,
                "eq" => Cmp::Eq,
                "ne" => Cmp::Ne,
                other => {
                    return Err(perr(
                        &join(path, other),
                        "unknown comparison (expected gt, ge, lt, le, eq or ne)",
                    ))
                }
            };
            let value = v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
                perr(
                    &join(path, key),
                    format!("expected a finite number, got {}", kind_of(v)),
                )
            })?;
            if !all.is_empty() {
                count(nodes, path)?;
            }
            all.push(CondPlan::Cmp {
                feature,
                cmp,
                value,
            });
        }
        Ok(if all.len() == 1 {
            all.pop().expect("one comparison")
        } else {
            CondPlan::All(all)
        })
    }

    /// `{"feature": F, "in": [values]}` on a `one_hot` feature.
    fn category_test(
        &self,
        keys: usize,
        feature: usize,
        name: &str,
        shape: &FeatureShape,
        list: &Value,
        path: &str,
    ) -> Result<CondPlan> {
        let ipath = join(path, "in");
        if keys != 2 {
            return Err(perr(
                path,
                "`in` takes no other comparison beside `feature`",
            ));
        }
        let FeatureShape::Category { values } = shape else {
            return Err(perr(
                &join(path, "feature"),
                format!("feature {name:?} is not a category (`in` needs a one_hot feature)"),
            ));
        };
        let items = list.as_array().ok_or_else(|| {
            perr(
                &ipath,
                format!("expected an array of strings, got {}", kind_of(list)),
            )
        })?;
        if items.is_empty() {
            return Err(perr(&ipath, "must not be empty"));
        }
        let mut buckets = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let s = item.as_str().ok_or_else(|| {
                perr(
                    &idx(&ipath, i),
                    format!("expected a string, got {}", kind_of(item)),
                )
            })?;
            let at = *values.get(s).ok_or_else(|| {
                perr(
                    &idx(&ipath, i),
                    format!("{s:?} is not one of the values of feature {name:?}"),
                )
            })?;
            buckets.push(at);
        }
        buckets.sort_unstable();
        buckets.dedup();
        Ok(CondPlan::In { feature, buckets })
    }
}

fn count(nodes: &mut usize, path: &str) -> Result<()> {
    *nodes += 1;
    if *nodes > MAX_NODES {
        return Err(perr(
            path,
            format!("a rule condition has more than {MAX_NODES} nodes"),
        ));
    }
    Ok(())
}
