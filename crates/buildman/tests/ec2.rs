//! A manager with an ec2 executor on moto's EC2 (`moto_server` on 127.0.0.1, through the
//! real AWS SDK) before the local executor running the scripted test worker. moto starts
//! instances that never run anything, so no worker registers from them: the build must get
//! to the local executor, and every instance must end terminated.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{Filter, Instance, ResourceType, Tag, TagSpecification};
use buildman_core::config::Ec2Config;
use buildman_executor::ec2::{MANAGER_TAG, NAME, client};
use buildman_testkit::moto::{Moto, QueryProxy};
use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);
const AMI: &str = "ami-0123456789abcdef0";

/// moto's EC2 and a client that inspects it.
struct Cloud {
    moto: Moto,
    sdk: Client,
}

impl Cloud {
    async fn start() -> Cloud {
        let moto = Moto::start().await;
        let sdk = client(&Ec2Config {
            ec2_region: "us-east-1".into(),
            aws_access_key: Some("testing".into()),
            aws_secret_key: Some("testing".into()),
            ec2_endpoint_url: Some(moto.endpoint()),
            ..Ec2Config::default()
        })
        .await;
        Cloud { moto, sdk }
    }

    /// The instances tagged with `build`.
    async fn instances_of(&self, build: &str) -> Vec<Instance> {
        let filter = Filter::builder()
            .name("tag:BuildUUID")
            .values(build)
            .build();
        let answer = self.sdk.describe_instances().filters(filter).send().await;
        let answer = answer.expect("DescribeInstances");
        (answer.reservations().iter())
            .flat_map(|r| r.instances().iter().cloned())
            .collect()
    }

    /// The one instance of `build`, once it is in one of `states`.
    async fn wait_instance(&self, build: &str, states: &[&str]) -> Instance {
        let deadline = Instant::now() + T;
        loop {
            let found = self.instances_of(build).await;
            if let [instance] = found.as_slice()
                && states.contains(&state(instance))
            {
                return instance.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no instance of {build} in {states:?}: {found:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn state(instance: &Instance) -> &str {
    (instance.state().and_then(|s| s.name())).map_or("", |s| s.as_str())
}

/// An ec2 executor entry on `endpoint` with more keys (`    KEY: value\n` lines).
fn ec2(endpoint: &str, extra: &str) -> String {
    format!(
        "  - EXECUTOR: ec2\n    NAME: ec2\n    EC2_REGION: us-east-1\n    COREOS_AMI: {AMI}\n    \
         AWS_ACCESS_KEY: testing\n    AWS_SECRET_KEY: testing\n    EC2_ENDPOINT_URL: {endpoint}\n{extra}"
    )
}

/// A manager running one worker at a time: the ec2 executor on `endpoint` (with
/// `ec2_keys`), then the local one; `top` are top-level keys.
async fn manager(endpoint: &str, ec2_keys: &str, top: &str) -> TestServer {
    let config = |d: &std::path::Path| {
        let executors = [ec2(endpoint, ec2_keys), popen(d, "local", "")].concat();
        format!(
            "{top}{}",
            config_yaml("ALLOWED_WORKER_COUNT: 1", &executors)
        )
    };
    TestServer::start(config, "happy", fast_timings()).await
}

/// The executor whose test worker ran `build`.
fn ran_on(s: &TestServer, build: &str) -> String {
    let started = s
        .reports()
        .into_iter()
        .find(|r| r["event"] == "started" && r["build_uuid"] == build);
    let started = started.unwrap_or_else(|| panic!("no worker ran {build}"));
    let argv0 = started["argv0"].as_str().unwrap_or_default();
    argv0
        .rsplit("worker-")
        .next()
        .unwrap_or_default()
        .to_owned()
}

async fn submit(s: &TestServer, repo: &str) -> String {
    s.submit(repo, &[]).await["id"]
        .as_str()
        .expect("build id")
        .to_owned()
}

fn messages(logs: &[Value]) -> Vec<String> {
    (logs.iter())
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect()
}

/// Quay's pattern: the first executor takes only builds with 2 retries left, so the first
/// attempt goes to EC2; its instance never registers, SETUP_TIME passes, the instance is
/// terminated, and the next attempt runs on the local executor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_never_registers_gives_way_to_the_local_executor_on_the_next_attempt() {
    let cloud = Cloud::start().await;
    let s = manager(
        &cloud.moto.endpoint(),
        "    SETUP_TIME: 2\n    MINIMUM_RETRY_THRESHOLD: 2\n",
        "",
    )
    .await;
    let id = submit(&s, "demo/ec2").await;
    let instance = cloud.wait_instance(&id, &["running"]).await;
    s.wait_phase(&id, &["complete"], T).await;
    assert_eq!(ran_on(&s, &id), "local");
    let ended = cloud
        .wait_instance(&id, &["shutting-down", "terminated"])
        .await;
    assert_eq!(ended.instance_id(), instance.instance_id());
    s.stop().await;
}

/// An instance that ends before its worker registers (here terminated by the test, as a
/// spot interruption or a failed boot would) ends the attempt on EC2 at once: the reason is
/// in the build log and the local executor runs the build in the same attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_ending_before_registration_falls_back_within_the_attempt() {
    let cloud = Cloud::start().await;
    let s = manager(&cloud.moto.endpoint(), "    SETUP_TIME: 600\n", "").await;
    let id = submit(&s, "demo/ec2").await;
    let instance = cloud.wait_instance(&id, &["running"]).await;
    let instance_id = instance.instance_id().expect("id");
    (cloud.sdk.terminate_instances().instance_ids(instance_id))
        .send()
        .await
        .expect("terminate");
    s.wait_phase(&id, &["complete"], T).await;
    assert_eq!(ran_on(&s, &id), "local");
    let log = messages(&s.logs("demo/ec2", &id).await);
    let expected = format!(
        "the worker on executor ec2 failed before registering: EC2 instance {instance_id} is terminated: \
         Client.UserInitiatedShutdown: User initiated shutdown"
    );
    assert!(log.contains(&expected), "{expected:?} not in {log:#?}");
    // Done in one attempt: the item leaves the queue.
    s.wait_queue(&id, Option::is_none, Duration::from_secs(30))
        .await;
    s.stop().await;
}

/// RunInstances failing (connection refused, a server error, no capacity) sends each build
/// to the local executor, and after CIRCUIT_BREAKER_THRESHOLD failures in a row EC2 is not
/// asked any more for the cool-down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_errors_fall_back_to_the_next_executor_and_open_the_breaker() {
    let cloud = Cloud::start().await;
    let proxy = QueryProxy::start(&cloud.moto.endpoint()).await;
    let refused = format!("http://127.0.0.1:{}", buildman_testkit::free_port());
    let proxied = proxy.endpoint();
    // (what EC2 does, its endpoint, RunInstances calls a failed start makes: the SDK
    // retries server errors, not a refusal for capacity)
    let cases = [
        ("refuses connections", refused.as_str(), 0),
        ("answers 500", proxied.as_str(), 3),
        ("has no capacity", proxied.as_str(), 1),
    ];
    for (what, endpoint, calls_per_start) in cases {
        match what {
            "answers 500" => proxy.fail("RunInstances", 500, "InternalError", 100),
            "has no capacity" => {
                proxy.fail("RunInstances", 500, "InsufficientInstanceCapacity", 100)
            }
            _ => {}
        }
        let before = proxy.requests("RunInstances").len();
        let s = manager(endpoint, "    CIRCUIT_BREAKER_THRESHOLD: 2\n", "").await;
        for repo in ["demo/a", "demo/b", "demo/c"] {
            let id = submit(&s, repo).await;
            s.wait_phase(&id, &["complete"], T).await;
            assert_eq!(ran_on(&s, &id), "local", "EC2 {what}");
            assert!(cloud.instances_of(&id).await.is_empty(), "EC2 {what}");
        }
        let calls = proxy.requests("RunInstances").len() - before;
        assert_eq!(
            calls,
            2 * calls_per_start,
            "EC2 {what}: asked for the first two builds only"
        );
        s.stop().await;
    }
}

/// An instance of this deployment whose build is final (a manager crashed before it stopped
/// it) is terminated by the orphan reaper; one of another deployment is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orphan_reaper_terminates_an_instance_whose_build_is_final() {
    let cloud = Cloud::start().await;
    let s = manager(
        &cloud.moto.endpoint(),
        // EC2 takes no build (STAGED_ROLLOUT 0): the local executor runs them.
        "    SETUP_TIME: 1\n    STAGED_ROLLOUT: 0\n",
        "BUILDMAN_ORPHAN_REAP_INTERVAL: 1\n",
    )
    .await;
    let id = submit(&s, "demo/done").await;
    s.wait_phase(&id, &["complete"], T).await;
    let deployment = s.grpc.trim_start_matches("http://");
    let orphan = tagged_instance(&cloud.sdk, &id, deployment).await;
    let foreign = tagged_instance(&cloud.sdk, &id, "other.example.com:55443").await;
    let deadline = Instant::now() + T;
    loop {
        let found = cloud.instances_of(&id).await;
        let of = |wanted: &str| {
            let found = found.iter().find(|i| i.instance_id() == Some(wanted));
            found.map(state).unwrap_or_default().to_owned()
        };
        if matches!(of(&orphan).as_str(), "shutting-down" | "terminated") {
            assert_eq!(of(&foreign), "running", "another deployment's instance");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orphan {orphan} still {}",
            of(&orphan)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.stop().await;
}

/// Starts an instance as a manager of `deployment` would have for `build`.
async fn tagged_instance(sdk: &Client, build: &str, deployment: &str) -> String {
    let tags = [
        ("Name", NAME),
        ("BuildUUID", build),
        (MANAGER_TAG, deployment),
    ];
    let tags = (tags.into_iter())
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    let spec = (TagSpecification::builder())
        .resource_type(ResourceType::Instance)
        .set_tags(Some(tags))
        .build();
    let run = (sdk.run_instances())
        .image_id(AMI)
        .min_count(1)
        .max_count(1);
    let answer = run
        .tag_specifications(spec)
        .send()
        .await
        .expect("RunInstances");
    answer.instances()[0].instance_id().expect("id").to_owned()
}
