//! The `capgate` binary as a library: the CLI, and [`main_with`] for binaries that host extra
//! tools next to the built-in ones (see `examples/custom_tool.rs`).
//!
//! The real work lives in the host's crates, re-exported here: [`core`] (the Tool API, the
//! door), [`authz`] (tokens, policy, guard, issuance), [`server`] (sessions, transports,
//! stores, telemetry) and [`tools`] (the built-in tools). This crate parses the command line,
//! loads the config and wires them together.

pub mod cli;
mod commands;
mod serve;
mod upstream_cmd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

pub use capgate_authz as authz;
pub use capgate_core as core;
pub use capgate_server as server;
pub use capgate_tools as tools;
pub use capgate_upstream as upstream;

use capgate_core::Registry;
use capgate_server::{Config, Error};

/// Registers tools beyond the built-in ones.
pub trait Extension:
    Fn(&mut Registry, &Config) -> Result<(), Error> + Send + Sync + 'static
{
}
impl<F: Fn(&mut Registry, &Config) -> Result<(), Error> + Send + Sync + 'static> Extension for F {}

/// Runs the capgate CLI with only the built-in tools.
pub fn main() -> ExitCode {
    main_with(|_, _| Ok(()))
}

/// Runs the capgate CLI, with `extend` registering extra tools wherever capgate builds its
/// registry (`serve`, `token mint`, `task begin`).
pub fn main_with(extend: impl Extension) -> ExitCode {
    capgate_server::install_crypto_provider();
    let cli = cli::Cli::parse();
    match run(cli, &extend) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("capgate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    cli: cli::Cli,
    extend: &dyn Fn(&mut Registry, &Config) -> Result<(), Error>,
) -> anyhow::Result<ExitCode> {
    use cli::Command;
    match cli.command {
        Command::Serve(ref args) => {
            let mut config = load_config(&cli)?;
            if let Some(addr) = args.http {
                config.server.http = Some(addr);
            }
            config.validate()?;
            let root = args.root.as_deref().map(absolute).transpose()?;
            serve::serve(config, args, root, extend)
        }
        Command::Keys(ref k) => commands::keys(&load_config(&cli)?, k),
        Command::Token(ref t) => commands::token(&load_config(&cli)?, t, extend),
        Command::Task(ref t) => commands::task(load_config(&cli)?, t, extend),
        Command::Policy(ref p) => commands::policy(&load_config(&cli)?, p),
        Command::Audit(ref a) => commands::audit(&load_config(&cli)?, a),
        Command::Store(ref s) => commands::store(&load_config(&cli)?, s),
        Command::Upstream(ref u) => upstream_cmd::command(&load_config(&cli)?, u),
    }
}

/// `--config`, else `./capgate.toml`, else the embedded default; then `--state-dir`.
fn load_config(cli: &cli::Cli) -> anyhow::Result<Config> {
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None if cwd.join("capgate.toml").is_file() => Config::load(&cwd.join("capgate.toml"))?,
        None => Config::embedded(&cwd)?,
    };
    if let Some(dir) = &cli.state_dir {
        config.state_dir = absolute(dir)?;
    }
    Ok(config)
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()
            .context("reading the working directory")?
            .join(p))
    }
}

/// The `[[upstream]]` servers of a config, not started.
pub(crate) fn gateway(config: &Config) -> anyhow::Result<capgate_upstream::Gateway> {
    let entries = config
        .upstream
        .entries::<capgate_upstream::UpstreamConfig>()?;
    Ok(capgate_upstream::Gateway::new(entries)?)
}

/// The upstreams as the CLI knows them: not started, an `expose = "all"` upstream listing
/// what is pinned for it (so the CLI accepts the names a running capgate would host).
pub(crate) fn offline_gateway(config: &Config) -> anyhow::Result<capgate_upstream::Gateway> {
    let gateway = gateway(config)?;
    let all: Vec<String> = gateway.exposing_all().map(str::to_owned).collect();
    if !all.is_empty() {
        let pins = capgate_server::store::open(config)?.pins(None)?;
        for up in &all {
            gateway.assume_listed(
                up,
                pins.iter()
                    .filter(|p| &p.upstream == up)
                    .map(|p| p.pinned_definition.as_str()),
            );
        }
    }
    Ok(gateway)
}

/// Builds the registry: built-in tools, the upstreams' (declared ones only unless `gateway`
/// was started and listed its tools), then the extension's. `root` overrides `[tools.fs]
/// root` (`serve --root`). A `[tools.*]` table no pack read is refused.
pub(crate) fn registry(
    config: &Config,
    root: Option<PathBuf>,
    gateway: &capgate_upstream::Gateway,
    extend: &dyn Fn(&mut Registry, &Config) -> Result<(), Error>,
) -> anyhow::Result<(Registry, Vec<String>)> {
    let mut builtin = capgate_tools::BuiltinConfig {
        fs: config.tools.section("fs")?,
        http_fetch: config.tools.section("http_fetch")?,
    };
    if let Some(root) = root {
        builtin.fs.root = root;
    }
    builtin.fs.hidden = own_state(config);
    let mut registry = Registry::new();
    capgate_tools::register_builtin(&mut registry, &builtin)?;
    let notes = gateway.register(&mut registry)?;
    extend(&mut registry, config)?;
    config.tools.check_claimed()?;
    Ok((registry, notes))
}

/// Everything capgate itself keeps on disk: however the fs root is chosen (`serve --root .`),
/// no tool may read or write it.
fn own_state(config: &Config) -> Vec<PathBuf> {
    let audit = config.audit_file();
    let mut paths = vec![
        config.state_dir.clone(),
        config.root_key_file(),
        config.store_file(),
        audit.clone(),
    ];
    for i in 1..=config.audit.keep.max(1) {
        let mut rotated = audit.clone().into_os_string();
        rotated.push(format!(".{i}"));
        paths.push(PathBuf::from(rotated));
    }
    paths
}

/// Splits `TOOL=PREFIX` flags into a map.
pub(crate) fn parse_resources(
    items: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, Vec<String>>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for item in items {
        let (tool, prefix) = item.split_once('=').with_context(|| {
            format!("`--resource {item}`: expected TOOL=PREFIX, e.g. fs_read=docs/")
        })?;
        if tool.is_empty() {
            anyhow::bail!("`--resource {item}`: the tool name is empty");
        }
        out.entry(tool.to_owned())
            .or_default()
            .push(prefix.to_owned());
    }
    Ok(out)
}
