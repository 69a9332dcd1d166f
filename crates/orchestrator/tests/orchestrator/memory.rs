//! The suite on the in-memory orchestrator, with tokio's clock paused, and the in-memory
//! orchestrator's own tests.

use std::time::Duration;

use async_trait::async_trait;
use buildman_orchestrator::memory::{EXPIRY_RETRY, MemoryOrchestrator};
use buildman_orchestrator::{KeyEvent, Orchestrator, WATCH_CAPACITY};
use tokio::time::Instant;

use crate::suite::{ALL, Backend, change, next, orchestrator_suite};

const S: Duration = Duration::from_secs(1);

/// One orchestrator; every handle is a clone of it.
pub struct Memory(MemoryOrchestrator);

#[async_trait]
impl Backend for Memory {
    type Orchestrator = MemoryOrchestrator;
    const UNIT: Duration = S;
    // The paused clock is exact.
    const LATE: Duration = Duration::ZERO;
    const MARGIN: Duration = Duration::from_millis(1);
    const WAIT: Duration = Duration::from_secs(3600);
    const SETTLE: Duration = S;

    async fn start() -> Self {
        Memory(MemoryOrchestrator::new())
    }

    async fn orchestrator(&self) -> MemoryOrchestrator {
        self.0.clone()
    }

    // It keeps nothing beside what `get` and `list` show.
    async fn assert_nothing_left(&self, _: &str) {}

    async fn assert_no_deadline(&self, _: &MemoryOrchestrator, _: &str) {}

    async fn plant_foreign_key(&self, _: &str) {}
}

orchestrator_suite!(
    Memory,
    timed: #[tokio::test(start_paused = true)],
    concurrent: #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
);

#[tokio::test(start_paused = true)]
async fn an_earlier_deadline_wakes_the_expiry_task() {
    let orch = MemoryOrchestrator::new();
    assert!(orch.is_process_local());
    let mut rx = orch.watch("", ALL);
    let start = Instant::now();
    orch.create("late", "l", Some(100 * S)).await.unwrap();
    // Let the task go to sleep towards the late deadline first.
    tokio::time::sleep(S).await;
    orch.create("early", "e", Some(2 * S)).await.unwrap();
    rx.recv().await.unwrap();
    rx.recv().await.unwrap();
    assert_eq!(
        rx.recv().await,
        Some(change(KeyEvent::Expire, "early", "e"))
    );
    assert_eq!(start.elapsed(), 3 * S);
    assert_eq!(rx.recv().await, Some(change(KeyEvent::Expire, "late", "l")));
    assert_eq!(start.elapsed(), 100 * S);
}

/// While a watcher of its expiry has no room, a key whose deadline passed is not expired:
/// it can still be read, listed and taken, and expires once there is room.
#[tokio::test(start_paused = true)]
async fn an_expiry_waits_for_room_in_its_watcher() {
    let orch = MemoryOrchestrator::new();
    let mut rx = orch.watch("k/", &[KeyEvent::Expire]);
    let mut taken = orch.watch("k/y", ALL);
    // Sorted after the others, so the channel fills before their deadlines are reached.
    for i in 0..WATCH_CAPACITY {
        orch.create(&format!("k/{i:05}"), "v", Some(S))
            .await
            .unwrap();
    }
    orch.create("k/x", "x", Some(S)).await.unwrap();
    orch.create("k/y", "y", Some(S)).await.unwrap();
    tokio::time::sleep(10 * S).await;
    assert_eq!(rx.len(), WATCH_CAPACITY);
    assert_eq!(orch.get("k/x").await.unwrap().as_deref(), Some("x"));
    assert_eq!(orch.list("k/").await.unwrap().len(), 2);
    // Taking one is taking it, not racing an expiry.
    assert_eq!(orch.take("k/y").await.unwrap().as_deref(), Some("y"));

    let start = Instant::now();
    assert_eq!(next::<Memory>(&mut rx).await.key, "k/00000");
    // The waiting expiry goes out at its next try.
    let last = loop {
        let c = next::<Memory>(&mut rx).await;
        if c.key == "k/x" {
            break c;
        }
    };
    assert_eq!(last, change(KeyEvent::Expire, "k/x", "x"));
    assert!(start.elapsed() <= EXPIRY_RETRY);
    assert!(rx.try_recv().is_err());
    assert_eq!(orch.get("k/x").await.unwrap(), None);
    // The key taken meanwhile was never expired.
    assert_eq!(taken.try_recv().unwrap().event, KeyEvent::Create);
    assert_eq!(
        taken.try_recv().ok(),
        Some(change(KeyEvent::Delete, "k/y", "y"))
    );
    assert!(taken.try_recv().is_err());
}

/// Changes other than expiries are not held for a full watcher: it misses them, and gets
/// those after it has room again.
#[tokio::test]
async fn a_full_watcher_misses_other_changes() {
    let orch = MemoryOrchestrator::new();
    let mut rx = orch.watch("c/", &[KeyEvent::Create]);
    for i in 0..WATCH_CAPACITY + 5 {
        orch.create(&format!("c/{i:05}"), "v", None).await.unwrap();
    }
    assert_eq!(rx.len(), WATCH_CAPACITY);
    for i in 0..WATCH_CAPACITY {
        assert_eq!(rx.recv().await.unwrap().key, format!("c/{i:05}"));
    }
    assert!(rx.try_recv().is_err());
    orch.create("c/again", "v", None).await.unwrap();
    assert_eq!(
        rx.try_recv().ok(),
        Some(change(KeyEvent::Create, "c/again", "v"))
    );
}
