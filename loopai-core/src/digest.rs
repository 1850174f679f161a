//! SHA-256 in lowercase hex, as artifacts, archives and version lists carry it, and its
//! short form for messages. A leaf module: it imports nothing from the crate.

use sha2::{Digest, Sha256};

/// The SHA-256 of `bytes`, lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The first 12 hex digits of `hash` followed by `…`, for messages (a hash too short to
/// abbreviate is quoted whole).
pub(crate) fn abbreviate(hash: &str) -> String {
    match hash.get(..12) {
        Some(prefix) if hash.len() > 12 => format!("{prefix}…"),
        _ => format!("`{hash}`"),
    }
}
