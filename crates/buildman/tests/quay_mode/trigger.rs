//! A trigger build as Quay's web tier starts one (quay-integration.md sections 3.4, 4 and
//! 8.3): a custom-git trigger whose deploy key (an RSA key in PKCS#1 PEM, as Quay makes
//! them) is stored encrypted with DATABASE_SECRET_KEY, and a build whose job_config
//! carries the commit to build. The repository is served over ssh by the test's own sshd,
//! which lets in that key only.

use buildman_quay::secret::FieldCipher;
use buildman_testkit::{TOKEN, quay};

use super::common::git_server::{deploy_key, make_repo, sshd};
use super::{QuayWorld, SECRET, assert_completes, messages};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_build_clones_with_the_encrypted_deploy_key_and_runs_to_complete() {
    let world = QuayWorld::start().await;
    let git = tempfile::tempdir().expect("dir");
    let marker = format!("built-by-trigger-{}", buildman_testkit::unique());
    let sha = make_repo(git.path(), &marker);
    let deploy = deploy_key(git.path(), &["-t", "rsa", "-b", "2048", "-m", "PEM"]);
    let private_key = std::fs::read_to_string(&deploy).expect("key");
    assert!(private_key.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let (_sshd, git_url) = sshd(git.path(), &deploy.with_extension("pub")).await;

    for event in ["build_start", "build_success", "build_failure"] {
        quay::notification(&world.pool, "acme", "web", event, &format!("n-{event}")).await;
    }
    let cipher = FieldCipher::from_config(SECRET).expect("key");
    let (trigger_id, trigger_uuid) = quay::trigger(
        &world.pool,
        &quay::TriggerRequest {
            namespace: "acme".into(),
            repository: "web".into(),
            service: "custom-git".into(),
            config: serde_json::json!({
                "build_source": git_url, "dockerfile_path": "/Dockerfile", "context": "/",
            }),
            secure_private_key: Some(cipher.encrypt(&private_key).expect("short")),
        },
    )
    .await;
    let metadata = serde_json::json!({
        "commit": sha, "git_url": git_url, "ref": "refs/heads/main", "default_branch": "main",
        "commit_info": {"message": "context", "date": "2026-11-30T12:00:00Z",
                        "author": {"username": "t"}},
    });
    let (name, code) = TOKEN.split_at(11);
    let request = quay::BuildRequest {
        namespace: "acme".into(),
        repository: "web".into(),
        job_config: serde_json::json!({
            "docker_tags": ["main", "latest"], "registry": world.front.addr,
            "build_subdir": "/Dockerfile", "context": "/", "trigger_metadata": metadata,
            "is_manual": false, "manual_user": null, "archive_url": null,
        }),
        resource_key: None,
        display_name: sha[..7].to_owned(),
        trigger_id: Some(trigger_id),
        token: Some((name.into(), code.into())),
        ..quay::BuildRequest::default()
    };
    let build =
        quay::start_build(&world.pool, &request, |c| cipher.encrypt(c).expect("short")).await;

    let dir = tempfile::tempdir().expect("dir");
    let serve = world.serve(dir.path()).await;
    let log = assert_completes(&world, &build, &serve).await;
    let steps = messages(&log, "command");
    assert_eq!(steps.len(), 3, "{log:#?}");
    assert!(steps[0].starts_with("Step 1/3 : FROM scratch"), "{steps:?}");
    assert!(steps[2].starts_with("Step 3/3 : RUN"), "{steps:?}");
    assert!(
        log.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.trim_end() == marker)),
        "the commit's Dockerfile ran: {log:#?}"
    );
    for tag in ["main", "latest"] {
        let history = world.registry.image_config("acme/web", tag).await["history"].to_string();
        assert!(history.contains(&marker), "{tag}: {history}");
    }

    let queued = quay::queued_notifications(&world.pool).await;
    let names: Vec<&str> = queued.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("notification/acme/web/build_start/build/{}/", build.uuid),
            format!("notification/acme/web/build_success/build/{}/", build.uuid),
        ],
        "no build_failure"
    );
    let data = &queued[1].1["event_data"];
    assert_eq!(data["build_id"], build.uuid.as_str());
    assert_eq!(data["build_name"], &sha[..7]);
    assert_eq!(data["docker_tags"], serde_json::json!(["main", "latest"]));
    assert_eq!(data["trigger_id"], trigger_uuid.as_str());
    assert_eq!(data["trigger_kind"], "custom-git");
    assert_eq!(data["trigger_metadata"], metadata);

    let counters: (i32, i32, bool) = sqlx::query_as(
        "SELECT successive_failure_count, successive_internal_error_count, enabled \
         FROM repositorybuildtrigger WHERE id = $1",
    )
    .bind(trigger_id)
    .fetch_one(&world.pool)
    .await
    .expect("trigger");
    assert_eq!(counters, (0, 0, true));

    // The decrypted key is in neither the manager's log nor the build log.
    let texts = [serve.log_text(), serde_json::Value::Array(log).to_string()];
    for line in private_key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(
            texts.iter().all(|t| !t.contains(line)),
            "the deploy key is shown"
        );
    }
}
