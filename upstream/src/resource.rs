//! The resource of an upstream call, derived from its arguments before the guard runs.
//!
//! Invariant: what the guard authorizes is what the upstream is asked to act on. A `path` or
//! `url` argument is replaced by its canonical form before the call is sent
//! ([`Derive::rewrite`]), so an upstream never resolves `..` or a symbolic link differently from
//! the guard; a `template` value that could smuggle a separator (`/`, `:`, `..`) is refused, so
//! `ticket:{project}/{id}` cannot be steered into another project's tickets.

use std::path::PathBuf;

use capgate_core::canon::{self, PathMode};
use capgate_core::{Arguments, Resource, ToolError, str_arg};
use serde_json::Value;

use crate::config::{Piece, ResourceRule, parse_template};

/// A tool's resource rule, ready to apply.
#[derive(Debug, Clone)]
pub(crate) enum Derive {
    /// `tool:<hosted name>`.
    Fixed(Resource),
    /// A path argument, resolved against `base`.
    Path {
        arg: String,
        base: PathBuf,
        mode: PathMode,
    },
    /// A URL argument.
    Url { arg: String },
    /// A filled template.
    Template(Vec<Piece>),
}

impl Derive {
    pub(crate) fn new(
        rule: Option<&ResourceRule>,
        hosted: &str,
        base: PathBuf,
        mode: PathMode,
    ) -> Derive {
        match rule {
            None => Derive::Fixed(Resource::of_tool(hosted)),
            Some(ResourceRule::Path(arg)) => Derive::Path {
                arg: arg.clone(),
                base,
                mode,
            },
            Some(ResourceRule::Url(arg)) => Derive::Url { arg: arg.clone() },
            Some(ResourceRule::Template(t)) => match parse_template(t) {
                Ok(pieces) => Derive::Template(pieces),
                // Config loading refused such a template already; keep the tool unusable
                // rather than guess.
                Err(_) => Derive::Template(vec![Piece::Arg(String::new())]),
            },
        }
    }

    /// The canonical resource, or the argument that cannot become one.
    pub(crate) fn resource(&self, args: &Arguments) -> Result<Resource, ToolError> {
        match self {
            Derive::Fixed(r) => Ok(r.clone()),
            Derive::Path { arg, base, mode } => {
                let raw = str_arg(args, arg)?;
                canon::canonical_path(raw, base, *mode)
                    .map(Resource::new)
                    .map_err(|m| ToolError::invalid(arg, m))
            }
            Derive::Url { arg } => {
                let raw = str_arg(args, arg)?;
                canon::canonical_url(raw)
                    .map(Resource::new)
                    .map_err(|m| ToolError::invalid(arg, m))
            }
            Derive::Template(pieces) => {
                let mut out = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Arg(name) => out.push_str(&template_value(args, name)?),
                    }
                }
                Ok(Resource::new(out))
            }
        }
    }

    /// A granted prefix spelled the way [`Derive::resource`] spells resources.
    pub(crate) fn prefix(&self, raw: &str) -> Result<String, ToolError> {
        match self {
            Derive::Path { base, mode, .. } => canon::canonical_path_prefix(raw, base, *mode),
            Derive::Url { .. } => canon::canonical_url_prefix(raw),
            Derive::Fixed(_) | Derive::Template(_) => Ok(raw.to_owned()),
        }
    }

    /// Whether [`Derive::prefix`] canonicalizes.
    pub(crate) fn canonicalizes(&self) -> bool {
        matches!(self, Derive::Path { .. } | Derive::Url { .. })
    }

    /// Puts the authorized, canonical value back into the arguments the upstream receives.
    pub(crate) fn rewrite(&self, args: &mut Arguments, resource: &Resource) {
        if let Derive::Path { arg, .. } | Derive::Url { arg } = self {
            args.insert(arg.clone(), Value::String(resource.as_str().to_owned()));
        }
    }
}

/// A template argument's value: a string or an integer of safe characters only.
fn template_value(args: &Arguments, name: &str) -> Result<String, ToolError> {
    let value = match args.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(_) => return Err(ToolError::invalid(name, "expected a string or an integer")),
        None => return Err(ToolError::invalid(name, "is required")),
    };
    if value.is_empty() {
        return Err(ToolError::invalid(name, "is empty"));
    }
    if value == "." || value == ".." {
        return Err(ToolError::invalid(name, "`.` and `..` are not names"));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '@' | '+' | '-')))
    {
        return Err(ToolError::invalid(
            name,
            format!(
                "`{bad}` is not allowed here: a value filled into a resource template may hold only letters, digits and . _ ~ @ + -"
            ),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Arguments {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn templates_refuse_separators() {
        let d = Derive::new(
            Some(&ResourceRule::Template("ticket:{project}/{id}".into())),
            "t__x",
            PathBuf::from("/"),
            PathMode::Lexical,
        );
        assert_eq!(
            d.resource(&args(json!({"project": "ops", "id": 42})))
                .unwrap()
                .as_str(),
            "ticket:ops/42"
        );
        for bad in ["ops/../hr", "..", "hr:1", "a b", "x%2f", ""] {
            assert!(
                d.resource(&args(json!({"project": bad, "id": 1}))).is_err(),
                "{bad}"
            );
        }
        assert!(d.resource(&args(json!({"project": "ops"}))).is_err());
        assert!(
            d.resource(&args(json!({"project": true, "id": 1})))
                .is_err()
        );
    }

    #[test]
    fn paths_are_rewritten_to_what_was_authorized() {
        let d = Derive::new(
            Some(&ResourceRule::Path("path".into())),
            "t__x",
            PathBuf::from("/srv/notes"),
            PathMode::Lexical,
        );
        let mut a = args(json!({"path": "a/../b.txt", "other": 1}));
        let r = d.resource(&a).unwrap();
        assert_eq!(r.as_str(), "/srv/notes/b.txt");
        d.rewrite(&mut a, &r);
        assert_eq!(a["path"], "/srv/notes/b.txt");
        assert_eq!(a["other"], 1);
        assert_eq!(d.prefix("/srv/notes/").unwrap(), "/srv/notes/");
        assert!(d.resource(&args(json!({"path": 3}))).is_err());
    }

    #[test]
    fn urls_are_canonical() {
        let d = Derive::new(
            Some(&ResourceRule::Url("url".into())),
            "t__x",
            PathBuf::from("/"),
            PathMode::Lexical,
        );
        let r = d
            .resource(&args(json!({"url": "HTTP://Example.COM:80/a/./b"})))
            .unwrap();
        assert_eq!(r.as_str(), "http://example.com/a/b");
    }
}
