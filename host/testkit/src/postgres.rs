//! A real PostgreSQL server of the test's own: `initdb` into a temporary directory, `postgres`
//! on a free loopback port, run as an unprivileged user when the test runs as root (PostgreSQL
//! refuses root), stopped with the test.
//!
//! Where the server binaries are missing, [`Postgres::start`] panics with what to install: a
//! test of the shared store never passes without one.

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running PostgreSQL cluster.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    server: Child,
    user: Option<(u32, u32)>,
}

/// Where the server binaries are: `CAPGATE_PG_BIN`, else Debian's newest
/// `/usr/lib/postgresql/<version>/bin`, else `PATH`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAPGATE_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    panic!(
        "the PostgreSQL server binaries (initdb, postgres) are not installed: install Debian's \
         `postgresql` package (apt-get install postgresql), or point CAPGATE_PG_BIN at their \
         directory. The shared-store tests need a real PostgreSQL and do not pass without one."
    );
}

/// The uid and gid of `nobody`, when running as root (asked of `id`, so the test kit stays free
/// of unsafe code).
fn unprivileged() -> Option<(u32, u32)> {
    let id = |args: &[&str]| -> Option<u32> {
        let out = Command::new("id").args(args).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id(&["-u"]).expect("`id -u` tells who runs the test") != 0 {
        return None;
    }
    let uid = id(&["-u", "nobody"]);
    let gid = id(&["-g", "nobody"]);
    match (uid, gid) {
        (Some(uid), Some(gid)) => Some((uid, gid)),
        _ => panic!("running as root, and there is no `nobody` user to run PostgreSQL as"),
    }
}

/// Sends `signal` to process `pid` with kill(1).
fn kill(signal: &str, pid: u32) -> bool {
    Command::new("kill")
        .args([&format!("-{signal}"), "--", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Sends `signal` to every child of `pid` with pkill(1). PostgreSQL's backends each lead a
/// session of their own, so the postmaster's process group does not reach them.
fn kill_children(signal: &str, pid: u32) {
    let _ = Command::new("pkill")
        .args([&format!("-{signal}"), "-P", &pid.to_string()])
        .status();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Whether the server on `port` accepts connections within 30 s (false once it has exited: a
/// port taken meanwhile, typically).
fn wait_ready(bin: &Path, port: u16, server: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = server.try_wait() {
            return false;
        }
        let ok = Command::new(bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl Postgres {
    /// Creates a cluster and starts its server; returns once it accepts connections.
    pub fn start() -> Self {
        let bin = bin_dir();
        let user = unprivileged();
        let dir = tempfile::Builder::new()
            .prefix("capgate-pg-")
            .tempdir_in(std::env::temp_dir())
            .expect("a temporary directory");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("hand the cluster's directory to nobody");
        }
        let data = dir.path().join("data");
        let out = Self::command_as(&bin, "initdb", user, dir.path())
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "capgate",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join(format!("server-{port}.log")))
                .expect("the server's log");
            if let Some((uid, gid)) = user {
                let _ = std::os::unix::fs::chown(
                    dir.path().join(format!("server-{port}.log")),
                    Some(uid),
                    Some(gid),
                );
            }
            let mut cmd = Self::command_as(&bin, "postgres", user, dir.path());
            cmd.arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string()])
                .args(["-c", "listen_addresses=127.0.0.1"])
                .arg("-c")
                .arg(format!("unix_socket_directories={}", dir.path().display()))
                .args(["-c", "fsync=off", "-c", "max_connections=300"])
                .stdout(Stdio::null())
                .stderr(log)
                // Its own process group, away from the terminal's signals.
                .process_group(0);
            let mut server = cmd.spawn().expect("start postgres");
            if wait_ready(&bin, port, &mut server) {
                return Postgres {
                    dir,
                    bin,
                    port,
                    server,
                    user,
                };
            }
            last = std::fs::read_to_string(dir.path().join(format!("server-{port}.log")))
                .unwrap_or_default();
            let _ = server.kill();
            let _ = server.wait();
        }
        panic!("postgres did not start: {last}");
    }

    fn command_as(bin: &Path, program: &str, user: Option<(u32, u32)>, cwd: &Path) -> Command {
        let mut cmd = Command::new(bin.join(program));
        cmd.current_dir(cwd)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", cwd)
            .env("LC_ALL", "C");
        if let Some((uid, gid)) = user {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client program (`createdb`, `psql`) aimed at this server as its superuser.
    fn client(&self, program: &str) -> Command {
        let mut cmd = Self::command_as(&self.bin, program, self.user, self.dir.path());
        cmd.args(["-h", "127.0.0.1", "-U", "capgate", "-p"])
            .arg(self.port.to_string());
        cmd
    }

    /// Runs a client program that must succeed; its standard output, trimmed.
    fn run_client(&self, mut cmd: Command, what: &str) -> String {
        let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Creates database `name` and returns its URL.
    pub fn database(&self, name: &str) -> String {
        let mut cmd = self.client("createdb");
        cmd.arg(name);
        self.run_client(cmd, &format!("createdb {name}"));
        format!("postgres://capgate@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs one SQL statement with `psql` in database `db`; its output (unaligned, tuples only).
    pub fn sql(&self, db: &str, statement: &str) -> String {
        let mut cmd = self.client("psql");
        cmd.args([
            "-d",
            db,
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
        ])
        .arg(statement);
        self.run_client(cmd, &format!("psql {statement}"))
    }

    /// Pauses the server and every backend (SIGSTOP to the postmaster and its children):
    /// connections stay open and nothing answers.
    pub fn pause(&self) {
        // The postmaster first, so that it forks no backend meanwhile.
        assert!(kill("STOP", self.server.id()), "pause the database");
        kill_children("STOP", self.server.id());
    }

    /// Resumes a paused server.
    pub fn resume(&self) {
        kill_children("CONT", self.server.id());
        assert!(kill("CONT", self.server.id()), "resume the database");
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Resumed first (a paused server ignores everything else), then told to stop at once.
        kill_children("CONT", self.server.id());
        kill("CONT", self.server.id());
        kill("QUIT", self.server.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.server.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        kill_children("KILL", self.server.id());
        kill("KILL", self.server.id());
        let _ = self.server.wait();
    }
}
