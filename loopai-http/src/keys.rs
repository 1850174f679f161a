//! API-key files: JSON lines, one key per line, each line's fields up to the server; keys
//! are kept only as SHA-256 digests.

use std::collections::HashMap;
use std::fmt;

use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::{Error, ErrorKind, Result};

/// The shortest accepted API key, in bytes.
pub const MIN_KEY_BYTES: usize = 16;
/// The longest accepted API key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// The SHA-256 digest of a key: what a server keeps and compares instead of the key.
pub type KeyDigest = [u8; 32];

/// The digest of `key`.
pub fn key_digest(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

/// A digest written as 64 hex digits (either case), or `None`.
pub fn parse_key_digest(hex: &str) -> Option<KeyDigest> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Why a key is refused by [`check_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProblem {
    /// Shorter than [`MIN_KEY_BYTES`] or longer than [`MAX_KEY_BYTES`]: the length.
    Length(usize),
    /// A character that is not printable ASCII, or a space.
    Character(char),
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyProblem::Length(len) => write!(
                f,
                "must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, got {len}"
            ),
            KeyProblem::Character(c) => write!(
                f,
                "may only contain printable ASCII without spaces, found {c:?}"
            ),
        }
    }
}

/// Checks a key: [`MIN_KEY_BYTES`] to [`MAX_KEY_BYTES`] bytes of printable ASCII without
/// spaces.
pub fn check_key(key: &str) -> std::result::Result<(), KeyProblem> {
    if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
        return Err(KeyProblem::Length(key.len()));
    }
    match key.chars().find(|c| !c.is_ascii_graphic()) {
        Some(c) => Err(KeyProblem::Character(c)),
        None => Ok(()),
    }
}

/// How [`KeyFile::parse`] words a line that is not the JSON object expected, and a key
/// that appears twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineErrors {
    /// The field's path first: ``role: unknown variant `admin` ...``, `key: the same key
    /// appears twice (lines 2 and 4)` (the reference cloud).
    FieldPath,
    /// serde_json's message alone, with its line and column: ``unknown field `role`,
    /// expected ... at line 1 column 37`` (`loopai serve`).
    Serde,
}

/// The keys of a keys file by digest, each with what the server knows of its holder (`P`).
///
/// ```
/// use loopai_http::{check_key, key_digest, KeyFile, LineErrors};
///
/// #[derive(serde::Deserialize)]
/// struct Line { key: String, name: String }
///
/// let text = "# who may call\n{\"key\": \"sk_test_0123456789abcdef\", \"name\": \"ci\"}\n";
/// let keys = KeyFile::parse(text, "keys.jsonl", LineErrors::FieldPath, |line: Line, _line_no| {
///     check_key(&line.key).map_err(|p| format!("key: {p}"))?;
///     Ok((key_digest(&line.key), line.name))
/// })?;
/// assert_eq!(keys.get("sk_test_0123456789abcdef").map(String::as_str), Some("ci"));
/// assert!(keys.get("sk_test_something_else").is_none());
/// # Ok::<(), loopai_http::Error>(())
/// ```
#[derive(Clone)]
pub struct KeyFile<P> {
    by_digest: HashMap<KeyDigest, P>,
}

impl<P> fmt::Debug for KeyFile<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFile")
            .field("keys", &self.by_digest.len())
            .finish()
    }
}

impl<P> KeyFile<P> {
    /// Parses the text of a keys file; `origin` (usually the file name) names it in error
    /// messages. Blank lines and lines starting with `#` are skipped; every other line is a
    /// JSON object read as `L` (unknown fields are the server's to refuse; a line that does
    /// not match is worded as `errors` says) and handed to `entry` with its line number,
    /// which checks it and returns the key's digest and its holder, or a message.
    ///
    /// Errors are [`ErrorKind::Config`] and name the file, the line and the field:
    /// `keys.jsonl:3: role: unknown variant ...`, `keys.jsonl:4: key: the same key appears
    /// twice (lines 2 and 4)`. An empty file is not an error here.
    pub fn parse<L: DeserializeOwned>(
        text: &str,
        origin: &str,
        errors: LineErrors,
        mut entry: impl FnMut(L, usize) -> std::result::Result<(KeyDigest, P), String>,
    ) -> Result<KeyFile<P>> {
        let mut by_digest = HashMap::new();
        let mut first_line: HashMap<KeyDigest, usize> = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fail =
                |msg: String| Error::new(ErrorKind::Config, format!("{origin}:{line_no}: {msg}"));
            let parsed: L = match errors {
                LineErrors::FieldPath => serde_path_to_error::deserialize(
                    &mut serde_json::Deserializer::from_str(trimmed),
                )
                .map_err(|e| {
                    let path = e.path().to_string();
                    let inner = e.into_inner();
                    fail(if path == "." {
                        inner.to_string()
                    } else {
                        format!("{path}: {inner}")
                    })
                })?,
                LineErrors::Serde => {
                    serde_json::from_str(trimmed).map_err(|e| fail(e.to_string()))?
                }
            };
            let (digest, holder) = entry(parsed, line_no).map_err(fail)?;
            if let Some(first) = first_line.insert(digest, line_no) {
                let field = match errors {
                    LineErrors::FieldPath => "key: ",
                    LineErrors::Serde => "",
                };
                return Err(fail(format!(
                    "{field}the same key appears twice (lines {first} and {line_no})"
                )));
            }
            by_digest.insert(digest, holder);
        }
        Ok(KeyFile { by_digest })
    }

    /// The holder of `key`, or `None` for an unknown key. Compares digests, never keys.
    pub fn get(&self, key: &str) -> Option<&P> {
        self.by_digest.get(&key_digest(key))
    }

    /// The holders, in no particular order.
    pub fn holders(&self) -> impl Iterator<Item = &P> {
        self.by_digest.values()
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether the file held no key.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        key: String,
        #[serde(default)]
        n: u32,
    }

    fn parse(text: &str) -> Result<KeyFile<u32>> {
        KeyFile::parse(text, "k", LineErrors::FieldPath, |line: Line, _| {
            check_key(&line.key).map_err(|p| format!("key: {p}"))?;
            Ok((key_digest(&line.key), line.n))
        })
    }

    #[test]
    fn lines_are_checked_with_file_line_and_field() {
        let keys = parse("# c\n\n{\"key\": \"sk_0123456789abcdef\", \"n\": 7}\n").unwrap();
        assert_eq!((keys.len(), keys.get("sk_0123456789abcdef")), (1, Some(&7)));
        for (text, want) in [
            (
                "{\"key\": \"short\"}",
                "k:1: key: must be 16 to 256 bytes, got 5",
            ),
            (
                "{\"key\": \"sk_0123456789abcdef\", \"n\": \"x\"}",
                "k:1: n: invalid type",
            ),
            (
                "{\"key\": \"sk_0123456789abcdef\", \"m\": 1}",
                "k:1: m: unknown field `m`",
            ),
            (
                "{\"key\": \"sk_0123456789abcdef\"}\n\n{\"key\": \"sk_0123456789abcdef\"}",
                "k:3: key: the same key appears twice (lines 1 and 3)",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.message().starts_with(want), "{text}: {err}");
        }
        let plain = KeyFile::parse("{\"m\": 1}", "k", LineErrors::Serde, |line: Line, _| {
            Ok((key_digest(&line.key), 0))
        });
        assert!(plain
            .unwrap_err()
            .message()
            .starts_with("k:1: unknown field `m`, expected"));
    }

    #[test]
    fn keys_and_hex_digests() {
        assert_eq!(
            check_key("has a space in it"),
            Err(KeyProblem::Character(' '))
        );
        let hex = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";
        assert_eq!(parse_key_digest(hex), Some(key_digest("test")));
        assert_eq!(parse_key_digest("abc"), None);
    }
}
