//! Synthesize and install: the new version in the artifact cache, activated as asked.

use loopai_core::{Error, ErrorKind, Result};

use super::{synthesize, SynthOptions, Synthesis};
use crate::spec::TaskSpec;

/// Whether [`synthesize_and_install`] makes the new version active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Activation {
    /// Install only.
    Never,
    /// Activate when the synthesis is [trusted](Synthesis::trusted) (its cross-validated
    /// accuracy meets the spec's `accuracy_target` and beats always answering the most
    /// frequent label); otherwise install only.
    IfTrusted,
    /// Activate whatever the estimate says.
    Always,
}

impl From<bool> for Activation {
    /// `true` is [`Activation::IfTrusted`], `false` [`Activation::Never`].
    fn from(activate: bool) -> Activation {
        if activate {
            Activation::IfTrusted
        } else {
            Activation::Never
        }
    }
}

/// Synthesizes a program for `spec` and installs it in the artifact cache of `data_dir` as
/// the task's next version, activated as `activate` says (`true` means
/// [`Activation::IfTrusted`]: an untrusted program is installed but not activated; the
/// returned metadata's status tells which), recording the spec's input and
/// output schemas in the metadata so the runtime enforces them, and the spec itself in
/// `<data_dir>/artifacts/<task>/spec.json` ([`save_spec`](crate::save_spec)). Returns the
/// synthesis and the installed artifact's metadata.
///
/// A `spec.name` that is not a valid task id ([`loopai_core::validate_task_id`]: it names
/// a directory) is an [`ErrorKind::InvalidInput`] error before any training.
pub fn synthesize_and_install(
    spec: &TaskSpec,
    options: &SynthOptions,
    data_dir: &std::path::Path,
    activate: impl Into<Activation>,
) -> Result<(Synthesis, loopai_core::ArtifactMetadata)> {
    // The name becomes a directory of the artifact cache: refuse a bad one before
    // training, not after.
    loopai_core::validate_task_id(&spec.name).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("spec.name: {}", e.message()),
        )
    })?;
    let synthesis = synthesize(spec, options)?;
    let activate = match activate.into() {
        Activation::Never => false,
        Activation::IfTrusted => synthesis.trusted,
        Activation::Always => true,
    };
    // The program must load in the runtime exactly as written.
    loopai_core::Program::from_json(&synthesis.program_json)
        .map_err(|e| e.context("the synthesized program does not load (a loopai-synth bug)"))?;
    let mut meta = synthesis.new_artifact();
    meta.extra
        .insert("input_schema".into(), spec.input_schema.clone());
    let output_schema = if spec.is_extraction() {
        // In the runtime's schema subset (no `format`, `nullable` as a `null` type).
        let fields = crate::extract::schema::fields(&spec.output_schema)
            .map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;
        crate::extract::schema::runtime_schema(&fields)
    } else {
        spec.output_schema.clone()
    };
    meta.extra.insert("output_schema".into(), output_schema);
    let installed = loopai_core::ArtifactStore::open(data_dir, &spec.name)?.install(
        &synthesis.program_json,
        meta,
        activate,
    )?;
    // Kept for `improve`, which learns again from it plus the oracle's answers.
    crate::save_spec(data_dir, spec)?;
    Ok((synthesis, installed))
}
