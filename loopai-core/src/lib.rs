//! Loopai runtime core.
//!
//! (The crate manual is filled in as the modules land.)

mod error;

pub use error::{Error, ErrorKind, Result};
