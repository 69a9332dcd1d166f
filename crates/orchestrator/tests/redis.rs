//! The Redis orchestrator against a real `redis-server` (Debian package `redis-server`), one
//! per test on a free port, without persistence, killed when the test ends
//! (`buildman_testkit::redis`). Mirrors the memory
//! backend's behavioural tests in real time, and adds what only Redis has: several managers,
//! Quay's layout and events, missed notifications, outages.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use buildman_orchestrator::redis::{RedisOrchestrator, RedisOrchestratorConfig};
use buildman_orchestrator::{KeyChange, KeyEvent, Orchestrator, OrchestratorError};
use buildman_testkit::free_port;
use buildman_testkit::redis::RedisServer;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use tokio::process::Command;
use tokio::sync::mpsc::UnboundedReceiver;

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

fn change(event: KeyEvent, key: &str, value: &str) -> KeyChange {
    KeyChange {
        event,
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

async fn next(rx: &mut UnboundedReceiver<KeyChange>) -> KeyChange {
    tokio::time::timeout(5 * S, rx.recv())
        .await
        .expect("no event within 5s")
        .expect("watcher closed")
}

/// Everything that arrives within a short while.
async fn drain(rx: &mut UnboundedReceiver<KeyChange>) -> Vec<KeyChange> {
    tokio::time::sleep(300 * MS).await;
    let mut out = Vec::new();
    while let Ok(c) = rx.try_recv() {
        out.push(c);
    }
    out
}

fn expiries(changes: &[KeyChange]) -> Vec<&str> {
    changes
        .iter()
        .filter(|c| c.event == KeyEvent::Expire)
        .map(|c| c.key.as_str())
        .collect()
}

#[tokio::test]
async fn a_key_expires_after_its_ttl_with_its_last_value() {
    let server = RedisServer::start().await;
    let mut config = server.config();
    config.sweep_interval = NO_SWEEP;
    let orch = server.orchestrator_with(config).await;
    assert!(!orch.is_process_local());
    let mut rx = orch.watch("");
    let start = Instant::now();
    assert!(orch.create("building/a", "v1", Some(S)).await.unwrap());
    assert_eq!(
        next(&mut rx).await,
        change(KeyEvent::Create, "building/a", "v1")
    );

    tokio::time::sleep(600 * MS).await;
    assert_eq!(orch.get("building/a").await.unwrap().as_deref(), Some("v1"));
    assert!(rx.try_recv().is_err());

    // Nothing touches the key: the keyspace notification alone must bring the expiry.
    assert_eq!(
        next(&mut rx).await,
        change(KeyEvent::Expire, "building/a", "v1")
    );
    let elapsed = start.elapsed();
    assert!(elapsed >= S && elapsed < 3 * S, "expired after {elapsed:?}");
    assert_eq!(orch.get("building/a").await.unwrap(), None);
    assert!(drain(&mut rx).await.is_empty());
}

#[tokio::test]
async fn a_swap_resets_the_ttl() {
    let server = RedisServer::start().await;
    let orch = server.orchestrator().await;
    let mut rx = orch.watch("building/");
    let start = Instant::now();
    orch.create("building/a", "v1", Some(1500 * MS))
        .await
        .unwrap();
    tokio::time::sleep(S).await;
    assert!(
        orch.compare_and_set("building/a", "v1", "v2", Some(1500 * MS))
            .await
            .unwrap()
    );
    tokio::time::sleep(S).await;
    assert_eq!(orch.get("building/a").await.unwrap().as_deref(), Some("v2"));

    assert_eq!(next(&mut rx).await.event, KeyEvent::Create);
    assert_eq!(
        next(&mut rx).await,
        change(KeyEvent::Set, "building/a", "v2")
    );
    assert_eq!(
        next(&mut rx).await,
        change(KeyEvent::Expire, "building/a", "v2")
    );
    let elapsed = start.elapsed();
    assert!(elapsed >= 2500 * MS, "expired after {elapsed:?}");
}

#[tokio::test]
async fn a_swap_without_ttl_removes_the_expiry() {
    let server = RedisServer::start().await;
    let orch = server.orchestrator().await;
    let mut rx = orch.watch("");
    orch.create("k", "v1", Some(500 * MS)).await.unwrap();
    assert!(orch.compare_and_set("k", "v1", "v2", None).await.unwrap());
    tokio::time::sleep(1500 * MS).await;
    assert_eq!(orch.get("k").await.unwrap().as_deref(), Some("v2"));
    assert_eq!(orch.sweep().await.unwrap(), 0);

    let mut raw = server.raw().await;
    let real = format!("{PREFIX}k");
    assert_eq!(raw.pttl::<_, i64>(&real).await.unwrap(), -1);
    assert!(
        !raw.exists::<_, bool>(format!("{real}/expiring"))
            .await
            .unwrap()
    );
    let deadline: Option<f64> = raw.zscore(format!("{PREFIX}deadlines"), "k").await.unwrap();
    assert_eq!(deadline, None);
    assert!(expiries(&drain(&mut rx).await).is_empty());
}

#[tokio::test]
async fn take_before_the_deadline_wins_over_expiry() {
    let server = RedisServer::start().await;
    let orch = server.orchestrator().await;
    let mut rx = orch.watch("");
    orch.create("k", "v", Some(S)).await.unwrap();
    tokio::time::sleep(800 * MS).await;
    assert_eq!(orch.take("k").await.unwrap().as_deref(), Some("v"));
    tokio::time::sleep(1500 * MS).await;

    assert_eq!(next(&mut rx).await.event, KeyEvent::Create);
    assert_eq!(next(&mut rx).await, change(KeyEvent::Delete, "k", "v"));
    assert!(drain(&mut rx).await.is_empty());
    assert_eq!(orch.take("k").await.unwrap(), None);

    let mut raw = server.raw().await;
    for suffix in ["", "/expiring", "/expired"] {
        let key = format!("{PREFIX}k{suffix}");
        assert!(!raw.exists::<_, bool>(&key).await.unwrap(), "{key} left");
    }
}

/// Two managers take every key while the keys' deadlines pass: each key goes to exactly one
/// taker or one expiry, never two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn take_racing_expiry_claims_each_key_exactly_once_across_managers() {
    let server = RedisServer::start().await;
    let a = server.orchestrator().await;
    let b = server.orchestrator().await;
    let mut rx_a = a.watch("");
    let mut rx_b = b.watch("");
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
    let events_a = drain(&mut rx_a).await;
    let events_b = drain(&mut rx_b).await;

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
async fn create_on_an_existing_key_fails_and_a_swap_on_a_missing_or_changed_one_writes_nothing() {
    let server = RedisServer::start().await;
    let orch = server.orchestrator().await;
    let mut rx = orch.watch("");
    assert!(orch.create("k", "v1", None).await.unwrap());
    assert!(!orch.create("k", "v2", None).await.unwrap());
    assert_eq!(orch.get("k").await.unwrap().as_deref(), Some("v1"));
    assert!(
        !orch
            .compare_and_set("missing", "", "v", Some(S))
            .await
            .unwrap()
    );
    assert!(
        !orch
            .compare_and_set("k", "stale", "v3", None)
            .await
            .unwrap()
    );
    assert_eq!(orch.get("missing").await.unwrap(), None);

    assert_eq!(
        drain(&mut rx).await,
        vec![change(KeyEvent::Create, "k", "v1")]
    );
    let mut raw = server.raw().await;
    assert!(
        !raw.exists::<_, bool>(format!("{PREFIX}missing/expiring"))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn list_returns_only_keys_below_the_prefix() {
    let server = RedisServer::start().await;
    let orch = server.orchestrator().await;
    for key in ["a/2", "a/1", "ab/3", "b/1", "a", "x*/1", "x/1"] {
        // Half with a TTL, so shadows exist to be left out.
        let ttl = key.contains('1').then_some(60 * S);
        orch.create(key, &format!("v-{key}"), ttl).await.unwrap();
    }
    // The reserved keys and someone else's non-string key below the prefix stay out too.
    orch.acquire_slot("holder", 1).await.unwrap();
    let mut raw = server.raw().await;
    raw.rpush::<_, _, ()>(format!("{PREFIX}a/list"), "x")
        .await
        .unwrap();

    let listed = orch.list("a/").await.unwrap();
    let want = vec![
        ("a/1".to_owned(), "v-a/1".to_owned()),
        ("a/2".to_owned(), "v-a/2".to_owned()),
    ];
    assert_eq!(listed, want);
    let all: Vec<String> = orch
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(all, ["a", "a/1", "a/2", "ab/3", "b/1", "x*/1", "x/1"]);
    assert!(orch.list("c").await.unwrap().is_empty());
    // Glob characters in the prefix match only themselves.
    assert_eq!(
        orch.list("x*").await.unwrap(),
        vec![("x*/1".to_owned(), "v-x*/1".to_owned())]
    );
}

#[tokio::test]
async fn list_expires_what_is_due_instead_of_listing_it() {
    let server = RedisServer::start().await;
    let mut config = server.config();
    config.sweep_interval = NO_SWEEP;
    // No notifications and no sweep: only the access itself can notice the deadline.
    config.skip_keyspace_event_setup = true;
    let orch = server.orchestrator_with(config).await;
    let mut rx = orch.watch("");
    orch.create("a/1", "v", Some(200 * MS)).await.unwrap();
    orch.create("a/2", "w", None).await.unwrap();
    tokio::time::sleep(500 * MS).await;
    assert_eq!(
        orch.list("a/").await.unwrap(),
        vec![("a/2".to_owned(), "w".to_owned())]
    );
    assert_eq!(expiries(&drain(&mut rx).await), ["a/1"]);
    assert!(orch.list("a/").await.unwrap().len() == 1);
}

/// Two managers compete for the same three slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_hold_their_limit_across_two_managers() {
    let server = RedisServer::start().await;
    let a = server.orchestrator().await;
    let b = server.orchestrator().await;
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let orch = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { orch.acquire_slot(&format!("h{i}"), 3).await.unwrap() })
        })
        .collect();
    let mut winners = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        if task.await.unwrap() {
            winners.push(format!("h{i}"));
        }
    }
    assert_eq!(winners.len(), 3);
    assert_eq!(a.slots_taken().await.unwrap(), 3);
    assert_eq!(b.slots_taken().await.unwrap(), 3);

    // Holding a slot already is not taking a second one, whichever manager asks.
    assert!(b.acquire_slot(&winners[0], 3).await.unwrap());
    assert_eq!(a.slots_taken().await.unwrap(), 3);
    assert!(!a.acquire_slot("late", 3).await.unwrap());

    b.release_slot(&winners[0]).await.unwrap();
    a.release_slot("nobody").await.unwrap();
    assert_eq!(a.slots_taken().await.unwrap(), 2);
    assert!(a.acquire_slot("late", 3).await.unwrap());
    assert_eq!(b.slots_taken().await.unwrap(), 3);
}

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
    let mut building = a.watch("building/");
    let mut cancel = a.watch("cancel/");
    let dropped = a.watch("building/");
    drop(dropped);
    let mut everything_b = b.watch("");

    a.create("building/a", "1", Some(S)).await.unwrap();
    a.create("cancel/a", "2", None).await.unwrap();
    a.compare_and_set("cancel/a", "2", "3", None).await.unwrap();
    a.take("cancel/a").await.unwrap();
    tokio::time::sleep(2500 * MS).await;

    let building = drain(&mut building).await;
    let cancel = drain(&mut cancel).await;
    let everything_b = drain(&mut everything_b).await;
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
        watchers.push(orch.watch("building/"));
        managers.push(orch);
    }
    for i in 0..30 {
        let key = format!("building/{i}");
        managers[i % 3].create(&key, "v", Some(S)).await.unwrap();
    }
    tokio::time::sleep(2500 * MS).await;

    let mut expired: HashMap<String, usize> = HashMap::new();
    for rx in &mut watchers {
        for key in expiries(&drain(rx).await) {
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
    let _watcher = orch.watch("building/");

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
    let mut rx = orch.watch("building/");
    let key = format!("building/{UUID}");
    let real = format!("{PREFIX}{key}");
    orch.create(&key, "record", Some(2 * S)).await.unwrap();

    let mut raw = server.raw().await;
    let flags: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        flags[1].contains('K') && flags[1].contains('x'),
        "{flags:?}"
    );

    assert_eq!(
        raw.get::<_, Option<String>>(&real)
            .await
            .unwrap()
            .as_deref(),
        Some("record")
    );
    let day = 24 * 3600 * 1000;
    let left: i64 = raw.pttl(&real).await.unwrap();
    assert!(left > day && left <= day + 2000, "{left}");
    let shadow = format!("{real}/expiring");
    assert_eq!(
        raw.get::<_, Option<String>>(&shadow)
            .await
            .unwrap()
            .as_deref(),
        Some("")
    );
    let left: i64 = raw.pttl(&shadow).await.unwrap();
    assert!(left > 0 && left <= 2000, "{left}");
    let deadline: Option<f64> = raw
        .zscore(format!("{PREFIX}deadlines"), &key)
        .await
        .unwrap();
    assert!(deadline.is_some());

    assert_eq!(next(&mut rx).await.event, KeyEvent::Create);
    assert_eq!(
        next(&mut rx).await,
        change(KeyEvent::Expire, &key, "record")
    );
    assert!(!raw.exists::<_, bool>(&real).await.unwrap());
    assert!(!raw.exists::<_, bool>(&shadow).await.unwrap());
    let copy = format!("{real}/expired");
    assert_eq!(
        raw.get::<_, Option<String>>(&copy)
            .await
            .unwrap()
            .as_deref(),
        Some("record")
    );
    let left: i64 = raw.pttl(&copy).await.unwrap();
    assert!(left > 0 && left <= 3600 * 1000, "{left}");
    let deadline: Option<f64> = raw
        .zscore(format!("{PREFIX}deadlines"), &key)
        .await
        .unwrap();
    assert_eq!(deadline, None);
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
    let mut rx_b = b.watch("building/");
    let mut rx_c = c.watch("building/");
    let mut seen = drain(&mut rx_b).await;
    seen.extend(drain(&mut rx_c).await);
    assert_eq!(seen, vec![change(KeyEvent::Expire, "building/a", "record")]);
    // Nobody watches cancel/: that one waits for a manager that does.
    assert!(
        raw.exists::<_, bool>(format!("{PREFIX}cancel/b"))
            .await
            .unwrap()
    );
    let mut rx_cancel = c.watch("cancel/");
    assert_eq!(
        next(&mut rx_cancel).await,
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
    let flags: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(flags[1], "");

    let mut rx = orch.watch("building/");
    let start = Instant::now();
    orch.create("building/a", "v", Some(500 * MS))
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await.event, KeyEvent::Create);
    assert_eq!(
        next(&mut rx).await,
        change(KeyEvent::Expire, "building/a", "v")
    );
    let elapsed = start.elapsed();
    assert!(elapsed >= 500 * MS && elapsed < 2 * S, "{elapsed:?}");
    assert!(drain(&mut rx).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_redis_fails_calls_cleanly_and_everything_recovers() {
    let mut server = RedisServer::start().await;
    let mut config = server.config();
    config.sweep_interval = NO_SWEEP;
    let orch = server.orchestrator_with(config).await;
    let mut rx = orch.watch("building/");
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
    expect_unavailable(orch.acquire_slot("h", 1).await.map(drop), "worker slot");
    expect_unavailable(orch.release_slot("h").await, "worker slot");
    expect_unavailable(orch.slots_taken().await.map(drop), "count worker slots");
    expect_unavailable(orch.sweep().await.map(drop), "sweeping");
    let _late_watcher = orch.watch("cancel/");
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
    let mut rx = orch.watch("");
    orch.create("building/a", "v", Some(300 * MS))
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await.event, KeyEvent::Create);
    assert_eq!(
        next(&mut rx).await,
        change(KeyEvent::Expire, "building/a", "v")
    );

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
