//! `fs_search`: a string or regular expression in the text files under a directory, walked without following links and within bounds.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cap_std::fs::OpenOptions;
use capgate_core::{Operation, Resource, ToolContext, ToolError, ToolOutput};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::io::{io_failed, open_regular};
use super::{FsRoot, FsTool};

/// Arguments of `fs_search`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SearchArgs {
    /// Text to look for (a regular expression when `regex` is true).
    pub(super) pattern: String,
    /// Directory to search, relative to the tool root (default: the root).
    #[serde(default)]
    pub(super) path: Option<String>,
    /// Treat `pattern` as a regular expression (default false).
    #[serde(default)]
    pub(super) regex: bool,
    /// Most matches to return (default and cap: the configured limit).
    #[serde(default)]
    pub(super) max_results: Option<usize>,
}

/// `fs_search`.
pub(crate) fn fs_search(root: Arc<FsRoot>) -> impl capgate_core::Tool {
    FsTool {
        name: "fs_search",
        title: "Search files",
        description: "Search the text files under a directory of the workspace for a string or regular expression.",
        operation: Operation::Read,
        path: |root, a: &SearchArgs| {
            if a.pattern.is_empty() {
                return Err(ToolError::invalid("pattern", "must not be empty"));
            }
            if a.regex {
                build_regex(&a.pattern)?;
            }
            root.resource("path", a.path.as_deref().unwrap_or("."))
        },
        work: search,
    }
    .build(root)
}

fn build_regex(pattern: &str) -> Result<regex::Regex, ToolError> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| ToolError::invalid("pattern", format!("not a valid regular expression: {e}")))
}

pub(super) fn search(
    root: &FsRoot,
    resource: &Resource,
    args: &SearchArgs,
    ctx: &ToolContext,
) -> Result<ToolOutput, ToolError> {
    let cancel = ctx.cancelled();
    let rel = root.relative(resource)?.to_path_buf();
    let shown = root.display(resource);
    let matcher: Box<dyn Fn(&str) -> bool> = if args.regex {
        let re = build_regex(&args.pattern)?;
        Box::new(move |l| re.is_match(l))
    } else {
        let needle = args.pattern.clone();
        Box::new(move |l| l.contains(needle.as_str()))
    };
    let max_results = args
        .max_results
        .unwrap_or(root.limits.max_search_results)
        .min(root.limits.max_search_results);
    let mut matches = Vec::new();
    let mut files = 0usize;
    let mut truncated = false;
    // Symbolic links are not followed, and every directory is opened from its parent's handle
    // without following one: a walk must not leave the tree it was granted.
    // The stack holds paths, not open handles: a tree with thousands of directories must not
    // hold thousands of descriptors. Each is reopened strictly when its turn comes.
    root.open_dir_strict(&rel, false)
        .map_err(|e| io_failed("cannot search", &shown, e))?;
    let mut stack = vec![rel];
    let mut dirs = 0usize;
    'walk: while let Some(dir_rel) = stack.pop() {
        if cancel.is_cancelled() {
            return Err(ToolError::failed("search cancelled"));
        }
        dirs += 1;
        if dirs > root.limits.max_search_files {
            truncated = true;
            break;
        }
        let Ok(dir) = root.open_dir_strict(&dir_rel, false) else {
            continue;
        };
        let Ok(entries) = dir.entries() else {
            continue;
        };
        let mut names: Vec<_> = entries.filter_map(Result::ok).collect();
        names.sort_by_key(|e| e.file_name());
        for entry in names {
            let Ok(ft) = entry.file_type() else { continue };
            let name = entry.file_name();
            let child = if dir_rel == Path::new(".") {
                PathBuf::from(&name)
            } else {
                dir_rel.join(&name)
            };
            // The walk reaches further than the directory the guard authorized: every entry is
            // put to the guard again (another tenant's directory under a granted one is not
            // entered) and capgate's own state is never read.
            if ft.is_dir() {
                if root.reachable(&child, true, ctx) {
                    stack.push(child);
                }
                continue;
            }
            if !ft.is_file() || !root.reachable(&child, false, ctx) {
                continue; // symbolic links, FIFOs, sockets, devices; refused entries
            }
            files += 1;
            if files > root.limits.max_search_files {
                truncated = true;
                break 'walk;
            }
            let Ok(file) = open_regular(&dir, &name, OpenOptions::new().read(true)) else {
                continue;
            };
            if file
                .metadata()
                .map_or(true, |m| m.len() > root.limits.max_read_bytes)
            {
                continue;
            }
            let mut text = String::new();
            if file
                .take(root.limits.max_read_bytes)
                .read_to_string(&mut text)
                .is_err()
            {
                continue; // not UTF-8 text
            }
            for (n, line) in text.lines().enumerate() {
                if matcher(line) {
                    if matches.len() >= max_results {
                        truncated = true;
                        break 'walk;
                    }
                    let line_text: String = line.chars().take(400).collect();
                    matches.push(json!({
                        "path": child.to_string_lossy(),
                        "line": n + 1,
                        "text": line_text,
                    }));
                }
            }
        }
    }
    let text = if matches.is_empty() {
        format!("no match for `{}` under {shown}", args.pattern)
    } else {
        matches
            .iter()
            .map(|m| {
                format!(
                    "{}:{}: {}",
                    m["path"].as_str().unwrap_or(""),
                    m["line"],
                    m["text"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok(ToolOutput::text(text).with_structured(json!({
        "path": shown,
        "matches": matches,
        "files_searched": files,
        "truncated": truncated,
    })))
}
