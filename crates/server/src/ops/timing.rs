//! Request durations for the metrics: the REST API's by method, route template and status
//! ([`http`]), the worker service's by method and gRPC status ([`GrpcTimingLayer`]). A
//! request is timed until its answer's head: a gRPC call's status is there when it failed
//! (tonic answers an error in the head alone); a stream counts until it opened.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, Response};
use axum::middleware::{self, Next};
use buildman_manager::Metrics;
use futures::future::BoxFuture;

/// `router` with every request timed into `metrics`.
pub fn http(router: Router, metrics: Arc<Metrics>) -> Router {
    router.layer(middleware::from_fn_with_state(metrics, time_http))
}

async fn time_http(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> axum::response::Response {
    // The template, never the path: a path holds build ids and repository names.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = method_name(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.http_request(
        method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The method's name, for the methods the API has; any other is `other`.
fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

/// Times the worker service's calls (a tower layer for tonic's server).
#[derive(Clone)]
pub struct GrpcTimingLayer {
    metrics: Arc<Metrics>,
}

impl GrpcTimingLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        GrpcTimingLayer { metrics }
    }
}

impl<S> tower::Layer<S> for GrpcTimingLayer {
    type Service = GrpcTiming<S>;

    fn layer(&self, inner: S) -> GrpcTiming<S> {
        GrpcTiming {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service timed by [`GrpcTimingLayer`].
#[derive(Clone)]
pub struct GrpcTiming<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> tower::Service<axum::http::Request<B>> for GrpcTiming<S>
where
    S: tower::Service<axum::http::Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let method = grpc_method(request.uri().path());
        let (metrics, started) = (self.metrics.clone(), Instant::now());
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            let code = match &answer {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<usize>().ok())
                    .map_or("OK", code_name),
                Err(_) => "UNAVAILABLE",
            };
            metrics.grpc_request(method, code, started.elapsed());
            answer
        })
    }
}

/// The worker protocol's methods; a path naming none is `unknown`.
fn grpc_method(path: &str) -> &'static str {
    const METHODS: [&str; 6] = [
        "Ping",
        "RegisterBuildJob",
        "Heartbeat",
        "SetPhase",
        "LogMessage",
        "DetermineCachedTag",
    ];
    let name = path
        .strip_prefix("/buildman_pb.BuildManager/")
        .unwrap_or("");
    METHODS
        .into_iter()
        .find(|m| *m == name)
        .unwrap_or("unknown")
}

/// The name of gRPC status code `n`.
fn code_name(n: usize) -> &'static str {
    const CODES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    CODES.get(n).copied().unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_fixed_lists() {
        assert_eq!(
            grpc_method("/buildman_pb.BuildManager/SetPhase"),
            "SetPhase"
        );
        assert_eq!(grpc_method("/buildman_pb.BuildManager/Evil"), "unknown");
        assert_eq!(grpc_method("/other.Service/Ping"), "unknown");
        assert_eq!(code_name(16), "UNAUTHENTICATED");
        assert_eq!(code_name(99), "UNKNOWN");
        assert_eq!(method_name(&Method::PATCH), "other");
    }
}
