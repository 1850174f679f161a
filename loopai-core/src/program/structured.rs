//! Features of structured (non-text) inputs: scaled numbers, number bins, one-hot
//! categories and missing-value indicators — their validation at load and their values at
//! evaluation. See "Features of numbers, categories and missing values" in
//! `docs/program-format.md`.

use std::collections::HashMap;

use serde_json::Value;

use super::plan::{FeaturePlan, MAX_INPUTS};
use super::ProgramLimits;
use crate::error::Result;
use crate::program::raw::{
    check_name, idx, join, perr, typed, RawBins, RawInputType, RawMissing, RawOneHot, RawScale,
};

/// Most bin edges of one `bins` feature.
pub(super) const MAX_EDGES: usize = 1024;
/// Longest value of a `one_hot` feature, in bytes.
const MAX_VALUE_BYTES: usize = 1024;

/// An input as the structured features see it.
#[derive(Clone, Copy)]
pub(super) struct InputRef {
    /// Position in `inputs` (for `missing`).
    pub(super) index: usize,
    pub(super) ty: RawInputType,
    /// Slot among the inputs of its type.
    pub(super) slot: usize,
}

/// Is `op` a feature of this module?
pub(super) fn is_structured(op: &str) -> bool {
    matches!(op, "scale" | "bins" | "one_hot" | "missing")
}

/// Compiles a `scale`, `bins`, `one_hot` or `missing` feature.
pub(super) fn feature(
    op: &str,
    value: &Value,
    path: &str,
    inputs: &HashMap<String, InputRef>,
    limits: &ProgramLimits,
) -> Result<(String, FeaturePlan)> {
    let input = |name: &str, want: Option<RawInputType>| -> Result<InputRef> {
        let ipath = join(path, "input");
        let r = *inputs
            .get(name)
            .ok_or_else(|| perr(&ipath, format!("no input named {name:?}")))?;
        match want {
            Some(ty) if ty != r.ty => Err(perr(
                &ipath,
                format!(
                    "input {name:?} is a {}; `{op}` needs a {} input",
                    type_name(r.ty),
                    type_name(ty)
                ),
            )),
            _ => Ok(r),
        }
    };
    match op {
        "scale" => {
            let r: RawScale = typed(value, path)?;
            check_name(&r.name, &join(path, "name"))?;
            let slot = input(&r.input, Some(RawInputType::Number))?.slot;
            if !r.mean.is_finite() {
                return Err(perr(&join(path, "mean"), "must be finite"));
            }
            if !(r.std.is_finite() && r.std > 0.0) {
                return Err(perr(
                    &join(path, "std"),
                    format!("must be a positive finite number, got {}", r.std),
                ));
            }
            let clip = match r.clip {
                None => f64::from(f32::MAX),
                Some(c) if c.is_finite() && c > 0.0 => c,
                Some(c) => {
                    return Err(perr(
                        &join(path, "clip"),
                        format!("must be a positive finite number, got {c}"),
                    ))
                }
            };
            Ok((
                r.name,
                FeaturePlan::Scale {
                    slot,
                    mean: r.mean,
                    std: r.std,
                    clip,
                },
            ))
        }
        "bins" => {
            let r: RawBins = typed(value, path)?;
            check_name(&r.name, &join(path, "name"))?;
            let slot = input(&r.input, Some(RawInputType::Number))?.slot;
            let epath = join(path, "edges");
            if r.edges.is_empty() || r.edges.len() > MAX_EDGES {
                return Err(perr(&epath, format!("must have 1 to {MAX_EDGES} edges")));
            }
            for (i, e) in r.edges.iter().enumerate() {
                if !e.is_finite() {
                    return Err(perr(&idx(&epath, i), "must be finite"));
                }
                if i > 0 && *e <= r.edges[i - 1] {
                    return Err(perr(
                        &idx(&epath, i),
                        format!(
                            "edges must increase strictly: {e} follows {}",
                            r.edges[i - 1]
                        ),
                    ));
                }
            }
            Ok((
                r.name,
                FeaturePlan::Bins {
                    slot,
                    edges: r.edges,
                },
            ))
        }
        "one_hot" => {
            let r: RawOneHot = typed(value, path)?;
            check_name(&r.name, &join(path, "name"))?;
            let slot = input(&r.input, Some(RawInputType::Category))?.slot;
            let vpath = join(path, "values");
            if r.values.is_empty() || r.values.len() > limits.max_vocabulary {
                return Err(perr(
                    &vpath,
                    format!("must have 1 to {} values", limits.max_vocabulary),
                ));
            }
            let mut values = HashMap::with_capacity(r.values.len());
            for (i, v) in r.values.iter().enumerate() {
                if v.len() > MAX_VALUE_BYTES {
                    return Err(perr(
                        &idx(&vpath, i),
                        format!("values are at most {MAX_VALUE_BYTES} bytes"),
                    ));
                }
                if values.insert(v.clone(), i as u32).is_some() {
                    return Err(perr(&idx(&vpath, i), format!("duplicate value {v:?}")));
                }
            }
            Ok((r.name, FeaturePlan::OneHot { slot, values }))
        }
        "missing" => {
            let r: RawMissing = typed(value, path)?;
            check_name(&r.name, &join(path, "name"))?;
            let index = input(&r.input, None)?.index;
            Ok((r.name, FeaturePlan::Missing(index)))
        }
        other => Err(perr(
            &join(path, "op"),
            format!("{other:?} is not a structured feature"),
        )),
    }
}

fn type_name(ty: RawInputType) -> &'static str {
    match ty {
        RawInputType::Text => "text",
        RawInputType::Number => "number",
        RawInputType::Category => "category",
    }
}

/// The values of the non-text inputs of one evaluation.
pub(super) struct Fields<'a> {
    /// Number inputs by slot (the default, or 0, when missing).
    pub(super) numbers: [f64; MAX_INPUTS],
    /// Category inputs by slot (`None` when missing).
    pub(super) categories: [Option<&'a str>; MAX_INPUTS],
    /// Every input by position: absent or null.
    pub(super) missing: [bool; MAX_INPUTS],
}

impl Default for Fields<'_> {
    fn default() -> Self {
        Fields {
            numbers: [0.0; MAX_INPUTS],
            categories: [None; MAX_INPUTS],
            missing: [false; MAX_INPUTS],
        }
    }
}

/// The value of a structured feature: its number, and for `bins` and `one_hot` its one-hot
/// entry in `out` (cleared first). Returns 0 for features of other modules.
pub(super) fn value(feature: &FeaturePlan, fields: &Fields<'_>, out: &mut Vec<(u32, f32)>) -> f64 {
    match feature {
        FeaturePlan::Scale {
            slot,
            mean,
            std,
            clip,
        } => {
            let z = ((fields.numbers[*slot] - mean) / std).clamp(-clip, *clip);
            // Rounded to f32 (as model weights are), within f32's finite range.
            f64::from(z.clamp(-f64::from(f32::MAX), f64::from(f32::MAX)) as f32)
        }
        FeaturePlan::Bins { slot, edges } => {
            let x = fields.numbers[*slot];
            let bin = edges.partition_point(|&e| e <= x);
            out.clear();
            out.push((bin as u32, 1.0));
            bin as f64
        }
        FeaturePlan::OneHot { slot, values } => {
            out.clear();
            match fields.categories[*slot] {
                Some(v) => {
                    let bucket = values.get(v).copied().unwrap_or(values.len() as u32);
                    out.push((bucket, 1.0));
                    f64::from(bucket)
                }
                None => -1.0,
            }
        }
        FeaturePlan::Missing(index) => f64::from(u8::from(fields.missing[*index])),
        _ => 0.0,
    }
}
