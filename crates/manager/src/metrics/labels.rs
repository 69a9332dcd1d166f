//! The metrics' label sets: each a type, so that only the values named here (fixed
//! vocabularies, the configured executors' names, route templates) can become labels.

use prometheus_client::encoding::EncodeLabelSet;

/// Quay's name of the builds' work queue, its queue metrics' `queue_name`.
pub(super) const QUEUE: &str = "dockerfilebuild";

/// `{executor}`: an executor's NAME (or, for the start duration, Quay's kind name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ExecutorLabel {
    pub(super) executor: String,
}

/// `{executor, job_status}`: Quay's job result (`complete`, `error`, `expired`,
/// `incomplete`, `cancelled`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct JobStatusLabels {
    pub(super) executor: String,
    pub(super) job_status: &'static str,
}

/// `{schedule_success}`: `True` or `False`, as Quay's Python writes a boolean.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ScheduleLabel {
    pub(super) schedule_success: &'static str,
}

/// `{success}`: `true` or `false`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct SuccessLabel {
    pub(super) success: &'static str,
}

/// `{queue_name}`: always [`QUEUE`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct QueueLabel {
    pub(super) queue_name: &'static str,
}

/// `{queue_name, availability}`: `acquired` or (Quay's spelling) `nonexistant`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct QueueGetLabels {
    pub(super) queue_name: &'static str,
    pub(super) availability: &'static str,
}

/// A single label whose values are a fixed vocabulary (`phase`, `kind`, `outcome`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct PhaseLabel {
    pub(super) phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KindLabel {
    pub(super) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct OutcomeLabel {
    pub(super) outcome: &'static str,
}

/// `{call}`: a store call's name (the `Store` trait's method).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct CallLabel {
    pub(super) call: &'static str,
}

/// `{method, code}` of a gRPC call: the method's name and the status code's.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct GrpcLabels {
    pub(super) method: &'static str,
    pub(super) code: &'static str,
}

/// `{method, route, code}` of an HTTP request: the route is its template
/// (`/api/v1/build/{id}`), never the path.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct HttpLabels {
    pub(super) method: &'static str,
    pub(super) route: String,
    pub(super) code: u16,
}

pub(super) fn queue() -> QueueLabel {
    QueueLabel { queue_name: QUEUE }
}

pub(super) fn executor_label(executor: &str) -> ExecutorLabel {
    ExecutorLabel {
        executor: executor.to_owned(),
    }
}

pub(super) fn success_label(success: bool) -> SuccessLabel {
    SuccessLabel {
        success: if success { "true" } else { "false" },
    }
}
