//! Encryption at rest (`storage.encryption`): AES-256-GCM in self-delimiting
//! authenticated frames, so that crash recovery can still cut a torn tail and a reader
//! never decrypts garbage. A low module: the dataset store (execution and validation logs,
//! daily analytics) and the telemetry spool both use it.
//!
//! File format (documented in `docs/datasets.md`):
//!
//! ```text
//! header  = magic "LOOPAIE1" (8 bytes) | version 1 (1 byte) | key id (8 bytes)
//! frame   = length u32 LE (of what follows: 12 + plaintext + 16)
//!         | nonce (12 bytes) | ciphertext | tag (16 bytes)
//! ```
//!
//! * Logs: one frame per record (a JSONL line, newline included): a torn append leaves an
//!   incomplete last frame, which is cut like a torn line ([`Sealer`], [`open_frames`]).
//! * Documents (a daily-stats file, a telemetry spool batch): the header and exactly one
//!   frame holding the whole file, written atomically, so never torn: anything else is
//!   damage ([`seal_document`], [`open_document`]).
//! * The key id is the first 8 bytes of SHA-256 of the key: a reader picks the key among
//!   those configured (the current one and old ones), so rotated files stay readable.
//! * The frame's authenticated data is the header: a frame moved to a file of another key
//!   or version fails authentication.
//! * Nonces: each opening of a file for appending draws a random 64-bit prefix from the
//!   operating system's CSPRNG and counts frames in the low 32 bits. Nonces are unique in
//!   a file by the counter, and across openings unless two 64-bit random prefixes collide
//!   (a birthday bound of about 2^-33 after 2^16 openings per key), without a system call
//!   per record as a random nonce per frame would cost. A document is one opening.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use sha2::{Digest, Sha256};

use crate::config::{DeploymentConfig, EncryptionConfig, KeySource};
use crate::error::{Error, ErrorKind, Result};

/// The first bytes of an encrypted file.
pub(crate) const MAGIC: &[u8; 8] = b"LOOPAIE1";
/// The format version after the magic.
pub(crate) const VERSION: u8 = 1;
/// Magic, version, key id.
pub(crate) const HEADER_LEN: usize = 8 + 1 + 8;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Largest frame accepted when reading (a length above it is damage, not a record).
const MAX_FRAME: usize = 64 << 20;

/// One AES-256 key and its id.
#[derive(Clone)]
pub(crate) struct DataKey {
    id: [u8; 8],
    /// ring's AES-256-GCM (the stitched AES-NI/CLMUL code of BoringSSL): the
    /// `rustls` dependency already brings it, and it seals several times faster than a
    /// block-at-a-time GHASH, which is what the writer's throughput pays.
    cipher: LessSafeKey,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataKey({})", hex::encode(self.id))
    }
}

impl DataKey {
    /// A key from its text: 32 bytes as 64 hex digits or as base64 (standard or URL-safe,
    /// padding optional). `what` names where it came from in errors.
    pub(crate) fn parse(text: &str, what: &str) -> Result<DataKey> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).ok()
        } else {
            let b64 = base64::engine::general_purpose::STANDARD;
            let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            b64.decode(text)
                .or_else(|_| url.decode(text.trim_end_matches('=')))
                .ok()
        };
        match bytes {
            Some(b) if b.len() == 32 => Ok(DataKey::from_bytes(&b)),
            Some(b) => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{what}: an encryption key must be 32 bytes (64 hex digits or 44 base64 characters), got {} bytes",
                    b.len()
                ),
            )),
            None => Err(Error::new(
                ErrorKind::Config,
                format!("{what}: not a key: expected 64 hex digits or base64 of 32 bytes"),
            )),
        }
    }

    fn from_bytes(bytes: &[u8]) -> DataKey {
        let digest = Sha256::digest(bytes);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        DataKey {
            id,
            cipher: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte AES-256 key"),
            ),
        }
    }

    /// The key id written in file headers (hex in messages).
    pub(crate) fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    /// A key read from a file; on Unix the file must not be readable by group or others.
    pub(crate) fn from_file(path: &Path, what: &str) -> Result<DataKey> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path)
                .map_err(|e| Error::io(format!("{what} {}", path.display()), e))?;
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "{what} {}: readable by others (mode {:o}); make it private: chmod 600",
                        path.display(),
                        mode & 0o777
                    ),
                ));
            }
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("{what} {}", path.display()), e))?;
        DataKey::parse(&text, &format!("{what} {}", path.display()))
    }
}

/// The keys of `storage.encryption` (encryption at rest, `docs/datasets.md`): the current
/// key encrypts new files, it and the `old_keys` decrypt. Loaded once with
/// [`KeyRing::from_config`]; cheap to clone, `Send + Sync`. Its `Debug` shows key ids only.
///
/// ```
/// use loopai_core::{DeploymentConfig, KeyRing};
///
/// std::env::set_var("DOC_LOOPAI_KEY", "11".repeat(32));
/// let config = DeploymentConfig::from_yaml_str(
///     "storage:\n  encryption:\n    key_env: DOC_LOOPAI_KEY\n",
///     "deployment.yaml",
/// )?;
/// let keys = KeyRing::from_config(&config)?.expect("storage.encryption is set");
/// let sealed = keys.seal_document(b"{\"secret\": 1}")?;
/// assert!(sealed.starts_with(b"LOOPAIE1"));
/// let plain = loopai_core::open_document_or_plain(&sealed, Some(&keys), "doc.json")?;
/// assert_eq!(&plain[..], b"{\"secret\": 1}");
/// # Ok::<(), loopai_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct KeyRing {
    current: DataKey,
    old: Vec<DataKey>,
}

impl KeyRing {
    /// The keys of `config.storage.encryption`, or `None` when it is not set. A missing
    /// environment variable, an unreadable or world-readable key file or a malformed key is
    /// an [`ErrorKind::Config`] error naming it (`storage.encryption.key_env ...`,
    /// `storage.encryption.key_file ...`, `storage.encryption.old_keys[i]...`).
    pub fn from_config(config: &DeploymentConfig) -> Result<Option<KeyRing>> {
        config.storage.encryption.as_ref().map(key_ring).transpose()
    }

    /// Seals a whole document (written atomically by the caller, so never torn) with the
    /// current key: the `LOOPAIE1` header and one frame. Read it back with
    /// [`open_document_or_plain`].
    pub fn seal_document(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        seal_document(&self.current, plaintext)
    }

    pub(crate) fn new(current: DataKey, old: Vec<DataKey>) -> KeyRing {
        KeyRing { current, old }
    }

    /// The key that encrypts new files.
    pub(crate) fn current(&self) -> &DataKey {
        &self.current
    }

    fn by_id(&self, id: &[u8]) -> Option<&DataKey> {
        std::iter::once(&self.current)
            .chain(&self.old)
            .find(|k| k.id == id)
    }
}

/// Loads the keys of `storage.encryption`: a missing variable, an unreadable file or a
/// malformed key is an [`ErrorKind::Config`] error naming it.
pub(crate) fn key_ring(config: &EncryptionConfig) -> Result<KeyRing> {
    let current = KeySource {
        key_env: config.key_env.clone(),
        key_file: config.key_file.clone(),
    };
    let current = load(&current, "storage.encryption")?;
    let old = config
        .old_keys
        .iter()
        .enumerate()
        .map(|(i, k)| load(k, &format!("storage.encryption.old_keys[{i}]")))
        .collect::<Result<Vec<_>>>()?;
    Ok(KeyRing::new(current, old))
}

fn load(source: &KeySource, what: &str) -> Result<DataKey> {
    source.check(what)?;
    match (&source.key_env, &source.key_file) {
        (Some(var), _) => {
            let text = std::env::var(var).map_err(|_| {
                Error::new(
                    ErrorKind::Config,
                    format!(
                        "{what}.key_env: the environment variable {var} is not set (or not UTF-8)"
                    ),
                )
            })?;
            DataKey::parse(&text, &format!("{what}.key_env {var}"))
        }
        (_, Some(path)) => DataKey::from_file(path, &format!("{what}.key_file")),
        _ => Err(Error::new(
            ErrorKind::Config,
            format!("{what}: give exactly one of key_env and key_file"),
        )),
    }
}

/// Prepares the log file `path` for appending frames of the current key of `keys`, as
/// the dataset writer does: a new (or empty) file gets the header of the current key; a
/// file of the current key has its torn tail (an incomplete or unauthentic last frame) cut
/// off; a plain file, or one of an old key, is first rewritten with the current key
/// (atomically, its torn last line left out). The whole file is read once.
pub(crate) fn prepare_append(path: &Path, keys: &KeyRing) -> std::io::Result<()> {
    prepare(path, keys).map_err(|e| match e {
        Prepare::Io(e) => e,
        Prepare::Crypt(e) => std::io::Error::other(e.to_string()),
    })
}

/// Why [`prepare`] failed: the file system, or the file's content (an error naming it).
enum Prepare {
    Io(std::io::Error),
    Crypt(Error),
}

impl From<std::io::Error> for Prepare {
    fn from(e: std::io::Error) -> Prepare {
        Prepare::Io(e)
    }
}

fn prepare(path: &Path, keys: &KeyRing) -> std::result::Result<(), Prepare> {
    use std::io;
    let what = path.display().to_string();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Prepare::Io(e)),
    };
    let crypt_error = Prepare::Crypt;
    if bytes.is_empty() || !is_current(&bytes, keys) {
        let sealed = if bytes.is_empty() {
            header(keys.current()).to_vec()
        } else {
            reseal(&bytes, keys, &what).map_err(crypt_error)?
        };
        crate::fsutil::write_atomic(path, &sealed)?;
        if !bytes.is_empty() {
            log::warn!(
                "loopai: {what}: rewritten encrypted with the current key {}",
                keys.current().id_hex()
            );
        }
    } else {
        let valid = open_frames(&bytes, keys, &what)
            .map_err(crypt_error)?
            .valid_len;
        if valid < bytes.len() as u64 {
            let file = std::fs::OpenOptions::new().write(true).open(path)?;
            file.set_len(valid)?;
            file.sync_all()?;
            log::warn!(
                "loopai: {what}: removed a torn tail of {} bytes left by an interrupted write",
                bytes.len() as u64 - valid
            );
        }
    }
    Ok(())
}

/// Seals the records appended to one encrypted log file (a JSONL file written a line at a
/// time, such as the gateway's call log), one frame per record, in the format of the
/// dataset's logs: a torn append leaves a torn tail that readers cut like a torn line.
pub struct LogSealer {
    sealer: Sealer,
}

impl fmt::Debug for LogSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogSealer({})", self.sealer.key.id_hex())
    }
}

impl LogSealer {
    /// Opens the log file `path` for appending records sealed with the current key of
    /// `keys`, first preparing it exactly as the dataset writer does: created with the
    /// header if new; a torn tail cut off; a file written in clear (before encryption was
    /// turned on) or with an old key rewritten atomically with the current key, so that
    /// every file is in one key and stays readable.
    ///
    /// Errors: [`ErrorKind::Io`] naming the file when it cannot be read or written, or is
    /// damaged before its last frame; [`ErrorKind::Config`] naming the file and the key id
    /// when its key is not among `keys`.
    pub fn open_append(path: &Path, keys: &KeyRing) -> Result<(std::fs::File, LogSealer)> {
        prepare(path, keys).map_err(|e| match e {
            Prepare::Io(e) => Error::io(format!("preparing {} for appending", path.display()), e),
            Prepare::Crypt(e) => e,
        })?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        Ok((
            file,
            LogSealer {
                sealer: Sealer::new(keys.current())?,
            },
        ))
    }

    /// Appends the frame of one record (a JSONL line, newline included) to `out`, to be
    /// written to the file [`open_append`](Self::open_append) returned.
    pub fn seal_into(&mut self, record: &[u8], out: &mut Vec<u8>) -> Result<()> {
        self.sealer.seal_into(record, out)
    }
}

/// The plaintext of a log file's bytes that may be plain (JSONL written before encryption
/// was turned on, returned as it is) or encrypted ([`LogSealer`]; decrypted with whichever
/// of `keys` its header names). `what` names the file in errors.
///
/// * An encrypted file's torn tail (an incomplete or unauthentic last frame) is left out,
///   as a reader skips a torn last line.
/// * A frame that fails authentication before the last one is an [`ErrorKind::Io`] error
///   naming the file and the offset.
/// * An encrypted file without `keys`, or of a key not among them, is an
///   [`ErrorKind::Config`] error naming the file.
pub fn open_log_or_plain<'a>(
    bytes: &'a [u8],
    keys: Option<&KeyRing>,
    what: &str,
) -> Result<std::borrow::Cow<'a, [u8]>> {
    if !is_encrypted(bytes) {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    let keys = keys.ok_or_else(|| no_key_error(what))?;
    open_frames(bytes, keys, what).map(|o| std::borrow::Cow::Owned(o.plaintext))
}

/// The error of meeting an encrypted file (named by `what`) without keys.
pub(crate) fn no_key_error(what: &str) -> Error {
    Error::new(
        ErrorKind::Config,
        format!("{what}: the file is encrypted (LOOPAIE1) and no key is configured: set storage.encryption (key_env or key_file) to read it"),
    )
}

/// Rewrites the bytes of a log file (plain JSONL, or encrypted with any key of `keys`)
/// as a file encrypted with the current key, one frame per whole line; a torn tail is
/// left out. For the writer, which only appends to files of the current key.
pub(crate) fn reseal(bytes: &[u8], keys: &KeyRing, what: &str) -> Result<Vec<u8>> {
    let plaintext = if is_encrypted(bytes)
        || bytes.len() < HEADER_LEN && MAGIC.starts_with(bytes) && !bytes.is_empty()
    {
        open_frames(bytes, keys, what)?.plaintext
    } else {
        let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        bytes[..end].to_vec()
    };
    let mut sealer = Sealer::new(keys.current())?;
    let mut out = sealer.header().to_vec();
    for line in plaintext.split_inclusive(|&b| b == b'\n') {
        sealer.seal_into(line, &mut out)?;
    }
    Ok(out)
}

/// Whether `bytes` (a whole file) is encrypted with the current key of `keys`.
pub(crate) fn is_current(bytes: &[u8], keys: &KeyRing) -> bool {
    bytes.len() >= HEADER_LEN && bytes[..HEADER_LEN] == header(keys.current())
}

/// The header of a file encrypted with `key`.
pub(crate) fn header(key: &DataKey) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8] = VERSION;
    h[9..].copy_from_slice(&key.id);
    h
}

/// Whether `bytes` (the start of a file) is an encrypted file.
pub(crate) fn is_encrypted(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Seals records for one opening of one file.
pub(crate) struct Sealer {
    key: DataKey,
    header: [u8; HEADER_LEN],
    prefix: [u8; 8],
    counter: u32,
}

impl Sealer {
    /// A sealer with a fresh random nonce prefix (from the OS CSPRNG).
    pub(crate) fn new(key: &DataKey) -> Result<Sealer> {
        let mut prefix = [0u8; 8];
        getrandom::fill(&mut prefix).map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("no randomness for an encryption nonce: {e}"),
            )
        })?;
        Ok(Sealer {
            key: key.clone(),
            header: header(key),
            prefix,
            counter: 0,
        })
    }

    /// The file header this sealer's frames belong to.
    pub(crate) fn header(&self) -> &[u8; HEADER_LEN] {
        &self.header
    }

    /// Appends the frame of `plaintext` to `out`. After 2^32 frames the prefix is drawn
    /// again (never a repeated nonce).
    pub(crate) fn seal_into(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if self.counter == u32::MAX {
            *self = Sealer::new(&self.key)?;
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..8].copy_from_slice(&self.prefix);
        nonce[8..].copy_from_slice(&self.counter.to_be_bytes());
        self.counter += 1;
        let len = u32::try_from(NONCE_LEN + plaintext.len() + TAG_LEN)
            .map_err(|_| Error::new(ErrorKind::Internal, "a record over 4 GiB cannot be framed"))?;
        out.reserve(4 + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plaintext);
        // Sealed in place: no allocation per record.
        let tag = self
            .key
            .cipher
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&self.header),
                &mut out[start..],
            )
            .map_err(|_| Error::new(ErrorKind::Internal, "AES-GCM encryption failed"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }
}

/// What [`open_frames`] found in an encrypted file.
#[derive(Debug)]
pub(crate) struct Opened {
    /// The plaintext of every whole, authentic frame, concatenated (JSONL).
    pub plaintext: Vec<u8>,
    /// Length of the file up to the end of the last whole frame: where a torn tail
    /// (an incomplete or unauthentic last frame) begins.
    pub valid_len: u64,
}

/// The key of an encrypted file's header (`bytes` holds at least [`HEADER_LEN`] bytes):
/// a header that is not ours is damage, a key id that no configured key has is a
/// [`ErrorKind::Config`] error naming it.
fn header_key<'k>(bytes: &[u8], keys: &'k KeyRing, what: &str) -> Result<&'k DataKey> {
    if !is_encrypted(bytes) {
        return Err(damaged(
            what,
            0,
            "not an encrypted file (no LOOPAIE1 header)",
        ));
    }
    if bytes[8] != VERSION {
        return Err(damaged(
            what,
            8,
            &format!(
                "encryption format version {} is not supported (only 1)",
                bytes[8]
            ),
        ));
    }
    keys.by_id(&bytes[9..HEADER_LEN]).ok_or_else(|| {
        Error::new(
            ErrorKind::Config,
            format!(
                "{what}: encrypted with key {}, which is not among the configured keys (current {}; add the old key to storage.encryption.old_keys)",
                hex::encode(&bytes[9..HEADER_LEN]),
                keys.current.id_hex()
            ),
        )
    })
}

/// Decrypts an encrypted log file's bytes. `what` names the file in errors.
///
/// * A last frame that is incomplete, or complete but unauthentic (a torn write that left
///   garbage), is a torn tail: left out, `valid_len` says where it starts.
/// * A frame that fails authentication before the last one is an error naming the file
///   and the offset: the file was damaged or tampered with, and nothing is made up.
/// * A key id that no configured key has is an error naming it.
pub(crate) fn open_frames(bytes: &[u8], keys: &KeyRing, what: &str) -> Result<Opened> {
    if bytes.len() < HEADER_LEN {
        if MAGIC.starts_with(&bytes[..bytes.len().min(8)]) {
            // A header cut by a crash right after creation: nothing was written yet.
            return Ok(Opened {
                plaintext: Vec::new(),
                valid_len: 0,
            });
        }
        return Err(damaged(what, 0, "too short for the encryption header"));
    }
    let header = &bytes[..HEADER_LEN];
    let key = header_key(bytes, keys, what)?;
    let mut plaintext = Vec::with_capacity(bytes.len());
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let torn = Opened {
            plaintext: Vec::new(),
            valid_len: at as u64,
        };
        if rest.len() < 4 {
            return Ok(Opened { plaintext, ..torn });
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if !(NONCE_LEN + TAG_LEN..=MAX_FRAME).contains(&len) {
            if is_last_region(rest, len) {
                return Ok(Opened { plaintext, ..torn });
            }
            return Err(damaged(
                what,
                at as u64,
                &format!("frame length {len} is impossible"),
            ));
        }
        if rest.len() < 4 + len {
            return Ok(Opened { plaintext, ..torn });
        }
        let (nonce, sealed) = rest[4..4 + len].split_at(NONCE_LEN);
        match open_into(key, nonce, sealed, header, &mut plaintext) {
            Ok(()) => {}
            Err(()) if at + 4 + len == bytes.len() => return Ok(Opened { plaintext, ..torn }),
            Err(()) => {
                return Err(damaged(
                    what,
                    at as u64,
                    "a frame fails authentication (damaged, tampered with, or another key)",
                ))
            }
        }
        at += 4 + len;
    }
    Ok(Opened {
        plaintext,
        valid_len: at as u64,
    })
}

/// Seals a whole document (a daily-stats file, a telemetry spool batch) with `key`: the
/// header and one frame. The caller writes it atomically, so it is never torn.
pub(crate) fn seal_document(key: &DataKey, plaintext: &[u8]) -> Result<Vec<u8>> {
    let mut sealer = Sealer::new(key)?;
    let mut out = Vec::with_capacity(HEADER_LEN + 4 + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(sealer.header());
    sealer.seal_into(plaintext, &mut out)?;
    Ok(out)
}

/// Opens a document written by [`seal_document`] with whichever of `keys` its header
/// names. Unlike a log, a document is written atomically: a short, extended or
/// unauthentic one is damage, an [`ErrorKind::Io`] error naming the file (`what`) and the
/// offset; an unknown key id is an [`ErrorKind::Config`] error naming it.
pub(crate) fn open_document(bytes: &[u8], keys: &KeyRing, what: &str) -> Result<Vec<u8>> {
    if bytes.len() < HEADER_LEN {
        return Err(damaged(what, 0, "too short for the encryption header"));
    }
    let key = header_key(bytes, keys, what)?;
    let rest = &bytes[HEADER_LEN..];
    if rest.len() < 4 + NONCE_LEN + TAG_LEN {
        return Err(damaged(what, HEADER_LEN as u64, "the frame is cut short"));
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    if len != rest.len() - 4 {
        return Err(damaged(
            what,
            HEADER_LEN as u64,
            &format!(
                "the frame length {len} does not match the file ({} bytes after the header)",
                rest.len()
            ),
        ));
    }
    let (nonce, sealed) = rest[4..].split_at(NONCE_LEN);
    let mut plaintext = Vec::with_capacity(sealed.len());
    open_into(key, nonce, sealed, &bytes[..HEADER_LEN], &mut plaintext).map_err(|()| {
        damaged(
            what,
            HEADER_LEN as u64,
            "the frame fails authentication (damaged, tampered with, or another key)",
        )
    })?;
    Ok(plaintext)
}

/// Decrypts one frame's `sealed` bytes (ciphertext and tag) and appends the plaintext to
/// `out`; on failure `out` is left as it was and nothing is revealed.
fn open_into(
    key: &DataKey,
    nonce: &[u8],
    sealed: &[u8],
    aad: &[u8],
    out: &mut Vec<u8>,
) -> std::result::Result<(), ()> {
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| ())?;
    let start = out.len();
    out.extend_from_slice(sealed);
    match key
        .cipher
        .open_in_place(nonce, Aad::from(aad), &mut out[start..])
    {
        Ok(plain) => {
            let n = plain.len();
            out.truncate(start + n);
            Ok(())
        }
        Err(_) => {
            out.truncate(start);
            Err(())
        }
    }
}

/// The plaintext of a document that may be plain (written before encryption was turned
/// on, returned as it is) or sealed ([`KeyRing::seal_document`]). A sealed one without `keys` is a
/// configuration error naming it; a damaged one an [`ErrorKind::Io`] error naming it (`what`)
/// and the offset; one of a key not among `keys` a configuration error naming the key id.
pub fn open_document_or_plain<'a>(
    bytes: &'a [u8],
    keys: Option<&KeyRing>,
    what: &str,
) -> Result<std::borrow::Cow<'a, [u8]>> {
    if !is_encrypted(bytes) {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    let keys = keys.ok_or_else(|| no_key_error(what))?;
    open_document(bytes, keys, what).map(std::borrow::Cow::Owned)
}

/// A bad length at the very end (zeroed blocks of a torn write) is a torn tail; one with
/// data after a plausible frame is damage.
fn is_last_region(rest: &[u8], _len: usize) -> bool {
    rest.iter().all(|&b| b == 0) || rest.len() < 4 + NONCE_LEN + TAG_LEN
}

fn damaged(what: &str, offset: u64, why: &str) -> Error {
    Error::new(ErrorKind::Io, format!("{what}: at byte {offset}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> DataKey {
        DataKey::parse(&hex::encode([byte; 32]), "test").unwrap()
    }

    fn file(key: &DataKey, records: &[&str]) -> Vec<u8> {
        let mut sealer = Sealer::new(key).unwrap();
        let mut out = sealer.header().to_vec();
        for r in records {
            sealer.seal_into(r.as_bytes(), &mut out).unwrap();
        }
        out
    }

    #[test]
    fn frames_round_trip_and_reveal_no_plaintext() {
        let k = key(1);
        let bytes = file(&k, &["{\"a\":1}\n", "{\"secret\":2}\n"]);
        assert!(is_encrypted(&bytes));
        assert!(!bytes.windows(6).any(|w| w == b"secret"));
        let keys = KeyRing::new(k, Vec::new());
        let opened = open_frames(&bytes, &keys, "f").unwrap();
        assert_eq!(opened.plaintext, b"{\"a\":1}\n{\"secret\":2}\n");
        assert_eq!(opened.valid_len, bytes.len() as u64);
    }

    /// The cipher is standard AES-256-GCM (files written by any implementation read
    /// back): test cases 13 and 14 of the GCM specification (McGrew & Viega), zero key
    /// and nonce, no associated data.
    #[test]
    fn the_cipher_matches_the_gcm_specification_vectors() {
        let k = DataKey::from_bytes(&[0u8; 32]);
        let seal = |plaintext: &[u8]| {
            let mut buf = plaintext.to_vec();
            let tag = k
                .cipher
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key([0u8; NONCE_LEN]),
                    Aad::empty(),
                    &mut buf,
                )
                .unwrap();
            buf.extend_from_slice(tag.as_ref());
            hex::encode(buf)
        };
        assert_eq!(seal(b""), "530f8afbc74536b9a963b4f1c4cb738b");
        assert_eq!(
            seal(&[0u8; 16]),
            "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"
        );
        let sealed = hex::decode(seal(&[0u8; 16])).unwrap();
        let mut out = b"kept".to_vec();
        open_into(&k, &[0u8; NONCE_LEN], &sealed, b"", &mut out).unwrap();
        assert_eq!(out, [&b"kept"[..], &[0u8; 16]].concat());
        let mut bad = sealed.clone();
        bad[0] ^= 1;
        assert!(open_into(&k, &[0u8; NONCE_LEN], &bad, b"", &mut out).is_err());
        assert_eq!(out.len(), 20, "a failed open appends nothing");
    }

    #[test]
    fn keys_parse_from_hex_and_base64_and_bad_keys_name_the_source() {
        let raw = [7u8; 32];
        let a = DataKey::parse(&hex::encode(raw), "k").unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let b = DataKey::parse(&format!(" {b64}\n"), "k").unwrap();
        assert_eq!(a.id_hex(), b.id_hex());
        let err = DataKey::parse("abcd", "storage.encryption.key_env LOOPAI_KEY").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.to_string()
                .starts_with("storage.encryption.key_env LOOPAI_KEY: "),
            "{err}"
        );
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        assert!(DataKey::parse(&short, "k")
            .unwrap_err()
            .to_string()
            .contains("got 16 bytes"));
    }

    #[test]
    fn a_torn_last_frame_is_cut_and_never_decrypted() {
        let k = key(2);
        let whole = file(&k, &["one\n", "two\n", "three\n"]);
        let keys = KeyRing::new(k, Vec::new());
        let full = open_frames(&whole, &keys, "f").unwrap();
        for cut in HEADER_LEN..whole.len() {
            let opened = open_frames(&whole[..cut], &keys, "f").unwrap();
            assert!(
                full.plaintext.starts_with(&opened.plaintext),
                "cut at {cut}"
            );
            assert!(opened.valid_len as usize <= cut);
            assert!(opened.plaintext.ends_with(b"\n") || opened.plaintext.is_empty());
        }
        // Zeroed blocks after the last frame (a torn write) are a torn tail too.
        let mut zeroed = whole.clone();
        zeroed.extend_from_slice(&[0u8; 4096]);
        let opened = open_frames(&zeroed, &keys, "f").unwrap();
        assert_eq!(opened.plaintext, full.plaintext);
        assert_eq!(opened.valid_len, whole.len() as u64);
    }

    #[test]
    fn a_damaged_frame_in_the_middle_is_an_error_naming_file_and_offset() {
        let k = key(3);
        let mut bytes = file(&k, &["one\n", "two\n"]);
        let second = HEADER_LEN + 4 + NONCE_LEN + 4 + TAG_LEN;
        bytes[HEADER_LEN + 4 + NONCE_LEN] ^= 1; // the first frame's ciphertext
        let keys = KeyRing::new(k, Vec::new());
        let err = open_frames(&bytes, &keys, "executions/2025-11-25.jsonl").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(
            err.to_string().starts_with(&format!(
                "executions/2025-11-25.jsonl: at byte {HEADER_LEN}: a frame fails authentication"
            )),
            "{err}"
        );
        assert!(second < bytes.len());
    }

    #[test]
    fn rotation_keeps_old_files_readable_and_an_unknown_key_is_named() {
        let (old, new) = (key(4), key(5));
        let bytes = file(&old, &["kept\n"]);
        let rotated = KeyRing::new(new.clone(), vec![old.clone()]);
        assert_eq!(
            open_frames(&bytes, &rotated, "f").unwrap().plaintext,
            b"kept\n"
        );
        let missing = KeyRing::new(new, Vec::new());
        let err = open_frames(&bytes, &missing, "f").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains(&old.id_hex()), "{err}");
        // A frame cannot be moved into a file of another key.
        let other = file(&key(6), &[]);
        let mut spliced = other.clone();
        spliced.extend_from_slice(&bytes[HEADER_LEN..]);
        let keys = KeyRing::new(key(6), vec![old]);
        let opened = open_frames(&spliced, &keys, "f").unwrap();
        assert!(
            opened.plaintext.is_empty(),
            "a foreign frame is never decrypted"
        );
    }

    #[test]
    fn nonces_never_repeat_within_an_opening_and_differ_across_openings() {
        let k = key(7);
        let mut a = Sealer::new(&k).unwrap();
        let b = Sealer::new(&k).unwrap();
        assert_ne!(a.prefix, b.prefix);
        let mut out = Vec::new();
        a.seal_into(b"x", &mut out).unwrap();
        a.seal_into(b"x", &mut out).unwrap();
        let first = &out[4..4 + NONCE_LEN];
        let frame = 4 + NONCE_LEN + 1 + TAG_LEN;
        let second = &out[frame + 4..frame + 4 + NONCE_LEN];
        assert_ne!(first, second);
        assert_ne!(out[4 + NONCE_LEN..frame], out[frame + 4 + NONCE_LEN..]);
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, hex::encode([9u8; 32])).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = DataKey::from_file(&path, "storage.encryption.key_file").unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        DataKey::from_file(&path, "storage.encryption.key_file").unwrap();
    }

    /// The public API the gateway uses: a log opened for appending is prepared as the
    /// dataset writer prepares its own (plain file resealed, torn tail cut), and reads
    /// back plain or encrypted.
    #[test]
    fn log_sealer_reseals_plain_files_cuts_torn_tails_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calls-2026-12-07.jsonl");
        std::fs::write(&path, b"{\"secret\":1}\n{\"torn").unwrap();
        let plain = std::fs::read(&path).unwrap();
        assert_eq!(
            &open_log_or_plain(&plain, None, "f").unwrap()[..],
            &plain[..],
            "a plain file is returned as it is"
        );
        let keys = KeyRing::new(key(8), Vec::new());
        let append = |record: &[u8]| {
            let (mut file, mut sealer) = LogSealer::open_append(&path, &keys).unwrap();
            let mut out = Vec::new();
            sealer.seal_into(record, &mut out).unwrap();
            std::io::Write::write_all(&mut file, &out).unwrap();
        };
        append(b"{\"secret\":2}\n");
        let bytes = std::fs::read(&path).unwrap();
        assert!(is_current(&bytes, &keys));
        assert!(!bytes.windows(6).any(|w| w == b"secret"));
        let read = |bytes: &[u8]| open_log_or_plain(bytes, Some(&keys), "f").unwrap().to_vec();
        assert_eq!(read(&bytes), b"{\"secret\":1}\n{\"secret\":2}\n");
        // A torn last frame is left out by readers and cut by the next opening.
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert_eq!(read(&bytes[..bytes.len() - 3]), b"{\"secret\":1}\n");
        append(b"{\"secret\":3}\n");
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(read(&bytes), b"{\"secret\":1}\n{\"secret\":3}\n");
        let other = KeyRing::new(key(9), Vec::new());
        let err = LogSealer::open_append(&path, &other).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("{}: encrypted with key", path.display())),
            "{err}"
        );
        let err = open_log_or_plain(&bytes, None, "calls.jsonl").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().starts_with("calls.jsonl: "), "{err}");
    }

    #[test]
    fn the_public_key_ring_is_send_and_sync_and_loads_from_the_config() {
        fn shared<T: Send + Sync>() {}
        shared::<KeyRing>();
        shared::<LogSealer>();
        let none = DeploymentConfig::from_yaml_str("storage: {}\n", "t").unwrap();
        assert!(KeyRing::from_config(&none).unwrap().is_none());
        let missing = DeploymentConfig::from_yaml_str(
            "storage:\n  encryption:\n    key_env: LOOPAI_CRYPT_TEST_UNSET\n",
            "t",
        )
        .unwrap();
        let err = KeyRing::from_config(&missing).unwrap_err();
        assert!(
            err.to_string().starts_with("storage.encryption.key_env: "),
            "{err}"
        );
    }
}
