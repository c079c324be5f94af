//! What every connection of a running host shares: the config, the verifier, the issuer and the
//! call pipeline (door, telemetry, ledger).
//!
//! Invariant: built once by [`HostBuilder`](crate::HostBuilder) and never changed (but for the
//! clients that join `listeners`); sessions hold it behind an `Arc`.

use std::sync::Arc;

use capgate_authz::{Guard, Issuer, Verifier};

use crate::config::Config;
use crate::identity::Workloads;
use crate::identity::dpop::Proofs;
use crate::ledger::TaskLedger;
use crate::pipeline::{HostDoor, Pipeline};
use crate::session::approvals::PendingApprovals;
use crate::session::listeners::Listeners;
use crate::telemetry::Telemetry;

/// Shared state of a running host.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) verifier: Arc<Verifier>,
    pub(crate) issuer: Arc<Issuer>,
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) notes: Vec<String>,
    /// Approval questions asked through 2026-07-28 round trips, awaiting their answer.
    pub(crate) approvals: PendingApprovals,
    /// The trusted issuers of workload JWTs.
    pub(crate) workloads: Workloads,
    /// DPoP proofs seen.
    pub(crate) proofs: Proofs,
    /// The connected clients, told when a provider's lists change.
    pub(crate) listeners: Arc<Listeners>,
}

impl Shared {
    pub(crate) fn door(&self) -> &Arc<HostDoor> {
        &self.pipeline.door
    }

    pub(crate) fn guard(&self) -> &Arc<Guard> {
        &self.pipeline.door.stages().guard
    }

    pub(crate) fn ledger(&self) -> &Arc<TaskLedger> {
        &self.pipeline.ledger
    }

    pub(crate) fn telemetry(&self) -> &Arc<Telemetry> {
        &self.pipeline.telemetry
    }
}
