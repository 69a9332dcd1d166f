//! Starting, stopping, counting and listing workers against the fake API, and the API's
//! errors as the executor reports them.

use std::time::Duration;

use buildman_executor::{Executor, ExecutorError};
use buildman_testkit::kube::{Auth, FakeKube, abandoned_job};

use crate::{TOKEN, executor, request};

fn plain(fake: &FakeKube) -> String {
    format!(
        "EXECUTOR: kubernetesPodman\nK8S_API_SERVER: {}\nBUILDER_NAMESPACE: builds",
        fake.addr
    )
}

#[tokio::test]
async fn start_count_list_and_stop() {
    let fake = FakeKube::start(Auth::Anyone, None).await;
    let executor = executor(&plain(&fake)).await;
    let r = request();
    let name = executor.start(&r).await.expect("start");
    assert!(
        name.starts_with(&format!("{}-", r.build_id)),
        "{name}: generateName"
    );
    let jobs = fake.jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].metadata.namespace.as_deref(), Some("builds"));
    assert_eq!(fake.pods().len(), 1, "the Job controller made its pod");
    let build = buildman_core::BuildId::new().to_string();
    let other = fake.insert_job(abandoned_job("builds", &build, Duration::from_secs(3600)));
    assert_eq!(executor.running().await.unwrap(), 2);
    fake.finish_job(&other, None);
    assert_eq!(
        executor.running().await.unwrap(),
        1,
        "a Complete Job is not running"
    );

    let owned = executor.owned().await.unwrap();
    assert_eq!(owned.len(), 2, "every worker Job, whoever started it");
    let mine = owned.iter().find(|w| w.execution_id == name).unwrap();
    assert_eq!(mine.build_id, Some(r.build_id));
    let old = owned.iter().find(|w| w.execution_id == other).unwrap();
    let age = old.started_at.elapsed().unwrap();
    assert!(
        age >= Duration::from_secs(3500),
        "started_at is the Job's creationTimestamp: {age:?}"
    );

    executor.stop(&name).await.expect("stop");
    assert!(
        fake.jobs()
            .iter()
            .all(|j| j.metadata.name.as_deref() != Some(name.as_str()))
    );
    assert!(fake.pods().is_empty());
    let seen = fake.requests();
    let deletes: Vec<String> = (seen.iter().filter(|s| s.method == "DELETE"))
        .map(|s| format!("{}?{}", s.path, s.query))
        .collect();
    assert_eq!(
        deletes[0],
        format!("/apis/batch/v1/namespaces/builds/jobs/{name}?")
    );
    assert!(
        deletes[1].starts_with("/api/v1/namespaces/builds/pods?"),
        "{deletes:?}"
    );
    assert!(
        deletes[1].contains(&format!("labelSelector=job-name%3D{name}")),
        "{deletes:?}"
    );
    executor
        .stop(&name)
        .await
        .expect("stopping a Job already gone succeeds");
}

#[tokio::test]
async fn with_debug_stop_keeps_the_job() {
    let fake = FakeKube::start(Auth::Anyone, None).await;
    let executor = executor(&format!("{}\nDEBUG: true", plain(&fake))).await;
    let name = executor.start(&request()).await.unwrap();
    executor.stop(&name).await.unwrap();
    assert_eq!(fake.jobs().len(), 1);
    assert_eq!(fake.job_deletes(&name), 0);
}

/// Each answer the API may give a create: the error says what the API said, and never the
/// worker's token (even where the API quotes it back).
#[tokio::test]
async fn the_apis_refusals_are_reported_with_its_reason_and_without_secrets() {
    let cases = [
        (
            403,
            "Forbidden",
            "jobs.batch \"x\" is forbidden: exceeded quota: builder-quota, requested: requests.memory=3968Mi, used: requests.memory=8Gi, limited: requests.memory=8Gi",
        ),
        (409, "AlreadyExists", "jobs.batch \"x\" already exists"),
        (
            422,
            "Invalid",
            &format!(
                "Job.batch \"x\" is invalid: spec.template.spec.containers[0].env[0].value: Invalid value: \"{TOKEN}\": too long"
            ),
        ),
        (
            500,
            "InternalError",
            "Internal error occurred: etcdserver: request timed out",
        ),
    ];
    for (code, reason, message) in cases {
        let fake = FakeKube::start(Auth::Anyone, None).await;
        let executor = executor(&plain(&fake)).await;
        fake.fail_next("POST", 1, code, reason, message);
        let e = executor.start(&request()).await.unwrap_err().to_string();
        assert!(e.contains(&format!("answered {code}: {reason}")), "{e}");
        assert!(!e.contains(TOKEN), "{e}");
        if code == 403 {
            assert!(
                e.contains("exceeded quota: builder-quota"),
                "the quota message is shown: {e}"
            );
        }
    }
}

#[tokio::test]
async fn a_wrong_token_is_refused_401() {
    let fake = FakeKube::start(Auth::Bearer("right".into()), None).await;
    // A bearer token means https (Quay's rule); the fake speaks http, so the URL is given.
    let executor = executor(&format!(
        "EXECUTOR: kubernetesPodman\nK8S_API_SERVER: http://{}\nSERVICE_ACCOUNT_TOKEN: wrong-SECRET",
        fake.addr
    ))
    .await;
    let e = executor.start(&request()).await.unwrap_err().to_string();
    assert!(e.contains("answered 401: Unauthorized"), "{e}");
    assert!(!e.contains("wrong-SECRET") && !e.contains(TOKEN), "{e}");
}

#[tokio::test]
async fn connection_refused_and_no_answer_are_unreachable() {
    let port = buildman_testkit::free_port();
    let refused = executor(&format!(
        "EXECUTOR: kubernetesPodman\nK8S_API_SERVER: 127.0.0.1:{port}"
    ))
    .await;
    let e = refused.start(&request()).await.unwrap_err();
    assert!(matches!(e, ExecutorError::Unreachable(_)), "{e}");
    assert!(
        e.to_string().contains("cannot reach the Kubernetes API"),
        "{e}"
    );

    let fake = FakeKube::start(Auth::Anyone, None).await;
    fake.hang(true);
    let silent = executor(&format!("{}\nK8S_API_TIMEOUT: 1", plain(&fake))).await;
    let e = silent.start(&request()).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("did not answer within 1s (K8S_API_TIMEOUT)"),
        "{e}"
    );
}
