//! The audit log: one JSON line per decision, appended before the decision takes effect, each
//! line chained to the one before and the chain signed at checkpoints.
//!
//! Invariants:
//! * Each record is one `write` of a complete line to a file opened for append, under one lock:
//!   lines never interleave. A write that fails part-way is cut back off, so the file holds only
//!   whole lines; a torn last line left by a crash is cut off at the next open and a `recovered`
//!   record says how many bytes went.
//! * Line `n` carries `seq` (one more than the line before, across rotations) and `prev`, the
//!   SHA-256 of the line before's bytes (64 zeros for the first line ever). Changing, removing
//!   or inserting a line breaks the chain at the line after it ([`verify`] names it).
//! * A hash chain alone can be rewritten by whoever can write the file, so `checkpoint` lines
//!   carry the root key's signature of their own `seq` and `prev`: what lies before the last
//!   checkpoint cannot be rewritten without the root key. Checkpoints are written when a log is
//!   first written to after open (anchoring every run), every [`CHECKPOINT_EVERY`] records,
//!   before a rotation and at shutdown ([`AuditLog::seal`]).
//! * The chain state advances only when a line is on disk: a refused write (disk full) leaves
//!   the chain where it was, so the log verifies after the disk is freed.

mod verify;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use capgate_authz::RootKey;
use sha2::{Digest, Sha256};

use crate::error::Error;

pub use verify::{Tamper, VerifyReport, checkpoint_message, rotated_files, verify};

/// Records between two signed checkpoints.
pub const CHECKPOINT_EVERY: u64 = 256;

/// The `prev` of the first line ever.
const GENESIS: [u8; 32] = [0; 32];

/// One decision, as written.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the chain (set by the log when the line is written).
    #[serde(default)]
    pub seq: Option<u64>,
    /// SHA-256 (hex) of the line before (set by the log when the line is written).
    #[serde(default)]
    pub prev: Option<String>,
    /// RFC 3339 with milliseconds, UTC.
    pub time: String,
    /// `call`, `issuance`, `end`, … or the log's own `checkpoint` and `recovered`.
    pub kind: String,
    /// The task, when known.
    pub task: Option<String>,
    /// The agent, when the token could be read.
    pub agent: Option<String>,
    /// The agent's tenant.
    pub tenant: Option<String>,
    /// The tool (for issuance: the tools requested, comma-separated).
    pub tool: String,
    /// The canonical resource (for issuance: the resources requested).
    pub resource: Option<String>,
    /// `allow`, `deny` or `invalid`.
    pub decision: String,
    /// Why, for anything but a plain allow.
    pub reason: Option<String>,
    /// The trace the decision belongs to.
    pub trace_id: Option<String>,
    /// The span that recorded it. When no spans are exported, a fresh id that names the
    /// decision all the same.
    pub span_id: Option<String>,
    /// The JSON-RPC id of the request that asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonrpc_id: Option<String>,
    /// The issuer of the workload JWT the agent presented, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// That JWT's subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The thumbprint of the key a task token is bound to (DPoP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// `stdio`, `http`, `cli`.
    pub transport: Option<String>,
    /// A checkpoint's signature (hex Ed25519 by the root key of [`checkpoint_message`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

impl AuditRecord {
    /// A record stamped now.
    pub fn now(kind: &str, tool: &str, decision: &str) -> Self {
        AuditRecord {
            seq: None,
            prev: None,
            time: timestamp(SystemTime::now()),
            kind: kind.to_owned(),
            task: None,
            agent: None,
            tenant: None,
            tool: tool.to_owned(),
            resource: None,
            decision: decision.to_owned(),
            reason: None,
            trace_id: None,
            span_id: None,
            jsonrpc_id: None,
            issuer: None,
            subject: None,
            holder: None,
            transport: None,
            sig: None,
        }
    }

    /// Whether this is one of the log's own lines rather than a decision.
    pub fn is_bookkeeping(&self) -> bool {
        matches!(self.kind.as_str(), "checkpoint" | "recovered")
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn timestamp(t: SystemTime) -> String {
    capgate_core::time::rfc3339_millis(t)
}

/// The audit log file.
pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    signer: Option<Arc<RootKey>>,
    state: Mutex<State>,
}

/// Where the chain stands, and the open file.
struct State {
    file: Option<(File, u64)>,
    /// `seq` of the next line.
    next_seq: u64,
    /// Hash of the last line on disk.
    last: [u8; 32],
    /// Records since the last checkpoint.
    unsigned: u64,
    /// A checkpoint goes before the next record (set at open: every run is anchored).
    checkpoint_due: bool,
    /// Bytes of a torn last line cut off at open, not yet said in a `recovered` record.
    torn: Option<u64>,
    /// Length of the last line this log wrote.
    last_len: u64,
}

impl AuditLog {
    /// Opens (creating) the log; a torn last line is cut off (and said so in the log). With a
    /// `signer`, checkpoints are signed with it; without, none are written (tests of other
    /// parts, and `verify` then finds the log unanchored).
    pub fn open(
        path: &Path,
        max_bytes: u64,
        keep: usize,
        signer: Option<Arc<RootKey>>,
    ) -> Result<Self, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Audit {
                path: path.to_path_buf(),
                doing: "cannot create its directory",
                source,
            })?;
        }
        let log = AuditLog {
            path: path.to_path_buf(),
            max_bytes,
            keep: keep.max(1),
            signer,
            state: Mutex::new(State {
                file: None,
                next_seq: 0,
                last: GENESIS,
                unsigned: 0,
                checkpoint_due: true,
                torn: None,
                last_len: 0,
            }),
        };
        {
            let mut st = log.lock();
            st.file = Some(log.open_file()?);
            let synced = log.sync(&mut st, true);
            log.unlock(&st);
            synced?;
            if st.torn.is_some() {
                // Said in the log at once when the disk allows; else before the next record.
                let _ = log.write_pending(&mut st);
            }
        }
        Ok(log)
    }

    /// The current file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn io(&self, doing: &'static str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Audit {
            path: self.path.clone(),
            doing,
            source,
        }
    }

    fn open_file(&self) -> Result<(File, u64), Error> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&self.path)
            .map_err(self.io("cannot open it for append"))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok((file, size))
    }

    /// Takes the file's lock (other capgate processes, such as the CLI beside a server, append
    /// to the same log) and brings the chain up to what is on disk: reopens the path when the
    /// file there is no longer the one open (rotated by another process, or the path now leads
    /// elsewhere), and re-reads the last line when another process appended. `fresh` forces
    /// the re-read (at open). Leaves the lock held: release it with [`Self::unlock`].
    fn sync(&self, st: &mut State, fresh: bool) -> Result<(), Error> {
        use std::os::unix::fs::MetadataExt as _;
        let mut reread = fresh;
        if st.file.is_none() {
            st.file = Some(self.open_file()?);
            reread = true;
        }
        loop {
            let Some((file, _)) = st.file.as_ref() else {
                unreachable!("opened above")
            };
            lock_bounded(file).map_err(self.io("cannot take its lock"))?;
            let open = file.metadata().map_err(self.io("cannot read its size"))?;
            let same = std::fs::metadata(&self.path)
                .is_ok_and(|at_path| (at_path.dev(), at_path.ino()) == (open.dev(), open.ino()));
            if same {
                if st
                    .file
                    .as_ref()
                    .is_some_and(|(_, size)| *size != open.len())
                {
                    reread = true;
                }
                break;
            }
            let _ = file.unlock();
            st.file = Some(self.open_file()?);
            reread = true;
        }
        if reread {
            let Some((file, size)) = st.file.as_mut() else {
                unreachable!("opened above")
            };
            *size = file.metadata().map(|m| m.len()).unwrap_or(0);
            if let Some(bytes) =
                repair(file, size).map_err(self.io("cannot repair its torn last line"))?
            {
                tracing::warn!(
                    path = %self.path.display(),
                    bytes,
                    "the audit log's last line was torn (a crash mid-write); cut it off"
                );
                st.torn = Some(st.torn.unwrap_or(0) + bytes);
            }
            self.resume_chain(st)?;
        }
        Ok(())
    }

    fn unlock(&self, st: &State) {
        if let Some((file, _)) = st.file.as_ref() {
            let _ = file.unlock();
        }
    }

    /// Continues the chain from the last line on disk (of this file, else of the newest
    /// rotation). A last line that is not chained (a log from before the chain) is hashed like
    /// any other, and the chain starts at 0 after it.
    fn resume_chain(&self, st: &mut State) -> Result<(), Error> {
        let Some((file, size)) = st.file.as_ref() else {
            return Ok(());
        };
        let mut last_line = None;
        if *size > 0 {
            let mut f = file.try_clone().map_err(self.io("cannot read its end"))?;
            let tail = read_tail(&mut f, *size).map_err(self.io("cannot read its end"))?;
            last_line = last_line_of(&tail);
        } else if let Some(newest) = rotated_files(&self.path).into_iter().rev().nth(1) {
            // `rotated_files` ends with the current file; the one before it is `.1`.
            if let Ok(mut f) = File::open(&newest) {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                if let Ok(tail) = read_tail(&mut f, len) {
                    last_line = last_line_of(&tail);
                }
            }
        }
        if let Some(line) = last_line {
            st.last = Sha256::digest(&line).into();
            st.next_seq = serde_json::from_slice::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64))
                .map_or(0, |s| s + 1);
        }
        Ok(())
    }

    /// Appends one record. An error means the record is not on disk (and the chain did not
    /// move).
    pub fn append(&self, record: &AuditRecord) -> Result<(), Error> {
        let mut st = self.lock();
        self.write_pending(&mut st)?;
        if st.unsigned >= CHECKPOINT_EVERY {
            self.checkpoint(&mut st)?;
        }
        // Lines are much alike: the last one's length stands in for this one's (a line may
        // overshoot `max_bytes` by the difference), which spares encoding every record twice.
        let estimate = st.last_len;
        let needs_rotation = st
            .file
            .as_ref()
            .is_some_and(|(_, size)| *size > 0 && size + estimate > self.max_bytes);
        if needs_rotation {
            // The old file ends signed; the chain goes on in the new one.
            if st.unsigned > 0 {
                self.checkpoint(&mut st)?;
            }
            st.file = None;
            self.rotate();
        }
        self.write_record(&mut st, record.clone())
    }

    /// Signs the chain as it stands (at shutdown), when anything was written since the last
    /// checkpoint.
    pub fn seal(&self) -> Result<(), Error> {
        let mut st = self.lock();
        if st.unsigned == 0 || self.signer.is_none() {
            return Ok(());
        }
        self.write_pending(&mut st)?;
        if st.unsigned > 0 {
            self.checkpoint(&mut st)?;
        }
        Ok(())
    }

    /// What open left to say: the repair of a torn line, and the checkpoint of this run.
    fn write_pending(&self, st: &mut State) -> Result<(), Error> {
        if let Some(bytes) = st.torn {
            let mut r = AuditRecord::now("recovered", "", "repaired");
            r.reason = Some(format!(
                "cut off a torn last line of {bytes} bytes (a crash mid-write)"
            ));
            self.write_record(st, r)?;
            st.torn = None;
        }
        if st.checkpoint_due {
            self.checkpoint(st)?;
        }
        Ok(())
    }

    fn checkpoint(&self, st: &mut State) -> Result<(), Error> {
        if self.signer.is_none() {
            st.checkpoint_due = false;
            st.unsigned = 0;
            return Ok(());
        }
        self.write_record(st, AuditRecord::now("checkpoint", "", "signed"))?;
        st.checkpoint_due = false;
        Ok(())
    }

    fn encode(&self, st: &State, mut record: AuditRecord) -> Result<Vec<u8>, Error> {
        record.seq = Some(st.next_seq);
        record.prev = Some(hex::encode(st.last));
        if record.kind == "checkpoint" {
            let key = self.signer.as_ref().ok_or_else(|| Error::Audit {
                path: self.path.clone(),
                doing: "cannot sign a checkpoint without a key",
                source: std::io::Error::other("no signer"),
            })?;
            let message = checkpoint_message(st.next_seq, record.prev.as_deref().unwrap_or(""));
            let sig = key.sign(message.as_bytes()).ok_or_else(|| Error::Audit {
                path: self.path.clone(),
                doing: "cannot sign a checkpoint: the root key is not Ed25519",
                source: std::io::Error::other("unsupported key algorithm"),
            })?;
            record.sig = Some(hex::encode(sig));
        }
        // A record of strings always serializes; were it ever to fail, it is an I/O-level fault
        // of this log all the same.
        serde_json::to_vec(&record).map_err(|e| Error::Audit {
            path: self.path.clone(),
            doing: "cannot encode a record",
            source: std::io::Error::other(e),
        })
    }

    /// Writes one line at the head of the chain, under the file's lock; the chain moves only
    /// when the line is on disk.
    fn write_record(&self, st: &mut State, record: AuditRecord) -> Result<(), Error> {
        let synced = self.sync(st, false);
        let written = synced.and_then(|()| self.write_locked(st, record));
        self.unlock(st);
        if written.is_err() {
            // Reopen next time: the file may have been removed or the disk freed.
            st.file = None;
        }
        written
    }

    fn write_locked(&self, st: &mut State, record: AuditRecord) -> Result<(), Error> {
        let checkpoint = record.kind == "checkpoint";
        let mut line = self.encode(st, record)?;
        let hash: [u8; 32] = Sha256::digest(&line).into();
        line.push(b'\n');
        let Some((file, size)) = st.file.as_mut() else {
            unreachable!("synced above")
        };
        // One write of the whole line: on an O_APPEND file lines never interleave.
        match file.write_all(&line) {
            Ok(()) => {
                *size += line.len() as u64;
                st.last_len = line.len() as u64;
                st.next_seq += 1;
                st.last = hash;
                st.unsigned = if checkpoint { 0 } else { st.unsigned + 1 };
                Ok(())
            }
            Err(e) => {
                // Cut back a part-written line, so the next line does not follow garbage.
                if file.metadata().is_ok_and(|m| m.is_file()) {
                    let _ = file.set_len(*size);
                }
                Err(Error::Audit {
                    path: self.path.clone(),
                    doing: "cannot append to it",
                    source: e,
                })
            }
        }
    }

    fn rotate(&self) {
        let name = |i: usize| -> PathBuf { rotation(&self.path, i) };
        let _ = std::fs::remove_file(name(self.keep));
        for i in (1..self.keep).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        let _ = std::fs::rename(&self.path, name(1));
    }

    /// Every record in the current file and its rotations, oldest first. Lines that do not
    /// parse (a torn last line after a power loss) are skipped; so are the log's own
    /// bookkeeping lines (checkpoints, repairs).
    pub fn read_all(path: &Path, keep: usize) -> Vec<AuditRecord> {
        let mut files: Vec<PathBuf> = (1..=keep.max(1)).rev().map(|i| rotation(path, i)).collect();
        files.push(path.to_path_buf());
        let mut out = Vec::new();
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            out.extend(
                text.lines()
                    .filter_map(|l| serde_json::from_str::<AuditRecord>(l).ok())
                    .filter(|r| !r.is_bookkeeping()),
            );
        }
        out
    }
}

/// Cuts a torn last line off a regular file (`size` is its length, updated); how many bytes
/// went.
fn repair(file: &mut File, size: &mut u64) -> std::io::Result<Option<u64>> {
    if *size == 0 || !file.metadata()?.is_file() {
        return Ok(None);
    }
    let tail = read_tail(file, *size)?;
    if tail.last() == Some(&b'\n') {
        return Ok(None);
    }
    let keep = match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => *size - (tail.len() - i - 1) as u64,
        None => 0,
    };
    file.set_len(keep)?;
    let cut = *size - keep;
    *size = keep;
    Ok(Some(cut))
}

/// Longest an append waits for another process's lock on the log before it fails (closed).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Takes the log's advisory lock, waiting at most [`LOCK_WAIT`]: a process that holds it and
/// hangs (stopped, say) must not hang every call with it; the call is refused as unaudited
/// instead. A file that does not support locks (a device such as `/dev/full`) goes without.
fn lock_bounded(file: &File) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "another process has held the audit log's lock for over a second",
                ));
            }
            Err(std::fs::TryLockError::Error(_)) => return Ok(()),
        }
    }
}

/// `PATH.i`, the `i`th rotation.
fn rotation(path: &Path, i: usize) -> PathBuf {
    let mut p = path.to_path_buf().into_os_string();
    p.push(format!(".{i}"));
    PathBuf::from(p)
}

/// The last 64 KiB of a file (more when its last line is longer), to find the last line.
fn read_tail(file: &mut File, size: u64) -> std::io::Result<Vec<u8>> {
    let mut want = 64 * 1024u64;
    loop {
        let start = size.saturating_sub(want);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity((size - start) as usize);
        Read::by_ref(file)
            .take(size - start)
            .read_to_end(&mut buf)?;
        // Enough when a newline precedes the last line (or the whole file is read).
        let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if start == 0 || body.contains(&b'\n') {
            return Ok(buf);
        }
        want = want.saturating_mul(4);
    }
}

/// The last complete line (without its newline) of a tail ending in a newline.
fn last_line_of(tail: &[u8]) -> Option<Vec<u8>> {
    let body = tail.strip_suffix(b"\n")?;
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    Some(body[start..].to_vec()).filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests;
