//! Which token a request is judged by.
//!
//! Invariant: the credential is always a verified token the connection itself presented (the
//! HTTP bearer, `CAPGATE_TOKEN` for stdio), or a token that provably narrows it: one sent in
//! `_meta` for one call (it must carry every block of the presented token), or the task token
//! bound in-band to this session (while the same agent token is presented).

use std::sync::Arc;

use capgate_authz::{CredentialError, TokenError, Transport, VerifiedToken};
use rmcp::service::{RequestContext, RoleServer};

use super::state::SessionState;

/// The `_meta` key under which a client may present a narrower token for one call.
pub const META_TOKEN_KEY: &str = "capgate/token";

/// The verified token an HTTP request presented, put in the request's extensions by the
/// transport's authentication layer.
#[derive(Clone, Debug)]
pub struct Credential(pub Arc<VerifiedToken>);

/// The thumbprint of the key whose fresh DPoP proof came with an HTTP request (set by the
/// authentication layer once the proof checked out).
///
/// `for_token` is true when the proof was made for the token presented (`Authorization: DPoP`,
/// its `ath` checked): only then does it stand beside that token at the guard. A proof sent with
/// a bearer credential (a task request that asks to be bound) only names the key to bind to.
#[derive(Clone)]
pub struct Holder {
    /// The key's RFC 7638 thumbprint.
    pub jkt: Arc<str>,
    /// Whether the proof's `ath` is the hash of the presented token.
    pub for_token: bool,
}

impl SessionState {
    /// The token the connection presented: the HTTP bearer or `CAPGATE_TOKEN`.
    pub(super) fn presented(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Arc<VerifiedToken>, CredentialError> {
        match self.transport {
            Transport::Http => ctx
                .extensions
                .get::<http::request::Parts>()
                .and_then(|p| p.extensions.get::<Credential>())
                .map(|c| Arc::clone(&c.0))
                .ok_or(TokenError::Missing.into()),
            _ => {
                let token = self
                    .stdio_verified
                    .get_or_init(|| {
                        let raw = self.stdio_token.as_deref().ok_or(TokenError::Missing)?;
                        self.host.verifier.verify(raw)
                    })
                    .clone()?;
                // Over HTTP the authentication layer checked this very token for this very
                // request; stdio tokens are checked here. (The guard checks again per call.)
                self.host.guard().check_token(&token)?;
                Ok(token)
            }
        }
    }

    /// The presented token, narrowed by a `_meta` token when the request carries one: what
    /// in-band task tools act on.
    pub(super) fn call_credential(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Arc<VerifiedToken>, CredentialError> {
        let presented = self.presented(ctx)?;
        self.narrowed(ctx, presented)
    }

    /// The token a tool call is judged by: a `_meta` token that narrows the presented one,
    /// else the task bound in-band (while the same agent token is presented), else the
    /// presented token.
    pub(super) fn effective(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Arc<VerifiedToken>, CredentialError> {
        let mut effective = self.presented(ctx)?;
        if let Some(binding) = self
            .binding
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            && effective.is_prefix_of(&binding.token)
        {
            effective = binding.token;
        }
        self.narrowed(ctx, effective)
    }

    fn narrowed(
        &self,
        ctx: &RequestContext<RoleServer>,
        base: Arc<VerifiedToken>,
    ) -> Result<Arc<VerifiedToken>, CredentialError> {
        let Some(raw) = ctx.meta.get(META_TOKEN_KEY) else {
            return Ok(base);
        };
        let raw = raw.as_str().ok_or_else(|| {
            TokenError::Presentation(format!("`_meta.{META_TOKEN_KEY}` must be a string"))
        })?;
        let narrower = self.host.verifier.verify(raw)?;
        if !base.is_prefix_of(&narrower) && !Arc::ptr_eq(&base, &narrower) {
            return Err(TokenError::Presentation(format!(
                "the token in `_meta.{META_TOKEN_KEY}` does not derive from the session's token; only narrower tokens (more blocks appended) may be presented per call"
            ))
            .into());
        }
        self.host.guard().check_token(&narrower)?;
        Ok(narrower)
    }
}
