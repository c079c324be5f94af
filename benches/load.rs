//! End-to-end load: N concurrent MCP clients calling a trivial tool (`echo`) over stdio and
//! streamable HTTP, through capgate ("guarded") and through a bare rmcp server hosting the same
//! tool ("unguarded"), alternately in one run; then the server's RSS with many open HTTP sessions.
//!
//! This binary plays every part. Run by `cargo bench` it is the driver; re-executed with
//! `CAPGATE_BENCH_ROLE` set it becomes a server:
//!
//! * `capgate`: `capgate::main_with` with the echo tool registered, given the same arguments as
//!   `capgate serve` (so the guarded server *is* `capgate serve`, not a model of it);
//! * `plain-stdio` / `plain-http`: a minimal rmcp `ServerHandler` serving the same tool, with the
//!   same rmcp transport settings and runtime, and nothing of capgate. It exists only here: the
//!   ceiling capgate is measured against, never an option of `capgate serve`.
//!
//! Each stdio client spawns its own server process (that is how MCP over stdio works); each HTTP
//! run uses one server process. The driver measures calls/s, p50/p99 latency and the peak RSS
//! (`VmHWM`) of the server processes, and prints guarded/unguarded from the same run. With
//! `--compare-url` it instead alternates capgate over HTTP with another MCP server (FastMCP, see
//! `benches/fastmcp.sh`) under the very same client code.
//!
//! `cargo bench --bench load -- --duration 2s` finishes in well under two minutes.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InitializeResult, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
    Tool as McpTool,
};
use rmcp::service::{RequestContext, RoleClient, RoleServer, RunningService, ServiceExt};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ErrorData as McpError, Peer, ServerHandler};
use serde_json::json;
use tokio::task::JoinSet;

use support::{ECHO, Installation, args, echo_schema, echo_tool, issue_task};

/// Which part this process plays when re-executed.
const ROLE_VAR: &str = "CAPGATE_BENCH_ROLE";

type Client = RunningService<RoleClient, ()>;

#[derive(Debug, Parser)]
#[command(
    name = "load",
    about = "End-to-end load: capgate (guarded) against a bare rmcp server (unguarded), alternately"
)]
struct Opts {
    /// Measured time of each run (one variant, one round).
    #[arg(long, default_value = "5s", value_parser = duration)]
    duration: Duration,
    /// Unmeasured time before each run (connections, caches, allocator).
    #[arg(long, default_value = "500ms", value_parser = duration)]
    warmup: Duration,
    /// Rounds per cell; each round runs every variant once, the order alternating by round.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Concurrent clients, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    clients: Vec<usize>,
    /// Transports, comma-separated: `stdio`, `http`.
    #[arg(long, value_delimiter = ',', default_value = "stdio,http")]
    transports: Vec<String>,
    /// HTTP sessions to hold open for the memory measurement (0 skips it).
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Instead of the unguarded server, compare capgate over HTTP with this MCP endpoint.
    #[arg(long, value_name = "URL")]
    compare_url: Option<String>,
    /// Name of the compared server, for the report.
    #[arg(long, default_value = "external")]
    compare_name: String,
    /// Its process id, to report its peak RSS.
    #[arg(long)]
    compare_pid: Option<u32>,
    /// Extra lines for the `[guard]` table of the guarded server's `capgate.toml`, e.g.
    /// `store_poll = "100ms"`, to measure a setting end to end.
    #[arg(long, value_name = "TOML", default_value = "")]
    guard_config: String,
    /// Instead of guarded against unguarded: the gateway comparison (issue 10). The same
    /// upstream echo (the bare rmcp server, over stdio and over HTTP, per `--transports`) called
    /// directly, through capgate, and through the Python gateways given below; every gateway
    /// serves its clients over streamable HTTP.
    #[arg(long)]
    gateway: bool,
    /// The upstream of the gateway comparison: `rust` (the bare rmcp echo server, the cheapest
    /// there is) or `python` (the same tool on FastMCP, `benches/fastmcp_echo.py`; needs
    /// `--fastmcp-python`).
    #[arg(long, default_value = "rust")]
    upstream: String,
    /// A python with `fastmcp` installed: adds FastMCP's proxy (`benches/fastmcp_proxy.py`) to
    /// the gateway comparison.
    #[arg(long, value_name = "PYTHON")]
    fastmcp_python: Option<PathBuf>,
    /// A python with `mcp-contextforge-gateway` installed: adds ContextForge
    /// (`benches/contextforge_gateway.py`) to the gateway comparison.
    #[arg(long, value_name = "PYTHON")]
    contextforge_python: Option<PathBuf>,
    /// Instead of the load runs, count per call from outside, guarded and unguarded: user-space
    /// instructions (`valgrind --tool=callgrind`), syscalls and futex calls (`strace -f -c`)
    /// and heap allocations (`valgrind --tool=dhat`), each as the difference of a run of
    /// `--count-calls` more calls and a run of 100 calls, so start-up and shutdown cancel out.
    #[arg(long)]
    count: bool,
    /// Extra calls of the longer counted run.
    #[arg(long, default_value_t = 500)]
    count_calls: usize,
    /// Where the counted runs leave valgrind's and strace's files (for `callgrind_annotate`);
    /// by default the scratch directory, removed at the end.
    #[arg(long, value_name = "DIR")]
    count_dir: Option<PathBuf>,
    /// `cargo bench` passes `--bench`; without it (`cargo test --benches`) nothing runs.
    #[arg(long, hide = true)]
    bench: bool,
    /// A criterion-style name filter from `cargo bench -- FILTER`: runs only if it matches "load".
    filter: Option<String>,
}

fn duration(s: &str) -> Result<Duration, String> {
    capgate_core::time::parse_duration(s)
}

fn main() -> ExitCode {
    match std::env::var(ROLE_VAR).as_deref() {
        Ok("capgate") => {
            return capgate::main_with(|registry: &mut capgate_core::Registry, _: &_| {
                Ok(registry.register(echo_tool())?)
            });
        }
        Ok("plain-stdio") => return plain::run(plain::Listen::Stdio),
        Ok("plain-http") => return plain::run(plain::Listen::Http),
        _ => {}
    }
    let opts = Opts::parse();
    if !opts.bench {
        println!("load: skipped (a benchmark; run it with `cargo bench --bench load`)");
        return ExitCode::SUCCESS;
    }
    if opts.filter.as_deref().is_some_and(|f| !"load".contains(f)) {
        return ExitCode::SUCCESS;
    }
    capgate_server::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(drive(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A server variant under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Guarded,
    /// The bare rmcp server; in the gateway comparison, the upstream called directly.
    Unguarded,
    External,
    /// capgate in front of the upstream, serving its clients as the upstream serves its own
    /// (`--gateway`).
    Gateway,
    /// capgate over streamable HTTP in front of a stdio upstream (`--gateway`).
    GatewayHttp,
    /// FastMCP's proxy in front of the upstream (`--gateway`).
    FastMcp,
    /// ContextForge in front of the upstream (`--gateway`).
    ContextForge,
}

/// What the driver set up: the installation the capgate servers run on, and a task token.
struct Setup {
    _dir: tempfile::TempDir,
    exe: PathBuf,
    config: PathBuf,
    workdir: PathBuf,
    token: String,
}

impl Setup {
    /// An installation like an operator's: `capgate.toml`, a root key, an agent token, and a
    /// task for `echo` issued through capgate's issuer into the store the servers will read.
    fn create(guard: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let workdir = std::fs::canonicalize(dir.path()).map_err(|e| e.to_string())?;
        let inst = Installation::create(&workdir, guard, None);
        let token = {
            let host = inst.host(vec![echo_tool()]);
            let agent = inst.agent_token(&[ECHO.to_owned()], &[]);
            let agent = host.verifier().verify(&agent).map_err(|e| e.to_string())?;
            issue_task(&host, &agent, &[ECHO.to_owned()], &[])
        };
        Ok(Setup {
            exe: std::env::current_exe().map_err(|e| e.to_string())?,
            config: inst.config_path,
            workdir,
            token,
            _dir: dir,
        })
    }

    /// The command that starts a server of `variant`.
    fn command(&self, variant: Variant, http: bool) -> tokio::process::Command {
        self.command_with(variant, http, &self.config)
    }

    /// The same, a capgate server reading `config`.
    fn command_with(
        &self,
        variant: Variant,
        http: bool,
        config: &std::path::Path,
    ) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.exe);
        c.current_dir(&self.workdir)
            .env_remove("CAPGATE_TOKEN")
            .env_remove("CAPGATE_CONFIG")
            .env_remove("CAPGATE_LOG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        match (variant, http) {
            (Variant::Guarded, true) => {
                c.env(ROLE_VAR, "capgate")
                    .arg("--config")
                    .arg(config)
                    .args(["serve", "--http", "127.0.0.1:0"]);
            }
            (Variant::Guarded, false) => {
                c.env(ROLE_VAR, "capgate")
                    .env("CAPGATE_TOKEN", &self.token)
                    .arg("--config")
                    .arg(config)
                    .args(["serve", "--stdio"]);
            }
            (Variant::Unguarded, true) => {
                c.env(ROLE_VAR, "plain-http");
            }
            (Variant::Unguarded, false) => {
                c.env(ROLE_VAR, "plain-stdio");
            }
            (
                Variant::External
                | Variant::Gateway
                | Variant::GatewayHttp
                | Variant::FastMcp
                | Variant::ContextForge,
                _,
            ) => unreachable!("these servers are started by the gateway comparison"),
        }
        c
    }
}

/// A server process listening on HTTP.
struct HttpServer {
    child: Child,
    url: String,
}

impl HttpServer {
    /// Starts the server and waits for the line that names its address.
    fn start(setup: &Setup, variant: Variant) -> Result<Self, String> {
        let mut cmd = setup.command(variant, true).into_std();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawning a server: {e}"))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Keep draining stderr after the address line, or a chatty server would block on a full
        // pipe and the benchmark would measure that.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut early = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(t) = tx.as_ref() {
                    if let Some(rest) = line.split("serving MCP at ").nth(1) {
                        let url = rest.split_whitespace().next().unwrap_or("").to_owned();
                        let _ = t.send(Ok(url));
                        tx = None;
                    } else {
                        early.push_str(&line);
                        early.push('\n');
                    }
                }
            }
            if let Some(t) = tx {
                let _ = t.send(Err(early));
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(url)) => Ok(HttpServer { child, url }),
            Ok(Err(log)) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "the {variant:?} server exited before listening:\n{log}"
                ))
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("the {variant:?} server did not start within 60 s"))
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects one HTTP client (initialize handshake included).
async fn http_client(url: &str, token: Option<&str>) -> Result<Client, String> {
    let mut cfg = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    if let Some(t) = token {
        cfg = cfg.auth_header(t.to_owned());
    }
    let transport = StreamableHttpClientTransport::from_config(cfg);
    ().serve(transport)
        .await
        .map_err(|e| format!("HTTP client cannot initialize with {url}: {e}"))
}

/// Spawns one stdio server for one client; returns the client and the server's pid.
async fn stdio_client(setup: &Setup, variant: Variant) -> Result<(Client, u32), String> {
    let (transport, _) =
        TokioChildProcess::builder(setup.command(variant, false).configure(|_| {}))
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning a stdio server: {e}"))?;
    let pid = transport.id().ok_or("the stdio server has no pid")?;
    let client = ()
        .serve(transport)
        .await
        .map_err(|e| format!("stdio client cannot initialize: {e}"))?;
    Ok((client, pid))
}

/// One group of connected clients of one variant, and the processes serving them.
struct Pool {
    variant: Variant,
    clients: Vec<Client>,
    /// The name the clients call the echo tool by (a gateway may rename it).
    tool: String,
    /// Server processes whose memory and CPU time are reported.
    pids: Vec<u32>,
    /// Held so the server lives as long as the pool.
    _server: Option<Box<dyn std::any::Any + Send>>,
}

impl Pool {
    async fn http(
        setup: &Setup,
        variant: Variant,
        n: usize,
        external: Option<(&str, Option<u32>)>,
    ) -> Result<Self, String> {
        let (server, url, pids) = match external {
            Some((url, pid)) => (None, url.to_owned(), pid.into_iter().collect()),
            None => {
                let s = HttpServer::start(setup, variant)?;
                let url = s.url.clone();
                let pid = vec![s.pid()];
                (Some(Box::new(s) as Box<dyn std::any::Any + Send>), url, pid)
            }
        };
        // Every variant gets the bearer token, so requests are byte for byte alike; only capgate
        // reads it.
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            clients.push(http_client(&url, Some(&setup.token)).await?);
        }
        Ok(Pool {
            variant,
            clients,
            tool: ECHO.to_owned(),
            pids,
            _server: server,
        })
    }

    async fn stdio(setup: &Setup, variant: Variant, n: usize) -> Result<Self, String> {
        let mut clients = Vec::with_capacity(n);
        let mut pids = Vec::with_capacity(n);
        for _ in 0..n {
            let (c, pid) = stdio_client(setup, variant).await?;
            clients.push(c);
            pids.push(pid);
        }
        Ok(Pool {
            variant,
            clients,
            tool: ECHO.to_owned(),
            pids,
            _server: None,
        })
    }

    /// Peak RSS (`VmHWM`) of the server processes: the largest one and the sum, in KiB.
    fn peak_rss(&self) -> (u64, u64) {
        let v: Vec<u64> = self
            .pids
            .iter()
            .filter_map(|p| proc_status_kib(*p, "VmHWM:"))
            .collect();
        (v.iter().copied().max().unwrap_or(0), v.iter().sum())
    }

    async fn close(self) {
        for c in self.clients {
            let _ = c.cancel().await;
        }
    }
}

/// A field of `/proc/<pid>/status`, in KiB.
fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU time (user + system) the processes have used so far, in clock ticks (`/proc/<pid>/stat`
/// fields 14 to 17: exited threads, and children that exited and were reaped, included).
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| {
            let s = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            // The command name (field 2) may hold spaces; the fields after it are plain.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            Some(field(11) + field(12) + field(13) + field(14))
        })
        .sum()
}

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// What one measured run produced.
#[derive(Default)]
struct Run {
    latencies: Vec<Duration>,
    errors: u64,
    seconds: f64,
    /// Server CPU ticks used in the measured window.
    cpu_ticks: u64,
}

/// The longest a benchmarked call may take before it counts as an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Every client calls `echo` in a closed loop (next call when the last answered) for `warmup`
/// plus `duration`; calls that start in the measured window are counted, and a call counts only
/// if it returned the text it sent (a denial or an error is not a fast success).
async fn run_load(pool: &Pool, warmup: Duration, duration: Duration) -> Run {
    let start = Instant::now();
    let from = start + warmup;
    let until = from + duration;
    let mut set = JoinSet::new();
    for (i, c) in pool.clients.iter().enumerate() {
        let peer: Peer<RoleClient> = c.peer().clone();
        let tool = pool.tool.clone();
        set.spawn(async move {
            let text = format!("hello from client {i}");
            let params = CallToolRequestParams::new(tool).with_arguments(args(json!({"text": text})));
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut last = from;
            loop {
                let t = Instant::now();
                if t >= until {
                    break;
                }
                // A gateway that stops answering must not hang the benchmark: a call that takes
                // longer than this counts as an error.
                let r = match tokio::time::timeout(CALL_TIMEOUT, peer.call_tool(params.clone())).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
                };
                let d = t.elapsed();
                let ok = matches!(&r, Ok(res) if res.is_error != Some(true) && first_text(res) == Some(text.as_str()));
                if t >= from {
                    if ok {
                        lat.push(d);
                    } else {
                        errors += 1;
                        if errors == 1 {
                            eprintln!("load: client {i}: unexpected answer: {r:?}");
                        }
                    }
                    last = t + d;
                }
            }
            (lat, errors, last)
        });
    }
    tokio::time::sleep_until(from.into()).await;
    let cpu_from = cpu_ticks(&pool.pids);
    let mut run = Run::default();
    let mut end = from;
    while let Some(r) = set.join_next().await {
        let (lat, errors, last) = r.expect("client task");
        run.latencies.extend(lat);
        run.errors += errors;
        end = end.max(last);
    }
    run.seconds = end.duration_since(from).as_secs_f64();
    run.cpu_ticks = cpu_ticks(&pool.pids).saturating_sub(cpu_from);
    run
}

fn first_text(r: &CallToolResult) -> Option<&str> {
    r.content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.as_str())
}

/// The merged result of one variant in one cell.
struct Measured {
    variant: Variant,
    calls: usize,
    errors: u64,
    seconds: f64,
    p50: Duration,
    p99: Duration,
    rss_max_kib: u64,
    rss_sum_kib: u64,
    cpu_ticks: u64,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.seconds.max(1e-9)
    }

    /// Server CPU time per call, in µs (10 ms resolution over the whole run).
    fn cpu_per_call_us(&self) -> f64 {
        self.cpu_ticks as f64 / TICKS_PER_SECOND * 1e6 / (self.calls.max(1) as f64)
    }
}

fn merge(variant: Variant, runs: Vec<Run>, rss: (u64, u64)) -> Measured {
    let mut lat: Vec<Duration> = runs
        .iter()
        .flat_map(|r| r.latencies.iter().copied())
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| -> Duration {
        if lat.is_empty() {
            return Duration::ZERO;
        }
        lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)]
    };
    Measured {
        variant,
        calls: lat.len(),
        errors: runs.iter().map(|r| r.errors).sum(),
        seconds: runs.iter().map(|r| r.seconds).sum(),
        p50: pct(0.50),
        p99: pct(0.99),
        rss_max_kib: rss.0,
        rss_sum_kib: rss.1,
        cpu_ticks: runs.iter().map(|r| r.cpu_ticks).sum(),
    }
}

/// One cell: the pools of every variant measured in alternating rounds.
async fn cell(pools: &[Pool], opts: &Opts) -> Vec<Measured> {
    let mut runs: Vec<Vec<Run>> = pools.iter().map(|_| Vec::new()).collect();
    for round in 0..opts.rounds {
        // ABBA order, so that neither variant always runs first (or on a warmer machine).
        let order: Vec<usize> = if round % 2 == 0 {
            (0..pools.len()).collect()
        } else {
            (0..pools.len()).rev().collect()
        };
        for i in order {
            runs[i].push(run_load(&pools[i], opts.warmup, opts.duration).await);
        }
    }
    pools
        .iter()
        .zip(runs)
        .map(|(p, r)| merge(p.variant, r, p.peak_rss()))
        .collect()
}

fn label(v: Variant, opts: &Opts) -> String {
    match v {
        Variant::Guarded | Variant::Gateway => "capgate".into(),
        Variant::GatewayHttp => "capgate/http".into(),
        Variant::Unguarded if opts.gateway => "direct".into(),
        Variant::Unguarded => "unguarded".into(),
        Variant::External => opts.compare_name.clone(),
        Variant::FastMcp => "fastmcp".into(),
        Variant::ContextForge => "contextforge".into(),
    }
}

fn print_header() {
    println!(
        "{:<6} {:>7} {:<12} {:>10} {:>9} {:>9} {:>9} {:>7} {:>13} {:>13}",
        "trans",
        "clients",
        "server",
        "calls/s",
        "p50 µs",
        "p99 µs",
        "CPU µs",
        "errors",
        "peak RSS MiB",
        "RSS sum MiB"
    );
}

fn print_row(transport: &str, n: usize, m: &Measured, opts: &Opts) {
    println!(
        "{:<6} {:>7} {:<12} {:>10.0} {:>9.0} {:>9.0} {:>9.1} {:>7} {:>13.1} {:>13.1}",
        transport,
        n,
        label(m.variant, opts),
        m.rate(),
        m.p50.as_secs_f64() * 1e6,
        m.p99.as_secs_f64() * 1e6,
        m.cpu_per_call_us(),
        m.errors,
        m.rss_max_kib as f64 / 1024.0,
        m.rss_sum_kib as f64 / 1024.0,
    );
}

async fn drive(opts: Opts) -> Result<(), String> {
    // Under valgrind everything runs some fifty times slower: the Datalog time limit would
    // refuse calls that take microseconds natively.
    let guard = if opts.count && !opts.guard_config.contains("max_time") {
        format!("{}\nmax_time = \"10s\"", opts.guard_config)
    } else {
        opts.guard_config.clone()
    };
    let setup = Setup::create(&guard)?;
    println!(
        "load: {} s measured + {} s warm-up per run, {} rounds, clients {:?}{}",
        opts.duration.as_secs_f64(),
        opts.warmup.as_secs_f64(),
        opts.rounds,
        opts.clients,
        if opts.guard_config.is_empty() {
            String::new()
        } else {
            format!(", capgate [guard] {}", opts.guard_config)
        }
    );
    if opts.count {
        return count::run(&setup, &opts).await;
    }
    if opts.gateway {
        return gateway::run(&setup, &opts).await;
    }
    let started = Instant::now();
    let mut ratios = Vec::new();
    print_header();

    if let Some(url) = opts.compare_url.clone() {
        for &n in &opts.clients {
            let ours = Pool::http(&setup, Variant::Guarded, n, None).await?;
            let theirs =
                Pool::http(&setup, Variant::External, n, Some((&url, opts.compare_pid))).await?;
            let pools = [ours, theirs];
            let m = cell(&pools, &opts).await;
            for x in &m {
                print_row("http", n, x, &opts);
            }
            ratios.push((
                "http",
                n,
                m[0].rate() / m[1].rate().max(1e-9),
                m[0].cpu_per_call_us() - m[1].cpu_per_call_us(),
            ));
            for p in pools {
                p.close().await;
            }
        }
        println!();
        for (t, n, r, _) in &ratios {
            println!(
                "ratio capgate/{} calls/s, {t}, {n:>2} clients: {r:.2}",
                opts.compare_name
            );
        }
        println!("load: finished in {:.0} s", started.elapsed().as_secs_f64());
        return Ok(());
    }

    for transport in &opts.transports {
        let http = match transport.as_str() {
            "http" => true,
            "stdio" => false,
            other => return Err(format!("unknown transport `{other}` (stdio, http)")),
        };
        for &n in &opts.clients {
            let mut pools = Vec::new();
            for v in [Variant::Guarded, Variant::Unguarded] {
                pools.push(if http {
                    Pool::http(&setup, v, n, None).await?
                } else {
                    Pool::stdio(&setup, v, n).await?
                });
            }
            let m = cell(&pools, &opts).await;
            for x in &m {
                print_row(transport, n, x, &opts);
            }
            ratios.push((
                transport.as_str(),
                n,
                m[0].rate() / m[1].rate().max(1e-9),
                m[0].cpu_per_call_us() - m[1].cpu_per_call_us(),
            ));
            for p in pools {
                p.close().await;
            }
        }
    }
    println!();
    for (t, n, r, cpu) in &ratios {
        // capgate only adds work: a ratio above 1 is the machine's noise, never a win.
        let noise = if *r > 1.0 { " (above 1: noise)" } else { "" };
        println!(
            "ratio guarded/unguarded calls/s, {t:<5}, {n:>2} clients: {r:.3}{noise}; server CPU per call {cpu:+.1} µs"
        );
    }

    if opts.sessions > 0 {
        println!();
        for v in [Variant::Guarded, Variant::Unguarded] {
            let (idle, rss, hwm) = open_sessions(&setup, v, opts.sessions).await?;
            println!(
                "{} HTTP sessions open, {}: RSS {:.1} MiB (idle before: {:.1} MiB, peak {:.1} MiB)",
                opts.sessions,
                label(v, &opts),
                rss as f64 / 1024.0,
                idle as f64 / 1024.0,
                hwm as f64 / 1024.0
            );
        }
    }
    println!("load: finished in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Opens `n` HTTP sessions on a fresh server, each making one call, and reads the server's
/// RSS while all of them are open. Returns (RSS idle, RSS with the sessions, peak), in KiB.
async fn open_sessions(
    setup: &Setup,
    variant: Variant,
    n: usize,
) -> Result<(u64, u64, u64), String> {
    let server = HttpServer::start(setup, variant)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle = proc_status_kib(server.pid(), "VmRSS:").unwrap_or(0);
    let url: Arc<str> = Arc::from(server.url.as_str());
    let token: Arc<str> = Arc::from(setup.token.as_str());
    // Opened a few dozen at a time: the point is sessions held open, not a connection storm.
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    let mut set = JoinSet::new();
    for i in 0..n {
        let (url, token, limit) = (Arc::clone(&url), Arc::clone(&token), Arc::clone(&limit));
        set.spawn(async move {
            let _permit = limit.acquire_owned().await.map_err(|e| e.to_string())?;
            let c = http_client(&url, Some(&token)).await?;
            let text = format!("session {i}");
            let r = c
                .call_tool(
                    CallToolRequestParams::new(ECHO).with_arguments(args(json!({"text": text}))),
                )
                .await
                .map_err(|e| e.to_string())?;
            if first_text(&r) != Some(text.as_str()) {
                return Err(format!("unexpected answer: {r:?}"));
            }
            Ok::<Client, String>(c)
        });
    }
    let mut clients = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        clients.push(r.map_err(|e| e.to_string())??);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = proc_status_kib(server.pid(), "VmRSS:").unwrap_or(0);
    let hwm = proc_status_kib(server.pid(), "VmHWM:").unwrap_or(0);
    for c in clients {
        let _ = c.cancel().await;
    }
    drop(server);
    Ok((idle, rss, hwm))
}

/// Counting from outside: the same server commands, run under valgrind or strace, driven by one
/// client making calls one after another.
mod count {
    use super::*;

    /// What is counted, and by which wrapper.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Counter {
        Instructions,
        Syscalls,
        Allocations,
    }

    /// One run's totals.
    #[derive(Default, Clone, Copy)]
    struct Totals {
        instructions: f64,
        syscalls: f64,
        futex: f64,
        allocations: f64,
        bytes: f64,
    }

    impl Totals {
        fn per_call(long: Totals, short: Totals, calls: usize) -> Totals {
            let d = |a: f64, b: f64| (a - b) / calls as f64;
            Totals {
                instructions: d(long.instructions, short.instructions),
                syscalls: d(long.syscalls, short.syscalls),
                futex: d(long.futex, short.futex),
                allocations: d(long.allocations, short.allocations),
                bytes: d(long.bytes, short.bytes),
            }
        }

        fn add(&mut self, c: Counter, other: Totals) {
            match c {
                Counter::Instructions => self.instructions = other.instructions,
                Counter::Syscalls => {
                    self.syscalls = other.syscalls;
                    self.futex = other.futex;
                }
                Counter::Allocations => {
                    self.allocations = other.allocations;
                    self.bytes = other.bytes;
                }
            }
        }
    }

    /// The first calls of every run, which the longer run repeats.
    const BASE_CALLS: usize = 100;

    pub(super) async fn run(setup: &Setup, opts: &Opts) -> Result<(), String> {
        for tool in ["valgrind", "strace"] {
            let found = std::process::Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                return Err(format!("--count needs `{tool}` on PATH"));
            }
        }
        println!(
            "count: per call = (run of {} calls - run of {BASE_CALLS} calls) / {}, one client, calls one after another",
            BASE_CALLS + opts.count_calls,
            opts.count_calls
        );
        println!(
            "{:<6} {:<10} {:>12} {:>10} {:>8} {:>10} {:>10}",
            "trans", "server", "instr/call", "sys/call", "futex", "allocs", "bytes"
        );
        for transport in &opts.transports {
            let http = match transport.as_str() {
                "http" => true,
                "stdio" => false,
                other => return Err(format!("unknown transport `{other}` (stdio, http)")),
            };
            let mut per = Vec::new();
            for variant in [Variant::Guarded, Variant::Unguarded] {
                let mut t = Totals::default();
                for c in [
                    Counter::Instructions,
                    Counter::Syscalls,
                    Counter::Allocations,
                ] {
                    let short = measure(setup, opts, variant, http, c, BASE_CALLS).await?;
                    let long =
                        measure(setup, opts, variant, http, c, BASE_CALLS + opts.count_calls)
                            .await?;
                    t.add(c, Totals::per_call(long, short, opts.count_calls));
                }
                print_counts(transport, &label(variant, opts), &t);
                per.push(t);
            }
            let d = Totals {
                instructions: per[0].instructions - per[1].instructions,
                syscalls: per[0].syscalls - per[1].syscalls,
                futex: per[0].futex - per[1].futex,
                allocations: per[0].allocations - per[1].allocations,
                bytes: per[0].bytes - per[1].bytes,
            };
            print_counts(transport, "extra", &d);
        }
        Ok(())
    }

    fn print_counts(transport: &str, who: &str, t: &Totals) {
        println!(
            "{:<6} {:<10} {:>12.0} {:>10.1} {:>8.1} {:>10.1} {:>10.0}",
            transport, who, t.instructions, t.syscalls, t.futex, t.allocations, t.bytes
        );
    }

    /// One counted run of `calls` calls.
    async fn measure(
        setup: &Setup,
        opts: &Opts,
        variant: Variant,
        http: bool,
        counter: Counter,
        calls: usize,
    ) -> Result<Totals, String> {
        let dir = opts.count_dir.as_deref().unwrap_or(&setup.workdir);
        let out = dir.join(format!(
            "count-{}-{}-{}-{calls}.out",
            label_of(variant),
            if http { "http" } else { "stdio" },
            match counter {
                Counter::Instructions => "callgrind",
                Counter::Syscalls => "strace",
                Counter::Allocations => "dhat",
            }
        ));
        let _ = std::fs::remove_file(&out);
        let log = out.with_extension("log");
        let wrapper: Vec<String> = match counter {
            Counter::Instructions => vec![
                "valgrind".into(),
                "--tool=callgrind".into(),
                format!("--callgrind-out-file={}", out.display()),
                format!("--log-file={}", log.display()),
            ],
            Counter::Allocations => vec![
                "valgrind".into(),
                "--tool=dhat".into(),
                "--dhat-out-file=/dev/null".into(),
                format!("--log-file={}", out.display()),
            ],
            Counter::Syscalls => vec![
                "strace".into(),
                "-f".into(),
                "-c".into(),
                "-o".into(),
                out.display().to_string(),
            ],
        };
        let inner = setup.command(variant, http).into_std();
        let mut cmd = std::process::Command::new(&wrapper[0]);
        cmd.args(&wrapper[1..])
            .arg(inner.get_program())
            .args(inner.get_args());
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        if let Some(d) = inner.get_current_dir() {
            cmd.current_dir(d);
        }
        // Its own process group, so that a signal reaches the wrapper and the server alike.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut cmd = tokio::process::Command::from(cmd);
        if http {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("spawning {wrapper:?}: {e}"))?;
            let url = listening_url(&mut child).await?;
            let client = http_client(&url, Some(&setup.token)).await?;
            call_n(&client, calls).await?;
            let _ = client.cancel().await;
            let pid = child.id().ok_or("the counted server has no pid")?;
            let _ = std::process::Command::new("kill")
                .args(["-TERM", "--", &format!("-{pid}")])
                .status();
            finish(&mut child).await?;
        } else {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("spawning {wrapper:?}: {e}"))?;
            let stdin = child.stdin.take().ok_or("no stdin")?;
            let stdout = child.stdout.take().ok_or("no stdout")?;
            let client = ()
                .serve((stdout, stdin))
                .await
                .map_err(|e| format!("stdio client cannot initialize: {e}"))?;
            call_n(&client, calls).await?;
            // Closing stdin ends the session; the server exits by itself and the wrapper
            // writes its counts.
            let _ = client.cancel().await;
            finish(&mut child).await?;
        }
        read_totals(counter, &out)
    }

    fn label_of(v: Variant) -> &'static str {
        match v {
            Variant::Guarded => "guarded",
            Variant::Unguarded => "unguarded",
            Variant::External
            | Variant::Gateway
            | Variant::GatewayHttp
            | Variant::FastMcp
            | Variant::ContextForge => "external",
        }
    }

    async fn listening_url(child: &mut tokio::process::Child) -> Result<String, String> {
        use tokio::io::AsyncBufReadExt as _;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let found = tokio::time::timeout(Duration::from_secs(120), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("serving MCP at ").nth(1) {
                    return Some(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or("the counted HTTP server did not say where it listens")?;
        // Keep draining, so a chatty server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(found)
    }

    async fn finish(child: &mut tokio::process::Child) -> Result<(), String> {
        match tokio::time::timeout(Duration::from_secs(120), child.wait()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("waiting for the counted server: {e}")),
            Err(_) => {
                let _ = child.kill().await;
                Err("the counted server did not exit within 120 s".into())
            }
        }
    }

    async fn call_n(client: &Client, calls: usize) -> Result<(), String> {
        let text = "hello from the counting client";
        let params = CallToolRequestParams::new(ECHO).with_arguments(args(json!({"text": text})));
        for _ in 0..calls {
            let r = client
                .call_tool(params.clone())
                .await
                .map_err(|e| format!("counted call: {e}"))?;
            if first_text(&r) != Some(text) {
                return Err(format!("counted call: unexpected answer {r:?}"));
            }
        }
        Ok(())
    }

    /// A number as valgrind prints it (`1,234,567`).
    fn number(s: &str) -> Option<f64> {
        s.replace(',', "").parse().ok()
    }

    fn read_totals(counter: Counter, out: &std::path::Path) -> Result<Totals, String> {
        let text = std::fs::read_to_string(out)
            .map_err(|e| format!("reading the counts in {}: {e}", out.display()))?;
        let mut t = Totals::default();
        match counter {
            Counter::Instructions => {
                // Every thread's costs are in one file; `summary:` is their total.
                t.instructions = text
                    .lines()
                    .find_map(|l| l.strip_prefix("summary:"))
                    .and_then(|n| number(n.trim()))
                    .ok_or_else(|| format!("no `summary:` in {}", out.display()))?;
            }
            Counter::Allocations => {
                // `==pid== Total:     12,345 bytes in 678 blocks`
                let line = text
                    .lines()
                    .find(|l| l.contains("Total:"))
                    .ok_or_else(|| format!("no `Total:` in {}", out.display()))?;
                let words: Vec<&str> = line.split_whitespace().collect();
                let at = |w: &str| words.iter().position(|x| *x == w);
                let (b, i) = at("bytes").zip(at("in")).ok_or("unreadable dhat total")?;
                t.bytes = number(words[b - 1]).ok_or("unreadable dhat bytes")?;
                t.allocations = number(words[i + 1]).ok_or("unreadable dhat blocks")?;
            }
            Counter::Syscalls => {
                // `% time seconds usecs/call calls [errors] syscall`: calls is the 4th column.
                for l in text.lines() {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    if w.len() < 5 {
                        continue;
                    }
                    let Some(calls) = number(w[3]) else { continue };
                    match w[w.len() - 1] {
                        "total" => t.syscalls = calls,
                        "futex" => t.futex = calls,
                        _ => {}
                    }
                }
            }
        }
        Ok(t)
    }
}

#[path = "load/gateway.rs"]
mod gateway;

/// The unguarded server: rmcp and the echo tool, nothing else.
mod plain {
    use super::*;

    pub(super) enum Listen {
        Stdio,
        Http,
    }

    /// Serves the echo tool the way a plain rmcp server would: arguments deserialized, no
    /// credential, no policy, no audit.
    #[derive(Clone)]
    struct Echo {
        tool: Arc<McpTool>,
    }

    impl Echo {
        fn new() -> Self {
            Echo {
                tool: Arc::new(McpTool::new(
                    ECHO,
                    "Returns its text argument.",
                    Arc::new(echo_schema()),
                )),
            }
        }
    }

    impl ServerHandler for Echo {
        fn get_info(&self) -> ServerConfig {
            InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
                .with_server_info(Implementation::new("plain-echo", env!("CARGO_PKG_VERSION")))
        }

        async fn list_tools(
            &self,
            _request: Option<PaginatedRequestParams>,
            _context: RequestContext<RoleServer>,
        ) -> Result<ListToolsResult, McpError> {
            Ok(ListToolsResult::with_all_items(vec![(*self.tool).clone()]))
        }

        async fn call_tool(
            &self,
            request: CallToolRequestParams,
            _context: RequestContext<RoleServer>,
        ) -> Result<CallToolResponse, McpError> {
            if request.name != ECHO {
                return Err(McpError::invalid_params(
                    format!("unknown tool `{}`", request.name),
                    None,
                ));
            }
            let text = request
                .arguments
                .as_ref()
                .and_then(|a| a.get("text"))
                .and_then(|t| t.as_str())
                .ok_or_else(|| McpError::invalid_params("`text` must be a string", None))?;
            Ok(CallToolResult::success(vec![ContentBlock::text(text.to_owned())]).into())
        }
    }

    pub(super) fn run(listen: Listen) -> ExitCode {
        // The same runtime `capgate serve` builds.
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("plain: cannot start a runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = rt.block_on(async {
            match listen {
                Listen::Stdio => {
                    let running = Echo::new()
                        .serve(rmcp::transport::stdio())
                        .await
                        .map_err(|e| e.to_string())?;
                    running.waiting().await.map_err(|e| e.to_string())?;
                    Ok(())
                }
                Listen::Http => serve_http().await,
            }
        });
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("plain: {e}");
                ExitCode::FAILURE
            }
        }
    }

    async fn serve_http() -> Result<(), String> {
        use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
        use rmcp::transport::streamable_http_server::{
            StreamableHttpServerConfig, StreamableHttpService,
        };
        // capgate's defaults for the same rmcp settings, so the transports are configured alike.
        let defaults = capgate_server::config::ServerConfig::default();
        let service = StreamableHttpService::new(
            || Ok(Echo::new()),
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default()
                .with_allowed_hosts(defaults.allowed_hosts.clone())
                .with_allowed_origins(defaults.allowed_origins.clone())
                .with_max_request_body_bytes(defaults.max_request_bytes),
        );
        let router = axum::Router::new().nest_service("/mcp", service);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        eprintln!("plain: serving MCP at http://{addr}/mcp");
        // Small writes (an SSE event, then the end of the stream) go out at once, as
        // capgate's own listener sends them.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, router)
            .await
            .map_err(|e| e.to_string())
    }
}
