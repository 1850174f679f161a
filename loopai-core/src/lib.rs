//! Loopai runtime core.
//!
//! (The crate manual is filled in as the modules land.)

mod error;
mod program;

pub use error::{Error, ErrorKind, Result};
pub use program::{
    ngram_hash, DecisionId, Outcome, Program, ProgramLimits, ProgramStats, FORMAT as PROGRAM_FORMAT,
};
