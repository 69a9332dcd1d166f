//! The REST API's bounds on one client: request bodies (refused by their Content-Length
//! before a byte of them is read, and cut off at the bound when they come without one), and
//! requests per API token.

use std::num::NonZeroU32;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::ApiError;

/// A body over `limit` bytes: 413 naming the bound.
pub(super) fn too_large(limit: u64, what: &str) -> ApiError {
    ApiError(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("{what} is larger than {limit} bytes (BUILDMAN_LIMITS)"),
    )
}

/// Middleware: refuses a request whose Content-Length is over `limit` at once, so the
/// manager never reads (let alone holds) a body it would refuse. Every 413 closes the
/// connection: the rest of the body is never read, so the connection cannot carry another
/// request, and a client must not put it back in its pool.
pub(super) async fn refuse_large(
    State(limit): State<u64>,
    request: Request,
    next: Next,
) -> Response {
    let declared = (request.headers().get(header::CONTENT_LENGTH))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut response = match declared {
        Some(length) if length > limit => too_large(limit, "the request body").into_response(),
        _ => next.run(request).await,
    };
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        (response.headers_mut()).insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Reads a whole JSON body of at most `limit` bytes (a chunked one has no Content-Length
/// to refuse it by).
pub(super) async fn read_body(body: Body, limit: u64) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut read = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            )
        })?;
        if (read.len() + chunk.len()) as u64 > limit {
            return Err(too_large(limit, "the request body"));
        }
        read.extend_from_slice(&chunk);
    }
    Ok(read.into())
}

/// Requests per API token: a sustained rate and a burst above it (GCRA).
pub(super) struct RateLimit {
    limiter: DefaultKeyedRateLimiter<[u8; 32]>,
    clock: DefaultClock,
}

impl RateLimit {
    /// `per_second` sustained, `burst` at once.
    pub(super) fn new(per_second: u32, burst: u32) -> Self {
        let one = NonZeroU32::MIN;
        let quota = Quota::per_second(NonZeroU32::new(per_second).unwrap_or(one))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(one));
        RateLimit {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        }
    }

    /// `None` when the token (by its hash, the subject it stands for) may send a request
    /// now; otherwise the 429 answer with the Retry-After it must wait.
    pub(super) fn check(&self, token: &[u8; 32]) -> Option<Response> {
        let not_until = self.limiter.check_key(token).err()?;
        let wait = not_until.wait_time_from(self.clock.now());
        // Whole seconds, rounded up: a client that waits as told is let through.
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0 || wait == Duration::ZERO);
        let error = ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many requests with this API token: retry in {seconds} s (BUILDMAN_LIMITS.RATE_PER_SECOND)"
            ),
        );
        let mut response = error.into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, seconds.into());
        Some(response)
    }
}
