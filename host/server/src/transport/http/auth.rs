//! Bearer authentication for every route but `/healthz`: the token is verified against the root
//! key, unrevoked and unexpired before the route runs, and handed to it as a [`Credential`].
//!
//! Invariant: a refused token is 401 with `WWW-Authenticate: Bearer error="invalid_token"`; a
//! store that cannot say whether the token is revoked is 503, capgate's fault, never 401.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use capgate_authz::TokenError;
use headers::authorization::Bearer;
use headers::{Authorization, HeaderMapExt};

use std::sync::Arc;

use crate::answer::ApiError;
use crate::host::Host;
use crate::session::Credential;

/// What authentication needs.
pub(super) struct Gate {
    pub(super) host: Host,
    /// Development only: the token a request without `Authorization` presents.
    pub(super) headerless: Option<Arc<str>>,
}

/// Verifies the bearer token and hands it to the route as a [`Credential`].
pub(super) async fn authenticate(
    State(s): State<Arc<Gate>>,
    mut req: Request,
    next: Next,
) -> Response {
    let presented = match bearer(req.headers()) {
        Ok(Some(t)) => t,
        Ok(None) => match &s.headerless {
            Some(t) => t.to_string(),
            None => return ApiError::Unauthorized(TokenError::Missing).into_response(),
        },
        Err(e) => return ApiError::Unauthorized(e).into_response(),
    };
    let host = s.host.clone();
    // Both steps are short enough for the async thread: verification is a cache hit after the
    // first request, and the revocation check reads the store at most once per `[guard]
    // store_poll` (one counter). What writes (issuance, ending a task) runs off it.
    let token = match host.verifier().verify(&presented) {
        Ok(t) => t,
        Err(e) => return ApiError::Unauthorized(e).into_response(),
    };
    if let Err(e) = host.guard().check_token(&token) {
        return ApiError::from(e).into_response();
    }
    req.extensions_mut().insert(Credential(token));
    next.run(req).await
}

/// `Authorization: Bearer <token>`, parsed by the `headers` crate; exactly one such header.
fn bearer(headers: &HeaderMap) -> Result<Option<String>, TokenError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    match (values.next(), values.next()) {
        (None, _) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(TokenError::Presentation(
                "two Authorization headers; send exactly one `Authorization: Bearer <token>`"
                    .into(),
            ));
        }
        (Some(_), None) => {}
    }
    match headers.typed_try_get::<Authorization<Bearer>>() {
        Ok(Some(a)) if !a.token().trim().is_empty() => Ok(Some(a.token().trim().to_owned())),
        Ok(_) => Err(TokenError::Missing),
        Err(_) => Err(TokenError::Presentation(
            "expected `Authorization: Bearer <token>`".into(),
        )),
    }
}
