//! What an EC2 API failure means: every error becomes one line with its AWS code and request
//! id (never a key: the SDK's errors hold none), and a class that says what to check.
//! The SDK has already retried what is worth retrying (throttling, server errors, dropped
//! connections) with its backoff, but not capacity refusals (see `client.rs`); whatever
//! reaches here ends the attempt on this executor, so the manager falls back to the next one
//! and counts the failure toward its breaker.

use std::fmt;

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::operation::RequestId;

use crate::ExecutorError;

/// The kinds of EC2 failure told apart, each with what an operator should check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// Still throttled after the SDK's retries with backoff.
    Throttled,
    /// No capacity or quota for the instance (InsufficientInstanceCapacity,
    /// InstanceLimitExceeded, VcpuLimitExceeded, Unsupported, ...).
    Capacity,
    /// Credentials missing, refused or without the permission.
    Auth,
    /// The request names something that does not exist or is invalid (the AMI, the subnet,
    /// the key pair, the instance type): the executor's configuration.
    Configuration,
    /// EC2 answered with a server error, after the SDK's retries.
    Unavailable,
    /// EC2 could not be reached, or did not answer in time.
    Unreachable,
    /// Anything else.
    Other,
}

impl FailureClass {
    /// The class of an AWS error code (`None`: no code, or an unknown one).
    pub fn of_code(code: &str) -> Option<FailureClass> {
        const THROTTLED: &[&str] = &["RequestLimitExceeded", "Throttling", "ThrottlingException"];
        const CAPACITY: &[&str] = &[
            "InsufficientInstanceCapacity",
            "InsufficientHostCapacity",
            "InsufficientCapacity",
            "InsufficientFreeAddressesInSubnet",
            "InstanceLimitExceeded",
            "VcpuLimitExceeded",
            "MaxSpotInstanceCountExceeded",
            "Unsupported",
        ];
        const AUTH: &[&str] = &[
            "AuthFailure",
            "UnauthorizedOperation",
            "InvalidClientTokenId",
            "SignatureDoesNotMatch",
            "MissingAuthenticationToken",
            "ExpiredToken",
            "RequestExpired",
            "OptInRequired",
            "Blocked",
            "PendingVerification",
        ];
        const UNAVAILABLE: &[&str] = &[
            "InternalError",
            "InternalFailure",
            "ServiceUnavailable",
            "Unavailable",
        ];
        let class = if THROTTLED.contains(&code) {
            FailureClass::Throttled
        } else if CAPACITY.contains(&code) {
            FailureClass::Capacity
        } else if AUTH.contains(&code) {
            FailureClass::Auth
        } else if UNAVAILABLE.contains(&code) {
            FailureClass::Unavailable
        } else if code.starts_with("Invalid") || code.starts_with("MissingParameter") {
            FailureClass::Configuration
        } else {
            return None;
        };
        Some(class)
    }

    /// What to check, for the build log and the manager's log.
    fn hint(self) -> &'static str {
        match self {
            FailureClass::Throttled => "EC2 throttled the request after retries",
            FailureClass::Capacity => {
                "no capacity or quota for the instance: try another EC2_INSTANCE_TYPE or subnet, or raise the quota"
            }
            FailureClass::Auth => {
                "check the credentials (AWS_ACCESS_KEY/AWS_SECRET_KEY or the SDK's chain) and the IAM policy"
            }
            FailureClass::Configuration => "check the executor's EC2 keys",
            FailureClass::Unavailable => "EC2 answered with a server error after retries",
            FailureClass::Unreachable => {
                "EC2 could not be reached (EC2_REGION, EC2_ENDPOINT_URL, network)"
            }
            FailureClass::Other => "",
        }
    }
}

/// One EC2 API failure, as the executor reports and logs it.
#[derive(Debug)]
pub struct Ec2Failure {
    /// What the executor was doing (`RunInstances`, ...).
    pub operation: &'static str,
    pub class: FailureClass,
    /// The AWS error code, when EC2 answered with one.
    pub code: Option<String>,
    /// The request id EC2 gave the failed request, to quote to AWS support.
    pub request_id: Option<String>,
    /// The error and its sources, one line.
    pub detail: String,
}

impl fmt::Display for Ec2Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EC2 {}", self.operation)?;
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        write!(f, ": {}", self.detail)?;
        if let Some(id) = &self.request_id {
            write!(f, " (request id {id})")?;
        }
        match self.class.hint() {
            "" => Ok(()),
            hint => write!(f, "; {hint}"),
        }
    }
}

impl Ec2Failure {
    /// Classifies an SDK error of `operation`.
    pub fn new<E>(operation: &'static str, err: &SdkError<E>) -> Ec2Failure
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let code = err.code().map(str::to_owned);
        let status = err.raw_response().map(|r| r.status().as_u16());
        let detail = match err.message() {
            Some(message) => message.to_owned(),
            None => chain(err),
        };
        let class = match err {
            SdkError::TimeoutError(_) => FailureClass::Unreachable,
            SdkError::DispatchFailure(e) if e.is_io() || e.is_timeout() => {
                FailureClass::Unreachable
            }
            // The SDK reports a credentials chain that found nothing as a failure to send.
            SdkError::DispatchFailure(_) if detail.contains("credentials") => FailureClass::Auth,
            _ => match code.as_deref().and_then(FailureClass::of_code) {
                Some(class) => class,
                None if status.is_some_and(|s| s >= 500) => FailureClass::Unavailable,
                None if matches!(status, Some(401 | 403)) => FailureClass::Auth,
                None => FailureClass::Other,
            },
        };
        Ec2Failure {
            operation,
            class,
            code,
            request_id: (err.request_id().map(str::to_owned)).or_else(|| body_request_id(err)),
            detail,
        }
    }

    /// Logs the failure (with its code and request id as fields) and makes it the
    /// executor's error.
    pub fn report(self) -> ExecutorError {
        tracing::warn!(
            operation = self.operation,
            class = ?self.class,
            aws_code = self.code.as_deref().unwrap_or(""),
            request_id = self.request_id.as_deref().unwrap_or(""),
            "{self}"
        );
        match self.class {
            FailureClass::Unreachable => ExecutorError::Unreachable(self.to_string()),
            _ => ExecutorError::Failed(self.to_string()),
        }
    }
}

/// An error and its sources, one line (the SDK's own Display says only "dispatch failure").
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
        source = e.source();
    }
    line
}

/// The `<RequestID>` of an EC2 error answer's body, for answers without the header the
/// SDK reads it from.
fn body_request_id<E>(err: &SdkError<E>) -> Option<String> {
    let body = std::str::from_utf8(err.raw_response()?.body().bytes()?).ok()?;
    let (_, rest) = body.split_once("<RequestID>")?;
    let (id, _) = rest.split_once("</RequestID>")?;
    Some(id.trim().to_owned())
}

/// Shorthand: classify, log and convert an SDK error of `operation`.
pub fn failed<E>(operation: &'static str) -> impl FnOnce(SdkError<E>) -> ExecutorError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    move |err| Ec2Failure::new(operation, &err).report()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified() {
        for (code, class) in [
            ("RequestLimitExceeded", Some(FailureClass::Throttled)),
            ("InsufficientInstanceCapacity", Some(FailureClass::Capacity)),
            ("InstanceLimitExceeded", Some(FailureClass::Capacity)),
            ("Unsupported", Some(FailureClass::Capacity)),
            ("AuthFailure", Some(FailureClass::Auth)),
            ("UnauthorizedOperation", Some(FailureClass::Auth)),
            ("InvalidAMIID.NotFound", Some(FailureClass::Configuration)),
            ("InvalidParameterValue", Some(FailureClass::Configuration)),
            ("InternalError", Some(FailureClass::Unavailable)),
            ("SomethingNew", None),
        ] {
            assert_eq!(FailureClass::of_code(code), class, "{code}");
        }
    }
}
