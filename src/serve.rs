//! `capgate serve`: build the host, pick the transport, run until a signal, shut down cleanly.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use std::path::PathBuf;

use capgate_core::Registry;
use capgate_server::config::{Config, ConfigSource};
use capgate_server::telemetry::Providers;
use capgate_server::telemetry::otel::install_tracing;
use capgate_server::transport::{HttpOptions, serve_http, serve_stdio};
use capgate_server::{Error, HostBuilder};
use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;

const DEFAULT_HTTP: &str = "127.0.0.1:8080";

pub(crate) fn serve(
    config: Config,
    args: &ServeArgs,
    root: Option<PathBuf>,
    extend: &dyn Fn(&mut Registry, &Config) -> Result<(), Error>,
) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run(config, args, root, extend))
}

async fn run(
    config: Config,
    args: &ServeArgs,
    root: Option<PathBuf>,
    extend: &dyn Fn(&mut Registry, &Config) -> Result<(), Error>,
) -> anyhow::Result<ExitCode> {
    if config.source == ConfigSource::Embedded {
        let fs: capgate_tools::FsConfig = config.tools.section("fs")?;
        eprintln!(
            "capgate: no capgate.toml found; running on the embedded default: tools confined to {} (created if missing), state (root key, task store, audit log) in {}",
            root.as_deref().unwrap_or(&fs.root).display(),
            config.state_dir.display()
        );
    } else {
        eprintln!("capgate: using config {}", config.source.describe());
    }
    let providers = Providers::from_env(&config.telemetry)?;
    install_tracing(&providers);
    eprintln!("capgate: telemetry: {}", providers.description);

    let headerless_file = args
        .dev_headerless_token
        .clone()
        .or_else(|| config.dev.headerless_token_file.clone());
    let headerless = match &headerless_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the development token file {}", f.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };

    // Upstreams start before the registry is built, so that it holds the tools they list.
    let gateway = crate::gateway(&config)?;
    // One task store for the host and the pins (one PostgreSQL pool and watcher, not two).
    let mut store = None;
    if !gateway.is_empty() {
        // Pins live in the task store, which every replica and the CLI share.
        let opened = capgate_server::store::open(&config)?;
        store = Some(std::sync::Arc::clone(&opened));
        let pins = std::sync::Arc::new(crate::upstream_cmd::StorePins(opened));
        gateway.start(pins).await?;
        for up in gateway.status() {
            eprintln!(
                "capgate: upstream `{}` ({}): {}",
                up.name, up.target, up.state
            );
        }
    }
    let (registry, upstream_notes) = match crate::registry(&config, root, &gateway, extend) {
        Ok(r) => r,
        Err(e) => {
            gateway.stop().await;
            return Err(e);
        }
    };
    for note in upstream_notes {
        eprintln!("capgate: warning: {note}");
    }
    let mut builder = HostBuilder::new(config).providers(providers);
    if let Some(store) = store {
        builder = builder.store(store);
    }
    *builder.registry_mut() = registry;
    let host = builder.build()?;
    for note in host.notes() {
        eprintln!("capgate: {note}");
    }
    let names: Vec<&str> = host.catalog().specs().map(|s| s.name.as_str()).collect();
    eprintln!(
        "capgate: hosting {} tools: {}",
        names.len(),
        names.join(", ")
    );
    eprintln!("capgate: root public key {}", host.root_public_key());

    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let reaper = host.spawn_reaper(Duration::from_secs(1));

    let result = if args.stdio {
        let token = std::env::var("CAPGATE_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty());
        if token.is_none() {
            eprintln!(
                "capgate: warning: CAPGATE_TOKEN is not set; this stdio session can list nothing and call nothing"
            );
        }
        eprintln!("capgate: serving MCP over stdio");
        serve_stdio(&host, token, shutdown.clone()).await
    } else {
        let addr = args
            .http
            .or(host.config().server.http)
            .unwrap_or_else(|| DEFAULT_HTTP.parse().expect("valid default address"));
        if headerless.is_some() {
            eprintln!(
                "capgate: WARNING: DEVELOPMENT MODE: HTTP requests without an Authorization header are treated as presenting the token in {}. Never use this outside a test on loopback.",
                headerless_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
        }
        let opts = HttpOptions {
            addr,
            headerless_token: headerless,
        };
        serve_http(&host, opts, shutdown.clone(), |bound| {
            eprintln!("capgate: serving MCP at http://{bound}/mcp (task API at http://{bound}/v1/tasks)");
            if host.config().source == ConfigSource::Embedded {
                eprintln!(
                    "capgate: next: mint an agent token (`capgate token mint --agent me --tenant default --tool fs_read`), \
                     then POST /v1/tasks with it as Bearer, or call the task_begin tool"
                );
            }
        })
        .await
    };
    reaper.abort();
    gateway.stop().await;
    let telemetry = host.telemetry().clone();
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    match result {
        Ok(()) => {
            eprintln!("capgate: stopped");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e.into()),
    }
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("capgate: cannot listen for SIGTERM: {e}");
                    let _ = tokio::signal::ctrl_c().await;
                    shutdown.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        eprintln!("capgate: shutting down");
        shutdown.cancel();
    });
}
