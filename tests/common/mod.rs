//! Shared fixtures for the end-to-end tests: a scratch capgate installation (config, root key,
//! workspace), the real `capgate` binary started over stdio or HTTP, and rmcp clients for it.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService, ServiceExt};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};
use serde_json::{Map, Value, json};

pub type Client = RunningService<RoleClient, ()>;

pub const BIN: &str = env!("CARGO_BIN_EXE_capgate");

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
    pub fn new() -> Self {
        Self::with_config("")
    }

    /// Like [`Capgate::new`], with extra TOML appended to the config.
    pub fn with_config(extra: &str) -> Self {
        Self::with_bin(PathBuf::from(BIN), extra)
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
        let text = format!(
            r#"state_dir = "state"

[tools.fs]
root = "workspace"

[tenants.acme]
resources = ["acme/"]

[tenants.globex]
resources = ["globex/"]

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

    pub fn base(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path()).unwrap()
    }

    pub fn state(&self) -> PathBuf {
        self.base().join("state")
    }

    /// `capgate --config <this config> ...`, run in the installation's directory.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.current_dir(self.dir.path())
            .arg("--config")
            .arg(&self.config)
            .env_remove("CAPGATE_TOKEN")
            .env_remove("CAPGATE_ROOT_KEY_FILE")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        c
    }

    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.cmd().args(args).output().expect("run capgate")
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

/// A running `capgate serve --http`.
pub struct Server {
    child: Child,
    pub addr: String,
    pub stderr: Arc<Mutex<String>>,
}

impl Server {
    pub fn start(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn capgate serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("serving MCP at http://").nth(1)
                    && let Some(t) = tx.take()
                {
                    let _ = t.send(rest.split("/mcp").next().unwrap_or("").to_owned());
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("capgate serve did not start:\n{}", log.lock().unwrap());
            }
        };
        Server {
            child,
            addr,
            stderr: log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An rmcp client presenting `token` as Bearer.
    pub async fn client(&self, token: &str) -> Client {
        ().serve(self.transport(token))
            .await
            .expect("http client initialize")
    }

    /// The streamable HTTP transport presenting `token`, for clients with their own handler.
    pub fn transport(&self, token: &str) -> StreamableHttpClientTransport<reqwest::Client> {
        let cfg =
            StreamableHttpClientTransportConfig::with_uri(self.url()).auth_header(token.to_owned());
        StreamableHttpClientTransport::from_config(cfg)
    }

    /// Sends SIGTERM and waits for exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        #[cfg(unix)]
        {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
        }
        for _ in 0..100 {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        self.child.wait().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test process's HTTP clients (reqwest, rmcp's client) use rustls with ring, the provider
/// capgate ships; it must be installed once before any client is built.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Arguments from a JSON object literal.
pub fn args(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("arguments must be an object"),
    }
}

/// Calls a tool; `Err` is a JSON-RPC error.
pub async fn call(
    client: &Client,
    tool: &str,
    arguments: Value,
) -> Result<CallToolResult, rmcp::ServiceError> {
    client
        .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args(arguments)))
        .await
}

/// The text of a result's first text block.
pub fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The guard's denial details from a denied result.
pub fn denial(r: &CallToolResult) -> Value {
    assert_eq!(r.is_error, Some(true), "expected a denial, got {r:?}");
    r.structured_content.clone().unwrap_or(json!(null))["capgate"].clone()
}

/// The JSON-RPC error code of a failed call.
pub fn rpc_code(e: &rmcp::ServiceError) -> i32 {
    match e {
        rmcp::ServiceError::McpError(d) => d.code.0,
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }
}

pub fn rpc_message(e: &rmcp::ServiceError) -> String {
    match e {
        rmcp::ServiceError::McpError(d) => d.message.to_string(),
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }
}

/// Names of the tools a client sees.
pub async fn tool_names(client: &Client) -> Vec<String> {
    let mut names: Vec<String> = client
        .list_all_tools()
        .await
        .expect("tools/list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    names
}

/// An example binary (built on `capgate::main_with`), built into this test's target directory.
///
/// A plain `cargo test` builds examples, but `cargo test --test NAME` does not; building here
/// also guarantees a test never runs a stale example. When it is fresh this is a quick no-op.
pub fn example_bin(name: &str) -> PathBuf {
    // <target>/<profile>/deps/<test>-<hash>
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps");
    let target_dir = profile_dir.parent().expect("<target>/<profile>");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile directory name");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "--example", name])
        .arg("--target-dir")
        .arg(target_dir);
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

/// A plain HTTP server on loopback that answers every GET with `hello from <path>` (paths
/// starting with `/redirect` get a 302 to `/elsewhere`) and counts the requests it received, so
/// a test can prove a refused fetch made no request.
pub struct Origin {
    pub addr: std::net::SocketAddr,
    pub hits: Arc<std::sync::atomic::AtomicUsize>,
    pub paths: Arc<Mutex<Vec<String>>>,
}

impl Origin {
    pub fn start() -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (h, p) = (Arc::clone(&hits), Arc::clone(&paths));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = req.split_whitespace().nth(1).unwrap_or("").to_owned();
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                p.lock().unwrap().push(path.clone());
                if path.starts_with("/redirect") {
                    let _ = write!(
                        s,
                        "HTTP/1.1 302 Found\r\nlocation: /elsewhere\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    continue;
                }
                let body = format!("hello from {path}");
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Origin { addr, hits, paths }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Appends a block to a token offline, as a sub-agent would with any Biscuit library.
pub fn attenuate(token: &str, datalog: &str) -> String {
    use biscuit_auth::{BlockBuilder, UnverifiedBiscuit};
    let t = UnverifiedBiscuit::from_base64(token).expect("token parses");
    t.append(
        BlockBuilder::new()
            .code(datalog)
            .expect("block datalog parses"),
    )
    .expect("append")
    .to_base64()
    .expect("encode")
}
