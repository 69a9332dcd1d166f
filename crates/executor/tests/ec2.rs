//! The ec2 executor through the real AWS SDK against moto's EC2 (`moto_server`, one per
//! test on 127.0.0.1), with a proxy in front of it for the answers moto cannot give.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::operation::describe_instance_attribute::DescribeInstanceAttributeOutput;
use aws_sdk_ec2::types::{Instance, InstanceAttributeName, ResourceType, Tag, TagSpecification};
use base64::Engine;
use buildman_core::BuildId;
use buildman_core::config::{Ec2Config, ExecutorConfig, ExecutorKind, ExecutorSpecific};
use buildman_executor::ec2::{Ec2Executor, Ec2Settings, MANAGER_TAG, NAME, client};
use buildman_executor::{Executor, ExecutorError, StartRequest};
use buildman_testkit::moto::{Moto, PROXY_REQUEST_ID, QueryProxy};

const REGION: &str = "us-east-1";
const AMI: &str = "ami-0123456789abcdef0";
/// The address workers dial, which names the deployment in the manager tag.
const SERVER: &str = "buildman.test:55443";
/// Longer than 36 characters, so the RegistrationToken tag shows the cut.
const TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJidWlsZCJ9.c2lnbmF0dXJl";
/// How long anything the tests wait for may take.
const WITHIN: Duration = Duration::from_secs(30);

fn ec2_config(endpoint: &str) -> Ec2Config {
    Ec2Config {
        ec2_region: REGION.into(),
        coreos_ami: Some(AMI.into()),
        aws_access_key: Some("testing-access-key".into()),
        aws_secret_key: Some("testing-secret-key".into()),
        ec2_endpoint_url: Some(endpoint.into()),
        ..Ec2Config::default()
    }
}

fn executor_config(ec2: Ec2Config) -> ExecutorConfig {
    ExecutorConfig {
        specific: ExecutorSpecific::Ec2(ec2),
        ..ExecutorConfig::with_defaults(ExecutorKind::Ec2)
    }
}

async fn executor(ec2: Ec2Config) -> Ec2Executor {
    let settings = Ec2Settings {
        manager: SERVER.into(),
        failure_poll: Duration::from_millis(200),
    };
    Ec2Executor::connect(&executor_config(ec2), settings)
        .await
        .expect("executor")
}

fn request() -> StartRequest {
    StartRequest {
        build_id: BuildId::new(),
        token: TOKEN.into(),
        server: SERVER.into(),
        registry_hostname: "registry.test".into(),
        insecure: false,
        max_lifetime_s: 5400,
        manager_id: "manager-a".into(),
    }
}

/// moto's EC2 and a client that inspects it.
struct Cloud {
    moto: Moto,
    sdk: Client,
}

impl Cloud {
    async fn start() -> Cloud {
        let moto = Moto::start().await;
        let sdk = client(&ec2_config(&moto.endpoint())).await;
        Cloud { moto, sdk }
    }

    /// An ec2 executor's keys with moto as its endpoint.
    fn config(&self) -> Ec2Config {
        ec2_config(&self.moto.endpoint())
    }
}

async fn attribute(
    sdk: &Client,
    id: &str,
    name: InstanceAttributeName,
) -> DescribeInstanceAttributeOutput {
    (sdk.describe_instance_attribute()
        .instance_id(id)
        .attribute(name))
    .send()
    .await
    .expect("DescribeInstanceAttribute")
}

async fn instance(sdk: &Client, id: &str) -> Instance {
    let answer = sdk.describe_instances().instance_ids(id).send().await;
    let answer = answer.expect("DescribeInstances");
    let reservation = answer.reservations().first().expect("a reservation");
    reservation
        .instances()
        .first()
        .expect("the instance")
        .clone()
}

fn tag<'a>(instance: &'a Instance, key: &str) -> Option<&'a str> {
    (instance.tags().iter())
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

fn state(instance: &Instance) -> &str {
    (instance.state().and_then(|s| s.name())).map_or("", |s| s.as_str())
}

/// A VPC with a subnet and a security group; returns (subnet, group).
async fn network(sdk: &Client) -> (String, String) {
    let vpc = sdk.create_vpc().cidr_block("10.0.0.0/16").send().await;
    let vpc = vpc
        .expect("CreateVpc")
        .vpc
        .expect("vpc")
        .vpc_id
        .expect("id");
    let subnet = (sdk.create_subnet().vpc_id(&vpc).cidr_block("10.0.1.0/24"))
        .send()
        .await
        .expect("CreateSubnet");
    let subnet = subnet.subnet.expect("subnet").subnet_id.expect("id");
    let group = (sdk.create_security_group())
        .group_name("builders")
        .description("builders")
        .vpc_id(&vpc)
        .send()
        .await
        .expect("CreateSecurityGroup");
    (subnet, group.group_id.expect("id"))
}

/// Starts an instance outside the executor, tagged `tags`.
async fn foreign_instance(sdk: &Client, tags: &[(&str, &str)]) -> String {
    let mut run = (sdk.run_instances())
        .image_id(AMI)
        .min_count(1)
        .max_count(1);
    if !tags.is_empty() {
        let tags = (tags.iter())
            .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
            .collect();
        run = run.tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .set_tags(Some(tags))
                .build(),
        );
    }
    let answer = run.send().await.expect("RunInstances");
    answer.instances()[0].instance_id().expect("id").to_owned()
}

#[tokio::test]
async fn run_instances_as_quay_does_with_the_manager_tag() {
    let cloud = Cloud::start().await;
    let sdk = &cloud.sdk;
    let (subnet, group) = network(sdk).await;
    let mut ec2 = cloud.config();
    ec2.ec2_instance_type = Some("c5.xlarge".into());
    ec2.ec2_key_name = Some("builder-key".into());
    ec2.ec2_vpc_subnet_id = Some(subnet.clone());
    ec2.ec2_security_group_ids = vec![group.clone()];
    ec2.block_device_size = 58;
    let executor = executor(ec2).await;
    let request = request();
    let id = executor.start(&request).await.expect("started");

    let i = instance(sdk, &id).await;
    assert_eq!(i.image_id(), Some(AMI));
    assert_eq!(i.instance_type().map(|t| t.as_str()), Some("c5.xlarge"));
    assert_eq!(i.key_name(), Some("builder-key"));
    assert_eq!(tag(&i, "Name"), Some(NAME));
    assert_eq!(tag(&i, "RegistrationToken"), Some(&TOKEN[..36]));
    let build = request.build_id.to_string();
    assert_eq!(tag(&i, "BuildUUID"), Some(build.as_str()));
    assert_eq!(tag(&i, MANAGER_TAG), Some(SERVER));

    let [nic] = i.network_interfaces() else {
        panic!("one interface: {:?}", i.network_interfaces());
    };
    assert_eq!(nic.subnet_id(), Some(subnet.as_str()));
    let groups: Vec<_> = nic.groups().iter().filter_map(|g| g.group_id()).collect();
    assert_eq!(groups, [group.as_str()]);
    assert!(
        nic.association().and_then(|a| a.public_ip()).is_some(),
        "a public address: {nic:?}"
    );

    let [disk] = i.block_device_mappings() else {
        panic!("one block device: {:?}", i.block_device_mappings());
    };
    assert_eq!(disk.device_name(), Some("/dev/xvda"));
    let ebs = disk.ebs().expect("an EBS volume");
    assert_eq!(ebs.delete_on_termination(), Some(true));
    let volumes = (sdk.describe_volumes())
        .volume_ids(ebs.volume_id().expect("volume id"))
        .send()
        .await
        .expect("DescribeVolumes");
    let volume = &volumes.volumes()[0];
    assert_eq!(volume.size(), Some(58));
    assert_eq!(volume.volume_type().map(|t| t.as_str()), Some("gp2"));

    let shutdown = attribute(
        sdk,
        &id,
        InstanceAttributeName::InstanceInitiatedShutdownBehavior,
    )
    .await;
    let shutdown = shutdown.instance_initiated_shutdown_behavior();
    assert_eq!(shutdown.and_then(|v| v.value()), Some("terminate"));

    let all = (sdk.describe_instances())
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:BuildUUID")
                .values(&build)
                .build(),
        )
        .send()
        .await
        .expect("DescribeInstances");
    let count: usize = all.reservations().iter().map(|r| r.instances().len()).sum();
    assert_eq!(count, 1, "MinCount = MaxCount = 1");
}

#[tokio::test]
async fn the_user_data_is_ignition_that_runs_the_worker_and_powers_off() {
    let cloud = Cloud::start().await;
    let (sdk, executor) = (&cloud.sdk, executor(cloud.config()).await);
    let request = request();
    let id = executor.start(&request).await.expect("started");

    let user_data = attribute(sdk, &id, InstanceAttributeName::UserData).await;
    let encoded = user_data
        .user_data()
        .and_then(|v| v.value())
        .expect("user data");
    let document = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64 user data");
    let document = String::from_utf8(document).expect("UTF-8");
    support::validate(&document).unwrap_or_else(|e| panic!("not Ignition 3: {e}\n{document}"));

    let json: serde_json::Value = serde_json::from_str(&document).expect("JSON");
    let files = json["storage"]["files"].as_array().expect("files");
    let env = (files.iter())
        .find(|f| f["path"] == "/etc/buildman/worker.env")
        .expect("the worker's environment file");
    assert_eq!(env["mode"], 0o600);
    let env = support::data_url_text(env["contents"]["source"].as_str().expect("source"));
    assert!(env.contains(&format!("TOKEN=\"{TOKEN}\"\n")), "{env}");
    assert!(env.contains(&format!("SERVER=\"{SERVER}\"\n")), "{env}");
    assert!(
        env.contains(&format!("BUILD_UUID=\"{}\"\n", request.build_id)),
        "{env}"
    );
    let units = json["systemd"]["units"].as_array().expect("units");
    let unit = |name: &str| {
        let unit = units.iter().find(|u| u["name"] == name);
        let unit = unit.unwrap_or_else(|| panic!("no unit {name}: {units:?}"));
        unit["contents"].as_str().expect("contents").to_owned()
    };
    let worker = unit("buildman-worker.service");
    assert!(
        worker.contains("--env-file /etc/buildman/worker.env"),
        "{worker}"
    );
    assert!(
        worker.contains("quay.io/projectquay/quay-builder:latest"),
        "{worker}"
    );
    assert!(!worker.contains(TOKEN), "the token stays out of the unit");
    let timer = unit("buildman-poweroff.timer");
    assert!(timer.contains("OnBootSec=5400s"), "MAX_LIFETIME_S: {timer}");
}

#[tokio::test]
async fn running_counts_pending_and_running_instances_with_the_name_tag() {
    let cloud = Cloud::start().await;
    let sdk = &cloud.sdk;
    let proxy = QueryProxy::start(&cloud.moto.endpoint()).await;
    let executor = executor(ec2_config(&proxy.endpoint())).await;
    assert_eq!(executor.running().await.expect("running"), 0);

    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(executor.start(&request()).await.expect("started"));
    }
    foreign_instance(sdk, &[]).await;
    sdk.stop_instances()
        .instance_ids(&ids[2])
        .send()
        .await
        .expect("stop");
    (sdk.terminate_instances().instance_ids(&ids[3]))
        .send()
        .await
        .expect("terminate");
    assert_eq!(state(&instance(sdk, &ids[2]).await), "stopped");
    assert_eq!(state(&instance(sdk, &ids[3]).await), "terminated");

    // moto never shows `pending`: the proxy turns the first running instance of each
    // answer into a pending one.
    proxy.rewrite(
        "DescribeInstances",
        "<name>running</name>",
        "<name>pending</name>",
    );
    assert_eq!(
        executor.running().await.expect("running"),
        2,
        "one pending and one running; not the stopped, the terminated or the untagged one"
    );
    // The count's own call: the one that filters on the name tag (the executor's watch
    // of its instances asks DescribeInstances too, by instance id).
    let asked = proxy.requests("DescribeInstances");
    let asked = (asked.iter().rev())
        .find(|r| r.contains("tag%3AName"))
        .expect("a DescribeInstances call by the name tag");
    for part in ["instance-state-name", "=pending", "=running"] {
        assert!(asked.contains(part), "{part} missing from {asked}");
    }
}

#[tokio::test]
async fn stop_terminates_and_an_instance_already_gone_counts_as_stopped() {
    let cloud = Cloud::start().await;
    let (sdk, executor) = (&cloud.sdk, executor(cloud.config()).await);
    let id = executor.start(&request()).await.expect("started");
    assert_eq!(state(&instance(sdk, &id).await), "running");

    executor.stop(&id).await.expect("stop");
    assert!(
        matches!(
            state(&instance(sdk, &id).await),
            "shutting-down" | "terminated"
        ),
        "terminated"
    );
    executor
        .stop(&id)
        .await
        .expect("stopping a terminated instance");
    executor
        .stop("i-0123456789abcdef0")
        .await
        .expect("InvalidInstanceID.NotFound is success");
}

#[tokio::test]
async fn owned_lists_this_deployments_live_instances() {
    let cloud = Cloud::start().await;
    let (sdk, executor) = (&cloud.sdk, executor(cloud.config()).await);
    let before = std::time::SystemTime::now() - Duration::from_secs(5);
    let request = request();
    let mine = executor.start(&request).await.expect("started");
    let ended = executor.start(&self::request()).await.expect("started");
    executor.stop(&ended).await.expect("stop");
    foreign_instance(sdk, &[("Name", NAME), (MANAGER_TAG, "other.test:55443")]).await;
    foreign_instance(sdk, &[("Name", NAME)]).await;

    let owned = executor.owned().await.expect("owned");
    let [worker] = owned.as_slice() else {
        panic!("only the live instance of this deployment: {owned:?}");
    };
    assert_eq!(worker.execution_id, mine);
    assert_eq!(worker.build_id, Some(request.build_id));
    assert!(worker.started_at >= before, "{:?}", worker.started_at);
}

#[tokio::test]
async fn an_instance_that_ends_before_registering_is_reported_with_its_reason() {
    let cloud = Cloud::start().await;
    let (sdk, executor) = (&cloud.sdk, executor(cloud.config()).await);
    let mut failures = executor
        .failures()
        .expect("the ec2 executor reports failures");
    let request = request();
    let id = executor.start(&request).await.expect("started");
    let kept = executor.start(&self::request()).await.expect("started");

    (sdk.terminate_instances().instance_ids(&id))
        .send()
        .await
        .expect("terminate");
    let failure = tokio::time::timeout(WITHIN, failures.recv())
        .await
        .expect("reported in time")
        .expect("a failure");
    assert_eq!(failure.execution_id, id);
    assert_eq!(failure.build_id, request.build_id);
    assert!(
        failure.reason.contains(&format!("{id} is terminated"))
            && failure.reason.contains("User initiated shutdown"),
        "{}",
        failure.reason
    );
    assert_eq!(
        state(&instance(sdk, &kept).await),
        "running",
        "a running instance is not reported"
    );

    // Reported once: the next report is of the next instance that ends.
    (sdk.terminate_instances().instance_ids(&kept))
        .send()
        .await
        .expect("terminate");
    let next = tokio::time::timeout(WITHIN, failures.recv())
        .await
        .expect("reported in time")
        .expect("a failure");
    assert_eq!(next.execution_id, kept);
}

/// The error of a start that must fail.
async fn start_error(executor: &Ec2Executor) -> ExecutorError {
    match executor.start(&request()).await {
        Ok(id) => panic!("started {id} although EC2 failed"),
        Err(e) => e,
    }
}

/// What the executor logs while it lives (a test's runtime runs on one thread).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn start() -> (Captured, tracing::subscriber::DefaultGuard) {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(captured.clone())
            .with_ansi(false)
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log")).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test]
async fn errors_are_retried_or_not_by_kind_and_name_their_code_and_request_id() {
    let (log, _guard) = Captured::start();
    let moto = Moto::start().await;
    let proxy = QueryProxy::start(&moto.endpoint()).await;
    let executor = executor(ec2_config(&proxy.endpoint())).await;
    let calls = || proxy.requests("RunInstances").len();

    // Throttling: retried with the SDK's backoff, then the start succeeds.
    proxy.fail("RunInstances", 503, "RequestLimitExceeded", 2);
    executor
        .start(&request())
        .await
        .expect("started after throttling");
    assert_eq!(
        calls(),
        3,
        "two throttled attempts, then one that went through"
    );

    // Capacity: not retried, so the next executor takes the build at once.
    proxy.fail("RunInstances", 500, "InsufficientInstanceCapacity", 5);
    let error = start_error(&executor).await.to_string();
    assert_eq!(calls(), 4, "capacity is not retried");
    for part in [
        "InsufficientInstanceCapacity",
        PROXY_REQUEST_ID,
        "EC2_INSTANCE_TYPE",
    ] {
        assert!(error.contains(part), "{part} missing from {error}");
    }
    proxy.fail("RunInstances", 400, "InstanceLimitExceeded", 5);
    let error = start_error(&executor).await.to_string();
    assert!(error.contains("InstanceLimitExceeded"), "{error}");
    assert_eq!(calls(), 5);

    // Auth: not retried; says what to check.
    proxy.fail("RunInstances", 401, "AuthFailure", 5);
    let error = start_error(&executor).await.to_string();
    assert!(
        error.contains("AuthFailure") && error.contains("AWS_ACCESS_KEY"),
        "{error}"
    );
    assert!(
        !error.contains("testing-secret-key"),
        "no key in errors: {error}"
    );
    assert_eq!(calls(), 6);

    // A server error: retried (3 attempts), then reported.
    proxy.fail("RunInstances", 500, "InternalError", 5);
    let error = start_error(&executor).await;
    assert!(matches!(error, ExecutorError::Failed(_)), "{error:?}");
    let error = error.to_string();
    assert!(
        error.contains("InternalError") && error.contains(PROXY_REQUEST_ID),
        "{error}"
    );
    assert_eq!(calls(), 9, "three attempts");

    let log = log.text();
    for part in [
        r#"aws_code="InsufficientInstanceCapacity""#,
        r#"aws_code="AuthFailure""#,
        &format!(r#"request_id="{PROXY_REQUEST_ID}""#),
    ] {
        assert!(log.contains(part), "{part} missing from the log:\n{log}");
    }
    assert!(!log.contains("testing-secret-key"), "no key in the log");
}

#[tokio::test]
async fn an_endpoint_refusing_connections_is_unreachable() {
    let closed = format!("http://127.0.0.1:{}", buildman_testkit::free_port());
    let executor = executor(ec2_config(&closed)).await;
    let error = start_error(&executor).await;
    assert!(matches!(error, ExecutorError::Unreachable(_)), "{error:?}");
    assert!(error.to_string().contains("EC2_ENDPOINT_URL"), "{error}");
}

/// Serves a Fedora CoreOS stream file listing `ami` for REGION; counts the requests.
async fn stream_server(ami: &'static str) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let stream = serde_json::json!({
        "stream": "stable",
        "architectures": {"x86_64": {"images": {"aws": {"regions": {
            REGION: {"release": "42.20250101.3.0", "image": ami}
        }}}}}
    });
    let app = axum::Router::new().route(
        "/streams/stable.json",
        axum::routing::get(move || {
            count.fetch_add(1, Ordering::SeqCst);
            let stream = stream.clone();
            async move { axum::Json(stream) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/streams", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, served)
}

#[tokio::test]
async fn without_coreos_ami_the_stream_is_read_once_and_its_failure_names_the_fix() {
    buildman_testkit::tls_provider();
    let cloud = Cloud::start().await;
    let sdk = &cloud.sdk;
    let (url, served) = stream_server("ami-0fedc0de5").await;
    let mut ec2 = cloud.config();
    ec2.coreos_ami = None;
    ec2.coreos_stream_url = Some(url);
    let executor = executor(ec2.clone()).await;
    let first = executor.start(&request()).await.expect("started");
    let second = executor.start(&request()).await.expect("started");
    for id in [first, second] {
        assert_eq!(instance(sdk, &id).await.image_id(), Some("ami-0fedc0de5"));
    }
    assert_eq!(
        served.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "cached"
    );

    ec2.ec2_region = "eu-north-1".into();
    let elsewhere = self::executor(ec2.clone()).await;
    let error = start_error(&elsewhere).await.to_string();
    assert!(
        error.contains("no x86_64 image") && error.contains("set COREOS_AMI"),
        "{error}"
    );

    ec2.coreos_stream_url = Some(format!(
        "http://127.0.0.1:{}/streams",
        buildman_testkit::free_port()
    ));
    let offline = self::executor(ec2).await;
    let error = start_error(&offline).await.to_string();
    assert!(error.contains("set COREOS_AMI"), "{error}");
}
