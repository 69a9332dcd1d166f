//! A `redis-server` of a test's own (Debian package `redis-server`): on 127.0.0.1 and a
//! free port, without persistence, killed when dropped. It can be stopped and started again
//! on the same port (empty: nothing is saved) to play an outage.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// How long the server may take to answer a PING after it started.
const STARTUP: Duration = Duration::from_secs(10);

/// A running (or stopped, see [`RedisServer::stop`]) `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free port; panics when redis-server is missing or never answers.
    pub async fn start() -> Self {
        let mut dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..5 {
            let mut server = RedisServer {
                child: None,
                port: crate::free_port(),
                dir,
            };
            if server.spawn().await {
                return server;
            }
            dir = server.dir;
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server; the port stays this server's for [`RedisServer::restart`].
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill redis-server");
        }
    }

    /// Starts it again on the same port, empty (no persistence).
    pub async fn restart(&mut self) {
        assert!(self.spawn().await, "redis-server did not restart");
    }

    /// Starts the server on `self.port`; false when it exits instead (port taken).
    async fn spawn(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        let mut child = crate::spawn_quiet(
            &mut command,
            "install the Debian package redis-server (apt-get install -y redis-server)",
        );
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            let port = self.port;
            if tokio::task::spawn_blocking(move || answers_ping(port))
                .await
                .unwrap_or(false)
            {
                self.child = Some(child);
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "redis-server on port {} did not answer within {STARTUP:?}",
            self.port
        );
    }
}

/// Whether a Redis on `port` answers `PING` with `+PONG` (plain RESP over TCP, so no Redis
/// client is needed here).
fn answers_ping(port: u16) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        conn.set_read_timeout(Some(Duration::from_millis(500)))?;
        conn.write_all(b"PING\r\n")?;
        let mut reply = [0u8; 7];
        conn.read_exact(&mut reply)?;
        Ok(&reply == b"+PONG\r\n")
    };
    attempt().unwrap_or(false)
}
