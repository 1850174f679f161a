//! Keyed hashing: [`KeyedHasher`] (HMAC-SHA256 with the deployment secret).

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::error::{Error, ErrorKind, Result};
use crate::fsutil::{create_dir_all_durable, remove_if_exists, sync_dir};

/// The secret's length in bytes.
pub const HMAC_KEY_LEN: usize = 32;

/// The secret's file, relative to the data directory.
pub const HMAC_KEY_FILE: &str = "config/hmac.key";

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 with a per-deployment secret, for hashing inputs before they leave the
/// process (or, with `privacy.hash_inputs`, before they are written to the local logs).
///
/// A plain SHA-256 of a short input (a phone number, a yes/no answer) can be reversed by
/// trying every candidate; without the secret, a keyed hash cannot. Hashes are stable for
/// one deployment (same secret, same input, same hash), so the cloud can still count
/// duplicates and join records, but they cannot be compared across deployments.
///
/// The secret lives in `<data_dir>/config/hmac.key` ([`load_or_create`](Self::load_or_create)).
/// It is never logged: `Debug` prints `KeyedHasher { .. }`.
///
/// ```
/// use loopai_core::KeyedHasher;
/// use serde_json::json;
///
/// let hasher = KeyedHasher::new(b"deployment secret");
/// let h = hasher.hash_str("+44 20 7946 0958");
/// assert_eq!(h.len(), 64); // lowercase hex
/// assert_eq!(h, hasher.hash_str("+44 20 7946 0958"));
/// assert_ne!(h, KeyedHasher::new(b"another secret").hash_str("+44 20 7946 0958"));
///
/// // Values hash through their canonical JSON: key order does not matter.
/// let a: serde_json::Value = serde_json::from_str(r#"{"b": 1, "a": [true, "x"]}"#)?;
/// assert_eq!(hasher.hash_value(&a), hasher.hash_value(&json!({"a": [true, "x"], "b": 1})));
///
/// let dir = tempfile::tempdir()?;
/// let first = KeyedHasher::load_or_create(dir.path())?;  // creates config/hmac.key
/// let again = KeyedHasher::load_or_create(dir.path())?;  // reads it
/// assert_eq!(first.hash_str("x"), again.hash_str("x"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct KeyedHasher {
    /// The MAC keyed with the secret; cloned per hash (no re-keying).
    mac: HmacSha256,
}

impl fmt::Debug for KeyedHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyedHasher { .. }")
    }
}

impl KeyedHasher {
    /// A hasher keyed with `secret` (any length; use at least 32 random bytes).
    pub fn new(secret: &[u8]) -> Self {
        // HMAC accepts keys of any length (long keys are hashed first): this cannot fail.
        let mac =
            <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
        KeyedHasher { mac }
    }

    /// The hasher for the deployment whose data directory is `data_dir`.
    ///
    /// Reads the secret from `<data_dir>/config/hmac.key`, creating the file when it does
    /// not exist: 32 bytes from the operating system's random source, written to a
    /// temporary file (mode `0600` on unix), fsynced, then linked into place so that a
    /// concurrent creator or a crash never leaves a partial key, and the first key to
    /// land wins. The file holds either the 32 raw bytes or 64 hex digits (optionally
    /// followed by a newline), so that operators can provision the same secret on several
    /// hosts.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] naming the file when it exists but holds anything else;
    /// [`ErrorKind::Io`] when it cannot be read or created.
    pub fn load_or_create(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join(HMAC_KEY_FILE);
        if let Some(secret) = read_key(&path)? {
            return Ok(KeyedHasher::new(&secret));
        }
        let dir = path.parent().unwrap_or(data_dir);
        create_dir_all_durable(dir)?;
        let mut secret = [0u8; HMAC_KEY_LEN];
        getrandom::fill(&mut secret).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("{}: no random source for a new key: {e}", path.display()),
            )
        })?;
        create_key_file(&path, &secret).map_err(|e| Error::io(path.display(), e))?;
        // Whoever linked first won: use what is on disk.
        match read_key(&path)? {
            Some(secret) => Ok(KeyedHasher::new(&secret)),
            None => Err(Error::new(
                ErrorKind::Io,
                format!("{}: disappeared right after creation", path.display()),
            )),
        }
    }

    /// The keyed hash of `bytes`, as 64 lowercase hex digits.
    pub fn hash_bytes(&self, bytes: &[u8]) -> String {
        hex::encode(self.mac.clone().chain_update(bytes).finalize().into_bytes())
    }

    /// The keyed hash of the UTF-8 bytes of `s`, as 64 lowercase hex digits.
    pub fn hash_str(&self, s: &str) -> String {
        self.hash_bytes(s.as_bytes())
    }

    /// The keyed hash of `value`'s canonical JSON, as 64 lowercase hex digits.
    ///
    /// Canonical JSON is compact `serde_json` output with object keys in sorted (byte)
    /// order at every level; it equals `serde_json::to_string(value)` as long as
    /// `serde_json`'s `preserve_order` feature is off, but is written here key-sorted
    /// explicitly so that enabling that feature anywhere in a build cannot change hashes.
    /// Numbers hash as `serde_json` prints them (`1` and `1.0` differ).
    pub fn hash_value(&self, value: &Value) -> String {
        let mut writer = MacWriter(self.mac.clone());
        // Writing into a MAC cannot fail.
        let _ = write_canonical(value, &mut writer);
        hex::encode(writer.0.finalize().into_bytes())
    }
}

struct MacWriter(HmacSha256);

impl Write for MacWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Compact JSON with object keys sorted at every level.
pub(crate) fn write_canonical(value: &Value, w: &mut impl Write) -> io::Result<()> {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            w.write_all(b"{")?;
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    w.write_all(b",")?;
                }
                serde_json::to_writer(&mut *w, k)?;
                w.write_all(b":")?;
                write_canonical(v, w)?;
            }
            w.write_all(b"}")
        }
        Value::Array(items) => {
            w.write_all(b"[")?;
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    w.write_all(b",")?;
                }
                write_canonical(v, w)?;
            }
            w.write_all(b"]")
        }
        scalar => Ok(serde_json::to_writer(w, scalar)?),
    }
}

/// The secret in `path`, `None` when the file does not exist.
fn read_key(path: &Path) -> Result<Option<Vec<u8>>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path.display(), e)),
    };
    warn_if_readable_by_others(path);
    parse_key(&bytes).map(Some).ok_or_else(|| {
        Error::new(
            ErrorKind::Config,
            format!(
                "{}: malformed HMAC key: expected {HMAC_KEY_LEN} raw bytes or {} hex digits, \
                 got {} bytes; restore the deployment's key or delete the file to create a \
                 new one (hashes will change)",
                path.display(),
                HMAC_KEY_LEN * 2,
                bytes.len()
            ),
        )
    })
}

fn parse_key(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() == HMAC_KEY_LEN {
        return Some(bytes.to_vec());
    }
    let text = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    if text.len() == HMAC_KEY_LEN * 2 {
        return hex::decode(text).ok();
    }
    None
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "{}: HMAC key is accessible by group or others (mode {:o}); use 0600",
                path.display(),
                meta.permissions().mode() & 0o777
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// Writes `secret` to a private temporary sibling, fsyncs it and links it to `path`
/// unless `path` exists already. Falls back to a rename where hard links are unsupported.
fn create_key_file(path: &Path, secret: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp: PathBuf = dir.join(format!(".tmp-{}-hmac.key", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(secret)?;
        file.sync_all()?;
        drop(file);
        match fs::hard_link(&tmp, path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(_) if !path.exists() => fs::rename(&tmp, path)?,
            Err(e) => return Err(e),
        }
        sync_dir(dir)
    })();
    let _ = remove_if_exists(&tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hashes_are_deterministic_per_secret_and_differ_across_secrets() {
        let a = KeyedHasher::new(b"secret-a");
        let b = KeyedHasher::new(b"secret-b");
        assert_eq!(a.hash_str("hello"), a.hash_str("hello"));
        assert_ne!(a.hash_str("hello"), b.hash_str("hello"));
        assert_ne!(a.hash_str("hello"), a.hash_str("hello "));
        // RFC 4231 test case 2.
        assert_eq!(
            KeyedHasher::new(b"Jefe").hash_str("what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hash_value_is_the_hash_of_sorted_compact_json() {
        let h = KeyedHasher::new(b"k");
        let v: Value =
            serde_json::from_str(r#"{"z": {"y": 1, "x": [2, "é\n"]}, "a": null}"#).unwrap();
        let mut canonical = Vec::new();
        write_canonical(&v, &mut canonical).unwrap();
        assert_eq!(
            String::from_utf8(canonical.clone()).unwrap(),
            r#"{"a":null,"z":{"x":[2,"é\n"],"y":1}}"#
        );
        // With serde_json's default (sorted) map, to_string is the same canonical form.
        assert_eq!(serde_json::to_string(&v).unwrap().into_bytes(), canonical);
        assert_eq!(h.hash_value(&v), h.hash_bytes(&canonical));
        assert_eq!(h.hash_value(&json!("x")), h.hash_str("\"x\""));
    }

    #[test]
    fn key_file_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = KeyedHasher::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(HMAC_KEY_FILE);
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), HMAC_KEY_LEN);
        let second = KeyedHasher::load_or_create(dir.path()).unwrap();
        assert_eq!(fs::read(&path).unwrap(), bytes);
        assert_eq!(first.hash_str("x"), second.hash_str("x"));
        assert_eq!(first.hash_str("x"), KeyedHasher::new(&bytes).hash_str("x"));
        // Only the key file: no temporaries left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Another data directory gets another secret.
        let other = tempfile::tempdir().unwrap();
        let third = KeyedHasher::load_or_create(other.path()).unwrap();
        assert_ne!(first.hash_str("x"), third.hash_str("x"));
    }

    #[test]
    fn hex_key_files_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HMAC_KEY_FILE);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let secret = [7u8; HMAC_KEY_LEN];
        fs::write(&path, format!("{}\n", hex::encode(secret))).unwrap();
        let h = KeyedHasher::load_or_create(dir.path()).unwrap();
        assert_eq!(h.hash_str("x"), KeyedHasher::new(&secret).hash_str("x"));
    }

    #[test]
    fn malformed_key_file_is_a_config_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HMAC_KEY_FILE);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        for content in [&b"short"[..], &[b'z'; 64][..], b""] {
            fs::write(&path, content).unwrap();
            let err = KeyedHasher::load_or_create(dir.path()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.to_string().contains("config/hmac.key"), "{err}");
            assert!(err.to_string().contains("malformed HMAC key"), "{err}");
            // The file is left for the operator to fix.
            assert_eq!(fs::read(&path).unwrap(), content);
        }
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let h = KeyedHasher::new(b"topsecret");
        assert_eq!(format!("{h:?}"), "KeyedHasher { .. }");
    }

    #[test]
    fn hasher_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<KeyedHasher>();
    }
}
