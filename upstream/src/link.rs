//! The connection to one upstream, kept alive by a supervisor task.
//!
//! Invariants:
//! - A stdio upstream's environment is exactly PATH, HOME and its config's `env`: capgate's own
//!   environment (the caller's `CAPGATE_TOKEN`, capgate's secrets) never reaches it.
//! - A stdio upstream never outlives capgate: it is stopped at shutdown (stdin closed, then
//!   SIGTERM, then SIGKILL), killed when its handle is dropped, and asked by the kernel to die
//!   with the thread that spawned it (`PR_SET_PDEATHSIG`) should capgate be killed outright; it
//!   stays in capgate's process group, so a signal to the group reaches it too.
//! - An HTTP upstream receives the headers of its config and nothing of the caller's request.
//! - What the upstream asks of the client side (sampling, elicitation, roots) is refused, naming
//!   the upstream, unless its config's `allow` names it. Then it goes to the client whose call
//!   the upstream is serving, and only when that is certain: exactly one call in flight on this
//!   link, from a client that declared the capability. capgate never answers it itself.
//! - A call waits for a connection no longer than its own timeout; one upstream's outage is its
//!   own (each has its own supervisor and connection).

// `pre_exec` is unsafe: the closure runs in the child between fork and exec, where only
// async-signal-safe calls are allowed. It makes two (getppid and prctl) and allocates nothing.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capgate_core::{List, ToolContext};
#[allow(deprecated)]
use rmcp::model::{
    ClientCapabilities, ClientConfig, CreateMessageRequestParams, CreateMessageResult,
    ElicitRequestParams, ElicitResult, ErrorCode, Implementation, ListRootsResult,
    PaginatedRequestParams, ProgressNotificationParam, ProgressToken,
};
use rmcp::service::{NotificationContext, RequestContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, ErrorData as McpError, Peer, RoleClient, RoleServer, ServiceExt};
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Ask, Expose, UpstreamConfig};
use crate::error::Error;
use crate::pins::{Definition, PinBook, Verdict};

/// How long `serve` waits for an upstream's first connection before it goes on without it.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a connection must last for the next restart to wait only [`FIRST_BACKOFF`].
const STABLE: Duration = Duration::from_secs(10);
/// Most resources, templates or prompts capgate keeps of one upstream's listing.
const MAX_LISTED: usize = 1000;

/// What an upstream listed besides its tools.
#[derive(Default, Clone)]
pub(crate) struct Contents {
    pub(crate) resources: Vec<rmcp::model::Resource>,
    pub(crate) templates: Vec<rmcp::model::ResourceTemplate>,
    pub(crate) prompts: Vec<rmcp::model::Prompt>,
}

/// The least time between two listings an upstream's `list_changed` asks for.
const RELIST_MIN: Duration = Duration::from_secs(1);
/// How often a held-back tool's pin is read again (an operator may have pinned it).
const PIN_POLL: Duration = Duration::from_secs(1);

/// What the supervisor found at its latest connection.
#[derive(Clone, Debug)]
pub enum LinkState {
    /// Not started yet (the CLI never starts upstreams).
    Idle,
    /// Connecting, or waiting to reconnect after the reason given.
    Down(String),
    /// Connected.
    Up(Peer<RoleClient>),
    /// Stopped by shutdown.
    Stopped,
}

/// One upstream's connection and what its calls share.
pub(crate) struct Link {
    pub(crate) config: UpstreamConfig,
    state: watch::Sender<LinkState>,
    /// Progress tokens of calls in flight, to the caller's context that receives their progress.
    progress: Mutex<HashMap<ProgressToken, ToolContext>>,
    /// capgate's requests on this link not answered yet (calls, reads, prompt fetches,
    /// listings), counted from before each is sent: a request of the upstream's own can be
    /// attributed to a caller only while exactly one is outstanding.
    outstanding: std::sync::atomic::AtomicUsize,
    /// The tools the upstream listed at its latest connection.
    listed: Mutex<Option<Vec<rmcp::model::Tool>>>,
    /// Where definitions are pinned; set by [`Link::start`] (the CLI never starts a link).
    pins: std::sync::OnceLock<Arc<dyn PinBook>>,
    /// Each hosted tool's definition against its pin, by the upstream's tool name, as of the
    /// latest listing. Written before the link turns `Up`, so a call never runs on a listing
    /// that was not judged.
    verdicts: Mutex<HashMap<String, Verdict>>,
    /// Where a change of what clients would list is rung; set when the link's tools are
    /// registered.
    pub(crate) changes: std::sync::OnceLock<capgate_core::Changes>,
    /// The resources, templates and prompts it listed at its latest connection.
    pub(crate) contents: Mutex<Contents>,
    /// Rung by the upstream's `notifications/{tools,resources,prompts}/list_changed`.
    relist: tokio::sync::Notify,
    shutdown: CancellationToken,
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Link {
    pub(crate) fn new(config: UpstreamConfig) -> Arc<Link> {
        Arc::new(Link {
            config,
            state: watch::channel(LinkState::Idle).0,
            progress: Mutex::new(HashMap::new()),
            outstanding: std::sync::atomic::AtomicUsize::new(0),
            listed: Mutex::new(None),
            pins: std::sync::OnceLock::new(),
            verdicts: Mutex::new(HashMap::new()),
            changes: std::sync::OnceLock::new(),
            contents: Mutex::new(Contents::default()),
            relist: tokio::sync::Notify::new(),
            shutdown: CancellationToken::new(),
            supervisor: Mutex::new(None),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    pub(crate) fn state(&self) -> LinkState {
        self.state.borrow().clone()
    }

    pub(crate) fn listed(&self) -> Option<Vec<rmcp::model::Tool>> {
        lock(&self.listed).clone()
    }

    /// Sets what a link that is not started lists (the CLI, from the pins).
    pub(crate) fn assume_listed(&self, tools: Vec<rmcp::model::Tool>) {
        *lock(&self.listed) = Some(tools);
    }

    /// Where the supervisor keeps what the upstream listed (unit tests fill it in).
    #[cfg(test)]
    pub(crate) fn listed_slot(&self) -> &Mutex<Option<Vec<rmcp::model::Tool>>> {
        &self.listed
    }

    /// What capgate knows of a hosted tool's definition (`None`: the upstream has not listed
    /// it, or the link was never started).
    pub(crate) fn verdict(&self, remote: &str) -> Option<Verdict> {
        lock(&self.verdicts).get(remote).cloned()
    }

    /// Whether capgate hosts this listed tool (and so pins it).
    fn hosts(&self, remote: &str) -> bool {
        self.config.expose == Expose::All || self.config.tools.contains_key(remote)
    }

    /// Judges every hosted tool of a listing against its pin, pinning those seen first.
    fn review(&self, tools: &[rmcp::model::Tool]) {
        let Some(pins) = self.pins.get() else {
            return;
        };
        let mut verdicts = HashMap::new();
        for t in tools.iter().filter(|t| self.hosts(&t.name)) {
            let def = Definition::of(t);
            let pinned = pins.observe(self.name(), &t.name, &def.digest, &def.json);
            let verdict = Verdict::judge(&def.digest, pinned);
            match &verdict {
                Verdict::Changed { seen, pinned } => {
                    tracing::warn!(target: "capgate::upstream", upstream = %self.name(), tool = %t.name, pinned = %pinned, seen = %seen, "definition changed since it was pinned; the tool is held back until `capgate upstream pin {}`", self.name())
                }
                Verdict::Unknown(why) => {
                    tracing::error!(target: "capgate::upstream", upstream = %self.name(), tool = %t.name, "cannot read its pin ({why}); the tool is held back")
                }
                Verdict::Pinned { .. } => {}
            }
            verdicts.insert(t.name.to_string(), verdict);
        }
        let before = std::mem::replace(&mut *lock(&self.verdicts), verdicts);
        if before != *lock(&self.verdicts) {
            self.ring(List::Tools);
        }
    }

    /// Tells the host's clients that a list of this upstream's changed.
    fn ring(&self, list: List) {
        if let Some(c) = self.changes.get() {
            c.ring(list);
        }
    }

    /// Reads the pins again for the tools held back (an operator may have pinned them, or the
    /// store may be back).
    fn recheck(&self) {
        if !lock(&self.verdicts).values().any(Verdict::unsettled) {
            return;
        }
        let Some(pins) = self.pins.get() else {
            return;
        };
        if lock(&self.verdicts)
            .values()
            .any(|v| matches!(v, Verdict::Unknown(_)))
        {
            // A failed observation is retried whole: its first sight may not be pinned yet.
            if let Some(tools) = self.listed() {
                self.review(&tools);
            }
            return;
        }
        let pinned = pins.pinned(self.name());
        let mut changed = false;
        let mut verdicts = lock(&self.verdicts);
        for (tool, v) in verdicts.iter_mut() {
            if let Verdict::Changed { seen, .. } = v {
                let now = match &pinned {
                    Ok(map) => Ok(map.get(tool).cloned().unwrap_or_default()),
                    Err(e) => Err(e.to_string().into()),
                };
                let next = Verdict::judge(seen, now);
                if matches!(next, Verdict::Pinned { .. }) {
                    tracing::info!(target: "capgate::upstream", upstream = %self.name(), tool = %tool, "its new definition was pinned");
                }
                if *v != next {
                    changed = true;
                }
                *v = next;
            }
        }
        drop(verdicts);
        if changed {
            self.ring(List::Tools);
        }
    }

    /// Lists the upstream's tools and judges them; on failure the previous listing stands.
    async fn list(&self, peer: &Peer<RoleClient>) {
        // A listing is a request of capgate's like a call: while it is out, no request of the
        // upstream's is attributed to a caller.
        let _outstanding = self.outstanding();
        match tokio::time::timeout(CONNECT_TIMEOUT, peer.list_all_tools()).await {
            Ok(Ok(tools)) => {
                self.review(&tools);
                *lock(&self.listed) = Some(tools);
            }
            Ok(Err(e)) => {
                tracing::warn!(target: "capgate::upstream", upstream = %self.name(), "tools/list failed: {e}")
            }
            Err(_) => {
                tracing::warn!(target: "capgate::upstream", upstream = %self.name(), "tools/list did not answer")
            }
        }
        self.list_contents(peer).await;
    }

    /// Lists the upstream's resources, templates and prompts, as far as it offers them; what
    /// fails to list keeps its previous listing.
    async fn list_contents(&self, peer: &Peer<RoleClient>) {
        let caps = peer.peer_info().map(|i| i.capabilities.clone());
        let (resources, prompts) = caps
            .map(|c| (c.resources.is_some(), c.prompts.is_some()))
            .unwrap_or_default();
        let name = self.name();
        let warn = |what: &str, e: String| {
            tracing::warn!(target: "capgate::upstream", upstream = %name, "{what} failed: {e}");
        };
        let page = |c: Option<String>| Some(PaginatedRequestParams::default().with_cursor(c));
        if resources {
            let got = paged(self, "resources", |c| async move {
                peer.list_resources(page(c))
                    .await
                    .map(|r| (r.resources, r.next_cursor))
            })
            .await;
            match got {
                Ok(r) => self.replace(|c| &mut c.resources, r, List::Resources),
                Err(e) => warn("resources/list", e),
            }
            let got = paged(self, "resource templates", |c| async move {
                peer.list_resource_templates(page(c))
                    .await
                    .map(|r| (r.resource_templates, r.next_cursor))
            })
            .await;
            match got {
                Ok(t) => self.replace(|c| &mut c.templates, t, List::Resources),
                Err(e) => warn("resources/templates/list", e),
            }
        }
        if prompts {
            let got = paged(self, "prompts", |c| async move {
                peer.list_prompts(page(c))
                    .await
                    .map(|r| (r.prompts, r.next_cursor))
            })
            .await;
            match got {
                Ok(p) => self.replace(|c| &mut c.prompts, p, List::Prompts),
                Err(e) => warn("prompts/list", e),
            }
        }
    }

    /// Keeps a new listing, ringing `list` when it differs from the one it replaces.
    fn replace<T: PartialEq>(
        &self,
        field: impl FnOnce(&mut Contents) -> &mut Vec<T>,
        items: Vec<T>,
        list: List,
    ) {
        let mut c = lock(&self.contents);
        let slot = field(&mut c);
        if *slot != items {
            *slot = items;
            drop(c);
            self.ring(list);
        }
    }

    /// Starts the supervisor and waits (at most [`CONNECT_TIMEOUT`]) for its first attempt.
    /// Definitions are pinned in `pins`.
    pub(crate) async fn start(self: &Arc<Self>, pins: Arc<dyn PinBook>) -> Result<(), Error> {
        let _ = self.pins.set(pins);
        let env: Vec<_> = self.config.resolved_env()?.into_iter().collect();
        let headers: Vec<_> = self.config.resolved_headers()?.into_iter().collect();
        let mut ready = self.state.subscribe();
        ready.mark_unchanged();
        self.state
            .send_replace(LinkState::Down("connecting".into()));
        let this = Arc::clone(self);
        let handle = tokio::spawn(async move { this.supervise(env, headers).await });
        *lock(&self.supervisor) = Some(handle);
        let first = tokio::time::timeout(
            CONNECT_TIMEOUT,
            ready.wait_for(|s| !matches!(s, LinkState::Down(m) if m == "connecting")),
        )
        .await;
        if first.is_err() {
            tracing::warn!(target: "capgate::upstream", upstream = %self.name(), "no connection within {CONNECT_TIMEOUT:?}; its tools answer isError until it connects");
        }
        Ok(())
    }

    /// Stops the supervisor and the upstream.
    pub(crate) async fn stop(&self) {
        self.shutdown.cancel();
        let handle = lock(&self.supervisor).take();
        if let Some(handle) = handle {
            // The child gets rmcp's graceful sequence (3 s, SIGTERM, 3 s, SIGKILL); past
            // that, dropping the task kills it.
            if tokio::time::timeout(Duration::from_secs(8), handle)
                .await
                .is_err()
            {
                tracing::warn!(target: "capgate::upstream", upstream = %self.name(), "did not stop in time; killed");
            }
        }
        self.state.send_replace(LinkState::Stopped);
    }

    /// The connection, waiting for it at most `wait`.
    pub(crate) async fn peer(&self, wait: Duration) -> Result<Peer<RoleClient>, String> {
        let mut rx = self.state.subscribe();
        let got = tokio::time::timeout(
            wait,
            rx.wait_for(|s| matches!(s, LinkState::Up(_) | LinkState::Stopped | LinkState::Idle)),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|s| s.clone());
        match got {
            Some(LinkState::Up(peer)) => Ok(peer),
            Some(LinkState::Stopped) => Err("capgate is shutting down".into()),
            Some(LinkState::Idle) => Err("it was never started".into()),
            _ => match &*self.state.borrow() {
                LinkState::Down(why) => Err(format!("it is not connected ({why})")),
                _ => Err("it is not connected".into()),
            },
        }
    }

    /// Counts one request of capgate's as outstanding until the guard is dropped. Taken before
    /// the request is sent, so an upstream's request can never be attributed to a caller while
    /// another request is on its way.
    pub(crate) fn outstanding(&self) -> Outstanding<'_> {
        self.outstanding
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Outstanding(&self.outstanding)
    }

    pub(crate) fn track(&self, token: ProgressToken, ctx: ToolContext) {
        lock(&self.progress).insert(token, ctx);
    }

    pub(crate) fn untrack(&self, token: &ProgressToken) {
        lock(&self.progress).remove(token);
    }

    async fn supervise(
        self: Arc<Self>,
        env: Vec<(String, String)>,
        headers: Vec<(String, String)>,
    ) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            match self.connect(&env, &headers).await {
                Ok(running) => {
                    let since = std::time::Instant::now();
                    let peer = running.peer().clone();
                    self.list(&peer).await;
                    tracing::info!(target: "capgate::upstream", upstream = %self.name(), "connected");
                    self.state.send_replace(LinkState::Up(peer.clone()));
                    let ct = running.cancellation_token();
                    let mut done = Box::pin(running.waiting());
                    let mut poll = tokio::time::interval(PIN_POLL);
                    let mut last_relist = since;
                    let quit = loop {
                        tokio::select! {
                            quit = &mut done => break Some(quit),
                            _ = self.shutdown.cancelled() => break None,
                            _ = self.relist.notified() => {
                                // At most one listing per RELIST_MIN: an upstream that sends
                                // list_changed in a loop gets one listing a second, coalesced.
                                let wait = RELIST_MIN.saturating_sub(last_relist.elapsed());
                                if !wait.is_zero() {
                                    tokio::select! {
                                        _ = tokio::time::sleep(wait) => {}
                                        _ = self.shutdown.cancelled() => break None,
                                    }
                                }
                                tracing::info!(target: "capgate::upstream", upstream = %self.name(), "the upstream's lists changed; listing them again");
                                tokio::select! {
                                    _ = self.list(&peer) => {}
                                    _ = self.shutdown.cancelled() => break None,
                                }
                                last_relist = std::time::Instant::now();
                            }
                            _ = poll.tick() => self.recheck(),
                        }
                    };
                    match quit {
                        Some(quit) => {
                            let why = match quit {
                                Ok(reason) => format!("connection ended: {reason:?}"),
                                Err(e) => format!("connection task failed: {e}"),
                            };
                            // Only a connection that lasted starts the backoff over: an
                            // upstream that dies right after initialize is not restarted
                            // ten times a second.
                            if since.elapsed() >= STABLE {
                                backoff = FIRST_BACKOFF;
                            }
                            tracing::warn!(target: "capgate::upstream", upstream = %self.name(), "{why}; reconnecting in {backoff:?}");
                            self.state.send_replace(LinkState::Down(why));
                        }
                        None => {
                            ct.cancel();
                            let _ = done.await;
                            break;
                        }
                    }
                }
                Err(why) => {
                    tracing::warn!(target: "capgate::upstream", upstream = %self.name(), "cannot connect: {why}; retrying in {backoff:?}");
                    self.state.send_replace(LinkState::Down(why));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.shutdown.cancelled() => break,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn connect(
        self: &Arc<Self>,
        env: &[(String, String)],
        headers: &[(String, String)],
    ) -> Result<RunningService<RoleClient, Handler>, String> {
        let handler = Handler {
            link: Arc::downgrade(self),
        };
        let connecting = async {
            if let Some(command) = &self.config.command {
                let transport = self.spawn_child(command, env)?;
                handler
                    .serve(transport)
                    .await
                    .map_err(|e| format!("initialize failed: {e}"))
            } else {
                let url = self.config.url.as_deref().unwrap_or_default();
                let mut map = HashMap::new();
                for (k, v) in headers {
                    let name = http::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|e| format!("header `{k}`: {e}"))?;
                    let mut value =
                        http::HeaderValue::from_str(v).map_err(|e| format!("header `{k}`: {e}"))?;
                    value.set_sensitive(true);
                    map.insert(name, value);
                }
                let client = reqwest::Client::builder()
                    // An upstream that redirects elsewhere must not receive capgate's
                    // credential at another address.
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| format!("HTTP client: {e}"))?;
                let config = StreamableHttpClientTransportConfig::with_uri(url.to_owned())
                    .custom_headers(map);
                let transport = StreamableHttpClientTransport::with_client(client, config);
                handler
                    .serve(transport)
                    .await
                    .map_err(|e| format!("initialize failed: {e}"))
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no answer to initialize within {CONNECT_TIMEOUT:?}"
            )),
        }
    }

    #[allow(unsafe_code)]
    fn spawn_child(
        &self,
        command: &str,
        env: &[(String, String)],
    ) -> Result<TokioChildProcess, String> {
        let mut cmd = tokio::process::Command::new(command);
        cmd.args(&self.config.args)
            .env_clear()
            .current_dir(self.config.base())
            .kill_on_drop(true);
        for var in ["PATH", "HOME"] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure only calls prctl and getppid, both async-signal-safe, and
        // touches no memory but the copied `parent`.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // capgate died between fork and prctl: nobody would kill this child later.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other(
                        "capgate exited while starting the upstream",
                    ));
                }
                Ok(())
            });
        }
        let (proc, stderr) = TokioChildProcess::builder(cmd)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start `{command}`: {e}"))?;
        if let Some(stderr) = stderr {
            let name = self.config.name.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(target: "capgate::upstream", upstream = %name, "stderr: {line}");
                }
            });
        }
        Ok(proc)
    }
}

/// Most pages capgate asks for in one listing of resources, templates or prompts.
const MAX_PAGES: usize = 50;

/// Follows `next_cursor` until the listing ends, [`MAX_LISTED`] items or [`MAX_PAGES`] pages
/// are reached, or [`CONNECT_TIMEOUT`] passes: an upstream cannot make a listing grow without
/// bound or last forever.
async fn paged<T, F, Fut>(link: &Link, what: &str, mut next: F) -> Result<Vec<T>, String>
where
    F: FnMut(Option<String>) -> Fut,
    Fut:
        std::future::Future<Output = Result<(Vec<T>, Option<String>), rmcp::service::ServiceError>>,
{
    let walk = async {
        let mut out = Vec::new();
        let mut cursor = None;
        for _ in 0..MAX_PAGES {
            let (items, next_cursor) = next(cursor.take()).await.map_err(|e| e.to_string())?;
            out.extend(items);
            if out.len() > MAX_LISTED {
                tracing::warn!(target: "capgate::upstream", upstream = %link.name(), "lists more than {MAX_LISTED} {what}; capgate keeps the first {MAX_LISTED}");
                out.truncate(MAX_LISTED);
                return Ok(out);
            }
            match next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
        tracing::warn!(target: "capgate::upstream", upstream = %link.name(), "lists {what} over more than {MAX_PAGES} pages; capgate keeps what the first {MAX_PAGES} held");
        Ok(out)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, walk)
        .await
        .unwrap_or_else(|_| Err("no answer".into()))
}

/// One outstanding request of capgate's on a link ([`Link::outstanding`]).
pub(crate) struct Outstanding<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// capgate's side of the client connection to one upstream.
pub(crate) struct Handler {
    link: std::sync::Weak<Link>,
}

impl Handler {
    fn name(&self) -> String {
        self.link
            .upgrade()
            .map(|l| l.name().to_owned())
            .unwrap_or_default()
    }

    fn refuse(&self, what: &str) -> McpError {
        McpError::new(
            ErrorCode::INVALID_REQUEST,
            format!(
                "capgate does not grant {what} to the upstream `{}`",
                self.name()
            ),
            None,
        )
    }

    /// The client an allowed request goes to: the one whose call this upstream is serving,
    /// with that call's context and the link's timeout. Refused (and logged) when the config
    /// does not allow `ask`; when any other request of capgate's is outstanding on this link
    /// (a call, a read, a prompt fetch, a listing: capgate cannot tell whose request it is, and
    /// a wrong guess would hand one client's user or model to another's upstream call); or when
    /// that client did not declare the capability.
    fn caller(
        &self,
        ask: Ask,
        declared: impl Fn(&ClientCapabilities) -> bool,
    ) -> Result<(Peer<RoleServer>, ToolContext, Duration), McpError> {
        let what = ask.as_str();
        let name = self.name();
        let Some(link) = self.link.upgrade() else {
            return Err(self.refused(ask, "capgate is stopping"));
        };
        if !link.config.allow.contains(&ask) {
            tracing::warn!(target: "capgate::upstream", upstream = %name, "refused a {what} request (not in the upstream's `allow`)");
            return Err(self.refuse(what));
        }
        let outstanding = link.outstanding.load(std::sync::atomic::Ordering::SeqCst);
        let in_flight: Vec<ToolContext> = lock(&link.progress).values().cloned().collect();
        let ctx = match (outstanding, in_flight.as_slice()) {
            (1, [one]) => one.clone(),
            (0, _) | (1, []) => {
                return Err(self.refused(ask, "no call of a client is in flight"));
            }
            (n, _) => {
                return Err(self.refused(
                    ask,
                    &format!(
                        "{n} requests are in flight on this upstream, so whose request this is cannot be told"
                    ),
                ));
            }
        };
        let Some(peer) = ctx.peer().cloned() else {
            return Err(self.refused(ask, "the calling client has no connection to ask"));
        };
        let supports = peer
            .peer_info()
            .is_some_and(|info| declared(&info.capabilities));
        if !supports {
            return Err(self.refused(ask, "the calling client does not support it"));
        }
        tracing::info!(target: "capgate::upstream", upstream = %name, tool = %ctx.tool(), "passing a {what} request on to the calling client");
        Ok((peer, ctx, link.config.timeout))
    }

    fn refused(&self, ask: Ask, why: &str) -> McpError {
        let (what, name) = (ask.as_str(), self.name());
        tracing::warn!(target: "capgate::upstream", upstream = %name, "refused a {what} request: {why}");
        McpError::new(
            ErrorCode::INVALID_REQUEST,
            format!("capgate refused {what} for the upstream `{name}`: {why}"),
            None,
        )
    }

    /// Sends an allowed request to the calling client and waits for its answer, at most the
    /// link's timeout, and no longer than the call it belongs to or the upstream's own request.
    /// It runs in a task of its own: the upstream's request context (its request id, the
    /// protocol version in its `_meta`) must not ride along into the request the client gets.
    async fn forward<T: Send + 'static>(
        &self,
        ask: Ask,
        (ctx, timeout): (ToolContext, Duration),
        upstream: CancellationToken,
        request: impl Future<Output = Result<T, rmcp::service::ServiceError>> + Send + 'static,
    ) -> Result<T, McpError> {
        let mut task = tokio::spawn(request);
        let out = tokio::select! {
            r = &mut task => match r {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(Self::unanswered(ask, e)),
                Err(e) => Err(McpError::internal_error(
                    format!("capgate lost the {} request: {e}", ask.as_str()),
                    None,
                )),
            },
            _ = tokio::time::sleep(timeout) => Err(self.refused(
                ask,
                &format!("the client did not answer within {timeout:?}"),
            )),
            _ = ctx.cancelled().cancelled() => Err(self.refused(ask, "the call it belongs to was cancelled")),
            _ = upstream.cancelled() => Err(self.refused(ask, "the upstream cancelled it")),
        };
        task.abort();
        out
    }

    /// The client's failure to answer, as the upstream receives it.
    fn unanswered(ask: Ask, e: rmcp::service::ServiceError) -> McpError {
        match e {
            rmcp::service::ServiceError::McpError(e) => e,
            other => McpError::internal_error(
                format!(
                    "the client did not answer the {} request: {other}",
                    ask.as_str()
                ),
                None,
            ),
        }
    }
}

// Sampling and roots are deprecated (SEP-2577) but still sent by servers of older protocol
// versions; refusing them needs their types.
#[allow(deprecated)]
impl ClientHandler for Handler {
    async fn create_message(
        &self,
        mut params: CreateMessageRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, McpError> {
        let (peer, ctx, timeout) = self.caller(Ask::Sampling, |c| c.sampling.is_some())?;
        // "thisServer" or "allServers" context would be capgate's, which fronts every other
        // upstream and native tool: none of that is this upstream's to see.
        params.include_context = None;
        let request = async move { peer.create_message(params).await };
        self.forward(Ask::Sampling, (ctx, timeout), context.ct, request)
            .await
    }

    async fn list_roots(
        &self,
        context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, McpError> {
        let (peer, ctx, timeout) = self.caller(Ask::Roots, |c| c.roots.is_some())?;
        let request = async move { peer.list_roots().await };
        self.forward(Ask::Roots, (ctx, timeout), context.ct, request)
            .await
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, McpError> {
        // capgate declares form elicitation only: a URL would send the user somewhere the
        // client never agreed to be sent by this upstream.
        if matches!(request, ElicitRequestParams::UrlElicitationParams { .. }) {
            return Err(self.refused(Ask::Elicitation, "URL-mode elicitation is not passed on"));
        }
        let (peer, ctx, timeout) = self.caller(Ask::Elicitation, |c| c.elicitation.is_some())?;
        let request = async move { peer.create_elicitation(request).await };
        self.forward(Ask::Elicitation, (ctx, timeout), context.ct, request)
            .await
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let Some(link) = self.link.upgrade() else {
            return;
        };
        // Only a token of a call in flight reaches a caller: an upstream cannot send progress
        // into someone else's request.
        let ctx = lock(&link.progress).get(&params.progress_token).cloned();
        if let Some(ctx) = ctx {
            ctx.progress(params.progress, params.total, params.message)
                .await;
        }
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        // The supervisor lists again and judges the new definitions against their pins; the
        // tools hosted stay those registered at start.
        if let Some(link) = self.link.upgrade() {
            link.relist.notify_one();
        }
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        if let Some(link) = self.link.upgrade() {
            link.relist.notify_one();
        }
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        if let Some(link) = self.link.upgrade() {
            link.relist.notify_one();
        }
    }

    fn get_info(&self) -> ClientConfig {
        // Declared only what the config allows: an upstream should not even try the rest.
        let allow = self
            .link
            .upgrade()
            .map(|l| l.config.allow.clone())
            .unwrap_or_default();
        let mut caps = ClientCapabilities::default();
        if allow.contains(&Ask::Sampling) {
            caps.sampling = Some(Default::default());
        }
        if allow.contains(&Ask::Elicitation) {
            caps.elicitation = Some(Default::default());
        }
        if allow.contains(&Ask::Roots) {
            caps.roots = Some(Default::default());
        }
        ClientConfig::new(
            caps,
            Implementation::new("capgate", env!("CARGO_PKG_VERSION")),
        )
    }
}
