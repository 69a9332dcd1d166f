//! The suite on a real `redis-server` (Debian package `redis-server`), one per test on a free
//! port, without persistence, killed when the test ends (`buildman_testkit::redis`), in real
//! time with short TTLs; and what only Redis has: several managers, Quay's layout and
//! events, missed notifications, a held-back subscription, outages.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use buildman_orchestrator::redis::{RedisOrchestrator, RedisOrchestratorConfig};
use buildman_orchestrator::{KeyChange, KeyEvent, Orchestrator, OrchestratorError, WATCH_CAPACITY};
use buildman_testkit::free_port;
use buildman_testkit::redis::RedisServer;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use tokio::process::Command;

use crate::suite::{
    ALL, Backend, change, created_then_expired, drain, expiries, next, orchestrator_suite,
};

const PREFIX: &str = "buildman/production/";
const UUID: &str = "0b7d3a1e-6f0c-4c57-9a51-3c2d2e9f4b10";
const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);
/// Long enough that only keyspace notifications (or accesses) can deliver an expiry.
const NO_SWEEP: Duration = Duration::from_secs(3600);

/// The orchestrator's view of a test server (`buildman_testkit::redis`).
trait OrchestratorServer {
    /// A config for this server below [`PREFIX`], swept every second.
    fn config(&self) -> RedisOrchestratorConfig;
    /// An orchestrator with [`OrchestratorServer::config`].
    async fn orchestrator(&self) -> RedisOrchestrator;
    /// An orchestrator with `config`.
    async fn orchestrator_with(&self, config: RedisOrchestratorConfig) -> RedisOrchestrator;
    /// A plain connection, to look at what the orchestrator wrote.
    async fn raw(&self) -> MultiplexedConnection;
}

impl OrchestratorServer for RedisServer {
    fn config(&self) -> RedisOrchestratorConfig {
        let mut config = RedisOrchestratorConfig::new("127.0.0.1", self.port(), PREFIX);
        config.sweep_interval = S;
        config
    }

    async fn orchestrator(&self) -> RedisOrchestrator {
        self.orchestrator_with(self.config()).await
    }

    async fn orchestrator_with(&self, config: RedisOrchestratorConfig) -> RedisOrchestrator {
        RedisOrchestrator::connect(config).await.expect("connect")
    }

    async fn raw(&self) -> MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("redis URL");
        client
            .get_multiplexed_async_connection()
            .await
            .expect("raw connection")
    }
}

/// The value of `key` and its TTL in ms (-1: none, -2: no such key), read with `raw`.
async fn stored(raw: &mut MultiplexedConnection, key: &str) -> (Option<String>, i64) {
    let value = raw.get(key).await.unwrap();
    (value, raw.pttl(key).await.unwrap())
}

/// The deadline of trait key `key` in the deadline set.
async fn deadline(raw: &mut MultiplexedConnection, key: &str) -> Option<f64> {
    raw.zscore(format!("{PREFIX}deadlines"), key).await.unwrap()
}

/// The server's `notify-keyspace-events`.
async fn keyspace_flags(raw: &mut MultiplexedConnection) -> String {
    let reply: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(raw)
        .await
        .unwrap();
    reply[1].clone()
}

/// A server of the test's own; each handle on it is another manager, with the sweep off so
/// that expiries come from keyspace notifications (or accesses).
pub struct Redis(RedisServer);

#[async_trait]
impl Backend for Redis {
    type Orchestrator = RedisOrchestrator;
    const UNIT: Duration = Duration::from_millis(500);
    const LATE: Duration = Duration::from_secs(2);
    const MARGIN: Duration = Duration::from_millis(200);
    const WAIT: Duration = Duration::from_secs(5);
    const SETTLE: Duration = Duration::from_millis(300);

    async fn start() -> Self {
        Redis(RedisServer::start().await)
    }

    async fn orchestrator(&self) -> RedisOrchestrator {
        let mut config = self.0.config();
        config.sweep_interval = NO_SWEEP;
        self.0.orchestrator_with(config).await
    }

    /// Neither the value, its shadow nor an expired copy.
    async fn assert_nothing_left(&self, key: &str) {
        let mut raw = self.0.raw().await;
        for suffix in ["", "/expiring", "/expired"] {
            let key = format!("{PREFIX}{key}{suffix}");
            assert!(!raw.exists::<_, bool>(&key).await.unwrap(), "{key} left");
        }
    }

    /// No TTL on the value, no shadow, no member in the deadline set, nothing to sweep.
    async fn assert_no_deadline(&self, orch: &RedisOrchestrator, key: &str) {
        assert_eq!(orch.sweep().await.unwrap(), 0);
        let mut raw = self.0.raw().await;
        let real = format!("{PREFIX}{key}");
        assert_eq!(stored(&mut raw, &real).await.1, -1);
        assert!(
            !raw.exists::<_, bool>(format!("{real}/expiring"))
                .await
                .unwrap()
        );
        assert_eq!(deadline(&mut raw, key).await, None);
    }

    /// Someone else's list.
    async fn plant_foreign_key(&self, key: &str) {
        let mut raw = self.0.raw().await;
        raw.rpush::<_, _, ()>(format!("{PREFIX}{key}"), "x")
            .await
            .unwrap();
    }
}

orchestrator_suite!(
    Redis,
    timed: #[tokio::test(flavor = "multi_thread", worker_threads = 2)],
    concurrent: #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
);

/// A watcher nobody reads holds back the event subscription (nothing is lost: Redis buffers
/// what follows), while the sweep still delivers expiries to watchers that have room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_watcher_holds_back_the_subscription_and_the_sweep_still_expires() {
    let server = RedisServer::start().await;
    let mut config = server.config();
    config.sweep_interval = 300 * MS;
    let orch = server.orchestrator_with(config).await;
    let mut stuck = orch.watch("cancel/", &[KeyEvent::Create]);
    let mut expired = orch.watch("building/", &[KeyEvent::Expire]);
    let keys: Vec<String> = (0..WATCH_CAPACITY + 5)
        .map(|i| format!("cancel/{i:05}"))
        .collect();
    for key in &keys {
        orch.create(key, "v", None).await.unwrap();
    }
    let deadline = Instant::now() + 10 * S;
    while stuck.len() < WATCH_CAPACITY {
        assert!(
            Instant::now() < deadline,
            "{} creates delivered",
            stuck.len()
        );
        tokio::time::sleep(50 * MS).await;
    }

    // Its keyspace notification waits behind the held-back creates: the sweep finds it.
    orch.create("building/a", "v", Some(300 * MS))
        .await
        .unwrap();
    assert_eq!(
        next::<Redis>(&mut expired).await,
        change(KeyEvent::Expire, "building/a", "v")
    );
    assert_eq!(stuck.len(), WATCH_CAPACITY);

    for key in &keys {
        assert_eq!(
            next::<Redis>(&mut stuck).await,
            change(KeyEvent::Create, key, "v")
        );
    }
    assert!(drain::<Redis>(&mut stuck).await.is_empty());
    assert!(drain::<Redis>(&mut expired).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn take_racing_expiry_claims_each_key_exactly_once_across_managers() {
    let server = RedisServer::start().await;
    let a = server.orchestrator().await;
    let b = server.orchestrator().await;
    let mut rx_a = a.watch("", ALL);
    let mut rx_b = b.watch("", ALL);
    let keys: Vec<String> = (0..100).map(|i| format!("building/k{i}")).collect();
    let start = Instant::now();
    for (i, key) in keys.iter().enumerate() {
        let ttl = Duration::from_millis(1000 + 10 * i as u64);
        assert!(a.create(key, "v", Some(ttl)).await.unwrap());
    }
    tokio::time::sleep((1500 * MS).saturating_sub(start.elapsed())).await;

    let takers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|orch| {
            let keys = keys.clone();
            tokio::spawn(async move {
                let mut taken = HashSet::new();
                for key in keys {
                    if orch.take(&key).await.unwrap().is_some() {
                        taken.insert(key);
                    }
                }
                taken
            })
        })
        .collect();
    let mut taken_by = Vec::new();
    for task in takers {
        taken_by.push(task.await.unwrap());
    }
    let events_a = drain::<Redis>(&mut rx_a).await;
    let events_b = drain::<Redis>(&mut rx_b).await;

    assert!(taken_by[0].is_disjoint(&taken_by[1]));
    let taken: HashSet<String> = taken_by.iter().flatten().cloned().collect();
    let mut expired = HashSet::new();
    for key in expiries(&events_a).into_iter().chain(expiries(&events_b)) {
        assert!(expired.insert(key.to_owned()), "{key} expired twice");
    }
    assert!(taken.is_disjoint(&expired));
    assert_eq!(taken.len() + expired.len(), keys.len());
    assert!(!taken.is_empty() && !expired.is_empty());
    // Both managers see every delete once, whoever took the key.
    for events in [&events_a, &events_b] {
        let deleted: Vec<&str> = events
            .iter()
            .filter(|c| c.event == KeyEvent::Delete)
            .map(|c| c.key.as_str())
            .collect();
        let unique: HashSet<String> = deleted.iter().map(|k| (*k).to_owned()).collect();
        assert_eq!(deleted.len(), unique.len());
        assert_eq!(unique, taken);
    }
}

#[tokio::test]
async fn list_expires_what_is_due_instead_of_listing_it() {
    let server = RedisServer::start().await;
    let mut config = server.config();
    config.sweep_interval = NO_SWEEP;
    // No notifications and no sweep: only the access itself can notice the deadline.
    config.skip_keyspace_event_setup = true;
    let orch = server.orchestrator_with(config).await;
    let mut rx = orch.watch("", ALL);
    orch.create("a/1", "v", Some(200 * MS)).await.unwrap();
    orch.create("a/2", "w", None).await.unwrap();
    tokio::time::sleep(500 * MS).await;
    assert_eq!(
        orch.list("a/").await.unwrap(),
        vec![("a/2".to_owned(), "w".to_owned())]
    );
    assert_eq!(expiries(&drain::<Redis>(&mut rx).await), ["a/1"]);
    assert!(orch.list("a/").await.unwrap().len() == 1);
}

/// Two managers compete for the same three slots.

#[tokio::test]
async fn a_dead_managers_slots_lapse_after_the_slot_ttl() {
    let server = RedisServer::start().await;
    let mut config = server.config();
    config.slot_ttl = S;
    let dying = server.orchestrator_with(config).await;
    let survivor = server.orchestrator().await;
    assert!(dying.acquire_slot("d1", 2).await.unwrap());
    assert!(dying.acquire_slot("d2", 2).await.unwrap());
    drop(dying);
    assert!(!survivor.acquire_slot("s1", 2).await.unwrap());
    assert_eq!(survivor.slots_taken().await.unwrap(), 2);

    tokio::time::sleep(1200 * MS).await;
    assert_eq!(survivor.slots_taken().await.unwrap(), 0);
    assert!(survivor.acquire_slot("s1", 2).await.unwrap());
    assert_eq!(survivor.slots_taken().await.unwrap(), 1);
}

#[tokio::test]
async fn watchers_see_their_prefix_on_every_manager_and_an_expiry_on_one() {
    let server = RedisServer::start().await;
    let a = server.orchestrator().await;
    let b = server.orchestrator().await;
    let mut building = a.watch("building/", ALL);
    let mut cancel = a.watch("cancel/", ALL);
    let dropped = a.watch("building/", ALL);
    drop(dropped);
    let mut everything_b = b.watch("", ALL);

    a.create("building/a", "1", Some(S)).await.unwrap();
    a.create("cancel/a", "2", None).await.unwrap();
    a.compare_and_set("cancel/a", "2", "3", None).await.unwrap();
    a.take("cancel/a").await.unwrap();
    tokio::time::sleep(2500 * MS).await;

    let building = drain::<Redis>(&mut building).await;
    let cancel = drain::<Redis>(&mut cancel).await;
    let everything_b = drain::<Redis>(&mut everything_b).await;
    assert_eq!(building[0], change(KeyEvent::Create, "building/a", "1"));
    assert_eq!(
        cancel,
        vec![
            change(KeyEvent::Create, "cancel/a", "2"),
            change(KeyEvent::Set, "cancel/a", "3"),
            change(KeyEvent::Delete, "cancel/a", "3"),
        ]
    );
    let b_changes: Vec<KeyChange> = everything_b
        .iter()
        .filter(|c| c.event != KeyEvent::Expire)
        .cloned()
        .collect();
    assert_eq!(
        b_changes,
        vec![
            change(KeyEvent::Create, "building/a", "1"),
            change(KeyEvent::Create, "cancel/a", "2"),
            change(KeyEvent::Set, "cancel/a", "3"),
            change(KeyEvent::Delete, "cancel/a", "3"),
        ]
    );
    // The expiry reached one manager's watcher, not both.
    let mut expired = expiries(&building);
    expired.extend(expiries(&everything_b));
    assert_eq!(expired, ["building/a"]);
    let expiry = building
        .iter()
        .chain(&everything_b)
        .find(|c| c.event == KeyEvent::Expire);
    assert_eq!(expiry.map(|c| c.value.as_str()), Some("1"));
}

#[tokio::test]
async fn an_expiry_notification_reaches_exactly_one_of_three_managers() {
    let server = RedisServer::start().await;
    let mut managers = Vec::new();
    let mut watchers = Vec::new();
    for _ in 0..3 {
        let mut config = server.config();
        config.sweep_interval = NO_SWEEP;
        let orch = server.orchestrator_with(config).await;
        watchers.push(orch.watch("building/", ALL));
        managers.push(orch);
    }
    for i in 0..30 {
        let key = format!("building/{i}");
        managers[i % 3].create(&key, "v", Some(S)).await.unwrap();
    }
    tokio::time::sleep(2500 * MS).await;

    let mut expired: HashMap<String, usize> = HashMap::new();
    for rx in &mut watchers {
        for key in expiries(&drain::<Redis>(rx).await) {
            *expired.entry(key.to_owned()).or_default() += 1;
        }
    }
    assert_eq!(expired.len(), 30, "{expired:?}");
    assert!(expired.values().all(|n| *n == 1), "{expired:?}");
}

#[tokio::test]
async fn events_are_published_on_quays_channel_in_quays_shape() {
    let server = RedisServer::start().await;
    let orch = server.orchestrator().await;
    let client = redis::Client::open(server.url()).expect("client");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub
        .subscribe(format!("{PREFIX}orchestrator_events"))
        .await
        .expect("subscribe");
    let mut messages = pubsub.into_on_message();

    let key = format!("building/{UUID}");
    orch.create(&key, "{\"a\":1}", Some(500 * MS))
        .await
        .unwrap();
    orch.compare_and_set(&key, "{\"a\":1}", "v2", Some(500 * MS))
        .await
        .unwrap();
    orch.take(&key).await.unwrap();
    orch.create(&key, "v3", Some(300 * MS)).await.unwrap();
    let _watcher = orch.watch("building/", ALL);

    let full_key = format!("{PREFIX}{key}");
    let want = [(1, "{\"a\":1}"), (2, "v2"), (3, "v2"), (1, "v3"), (4, "v3")];
    for (event, value) in want {
        let msg = tokio::time::timeout(5 * S, futures::StreamExt::next(&mut messages))
            .await
            .expect("no event within 5s")
            .expect("subscription closed");
        let text: String = msg.get_payload().expect("text payload");
        // Slashes unescaped, as Python's json.dumps writes them.
        assert!(text.contains(&format!("\"key\": \"{full_key}\"")), "{text}");
        let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let object = json.as_object().expect("an object");
        assert_eq!(object.len(), 3, "{text}");
        assert_eq!(json["event"], event, "{text}");
        assert_eq!(json["key"], full_key.as_str());
        assert_eq!(json["value"], value);
    }
}

#[tokio::test]
async fn the_key_layout_is_quays() {
    let server = RedisServer::start().await;
    let orch = server.orchestrator().await;
    assert!(!orch.is_process_local());
    let mut rx = orch.watch("building/", ALL);
    let key = format!("building/{UUID}");
    let real = format!("{PREFIX}{key}");
    orch.create(&key, "record", Some(2 * S)).await.unwrap();

    let mut raw = server.raw().await;
    let flags = keyspace_flags(&mut raw).await;
    assert!(flags.contains('K') && flags.contains('x'), "{flags:?}");

    let (value, left) = stored(&mut raw, &real).await;
    assert_eq!(value.as_deref(), Some("record"));
    let day = 24 * 3600 * 1000;
    assert!(left > day && left <= day + 2000, "{left}");
    let shadow = format!("{real}/expiring");
    let (value, left) = stored(&mut raw, &shadow).await;
    assert_eq!(value.as_deref(), Some(""));
    assert!(left > 0 && left <= 2000, "{left}");
    assert!(deadline(&mut raw, &key).await.is_some());

    created_then_expired::<Redis>(&mut rx, &key, "record").await;
    assert!(!raw.exists::<_, bool>(&real).await.unwrap());
    assert!(!raw.exists::<_, bool>(&shadow).await.unwrap());
    let (value, left) = stored(&mut raw, &format!("{real}/expired")).await;
    assert_eq!(value.as_deref(), Some("record"));
    assert!(left > 0 && left <= 3600 * 1000, "{left}");
    assert_eq!(deadline(&mut raw, &key).await, None);
}

/// A job's shadow expires while no manager runs: nobody hears the notification. The next
/// managers to start find it with the sweep, and exactly one of them handles it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_expires_what_expired_while_no_manager_ran() {
    let server = RedisServer::start().await;
    let gone = server.orchestrator().await;
    gone.create("building/a", "record", Some(300 * MS))
        .await
        .unwrap();
    gone.create("cancel/b", "other", Some(300 * MS))
        .await
        .unwrap();
    drop(gone);
    tokio::time::sleep(S).await;
    let mut raw = server.raw().await;
    assert!(
        !raw.exists::<_, bool>(format!("{PREFIX}building/a/expiring"))
            .await
            .unwrap()
    );

    let mut config = server.config();
    config.sweep_interval = NO_SWEEP;
    let (b, c) = tokio::join!(
        server.orchestrator_with(config.clone()),
        server.orchestrator_with(config)
    );
    // The sweep at start claims nothing while no watcher would receive it; adding one sweeps.
    tokio::time::sleep(300 * MS).await;
    let mut rx_b = b.watch("building/", ALL);
    let mut rx_c = c.watch("building/", ALL);
    let mut seen = drain::<Redis>(&mut rx_b).await;
    seen.extend(drain::<Redis>(&mut rx_c).await);
    assert_eq!(seen, vec![change(KeyEvent::Expire, "building/a", "record")]);
    // Nobody watches cancel/: that one waits for a manager that does.
    assert!(
        raw.exists::<_, bool>(format!("{PREFIX}cancel/b"))
            .await
            .unwrap()
    );
    let mut rx_cancel = c.watch("cancel/", ALL);
    assert_eq!(
        next::<Redis>(&mut rx_cancel).await,
        change(KeyEvent::Expire, "cancel/b", "other")
    );
}

/// With keyspace notifications off (a Redis whose CONFIG is off limits), the periodic sweep
/// still delivers every expiry, once.
#[tokio::test]
async fn the_sweep_expires_keys_when_notifications_are_off() {
    let server = RedisServer::start().await;
    let mut config = server.config();
    config.skip_keyspace_event_setup = true;
    config.sweep_interval = 300 * MS;
    let orch = server.orchestrator_with(config).await;
    let mut raw = server.raw().await;
    assert_eq!(keyspace_flags(&mut raw).await, "");

    let mut rx = orch.watch("building/", ALL);
    let start = Instant::now();
    orch.create("building/a", "v", Some(500 * MS))
        .await
        .unwrap();
    created_then_expired::<Redis>(&mut rx, "building/a", "v").await;
    let elapsed = start.elapsed();
    assert!(elapsed >= 500 * MS && elapsed < 2 * S, "{elapsed:?}");
    assert!(drain::<Redis>(&mut rx).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_redis_fails_calls_cleanly_and_everything_recovers() {
    let mut server = RedisServer::start().await;
    let mut config = server.config();
    config.sweep_interval = NO_SWEEP;
    let orch = server.orchestrator_with(config).await;
    let mut rx = orch.watch("building/", ALL);
    orch.create("building/old", "v", None).await.unwrap();

    server.stop().await;
    let address = format!("redis://127.0.0.1:{}/0", server.port());
    let expect_unavailable = |result: Result<(), OrchestratorError>, what: &str| match result {
        Err(OrchestratorError::Unavailable(msg)) => {
            assert!(msg.contains(&address), "{msg}");
            assert!(msg.contains(what), "{msg}");
        }
        Ok(()) => panic!("{what} succeeded without redis"),
    };
    let start = Instant::now();
    expect_unavailable(
        orch.create("building/x", "v", Some(S)).await.map(drop),
        "create building/x",
    );
    expect_unavailable(
        orch.compare_and_set("building/x", "v", "w", None)
            .await
            .map(drop),
        "compare-and-set building/x",
    );
    expect_unavailable(orch.get("building/x").await.map(drop), "get building/x");
    expect_unavailable(orch.take("building/x").await.map(drop), "take building/x");
    expect_unavailable(orch.list("building/").await.map(drop), "listing keys");
    expect_unavailable(orch.acquire_slot("s", 1).await.map(drop), "worker slot");
    expect_unavailable(orch.release_slot("s").await, "worker slot");
    expect_unavailable(orch.slots_taken().await.map(drop), "count worker slots");
    expect_unavailable(orch.sweep().await.map(drop), "sweeping");
    let _late_watcher = orch.watch("cancel/", ALL);
    assert!(
        start.elapsed() < 15 * S,
        "errors took {:?}",
        start.elapsed()
    );

    server.restart().await;
    let deadline = Instant::now() + 20 * S;
    loop {
        match orch.get("building/old").await {
            Ok(value) => {
                // The restarted server kept nothing.
                assert_eq!(value, None);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(200 * MS).await;
            }
            Err(e) => panic!("still failing after the restart: {e}"),
        }
    }
    // The subscription came back on its own, with notifications re-enabled on the fresh
    // server (the sweep is off): an expiry arrives again.
    assert!(orch.create("building/new", "v", Some(S)).await.unwrap());
    let deadline = Instant::now() + 30 * S;
    let expired = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(c)) if c.event == KeyEvent::Expire => break c,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("watcher closed"),
            Err(_) => panic!("no expiry within 30s of the restart"),
        }
    };
    assert_eq!(expired, change(KeyEvent::Expire, "building/new", "v"));
}

#[tokio::test]
async fn connecting_to_nothing_names_the_address() {
    let port = free_port();
    let config = RedisOrchestratorConfig::new("127.0.0.1", port, PREFIX);
    let Err(OrchestratorError::Unavailable(msg)) = RedisOrchestrator::connect(config).await else {
        panic!("connected to nothing");
    };
    assert!(
        msg.contains(&format!("redis://127.0.0.1:{port}/0")) && msg.contains("connecting failed"),
        "{msg}"
    );

    let mut config = RedisOrchestratorConfig::new("127.0.0.1", port, PREFIX);
    config.tls = true;
    config.tls_ca_cert = Some("/nonexistent/ca.pem".into());
    let Err(OrchestratorError::Unavailable(msg)) = RedisOrchestrator::connect(config).await else {
        panic!("connected to nothing");
    };
    assert!(
        msg.contains(&format!("rediss://127.0.0.1:{port}/0"))
            && msg.contains("/nonexistent/ca.pem"),
        "{msg}"
    );
}

/// Runs a command of the test setup, failing the test with its output when it fails.
async fn run(program: &str, args: &[&str], dir: &std::path::Path) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// REDIS_SSL: a server whose certificate a private CA signed (made here with the openssl
/// command) is trusted with that CA, and refused without it.
#[tokio::test]
async fn tls_checks_the_server_against_the_given_ca() {
    buildman_testkit::tls_provider();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path();
    let quiet = ["-nodes", "-newkey", "rsa:2048"];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "1",
        "-subj",
        "/CN=buildman test CA",
    ];
    ca.extend(quiet);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    run("openssl", &ca, path).await;
    let mut csr = vec!["req", "-subj", "/CN=localhost", "-keyout", "server.key"];
    csr.extend(quiet);
    csr.extend(["-out", "server.csr"]);
    run("openssl", &csr, path).await;
    std::fs::write(path.join("ext.cnf"), "subjectAltName=DNS:localhost\n").expect("ext");
    let sign = [
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ];
    run("openssl", &sign, path).await;

    let port = free_port();
    let _server = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
        ])
        .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
        .args(["--save", "", "--appendonly", "no"])
        .current_dir(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server (Debian package redis-server)");

    let mut config = RedisOrchestratorConfig::new("localhost", port, PREFIX);
    config.tls = true;
    config.tls_ca_cert = Some(path.join("ca.pem"));
    let deadline = Instant::now() + 10 * S;
    let orch = loop {
        match RedisOrchestrator::connect(config.clone()).await {
            Ok(orch) => break orch,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(50 * MS).await;
            }
            Err(e) => panic!("no TLS connection: {e}"),
        }
    };
    let mut rx = orch.watch("", ALL);
    orch.create("building/a", "v", Some(300 * MS))
        .await
        .unwrap();
    created_then_expired::<Redis>(&mut rx, "building/a", "v").await;

    // The system's roots do not know the test CA.
    config.tls_ca_cert = None;
    let Err(OrchestratorError::Unavailable(msg)) = RedisOrchestrator::connect(config).await else {
        panic!("trusted an unknown CA");
    };
    assert!(
        msg.contains(&format!("rediss://localhost:{port}/0")),
        "{msg}"
    );
    assert!(msg.contains("certificate"), "{msg}");
}
