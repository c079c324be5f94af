//! Canonical spellings of the resources tools name: URLs and filesystem paths.
//!
//! A resource is authorized by prefix (`resource($r), $r.starts_with($p)`), so two spellings of
//! one thing must come out as one string, or a prefix check could be walked around. Everything
//! a provider of URL or path tools needs to derive a resource lives here, so that every tool
//! (http_fetch, a tool of an upstream MCP server) spells the same thing the same way.
//!
//! Invariant: what these functions return is canonical; what they cannot make canonical (an
//! ambiguous URL, a `..` that climbs out of a directory that does not exist) they refuse.

use std::path::{Component, Path, PathBuf};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use url::Url;

use crate::tool::ToolError;

/// Characters re-encoded in a path segment: everything but RFC 3986 unreserved characters,
/// sub-delimiters, `:` and `@`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');

/// The canonical form of an `http(s)` URL, or why it is refused.
pub fn canonical_url(raw: &str) -> Result<String, String> {
    let mut url = Url::parse(raw.trim()).map_err(|e| format!("`{raw}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{raw}`: only http and https URLs can be fetched"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{raw}` has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("`{raw}`: credentials in URLs are not accepted"));
    }
    url.set_fragment(None);
    // `example.com.` and `example.com` are one host to DNS; only one may reach a prefix check.
    if let Some(host) = url
        .host_str()
        .filter(|h| h.ends_with('.'))
        .map(str::to_owned)
    {
        // One trailing dot is the DNS root; an empty label (`a..`) is no host name at all.
        let bare = &host[..host.len() - 1];
        if bare.is_empty() || bare.ends_with('.') {
            return Err(format!("`{raw}` has no valid host"));
        }
        let was_domain = matches!(url.host(), Some(url::Host::Domain(_)));
        url.set_host(Some(bare))
            .map_err(|e| format!("`{raw}`: bad host: {e}"))?;
        // Without its dot a name can read as an address (`21.` → 0.0.0.21): that is another
        // host, so refuse rather than pick one.
        if was_domain != matches!(url.host(), Some(url::Host::Domain(_))) {
            return Err(format!(
                "`{raw}`: the host is ambiguous (a name or an address)"
            ));
        }
    }
    let mut path = String::new();
    let segments: Vec<String> = url
        .path_segments()
        .map(|s| s.map(str::to_owned).collect())
        .unwrap_or_default();
    for seg in &segments {
        let decoded: Vec<u8> = percent_decode_str(seg).collect();
        if decoded.contains(&b'/') || decoded.contains(&b'\\') {
            return Err(format!("`{raw}`: encoded path separators are not accepted"));
        }
        if decoded == b"." || decoded == b".." {
            return Err(format!("`{raw}`: encoded dot segments are not accepted"));
        }
        // Some servers read `..;x` as `..` with a path parameter, and climb.
        if decoded.starts_with(b".;") || decoded.starts_with(b"..;") {
            return Err(format!(
                "`{raw}`: dot segments with path parameters are not accepted"
            ));
        }
        path.push('/');
        match std::str::from_utf8(&decoded) {
            Ok(text) => path.extend(utf8_percent_encode(text, SEGMENT)),
            Err(_) => path.push_str(seg),
        }
    }
    if path.is_empty() {
        path.push('/');
    }
    url.set_path(&path);
    Ok(url.to_string())
}

/// A granted URL prefix in canonical form (`""` stays the universal prefix).
pub fn canonical_url_prefix(raw: &str) -> Result<String, ToolError> {
    if raw.is_empty() {
        return Ok(String::new());
    }
    canonical_url(raw).map_err(|m| ToolError::invalid("prefix", m))
}

/// How far a path can be resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathMode {
    /// The path is on this host: symbolic links are followed, so the canonical path is where
    /// the file really is, and a `..` after a component that does not exist is refused (what
    /// it climbs out of is unknown until the component is created, perhaps as a link).
    Host,
    /// The path is on another host (a tool served over the network): `.` and `..` are resolved
    /// lexically; nothing is looked up.
    Lexical,
}

/// The canonical absolute form of a path argument: relative to `base` (an absolute directory)
/// when not absolute, with `.` and `..` resolved and, in [`PathMode::Host`], every symbolic link
/// followed. A path whose canonical form is not known is refused with the reason.
pub fn canonical_path(raw: &str, base: &Path, mode: PathMode) -> Result<String, String> {
    if raw.is_empty() {
        return Err("the path is empty".into());
    }
    if raw.contains('\0') {
        return Err("the path contains a NUL byte".into());
    }
    let joined = base.join(raw);
    if !joined.is_absolute() {
        return Err(format!(
            "`{raw}` is not absolute and there is no base directory"
        ));
    }
    let mut out = PathBuf::from("/");
    // The first component found missing: past it, nothing is on disk to resolve.
    let mut missing: Option<String> = None;
    for component in joined.components() {
        match component {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                if let (PathMode::Host, Some(gone)) = (mode, &missing) {
                    return Err(format!(
                        "`{raw}`: `..` after `{gone}`, which does not exist, cannot be resolved"
                    ));
                }
                out.pop();
            }
            Component::Normal(name) => {
                out.push(name);
                if mode == PathMode::Lexical || missing.is_some() {
                    continue;
                }
                match std::fs::symlink_metadata(&out) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        out = std::fs::canonicalize(&out).map_err(|e| {
                            format!(
                                "`{raw}`: the link `{}` cannot be resolved: {e}",
                                out.display()
                            )
                        })?;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        missing = Some(out.display().to_string());
                    }
                    Err(e) => return Err(format!("`{raw}`: `{}`: {e}", out.display())),
                }
            }
        }
    }
    out.into_os_string()
        .into_string()
        .map_err(|_| format!("`{raw}` resolves to a path that is not UTF-8"))
}

/// A granted path prefix in canonical form: `""` stays the universal prefix, and a trailing
/// `/` is kept, so that `/srv/notes/` does not also grant `/srv/notes-old`.
pub fn canonical_path_prefix(raw: &str, base: &Path, mode: PathMode) -> Result<String, ToolError> {
    if raw.is_empty() {
        return Ok(String::new());
    }
    let mut path = canonical_path(raw, base, mode).map_err(|m| ToolError::invalid("prefix", m))?;
    if raw.ends_with('/') && !path.ends_with('/') {
        path.push('/');
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_have_one_spelling() {
        let c = |s: &str| canonical_url(s).unwrap();
        assert_eq!(c("HTTP://Example.COM:80/a/b"), "http://example.com/a/b");
        assert_eq!(c("https://example.com"), "https://example.com/");
        assert_eq!(c("https://example.com:443/x#frag"), "https://example.com/x");
        assert_eq!(
            c("https://example.com/docs/../admin"),
            "https://example.com/admin"
        );
        assert_eq!(
            c("https://example.com/docs/%2e%2e/admin"),
            "https://example.com/admin"
        );
        assert_eq!(
            c("https://example.com/%64ocs/x"),
            "https://example.com/docs/x"
        );
        assert_eq!(
            c("https://example.com/a%20b?q=1"),
            "https://example.com/a%20b?q=1"
        );
        assert_eq!(c("https://api.example.com./x"), "https://api.example.com/x");
    }

    /// Found by the `url` fuzz target: dropping the dots of `21..` turned a name into the
    /// address 0.0.0.21. A host is never changed into another kind of host.
    #[test]
    fn trailing_dots_never_change_the_host() {
        for raw in [
            "HTTP:21%2e./y",
            "https://21../",
            "https://example.com../",
            "https://../",
        ] {
            assert!(canonical_url(raw).is_err(), "{raw}");
        }
        assert_eq!(
            canonical_url("https://21./").as_deref(),
            Ok("https://0.0.0.21/")
        );
    }

    #[test]
    fn ambiguous_urls_are_refused() {
        for bad in [
            "https://example.com/docs/..%2fadmin",
            "https://example.com/docs%2F..%2Fadmin",
            "https://example.com/docs%5c..%5cadmin",
            "file:///etc/passwd",
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "https://example.com/docs/..;/admin",
            "https://example.com/docs/.;x/admin",
            "https://./x",
            "not a url",
            "",
        ] {
            assert!(canonical_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_cannot_be_extended_by_host_suffix() {
        let p = canonical_url_prefix("https://api.example.com").unwrap();
        assert_eq!(p, "https://api.example.com/");
        assert!(
            !canonical_url("https://api.example.com.evil.com/")
                .unwrap()
                .starts_with(&p)
        );
    }

    fn dir() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(base.join("notes/2026")).unwrap();
        std::fs::write(base.join("notes/a.txt"), "a").unwrap();
        (d, base)
    }

    fn host(raw: &str, base: &Path) -> Result<String, String> {
        canonical_path(raw, base, PathMode::Host)
    }

    #[test]
    fn paths_are_absolute_with_dots_resolved() {
        let (_d, base) = dir();
        let b = base.display().to_string();
        assert_eq!(
            host("notes/a.txt", &base).unwrap(),
            format!("{b}/notes/a.txt")
        );
        assert_eq!(
            host("./notes/2026/../a.txt", &base).unwrap(),
            format!("{b}/notes/a.txt")
        );
        assert_eq!(
            host(&format!("{b}//notes/./a.txt"), &base).unwrap(),
            format!("{b}/notes/a.txt")
        );
        // What does not exist yet (a file to write) keeps its name.
        assert_eq!(
            host("notes/new/b.txt", &base).unwrap(),
            format!("{b}/notes/new/b.txt")
        );
        assert_eq!(host("/../../etc", &base).unwrap(), "/etc");
    }

    #[test]
    fn links_are_followed_to_where_they_point() {
        let (_d, base) = dir();
        let outside = tempfile::tempdir().unwrap();
        let outside = std::fs::canonicalize(outside.path()).unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(&outside, base.join("notes/escape")).unwrap();
        let got = host("notes/escape/secret", &base).unwrap();
        assert_eq!(got, outside.join("secret").display().to_string());
        assert!(!got.starts_with(&base.display().to_string()));
        // `..` after a link climbs from where the link points, as the kernel would.
        let up = host("notes/escape/../x", &base).unwrap();
        assert_eq!(
            up,
            outside.parent().unwrap().join("x").display().to_string()
        );
    }

    #[test]
    fn unresolvable_paths_are_refused() {
        let (_d, base) = dir();
        std::os::unix::fs::symlink(base.join("nowhere"), base.join("notes/dangling")).unwrap();
        for bad in [
            "",
            "notes/missing/../../../etc/passwd",
            "notes/missing/..",
            "notes/dangling",
            "notes/a.txt/inside",
            "notes/\0",
        ] {
            assert!(host(bad, &base).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lexical_paths_look_nothing_up() {
        let base = Path::new("/srv");
        let lex = |raw: &str| canonical_path(raw, base, PathMode::Lexical).unwrap();
        assert_eq!(lex("notes/../x/./y"), "/srv/x/y");
        assert_eq!(lex("missing/../../etc"), "/etc");
        assert_eq!(lex("/../a"), "/a");
    }

    #[test]
    fn path_prefixes_keep_their_trailing_slash() {
        let (_d, base) = dir();
        let b = base.display().to_string();
        let p = |raw: &str| canonical_path_prefix(raw, &base, PathMode::Host).unwrap();
        assert_eq!(p(""), "");
        assert_eq!(p("notes/"), format!("{b}/notes/"));
        assert_eq!(p("notes"), format!("{b}/notes"));
        assert_eq!(p("/"), "/");
        assert!(!format!("{b}/notes-old/x").starts_with(&p("notes/")));
    }
}
