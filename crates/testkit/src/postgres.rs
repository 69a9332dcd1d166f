//! A real PostgreSQL server for tests: one per test binary, started on first use, and a
//! fresh database for each caller ([`fresh_database`]).
//!
//! The server runs from a data directory in the temp dir, on 127.0.0.1 and a free port, as
//! the `postgres` user when the tests run as root (PostgreSQL refuses to run as root). Its
//! programs are looked for in `$BUILDMAN_PG_BINDIR`, then `/usr/lib/postgresql/<newest>/bin`
//! (Debian's layout), then `PATH`; when there are none, every PostgreSQL test fails saying
//! to install PostgreSQL: CI installs it, so a missing server must not pass as a skip.
//!
//! Statics are never dropped, so stopping the server is arranged outside Rust's drops. The
//! postmaster is a direct child of the test process (not daemonised by `pg_ctl`), so it can
//! be waited for and leaves no zombie behind, and:
//! - at a normal exit (all tests run, whether they passed or not), an `atexit` handler stops
//!   it (SIGQUIT: immediate shutdown, which ends its backends too) and waits for it;
//! - a watchdog (`sh`, in a process group of its own, ignoring Ctrl-C) blocks reading a pipe
//!   whose only writer is this test process. When the process ends the pipe closes; if the
//!   process died without stopping the server (a signal, SIGKILL), the watchdog stops it.
//!   Either way it then removes the data directory, and the `atexit` handler waits for that.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::IntoRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// The server of this test binary, or why it could not be started.
static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
/// The postmaster's process id (-1 when there is none, or once stopped).
static SERVER_PID: AtomicI32 = AtomicI32::new(-1);
/// The write end of the watchdog's pipe (-1 once closed).
static WATCHDOG_PIPE: AtomicI32 = AtomicI32::new(-1);
/// The watchdog's process id (-1 once waited for).
static WATCHDOG_PID: AtomicI32 = AtomicI32::new(-1);

/// The watchdog: `$0` is the directory to remove. It reads the server's pid (again after
/// each restart), until a line saying `stopped` (written by the `atexit` handler) or the
/// end of the pipe (the test process died): only in the second case is the server still
/// running.
const WATCHDOG: &str = "trap '' INT TERM HUP; pid=; done=; \
     while read -r line; do \
       if [ \"$line\" = stopped ]; then done=stopped; break; fi; pid=$line; \
     done; \
     if [ \"$done\" != stopped ] && [ -n \"$pid\" ]; then \
       kill -QUIT \"$pid\" 2>/dev/null; \
       while kill -0 \"$pid\" 2>/dev/null; do sleep 0.1; done; \
     fi; \
     rm -rf \"$0\"";

/// How long the server may take to accept connections.
const STARTUP: Duration = Duration::from_secs(60);

/// A running server, and what it takes to start it again.
struct Server {
    port: u16,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    files: ServerFiles,
}

/// Creates an empty database on this binary's server (starting it on first use) and
/// returns its URL.
pub async fn fresh_database() -> String {
    let port = match SERVER.get_or_init(start) {
        Ok(server) => server.port,
        Err(e) => panic!("{e}"),
    };
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    // A pool, not a bare connection: its futures are Send as `async_trait` wants.
    let admin_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test server at {admin}: {e}"));
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&admin_pool)
        .await
        .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
    admin_pool.close().await;
    format!("postgres://postgres@127.0.0.1:{port}/{name}")
}

/// Stops this binary's server (a fast shutdown: its connections are cut), to play a
/// database outage; [`start_server`] starts it again with its data. For a test binary
/// whose other tests do not use the server meanwhile.
pub fn stop_server() {
    let pid = SERVER_PID.swap(-1, Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: signals and reaps our own child.
        unsafe {
            libc::kill(pid, libc::SIGINT);
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
    }
}

/// Starts this binary's server again after [`stop_server`], on the same port and data.
pub fn start_server() {
    let server = match SERVER.get() {
        Some(Ok(server)) => server,
        _ => panic!("no PostgreSQL server to restart: none was started"),
    };
    match launch(&server.bin, server.user, &server.files, server.port) {
        Ok(Launch::Ready(_)) => {}
        Ok(Launch::Exited(why)) | Err(why) => panic!("restarting PostgreSQL: {why}"),
    }
}

/// The directory holding `initdb` and `postgres`, if PostgreSQL is installed.
fn bindir() -> Option<PathBuf> {
    let has_programs = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("BUILDMAN_PG_BINDIR") {
        return Some(PathBuf::from(dir)).filter(|d| has_programs(d));
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((major, e.path().join("bin")))
        })
        .filter(|(_, bin)| has_programs(bin))
        .max_by_key(|(major, _)| *major);
    if let Some((_, bin)) = newest {
        return Some(bin);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).find(|d| has_programs(d))
}

/// The user and group the server runs as: `postgres` when we are root, else ourselves.
fn server_user() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres").map_err(|e| e.to_string())?;
    // SAFETY: getpwnam reads a NUL-terminated name; the record it returns is read at once,
    // before any other call could overwrite it (the server starts once, under a OnceLock).
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(
            "the tests run as root, so PostgreSQL must run as the `postgres` user, \
                    which does not exist: install PostgreSQL (its package creates it)"
                .to_string(),
        );
    }
    // SAFETY: not null, so it points to a valid passwd record.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok(Some((uid, gid)))
}

/// A command of the server's, run as its user in `dir` (which that user can read).
fn command(program: PathBuf, user: Option<(u32, u32)>, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir).stdin(Stdio::null());
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// At a normal exit: stops the server, then lets the watchdog clean up and waits for it.
extern "C" fn stop_at_exit() {
    let server = SERVER_PID.swap(-1, Ordering::SeqCst);
    let pipe = WATCHDOG_PIPE.swap(-1, Ordering::SeqCst);
    // SAFETY (the block): plain system calls on our own child processes and descriptor.
    unsafe {
        if server > 0 {
            libc::kill(server, libc::SIGQUIT);
            let mut status = 0;
            libc::waitpid(server, &mut status, 0);
            if pipe >= 0 {
                let line = b"stopped\n";
                libc::write(pipe, line.as_ptr().cast(), line.len());
            }
        }
        if pipe >= 0 {
            libc::close(pipe);
        }
        let watchdog = WATCHDOG_PID.swap(-1, Ordering::SeqCst);
        if watchdog > 0 {
            let mut status = 0;
            libc::waitpid(watchdog, &mut status, 0);
        }
    }
}

/// Starts the watchdog that removes `dir` (and stops the server if need be) when this
/// process ends, and registers [`stop_at_exit`].
fn start_watchdog(dir: &Path) -> Result<(), String> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting the watchdog (sh): {e}"))?;
    // The pipe is close-on-exec: no other child (the server least of all) holds it open.
    let pipe = child.stdin.take().ok_or("the watchdog has no stdin")?;
    WATCHDOG_PIPE.store(pipe.into_raw_fd(), Ordering::SeqCst);
    WATCHDOG_PID.store(
        i32::try_from(child.id()).map_err(|e| e.to_string())?,
        Ordering::SeqCst,
    );
    // SAFETY: registers a plain function without captures.
    if unsafe { libc::atexit(stop_at_exit) } != 0 {
        return Err("atexit refused to register the server's stop".to_string());
    }
    Ok(())
}

/// Tells the watchdog the server's pid.
fn tell_watchdog(pid: i32) {
    let fd = WATCHDOG_PIPE.load(Ordering::SeqCst);
    if fd >= 0 {
        let line = format!("{pid}\n");
        // SAFETY: writes our own buffer to our own descriptor.
        unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
    }
}

/// Initialises a data directory and starts the server; called once per test binary.
fn start() -> Result<Server, String> {
    let bin = bindir().ok_or(
        "PostgreSQL is not installed: the PostgreSQL tests need its server programs \
         (initdb, postgres). Install it (Debian/Ubuntu: `apt-get install postgresql`; CI \
         does), or set BUILDMAN_PG_BINDIR to the directory holding them.",
    )?;
    let user = server_user()?;
    let files = ServerFiles::create(user)?;
    initdb(&bin, user, &files)?;
    // A free port can be taken between our probe and the server's bind: try a few.
    let mut failure = String::new();
    for _ in 0..3 {
        match launch(&bin, user, &files, crate::free_port())? {
            Launch::Ready(port) => {
                return Ok(Server {
                    port,
                    bin,
                    user,
                    files,
                });
            }
            Launch::Exited(why) => failure = why,
        }
    }
    Err(failure)
}

/// Where the server's files are: all under one directory, which the watchdog removes.
struct ServerFiles {
    /// The directory holding the rest; the server's commands run in it.
    dir: PathBuf,
    /// The data directory (`-D`).
    data: PathBuf,
    /// Where the server puts its Unix sockets (`-k`).
    sockets: PathBuf,
    /// The server's output, read back when it fails to start.
    log: PathBuf,
}

impl ServerFiles {
    /// Creates a fresh directory in the temp dir, owned by the server's `user`, and starts
    /// the watchdog that removes it.
    fn create(user: Option<(u32, u32)>) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!(
            "buildman-test-pg-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let files = Self {
            data: dir.join("data"),
            sockets: dir.join("sockets"),
            log: dir.join("server.log"),
            dir,
        };
        std::fs::create_dir_all(&files.sockets)
            .map_err(|e| format!("creating {}: {e}", files.dir.display()))?;
        start_watchdog(&files.dir)?;
        if let Some((uid, gid)) = user {
            for path in [&files.dir, &files.sockets] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .map_err(|e| format!("handing {} to postgres: {e}", path.display()))?;
            }
        }
        Ok(files)
    }
}

/// Runs `initdb` on the data directory: trust authentication, superuser `postgres`.
fn initdb(bin: &Path, user: Option<(u32, u32)>, files: &ServerFiles) -> Result<(), String> {
    let out = command(bin.join("initdb"), user, &files.dir)
        .arg("-D")
        .arg(&files.data)
        .args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "-N",
        ])
        .output()
        .map_err(|e| format!("running initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// How one attempt to start the server ended, when it did not end them all.
enum Launch {
    /// It accepts connections on this port.
    Ready(u16),
    /// It exited (most likely another process took the port first): why, with its log.
    Exited(String),
}

/// Starts the server on `port` and waits until it accepts connections, exits or overruns
/// [`STARTUP`] (an error: it is killed then).
fn launch(
    bin: &Path,
    user: Option<(u32, u32)>,
    files: &ServerFiles,
    port: u16,
) -> Result<Launch, String> {
    let log = File::create(&files.log).map_err(|e| format!("creating the log: {e}"))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let mut server = command(bin.join("postgres"), user, &files.dir)
        .arg("-D")
        .arg(&files.data)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(&files.sockets)
        // Throwaway data: no durability; room for many pools.
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
        .args(["-c", "max_connections=300"])
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting postgres: {e}"))?;
    let pid = i32::try_from(server.id()).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Ok(Some(status)) = server.try_wait() {
            let log = std::fs::read_to_string(&files.log).unwrap_or_default();
            return Ok(Launch::Exited(format!(
                "postgres exited ({status}):\n{log}"
            )));
        }
        if ready(&files.data, pid) {
            SERVER_PID.store(pid, Ordering::SeqCst);
            tell_watchdog(pid);
            return Ok(Launch::Ready(port));
        }
        if Instant::now() > deadline {
            let _ = server.kill();
            let _ = server.wait();
            let log = std::fs::read_to_string(&files.log).unwrap_or_default();
            return Err(format!("postgres did not start in {STARTUP:?}:\n{log}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the postmaster `pid` accepts connections: its `postmaster.pid` (as `pg_ctl -w`
/// reads it) names it and says `ready`.
fn ready(data: &Path, pid: i32) -> bool {
    let Ok(file) = std::fs::read_to_string(data.join("postmaster.pid")) else {
        return false;
    };
    let lines: Vec<&str> = file.lines().collect();
    lines.first().map(|l| l.trim()) == Some(pid.to_string().as_str())
        && lines.get(7).map(|l| l.trim()) == Some("ready")
}
