//! A followed build log: `GET .../build/<id>/logs?follow=1` answers a Server-Sent Events
//! stream of [`LogEvent`]s (see `buildman_api`'s events module for the contract), fed by
//! the manager's [`Follower`](buildman_manager::Follower).
//!
//! The stream is the follower itself, polled only as fast as the client reads: a client
//! that stops reading holds no task and no buffer of its own, and once it falls behind the
//! feed it is told where to resume (`lagged`) and dropped.

use std::convert::Infallible;

use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use buildman_api::{
    BuildView, EndEvent, EntryEvent, LaggedEvent, LogEvent, PhaseEvent, RetryEvent,
};
use buildman_core::Build;
use buildman_manager::{Builds, Followed};
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::rest::ApiError;

/// Followed logs one manager process serves at once; more are answered 503.
pub const MAX_FOLLOWERS: usize = 1024;

/// The places of [`MAX_FOLLOWERS`].
static FOLLOWERS: std::sync::LazyLock<std::sync::Arc<Semaphore>> =
    std::sync::LazyLock::new(|| std::sync::Arc::new(Semaphore::new(MAX_FOLLOWERS)));

/// Answers a followed log of `build` from `Last-Event-ID` + 1, else `start`, else 0.
pub(crate) async fn follow(
    builds: &Builds,
    build: &Build,
    start: Option<u64>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let from = match last_event_id(headers)? {
        Some(id) => id.saturating_add(1),
        None => start.unwrap_or(0),
    };
    let permit = FOLLOWERS.clone().try_acquire_owned().map_err(|_| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this manager already follows {MAX_FOLLOWERS} logs; try again later or read \
                 the log without follow=1"
            ),
        )
    })?;
    let follower = builds.follow(build, from).await?;
    let events = futures::stream::unfold(Some((follower, permit)), |state| async move {
        let (mut follower, permit) = state?;
        match follower.next().await {
            Ok(Some(followed)) => {
                let events: Vec<Event> = followed.into_iter().map(event).collect();
                Some((futures::stream::iter(events), Some((follower, permit))))
            }
            Ok(None) => None,
            Err(e) => {
                // The client resumes from its last entry, as after any broken stream.
                tracing::warn!(error = %e, "a followed log stopped");
                None
            }
        }
    })
    .flatten()
    .map(Ok::<_, Infallible>);
    let sse = Sse::new(events).keep_alive(KeepAlive::default());
    // Proxies that buffer (nginx) would hold the events back.
    Ok(([("x-accel-buffering", "no")], sse).into_response())
}

/// The SSE event of what a follower saw.
fn event(followed: Followed) -> Event {
    let event = match followed {
        Followed::Entry { index, entry } => LogEvent::Entry(EntryEvent { index, entry }),
        Followed::Phase(phase) => LogEvent::Phase(PhaseEvent {
            phase: phase.into(),
        }),
        Followed::Retry { attempt, at } => LogEvent::Retry(RetryEvent { attempt, at }),
        Followed::End { build, expired } => LogEvent::End(Box::new(EndEvent {
            build: BuildView::new(&build, expired),
        })),
        Followed::Lagged { next } => LogEvent::Lagged(LaggedEvent { next }),
    };
    sse_event(&event)
}

/// The SSE form of an event.
fn sse_event(event: &LogEvent) -> Event {
    let data = event.data().unwrap_or_else(|e| {
        // Entries are JSON already; nothing here fails to serialise.
        tracing::error!(error = %e, "could not serialise a log event");
        "{}".into()
    });
    let sse = Event::default().event(event.name()).data(data);
    match event.id() {
        Some(id) => sse.id(id.to_string()),
        None => sse,
    }
}

/// The `Last-Event-ID` a reconnecting client sends: the index of the last entry it got.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid Last-Event-ID {text:?}: expected the index of a log entry"),
        )
    })
}
