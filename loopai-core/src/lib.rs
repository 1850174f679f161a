//! Loopai runtime core.
//!
//! (The crate manual is filled in as the modules land.)

mod config;
mod error;
mod schema;

pub use config::{
    ArtifactRetention, CloudConfig, ComparisonMode, DeploymentConfig, Durability, ExecutionConfig,
    ExecutionRetention, Fallback, OnFull, OracleConfig, OracleKind, PrivacyConfig, PrivacyMode,
    RetentionConfig, RuntimeConfig, RuntimeMode, SamplingConfig, SamplingStrategies,
    SamplingStrategy, StorageConfig, TelemetryConfig, ValidationConfig, ValidationRetention,
};
pub use error::{Error, ErrorKind, Result};
pub use schema::{JsonSchema, SchemaViolation};
