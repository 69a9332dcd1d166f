//! An S3 of a test's own: moto's server (`moto_server`, PyPI `moto[server]`) on 127.0.0.1
//! and a free port, killed when dropped, with one empty bucket made through the AWS SDK.
//! moto accepts any credentials; tests use [`ACCESS_KEY`] and [`SECRET_KEY`].

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

use crate::moto::Moto;

/// The access key tests configure.
pub const ACCESS_KEY: &str = "testing-access-key";
/// The secret key tests configure.
pub const SECRET_KEY: &str = "testing-secret-key";
/// The region tests configure.
pub const REGION: &str = "us-east-1";

/// A running `moto_server` with one bucket.
pub struct S3Server {
    moto: Moto,
    /// The bucket made at start.
    pub bucket: String,
}

impl S3Server {
    /// Starts a server on a free port and makes the bucket `contexts`; panics when
    /// moto_server is missing or never answers.
    pub async fn start() -> Self {
        let server = S3Server {
            moto: Moto::start().await,
            bucket: "contexts".to_owned(),
        };
        (server
            .client()
            .create_bucket()
            .bucket(&server.bucket)
            .send())
        .await
        .expect("creating the test bucket");
        server
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        self.moto.endpoint()
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
