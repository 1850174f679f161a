//! Loopai runtime core.
//!
//! (The crate manual is filled in as the modules land.)

mod artifact;
mod error;
mod program;

pub use artifact::{
    ArtifactMetadata, ArtifactStatus, ArtifactStore, LoadedArtifact, NewArtifact, PROGRAM_LANGUAGE,
};
pub use error::{Error, ErrorKind, Result};
pub use program::{
    ngram_hash, DecisionId, Outcome, Program, ProgramLimits, ProgramStats, FORMAT as PROGRAM_FORMAT,
};
