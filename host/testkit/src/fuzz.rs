//! Fuzz oracles: each takes arbitrary bytes, feeds them to one parser of untrusted input, and
//! panics when an invariant breaks, not only when the parser crashes. `cargo fuzz` drives them
//! (`fuzz/`), and `cargo test` replays the committed corpora through them
//! (`tests/fuzz_corpus.rs`), so a case the fuzzer once found stays fixed.
//!
//! The invariants:
//! * `token`: a token either is refused, or its authority block is the one the root key signed
//!   (nothing else was ever signed by the fuzz key), and it survives a round trip;
//! * `fs_path`: a resolved path is absolute, has no `.`/`..`, lies under the root, and resolves
//!   to itself again; a canonical prefix is empty or under the root;
//! * `url`: URL normalization is idempotent and never changes the host;
//! * `tool_args`: any JSON arguments to any built-in tool are prepared or refused with a
//!   reason; a prepared fs call's resource lies under the root;
//! * `meta`: whatever a call's `_meta` holds (a wider token, the agent's own token, garbage), a
//!   session presenting a read-only task token never writes and never reads outside its grant;
//! * `config`, `policy`, `jsonrpc`: refused with an error or accepted, never a panic.

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use capgate_authz::token::{AgentGrant, RootKey, mint_agent_token};
use capgate_authz::{Policy, PolicyKind, Verifier};
use capgate_core::door::Registry;

/// An oracle: panics when its parser breaks its invariant on these bytes.
pub type Oracle = fn(&[u8]);

/// Every oracle, by the name of its fuzz target and corpus directory.
pub const TARGETS: &[(&str, Oracle)] = &[
    ("token", token),
    ("fs_path", fs_path),
    ("url", url),
    ("tool_args", tool_args),
    ("config", config),
    ("policy", policy),
    ("jsonrpc", jsonrpc),
    ("meta", meta),
];

/// The fuzz root key (fixed, so committed corpora keep verifying).
const FUZZ_KEY: &str =
    "ed25519-private/6f2a0c1b9d8e7f60514233a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";

/// An agent token signed by the fuzz key.
fn fuzz_key_token(agent: &str, tenant: &str, rights: &[&str], prefixes: &[(&str, &str)]) -> String {
    let key = RootKey::from_text(FUZZ_KEY).expect("the fuzz key parses");
    let grant = AgentGrant {
        agent: agent.into(),
        tenant: tenant.into(),
        rights: rights.iter().map(|r| (*r).to_owned()).collect(),
        prefixes: prefixes
            .iter()
            .map(|(t, p)| ((*t).to_owned(), vec![(*p).to_owned()]))
            .collect(),
        ttl: None,
        workload: None,
    };
    mint_agent_token(&key, &grant)
        .expect("the token mints")
        .to_base64()
        .expect("the token serializes")
}

struct Tokens {
    verifier: Verifier,
    seed: String,
    identity: capgate_authz::token::Identity,
}

fn tokens() -> &'static Tokens {
    static T: OnceLock<Tokens> = OnceLock::new();
    T.get_or_init(|| {
        let key = RootKey::from_text(FUZZ_KEY).expect("the fuzz key parses");
        let seed = fuzz_key_token(
            "fuzz-agent",
            "acme",
            &["fs_read", "fs_list"],
            &[("fs_read", "/srv/acme/")],
        );
        // Generous Datalog time: under a sanitizer the default budget of a millisecond or so
        // refuses even the seed (a refusal, so safe, but it would hide what the oracle checks).
        let mut limits = capgate_authz::token::default_limits();
        limits.max_time = std::time::Duration::from_secs(2);
        let verifier = Verifier::with_limits(key.public(), 16, limits);
        let identity = verifier
            .verify_uncached(&seed)
            .expect("the seed verifies")
            .identity()
            .clone();
        Tokens {
            verifier,
            seed,
            identity,
        }
    })
}

/// A token whose authority the fuzz key signed but the seed does not have: what the `token`
/// oracle must reject (its own test, so that a replay cannot pass vacuously).
pub fn other_authority_token() -> String {
    fuzz_key_token("someone-else", "globex", &["fs_write"], &[])
}

/// The agent token every `token` corpus starts from.
pub fn seed_token() -> String {
    tokens().seed.clone()
}

/// Tokens: as text (base64), and the raw bytes as the protobuf inside.
pub fn token(data: &[u8]) {
    let t = tokens();
    let mut candidates = Vec::new();
    if let Ok(text) = std::str::from_utf8(data) {
        candidates.push(text.to_owned());
    }
    use base64::Engine as _;
    candidates.push(base64::engine::general_purpose::URL_SAFE.encode(data));
    for c in candidates {
        let Ok(v) = t.verifier.verify_uncached(&c) else {
            continue;
        };
        assert_eq!(
            v.identity(),
            &t.identity,
            "a token verified with an authority the root key never signed"
        );
        let again = v.to_base64().expect("a verified token serializes");
        let v2 = t
            .verifier
            .verify_uncached(&again)
            .expect("a verified token verifies again");
        assert_eq!(v2.identity(), v.identity());
        assert_eq!(v2.block_count(), v.block_count());
    }
}

struct Tree {
    _dir: tempfile::TempDir,
    root: capgate_tools::fs::FsRoot,
    registry: Registry,
}

/// A root with files, a directory, a symlink out of the root, a symlink loop, a symlink within,
/// and a hard-linked file; a sibling directory outside it.
fn tree() -> &'static Tree {
    static T: OnceLock<Tree> = OnceLock::new();
    T.get_or_init(|| {
        crate::init_crypto();
        let dir = tempfile::tempdir().expect("tempdir");
        let base = std::fs::canonicalize(dir.path()).expect("canonical");
        let root = base.join("root");
        let outside = base.join("outside");
        for d in [root.join("a/b"), root.join("acme"), outside.clone()] {
            std::fs::create_dir_all(d).expect("dirs");
        }
        std::fs::write(root.join("a/b/c.txt"), "c").expect("file");
        std::fs::write(root.join("acme/x.txt"), "x").expect("file");
        std::fs::write(outside.join("secret.txt"), "secret").expect("file");
        let _ = std::os::unix::fs::symlink(&outside, root.join("out"));
        let _ = std::os::unix::fs::symlink("loop", root.join("loop"));
        let _ = std::os::unix::fs::symlink("a/b", root.join("in"));
        let _ = std::fs::hard_link(outside.join("secret.txt"), root.join("acme/hard.txt"));
        let mut config = capgate_tools::config::BuiltinConfig::default();
        config.fs.root = root.clone();
        config.fs.enabled = true;
        config.http_fetch.enabled = true;
        let fs_root = capgate_tools::fs::FsRoot::open(&config.fs).expect("fs root");
        let mut registry = Registry::new();
        capgate_tools::register_builtin(&mut registry, &config).expect("built-in tools");
        Tree {
            _dir: dir,
            root: fs_root,
            registry,
        }
    })
}

fn assert_under_root(root: &Path, p: &Path, raw: &str) {
    assert!(p.is_absolute(), "`{raw}` resolved to a relative {p:?}");
    assert!(
        p.components()
            .all(|c| !matches!(c, Component::ParentDir | Component::CurDir)),
        "`{raw}` resolved to {p:?}, with dot segments"
    );
    assert!(
        p.starts_with(root),
        "`{raw}` resolved to {p:?}, outside {root:?}"
    );
}

/// Path canonicalization of the fs tools.
pub fn fs_path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let t = tree();
    let root = t.root.root().to_path_buf();
    if let Ok(p) = t.root.resolve("path", raw) {
        assert_under_root(&root, &p, raw);
        let text = p.to_string_lossy().into_owned();
        let again: PathBuf = t
            .root
            .resolve("path", &text)
            .unwrap_or_else(|e| panic!("`{raw}` resolved to {p:?}, which is refused: {e}"));
        assert_eq!(again, p, "resolving `{raw}` is not idempotent");
    }
    if let Ok(prefix) = t.root.canonical_prefix(raw)
        && !prefix.is_empty()
    {
        assert_under_root(&root, Path::new(&prefix), raw);
    }
}

/// URL normalization of `http_fetch` and of URL grants.
pub fn url(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(canonical) = capgate_tools::http::canonical_url(raw) else {
        return;
    };
    let again = capgate_tools::http::canonical_url(&canonical)
        .unwrap_or_else(|e| panic!("`{raw}` normalized to `{canonical}`, which is refused: {e}"));
    assert_eq!(again, canonical, "normalizing `{raw}` is not idempotent");
    let host_of = |u: &str| {
        url::Url::parse(u.trim()).ok().and_then(|u| {
            u.host_str()
                .map(|h| h.strip_suffix('.').unwrap_or(h).to_owned())
        })
    };
    assert_eq!(
        host_of(&canonical),
        host_of(raw),
        "normalizing `{raw}` changed the host"
    );
}

/// Arguments of the built-in tools: the first byte picks the tool, the rest is the JSON.
pub fn tool_args(data: &[u8]) {
    let Some((&pick, json)) = data.split_first() else {
        return;
    };
    let t = tree();
    let names: Vec<String> = t
        .registry
        .catalog()
        .specs()
        .map(|s| s.name.to_string())
        .collect();
    let name = &names[usize::from(pick) % names.len()];
    let Ok(serde_json::Value::Object(args)) = serde_json::from_slice(json) else {
        return;
    };
    if let Ok(prepared) = t.registry.catalog().prepare(name, Some(args))
        && name.starts_with("fs_")
    {
        let resource = prepared.resource().as_str();
        assert_under_root(
            t.root.root(),
            Path::new(resource.trim_end_matches('/')),
            resource,
        );
    }
}

/// `capgate.toml`.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = capgate_server::config::Config::parse(text, Path::new("/fuzz/capgate.toml")) {
        let _ = c.validate();
    }
}

/// The Datalog policies.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for kind in [PolicyKind::Invocation, PolicyKind::Issuance] {
        if let Ok(p) = Policy::parse(kind, "fuzz.datalog", text) {
            let _ = p.lint();
        }
    }
}

/// JSON-RPC messages as a client sends them (the MCP surface capgate parses first).
pub fn jsonrpc(data: &[u8]) {
    let _ = serde_json::from_slice::<rmcp::model::ClientJsonRpcMessage>(data);
}

struct MetaRig {
    runtime: tokio::runtime::Runtime,
    client: crate::Client,
    workspace: PathBuf,
    _dir: tempfile::TempDir,
}

/// An in-process host (root key: the fuzz key) with the fs tools on a workspace holding
/// `acme/` and `globex/`, and a stdio client whose session presents a task token that may only
/// `fs_read` under `acme/`.
fn meta_rig() -> &'static MetaRig {
    static R: OnceLock<MetaRig> = OnceLock::new();
    R.get_or_init(|| {
        crate::init_crypto();
        let dir = tempfile::tempdir().expect("tempdir");
        let base = std::fs::canonicalize(dir.path()).expect("canonical");
        let workspace = base.join("workspace");
        for d in ["acme/out", "globex"] {
            std::fs::create_dir_all(workspace.join(d)).expect("dirs");
        }
        std::fs::write(workspace.join("acme/a.txt"), "acme").expect("file");
        std::fs::write(workspace.join("globex/g.txt"), "GLOBEX_SECRET").expect("file");
        std::fs::create_dir_all(base.join("state")).expect("state");
        let key = RootKey::from_text(FUZZ_KEY).expect("the fuzz key parses");
        key.write(&base.join("state/root.key"), true).expect("root key");
        let mut tools = capgate_tools::config::BuiltinConfig::default();
        tools.fs.root = workspace.clone();
        tools.fs.enabled = true;
        let mut builder = capgate_server::HostBuilder::new(crate::inproc::config(
            &base,
            "[tenants.acme]\nresources = [\"acme/\"]\n[tenants.globex]\nresources = [\"globex/\"]\n",
        ))
        .create_key_if_missing(false);
        capgate_tools::register_builtin(builder.registry_mut(), &tools).expect("tools");
        let host = builder.build().expect("host builds");
        let agent = meta_agent_token();
        let verified = host.verifier().verify(&agent).expect("agent token");
        let mut intent = crate::inproc::intent("read acme", &["fs_read"]);
        intent.resources.insert("fs_read".into(), vec!["acme/".into()]);
        let task = host
            .issuer()
            .issue(&verified, intent, capgate_authz::Channel::Cli)
            .expect("task");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let client = runtime.block_on(crate::inproc::stdio_client(&host, &task.token));
        MetaRig {
            runtime,
            client,
            workspace,
            _dir: dir,
        }
    })
}

/// An agent token of the fuzz key, `acme`, allowed `fs_read` and `fs_write` everywhere: wider
/// than the session's task token (a `meta` seed).
pub fn meta_agent_token() -> String {
    fuzz_key_token("meta-agent", "acme", &["fs_read", "fs_write"], &[])
}

/// A call's `_meta`: the bytes as a JSON object, or as the `capgate/token` string.
pub fn meta(data: &[u8]) {
    let object = match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(serde_json::Value::Object(o)) => o,
        _ => {
            let mut o = serde_json::Map::new();
            o.insert(
                "capgate/token".into(),
                serde_json::Value::String(String::from_utf8_lossy(data).into_owned()),
            );
            o
        }
    };
    let rig = meta_rig();
    let with_meta = |tool: &str, args: serde_json::Value| {
        let mut params = crate::call_params(tool, args);
        let mut m = rmcp::model::RequestMetaObject::default();
        m.0.0 = object.clone();
        params.meta = Some(m);
        params
    };
    let target = rig.workspace.join("acme/out/meta.txt");
    rig.runtime.block_on(async {
        let write = rig
            .client
            .call_tool(with_meta(
                "fs_write",
                serde_json::json!({"path": "acme/out/meta.txt", "content": "x"}),
            ))
            .await;
        assert!(
            !matches!(&write, Ok(r) if r.is_error == Some(false)),
            "a `_meta` let a read-only task write: {write:?}"
        );
        assert!(!target.exists(), "a `_meta` let a read-only task write");
        let read = rig
            .client
            .call_tool(with_meta(
                "fs_read",
                serde_json::json!({"path": "globex/g.txt"}),
            ))
            .await;
        if let Ok(r) = &read {
            let shown = serde_json::to_string(r).unwrap_or_default();
            assert!(
                !shown.contains("GLOBEX_SECRET"),
                "a `_meta` let a task read outside its grant: {shown}"
            );
        }
    });
}

/// Whether the `meta` rig's session reads its own grant (so that its refusals are refusals of
/// the guard, not of a broken session).
pub fn meta_session_reads_its_grant() -> bool {
    let rig = meta_rig();
    rig.runtime.block_on(async {
        rig.client
            .call_tool(crate::call_params(
                "fs_read",
                serde_json::json!({"path": "acme/a.txt"}),
            ))
            .await
            .is_ok_and(|r| r.is_error == Some(false) && crate::text(&r).contains("acme"))
    })
}
