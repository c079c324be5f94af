//! Checking an audit log: the hash chain line by line across rotations, and the signature of
//! every checkpoint. The first break is named by file and line, as what a reader would call it
//! (a line changed, removed or inserted).
//!
//! What it cannot see, by construction: lines after the last checkpoint that were changed or
//! cut off together with everything after them (the unsigned tail, reported as such), and
//! whole oldest files removed (reported as "starts at seq N").

use std::fmt;
use std::path::{Path, PathBuf};

use biscuit_auth::PublicKey;
use capgate_authz::verify_signature;
use sha2::{Digest, Sha256};

use super::{GENESIS, rotation};
use crate::error::Error;

/// What a checkpoint signs: its own place in the chain and the hash of the line before it
/// (which commits to every line before that).
pub fn checkpoint_message(seq: u64, prev_hex: &str) -> String {
    format!("capgate audit checkpoint v1\n{seq}\n{prev_hex}")
}

/// The rotations of `path` that exist, oldest first, then `path` itself.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..)
        .map(|i| rotation(path, i))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_path_buf());
    files
}

/// The first place the log stops being what capgate wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tamper {
    /// The file.
    pub file: PathBuf,
    /// The line, counted from 1.
    pub line: usize,
    /// What happened to it.
    pub what: String,
}

impl fmt::Display for Tamper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.what)
    }
}

/// What [`verify`] found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// The files read, oldest first.
    pub files: Vec<PathBuf>,
    /// Chained lines (decisions and the log's own lines).
    pub lines: u64,
    /// Lines from before the chain existed (at the start of the oldest file).
    pub legacy: u64,
    /// `seq` of the first chained line (above 0: older lines were rotated away).
    pub first_seq: Option<u64>,
    /// `seq` of the last chained line.
    pub last_seq: Option<u64>,
    /// Checkpoints whose signature verified.
    pub checkpoints: u64,
    /// `seq` of the last verified checkpoint: every line before it is signed.
    pub signed_through: Option<u64>,
    /// Lines after the last checkpoint (chained, not yet signed).
    pub unsigned_tail: u64,
    /// A torn last line (a crash mid-write; capgate cuts it off at its next start): its bytes.
    pub torn_tail: Option<u64>,
    /// The first break, if any.
    pub tamper: Option<Tamper>,
}

impl VerifyReport {
    /// The chain is unbroken and anchored by at least one signed checkpoint.
    pub fn is_intact(&self) -> bool {
        self.tamper.is_none() && (self.lines == 0 || self.checkpoints > 0)
    }
}

struct Line {
    file: usize,
    number: usize,
    bytes: Vec<u8>,
    terminated: bool,
}

#[derive(Clone, Copy)]
struct Link {
    seq: u64,
    hash: [u8; 32],
    index: usize,
}

/// The `seq` and `prev` a line claims, when it parses as a chained record.
fn claims(bytes: &[u8]) -> Option<(u64, [u8; 32])> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let seq = v.get("seq")?.as_u64()?;
    let prev = hex::decode(v.get("prev")?.as_str()?).ok()?;
    Some((seq, prev.try_into().ok()?))
}

/// Checks the log at `path` and its rotations. With `public`, every checkpoint's signature is
/// checked against it; without, checkpoints count as unverified (and the log as unanchored).
pub fn verify(path: &Path, public: Option<&PublicKey>) -> Result<VerifyReport, Error> {
    let files = rotated_files(path);
    let mut lines = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let bytes = match std::fs::read(f) {
            Ok(b) => b,
            // The current file may not exist yet (nothing decided since a rotation).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && i + 1 == files.len() => {
                Vec::new()
            }
            Err(source) => {
                return Err(Error::Audit {
                    path: f.clone(),
                    doing: "cannot read it",
                    source,
                });
            }
        };
        let terminated_file = bytes.last().is_none_or(|&b| b == b'\n');
        let parts: Vec<&[u8]> = bytes
            .strip_suffix(b"\n")
            .unwrap_or(&bytes)
            .split(|&b| b == b'\n')
            .collect();
        let count = if bytes.is_empty() { 0 } else { parts.len() };
        for (n, part) in parts.into_iter().take(count).enumerate() {
            lines.push(Line {
                file: i,
                number: n + 1,
                bytes: part.to_vec(),
                terminated: terminated_file || n + 1 < count,
            });
        }
    }
    let mut report = VerifyReport {
        files: files.clone(),
        ..VerifyReport::default()
    };
    let at = |l: &Line, what: String| Tamper {
        file: files[l.file].clone(),
        line: l.number,
        what,
    };
    let mut prev: Option<Link> = None;
    let mut before_prev: Option<Link> = None;
    let mut legacy_hash: Option<[u8; 32]> = None;
    for (i, l) in lines.iter().enumerate() {
        if !l.terminated {
            if i + 1 == lines.len() {
                report.torn_tail = Some(l.bytes.len() as u64);
                break;
            }
            report.tamper = Some(at(l, "a rotated file ends in half a line: cut".into()));
            break;
        }
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&l.bytes) else {
            report.tamper = Some(at(l, "not a JSON record: inserted or changed".into()));
            break;
        };
        let Some(seq) = value.get("seq") else {
            if prev.is_some() {
                report.tamper = Some(at(
                    l,
                    "a line without a place in the chain among chained lines: inserted".into(),
                ));
                break;
            }
            report.legacy += 1;
            legacy_hash = Some(Sha256::digest(&l.bytes).into());
            continue;
        };
        let Some((seq, claimed_prev)) = seq.as_u64().and(claims(&l.bytes)) else {
            report.tamper = Some(at(l, "its `seq` or `prev` is malformed: changed".into()));
            break;
        };
        let hash: [u8; 32] = Sha256::digest(&l.bytes).into();
        match prev {
            None => {
                if seq == 0 && claimed_prev != legacy_hash.unwrap_or(GENESIS) {
                    let what = if legacy_hash.is_some() {
                        "the first chained line does not follow the line before it: that line was changed"
                    } else {
                        "the first line of the chain does not start it: changed"
                    };
                    report.tamper = Some(at(l, what.into()));
                    break;
                }
                if seq > 0 && report.legacy > 0 {
                    report.tamper = Some(at(
                        l,
                        format!(
                            "the chain resumes at seq {seq} after unchained lines: lines removed before it"
                        ),
                    ));
                    break;
                }
                report.first_seq = Some(seq);
            }
            Some(p) => {
                let chained = claimed_prev == p.hash;
                let in_order = seq == p.seq + 1;
                if chained && !in_order {
                    report.tamper = Some(at(
                        l,
                        format!("its seq {seq} should be {}: changed", p.seq + 1),
                    ));
                    break;
                }
                if !chained {
                    let next_follows_prev = lines
                        .get(i + 1)
                        .and_then(|n| claims(&n.bytes))
                        .is_some_and(|(s, h)| h == p.hash && s == p.seq + 1);
                    let follows_before_prev =
                        before_prev.is_some_and(|b| claimed_prev == b.hash && seq == b.seq + 1);
                    let tamper = if next_follows_prev {
                        at(
                            l,
                            "inserted: the line after it follows the line before it".into(),
                        )
                    } else if follows_before_prev {
                        at(
                            &lines[p.index],
                            "inserted: the line after it follows the line before it".into(),
                        )
                    } else if seq > p.seq + 1 {
                        let gone = seq - p.seq - 1;
                        at(
                            l,
                            format!(
                                "{gone} line{} removed before it (seq {} to {} are missing)",
                                if gone == 1 { "" } else { "s" },
                                p.seq + 1,
                                seq - 1
                            ),
                        )
                    } else if seq <= p.seq {
                        at(
                            l,
                            format!("inserted: its seq {seq} comes after seq {}", p.seq),
                        )
                    } else {
                        at(
                            &lines[p.index],
                            "changed: its hash no longer matches the `prev` of the line after it"
                                .into(),
                        )
                    };
                    report.tamper = Some(tamper);
                    break;
                }
            }
        }
        if value.get("kind").and_then(|k| k.as_str()) == Some("checkpoint") {
            let signed = value
                .get("sig")
                .and_then(|s| s.as_str())
                .and_then(|s| hex::decode(s).ok())
                .zip(public)
                .is_some_and(|(sig, key)| {
                    verify_signature(
                        key,
                        checkpoint_message(seq, &hex::encode(claimed_prev)).as_bytes(),
                        &sig,
                    )
                });
            if public.is_some() && !signed {
                report.tamper = Some(at(
                    l,
                    "a checkpoint whose signature does not verify: forged, or the lines before it were rewritten"
                        .into(),
                ));
                break;
            }
            if signed {
                report.checkpoints += 1;
                report.signed_through = Some(seq);
                report.unsigned_tail = 0;
            }
        } else {
            report.unsigned_tail += 1;
        }
        report.lines += 1;
        report.last_seq = Some(seq);
        before_prev = prev;
        prev = Some(Link {
            seq,
            hash,
            index: i,
        });
    }
    Ok(report)
}
