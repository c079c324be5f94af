//! The gateway comparison (issue 10): one upstream echo tool called directly, through capgate,
//! and through Python gateways (FastMCP's proxy, ContextForge), in alternating rounds of one run.
//!
//! The upstream is this binary's bare rmcp server (`plain-stdio` / `plain-http`): the cheapest
//! upstream there is, so every gateway's own cost shows in full. Every gateway serves its
//! clients over streamable HTTP, as a gateway run as a service does, and reaches the upstream
//! over the transport of the cell:
//!
//! * stdio upstream: each gateway starts one upstream child and multiplexes its clients onto
//!   it. "Direct" is the only way to call a stdio server directly: each client starts its own
//!   upstream process and talks to it over the pipe.
//! * HTTP upstream: one upstream server; "direct" clients talk to it, and each gateway holds
//!   its own connection to it.
//!
//! CPU per call counts every process of a chain (the gateway, its children, the HTTP upstream).

use super::*;

/// The name of the upstream in capgate's config: capgate hosts its echo as `up__echo`.
const UPSTREAM: &str = "up";

/// The upstream every cell calls: how to start it over stdio, and the one HTTP instance.
struct Upstream {
    /// The stdio command: program, arguments, and the environment it needs.
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// The HTTP instance: its URL and pid, and what keeps it running.
    url: String,
    pid: u32,
    _http: Box<dyn std::any::Any + Send>,
}

impl Upstream {
    /// The bench's bare rmcp echo server (`plain-stdio` / `plain-http`).
    fn rust(setup: &Setup) -> Result<Self, String> {
        let http = HttpServer::start(setup, Variant::Unguarded)?;
        Ok(Upstream {
            program: setup.exe.clone(),
            args: Vec::new(),
            env: vec![(ROLE_VAR.into(), "plain-stdio".into())],
            url: http.url.clone(),
            pid: http.pid(),
            _http: Box::new(http),
        })
    }

    /// The same echo tool on FastMCP (`benches/fastmcp_echo.py`).
    fn python(setup: &Setup, python: &std::path::Path) -> Result<Self, String> {
        let program = absolute(python)?;
        let port = free_port()?;
        let mut cmd = std::process::Command::new(&program);
        cmd.current_dir(&setup.workdir)
            .arg(script("fastmcp_echo.py"))
            .args(["--port", &port.to_string()]);
        let http = Service::start(cmd, "the FastMCP echo server", Ready::Port(port))?;
        Ok(Upstream {
            program,
            args: vec![
                script("fastmcp_echo.py").display().to_string(),
                "--stdio".into(),
            ],
            env: Vec::new(),
            url: http.url.clone(),
            pid: http.child.id(),
            _http: Box::new(http),
        })
    }

    /// A command that starts it over stdio.
    fn command(&self, setup: &Setup) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.program);
        c.current_dir(&setup.workdir)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }
}

/// A process group serving MCP over HTTP, stopped (SIGTERM, then SIGKILL) when dropped.
struct Service {
    child: Child,
    url: String,
    /// The words after the URL on the line that announced it (ContextForge: tool and token).
    words: Vec<String>,
}

/// How the driver learns that a service is ready.
enum Ready {
    /// A line of its stdout or stderr holds `serving MCP at URL [more words]`.
    Line,
    /// It accepts connections on this loopback port (and serves `/mcp`).
    Port(u16),
}

impl Service {
    fn start(mut cmd: std::process::Command, what: &str, ready: Ready) -> Result<Self, String> {
        // Its own process group: the Python gateways start children of their own, and all of
        // them must go when the comparison ends.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawning {what}: {e}"))?;
        let (tx, rx) = std::sync::mpsc::channel::<Vec<String>>();
        let tail = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let streams: Vec<Box<dyn std::io::Read + Send>> = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        .collect();
        for stream in streams {
            let (tx, tail) = (tx.clone(), Arc::clone(&tail));
            // Keeps draining after the announcement, so a chatty server never blocks on a full
            // pipe (and the benchmark never measures that).
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("serving MCP at ").nth(1) {
                        let _ = tx.send(rest.split_whitespace().map(str::to_owned).collect());
                    } else if let Ok(mut t) = tail.lock() {
                        t.push_back(line);
                        if t.len() > 40 {
                            t.pop_front();
                        }
                    }
                }
            });
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(180);
        let failed = |child: &mut Child, why: String| {
            let log: Vec<String> = tail
                .lock()
                .map(|t| t.iter().cloned().collect())
                .unwrap_or_default();
            stop(child);
            Err(format!("{what} {why}:\n{}", log.join("\n")))
        };
        loop {
            if let Ready::Port(port) = ready
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                let url = format!("http://127.0.0.1:{port}/mcp");
                return Ok(Service {
                    child,
                    url,
                    words: Vec::new(),
                });
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(mut words) if matches!(ready, Ready::Line) && !words.is_empty() => {
                    let url = words.remove(0);
                    return Ok(Service { child, url, words });
                }
                Ok(_) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                return failed(&mut child, format!("exited ({status}) before serving"));
            }
            if Instant::now() > deadline {
                return failed(&mut child, "did not serve within 180 s".into());
            }
        }
    }

    /// The word after `key` on the announcing line.
    fn word(&self, key: &str) -> Option<&str> {
        let at = self.words.iter().position(|w| w == key)?;
        self.words.get(at + 1).map(String::as_str)
    }

    /// This process and every descendant alive now.
    fn pids(&self) -> Vec<u32> {
        tree(self.child.id())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// SIGTERM to the child's process group, SIGKILL after 30 s (ContextForge's launcher gives its
/// children 15 s), and the child reaped.
fn stop(child: &mut Child) {
    let group = format!("-{}", child.id());
    let signal = |sig: &str| {
        let _ = std::process::Command::new("kill")
            .args([sig, "--", &group])
            .stderr(Stdio::null())
            .status();
    };
    signal("-TERM");
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            signal("-KILL");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal("-KILL");
    let _ = child.wait();
}

/// `pid` and its descendants (`/proc/<pid>/task/<tid>/children`).
fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let children =
                    std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                all.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        i += 1;
    }
    all
}

/// A free loopback port, as the kernel hands one out.
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// capgate's part: a config per upstream transport beside the bench installation (same store
/// and root key), and a task token for `up__echo` issued the way an operator does, with the
/// CLI before `serve` runs.
struct Capgate {
    stdio_config: PathBuf,
    http_config: PathBuf,
    token: String,
}

impl Capgate {
    fn create(setup: &Setup, upstream: &Upstream) -> Result<Self, String> {
        let base = std::fs::read_to_string(&setup.config).map_err(|e| e.to_string())?;
        let declared = format!("\n[upstream.tools.{ECHO}]\noperation = \"read\"\n");
        let list = |items: Vec<String>| items.join(", ");
        let stdio = format!(
            "{base}\n[[upstream]]\nname = \"{UPSTREAM}\"\ncommand = {}\nargs = [{}]\nenv = {{ {} }}\n{declared}",
            toml_string(&upstream.program.display().to_string()),
            list(upstream.args.iter().map(|a| toml_string(a)).collect()),
            list(
                upstream
                    .env
                    .iter()
                    .map(|(k, v)| format!("{k} = {}", toml_string(v)))
                    .collect()
            ),
        );
        let http = format!(
            "{base}\n[[upstream]]\nname = \"{UPSTREAM}\"\nurl = {}\n{declared}",
            toml_string(&upstream.url)
        );
        let stdio_config = setup.workdir.join("gateway-stdio.toml");
        let http_config = setup.workdir.join("gateway-http.toml");
        std::fs::write(&stdio_config, stdio).map_err(|e| e.to_string())?;
        std::fs::write(&http_config, http).map_err(|e| e.to_string())?;
        let tool = format!("{UPSTREAM}__{ECHO}");
        let agent = cli(
            setup,
            &stdio_config,
            &[
                "token",
                "mint",
                "--agent",
                "bench-agent",
                "--tenant",
                "acme",
                "--tool",
                &tool,
            ],
        )?;
        let token = cli(
            setup,
            &stdio_config,
            &[
                "task",
                "begin",
                "--token",
                &agent,
                "--purpose",
                "gateway benchmark",
                "--tool",
                &tool,
                "--ttl",
                "50m",
            ],
        )?;
        Ok(Capgate {
            stdio_config,
            http_config,
            token,
        })
    }

    fn serve(&self, setup: &Setup, http_upstream: bool) -> Result<Service, String> {
        // The same `capgate serve --http`, on the config that names the upstream.
        let config = if http_upstream {
            &self.http_config
        } else {
            &self.stdio_config
        };
        let cmd = setup
            .command_with(Variant::Guarded, true, config)
            .into_std();
        Service::start(cmd, "capgate", Ready::Line)
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Runs `capgate --config CONFIG ARGS` (this binary in its capgate role) and returns its stdout.
fn cli(setup: &Setup, config: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(&setup.exe)
        .current_dir(&setup.workdir)
        .env(ROLE_VAR, "capgate")
        .env_remove("CAPGATE_TOKEN")
        .env_remove("CAPGATE_CONFIG")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .map_err(|e| format!("running capgate {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "capgate {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// FastMCP's proxy (`benches/fastmcp_proxy.py`) in front of the upstream.
fn fastmcp(
    setup: &Setup,
    python: &std::path::Path,
    upstream: &Upstream,
    http: bool,
) -> Result<Service, String> {
    let port = free_port()?;
    let mut cmd = std::process::Command::new(absolute(python)?);
    cmd.current_dir(&setup.workdir)
        .arg(script("fastmcp_proxy.py"))
        .args(["--port", &port.to_string()]);
    upstream_args(&mut cmd, upstream, http);
    Service::start(cmd, "FastMCP's proxy", Ready::Port(port))
}

/// ContextForge (`benches/contextforge_gateway.py`) in front of the upstream.
fn contextforge(
    setup: &Setup,
    python: &std::path::Path,
    upstream: &Upstream,
    http: bool,
) -> Result<Service, String> {
    let port = free_port()?;
    let state = setup.workdir.join(format!(
        "contextforge-{}",
        if http { "http" } else { "stdio" }
    ));
    std::fs::create_dir_all(&state).map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(absolute(python)?);
    cmd.current_dir(&setup.workdir)
        .arg(script("contextforge_gateway.py"))
        .args(["--port", &port.to_string()])
        .arg("--state")
        .arg(&state);
    // ContextForge builds its children's environment from scratch: the upstream's own goes on
    // its command line.
    if !http {
        for (k, v) in &upstream.env {
            cmd.arg("--upstream-env").arg(format!("{k}={v}"));
        }
    }
    upstream_args(&mut cmd, upstream, http);
    let s = Service::start(cmd, "ContextForge", Ready::Line)?;
    if s.word("tool").is_none() || s.word("auth").is_none() {
        return Err(format!(
            "ContextForge announced no tool and token: {:?}",
            s.words
        ));
    }
    Ok(s)
}

/// A path given on the command line, made absolute against the driver's directory (the servers
/// run in the scratch directory). Symlinks stay: a venv's python is one.
fn absolute(p: &std::path::Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("benches")
        .join(name)
}

/// `--upstream-url URL`, or `--upstream-command` with the upstream's stdio command (its
/// environment set on the gateway, which passes it on).
fn upstream_args(cmd: &mut std::process::Command, upstream: &Upstream, http: bool) {
    if http {
        cmd.args(["--upstream-url", &upstream.url]);
    } else {
        cmd.envs(upstream.env.iter().map(|(k, v)| (k, v)))
            .arg("--upstream-command")
            .arg(&upstream.program)
            .args(&upstream.args);
    }
}

/// Connects `n` HTTP clients of `variant` to a running service.
async fn pool(
    variant: Variant,
    s: &Service,
    token: Option<&str>,
    tool: &str,
    n: usize,
    extra_pids: &[u32],
) -> Result<Pool, String> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(http_client(&s.url, token).await?);
    }
    let mut pids = s.pids();
    pids.extend_from_slice(extra_pids);
    Ok(Pool {
        variant,
        clients,
        tool: tool.to_owned(),
        pids,
        _server: None,
    })
}

/// `n` clients, each starting its own chain over stdio with `command` (the gateway and, under
/// it, the upstream it starts).
async fn stdio_pool(
    variant: Variant,
    n: usize,
    tool: &str,
    command: impl Fn() -> tokio::process::Command,
) -> Result<Pool, String> {
    let mut clients = Vec::with_capacity(n);
    let mut roots = Vec::with_capacity(n);
    for _ in 0..n {
        let (transport, _) = TokioChildProcess::builder(command().configure(|_| {}))
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning a stdio {variant:?}: {e}"))?;
        roots.push(transport.id().ok_or("a stdio server without a pid")?);
        clients.push(
            ().serve(transport)
                .await
                .map_err(|e| format!("stdio client of {variant:?} cannot initialize: {e}"))?,
        );
    }
    Ok(Pool {
        variant,
        clients,
        tool: tool.to_owned(),
        pids: roots.into_iter().flat_map(tree).collect(),
        _server: None,
    })
}

pub(super) async fn run(setup: &Setup, opts: &Opts) -> Result<(), String> {
    let started = Instant::now();
    let upstream = match opts.upstream.as_str() {
        "rust" => Upstream::rust(setup)?,
        "python" => {
            let py = opts
                .fastmcp_python
                .as_deref()
                .ok_or("--upstream python needs --fastmcp-python")?;
            Upstream::python(setup, py)?
        }
        other => return Err(format!("unknown upstream `{other}` (rust, python)")),
    };
    let capgate = Capgate::create(setup, &upstream)?;
    let hosted = format!("{UPSTREAM}__{ECHO}");
    println!(
        "gateway: upstream = {}; stdio cells: clients on stdio (capgate/http: capgate serving HTTP; ContextForge serves HTTP only)",
        match opts.upstream.as_str() {
            "rust" => "the bench's bare rmcp echo server",
            _ => "the FastMCP echo server (benches/fastmcp_echo.py)",
        }
    );
    print_header();
    let mut ratios = Vec::new();
    for transport in &opts.transports {
        let http = match transport.as_str() {
            "http" => true,
            "stdio" => false,
            other => return Err(format!("unknown transport `{other}` (stdio, http)")),
        };
        let up_pids: Vec<u32> = if http { vec![upstream.pid] } else { Vec::new() };
        // Services started once per transport; every cell connects new clients to them.
        let ours = capgate.serve(setup, http)?;
        let fast = match (&opts.fastmcp_python, http) {
            (Some(py), true) => Some(fastmcp(setup, py, &upstream, http)?),
            _ => None,
        };
        let forge = match &opts.contextforge_python {
            Some(py) => Some(contextforge(setup, py, &upstream, http)?),
            None => None,
        };
        for &n in &opts.clients {
            let mut pools = Vec::new();
            if http {
                pools.push(
                    Pool::http(
                        setup,
                        Variant::Unguarded,
                        n,
                        Some((&upstream.url, Some(upstream.pid))),
                    )
                    .await?,
                );
                pools.push(
                    pool(
                        Variant::Gateway,
                        &ours,
                        Some(&capgate.token),
                        &hosted,
                        n,
                        &up_pids,
                    )
                    .await?,
                );
                if let Some(s) = &fast {
                    pools.push(pool(Variant::FastMcp, s, None, ECHO, n, &up_pids).await?);
                }
            } else {
                pools.push(
                    stdio_pool(Variant::Unguarded, n, ECHO, || upstream.command(setup)).await?,
                );
                pools.push(
                    stdio_pool(Variant::Gateway, n, &hosted, || {
                        let mut c =
                            setup.command_with(Variant::Guarded, false, &capgate.stdio_config);
                        c.env("CAPGATE_TOKEN", &capgate.token);
                        c
                    })
                    .await?,
                );
                pools.push(
                    pool(
                        Variant::GatewayHttp,
                        &ours,
                        Some(&capgate.token),
                        &hosted,
                        n,
                        &[],
                    )
                    .await?,
                );
                if let Some(py) = &opts.fastmcp_python {
                    let py = absolute(py)?;
                    pools.push(
                        stdio_pool(Variant::FastMcp, n, ECHO, || {
                            let mut c = tokio::process::Command::new(&py);
                            c.current_dir(&setup.workdir)
                                .arg(script("fastmcp_proxy.py"))
                                .arg("--stdio")
                                .envs(upstream.env.iter().map(|(k, v)| (k, v)))
                                .arg("--upstream-command")
                                .arg(&upstream.program)
                                .args(&upstream.args);
                            c
                        })
                        .await?,
                    );
                }
            }
            if let Some(s) = &forge {
                let (tool, token) = (s.word("tool").unwrap_or(ECHO), s.word("auth"));
                pools.push(pool(Variant::ContextForge, s, token, tool, n, &up_pids).await?);
            }
            let m = cell(&pools, opts).await;
            for x in &m {
                print_row(transport, n, x, opts);
            }
            let rate = |v: Variant| m.iter().find(|x| x.variant == v).map(Measured::rate);
            for x in &m {
                // Each other server against capgate serving its clients the same way.
                let ours = match x.variant {
                    Variant::Gateway | Variant::GatewayHttp => continue,
                    Variant::ContextForge if !http => rate(Variant::GatewayHttp),
                    _ => rate(Variant::Gateway),
                };
                let name = if x.variant == Variant::ContextForge && !http {
                    "capgate/http"
                } else {
                    "capgate"
                };
                ratios.push((
                    transport.clone(),
                    n,
                    format!("{name} / {}", label(x.variant, opts)),
                    ours.unwrap_or(0.0) / x.rate().max(1e-9),
                ));
            }
            for p in pools {
                p.close().await;
            }
        }
    }
    println!();
    for (t, n, who, r) in &ratios {
        // A server that answered nothing right has no ratio (its errors column says why).
        if r.is_finite() && *r < 1e6 {
            println!("ratio {who} calls/s, {t:<5} upstream, {n:>2} clients: {r:.2}");
        } else {
            println!(
                "ratio {who} calls/s, {t:<5} upstream, {n:>2} clients: n/a (no correct answers)"
            );
        }
    }
    println!(
        "gateway: finished in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
