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
//!
//! * this file: the root, path resolution and strict directory walking;
//! * [`io`]: opening files without following links, atomic writes, error messages;
//! * one file per tool: `read`, `list`, `write`, `search`.

mod io;
mod list;
mod read;
mod search;
mod write;

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use cap_fs_ext::DirExt;
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use capgate_core::{Operation, Resource, Tool, ToolContext, ToolError, ToolOutput, TypedTool};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::config::FsConfig;
use io::blocking;

pub(crate) use list::fs_list;
pub(crate) use read::fs_read;
pub(crate) use search::fs_search;
pub(crate) use write::fs_write;

/// What makes one filesystem tool: its words, its operation, the path its arguments name (after
/// whatever checks of their own they need), and the work it does, on a blocking thread, on the
/// resource the guard authorized.
struct FsTool<A> {
    name: &'static str,
    title: &'static str,
    description: &'static str,
    operation: Operation,
    /// The canonical resource the arguments name; refusing here refuses before the guard.
    path: fn(&FsRoot, &A) -> Result<Resource, ToolError>,
    /// The tool's effect, on the authorized resource.
    work: fn(&FsRoot, &Resource, &A, &ToolContext) -> Result<ToolOutput, ToolError>,
}

impl<A: DeserializeOwned + JsonSchema + Send + 'static> FsTool<A> {
    /// The tool, over `root`: prefixes canonicalized like its resources, and the work run off
    /// the async threads.
    fn build(self, root: Arc<FsRoot>) -> impl Tool {
        let (on_run, on_resource, on_prefix) = (Arc::clone(&root), Arc::clone(&root), root);
        let (path, work) = (self.path, self.work);
        TypedTool::new(
            self.name,
            self.description,
            self.operation,
            move |args: A, resource: Resource, ctx: ToolContext| {
                let root = Arc::clone(&on_run);
                async move { blocking(move || work(&root, &resource, &args, &ctx)).await }
            },
        )
        .title(self.title)
        .resource(move |args: &A| path(&on_resource, args))
        .canonical_prefix(move |p| on_prefix.canonical_prefix(p))
    }
}

/// The confinement root shared by the filesystem tools.
pub struct FsRoot {
    root: PathBuf,
    dir: Dir,
    /// `limits.hidden`, canonical where it exists.
    hidden: Vec<PathBuf>,
    pub(super) limits: FsConfig,
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
        let hidden = config
            .hidden
            .iter()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
            .collect();
        Ok(FsRoot {
            root,
            dir,
            hidden,
            limits: config.clone(),
        })
    }

    /// Whether `path` (absolute, canonical) is capgate's own state, which no tool reaches.
    pub(super) fn is_hidden(&self, path: &Path) -> bool {
        self.hidden.iter().any(|h| path.starts_with(h))
    }

    /// Whether the walk of a call may touch the entry at `rel` (relative to the root): not
    /// capgate's state, and allowed by the guard for this call (another tenant's directory
    /// under a granted one is not).
    pub(super) fn reachable(&self, rel: &Path, is_dir: bool, ctx: &ToolContext) -> bool {
        let plain: PathBuf = rel
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect();
        let abs = self.root.join(plain);
        if self.is_hidden(&abs) {
            return false;
        }
        let mut s = abs.to_string_lossy().into_owned();
        if is_dir && !s.ends_with('/') {
            s.push('/');
        }
        ctx.permits(&Resource::new(s))
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
        if self.is_hidden(&current) {
            return Err(ToolError::invalid(
                field,
                format!(
                    "`{raw}` is capgate's own state (its key, store or audit log); no tool reaches it"
                ),
            ));
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
    pub(super) fn relative<'a>(&self, resource: &'a Resource) -> Result<&'a Path, ToolError> {
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
    pub(super) fn open_dir_strict(&self, rel: &Path, create: bool) -> std::io::Result<Dir> {
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
    pub(super) fn open_parent<'a>(
        &self,
        rel: &'a Path,
        create: bool,
    ) -> std::io::Result<(Dir, &'a OsStr)> {
        let name = rel
            .file_name()
            .ok_or_else(|| std::io::Error::other("the path has no file name"))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        Ok((self.open_dir_strict(parent, create)?, name))
    }

    pub(super) fn display(&self, resource: &Resource) -> String {
        match Path::new(resource.as_str().trim_end_matches('/')).strip_prefix(&self.root) {
            Ok(p) if p.as_os_str().is_empty() => ".".into(),
            Ok(p) => p.to_string_lossy().into_owned(),
            Err(_) => resource.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::list::list;
    use super::read::{ReadArgs, read};
    use super::search::{SearchArgs, search};
    use super::write::{WriteArgs, write};
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
        assert!(list(&r, &dir, &ToolContext::detached("fs_list")).is_err());
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

    /// A file with a second hard link may be the same file as one outside the root: it is
    /// neither read nor appended to, and a search passes it by. Replacing it (write, rename)
    /// touches only this name.
    #[cfg(unix)]
    #[test]
    fn hard_linked_files_are_refused() {
        let (dir, r) = root();
        let outside = dir.path().join("secret.txt");
        std::fs::hard_link(&outside, r.root().join("docs/a/linked.txt")).unwrap();
        let res = r.resource("path", "docs/a/linked.txt").unwrap();
        let e = read(&r, &res, &read_args("docs/a/linked.txt")).unwrap_err();
        assert!(e.to_string().contains("hard links"), "{e}");
        let w = WriteArgs {
            path: "docs/a/linked.txt".into(),
            content: "appended".into(),
            append: true,
            create_dirs: false,
        };
        assert!(write(&r, &res, &w).is_err());
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "top secret");
        let search_args = SearchArgs {
            pattern: "secret".into(),
            path: None,
            regex: false,
            max_results: None,
        };
        let docs = r.resource("path", "docs").unwrap();
        let out = search(&r, &docs, &search_args, &ToolContext::detached("fs_search")).unwrap();
        assert_eq!(out.structured.unwrap()["matches"], serde_json::json!([]));
    }

    /// capgate's own state under the root (`serve --root .`) is out of every tool's reach: not
    /// resolved, not listed, not searched.
    #[test]
    fn capgate_state_is_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(ws.join(".capgate")).unwrap();
        std::fs::write(ws.join(".capgate/root.key"), "ed25519-private/secret").unwrap();
        std::fs::write(ws.join("note.txt"), "secret? no").unwrap();
        let cfg = FsConfig {
            root: ws.clone(),
            hidden: vec![ws.join(".capgate")],
            ..FsConfig::default()
        };
        let r = FsRoot::open(&cfg).unwrap();
        let e = r.resolve("path", ".capgate/root.key").unwrap_err();
        assert!(e.to_string().contains("capgate's own state"), "{e}");
        assert!(
            r.resolve("path", "./.capgate/../.capgate/root.key")
                .is_err()
        );
        let all = r.resource("path", ".").unwrap();
        let listed = list(&r, &all, &ToolContext::detached("fs_list")).unwrap();
        assert!(!listed.structured.unwrap().to_string().contains(".capgate"));
        let args = SearchArgs {
            pattern: "secret".into(),
            path: None,
            regex: false,
            max_results: None,
        };
        let found = search(&r, &all, &args, &ToolContext::detached("fs_search")).unwrap();
        let matches = found.structured.unwrap()["matches"].clone();
        assert_eq!(
            matches.as_array().unwrap().len(),
            1,
            "only note.txt: {matches}"
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
        let out = search(&r, &docs, &search_args, &ToolContext::detached("fs_search")).unwrap();
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
