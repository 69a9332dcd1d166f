//! The failures the executor's watch reports: a pod that cannot be scheduled, a container
//! that cannot pull its image, a failed Job; only for its own workers, again while they
//! stay failed, and no more once stopped.

use std::time::Duration;

use buildman_executor::{Executor, WorkerFailure};
use buildman_testkit::kube::{Auth, FakeKube, image_pull_back_off, unschedulable};
use tokio::sync::mpsc::Receiver;

use crate::{executor, request};

async fn next(failures: &mut Receiver<WorkerFailure>) -> WorkerFailure {
    tokio::time::timeout(Duration::from_secs(20), failures.recv())
        .await
        .expect("a failure is reported")
        .expect("the watch runs")
}

#[tokio::test]
async fn unschedulable_image_pull_and_failed_jobs_are_reported() {
    let fake = FakeKube::start(Auth::Anyone, None).await;
    let executor = executor(&format!(
        "EXECUTOR: kubernetesPodman\nK8S_API_SERVER: {}",
        fake.addr
    ))
    .await;
    let mut failures = executor.failures().expect("the executor reports failures");
    assert!(executor.failures().is_none(), "taken once");

    let cases = [
        (
            unschedulable(),
            "pod unschedulable: 0/3 nodes are available: 3 Insufficient memory.",
        ),
        (
            image_pull_back_off(),
            "container builder cannot start: ImagePullBackOff: Back-off pulling image \"quay.io/projectquay/quay-builder:nope\"",
        ),
    ];
    for (status, reason) in cases {
        let r = request();
        let job = executor.start(&r).await.unwrap();
        fake.set_pod_status(&job, status);
        let failure = next(&mut failures).await;
        assert_eq!(
            (failure.execution_id.as_str(), failure.build_id),
            (job.as_str(), r.build_id)
        );
        assert_eq!(failure.reason, reason);
        executor.stop(&job).await.unwrap();
    }
    let r = request();
    let job = executor.start(&r).await.unwrap();
    fake.finish_job(
        &job,
        Some((
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        )),
    );
    let failure = next(&mut failures).await;
    assert_eq!(failure.execution_id, job);
    assert_eq!(
        failure.reason,
        "job failed: DeadlineExceeded: Job was active longer than specified deadline"
    );
}

/// A failure shown before the manager could record the worker is reported again while it
/// lasts; once stopped, or for a Job this executor did not start, nothing is reported.
#[tokio::test]
async fn only_own_workers_are_reported_and_again_until_stopped() {
    let fake = FakeKube::start(Auth::Anyone, None).await;
    let executor = executor(&format!(
        "EXECUTOR: kubernetesPodman\nK8S_API_SERVER: {}",
        fake.addr
    ))
    .await;
    let mut failures = executor.failures().unwrap();
    let r = request();
    let job = executor.start(&r).await.unwrap();
    fake.set_pod_status(&job, unschedulable());
    let first = next(&mut failures).await;
    let again = next(&mut failures).await;
    assert_eq!(first, again);
    executor.stop(&job).await.unwrap();
    while failures.try_recv().is_ok() {}

    // A Job of someone else's, failing: not ours to report.
    let other = buildman_executor::kubernetes::KubernetesExecutor::new(crate::settings(&format!(
        "EXECUTOR: kubernetesPodman\nK8S_API_SERVER: {}",
        fake.addr
    )))
    .await
    .unwrap();
    let theirs = other.start(&request()).await.unwrap();
    fake.set_pod_status(&theirs, image_pull_back_off());
    let quiet = tokio::time::timeout(Duration::from_secs(5), failures.recv()).await;
    assert!(
        quiet.is_err(),
        "reported a failure that is not ours: {quiet:?}"
    );
}
