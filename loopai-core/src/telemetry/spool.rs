//! The on-disk spool: `<data_dir>/telemetry/spool/<task>/`. Every cut batch is written
//! here (gzip JSON, exactly the upload body) before any upload is tried, and deleted once
//! the collector accepted it or refused it for good.
//!
//! * Names are `<seq>-<batch_id>.json.gz` with `seq` a 16-digit counter, so that sorting
//!   names gives the order batches were cut in; a restart continues after the highest `seq`.
//! * Files are written atomically (temporary sibling, fsync, rename, directory fsync).
//! * The total size is bounded: a new batch first evicts the oldest ones (never the one
//!   being uploaded); a batch larger than the whole bound is not kept. Both are counted.
//! * A file that does not decompress or parse is moved to `corrupt/` (the 16 newest are
//!   kept) with a warning naming it.
//! * With `storage.encryption`, each file is sealed with the current key as one
//!   authenticated frame (`crate::crypt`, the format of the dataset files) and opened
//!   again before upload: the body sent is the plain gzip JSON. Plain files (spooled
//!   before encryption was turned on) and files of an old key listed in `old_keys` are
//!   still sent; one that fails authentication, or whose key is not configured, is moved
//!   to `corrupt/` like any unreadable file.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use uuid::Uuid;

use crate::crypt::{self, KeyRing};
use crate::error::{Error, Result};
use crate::fsutil::{
    create_dir_all_durable, is_stale, remove_if_exists, sync_dir, write_atomic, TMP_PREFIX,
};

/// Suffix of spool files.
const SUFFIX: &str = ".json.gz";
/// Corrupt files kept in `corrupt/` for inspection.
const KEEP_CORRUPT: usize = 16;
/// Temporaries older than this are crash leftovers (a live writer renames within seconds).
const STALE_TMP: Duration = Duration::from_secs(3600);
/// Largest decompressed batch accepted when verifying a file (guards against gzip bombs).
const MAX_DECOMPRESSED: u64 = 512 << 20;

/// What happened to the spool when a batch was added.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PushOutcome {
    /// Older batches deleted to make room.
    pub evicted: u64,
    /// The new batch alone is larger than the bound and was not kept.
    pub rejected: bool,
}

#[derive(Debug, Default)]
struct State {
    /// File name -> size in bytes, in cut order.
    files: BTreeMap<String, u64>,
    bytes: u64,
    next_seq: u64,
    in_flight: Option<String>,
}

/// One task's spool directory.
#[derive(Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// `storage.encryption`: files are sealed with the current key.
    keys: Option<Arc<KeyRing>>,
    state: Mutex<State>,
}

/// The sequence number of a spool file name, if it is one.
fn parse_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (seq, id) = stem.split_once('-')?;
    if seq.len() != 16 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Uuid::try_parse(id).ok()?;
    seq.parse().ok()
}

impl Spool {
    /// Opens (creating) the spool at `dir`, bounded by `max_bytes`: lists what an earlier
    /// run left, removes stale temporaries, and evicts the oldest files over the bound.
    /// With `keys`, new files are sealed with the current key and sealed files are opened
    /// with any of them. Returns the spool and how many files were evicted.
    pub(crate) fn open(
        dir: &Path,
        max_bytes: u64,
        keys: Option<Arc<KeyRing>>,
    ) -> Result<(Spool, u64)> {
        create_dir_all_durable(dir)?;
        let mut state = State::default();
        let entries = fs::read_dir(dir).map_err(|e| Error::io(dir.display(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(dir.display(), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            if name.starts_with(TMP_PREFIX) {
                if is_stale(&meta, STALE_TMP) {
                    let _ = remove_if_exists(&entry.path());
                }
                continue;
            }
            match parse_name(&name) {
                Some(seq) => {
                    state.next_seq = state.next_seq.max(seq + 1);
                    state.bytes += meta.len();
                    state.files.insert(name, meta.len());
                }
                None if name.ends_with(SUFFIX) => {
                    log::warn!(
                        "loopai: telemetry spool file {} has an unexpected name; moved aside",
                        entry.path().display()
                    );
                    move_aside(dir, &name);
                }
                None => {}
            }
        }
        let spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            keys,
            state: Mutex::new(state),
        };
        let evicted = {
            let mut state = spool.state.lock();
            spool.evict(&mut state, 0)
        };
        Ok((spool, evicted))
    }

    /// The spool directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// `(batches, bytes)` currently spooled.
    pub(crate) fn stats(&self) -> (u64, u64) {
        let state = self.state.lock();
        (state.files.len() as u64, state.bytes)
    }

    /// Deletes the oldest files (not the one in flight) until `incoming` more bytes fit.
    fn evict(&self, state: &mut State, incoming: u64) -> u64 {
        let mut evicted = 0;
        while state.bytes + incoming > self.max_bytes {
            let victim = state
                .files
                .keys()
                .find(|n| state.in_flight.as_deref() != Some(n.as_str()))
                .cloned();
            let Some(name) = victim else { break };
            if let Err(e) = remove_if_exists(&self.dir.join(&name)) {
                log::error!("loopai: telemetry spool: deleting {name}: {e}");
            }
            if let Some(size) = state.files.remove(&name) {
                state.bytes -= size;
            }
            evicted += 1;
        }
        evicted
    }

    /// Writes one batch (its upload body) durably, sealed under `storage.encryption`.
    /// Oldest batches are evicted first when the bound would be exceeded; a batch larger
    /// than the bound (on disk) is not written.
    pub(crate) fn push(&self, batch_id: Uuid, body: &[u8]) -> Result<PushOutcome> {
        let sealed;
        let bytes = match &self.keys {
            Some(keys) => {
                sealed = crypt::seal_document(keys.current(), body)?;
                &sealed[..]
            }
            None => body,
        };
        let size = bytes.len() as u64;
        if size > self.max_bytes {
            return Ok(PushOutcome {
                evicted: 0,
                rejected: true,
            });
        }
        let (name, evicted) = {
            let mut state = self.state.lock();
            let evicted = self.evict(&mut state, size);
            let name = format!("{:016}-{}{SUFFIX}", state.next_seq, batch_id);
            state.next_seq += 1;
            (name, evicted)
        };
        let path = self.dir.join(&name);
        write_atomic(&path, bytes).map_err(|e| Error::io(path.display(), e))?;
        let mut state = self.state.lock();
        state.bytes += size;
        state.files.insert(name, size);
        // The in-flight file may have kept the total over the bound: settle now.
        let more = self.evict(&mut state, 0);
        Ok(PushOutcome {
            evicted: evicted + more,
            rejected: false,
        })
    }

    /// The oldest spooled batch, marked in flight (not evicted until [`release`]d).
    pub(crate) fn take_oldest(&self) -> Option<String> {
        let mut state = self.state.lock();
        let name = state.files.keys().next().cloned()?;
        state.in_flight = Some(name.clone());
        Some(name)
    }

    /// Reads a spooled batch: its upload body (the plain gzip JSON), opened with the
    /// configured keys when the file is sealed. `Ok(None)` when it vanished (evicted, or
    /// sent by another process sharing the spool); `Err` says why it cannot be read (an
    /// I/O error, a sealed file that fails authentication or whose key is not configured).
    pub(crate) fn read(&self, name: &str) -> std::result::Result<Option<Vec<u8>>, String> {
        let bytes = match fs::read(self.dir.join(name)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        if !crypt::is_encrypted(&bytes) {
            return Ok(Some(bytes));
        }
        let keys = self.keys.as_deref();
        crypt::open_document_or_plain(&bytes, keys, "sealed batch")
            .map(|body| Some(body.into_owned()))
            .map_err(|e| e.to_string())
    }

    /// Deletes a batch (sent, refused for good, or vanished) and clears the in-flight mark.
    pub(crate) fn remove(&self, name: &str) -> io::Result<()> {
        let result = remove_if_exists(&self.dir.join(name)).and_then(|()| sync_dir(&self.dir));
        self.forget(name);
        result
    }

    /// Moves a batch that cannot be read to `corrupt/` and forgets it.
    pub(crate) fn quarantine(&self, name: &str) {
        move_aside(&self.dir, name);
        self.forget(name);
    }

    /// Clears the in-flight mark without deleting (the upload will be retried).
    pub(crate) fn release(&self) {
        self.state.lock().in_flight = None;
    }

    fn forget(&self, name: &str) {
        let mut state = self.state.lock();
        if let Some(size) = state.files.remove(name) {
            state.bytes -= size;
        }
        if state.in_flight.as_deref() == Some(name) {
            state.in_flight = None;
        }
    }
}

/// Checks that `bytes` is a gzip-compressed JSON object with a `batch_id`; the reason
/// otherwise.
pub(crate) fn verify(bytes: &[u8]) -> std::result::Result<Uuid, String> {
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(MAX_DECOMPRESSED)
        .read_to_end(&mut json)
        .map_err(|e| format!("not gzip: {e}"))?;
    #[derive(serde::Deserialize)]
    struct Head {
        batch_id: Uuid,
    }
    serde_json::from_slice::<Head>(&json)
        .map(|h| h.batch_id)
        .map_err(|e| format!("not a telemetry batch: {e}"))
}

/// Moves `dir/name` to `dir/corrupt/name`, keeping the newest [`KEEP_CORRUPT`] there; the
/// file is deleted when it cannot be moved.
fn move_aside(dir: &Path, name: &str) {
    let from = dir.join(name);
    let corrupt = dir.join("corrupt");
    let moved = fs::create_dir_all(&corrupt)
        .and_then(|()| fs::rename(&from, corrupt.join(name)))
        .and_then(|()| sync_dir(dir));
    if let Err(e) = moved {
        log::warn!(
            "loopai: telemetry spool: could not move {} aside ({e}); deleting it",
            from.display()
        );
        let _ = remove_if_exists(&from);
        return;
    }
    let Ok(entries) = fs::read_dir(&corrupt) else {
        return;
    };
    let mut names: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if names.len() > KEEP_CORRUPT {
        names.sort();
        for (_, path) in &names[..names.len() - KEEP_CORRUPT] {
            let _ = remove_if_exists(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gz(json: &str) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(json.as_bytes()).unwrap();
        enc.finish().unwrap()
    }

    fn batch(id: Uuid, pad: usize) -> Vec<u8> {
        // Incompressible padding keeps sizes predictable.
        let noise: String = (0..pad).map(|_| fastrand::alphanumeric()).collect();
        gz(&format!(r#"{{"batch_id": "{id}", "pad": "{noise}"}}"#))
    }

    #[test]
    fn names_sort_in_cut_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 1 << 20, None).unwrap();
        let ids: Vec<Uuid> = (0..12).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            spool.push(*id, &batch(*id, 10)).unwrap();
        }
        assert_eq!(spool.stats().0, 12);
        drop(spool);
        // After a restart, new names continue after the old ones.
        let (spool, evicted) = Spool::open(dir.path(), 1 << 20, None).unwrap();
        assert_eq!(evicted, 0);
        let late = Uuid::new_v4();
        spool.push(late, &batch(late, 10)).unwrap();
        let mut sent = Vec::new();
        while let Some(name) = spool.take_oldest() {
            let bytes = spool.read(&name).unwrap().unwrap();
            sent.push(verify(&bytes).unwrap());
            spool.remove(&name).unwrap();
        }
        assert_eq!(sent[..12], ids[..]);
        assert_eq!(sent[12], late);
        assert_eq!(spool.stats(), (0, 0));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_bound_evicts_the_oldest_but_never_the_one_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let one = batch(Uuid::new_v4(), 1000).len() as u64;
        let (spool, _) = Spool::open(dir.path(), one * 3 + one / 2, None).unwrap();
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        let mut evicted = 0;
        for id in &ids[..3] {
            evicted += spool.push(*id, &batch(*id, 1000)).unwrap().evicted;
        }
        assert_eq!(evicted, 0);
        let first = spool.take_oldest().unwrap();
        assert!(first.ends_with(&format!("{}{SUFFIX}", ids[0])));
        for id in &ids[3..] {
            evicted += spool.push(*id, &batch(*id, 1000)).unwrap().evicted;
        }
        assert_eq!(evicted, 2);
        let (n, bytes) = spool.stats();
        assert_eq!(n, 3);
        assert!(bytes <= one * 3 + one / 2);
        // In flight (kept), then the two newest.
        spool.remove(&first).unwrap();
        let mut rest = Vec::new();
        while let Some(name) = spool.take_oldest() {
            rest.push(verify(&spool.read(&name).unwrap().unwrap()).unwrap());
            spool.remove(&name).unwrap();
        }
        assert_eq!(rest, ids[3..]);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_batch_larger_than_the_bound_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 100, None).unwrap();
        let id = Uuid::new_v4();
        let out = spool.push(id, &batch(id, 1000)).unwrap();
        assert!(out.rejected);
        assert_eq!(spool.stats(), (0, 0));
    }

    #[test]
    fn reopening_over_a_smaller_bound_evicts_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 1 << 20, None).unwrap();
        let one = batch(Uuid::new_v4(), 500).len() as u64;
        for _ in 0..4 {
            let id = Uuid::new_v4();
            spool.push(id, &batch(id, 500)).unwrap();
        }
        drop(spool);
        let (spool, evicted) = Spool::open(dir.path(), 2 * one + 10, None).unwrap();
        assert_eq!(evicted, 2);
        assert_eq!(spool.stats().0, 2);
    }

    #[test]
    fn corrupt_files_are_detected_and_moved_aside() {
        assert!(verify(b"not gzip at all")
            .unwrap_err()
            .starts_with("not gzip"));
        assert!(verify(&gz("{\"x\": 1}"))
            .unwrap_err()
            .starts_with("not a telemetry batch"));
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("junk.json.gz");
        fs::write(&odd, b"x").unwrap();
        fs::write(dir.path().join("notes.txt"), b"left alone").unwrap();
        let (spool, _) = Spool::open(dir.path(), 1 << 20, None).unwrap();
        assert!(!odd.exists());
        assert!(dir.path().join("corrupt/junk.json.gz").exists());
        assert!(dir.path().join("notes.txt").exists());
        let id = Uuid::new_v4();
        spool.push(id, b"garbage").unwrap();
        let name = spool.take_oldest().unwrap();
        assert!(verify(&spool.read(&name).unwrap().unwrap()).is_err());
        spool.quarantine(&name);
        assert_eq!(spool.stats(), (0, 0));
        assert!(dir.path().join("corrupt").join(&name).exists());
        assert_eq!(spool.take_oldest(), None);
    }

    fn ring(current: u8, old: &[u8]) -> Arc<KeyRing> {
        let key = |b: u8| crypt::DataKey::parse(&hex::encode([b; 32]), "test").unwrap();
        Arc::new(KeyRing::new(
            key(current),
            old.iter().map(|&b| key(b)).collect(),
        ))
    }

    #[test]
    fn sealed_files_hold_no_plaintext_and_read_back_as_the_upload_body() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 1 << 20, Some(ring(1, &[]))).unwrap();
        let id = Uuid::new_v4();
        let body = batch(id, 50);
        spool.push(id, &body).unwrap();
        let name = spool.take_oldest().unwrap();
        let on_disk = fs::read(dir.path().join(&name)).unwrap();
        assert!(crypt::is_encrypted(&on_disk), "sealed on disk");
        assert!(
            !on_disk.windows(body.len()).any(|w| w == body),
            "no gzip body in clear"
        );
        assert!(verify(&on_disk).is_err(), "not a gzip file on disk");
        assert_eq!(
            spool.stats().1,
            on_disk.len() as u64,
            "the bound counts the disk"
        );
        assert_eq!(spool.read(&name).unwrap().unwrap(), body);
        assert_eq!(verify(&spool.read(&name).unwrap().unwrap()).unwrap(), id);
    }

    #[test]
    fn old_key_files_read_after_a_rotation_and_unknown_or_damaged_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (old, _) = Spool::open(dir.path(), 1 << 20, Some(ring(1, &[]))).unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        old.push(a, &batch(a, 10)).unwrap();
        old.push(b, &batch(b, 10)).unwrap();
        drop(old);
        // A plain file spooled before encryption was turned on.
        let (plain, _) = Spool::open(dir.path(), 1 << 20, None).unwrap();
        let c = Uuid::new_v4();
        plain.push(c, &batch(c, 10)).unwrap();
        drop(plain);

        let (rotated, _) = Spool::open(dir.path(), 1 << 20, Some(ring(2, &[1]))).unwrap();
        let names: Vec<String> = rotated.state.lock().files.keys().cloned().collect();
        let ids: Vec<Uuid> = names
            .iter()
            .map(|n| verify(&rotated.read(n).unwrap().unwrap()).unwrap())
            .collect();
        assert_eq!(ids, [a, b, c]);

        let (only_new, _) = Spool::open(dir.path(), 1 << 20, Some(ring(2, &[]))).unwrap();
        let err = only_new.read(&names[0]).unwrap_err();
        assert!(err.contains("not among the configured keys"), "{err}");
        let (no_keys, _) = Spool::open(dir.path(), 1 << 20, None).unwrap();
        let err = no_keys.read(&names[0]).unwrap_err();
        assert!(err.contains("no key is configured"), "{err}");
        assert_eq!(
            verify(&no_keys.read(&names[2]).unwrap().unwrap()).unwrap(),
            c
        );

        let path = dir.path().join(&names[1]);
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let err = rotated.read(&names[1]).unwrap_err();
        assert!(err.contains("fails authentication"), "{err}");
    }
}
