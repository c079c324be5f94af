//! Who hears that a list changed: every connected client is sent
//! `notifications/{tools,resources,prompts}/list_changed` when a provider (an upstream) rings
//! the registry's [`Changes`].
//!
//! Invariant: a notification says only *that* a list may have changed; what the client then
//! lists is answered by the guard as always, so a client learns nothing of what it may not see
//! beyond the fact that something changed. Bursts are coalesced, and a client that does not take
//! its notification in time is skipped, never waited on.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use capgate_core::Changes;
use rmcp::service::{Peer, RoleServer};

/// How long a burst of changes is gathered before clients are told once.
const COALESCE: Duration = Duration::from_millis(250);
/// How long one client may take to accept a notification.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// The connected clients, and the task that tells them.
#[derive(Default)]
pub(crate) struct Listeners {
    peers: Mutex<Vec<Peer<RoleServer>>>,
    following: OnceLock<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Listeners {
    /// Adds a client that finished initialize; starts following `changes` with the first.
    pub(crate) fn join(self: &Arc<Self>, peer: Peer<RoleServer>, changes: &Changes) {
        {
            let mut peers = lock(&self.peers);
            peers.retain(|p| !p.is_transport_closed());
            peers.push(peer);
        }
        self.following.get_or_init(|| {
            let rx = changes.subscribe();
            let this = Arc::clone(self);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(this.follow(rx));
            }
        });
    }

    async fn follow(self: Arc<Self>, mut rx: tokio::sync::watch::Receiver<[u64; 3]>) {
        let mut seen = *rx.borrow_and_update();
        while rx.changed().await.is_ok() {
            tokio::time::sleep(COALESCE).await;
            let now = *rx.borrow_and_update();
            let peers: Vec<Peer<RoleServer>> = {
                let mut peers = lock(&self.peers);
                peers.retain(|p| !p.is_transport_closed());
                peers.clone()
            };
            // Each client on its own task: a stalled one delays nobody else.
            let changed = [now[0] != seen[0], now[1] != seen[1], now[2] != seen[2]];
            for peer in peers {
                tokio::spawn(async move {
                    if changed[0] {
                        let _ = tokio::time::timeout(SEND_TIMEOUT, peer.notify_tool_list_changed())
                            .await;
                    }
                    if changed[1] {
                        let _ =
                            tokio::time::timeout(SEND_TIMEOUT, peer.notify_resource_list_changed())
                                .await;
                    }
                    if changed[2] {
                        let _ =
                            tokio::time::timeout(SEND_TIMEOUT, peer.notify_prompt_list_changed())
                                .await;
                    }
                });
            }
            seen = now;
        }
    }
}
