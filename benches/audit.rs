//! The cost of a tamper-evident audit line, beside a plain one.
//!
//! Both write the same decision record as one JSON line to a file opened for append, in the same
//! process, alternately: "plain" is the floor (serialize + one `write`), "chained" is
//! [`AuditLog::append`] (file lock, a check that the file is still the one open, `seq`/`prev`,
//! SHA-256 of the line, and a signed checkpoint every 256 lines). The ratio is what the chain
//! costs per decision.
//!
//! Run: `cargo bench --bench audit`; `cargo bench --bench audit -- --lines N [--plain]` only
//! appends N lines (for `strace -c -f` and `valgrind --tool=callgrind` counts per line).

use std::hint::black_box;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Instant;

use capgate_authz::RootKey;
use capgate_server::telemetry::{AuditLog, AuditRecord};

fn record(i: u64) -> AuditRecord {
    let mut r = AuditRecord::now("call", "fs_read", "allow");
    r.task = Some("0b7c3f3e-6a2e-4c59-9d1b-5b0f9a8f2c11".into());
    r.agent = Some("agent-1".into());
    r.tenant = Some("acme".into());
    r.resource = Some(format!("/srv/workspace/acme/docs/file-{i}.txt"));
    r.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
    r.span_id = Some("00f067aa0ba902b7".into());
    r.transport = Some("http".into());
    r
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = Arc::new(RootKey::generate());
    let chained =
        AuditLog::open(&dir.path().join("chained.log"), 1 << 40, 1, Some(key)).expect("audit log");
    let mut plain = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("plain.log"))
        .expect("plain log");
    let mut plain_line = |r: &AuditRecord| {
        let mut line = serde_json::to_vec(r).expect("serializes");
        line.push(b'\n');
        plain.write_all(&line).expect("writes");
    };

    if let Some(i) = args.iter().position(|a| a == "--lines") {
        let n: u64 = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(1000);
        let only_plain = args.iter().any(|a| a == "--plain");
        for i in 0..n {
            let r = record(i);
            if only_plain {
                plain_line(&r);
            } else {
                chained.append(&r).expect("appends");
            }
        }
        return;
    }
    // `cargo bench` passes `--bench`; anything else is ignored.
    let rounds = 20;
    let per_round = 5_000u64;
    let (mut t_plain, mut t_chained) = (0f64, 0f64);
    for round in 0..rounds {
        let records: Vec<AuditRecord> = (0..per_round)
            .map(|i| record(round * per_round + i))
            .collect();
        let start = Instant::now();
        for r in &records {
            plain_line(black_box(r));
        }
        t_plain += start.elapsed().as_secs_f64();
        let start = Instant::now();
        for r in &records {
            chained.append(black_box(r)).expect("appends");
        }
        t_chained += start.elapsed().as_secs_f64();
    }
    let n = (rounds * per_round) as f64;
    println!(
        "audit line: plain {:.2} µs, chained {:.2} µs, chained / plain {:.2} ({} lines each, alternating rounds)",
        t_plain / n * 1e6,
        t_chained / n * 1e6,
        t_chained / t_plain,
        rounds * per_round
    );
}
