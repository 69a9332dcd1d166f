//! What the managers of a scaled-out deployment share: one PostgreSQL database, one Redis
//! under one ORCHESTRATOR_PREFIX, one JWT signing key (so a worker's token is good at any).

use std::path::PathBuf;

use buildman_manager::KeyPair;
use buildman_testkit::redis::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The shared backends and key of one test's managers.
pub struct Cluster {
    pub database_url: String,
    pub redis: RedisServer,
    pub prefix: String,
    pub signing_key: PathBuf,
    _keys: tempfile::TempDir,
}

impl Cluster {
    /// A fresh database, a Redis of its own, a unique prefix and a new key pair.
    pub async fn start() -> Cluster {
        let keys = tempfile::tempdir().expect("temp dir");
        let signing_key = keys.path().join("signing-key.pem");
        let pair = KeyPair::generate().expect("a key pair");
        std::fs::write(&signing_key, pair.private_pem).expect("signing key");
        Cluster {
            database_url: buildman_testkit::postgres::fresh_database().await,
            redis: RedisServer::start().await,
            prefix: format!("buildman/test-{}/", &buildman_contexts::new_id()[..16]),
            signing_key,
            _keys: keys,
        }
    }

    /// Top-level config keys (one per line): the database and the signing key.
    pub fn shared_keys(&self) -> String {
        format!(
            "BUILDMAN_DATABASE_URL: {}\nBUILDMAN_JWT_SIGNING_KEY: {{KID: k1, PRIVATE_KEY_PATH: {}}}\n",
            self.database_url,
            self.signing_key.display(),
        )
    }

    /// BUILD_MANAGER keys for [`super::config_yaml`]: `allowed` workers and the Redis.
    pub fn manager_keys(&self, allowed: u32) -> String {
        format!(
            "ALLOWED_WORKER_COUNT: {allowed}\n  ORCHESTRATOR_PREFIX: {}\n  ORCHESTRATOR: {{REDIS_HOST: 127.0.0.1, REDIS_PORT: {}}}",
            self.prefix,
            self.redis.port()
        )
    }
}

/// One Redis command (inline form) to the server on `port`; returns its first reply line.
pub async fn redis_command(port: u16, command: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to Redis");
    conn.write_all(format!("{command}\r\n").as_bytes())
        .await
        .expect("send");
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n") {
        conn.read_exact(&mut byte).await.expect("reply");
        reply.push(byte[0]);
    }
    String::from_utf8_lossy(&reply).trim().to_string()
}
