//! A scratch capgate installation (config, root key, workspace) driven through the real
//! `capgate` binary, over the CLI, stdio and HTTP.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rmcp::service::ServiceExt;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use serde_json::Value;

use crate::client::Client;
use crate::init_crypto;
use crate::server::Server;

/// A scratch capgate installation in a temporary directory.
pub struct Capgate {
    pub dir: tempfile::TempDir,
    /// The canonical fs tools' root.
    pub root: PathBuf,
    /// A directory next to the root, outside it, holding `secret.txt`.
    pub outside: PathBuf,
    pub config: PathBuf,
    /// The binary to run: `capgate`, or an example built on `capgate::main_with`.
    pub bin: PathBuf,
}

impl Capgate {
    /// An installation with the default config (tenant `acme` owns `acme/`, tenant `globex`
    /// owns `globex/`), a root key, and a few files.
    #[allow(clippy::new_without_default)] // a fixture that writes files and runs a process
    pub fn new() -> Self {
        Self::with_config("")
    }

    /// Like [`Capgate::new`], with extra TOML appended to the config.
    pub fn with_config(extra: &str) -> Self {
        Self::with_bin(capgate_bin(), extra)
    }

    /// An installation driven by another binary (an example built on `capgate::main_with`).
    pub fn with_bin(bin: PathBuf, extra: &str) -> Self {
        init_crypto();
        let dir = tempfile::tempdir().expect("tempdir");
        let base = std::fs::canonicalize(dir.path()).expect("canonical tempdir");
        let root = base.join("workspace");
        let outside = base.join("outside");
        for d in ["acme/docs", "acme/out", "globex/plans", "shared"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(
            root.join("acme/docs/readme.txt"),
            "acme readme\nline two has a needle\n",
        )
        .unwrap();
        std::fs::write(
            root.join("acme/docs/notes.md"),
            "# notes\nanother needle here\n",
        )
        .unwrap();
        std::fs::write(root.join("globex/plans/secret-plan.txt"), "globex plan\n").unwrap();
        std::fs::write(root.join("shared/common.txt"), "shared\n").unwrap();
        std::fs::write(outside.join("secret.txt"), "outside secret\n").unwrap();
        let config = base.join("capgate.toml");
        // The attack suites fire many refused calls at one task on purpose, to check each
        // refusal on its own; the anomaly rules (which would revoke such a task after a few)
        // are tested where a config names `[anomaly]`.
        let anomaly = if extra.contains("[anomaly]") {
            ""
        } else {
            "\n[anomaly]\nrevoke_after_denials = 0\nrevoke_after_out_of_intent = 0\n"
        };
        let text = format!(
            r#"state_dir = "state"

[tools.fs]
root = "workspace"

[tenants.acme]
resources = ["acme/"]

[tenants.globex]
resources = ["globex/"]
{anomaly}
{extra}
"#
        );
        std::fs::write(&config, text).unwrap();
        let me = Capgate {
            dir,
            root,
            outside,
            config,
            bin,
        };
        let out = me.run(&["keys", "init"]);
        assert!(
            out.status.success(),
            "keys init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        me
    }

    /// `n` installations configured as replicas of one service: `extra` (typically a `[store]`
    /// table naming a shared database) in every config, one root key (the first one's, named by
    /// `[keys] root_key_file`, as a secret every replica mounts) and one tool root (the first
    /// one's workspace); each keeps its own state directory and audit log.
    pub fn replicas(n: usize, extra: &str) -> Vec<Capgate> {
        let nodes: Vec<Capgate> = (0..n).map(|_| Self::with_config(extra)).collect();
        let quoted = |p: &Path| Value::String(p.display().to_string()).to_string();
        let root = quoted(&nodes[0].root);
        let key = quoted(&nodes[0].state().join("root.key"));
        for node in &nodes {
            let text = std::fs::read_to_string(&node.config).unwrap();
            let shared = text.replace("root = \"workspace\"", &format!("root = {root}"));
            assert_ne!(shared, text, "the fixture's tool root moved");
            node.rewrite_config(&format!("{shared}\n[keys]\nroot_key_file = {key}\n"));
        }
        nodes
    }

    pub fn base(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path()).unwrap()
    }

    pub fn state(&self) -> PathBuf {
        self.base().join("state")
    }

    /// `capgate --config <this config> ...`, run in the installation's directory.
    pub fn cmd(&self) -> Command {
        isolated_cmd(&self.bin, self.dir.path(), &self.config)
    }

    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.cmd().args(args).output().expect("run capgate")
    }

    /// Runs a command that must fail; its standard error.
    pub fn stderr_of_failure(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `capgate task show ID --json`, parsed.
    pub fn show_task(&self, id: &str) -> Value {
        serde_json::from_str(&self.stdout_of(&["task", "show", id, "--json"]))
            .expect("task show --json")
    }

    /// `capgate task list`: one line a task.
    pub fn task_list(&self) -> String {
        self.stdout_of(&["task", "list"])
    }

    /// Mints an agent token. `resources` are `TOOL=PREFIX`.
    pub fn mint(&self, agent: &str, tenant: &str, tools: &[&str], resources: &[&str]) -> String {
        let mut args = vec!["token", "mint", "--agent", agent, "--tenant", tenant];
        for t in tools {
            args.extend(["--tool", t]);
        }
        for r in resources {
            args.extend(["--resource", r]);
        }
        self.stdout_of(&args)
    }

    /// Runs a command that must succeed; its standard output, trimmed.
    pub fn stdout_of(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Appends TOML to the config file, as an operator editing it between runs would.
    /// Replaces the whole config file (the root key and the files stay).
    pub fn rewrite_config(&self, toml: &str) {
        std::fs::write(&self.config, toml).unwrap();
    }

    pub fn append_config(&self, toml: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, format!("{text}\n{toml}\n")).unwrap();
    }

    /// `capgate token approval --by BY [--agent AGENT]`: an approval for a task request.
    pub fn approval(&self, by: &str, agent: Option<&str>) -> String {
        let mut args = vec!["token", "approval", "--by", by];
        if let Some(a) = agent {
            args.extend(["--agent", a]);
        }
        self.stdout_of(&args)
    }

    /// `capgate task begin --json`; `Ok(json)` or `Err(stderr)`.
    pub fn begin_cli(
        &self,
        token: &str,
        purpose: &str,
        tools: &[&str],
        resources: &[&str],
        extra: &[&str],
    ) -> Result<Value, String> {
        let mut args = vec![
            "task",
            "begin",
            "--json",
            "--token",
            token,
            "--purpose",
            purpose,
        ];
        for t in tools {
            args.extend(["--tool", t]);
        }
        for r in resources {
            args.extend(["--resource", r]);
        }
        args.extend(extra);
        let out = self.run(&args);
        if out.status.success() {
            Ok(serde_json::from_slice(&out.stdout).expect("task begin --json"))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Begins a task through the CLI and returns (task id, task token).
    pub fn task(&self, agent_token: &str, tools: &[&str], resources: &[&str]) -> (String, String) {
        let v = self
            .begin_cli(
                agent_token,
                "test task",
                tools,
                resources,
                &["--approved-by", "tester"],
            )
            .expect("task begin");
        (
            v["task_id"].as_str().unwrap().to_owned(),
            v["token"].as_str().unwrap().to_owned(),
        )
    }

    /// Starts `capgate serve --http 127.0.0.1:0` and waits until it listens.
    pub fn serve_http(&self) -> Server {
        self.serve_http_with(&[], &[])
    }

    pub fn serve_http_with(&self, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = self.cmd();
        cmd.args(["serve", "--http", "127.0.0.1:0"]).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Server::start(cmd)
    }

    /// An rmcp client talking to `capgate serve --stdio` as a child process.
    pub async fn stdio_client(&self, token: Option<&str>) -> Client {
        self.stdio_client_with(token, &[]).await
    }

    pub async fn stdio_client_with(&self, token: Option<&str>, env: &[(&str, &str)]) -> Client {
        ().serve(self.stdio_transport(token, env))
            .await
            .expect("stdio client initialize")
    }

    /// The child-process transport of `capgate serve --stdio`, for clients with their own handler.
    pub fn stdio_transport(&self, token: Option<&str>, env: &[(&str, &str)]) -> TokioChildProcess {
        let config = self.config.clone();
        let dir = self.dir.path().to_path_buf();
        let token = token.map(str::to_owned);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TokioChildProcess::builder(tokio::process::Command::new(&self.bin).configure(|c| {
            c.current_dir(&dir)
                .arg("--config")
                .arg(&config)
                .args(["serve", "--stdio"])
                .env_remove("CAPGATE_TOKEN")
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .env("CAPGATE_LOG", "warn");
            if let Some(t) = &token {
                c.env("CAPGATE_TOKEN", t);
            }
            for (k, v) in &env {
                c.env(k, v);
            }
        }))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn capgate serve --stdio")
        .0
    }

    /// Every file under the outside directory, with content: a test asserts it never changes.
    pub fn outside_snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        snapshot(&self.outside)
    }

    /// Every file under the workspace, with content.
    pub fn workspace_snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        snapshot(&self.root)
    }

    /// The audit log's lines, parsed.
    pub fn audit(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.state().join("audit.log")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("audit line parses"))
            .collect()
    }

    /// The audit log's lines of the calls made under task `id`.
    pub fn audited_calls(&self, id: &str) -> Vec<Value> {
        self.audit()
            .into_iter()
            .filter(|l| l["kind"] == "call" && l["task"] == id)
            .collect()
    }
}

/// `BIN --config CONFIG`, run in `dir`, with none of the caller's capgate or OTLP settings
/// leaking in from the environment.
pub fn isolated_cmd(bin: &Path, dir: &Path, config: &Path) -> Command {
    let mut c = Command::new(bin);
    c.current_dir(dir)
        .arg("--config")
        .arg(config)
        .env_remove("CAPGATE_TOKEN")
        .env_remove("CAPGATE_CONFIG")
        .env_remove("CAPGATE_ROOT_KEY_FILE")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    c
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            } else {
                out.push((p.clone(), b"<symlink>".to_vec()));
            }
        }
    }
    out.sort();
    out
}

/// The `capgate` binary of this build (`<target>/<profile>/capgate`), which cargo builds
/// before it runs the root package's integration tests.
pub fn capgate_bin() -> PathBuf {
    let (profile_dir, _) = target_dirs();
    let bin = profile_dir.join(format!("capgate{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: the capgate binary is built by `cargo test` (or `cargo build --bin capgate`)",
        bin.display()
    );
    bin
}

/// `<target>/<profile>` and `<target>`, from the running test binary's own path
/// (`<target>/<profile>/deps/<test>-<hash>`).
fn target_dirs() -> (PathBuf, PathBuf) {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps")
        .to_path_buf();
    let target_dir = profile_dir
        .parent()
        .expect("<target>/<profile>")
        .to_path_buf();
    (profile_dir, target_dir)
}

/// An example binary (built on `capgate::main_with`), built into this test's target directory.
///
/// A plain `cargo test` builds examples, but `cargo test --test NAME` does not; building here
/// also guarantees a test never runs a stale example. When it is fresh this is a quick no-op.
pub fn example_bin(name: &str) -> PathBuf {
    let (profile_dir, target_dir) = target_dirs();
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile directory name");
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .args(["build", "--quiet", "--example", name])
        .arg("--target-dir")
        .arg(&target_dir);
    // `dev` and `test` build into `debug/`; every other profile into a directory of its name.
    if profile != "debug" {
        cargo.args(["--profile", profile]);
    }
    let out = cargo.output().expect("run cargo");
    assert!(
        out.status.success(),
        "building example `{name}` failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.is_file(), "{} was not built", bin.display());
    bin
}

/// Python packages installed once with pip into `<repo>/target/<dir>` (under a file lock, so
/// concurrent tests install once), for tests that run Python helpers with `PYTHONPATH` set to
/// the returned directory. `probe` is a path inside it that exists once the install is done.
pub fn pip_target(dir: &str, requirement: &str, probe: &str) -> PathBuf {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")).join(dir);
    let lock = dir.with_extension("lock");
    let _ = std::fs::create_dir_all(dir.parent().unwrap());
    let f = std::fs::File::create(&lock).unwrap();
    f.lock().unwrap();
    if !dir.join(probe).exists() {
        let out = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&dir)
            .arg(requirement)
            .output()
            .expect("python3 is needed by this test");
        assert!(
            out.status.success(),
            "could not install {requirement} with pip: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}
