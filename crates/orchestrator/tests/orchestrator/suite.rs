//! The tests every orchestrator must pass, written once against [`Backend`];
//! `orchestrator_suite!` instantiates them as `#[tokio::test]`s for one backend.
//!
//! Time is the backend's: the memory orchestrator runs on tokio's paused clock (exact and
//! instant), Redis in real time with short TTLs. TTLs and waits are multiples of
//! [`Backend::UNIT`], and all time is tokio's, so the same test serves both.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use buildman_orchestrator::{KeyChange, KeyEvent, Orchestrator, WATCH_CAPACITY};
use tokio::sync::mpsc::Receiver;
use tokio::time::Instant;

/// Every kind of change.
pub const ALL: &[KeyEvent] = &[
    KeyEvent::Create,
    KeyEvent::Set,
    KeyEvent::Delete,
    KeyEvent::Expire,
];

/// An orchestrator for one test, and how the tests look at it.
#[async_trait]
pub trait Backend: Send + Sync + Sized + 'static {
    /// The orchestrator type of the backend.
    type Orchestrator: Orchestrator + Clone;
    /// The time the tests' TTLs and waits are multiples of.
    const UNIT: Duration;
    /// How late after its deadline an expiry may arrive.
    const LATE: Duration;
    /// How shortly before a deadline a call still surely comes before it.
    const MARGIN: Duration;
    /// How long to wait for a change that must come.
    const WAIT: Duration;
    /// How long to wait for changes that must not come.
    const SETTLE: Duration;

    /// A fresh, empty orchestrator.
    async fn start() -> Self;
    /// A handle on it, as a manager gets one: a new connection for Redis (another manager),
    /// the same orchestrator for memory (a process has one).
    async fn orchestrator(&self) -> Self::Orchestrator;
    /// Checks that nothing of `key` is left in the backend (beside what `get` shows).
    async fn assert_nothing_left(&self, key: &str);
    /// Checks that `key` has no deadline left anywhere in the backend.
    async fn assert_no_deadline(&self, orch: &Self::Orchestrator, key: &str);
    /// Stores a key that is not the orchestrator's below its prefix (where the backend can
    /// hold such keys).
    async fn plant_foreign_key(&self, key: &str);
}

/// Generates one test per suite test for a [`Backend`] type: `timed` is the test attribute
/// for tests of time, `concurrent` the one for tests of tasks racing on several threads.
macro_rules! orchestrator_suite {
    ($backend:ty, timed: #[$timed:meta], concurrent: #[$concurrent:meta]) => {
        $crate::suite::orchestrator_suite!(@tests $backend, $timed:
            a_key_expires_after_its_ttl_with_its_last_value,
            a_swap_resets_the_ttl,
            a_swap_without_ttl_removes_the_expiry,
            take_before_the_deadline_wins_over_expiry,
            take_racing_expiry_claims_each_key_exactly_once,
            create_on_an_existing_key_fails_and_a_swap_on_a_missing_or_changed_one_writes_nothing,
            list_returns_only_keys_below_the_prefix,
            watchers_see_only_their_prefix_and_their_kinds,
            a_full_watcher_loses_no_expiry,
        );
        $crate::suite::orchestrator_suite!(@tests $backend, $concurrent:
            slots_hold_their_limit_under_concurrency,
        );
    };
    (@tests $backend:ty, $attr:meta: $($test:ident),* $(,)?) => {
        $(
            #[$attr]
            async fn $test() {
                $crate::suite::$test::<$backend>().await;
            }
        )*
    };
}
pub(crate) use orchestrator_suite;

pub fn change(event: KeyEvent, key: &str, value: &str) -> KeyChange {
    KeyChange {
        event,
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

/// The next change, which must come within [`Backend::WAIT`].
pub async fn next<B: Backend>(rx: &mut Receiver<KeyChange>) -> KeyChange {
    tokio::time::timeout(B::WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no change within {:?}", B::WAIT))
        .expect("watcher closed")
}

/// Every change that arrives within [`Backend::SETTLE`].
pub async fn drain<B: Backend>(rx: &mut Receiver<KeyChange>) -> Vec<KeyChange> {
    tokio::time::sleep(B::SETTLE).await;
    let mut out = Vec::new();
    while let Ok(c) = rx.try_recv() {
        out.push(c);
    }
    out
}

/// Waits for the creation of `key` with `value`, then for its expiry.
pub async fn created_then_expired<B: Backend>(
    rx: &mut Receiver<KeyChange>,
    key: &str,
    value: &str,
) {
    assert_eq!(next::<B>(rx).await, change(KeyEvent::Create, key, value));
    assert_eq!(next::<B>(rx).await, change(KeyEvent::Expire, key, value));
}

/// The keys of the expiries among `changes`.
pub fn expiries(changes: &[KeyChange]) -> Vec<&str> {
    changes
        .iter()
        .filter(|c| c.event == KeyEvent::Expire)
        .map(|c| c.key.as_str())
        .collect()
}

/// Checks that an expiry seen `elapsed` after the start came at its deadline `ttl`, at most
/// [`Backend::LATE`] late.
fn assert_on_time<B: Backend>(elapsed: Duration, ttl: Duration) {
    assert!(
        elapsed >= ttl && elapsed <= ttl + B::LATE,
        "expired after {elapsed:?}, TTL {ttl:?}"
    );
}

pub async fn a_key_expires_after_its_ttl_with_its_last_value<B: Backend>() {
    let env = B::start().await;
    let orch = env.orchestrator().await;
    let mut rx = orch.watch("", ALL);
    let ttl = 2 * B::UNIT;
    let start = Instant::now();
    assert!(orch.create("building/a", "v1", Some(ttl)).await.unwrap());
    assert_eq!(
        next::<B>(&mut rx).await,
        change(KeyEvent::Create, "building/a", "v1")
    );

    tokio::time::sleep(ttl - 2 * B::MARGIN).await;
    assert_eq!(orch.get("building/a").await.unwrap().as_deref(), Some("v1"));
    assert!(rx.try_recv().is_err());

    // Nothing touches the orchestrator here: the expiry must come on its own (on Redis,
    // with the sweep off, from the keyspace notification).
    assert_eq!(
        next::<B>(&mut rx).await,
        change(KeyEvent::Expire, "building/a", "v1")
    );
    assert_on_time::<B>(start.elapsed(), ttl);
    assert_eq!(orch.get("building/a").await.unwrap(), None);
    assert!(drain::<B>(&mut rx).await.is_empty());
}

pub async fn a_swap_resets_the_ttl<B: Backend>() {
    let env = B::start().await;
    let orch = env.orchestrator().await;
    let mut rx = orch.watch("building/", ALL);
    let ttl = 3 * B::UNIT;
    let start = Instant::now();
    orch.create("building/a", "v1", Some(ttl)).await.unwrap();
    tokio::time::sleep(2 * B::UNIT).await;
    assert!(
        orch.compare_and_set("building/a", "v1", "v2", Some(ttl))
            .await
            .unwrap()
    );
    tokio::time::sleep(2 * B::UNIT).await;
    assert_eq!(orch.get("building/a").await.unwrap().as_deref(), Some("v2"));

    assert_eq!(next::<B>(&mut rx).await.event, KeyEvent::Create);
    assert_eq!(
        next::<B>(&mut rx).await,
        change(KeyEvent::Set, "building/a", "v2")
    );
    assert_eq!(
        next::<B>(&mut rx).await,
        change(KeyEvent::Expire, "building/a", "v2")
    );
    assert_on_time::<B>(start.elapsed(), 2 * B::UNIT + ttl);
}

pub async fn a_swap_without_ttl_removes_the_expiry<B: Backend>() {
    let env = B::start().await;
    let orch = env.orchestrator().await;
    let mut rx = orch.watch("", ALL);
    orch.create("k", "v1", Some(B::UNIT)).await.unwrap();
    assert!(orch.compare_and_set("k", "v1", "v2", None).await.unwrap());
    tokio::time::sleep(3 * B::UNIT).await;
    assert_eq!(orch.get("k").await.unwrap().as_deref(), Some("v2"));
    env.assert_no_deadline(&orch, "k").await;
    assert!(expiries(&drain::<B>(&mut rx).await).is_empty());
}

pub async fn take_before_the_deadline_wins_over_expiry<B: Backend>() {
    let env = B::start().await;
    let orch = env.orchestrator().await;
    let mut rx = orch.watch("", ALL);
    let ttl = 2 * B::UNIT;
    orch.create("k", "v", Some(ttl)).await.unwrap();
    tokio::time::sleep(ttl - B::MARGIN).await;
    assert_eq!(orch.take("k").await.unwrap().as_deref(), Some("v"));
    tokio::time::sleep(3 * B::UNIT).await;

    assert_eq!(next::<B>(&mut rx).await.event, KeyEvent::Create);
    assert_eq!(next::<B>(&mut rx).await, change(KeyEvent::Delete, "k", "v"));
    assert!(drain::<B>(&mut rx).await.is_empty());
    assert_eq!(orch.take("k").await.unwrap(), None);
    env.assert_nothing_left("k").await;
}

/// Keys whose deadlines are spread around the moment they are all taken: each goes to the
/// taker or to one expiry, never both.
pub async fn take_racing_expiry_claims_each_key_exactly_once<B: Backend>() {
    let env = B::start().await;
    let orch = env.orchestrator().await;
    let mut rx = orch.watch("", ALL);
    let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
    let start = Instant::now();
    for (i, key) in (0u32..).zip(&keys) {
        let ttl = 2 * B::UNIT + B::UNIT * i / 25;
        orch.create(key, "v", Some(ttl)).await.unwrap();
    }
    tokio::time::sleep_until(start + 3 * B::UNIT).await;
    let mut taken = HashSet::new();
    for key in &keys {
        if orch.take(key).await.unwrap().is_some() {
            taken.insert(key.clone());
        }
    }
    tokio::time::sleep(3 * B::UNIT).await;

    let mut deleted = HashSet::new();
    let mut expired = HashSet::new();
    for c in drain::<B>(&mut rx).await {
        match c.event {
            KeyEvent::Create => {}
            KeyEvent::Delete => assert!(deleted.insert(c.key)),
            KeyEvent::Expire => assert!(expired.insert(c.key)),
            KeyEvent::Set => panic!("unexpected set"),
        }
    }
    assert_eq!(deleted, taken);
    assert!(deleted.is_disjoint(&expired));
    assert_eq!(deleted.len() + expired.len(), keys.len());
    assert!(!taken.is_empty() && !expired.is_empty());
}

pub async fn create_on_an_existing_key_fails_and_a_swap_on_a_missing_or_changed_one_writes_nothing<
    B: Backend,
>() {
    let env = B::start().await;
    let orch = env.orchestrator().await;
    let mut rx = orch.watch("", ALL);
    assert!(orch.create("k", "v1", None).await.unwrap());
    assert!(!orch.create("k", "v2", None).await.unwrap());
    assert_eq!(orch.get("k").await.unwrap().as_deref(), Some("v1"));
    assert!(
        !orch
            .compare_and_set("missing", "", "v", Some(B::UNIT))
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
        drain::<B>(&mut rx).await,
        vec![change(KeyEvent::Create, "k", "v1")]
    );
    env.assert_nothing_left("missing").await;
}

pub async fn list_returns_only_keys_below_the_prefix<B: Backend>() {
    let env = B::start().await;
    let orch = env.orchestrator().await;
    for key in ["a/2", "a/1", "ab/3", "b/1", "a", "x*/1", "x/1"] {
        // Half with a TTL, so whatever a backend keeps beside a deadline is there too.
        let ttl = key.contains('1').then_some(60 * B::UNIT);
        orch.create(key, &format!("v-{key}"), ttl).await.unwrap();
    }
    // Slots, and keys below the prefix that are not the orchestrator's, stay out.
    orch.acquire_slot("slot", 1).await.unwrap();
    env.plant_foreign_key("a/list").await;

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

/// Two handles (two managers, where that means something) compete for the same three slots.
pub async fn slots_hold_their_limit_under_concurrency<B: Backend>() {
    let env = B::start().await;
    let a = env.orchestrator().await;
    let b = env.orchestrator().await;
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let orch = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { orch.acquire_slot(&format!("s{i}"), 3).await.unwrap() })
        })
        .collect();
    let mut winners = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        if task.await.unwrap() {
            winners.push(format!("s{i}"));
        }
    }
    assert_eq!(winners.len(), 3);
    assert_eq!(a.slots_taken().await.unwrap(), 3);
    assert_eq!(b.slots_taken().await.unwrap(), 3);

    // Taking a slot that is taken is not taking a second one, whichever handle asks.
    assert!(b.acquire_slot(&winners[0], 3).await.unwrap());
    assert_eq!(a.slots_taken().await.unwrap(), 3);
    assert!(!a.acquire_slot("late", 3).await.unwrap());

    b.release_slot(&winners[0]).await.unwrap();
    a.release_slot("nobody").await.unwrap();
    assert_eq!(a.slots_taken().await.unwrap(), 2);
    assert!(a.acquire_slot("late", 3).await.unwrap());
    assert_eq!(b.slots_taken().await.unwrap(), 3);
}

pub async fn watchers_see_only_their_prefix_and_their_kinds<B: Backend>() {
    let env = B::start().await;
    let orch = env.orchestrator().await;
    let mut building = orch.watch("building/", ALL);
    let mut cancel = orch.watch("cancel/", ALL);
    // What the manager watches: expired jobs, and stops handed over (or never taken).
    let mut expired_jobs = orch.watch("building/", &[KeyEvent::Expire]);
    let mut stops = orch.watch("cancel/", &[KeyEvent::Create, KeyEvent::Expire]);
    let dropped = orch.watch("building/", ALL);
    drop(dropped);

    orch.create("building/a", "1", Some(B::UNIT)).await.unwrap();
    orch.create("cancel/a", "2", None).await.unwrap();
    orch.compare_and_set("cancel/a", "2", "3", None)
        .await
        .unwrap();
    orch.take("cancel/a").await.unwrap();
    orch.create("cancel/b", "4", Some(B::UNIT)).await.unwrap();

    let mut seen = Vec::new();
    for rx in [&mut building, &mut cancel, &mut expired_jobs, &mut stops] {
        let mut changes = Vec::new();
        while changes.len() < 5 && expiries(&changes).is_empty() {
            changes.push(next::<B>(rx).await);
        }
        changes.extend(drain::<B>(rx).await);
        seen.push(changes);
    }
    assert_eq!(
        seen[0],
        [
            change(KeyEvent::Create, "building/a", "1"),
            change(KeyEvent::Expire, "building/a", "1"),
        ]
    );
    assert_eq!(
        seen[1],
        [
            change(KeyEvent::Create, "cancel/a", "2"),
            change(KeyEvent::Set, "cancel/a", "3"),
            change(KeyEvent::Delete, "cancel/a", "3"),
            change(KeyEvent::Create, "cancel/b", "4"),
            change(KeyEvent::Expire, "cancel/b", "4"),
        ]
    );
    assert_eq!(seen[2], [change(KeyEvent::Expire, "building/a", "1")]);
    assert_eq!(
        seen[3],
        [
            change(KeyEvent::Create, "cancel/a", "2"),
            change(KeyEvent::Create, "cancel/b", "4"),
            change(KeyEvent::Expire, "cancel/b", "4"),
        ]
    );
}

/// Nobody reads a watcher of expiries while more keys expire than its channel holds: it
/// fills up, the rest wait, and once it is read every expiry arrives, once.
pub async fn a_full_watcher_loses_no_expiry<B: Backend>() {
    let env = B::start().await;
    let orch = env.orchestrator().await;
    let mut rx = orch.watch("building/", &[KeyEvent::Expire]);
    let keys: HashSet<String> = (0..WATCH_CAPACITY + 16)
        .map(|i| format!("building/{i:05}"))
        .collect();
    for key in &keys {
        orch.create(key, "v", Some(2 * B::UNIT)).await.unwrap();
    }
    let deadline = Instant::now() + B::WAIT;
    while rx.len() < WATCH_CAPACITY {
        assert!(
            Instant::now() < deadline,
            "{} expiries after {:?}",
            rx.len(),
            B::WAIT
        );
        tokio::time::sleep(B::UNIT / 10).await;
    }
    tokio::time::sleep(B::SETTLE).await;
    assert_eq!(rx.len(), WATCH_CAPACITY);

    let mut expired = HashSet::new();
    while expired.len() < keys.len() {
        let c = next::<B>(&mut rx).await;
        assert_eq!(c.event, KeyEvent::Expire);
        assert!(expired.insert(c.key), "expired twice");
    }
    assert_eq!(expired, keys);
    assert!(drain::<B>(&mut rx).await.is_empty());
}
