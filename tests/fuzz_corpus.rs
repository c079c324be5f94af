//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through the oracle its target
//! runs (`capgate_testkit::fuzz`): whatever the fuzzer once found, or kept as interesting,
//! keeps holding its invariant. Fast: a few thousand inputs in-process.

use std::path::Path;

use capgate_testkit::fuzz::{TARGETS, meta_agent_token, seed_token};

#[test]
fn every_committed_corpus_holds_its_invariants() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, oracle) in TARGETS {
        let dir = corpus.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("no corpus for `{name}` at {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "the `{name}` corpus is empty");
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            let replay = std::panic::catch_unwind(|| oracle(&data));
            assert!(replay.is_ok(), "`{name}` breaks on {}", input.display());
        }
    }
}

/// The oracles hold on what is fine and catch what they claim to, so the replay above cannot
/// pass vacuously.
#[test]
fn the_oracles_are_not_vacuous() {
    use capgate_testkit::fuzz::{fs_path, other_authority_token, token, url};
    token(seed_token().as_bytes());
    fs_path(b"a/b/../b/c.txt");
    url(b"HTTPS://Example.COM./a/./b/../c#x");
    // An authority the seed does not have (as if the root key had signed something else).
    let forged = other_authority_token();
    let caught = std::panic::catch_unwind(|| token(forged.as_bytes()));
    assert!(
        caught.is_err(),
        "the token oracle must reject a foreign authority"
    );
}

/// Writes the seed corpus of the `token` target (run by hand when the fuzz key changes):
/// `cargo test --test fuzz_corpus -- --ignored write_token_seeds`.
#[test]
#[ignore]
fn write_token_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/token");
    std::fs::create_dir_all(&dir).unwrap();
    let seed = seed_token();
    std::fs::write(dir.join("seed-agent-token"), &seed).unwrap();
    std::fs::write(dir.join("seed-truncated"), &seed[..seed.len() / 2]).unwrap();
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(seed.trim())
        .unwrap();
    std::fs::write(dir.join("seed-protobuf"), &raw).unwrap();
}

/// Writes the seed corpus of the `meta` target: the wider agent token in every place a client
/// could put it, and a few malformed `_meta` objects.
/// `cargo test --test fuzz_corpus -- --ignored write_meta_seeds`.
#[test]
#[ignore]
fn write_meta_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/meta");
    std::fs::create_dir_all(&dir).unwrap();
    let agent = meta_agent_token();
    let seeds = [
        ("seed-bare-agent-token", agent.clone()),
        (
            "seed-agent-token",
            serde_json::json!({"capgate/token": agent}).to_string(),
        ),
        (
            "seed-seed-token",
            serde_json::json!({"capgate/token": seed_token()}).to_string(),
        ),
        ("seed-empty", "{}".to_owned()),
        ("seed-empty-token", r#"{"capgate/token": ""}"#.to_owned()),
        (
            "seed-number-token",
            r#"{"capgate/token": 5, "progressToken": 1}"#.to_owned(),
        ),
        (
            "seed-array-token",
            serde_json::json!({"capgate/token": [agent]}).to_string(),
        ),
    ];
    for (name, text) in seeds {
        std::fs::write(dir.join(name), text).unwrap();
    }
}
