//! Loopai runtime core.
//!
//! (The crate manual is filled in as the modules land.)

mod artifact;
mod error;

pub use artifact::{
    ArtifactMetadata, ArtifactStatus, ArtifactStore, LoadedArtifact, NewArtifact, PROGRAM_LANGUAGE,
};
pub use error::{Error, ErrorKind, Result};
