//! The SDK client: the workspace's TLS stack, the configured keys or the SDK's default
//! chain, EC2_REGION, EC2_ENDPOINT_URL, and time bounds on every call.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::interceptors::InterceptorContext;
use aws_sdk_ec2::config::retry::{ClassifyRetry, RetryAction};
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{Credentials, Region};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::operation::run_instances::RunInstancesError;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use buildman_core::config::Ec2Config;

use super::errors::FailureClass;

/// How long connecting to EC2 may take (the SDK's own default).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(3100);
/// How long one attempt of a call may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a call may take with the SDK's retries (3 attempts, backoff on throttling and
/// server errors): a hung EC2 never holds a build's start longer than this.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A client for `config`'s region and endpoint. Credentials are AWS_ACCESS_KEY and
/// AWS_SECRET_KEY when set, else the SDK's default chain (environment, profile, web
/// identity, ECS, instance metadata), resolved on first use.
pub async fn client(config: &Ec2Config) -> Client {
    // hyper 1 on rustls with ring: the workspace's one TLS stack and crypto provider.
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(config.ec2_region.clone()));
    if let (Some(key), Some(secret)) = (&config.aws_access_key, &config.aws_secret_key) {
        loader = loader.credentials_provider(Credentials::new(
            key,
            secret,
            None,
            None,
            "AWS_ACCESS_KEY",
        ));
    }
    let sdk = loader.load().await;
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(CALL_TIMEOUT)
        .build();
    // The endpoint is EC2's alone: STS (web identity) keeps its own.
    let mut ec2 = aws_sdk_ec2::config::Builder::from(&sdk)
        .timeout_config(timeouts)
        .retry_classifier(NoRetryOnCapacity);
    if let Some(url) = &config.ec2_endpoint_url {
        ec2 = ec2.endpoint_url(url);
    }
    Client::from_conf(ec2.build())
}

/// RunInstances refused for capacity or quota is not retried: the next executor takes the
/// build at once. (EC2 answers InsufficientInstanceCapacity with a server-error status,
/// which the SDK would otherwise retry with backoff.)
#[derive(Debug)]
struct NoRetryOnCapacity;

impl ClassifyRetry for NoRetryOnCapacity {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let code = match ctx.output_or_error() {
            Some(Err(e)) => (e.as_operation_error())
                .and_then(|e| e.downcast_ref::<RunInstancesError>())
                .and_then(|e| e.code()),
            _ => None,
        };
        match code.and_then(FailureClass::of_code) {
            Some(FailureClass::Capacity) => RetryAction::RetryForbidden,
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "no retry of RunInstances refused for capacity"
    }
}
