//! capgate-authz: who may do what, decided before anything happens.
//!
//! * [`token`]: the root key, agent tokens, approvals and task blocks; tokens verified against
//!   the key ([`Verifier`]);
//! * [`policy`]: the operator's Datalog, parsed once, every check named back to its file and
//!   line;
//! * [`guard`]: the door's authorization stage: may this call run? (and which tools a token
//!   sees);
//! * [`issuance`]: may this task exist? If so, its token;
//! * [`book`]: the only I/O the guard and the issuer do, as a trait capgate-server implements.
//!
//! Invariant: this crate reads no file but the root key and the policies, and touches no store
//! but through [`book::TaskBook`]; every decision is a pure function of the verified token, the
//! policy, the call's facts and what the book says.

pub mod anomaly;
pub mod book;
pub mod error;
pub mod guard;
pub mod issuance;
pub mod policy;
pub mod token;

pub use anomaly::{AnomalyRules, Fired};
pub use book::{StoreFault, TaskBook};
pub use error::Error;
pub use guard::{CallEnv, CredentialError, Denial, Grant, Guard, GuardSettings, Transport};
pub use issuance::{Channel, IssuanceError, IssuedTask, Issuer, IssuerSettings};
pub use policy::{Policy, PolicyKind};
pub use token::{RootKey, TokenError, VerifiedToken, Verifier, verify_signature};
