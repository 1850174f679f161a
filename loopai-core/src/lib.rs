//! Loopai runtime core.
//!
//! (The crate manual is filled in as the modules land.)

mod artifact;
mod config;
mod error;
mod executor;
mod program;
mod runtime;
mod schema;

pub use artifact::{
    ArtifactMetadata, ArtifactStatus, ArtifactStore, LoadedArtifact, NewArtifact, PROGRAM_LANGUAGE,
};
pub use config::{
    ArtifactRetention, CloudConfig, ComparisonMode, DeploymentConfig, Durability, ExecutionConfig,
    ExecutionRetention, Fallback, OnFull, OracleConfig, OracleKind, PrivacyConfig, PrivacyMode,
    RetentionConfig, RuntimeConfig, RuntimeMode, SamplingConfig, SamplingStrategies,
    SamplingStrategy, StorageConfig, TelemetryConfig, ValidationConfig, ValidationRetention,
};
pub use error::{Error, ErrorKind, Result};
pub use executor::{ActiveProgram, Execution, Executor};
pub use program::{
    ngram_hash, DecisionId, Outcome, Program, ProgramLimits, ProgramStats, FORMAT as PROGRAM_FORMAT,
};
pub use runtime::{
    ExecutionResult, ExecutionStatus, Runtime, RuntimeBuilder, Scores, MAX_INPUT_DOCUMENT_BYTES,
};
pub use schema::{JsonSchema, SchemaViolation};
