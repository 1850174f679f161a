//! The artifact repository protocol, shared by the runtime (which downloads) and the
//! reference cloud (which serves): the versions list, the archive of one version, and
//! ed25519 signatures. Documented in `docs/repository.md`.
//!
//! ```text
//! GET  {api_url}/api/v1/artifacts/{task}/versions        VersionList (JSON), with an ETag
//! GET  {api_url}/api/v1/artifacts/{task}/v{N}/download   ArtifactArchive (tar.gz)
//! POST {api_url}/api/v1/artifacts/{task}/upload          publisher key; an archive or a program
//! ```
//!
//! The same paths work as plain files on any static HTTP server.

use std::fmt;
use std::io::{Read, Write};

use base64::Engine as _;
use ed25519_dalek::{Signer as _, Verifier as _};
use serde::{Deserialize, Serialize};

use crate::digest::{abbreviate, sha256_hex};
use crate::error::{Error, ErrorKind, Result};

/// The `format` of a [`VersionList`].
pub const VERSIONS_FORMAT: &str = "loopai.versions/1";

/// The largest archive (as downloaded, compressed) and the largest file inside one: 64 MiB.
pub const MAX_ARCHIVE_BYTES: u64 = 64 << 20;

/// The largest versions list accepted: 8 MiB.
pub(crate) const MAX_VERSIONS_BYTES: u64 = 8 << 20;

const PROGRAM_ENTRY: &str = "program.json";
const METADATA_ENTRY: &str = "metadata.json";

/// One published version, as listed by `GET .../versions`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The version number `N` (as in `v{N}/download`), at least 1.
    pub version: u32,
    /// Lowercase hex SHA-256 of the archive bytes (what `v{N}/download` serves).
    pub sha256: String,
    /// The archive's length in bytes.
    pub size: u64,
    /// When the version was published: RFC 3339, UTC.
    pub created_at: String,
    /// Base64 ed25519 signature of the ASCII `sha256` string, when the repository signs.
    #[serde(default)]
    pub signature: Option<String>,
    /// Lowercase hex SHA-256 of the archive's `program.json` (equals `sha256` in its
    /// `metadata.json`).
    pub program_sha256: String,
}

impl VersionInfo {
    /// Describes `archive`, which holds version `version` whose program hashes to
    /// `program_sha256`; unsigned.
    pub fn new(version: u32, archive: &[u8], created_at: &str, program_sha256: &str) -> Self {
        VersionInfo {
            version,
            sha256: sha256_hex(archive),
            size: archive.len() as u64,
            created_at: created_at.to_owned(),
            signature: None,
            program_sha256: program_sha256.to_owned(),
        }
    }

    /// This entry with `signature` (base64, see [`ArtifactSigner::sign`]).
    #[must_use]
    pub fn with_signature(mut self, signature: Option<String>) -> Self {
        self.signature = signature;
        self
    }

    /// Checks a downloaded archive against this entry: its length and SHA-256 and — when
    /// `trusted_keys` is not empty — a signature by one of them. `what` names the source
    /// in messages. Errors are [`ErrorKind::Artifact`].
    pub fn verify_download(
        &self,
        archive: &[u8],
        trusted_keys: &[String],
        what: &str,
    ) -> Result<()> {
        let refuse = |m: String| Error::new(ErrorKind::Artifact, format!("{what}: {m}"));
        if archive.len() as u64 != self.size {
            return Err(refuse(format!(
                "size mismatch: the versions list says {} bytes, the download has {}",
                self.size,
                archive.len()
            )));
        }
        let actual = sha256_hex(archive);
        if actual != self.sha256 {
            return Err(refuse(format!(
                "sha256 mismatch: the versions list says {}, the download has {} (tampered with or corrupted)",
                abbreviate(&self.sha256),
                abbreviate(&actual)
            )));
        }
        if trusted_keys.is_empty() {
            return Ok(());
        }
        let Some(signature) = &self.signature else {
            return Err(refuse(
                "unsigned, but cloud.trusted_keys requires a signature".to_owned(),
            ));
        };
        verify_artifact_signature(trusted_keys, &self.sha256, signature)
            .map_err(|e| refuse(e.message().to_owned()))
    }
}

/// The document served at `GET .../versions`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionList {
    /// [`VERSIONS_FORMAT`].
    pub format: String,
    /// The task id.
    pub task: String,
    /// The published versions, ascending.
    pub versions: Vec<VersionInfo>,
}

impl VersionList {
    /// A list for `task`; `versions` are sorted by version.
    pub fn new(task: &str, mut versions: Vec<VersionInfo>) -> Self {
        versions.sort_by_key(|v| v.version);
        VersionList {
            format: VERSIONS_FORMAT.to_owned(),
            task: task.to_owned(),
            versions,
        }
    }

    /// Parses and checks a versions document for `task`: the format, the task, distinct
    /// versions ≥ 1, hashes of 64 lowercase hex digits. `origin` (a URL) prefixes messages.
    pub fn parse(bytes: &[u8], task: &str, origin: &str) -> Result<VersionList> {
        let bad = |m: String| Error::new(ErrorKind::Artifact, format!("{origin}: {m}"));
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let list: VersionList = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            bad(format!(
                "invalid versions list at `{path}`: {}",
                e.into_inner()
            ))
        })?;
        if list.format != VERSIONS_FORMAT {
            return Err(bad(format!(
                "format: expected {VERSIONS_FORMAT:?}, got {:?}",
                list.format
            )));
        }
        if list.task != task {
            return Err(bad(format!("task: expected {task:?}, got {:?}", list.task)));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, v) in list.versions.iter().enumerate() {
            if v.version == 0 || !seen.insert(v.version) {
                return Err(bad(format!(
                    "versions[{i}].version: {} is 0 or listed twice",
                    v.version
                )));
            }
            for (field, hash) in [("sha256", &v.sha256), ("program_sha256", &v.program_sha256)] {
                if !is_sha256_hex(hash) {
                    return Err(bad(format!(
                        "versions[{i}].{field}: expected 64 lowercase hex digits"
                    )));
                }
            }
        }
        Ok(list)
    }

    /// The entry with the highest version number.
    pub fn latest(&self) -> Option<&VersionInfo> {
        self.versions.iter().max_by_key(|v| v.version)
    }

    /// The entry of `version`.
    pub fn get(&self, version: u32) -> Option<&VersionInfo> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// Pretty JSON with a final newline (what the reference cloud writes and serves).
    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The files of one version, as carried by `v{N}/download` and uploads: a gzip-compressed
/// tar archive of `program.json` and `metadata.json`.
///
/// Tar keeps the program's bytes exactly (its SHA-256 is part of the metadata), any `tar`
/// can make or inspect one (`tar -czf download program.json metadata.json`), and it is
/// the version directory as it is on disk. Unpacking never touches the filesystem.
///
/// ```
/// use loopai_core::ArtifactArchive;
///
/// let archive = ArtifactArchive::new(br#"{"format": "loopai.program/1"}"#.to_vec(), None);
/// let bytes = archive.pack()?;
/// assert_eq!(ArtifactArchive::unpack(&bytes)?, archive);
/// # Ok::<(), loopai_core::Error>(())
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactArchive {
    /// The bytes of `program.json`.
    pub program: Vec<u8>,
    /// The bytes of `metadata.json`: required in downloads, optional in uploads.
    pub metadata: Option<Vec<u8>>,
}

impl ArtifactArchive {
    /// An archive of these files.
    pub fn new(program: Vec<u8>, metadata: Option<Vec<u8>>) -> Self {
        ArtifactArchive { program, metadata }
    }

    /// The tar.gz bytes: `program.json`, then `metadata.json` when present; ustar headers,
    /// mode 0644, owner 0, mtime 0, so equal files give equal archives.
    pub fn pack(&self) -> Result<Vec<u8>> {
        let fail = |e: std::io::Error| {
            Error::new(
                ErrorKind::Internal,
                format!("packing an artifact archive: {e}"),
            )
        };
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let mut files = vec![(PROGRAM_ENTRY, &self.program)];
        if let Some(meta) = &self.metadata {
            files.push((METADATA_ENTRY, meta));
        }
        for (name, bytes) in files {
            let mut header = tar::Header::new_ustar();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            header.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut header, name, &bytes[..])
                .map_err(fail)?;
        }
        let gz = tar.into_inner().map_err(fail)?;
        let mut bytes = gz.finish().map_err(fail)?;
        bytes.flush().map_err(fail)?;
        Ok(bytes)
    }

    /// Reads a tar.gz archive: regular files `program.json` (required) and
    /// `metadata.json` (optional), each at most once, named bare or as `./name`; a `./`
    /// directory entry is allowed; anything else is refused, as is any file larger than
    /// [`MAX_ARCHIVE_BYTES`]. Errors are [`ErrorKind::Artifact`] starting with `archive:`.
    pub fn unpack(bytes: &[u8]) -> Result<ArtifactArchive> {
        let bad = |m: String| Error::new(ErrorKind::Artifact, format!("archive: {m}"));
        let gz = flate2::read::GzDecoder::new(bytes);
        let mut tar = tar::Archive::new(gz);
        let mut program = None;
        let mut metadata = None;
        let entries = tar
            .entries()
            .map_err(|e| bad(format!("not a tar.gz archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(format!("not a tar.gz archive: {e}")))?;
            let path = entry
                .path()
                .map_err(|e| bad(format!("unreadable entry name: {e}")))?
                .to_string_lossy()
                .into_owned();
            let name = path.strip_prefix("./").unwrap_or(&path);
            let kind = entry.header().entry_type();
            if kind.is_dir() && (name.is_empty() || name == ".") {
                continue;
            }
            let slot = match name {
                PROGRAM_ENTRY => &mut program,
                METADATA_ENTRY => &mut metadata,
                _ => {
                    return Err(bad(format!(
                        "unexpected entry `{path}` (only {PROGRAM_ENTRY} and {METADATA_ENTRY} are allowed)"
                    )))
                }
            };
            if !kind.is_file() {
                return Err(bad(format!("`{path}` is not a regular file")));
            }
            if slot.is_some() {
                return Err(bad(format!("`{name}` appears twice")));
            }
            let size = entry.header().size().unwrap_or(u64::MAX);
            if size > MAX_ARCHIVE_BYTES {
                return Err(bad(format!(
                    "`{name}` is {size} bytes, over the limit of {MAX_ARCHIVE_BYTES}"
                )));
            }
            let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            (&mut entry)
                .take(MAX_ARCHIVE_BYTES + 1)
                .read_to_end(&mut data)
                .map_err(|e| bad(format!("reading `{name}`: {e}")))?;
            *slot = Some(data);
        }
        let program = program.ok_or_else(|| bad(format!("no {PROGRAM_ENTRY}")))?;
        Ok(ArtifactArchive { program, metadata })
    }
}

/// Signs artifact archives with an ed25519 key: the signature of version `N` is over the
/// ASCII string of its archive's lowercase hex SHA-256 (64 bytes), base64-encoded.
///
/// ```
/// use loopai_core::ArtifactSigner;
///
/// let signer = ArtifactSigner::from_key_text(&"07".repeat(32))?;
/// let sha = "ab".repeat(32);
/// let signature = signer.sign(&sha);
/// loopai_core::verify_artifact_signature(&[signer.public_key_hex()], &sha, &signature)?;
/// # Ok::<(), loopai_core::Error>(())
/// ```
#[derive(Clone)]
pub struct ArtifactSigner {
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for ArtifactSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArtifactSigner")
            .field("public_key", &self.public_key_hex())
            .finish_non_exhaustive()
    }
}

impl ArtifactSigner {
    /// A signer from the 32-byte secret key (seed) written as 64 hex digits or base64,
    /// surrounding whitespace ignored. [`ErrorKind::Config`] otherwise.
    pub fn from_key_text(text: &str) -> Result<ArtifactSigner> {
        let seed = decode_ed25519_public_key(text).ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                "signing key: expected a 32-byte ed25519 secret key in hex (64 digits) or base64",
            )
        })?;
        Ok(ArtifactSigner {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// A new random key (from the operating system's generator).
    pub fn generate() -> Result<ArtifactSigner> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| Error::new(ErrorKind::Io, format!("generating a signing key: {e}")))?;
        Ok(ArtifactSigner {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// The secret key as 64 hex digits (what [`from_key_text`](Self::from_key_text) reads).
    pub fn secret_key_hex(&self) -> String {
        hex::encode(self.key.to_bytes())
    }

    /// The public key as 64 hex digits, for `cloud.trusted_keys`.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    /// The base64 signature of `archive_sha256` (the hex string, as ASCII).
    pub fn sign(&self, archive_sha256: &str) -> String {
        let signature = self.key.sign(archive_sha256.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(signature.to_bytes())
    }
}

/// Checks that `signature` (base64) is a valid ed25519 signature of the ASCII string
/// `archive_sha256` by one of `trusted_keys` (32-byte public keys in hex or base64).
/// [`ErrorKind::Artifact`] otherwise, saying why.
pub fn verify_artifact_signature(
    trusted_keys: &[String],
    archive_sha256: &str,
    signature: &str,
) -> Result<()> {
    let bad = |m: &str| Error::new(ErrorKind::Artifact, m.to_owned());
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| bad("signature: not base64"))?;
    let bytes: [u8; 64] = bytes
        .try_into()
        .map_err(|_| bad("signature: not 64 bytes"))?;
    let signature = ed25519_dalek::Signature::from_bytes(&bytes);
    for key in trusted_keys {
        let Some(key) = decode_ed25519_public_key(key) else {
            continue;
        };
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&key) else {
            continue;
        };
        if key.verify(archive_sha256.as_bytes(), &signature).is_ok() {
            return Ok(());
        }
    }
    Err(bad(
        "signature: not valid for any key in cloud.trusted_keys",
    ))
}

/// Decodes an ed25519 public key written as 64 hex digits or as base64 (standard
/// alphabet, padding optional) of 32 bytes.
pub(crate) fn decode_ed25519_public_key(text: &str) -> Option<[u8; 32]> {
    use base64::Engine as _;
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).ok()?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .ok()?
    };
    bytes.try_into().ok()
}

/// `{api_url}/api/v1/artifacts/{task}` (a trailing `/` of `api_url` is ignored).
pub(crate) fn task_url(api_url: &str, task: &str) -> String {
    format!("{}/api/v1/artifacts/{task}", api_url.trim_end_matches('/'))
}

/// `{api_url}/api/v1/notifications/{task}`.
pub(crate) fn notifications_url(api_url: &str, task: &str) -> String {
    format!(
        "{}/api/v1/notifications/{task}",
        api_url.trim_end_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_round_trip_and_are_deterministic() {
        let a = ArtifactArchive::new(b"{\"p\":1}".to_vec(), Some(b"{\"m\":2}".to_vec()));
        let bytes = a.pack().unwrap();
        assert_eq!(bytes, a.pack().unwrap());
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip");
        assert_eq!(ArtifactArchive::unpack(&bytes).unwrap(), a);
    }

    type Entry<'a> = (&'a str, &'a [u8], tar::EntryType);

    fn tar_gz(entries: &[Entry]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (name, data, kind) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            // Raw name bytes: `set_path` refuses `..`, a hostile archive does not.
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            tar.append(&h, *data).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn archives_made_by_tar_in_the_directory_are_accepted() {
        let bytes = tar_gz(&[
            ("./", b"", tar::EntryType::Directory),
            ("./metadata.json", b"{}", tar::EntryType::Regular),
            ("./program.json", b"[]", tar::EntryType::Regular),
        ]);
        let a = ArtifactArchive::unpack(&bytes).unwrap();
        assert_eq!(
            (a.program, a.metadata),
            (b"[]".to_vec(), Some(b"{}".to_vec()))
        );
    }

    #[test]
    fn unexpected_or_duplicate_entries_are_refused() {
        let cases: [(&[Entry], &str); 4] = [
            (
                &[("../program.json", b"[]", tar::EntryType::Regular)],
                "archive: unexpected entry `../program.json`",
            ),
            (
                &[
                    ("program.json", b"[]", tar::EntryType::Regular),
                    ("program.json", b"[]", tar::EntryType::Regular),
                ],
                "archive: `program.json` appears twice",
            ),
            (
                &[("program.json", b"", tar::EntryType::Symlink)],
                "archive: `program.json` is not a regular file",
            ),
            (
                &[("metadata.json", b"{}", tar::EntryType::Regular)],
                "archive: no program.json",
            ),
        ];
        for (entries, expected) in cases {
            let err = ArtifactArchive::unpack(&tar_gz(entries)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Artifact);
            assert!(err.message().starts_with(expected), "{err}");
        }
        let err = ArtifactArchive::unpack(b"{\"not\": \"gzip\"}").unwrap_err();
        assert!(
            err.message().starts_with("archive: not a tar.gz archive"),
            "{err}"
        );
    }

    fn entry(archive: &[u8]) -> VersionInfo {
        VersionInfo::new(3, archive, "2026-01-01T00:00:00.000Z", &"c".repeat(64))
    }

    #[test]
    fn downloads_are_checked_against_size_hash_and_signature() {
        let archive = b"archive bytes".to_vec();
        let signer = ArtifactSigner::generate().unwrap();
        let other = ArtifactSigner::generate().unwrap();
        let trusted = vec![signer.public_key_hex()];
        let e = entry(&archive);
        e.verify_download(&archive, &[], "v3").unwrap();

        let mut tampered = archive.clone();
        tampered[0] ^= 1;
        let err = e.verify_download(&tampered, &[], "v3").unwrap_err();
        assert!(err.message().starts_with("v3: sha256 mismatch"), "{err}");
        let err = e.verify_download(b"short", &[], "v3").unwrap_err();
        assert!(err.message().starts_with("v3: size mismatch"), "{err}");

        let err = e.verify_download(&archive, &trusted, "v3").unwrap_err();
        assert!(err.message().contains("unsigned"), "{err}");
        let bad = e.clone().with_signature(Some(other.sign(&e.sha256)));
        let err = bad.verify_download(&archive, &trusted, "v3").unwrap_err();
        assert_eq!(
            err.message(),
            "v3: signature: not valid for any key in cloud.trusted_keys"
        );
        let good = e.clone().with_signature(Some(signer.sign(&e.sha256)));
        good.verify_download(&archive, &trusted, "v3").unwrap();
        // A key in base64 works too, and a signature of another hash does not.
        let b64 = base64::engine::general_purpose::STANDARD
            .encode(hex::decode(signer.public_key_hex()).unwrap());
        good.verify_download(&archive, &[b64], "v3").unwrap();
        let replayed = e.with_signature(Some(signer.sign(&"d".repeat(64))));
        assert!(replayed.verify_download(&archive, &trusted, "v3").is_err());
    }

    #[test]
    fn signer_round_trips_through_its_key_text() {
        let signer = ArtifactSigner::generate().unwrap();
        let again =
            ArtifactSigner::from_key_text(&format!("{}\n", signer.secret_key_hex())).unwrap();
        assert_eq!(again.public_key_hex(), signer.public_key_hex());
        assert!(!format!("{signer:?}").contains(&signer.secret_key_hex()));
        assert_eq!(
            ArtifactSigner::from_key_text("nope").unwrap_err().kind(),
            ErrorKind::Config
        );
    }

    #[test]
    fn version_lists_are_checked() {
        let list = VersionList::new(
            "spam",
            vec![entry(b"b"), {
                let mut e = entry(b"a");
                e.version = 1;
                e
            }],
        );
        assert_eq!(list.versions[0].version, 1);
        let parsed = VersionList::parse(&list.to_json(), "spam", "u").unwrap();
        assert_eq!(parsed, list);
        assert_eq!(parsed.latest().unwrap().version, 3);
        let err = VersionList::parse(&list.to_json(), "ham", "u").unwrap_err();
        assert_eq!(err.message(), "u: task: expected \"ham\", got \"spam\"");
        let mut dup = list.clone();
        dup.versions[0].version = 3;
        let err = VersionList::parse(&dup.to_json(), "spam", "u").unwrap_err();
        assert!(err.message().contains("versions[1].version: 3"), "{err}");
        let mut bad_hash = list;
        bad_hash.versions[1].sha256 = "XYZ".into();
        let err = VersionList::parse(&bad_hash.to_json(), "spam", "u").unwrap_err();
        assert_eq!(
            err.message(),
            "u: versions[1].sha256: expected 64 lowercase hex digits"
        );
        let err = VersionList::parse(b"[]", "spam", "u").unwrap_err();
        assert!(
            err.message().starts_with("u: invalid versions list"),
            "{err}"
        );
    }
}
