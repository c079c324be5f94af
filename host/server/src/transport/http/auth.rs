//! Bearer authentication for every route but `/healthz`: the token is verified against the root
//! key, unrevoked and unexpired before the route runs, and handed to it as a [`Credential`].
//!
//! Invariant: a refused token is 401 with `WWW-Authenticate: Bearer error="invalid_token"`; a
//! store that cannot say whether the token is revoked is 503, capgate's fault, never 401.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use capgate_authz::{CredentialError, TokenError};
use headers::authorization::Bearer;
use headers::{Authorization, HeaderMapExt};

use std::sync::Arc;

use crate::answer::ApiError;
use crate::host::Host;
use crate::identity::{dpop, looks_like_jwt};
use crate::session::{Credential, Holder};

/// What authentication needs.
pub(super) struct Gate {
    pub(super) host: Host,
    /// Development only: the token a request without `Authorization` presents.
    pub(super) headerless: Option<Arc<str>>,
}

/// How the token was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `Authorization: DPoP <token>`, with a `DPoP` proof header (RFC 9449).
    Dpop,
}

/// Verifies the presented token (a capgate token, or a workload JWT from a trusted issuer, for
/// which capgate mints an agent token), checks a DPoP proof when one comes with it, refuses a
/// key-bound token without a fresh proof made with its key, and hands the route a
/// [`Credential`] (and the proof's key as [`Holder`]).
pub(super) async fn authenticate(
    State(s): State<Arc<Gate>>,
    mut req: Request,
    next: Next,
) -> Response {
    let (scheme, presented) = match authorization(req.headers()) {
        Ok(Some(p)) => p,
        Ok(None) => match &s.headerless {
            Some(t) => (Scheme::Bearer, t.to_string()),
            None => return ApiError::Unauthorized(TokenError::Missing).into_response(),
        },
        Err(e) => return ApiError::Unauthorized(e).into_response(),
    };
    let host = s.host.clone();
    let token = if looks_like_jwt(&presented) {
        let workloads = host.workloads();
        if workloads.is_empty() {
            return ApiError::Workload(
                "a JWT was presented, but no [[identity.jwt]] issuer is configured here; present a capgate token".into(),
            )
            .into_response();
        }
        match workloads.agent_token(&presented).await {
            Ok((t, _)) => t,
            Err(e) if e.is_fault() => {
                return ApiError::Unavailable {
                    reason: "identity_unavailable",
                    message: e.to_string(),
                }
                .into_response();
            }
            Err(e) => return ApiError::Workload(e.to_string()).into_response(),
        }
    } else {
        // Both steps are short enough for the async thread: verification is a cache hit after
        // the first request, and the revocation check reads the store at most once per
        // `[guard] store_poll` (one counter). What writes (issuance, ending a task) runs off it.
        match host.verifier().verify(&presented) {
            Ok(t) => t,
            Err(e) => return ApiError::Unauthorized(e).into_response(),
        }
    };
    if let Err(e) = host.guard().check_token(&token) {
        return ApiError::from(e).into_response();
    }
    let proof = match proof_header(req.headers()) {
        Err(message) => return dpop_refused("invalid_dpop_proof", message),
        Ok(None) => None,
        Ok(Some(raw)) => {
            let target = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().authority().map(|a| a.as_str()))
                .unwrap_or_default()
                .to_owned();
            let checked = host.proofs().verify(
                &raw,
                dpop::Request {
                    method: req.method().as_str(),
                    host: &target,
                    path: req.uri().path(),
                    token: (scheme == Scheme::Dpop).then_some(presented.as_str()),
                },
            );
            match checked {
                Ok(p) => Some(p),
                Err(e) => return dpop_refused("invalid_dpop_proof", e.to_string()),
            }
        }
    };
    if scheme == Scheme::Dpop && proof.is_none() {
        return dpop_refused(
            "invalid_dpop_proof",
            "`Authorization: DPoP` needs a `DPoP` proof header, made for this request".into(),
        );
    }
    // A task token bound to a key is nothing without a fresh proof made with that key.
    match host.guard().book().task_of(&token) {
        Err(e) => return ApiError::from(CredentialError::Unavailable(e)).into_response(),
        Ok(Some(task)) => {
            if let Some(bound) = &task.grant.holder {
                if scheme != Scheme::Dpop {
                    return dpop_refused(
                        "invalid_token",
                        "this token is bound to a key (DPoP): send it as `Authorization: DPoP <token>` with a fresh `DPoP` proof made with that key".into(),
                    );
                }
                if proof.as_ref().map(|p| &p.jkt) != Some(bound) {
                    return dpop_refused(
                        "invalid_dpop_proof",
                        "the proof is made with another key than the one this token is bound to"
                            .into(),
                    );
                }
            }
        }
        Ok(None) => {}
    }
    req.extensions_mut().insert(Credential(token));
    if let Some(p) = proof {
        req.extensions_mut().insert(Holder {
            jkt: Arc::from(p.jkt),
            for_token: scheme == Scheme::Dpop,
        });
    }
    next.run(req).await
}

fn dpop_refused(error: &'static str, message: String) -> Response {
    ApiError::Dpop { error, message }.into_response()
}

/// The one `DPoP` header, if any.
fn proof_header(headers: &HeaderMap) -> Result<Option<String>, String> {
    let mut values = headers.get_all("dpop").iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err("two DPoP headers; send exactly one proof".into()),
        (Some(v), None) => v
            .to_str()
            .map(|s| Some(s.trim().to_owned()))
            .map_err(|_| "the DPoP header is not ASCII".into()),
    }
}

/// `Authorization: Bearer <token>` (parsed by the `headers` crate) or `Authorization: DPoP
/// <token>`; exactly one such header.
fn authorization(headers: &HeaderMap) -> Result<Option<(Scheme, String)>, TokenError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let raw = match (values.next(), values.next()) {
        (None, _) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(TokenError::Presentation(
                "two Authorization headers; send exactly one `Authorization: Bearer <token>`"
                    .into(),
            ));
        }
        (Some(v), None) => v,
    };
    if let Some(rest) = raw.to_str().ok().and_then(|v| {
        v.get(..5)
            .filter(|p| p.eq_ignore_ascii_case("dpop "))
            .map(|_| &v[5..])
    }) {
        let token = rest.trim();
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        return Ok(Some((Scheme::Dpop, token.to_owned())));
    }
    match headers.typed_try_get::<Authorization<Bearer>>() {
        Ok(Some(a)) if !a.token().trim().is_empty() => {
            Ok(Some((Scheme::Bearer, a.token().trim().to_owned())))
        }
        Ok(_) => Err(TokenError::Missing),
        Err(_) => Err(TokenError::Presentation(
            "expected `Authorization: Bearer <token>` or `Authorization: DPoP <token>`".into(),
        )),
    }
}
