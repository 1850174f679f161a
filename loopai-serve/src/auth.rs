//! Bearer API keys: the keys file, and who may execute which task.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::Path;

use loopai_core::{validate_task_id, Error, ErrorKind, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The shortest accepted API key, in bytes.
pub const MIN_KEY_BYTES: usize = 16;
/// The longest accepted API key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// Who an API key belongs to and which tasks it may execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    name: String,
    /// `None`: every task.
    tasks: Option<BTreeSet<String>>,
}

impl Principal {
    /// The key's `name` (or `line N` when the keys file gives none); never the key.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this key may execute `task`.
    pub fn may_execute(&self, task: &str) -> bool {
        self.tasks.as_ref().is_none_or(|tasks| tasks.contains(task))
    }
}

/// The API keys a server accepts, loaded from a keys file (JSON lines):
///
/// ```text
/// # name is for logs and error messages; tasks omitted (or ["*"]) means every task
/// {"key": "sk_live_3f9a0c1e7b2d4f6a", "name": "checkout", "tasks": ["spam", "intent"]}
/// {"sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "name": "ops"}
/// ```
///
/// Each line gives either the key itself (`key`, 16-256 printable ASCII bytes without
/// spaces) or its SHA-256 as 64 hex digits (`sha256`), so that the file need not hold the
/// secret. Requests present the key as `Authorization: Bearer <key>`; the server compares
/// SHA-256 digests, never the keys themselves.
///
/// ```
/// use loopai_serve::ApiKeys;
///
/// let keys = ApiKeys::parse(
///     r#"{"key": "sk_test_0123456789abcdef", "name": "ci", "tasks": ["spam"]}"#,
///     "keys.jsonl",
/// )?;
/// let who = keys.authenticate("sk_test_0123456789abcdef").unwrap();
/// assert_eq!(who.name(), "ci");
/// assert!(who.may_execute("spam") && !who.may_execute("intent"));
/// assert!(keys.authenticate("sk_test_wrong_key_00000").is_none());
/// # Ok::<(), loopai_core::Error>(())
/// ```
#[derive(Clone)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], Principal>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.by_digest.values().map(Principal::name).collect();
        names.sort_unstable();
        f.debug_struct("ApiKeys").field("names", &names).finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyLine {
    key: Option<String>,
    sha256: Option<String>,
    name: Option<String>,
    tasks: Option<Vec<String>>,
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

fn parse_hex_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn check_key(key: &str) -> std::result::Result<(), String> {
    if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
        return Err(format!(
            "must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, got {}",
            key.len()
        ));
    }
    if let Some(c) = key.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "may only contain printable ASCII without spaces, found {c:?}"
        ));
    }
    Ok(())
}

impl ApiKeys {
    /// Reads a keys file (see the type docs). Errors ([`ErrorKind::Config`]) name the file
    /// and line: `keys.jsonl:3: key: must be 16 to 256 bytes, got 5`.
    pub fn from_file(path: &Path) -> Result<ApiKeys> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))?;
        ApiKeys::parse(&text, &path.display().to_string())
    }

    /// Parses the contents of a keys file; `origin` names it in error messages. Blank lines
    /// and lines starting with `#` are skipped. A file without any key is an error.
    pub fn parse(text: &str, origin: &str) -> Result<ApiKeys> {
        let mut by_digest = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let bad =
                |msg: String| Error::new(ErrorKind::Config, format!("{origin}:{line_no}: {msg}"));
            let entry: KeyLine = serde_json::from_str(trimmed).map_err(|e| bad(e.to_string()))?;
            let digest = match (entry.key, entry.sha256) {
                (Some(key), None) => {
                    check_key(&key).map_err(|m| bad(format!("key: {m}")))?;
                    digest(key.as_bytes())
                }
                (None, Some(hex)) => parse_hex_digest(&hex.to_ascii_lowercase())
                    .ok_or_else(|| bad("sha256: expected 64 hex digits".to_string()))?,
                (Some(_), Some(_)) => {
                    return Err(bad("give either key or sha256, not both".to_string()))
                }
                (None, None) => return Err(bad("key (or sha256) is required".to_string())),
            };
            let tasks = match entry.tasks {
                None => None,
                Some(list) if list.iter().any(|t| t == "*") => {
                    if list.len() > 1 {
                        return Err(bad(
                            "tasks: \"*\" (every task) cannot be combined with task ids"
                                .to_string(),
                        ));
                    }
                    None
                }
                Some(list) => {
                    if list.is_empty() {
                        return Err(bad(
                            "tasks: empty (omit it, or use [\"*\"], for every task)".to_string(),
                        ));
                    }
                    for (j, task) in list.iter().enumerate() {
                        validate_task_id(task)
                            .map_err(|e| bad(format!("tasks[{j}]: {}", e.message())))?;
                    }
                    Some(list.into_iter().collect())
                }
            };
            let principal = Principal {
                name: entry.name.unwrap_or_else(|| format!("line {line_no}")),
                tasks,
            };
            if by_digest.insert(digest, principal).is_some() {
                return Err(bad("the same key appears twice".to_string()));
            }
        }
        if by_digest.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                format!("{origin}: no API key in the file"),
            ));
        }
        Ok(ApiKeys { by_digest })
    }

    /// The principal of `key`, or `None` for an unknown key.
    pub fn authenticate(&self, key: &str) -> Option<&Principal> {
        self.by_digest.get(&digest(key.as_bytes()))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Always false: a keys file holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_digests_authenticate_with_task_scopes() {
        let hashed = format!("{:x}", Sha256::digest(b"sk_ops_fedcba9876543210"));
        let text = format!(
            "# comment\n\n{}\n{{\"sha256\": \"{}\", \"name\": \"ops\", \"tasks\": [\"*\"]}}\n",
            r#"{"key": "sk_ci_0123456789abcdef", "tasks": ["spam"]}"#,
            hashed.to_uppercase()
        );
        let keys = ApiKeys::parse(&text, "k").unwrap();
        assert_eq!(keys.len(), 2);
        let ci = keys.authenticate("sk_ci_0123456789abcdef").unwrap();
        assert_eq!(ci.name(), "line 3");
        assert!(ci.may_execute("spam"));
        assert!(!ci.may_execute("intent"));
        let ops = keys.authenticate("sk_ops_fedcba9876543210").unwrap();
        assert!(ops.may_execute("anything"));
        assert!(keys.authenticate("sk_ci_0123456789abcdeF").is_none());
        assert!(!format!("{keys:?}").contains("sk_"));
    }

    #[test]
    fn bad_lines_are_refused_with_file_and_line() {
        for (text, want) in [
            (
                r#"{"key": "short"}"#,
                "k:1: key: must be 16 to 256 bytes, got 5",
            ),
            (
                r#"{"key": "has a space in the key"}"#,
                "k:1: key: may only contain printable ASCII without spaces",
            ),
            (
                r#"{"sha256": "abc"}"#,
                "k:1: sha256: expected 64 hex digits",
            ),
            (r#"{"name": "x"}"#, "k:1: key (or sha256) is required"),
            (
                r#"{"key": "sk_0123456789abcdef", "tasks": ["../x"]}"#,
                "k:1: tasks[0]: ",
            ),
            (
                r#"{"key": "sk_0123456789abcdef", "tasks": []}"#,
                "k:1: tasks: empty",
            ),
            (
                r#"{"key": "sk_0123456789abcdef", "role": "admin"}"#,
                "k:1: unknown field `role`",
            ),
            (
                "{\"key\": \"sk_0123456789abcdef\"}\n{\"key\": \"sk_0123456789abcdef\"}",
                "k:2: the same key appears twice",
            ),
            ("# nothing\n", "k: no API key in the file"),
        ] {
            let err = ApiKeys::parse(text, "k").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.to_string().starts_with(want), "{text}: {err}");
        }
    }
}
