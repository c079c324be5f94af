//! Filesystem tools confined to one root directory: `fs_read`, `fs_list`, `fs_write`,
//! `fs_search`.
//!
//! Invariant: a path that would leave the root is refused while the call's resource is derived,
//! before the guard runs and before any file is opened. The resource is the canonical absolute
//! path (`..` and symlinks resolved), so a policy prefix on it cannot be walked around. The I/O
//! itself then walks that symlink-free path one component at a time from a `cap_std` handle on
//! the root, refusing any symbolic link: one swapped in between the check and the open fails the
//! call instead of redirecting it, inside the root as well as out of it. Only regular files are
//! read or written (a FIFO or device would block or misbehave).

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::ambient_authority;
use cap_std::fs::{Dir, File, OpenOptions, OpenOptionsExt};
use capgate_core::rmcp::model::{ContentBlock, ResourceContents};
use capgate_core::{Operation, Resource, ToolError, ToolOutput, TypedTool};

use crate::config::FsConfig;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

/// The confinement root shared by the filesystem tools.
pub struct FsRoot {
    root: PathBuf,
    dir: Dir,
    limits: FsConfig,
}

impl std::fmt::Debug for FsRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsRoot").field("root", &self.root).finish()
    }
}

impl FsRoot {
    /// Opens (creating if missing) the root directory.
    pub fn open(config: &FsConfig) -> std::io::Result<Self> {
        std::fs::create_dir_all(&config.root)?;
        let root = std::fs::canonicalize(&config.root)?;
        let dir = Dir::open_ambient_dir(&root, ambient_authority())?;
        Ok(FsRoot {
            root,
            dir,
            limits: config.clone(),
        })
    }

    /// The canonical root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The canonical absolute path `raw` names, resolving `..` and symlinks; the part that does
    /// not exist yet is resolved lexically. Refuses anything outside the root.
    pub fn resolve(&self, field: &str, raw: &str) -> Result<PathBuf, ToolError> {
        if raw.contains('\0') {
            return Err(ToolError::invalid(field, "paths cannot contain NUL bytes"));
        }
        let mut input = Path::new(raw);
        if input.is_absolute() {
            // An absolute path is accepted when it names something under the (canonical) root;
            // it is then resolved like the relative path it is.
            input = input
                .strip_prefix(&self.root)
                .map_err(|_| self.outside(field, raw))?;
        }
        let mut current = self.root.clone();
        let mut exists = true;
        let mut hops = 0;
        for comp in input.components() {
            match comp {
                Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
                // Past a component that does not exist, `..` would be resolved lexically, and a
                // symbolic link further on would then go unchecked; the OS refuses such a path
                // too (ENOENT), so it is refused here.
                Component::ParentDir if !exists => {
                    return Err(ToolError::invalid(
                        field,
                        format!("`{raw}`: `..` after a component that does not exist"),
                    ));
                }
                Component::ParentDir => {
                    current.pop();
                }
                Component::Normal(name) => {
                    let next = current.join(name);
                    current = match exists.then(|| std::fs::symlink_metadata(&next)) {
                        Some(Ok(meta)) if meta.file_type().is_symlink() => {
                            hops += 1;
                            if hops > 40 {
                                return Err(ToolError::invalid(
                                    field,
                                    format!("`{raw}`: too many symbolic links"),
                                ));
                            }
                            std::fs::canonicalize(&next).map_err(|_| {
                                ToolError::invalid(
                                    field,
                                    format!("`{raw}`: a symbolic link on the way points nowhere"),
                                )
                            })?
                        }
                        Some(Ok(_)) => next,
                        Some(Err(_)) => {
                            exists = false;
                            next
                        }
                        None => next,
                    };
                }
            }
            // Checked at every step: a path may not pass through the outside on its way back in.
            if !current.starts_with(&self.root) {
                return Err(self.outside(field, raw));
            }
        }
        if !current.starts_with(&self.root) {
            return Err(self.outside(field, raw));
        }
        Ok(current)
    }

    fn outside(&self, field: &str, raw: &str) -> ToolError {
        ToolError::invalid(
            field,
            format!("`{raw}` resolves outside the tool root; paths must stay inside it"),
        )
    }

    /// The resource of a path argument. A directory's resource ends in `/`, like a directory
    /// prefix does, so that the grant `docs/` covers listing `docs` itself.
    pub fn resource(&self, field: &str, raw: &str) -> Result<Resource, ToolError> {
        let p = self.resolve(field, raw)?;
        let mut s = p.to_string_lossy().into_owned();
        if p.is_dir() && !s.ends_with('/') {
            s.push('/');
        }
        Ok(Resource::new(s))
    }

    /// A granted prefix in canonical form: the empty prefix stays empty (every resource);
    /// anything else is resolved like a path, and a directory keeps a trailing `/` so that
    /// `docs/` does not also grant `docs-private/`.
    pub fn canonical_prefix(&self, raw: &str) -> Result<String, ToolError> {
        if raw.is_empty() {
            return Ok(String::new());
        }
        let p = self.resolve("prefix", raw)?;
        let mut s = p.to_string_lossy().into_owned();
        if (raw.ends_with('/') || raw == "." || p.is_dir()) && !s.ends_with('/') {
            s.push('/');
        }
        Ok(s)
    }

    /// The path relative to the root, for I/O through the confined directory handle.
    fn relative<'a>(&self, resource: &'a Resource) -> Result<&'a Path, ToolError> {
        Path::new(resource.as_str())
            .strip_prefix(&self.root)
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .map_err(|_| ToolError::failed("the authorized resource is not under the tool root"))
    }

    /// Opens the directory at `rel` (relative to the root, symlink-free as `resolve` made it) one
    /// component at a time, refusing symbolic links; with `create`, missing components are made.
    fn open_dir_strict(&self, rel: &Path, create: bool) -> std::io::Result<Dir> {
        let mut dir = self.dir.try_clone()?;
        for comp in rel.components() {
            let name = match comp {
                Component::CurDir => continue,
                Component::Normal(name) => name,
                _ => return Err(std::io::Error::other("not a plain relative path")),
            };
            dir = match dir.open_dir_nofollow(name) {
                Err(e) if create && e.kind() == std::io::ErrorKind::NotFound => {
                    dir.create_dir(name)?;
                    dir.open_dir_nofollow(name)?
                }
                other => other?,
            };
        }
        Ok(dir)
    }

    /// The directory holding `rel`, opened strictly, and `rel`'s last component.
    fn open_parent<'a>(&self, rel: &'a Path, create: bool) -> std::io::Result<(Dir, &'a OsStr)> {
        let name = rel
            .file_name()
            .ok_or_else(|| std::io::Error::other("the path has no file name"))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        Ok((self.open_dir_strict(parent, create)?, name))
    }

    fn display(&self, resource: &Resource) -> String {
        match Path::new(resource.as_str().trim_end_matches('/')).strip_prefix(&self.root) {
            Ok(p) if p.as_os_str().is_empty() => ".".into(),
            Ok(p) => p.to_string_lossy().into_owned(),
            Err(_) => resource.to_string(),
        }
    }
}

/// Creates a fresh temporary file beside `name` in `dir`, exclusively.
fn temp_file(dir: &Dir, name: &OsStr) -> std::io::Result<(String, File)> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut last = None;
    for _ in 0..16 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = format!(
            ".{}.capgate-{}-{n}.tmp",
            name.to_string_lossy(),
            std::process::id()
        );
        match open_regular(
            dir,
            OsStr::new(&tmp),
            OpenOptions::new().write(true).create_new(true),
        ) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
}

/// Opens `name` in `dir` without following a symbolic link and without blocking on a FIFO, and
/// accepts only a regular file.
fn open_regular(dir: &Dir, name: &OsStr, opts: &mut OpenOptions) -> std::io::Result<File> {
    opts.follow(FollowSymlinks::No);
    #[cfg(unix)]
    opts.custom_flags(libc::O_NONBLOCK);
    let file = dir.open_with(name, opts)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "it is a directory",
        ));
    }
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

fn io_failed(what: &str, path: &str, e: std::io::Error) -> ToolError {
    let reason = match e.kind() {
        std::io::ErrorKind::NotFound => "not found".to_owned(),
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (or it leads outside the tool root)".to_owned()
        }
        std::io::ErrorKind::IsADirectory => "it is a directory".to_owned(),
        // ELOOP / ENOTDIR: a symbolic link is on the way. `resolve` left none, so one appeared
        // after the check; following it could land anywhere.
        #[cfg(unix)]
        _ if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            "a symbolic link (or a file) is where a directory was checked; refused".to_owned()
        }
        _ => e.to_string(),
    };
    ToolError::failed(format!("{what} `{path}`: {reason}"))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ToolError> + Send + 'static,
) -> Result<T, ToolError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ToolError::failed(format!("the filesystem task failed: {e}")))?
}

/// Arguments of `fs_read`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadArgs {
    /// File to read, relative to the tool root.
    pub path: String,
    /// Byte offset to start from (default 0).
    #[serde(default)]
    pub offset: Option<u64>,
    /// Most bytes to return (default and cap: the configured limit).
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

/// Arguments of `fs_list`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Directory to list, relative to the tool root (default: the root).
    #[serde(default)]
    pub path: Option<String>,
}

/// Arguments of `fs_write`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteArgs {
    /// File to write, relative to the tool root.
    pub path: String,
    /// The new content (UTF-8 text).
    pub content: String,
    /// Append instead of replacing (default false).
    #[serde(default)]
    pub append: bool,
    /// Create missing parent directories (default false).
    #[serde(default)]
    pub create_dirs: bool,
}

/// Arguments of `fs_search`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    /// Text to look for (a regular expression when `regex` is true).
    pub pattern: String,
    /// Directory to search, relative to the tool root (default: the root).
    #[serde(default)]
    pub path: Option<String>,
    /// Treat `pattern` as a regular expression (default false).
    #[serde(default)]
    pub regex: bool,
    /// Most matches to return (default and cap: the configured limit).
    #[serde(default)]
    pub max_results: Option<usize>,
}

/// `fs_read`.
pub(crate) fn fs_read(root: Arc<FsRoot>) -> impl capgate_core::Tool {
    let (r1, r2, r3) = (root.clone(), root.clone(), root);
    TypedTool::new(
        "fs_read",
        "Read a file inside the workspace. Text comes back as text, other files as base64.",
        Operation::Read,
        move |args: ReadArgs, resource, _ctx| {
            let root = Arc::clone(&r1);
            async move { blocking(move || read(&root, &resource, &args)).await }
        },
    )
    .title("Read file")
    .resource(move |a: &ReadArgs| r2.resource("path", &a.path))
    .canonical_prefix(move |p| r3.canonical_prefix(p))
}

fn read(root: &FsRoot, resource: &Resource, args: &ReadArgs) -> Result<ToolOutput, ToolError> {
    let rel = root.relative(resource)?;
    let shown = root.display(resource);
    if rel == Path::new(".") {
        return Err(ToolError::failed(format!(
            "`{shown}` is a directory; use fs_list"
        )));
    }
    let mut file = root
        .open_parent(rel, false)
        .and_then(|(dir, name)| open_regular(&dir, name, OpenOptions::new().read(true)))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::IsADirectory => {
                ToolError::failed(format!("`{shown}` is a directory; use fs_list"))
            }
            _ => io_failed("cannot open", &shown, e),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| io_failed("cannot read", &shown, e))?;
    let limit = args
        .max_bytes
        .unwrap_or(root.limits.max_read_bytes)
        .min(root.limits.max_read_bytes);
    let offset = args.offset.unwrap_or(0);
    if offset > 0 {
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| io_failed("cannot seek in", &shown, e))?;
    }
    let mut buf = Vec::new();
    file.take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| io_failed("cannot read", &shown, e))?;
    let size = meta.len();
    let truncated = offset + (buf.len() as u64) < size;
    let info = json!({
        "path": shown,
        "size": size,
        "offset": offset,
        "bytes": buf.len(),
        "truncated": truncated,
    });
    let content = match String::from_utf8(buf) {
        Ok(text) => ContentBlock::text(text),
        Err(e) => ContentBlock::resource(ResourceContents::BlobResourceContents {
            uri: format!("file://{}", resource.as_str()),
            mime_type: Some("application/octet-stream".into()),
            blob: base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
            meta: None,
        }),
    };
    Ok(ToolOutput::content(vec![content]).with_structured(info))
}

/// `fs_list`.
pub(crate) fn fs_list(root: Arc<FsRoot>) -> impl capgate_core::Tool {
    let (r1, r2, r3) = (root.clone(), root.clone(), root);
    TypedTool::new(
        "fs_list",
        "List a directory inside the workspace: names, kinds and sizes.",
        Operation::Read,
        move |_args: ListArgs, resource, _ctx| {
            let root = Arc::clone(&r1);
            async move { blocking(move || list(&root, &resource)).await }
        },
    )
    .title("List directory")
    .resource(move |a: &ListArgs| r2.resource("path", a.path.as_deref().unwrap_or(".")))
    .canonical_prefix(move |p| r3.canonical_prefix(p))
}

fn list(root: &FsRoot, resource: &Resource) -> Result<ToolOutput, ToolError> {
    let rel = root.relative(resource)?;
    let shown = root.display(resource);
    let entries = root
        .open_dir_strict(rel, false)
        .and_then(|dir| dir.entries())
        .map_err(|e| io_failed("cannot list", &shown, e))?;
    let mut items = Vec::new();
    let mut more = false;
    for entry in entries {
        let entry = entry.map_err(|e| io_failed("cannot list", &shown, e))?;
        if items.len() >= root.limits.max_list_entries {
            more = true;
            break;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let ft = entry
            .file_type()
            .map_err(|e| io_failed("cannot list", &shown, e))?;
        let kind = if ft.is_symlink() {
            "symlink"
        } else if ft.is_dir() {
            "dir"
        } else {
            "file"
        };
        let size = if ft.is_file() {
            entry.metadata().map(|m| m.len()).unwrap_or(0)
        } else {
            0
        };
        items.push(json!({"name": name, "kind": kind, "size": size}));
    }
    items.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let text = items
        .iter()
        .map(|i| {
            let suffix = if i["kind"] == "dir" { "/" } else { "" };
            format!("{}{suffix}", i["name"].as_str().unwrap_or(""))
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok(ToolOutput::text(text)
        .with_structured(json!({"path": shown, "entries": items, "truncated": more})))
}

/// `fs_write`.
pub(crate) fn fs_write(root: Arc<FsRoot>) -> impl capgate_core::Tool {
    let (r1, r2, r3) = (root.clone(), root.clone(), root);
    TypedTool::new(
        "fs_write",
        "Write (or append to) a text file inside the workspace. Replacing is atomic.",
        Operation::Write,
        move |args: WriteArgs, resource, _ctx| {
            let root = Arc::clone(&r1);
            async move { blocking(move || write(&root, &resource, &args)).await }
        },
    )
    .title("Write file")
    .resource(move |a: &WriteArgs| {
        if a.content.len() as u64 > r2.limits.max_write_bytes {
            return Err(ToolError::invalid(
                "content",
                format!(
                    "{} bytes is over the {}-byte limit",
                    a.content.len(),
                    r2.limits.max_write_bytes
                ),
            ));
        }
        r2.resource("path", &a.path)
    })
    .canonical_prefix(move |p| r3.canonical_prefix(p))
}

fn write(root: &FsRoot, resource: &Resource, args: &WriteArgs) -> Result<ToolOutput, ToolError> {
    let rel = root.relative(resource)?;
    let shown = root.display(resource);
    if rel == Path::new(".") {
        return Err(ToolError::failed(
            "cannot write to the root directory itself",
        ));
    }
    let (dir, name) = match root.open_parent(rel, args.create_dirs) {
        Ok(found) => found,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ToolError::failed(format!(
                "the directory of `{shown}` does not exist; pass create_dirs: true to create it"
            )));
        }
        Err(e) => return Err(io_failed("cannot open the directory of", &shown, e)),
    };
    if let Ok(meta) = dir.symlink_metadata(name)
        && meta.is_dir()
    {
        return Err(ToolError::failed(format!("`{shown}` is a directory")));
    }
    if args.append {
        use std::io::Write;
        let mut f = open_regular(&dir, name, OpenOptions::new().append(true).create(true))
            .map_err(|e| io_failed("cannot open", &shown, e))?;
        f.write_all(args.content.as_bytes())
            .map_err(|e| io_failed("cannot append to", &shown, e))?;
    } else {
        use std::io::Write;
        // Write a sibling temporary file, then rename over the target: a failure halfway never
        // leaves a truncated file behind. The temporary is created exclusively, so nothing
        // planted under its name (a symbolic link, a FIFO) is ever opened.
        // Unique per call (two writes to one file must not share a temporary) and never an
        // existing name: whatever sits there, even a leftover, is not opened or removed.
        let (tmp, mut file) =
            temp_file(&dir, name).map_err(|e| io_failed("cannot write", &shown, e))?;
        let written = file.write_all(args.content.as_bytes());
        drop(file);
        if let Err(e) = written {
            let _ = dir.remove_file(&tmp);
            return Err(io_failed("cannot write", &shown, e));
        }
        if let Err(e) = dir.rename(&tmp, &dir, name) {
            let _ = dir.remove_file(&tmp);
            return Err(io_failed("cannot replace", &shown, e));
        }
    }
    Ok(ToolOutput::text(format!(
        "{} {} bytes to {shown}",
        if args.append { "appended" } else { "wrote" },
        args.content.len()
    ))
    .with_structured(json!({"path": shown, "bytes": args.content.len(), "append": args.append})))
}

/// `fs_search`.
pub(crate) fn fs_search(root: Arc<FsRoot>) -> impl capgate_core::Tool {
    let (r1, r2, r3) = (root.clone(), root.clone(), root);
    TypedTool::new(
        "fs_search",
        "Search the text files under a directory of the workspace for a string or regular expression.",
        Operation::Read,
        move |args: SearchArgs, resource, ctx| {
            let root = Arc::clone(&r1);
            async move {
                let cancel = ctx.cancelled().clone();
                blocking(move || search(&root, &resource, &args, &cancel)).await
            }
        },
    )
    .title("Search files")
    .resource(move |a: &SearchArgs| {
        if a.pattern.is_empty() {
            return Err(ToolError::invalid("pattern", "must not be empty"));
        }
        if a.regex {
            build_regex(&a.pattern)?;
        }
        r2.resource("path", a.path.as_deref().unwrap_or("."))
    })
    .canonical_prefix(move |p| r3.canonical_prefix(p))
}

fn build_regex(pattern: &str) -> Result<regex::Regex, ToolError> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| ToolError::invalid("pattern", format!("not a valid regular expression: {e}")))
}

fn search(
    root: &FsRoot,
    resource: &Resource,
    args: &SearchArgs,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<ToolOutput, ToolError> {
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
            if ft.is_dir() {
                stack.push(child);
                continue;
            }
            if !ft.is_file() {
                continue; // symbolic links, FIFOs, sockets, devices
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

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, FsRoot) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = FsConfig {
            root: dir.path().join("ws"),
            ..FsConfig::default()
        };
        let r = FsRoot::open(&cfg).unwrap();
        std::fs::create_dir_all(r.root().join("docs/a")).unwrap();
        std::fs::write(r.root().join("docs/a/x.txt"), "hello").unwrap();
        std::fs::write(dir.path().join("secret.txt"), "top secret").unwrap();
        (dir, r)
    }

    fn read_args(path: &str) -> ReadArgs {
        ReadArgs {
            path: path.into(),
            offset: None,
            max_bytes: None,
        }
    }

    #[test]
    fn resolution_stays_inside_the_root() {
        let (dir, r) = root();
        let base = r.root().to_path_buf();
        assert_eq!(
            r.resolve("path", "docs/a/x.txt").unwrap(),
            base.join("docs/a/x.txt")
        );
        assert_eq!(
            r.resolve("path", "docs/../docs/a/./x.txt").unwrap(),
            base.join("docs/a/x.txt")
        );
        assert_eq!(
            r.resolve("path", "new/dir/file.txt").unwrap(),
            base.join("new/dir/file.txt")
        );
        assert_eq!(r.resolve("path", ".").unwrap(), base);
        assert!(r.resolve("path", "../secret.txt").is_err());
        assert!(r.resolve("path", "docs/../../secret.txt").is_err());
        assert!(r.resolve("path", "new/../../secret.txt").is_err());
        assert!(
            r.resolve("path", dir.path().join("secret.txt").to_str().unwrap())
                .is_err()
        );
        assert!(r.resolve("path", "/etc/passwd").is_err());
        assert!(r.resolve("path", "a\0b").is_err());
        // Absolute paths inside the root are fine.
        let abs = base.join("docs/a/x.txt");
        assert_eq!(r.resolve("path", abs.to_str().unwrap()).unwrap(), abs);
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_resolved_before_the_check() {
        let (dir, r) = root();
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), r.root().join("escape")).unwrap();
        std::os::unix::fs::symlink(dir.path(), r.root().join("up")).unwrap();
        std::os::unix::fs::symlink(r.root().join("docs/a"), r.root().join("inner")).unwrap();
        assert!(r.resolve("path", "escape").is_err());
        assert!(r.resolve("path", "up/secret.txt").is_err());
        assert!(
            r.resolve("path", "up/ws/docs").is_err(),
            "a path may not pass through the outside"
        );
        assert_eq!(
            r.resolve("path", "inner/x.txt").unwrap(),
            r.root().join("docs/a/x.txt")
        );
    }

    #[cfg(unix)]
    #[test]
    fn dotdot_after_a_missing_component_is_refused() {
        let (_dir, r) = root();
        std::os::unix::fs::symlink("a", r.root().join("docs/rel")).unwrap();
        let e = r.resolve("path", "docs/nx/../rel/x.txt").unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(r.resolve("path", "nx/../docs").is_err());
    }

    /// A symbolic link swapped in after the resource was checked fails the I/O instead of
    /// redirecting it, even to a place inside the root.
    #[cfg(unix)]
    #[test]
    fn a_symlink_swapped_in_after_the_check_is_not_followed() {
        let (_dir, r) = root();
        let base = r.root().to_path_buf();
        std::fs::create_dir_all(base.join("other")).unwrap();
        std::fs::write(base.join("other/x.txt"), "other").unwrap();
        let file = r.resource("path", "docs/a/x.txt").unwrap();
        let dir = r.resource("path", "docs/a").unwrap();
        std::fs::rename(base.join("docs/a"), base.join("docs/a-moved")).unwrap();
        std::os::unix::fs::symlink(base.join("other"), base.join("docs/a")).unwrap();

        let args = read_args("docs/a/x.txt");
        let e = read(&r, &file, &args).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(list(&r, &dir).is_err());
        let w = WriteArgs {
            path: "docs/a/x.txt".into(),
            content: "planted".into(),
            append: false,
            create_dirs: false,
        };
        assert!(write(&r, &file, &w).is_err());
        let w = WriteArgs { append: true, ..w };
        assert!(write(&r, &file, &w).is_err());
        assert_eq!(
            std::fs::read_to_string(base.join("other/x.txt")).unwrap(),
            "other"
        );
        assert_eq!(std::fs::read_dir(base.join("other")).unwrap().count(), 1);

        // The last component swapped for a symlink is refused too.
        std::fs::remove_file(base.join("docs/a")).unwrap();
        std::fs::rename(base.join("docs/a-moved"), base.join("docs/a")).unwrap();
        std::fs::remove_file(base.join("docs/a/x.txt")).unwrap();
        std::os::unix::fs::symlink(base.join("other/x.txt"), base.join("docs/a/x.txt")).unwrap();
        assert!(read(&r, &file, &args).is_err());
    }

    /// Writes racing on one file each go through a temporary of their own: every one succeeds,
    /// the file ends holding one whole write, and no temporary is left behind.
    #[test]
    fn concurrent_writes_to_one_file_do_not_share_a_temporary() {
        let (_dir, r) = root();
        let r = Arc::new(r);
        let file = r.resource("path", "docs/a/race.txt").unwrap();
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let (r, file) = (Arc::clone(&r), file.clone());
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let w = WriteArgs {
                            path: "docs/a/race.txt".into(),
                            content: format!("writer {t} write {i}"),
                            append: false,
                            create_dirs: false,
                        };
                        write(&r, &file, &w).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let text = std::fs::read_to_string(r.root().join("docs/a/race.txt")).unwrap();
        assert!(
            text.starts_with("writer ") && text.contains(" write "),
            "{text}"
        );
        let names: Vec<_> = std::fs::read_dir(r.root().join("docs/a"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.ends_with(".tmp")),
            "no temporary left: {names:?}"
        );
    }

    /// A FIFO would block a reader forever: it is refused, and a search passes it by.
    #[cfg(unix)]
    #[test]
    fn fifos_are_neither_read_nor_searched() {
        let (_dir, r) = root();
        let fifo = r.root().join("docs/a/pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let res = r.resource("path", "docs/a/pipe").unwrap();
        let args = read_args("docs/a/pipe");
        let e = read(&r, &res, &args).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let search_args = SearchArgs {
            pattern: "hello".into(),
            path: None,
            regex: false,
            max_results: None,
        };
        let docs = r.resource("path", "docs").unwrap();
        let out = search(
            &r,
            &docs,
            &search_args,
            &tokio_util::sync::CancellationToken::new(),
        )
        .unwrap();
        let found = out.structured.unwrap()["matches"].clone();
        assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    }

    #[test]
    fn prefixes_keep_directory_boundaries() {
        let (_dir, r) = root();
        let base = r.root().to_string_lossy().into_owned();
        assert_eq!(r.canonical_prefix("docs").unwrap(), format!("{base}/docs/"));
        assert_eq!(
            r.canonical_prefix("docs/a/x.txt").unwrap(),
            format!("{base}/docs/a/x.txt")
        );
        assert_eq!(r.canonical_prefix("").unwrap(), "");
        assert_eq!(r.canonical_prefix(".").unwrap(), format!("{base}/"));
        assert!(r.canonical_prefix("..").is_err());
    }
}
