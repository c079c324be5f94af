use std::sync::Arc;

use capgate_authz::RootKey;

use super::*;

fn record(i: usize) -> AuditRecord {
    let mut r = AuditRecord::now("call", "fs_read", "allow");
    r.task = Some(format!("t{i}"));
    r
}

fn signed_log(path: &Path, max_bytes: u64, keep: usize) -> (AuditLog, Arc<RootKey>) {
    let key = Arc::new(RootKey::generate());
    (
        AuditLog::open(path, max_bytes, keep, Some(Arc::clone(&key))).unwrap(),
        key,
    )
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn lines_parse_and_rotation_keeps_everything_recent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (log, key) = signed_log(&path, 4096, 3);
    for i in 0..100 {
        log.append(&record(i)).unwrap();
    }
    assert!(dir.path().join("audit.log.1").exists());
    assert!(!dir.path().join("audit.log.4").exists());
    let all = AuditLog::read_all(&path, 3);
    assert!(!all.is_empty());
    assert_eq!(all.last().unwrap().task.as_deref(), Some("t99"));
    // Order is preserved across files; bookkeeping lines are not decisions.
    let ids: Vec<usize> = all
        .iter()
        .map(|r| r.task.as_ref().unwrap()[1..].parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] + 1 == w[1]));
    // The oldest lines rotated away; what is kept verifies, each rotated file ending signed.
    let report = verify(&path, Some(&key.public())).unwrap();
    assert!(report.is_intact(), "{:?}", report.tamper);
    assert!(report.first_seq.unwrap() > 0);
    assert!(report.checkpoints >= 3);
    for f in &report.files[..report.files.len() - 1] {
        let last = lines(f).pop().unwrap();
        assert!(last.contains(r#""kind":"checkpoint""#), "{last}");
    }
}

#[test]
fn every_run_is_anchored_and_checkpoints_come_every_so_often() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (log, key) = signed_log(&path, 1 << 30, 1);
    for i in 0..(CHECKPOINT_EVERY as usize * 2 + 10) {
        log.append(&record(i)).unwrap();
    }
    let report = verify(&path, Some(&key.public())).unwrap();
    assert!(report.is_intact());
    // One at the start of the run, one after each CHECKPOINT_EVERY records.
    assert_eq!(report.checkpoints, 3);
    assert_eq!(report.unsigned_tail, 10);
    log.seal().unwrap();
    let report = verify(&path, Some(&key.public())).unwrap();
    assert_eq!((report.checkpoints, report.unsigned_tail), (4, 0));
    // A second run continues the chain and anchors itself.
    drop(log);
    let log = AuditLog::open(&path, 1 << 30, 1, Some(Arc::clone(&key))).unwrap();
    log.append(&record(0)).unwrap();
    let report = verify(&path, Some(&key.public())).unwrap();
    assert!(report.is_intact(), "{:?}", report.tamper);
    assert_eq!(report.first_seq, Some(0));
    assert_eq!(report.checkpoints, 5);
    // Against another key, the first checkpoint is named.
    let other = RootKey::generate();
    let report = verify(&path, Some(&other.public())).unwrap();
    assert_eq!(report.tamper.unwrap().line, 1);
}

/// A log of 20 decisions in one file: line 1 is the run's checkpoint, decisions are lines 2-21.
fn fixture() -> (tempfile::TempDir, PathBuf, Arc<RootKey>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (log, key) = signed_log(&path, 1 << 30, 1);
    for i in 0..20 {
        log.append(&record(i)).unwrap();
    }
    drop(log);
    let original = lines(&path);
    assert_eq!(original.len(), 21);
    (dir, path, key, original)
}

fn tamper_at(path: &Path, key: &RootKey) -> Tamper {
    let report = verify(path, Some(&key.public())).unwrap();
    assert!(!report.is_intact());
    report.tamper.expect("a break is named")
}

#[test]
fn an_edited_line_is_named() {
    let (_dir, path, key, mut l) = fixture();
    l[7] = l[7].replace(r#""decision":"allow""#, r#""decision":"deny""#);
    write_lines(&path, &l);
    let t = tamper_at(&path, &key);
    assert_eq!(t.line, 8, "{t}");
    assert!(t.what.contains("changed"), "{t}");
}

#[test]
fn a_deleted_line_is_named() {
    let (_dir, path, key, mut l) = fixture();
    l.remove(10);
    write_lines(&path, &l);
    let t = tamper_at(&path, &key);
    // The line that now stands where the removed one was.
    assert_eq!(t.line, 11, "{t}");
    assert!(t.what.contains("1 line removed"), "{t}");
}

#[test]
fn an_inserted_line_is_named_whether_copied_or_forged_into_the_chain() {
    let (_dir, path, key, l) = fixture();
    // A copy of another line.
    let mut copied = l.clone();
    copied.insert(5, l[12].clone());
    write_lines(&path, &copied);
    let t = tamper_at(&path, &key);
    assert_eq!(t.line, 6, "{t}");
    assert!(t.what.contains("inserted"), "{t}");
    // A line forged to follow line 5 (seq and prev made right): the real line 6 no longer
    // follows it.
    let claims = |line: &str| {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["seq"].as_u64().unwrap()
    };
    let mut forged = serde_json::from_str::<AuditRecord>(&l[5]).unwrap();
    forged.seq = Some(claims(&l[4]) + 1);
    forged.prev = Some(hex::encode(Sha256::digest(l[4].as_bytes())));
    forged.decision = "allow".into();
    forged.task = Some("forged".into());
    let mut with_forged = l.clone();
    with_forged.insert(5, serde_json::to_string(&forged).unwrap());
    write_lines(&path, &with_forged);
    let t = tamper_at(&path, &key);
    assert_eq!(t.line, 6, "{t}");
    assert!(t.what.contains("inserted"), "{t}");
}

#[test]
fn a_rewritten_chain_is_caught_by_the_checkpoint_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (log, key) = signed_log(&path, 1 << 30, 1);
    for i in 0..10 {
        log.append(&record(i)).unwrap();
    }
    log.seal().unwrap();
    drop(log);
    // Change line 4 and recompute every `prev` after it, as someone without the key would.
    let mut l = lines(&path);
    let mut records: Vec<AuditRecord> =
        l.iter().map(|s| serde_json::from_str(s).unwrap()).collect();
    records[3].decision = "deny".into();
    for i in 3..records.len() {
        if i > 3 {
            records[i].prev = Some(hex::encode(Sha256::digest(l[i - 1].as_bytes())));
        }
        l[i] = serde_json::to_string(&records[i]).unwrap();
    }
    write_lines(&path, &l);
    let t = tamper_at(&path, &key);
    assert_eq!(t.line, l.len(), "{t}");
    assert!(t.what.contains("signature"), "{t}");
}

#[test]
fn an_untouched_log_verifies_and_an_unsigned_one_is_not_anchored() {
    let (_dir, path, key, _) = fixture();
    let report = verify(&path, Some(&key.public())).unwrap();
    assert!(report.is_intact());
    assert_eq!(
        (report.lines, report.first_seq, report.last_seq),
        (21, Some(0), Some(20))
    );
    let dir = tempfile::tempdir().unwrap();
    let unsigned = dir.path().join("audit.log");
    let log = AuditLog::open(&unsigned, 1 << 20, 1, None).unwrap();
    log.append(&record(0)).unwrap();
    let report = verify(&unsigned, Some(&key.public())).unwrap();
    assert!(report.tamper.is_none());
    assert!(
        !report.is_intact(),
        "a chain without a signed checkpoint proves nothing"
    );
}

#[test]
fn a_torn_last_line_is_cut_off_at_open_and_said_so() {
    let (_dir, path, key, l) = fixture();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(br#"{"seq":21,"prev":"ab","time":"2026-"#);
    std::fs::write(&path, &bytes).unwrap();
    let report = verify(&path, Some(&key.public())).unwrap();
    assert!(report.is_intact(), "a torn tail is a crash, not a tamper");
    assert!(report.torn_tail.is_some());
    let log = AuditLog::open(&path, 1 << 30, 1, Some(Arc::clone(&key))).unwrap();
    log.append(&record(99)).unwrap();
    let now = lines(&path);
    assert_eq!(&now[..l.len()], &l[..], "nothing else was touched");
    assert!(
        now[l.len()].contains(r#""kind":"recovered""#),
        "{}",
        now[l.len()]
    );
    assert!(now[l.len()].contains("bytes"), "{}", now[l.len()]);
    let report = verify(&path, Some(&key.public())).unwrap();
    assert!(report.is_intact(), "{:?}", report.tamper);
    assert_eq!(report.torn_tail, None);
}

#[test]
fn an_unwritable_log_is_an_error_and_the_chain_waits_for_space() {
    let log = AuditLog::open(Path::new("/dev/full"), 1 << 20, 1, None).unwrap();
    assert!(log.append(&AuditRecord::now("call", "x", "allow")).is_err());

    // The log's path points at a full device, then at a file again (space came back).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let real = dir.path().join("real.log");
    let (log, key) = signed_log(&real, 1 << 30, 1);
    drop(log);
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    let log = AuditLog::open(&path, 1 << 30, 1, Some(Arc::clone(&key))).unwrap();
    for _ in 0..3 {
        assert!(log.append(&record(0)).is_err());
    }
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&real, &path).unwrap();
    for i in 0..3 {
        log.append(&record(i)).unwrap();
    }
    let report = verify(&path, Some(&key.public())).unwrap();
    assert!(report.is_intact(), "{:?}", report.tamper);
    assert_eq!((report.first_seq, report.lines), (Some(0), 4));
}

#[test]
fn two_processes_appending_to_one_log_keep_one_chain() {
    // A server and the CLI beside it each hold the log open; their lines interleave.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (server, key) = signed_log(&path, 2048, 3);
    let cli = AuditLog::open(&path, 2048, 3, Some(Arc::clone(&key))).unwrap();
    for i in 0..60 {
        server.append(&record(i)).unwrap();
        if i % 3 == 0 {
            cli.append(&record(1000 + i)).unwrap();
        }
    }
    cli.seal().unwrap();
    server.seal().unwrap();
    let report = verify(&path, Some(&key.public())).unwrap();
    assert!(report.is_intact(), "{:?}", report.tamper);
    assert!(report.files.len() > 1, "rotated by both");
    assert_eq!(report.unsigned_tail, 0);
}

#[test]
fn a_lock_held_elsewhere_refuses_in_bounded_time_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (log, key) = signed_log(&path, 1 << 20, 1);
    log.append(&record(0)).unwrap();
    // Another process (here: another open file description) holds the lock and hangs.
    let holder = std::fs::File::open(&path).unwrap();
    holder.lock().unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = log.append(&record(1)).unwrap_err();
    assert!(capgate_core::error::chain(&err).contains("lock"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing was written");
    holder.unlock().unwrap();
    log.append(&record(2)).unwrap();
    let report = verify(&path, Some(&key.public())).unwrap();
    assert!(report.is_intact(), "{:?}", report.tamper);
}
