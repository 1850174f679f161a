//! Bearer API keys: the keys file, and who may execute which task.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use loopai_core::{validate_task_id, Error, ErrorKind, Result};
use loopai_http::{check_key, key_digest, parse_key_digest, KeyDigest, KeyFile, LineErrors};
pub use loopai_http::{MAX_KEY_BYTES, MIN_KEY_BYTES};
use serde::Deserialize;

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
    keys: KeyFile<Principal>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.keys.holders().map(Principal::name).collect();
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

/// Checks one line of the keys file: its key's digest and who holds it.
fn entry(line: KeyLine, line_no: usize) -> std::result::Result<(KeyDigest, Principal), String> {
    let digest = match (line.key, line.sha256) {
        (Some(key), None) => {
            check_key(&key).map_err(|p| format!("key: {p}"))?;
            key_digest(&key)
        }
        (None, Some(hex)) => {
            parse_key_digest(&hex).ok_or_else(|| "sha256: expected 64 hex digits".to_string())?
        }
        (Some(_), Some(_)) => return Err("give either key or sha256, not both".to_string()),
        (None, None) => return Err("key (or sha256) is required".to_string()),
    };
    let tasks = match line.tasks {
        None => None,
        Some(list) if list.iter().any(|t| t == "*") => {
            if list.len() > 1 {
                return Err(
                    "tasks: \"*\" (every task) cannot be combined with task ids".to_string()
                );
            }
            None
        }
        Some(list) => {
            if list.is_empty() {
                return Err("tasks: empty (omit it, or use [\"*\"], for every task)".to_string());
            }
            for (j, task) in list.iter().enumerate() {
                validate_task_id(task).map_err(|e| format!("tasks[{j}]: {}", e.message()))?;
            }
            Some(list.into_iter().collect())
        }
    };
    let principal = Principal {
        name: line.name.unwrap_or_else(|| format!("line {line_no}")),
        tasks,
    };
    Ok((digest, principal))
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
        let keys = KeyFile::parse(text, origin, LineErrors::Serde, entry)
            .map_err(|e| Error::new(ErrorKind::Config, e.message()))?;
        if keys.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                format!("{origin}: no API key in the file"),
            ));
        }
        Ok(ApiKeys { keys })
    }

    /// The principal of `key`, or `None` for an unknown key.
    pub fn authenticate(&self, key: &str) -> Option<&Principal> {
        self.keys.get(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a keys file holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

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
