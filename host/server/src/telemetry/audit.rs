//! The audit log: one JSON line per decision, appended before the decision takes effect.
//!
//! Invariant: each record is a single `write` of a complete line to a file opened for append,
//! so after a crash (even `kill -9`) every complete line parses; a line is never interleaved with
//! another. Rotation happens between records, by size.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::error::Error;

/// One decision, as written.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct AuditRecord {
    /// RFC 3339 with milliseconds, UTC.
    pub time: String,
    /// `call` or `issuance`.
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
    /// The span that recorded it.
    pub span_id: Option<String>,
    /// `stdio`, `http`, `cli`.
    pub transport: Option<String>,
}

impl AuditRecord {
    /// A record stamped now.
    pub fn now(kind: &str, tool: &str, decision: &str) -> Self {
        AuditRecord {
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
            transport: None,
        }
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
    file: Mutex<Option<(File, u64)>>,
}

impl AuditLog {
    /// Opens (creating) the log.
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> Result<Self, Error> {
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
            file: Mutex::new(None),
        };
        let opened = log.open_file()?;
        *log.file.lock().unwrap_or_else(|p| p.into_inner()) = Some(opened);
        Ok(log)
    }

    /// The current file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_file(&self) -> Result<(File, u64), Error> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|source| Error::Audit {
                path: self.path.clone(),
                doing: "cannot open it for append",
                source,
            })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok((file, size))
    }

    /// Appends one record. An error means the record is not on disk.
    pub fn append(&self, record: &AuditRecord) -> Result<(), Error> {
        // A record of strings always serializes; were it ever to fail, it is an I/O-level fault
        // of this log all the same.
        let mut line = serde_json::to_vec(record).map_err(|e| Error::Audit {
            path: self.path.clone(),
            doing: "cannot encode a record",
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(self.open_file()?);
        }
        let needs_rotation = guard
            .as_ref()
            .is_some_and(|(_, size)| *size > 0 && size + line.len() as u64 > self.max_bytes);
        if needs_rotation {
            // Close before renaming; on failure the old file stays in use.
            *guard = None;
            self.rotate();
            *guard = Some(self.open_file()?);
        }
        let Some((file, size)) = guard.as_mut() else {
            unreachable!("opened above")
        };
        // One write of the whole line: on an O_APPEND file a complete line lands or nothing does.
        match file.write_all(&line) {
            Ok(()) => {
                *size += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Reopen next time: the file may have been removed or the disk freed.
                *guard = None;
                Err(Error::Audit {
                    path: self.path.clone(),
                    doing: "cannot append to it",
                    source: e,
                })
            }
        }
    }

    fn rotate(&self) {
        let name = |i: usize| -> PathBuf {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        let _ = std::fs::remove_file(name(self.keep));
        for i in (1..self.keep).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        let _ = std::fs::rename(&self.path, name(1));
    }

    /// Every record in the current file and its rotations, oldest first. Lines that do not
    /// parse (a torn last line after a power loss) are skipped.
    pub fn read_all(path: &Path, keep: usize) -> Vec<AuditRecord> {
        let mut files: Vec<PathBuf> = (1..=keep.max(1))
            .rev()
            .map(|i| {
                let mut p = path.to_path_buf().into_os_string();
                p.push(format!(".{i}"));
                PathBuf::from(p)
            })
            .collect();
        files.push(path.to_path_buf());
        let mut out = Vec::new();
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_and_rotation_keeps_everything_recent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, 4096, 3).unwrap();
        for i in 0..100 {
            let mut r = AuditRecord::now("call", "fs_read", "allow");
            r.task = Some(format!("t{i}"));
            log.append(&r).unwrap();
        }
        assert!(dir.path().join("audit.log.1").exists());
        assert!(!dir.path().join("audit.log.4").exists());
        let all = AuditLog::read_all(&path, 3);
        assert!(!all.is_empty());
        assert_eq!(all.last().unwrap().task.as_deref(), Some("t99"));
        // Order is preserved across files.
        let ids: Vec<usize> = all
            .iter()
            .map(|r| r.task.as_ref().unwrap()[1..].parse().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] + 1 == w[1]));
    }

    #[test]
    fn an_unwritable_log_is_an_error() {
        let log = AuditLog::open(Path::new("/dev/full"), 1 << 20, 1).unwrap();
        assert!(log.append(&AuditRecord::now("call", "x", "allow")).is_err());
    }
}
