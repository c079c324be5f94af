//! DNS-rebinding protection: the `Host` and `Origin` headers, checked once, for every route,
//! before anything else runs.
//!
//! Invariant: a request passes only with exactly one `Host` that parses as an authority and is
//! on the allow-list (`["*"]` switches the Host check off explicitly), and at most one `Origin`
//! that parses as a web origin on the allow-list. A web page that got a browser to resolve its
//! own name to 127.0.0.1 still sends its own name in both, and is refused with 403.

use axum::extract::{Request, State};
use axum::http::header;
use axum::http::uri::Authority;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use url::Url;

use std::sync::Arc;

use crate::answer::ApiError;
use crate::error::Error;

/// A host name (lowercase, IPv6 without brackets) and, when the entry names one, a port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostEntry {
    host: String,
    port: Option<u16>,
}

/// A web origin, or the opaque `null` origin.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginEntry {
    Null,
    Tuple {
        scheme: String,
        host: String,
        /// `None` on an allow-list entry = any port (`:*`).
        port: Option<u16>,
    },
}

/// The allow-lists, parsed once at startup.
#[derive(Debug, Clone)]
pub(super) struct Allowed {
    /// `None`: any Host (`["*"]`).
    hosts: Option<Vec<HostEntry>>,
    origins: Vec<OriginEntry>,
}

impl Allowed {
    /// Parses `[server] allowed_hosts` and `allowed_origins`; an entry that does not parse is a
    /// configuration error naming it.
    pub(super) fn from_config(
        file: &str,
        hosts: &[String],
        origins: &[String],
    ) -> Result<Self, Error> {
        let bad = |key: &str, entry: &str, what: &str| Error::Config {
            file: file.to_owned(),
            key: key.to_owned(),
            message: format!("`{entry}`: expected {what}"),
        };
        let hosts = if hosts.iter().any(|h| h == "*") {
            None
        } else {
            Some(
                hosts
                    .iter()
                    .map(|h| {
                        parse_host(h).ok_or_else(|| {
                            bad(
                                "server.allowed_hosts",
                                h,
                                "a host name, an IP address, or host:port",
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        let origins = origins
            .iter()
            .map(|o| {
                parse_allowed_origin(o).ok_or_else(|| {
                    bad(
                        "server.allowed_origins",
                        o,
                        "scheme://host[:port], scheme://host:* (any port), or \"null\"",
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Allowed { hosts, origins })
    }

    fn host_allowed(&self, host: &HostEntry) -> bool {
        match &self.hosts {
            None => true,
            Some(list) => list
                .iter()
                .any(|a| a.host == host.host && a.port.is_none_or(|p| host.port == Some(p))),
        }
    }

    fn origin_allowed(&self, origin: &OriginEntry) -> bool {
        self.origins.iter().any(|a| match (a, origin) {
            (OriginEntry::Null, OriginEntry::Null) => true,
            (
                OriginEntry::Tuple { scheme, host, port },
                OriginEntry::Tuple {
                    scheme: s,
                    host: h,
                    port: p,
                },
            ) => scheme == s && host == h && port.is_none_or(|port| Some(port) == *p),
            _ => false,
        })
    }
}

/// `localhost`, `127.0.0.1:8080`, `[::1]:9`, `::1` (an allow-list entry may leave the
/// brackets off). A userinfo part (`user@host`) is never a host.
fn parse_host(raw: &str) -> Option<HostEntry> {
    let raw = raw.trim();
    if raw.is_empty() || raw.contains('@') {
        return None;
    }
    if let Ok(a) = raw.parse::<Authority>() {
        // The parser is lenient (`[::1].evil.example` parses, as host `[::1]`): the authority
        // must be exactly its host and port, and the host a name, an IPv4 address or a
        // bracketed IPv6 address.
        let exact = match a.port() {
            Some(p) => format!("{}:{}", a.host(), p.as_str()),
            None => a.host().to_owned(),
        };
        if !exact.eq_ignore_ascii_case(raw) {
            return None;
        }
        let host = a.host();
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().ok()?.to_string(),
            None if host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') =>
            {
                host.to_ascii_lowercase()
            }
            None => return None,
        };
        return Some(HostEntry {
            host,
            port: a.port_u16(),
        });
    }
    // A bare IPv6 address (`::1`) is not an authority without its brackets.
    raw.parse::<std::net::Ipv6Addr>().ok().map(|ip| HostEntry {
        host: ip.to_string(),
        port: None,
    })
}

/// A request's `Origin`: `null`, or exactly `scheme://host[:port]` for http(s).
fn parse_origin(raw: &str) -> Option<OriginEntry> {
    if raw == "null" {
        return Some(OriginEntry::Null);
    }
    let url = Url::parse(raw).ok()?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && !raw.ends_with('/');
    if !plain {
        return None;
    }
    Some(OriginEntry::Tuple {
        scheme: url.scheme().to_owned(),
        host: url.host_str()?.to_owned(),
        port: url.port_or_known_default(),
    })
}

/// An allow-list entry: an origin, `scheme://host:*`, or `null`.
fn parse_allowed_origin(raw: &str) -> Option<OriginEntry> {
    let raw = raw.trim();
    let Some(base) = raw.strip_suffix(":*") else {
        return parse_origin(raw);
    };
    // `scheme://host:*`: the base itself must name no port (`:443:*` means nothing).
    let names_port = base
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    match parse_origin(base)? {
        OriginEntry::Tuple { scheme, host, .. } if !names_port => Some(OriginEntry::Tuple {
            scheme,
            host,
            port: None,
        }),
        _ => None,
    }
}

/// The middleware: 403 unless Host and Origin pass.
pub(super) async fn check(
    State(allowed): State<Arc<Allowed>>,
    req: Request,
    next: Next,
) -> Response {
    if let Err(e) = checked(&allowed, &req) {
        return e.into_response();
    }
    next.run(req).await
}

fn checked(allowed: &Allowed, req: &Request) -> Result<(), ApiError> {
    let forbidden = |error: &'static str, message: String| ApiError::Forbidden { error, message };
    let headers = req.headers();
    let mut hosts = headers.get_all(header::HOST).iter();
    let raw = match (hosts.next(), hosts.next()) {
        (Some(v), None) => v.to_str().ok().map(str::to_owned),
        (None, _) => req.uri().authority().map(|a| a.as_str().to_owned()),
        (Some(_), Some(_)) => {
            return Err(forbidden(
                "forbidden_host",
                "two Host headers; a request has exactly one".into(),
            ));
        }
    };
    let raw = raw.unwrap_or_default();
    let host = parse_host(&raw).ok_or_else(|| {
        forbidden(
            "forbidden_host",
            format!("Host `{raw}` is not a host name or address"),
        )
    })?;
    if !allowed.host_allowed(&host) {
        return Err(forbidden(
            "forbidden_host",
            format!("Host `{raw}` is not allowed; add it to [server] allowed_hosts if it is yours"),
        ));
    }
    let mut origins = headers.get_all(header::ORIGIN).iter();
    match (origins.next(), origins.next()) {
        (None, _) => Ok(()),
        (Some(_), Some(_)) => Err(forbidden(
            "forbidden_origin",
            "two Origin headers; a browser sends one".into(),
        )),
        (Some(v), None) => {
            let raw = v.to_str().unwrap_or("");
            match parse_origin(raw) {
                Some(o) if allowed.origin_allowed(&o) => Ok(()),
                _ => Err(forbidden(
                    "forbidden_origin",
                    format!(
                        "Origin `{raw}` is not allowed; add it to [server] allowed_origins if it is yours"
                    ),
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Allowed {
        Allowed::from_config(
            "test",
            &["localhost".into(), "127.0.0.1".into(), "::1".into()],
            &[
                "http://localhost:*".into(),
                "https://app.example.com".into(),
                "null".into(),
            ],
        )
        .unwrap()
    }

    fn host_ok(h: &str) -> bool {
        parse_host(h).is_some_and(|h| allowed().host_allowed(&h))
    }

    fn origin_ok(o: &str) -> bool {
        parse_origin(o).is_some_and(|o| allowed().origin_allowed(&o))
    }

    #[test]
    fn hosts_are_parsed_not_matched_by_prefix() {
        assert!(host_ok("localhost:8080"));
        assert!(host_ok("LOCALHOST"));
        assert!(host_ok("127.0.0.1"));
        assert!(host_ok("[::1]:9"));
        assert!(!host_ok("evil.example.com"));
        assert!(!host_ok("localhost.evil.com:80"));
        assert!(!host_ok("[::1].evil.example"), "a malformed authority");
        assert!(!host_ok("localhost@evil.example"));
        assert!(!host_ok("evil@localhost"), "userinfo is never a host");
        assert!(!host_ok(""));
    }

    #[test]
    fn origins_are_parsed_urls() {
        assert!(origin_ok("http://localhost:3000"));
        assert!(origin_ok("http://localhost"));
        assert!(origin_ok("https://app.example.com"));
        assert!(origin_ok("https://app.example.com:443"));
        assert!(origin_ok("null"));
        assert!(!origin_ok("https://app.example.com:8443"));
        assert!(!origin_ok("http://app.example.com"), "scheme matters");
        assert!(!origin_ok("http://localhost.evil.com"));
        assert!(!origin_ok("http://localhost:3000.evil.com"));
        assert!(!origin_ok("http://evil.example.com"));
        assert!(!origin_ok("http://localhost:3000/path"));
        assert!(!origin_ok("http://user@localhost:3000"));
    }

    #[test]
    fn bad_entries_are_refused_at_startup() {
        for bad in ["localhost:*", "ftp//x", "http://a.example:1:*"] {
            assert!(
                Allowed::from_config("test", &["localhost".into()], &[bad.into()]).is_err(),
                "{bad}"
            );
        }
        assert!(Allowed::from_config("test", &["a@b".into()], &[]).is_err());
    }
}
