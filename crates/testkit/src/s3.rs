//! An S3 of a test's own: moto's server (`moto_server`, PyPI `moto[server]`) on 127.0.0.1
//! and a free port, killed when dropped, with one empty bucket made through the AWS SDK.
//! moto accepts any credentials; tests use [`ACCESS_KEY`] and [`SECRET_KEY`].

use std::process::Stdio;
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use tokio::process::{Child, Command};

/// The access key tests configure.
pub const ACCESS_KEY: &str = "testing-access-key";
/// The secret key tests configure.
pub const SECRET_KEY: &str = "testing-secret-key";
/// The region tests configure.
pub const REGION: &str = "us-east-1";
/// How long moto may take to answer after it started (it is a Python program).
const STARTUP: Duration = Duration::from_secs(60);

/// A running `moto_server` with one bucket.
pub struct S3Server {
    _child: Child,
    port: u16,
    /// The bucket made at start.
    pub bucket: String,
}

impl S3Server {
    /// Starts a server on a free port and makes the bucket `contexts`; panics when
    /// moto_server is missing or never answers.
    pub async fn start() -> Self {
        for _ in 0..5 {
            let port = crate::free_port();
            if let Some(child) = spawn(port).await {
                let server = S3Server {
                    _child: child,
                    port,
                    bucket: "contexts".to_owned(),
                };
                server
                    .client()
                    .create_bucket()
                    .bucket(&server.bucket)
                    .send()
                    .await
                    .expect("creating the test bucket");
                return server;
            }
        }
        panic!("moto_server did not start on any of 5 free ports");
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An SDK client for the server (path-style, the test keys).
    pub fn client(&self) -> Client {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .build();
        Client::from_conf(config)
    }

    /// The keys of the objects in the bucket.
    pub async fn keys(&self) -> Vec<String> {
        let listed = (self.client().list_objects_v2().bucket(&self.bucket).send())
            .await
            .expect("listing the test bucket");
        listed
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    }
}

/// Starts moto_server on `port` and waits until it answers; `None` when it exits instead
/// (the port was taken).
async fn spawn(port: u16) -> Option<Child> {
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("moto_server is not installed: pip install 'moto[server]' (.ci/run does)")
        }
        Err(e) => panic!("cannot start moto_server: {e}"),
    };
    let http = crate::http_client();
    let url = format!("http://127.0.0.1:{port}/");
    let deadline = Instant::now() + STARTUP;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if http.get(&url).send().await.is_ok() {
            return Some(child);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("moto_server on port {port} did not answer within {STARTUP:?}");
}
