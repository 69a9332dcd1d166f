//! The suite's test of DetermineCachedTag's lookup (see `suite.rs`).

use buildman_core::Phase;
use buildman_store::Store;
use chrono::{TimeDelta, Utc};

use crate::suite::{Backend, create, new_build};

fn tags(names: &[&str]) -> Vec<String> {
    names.iter().map(|t| t.to_string()).collect()
}

/// Only a complete build's tags count, per repository, in the asking build's order; a build
/// without tags pushed `latest`; the answer outlives the build rows retention deletes.
pub async fn a_complete_builds_tags_are_found_for_the_cached_tag<B: Backend>() {
    let db = B::fresh().await;
    let store = db.open().await;
    let pushed = |repo: &'static str, asked: &[&str]| {
        let asked = tags(asked);
        let store = &store;
        async move { store.pushed_tag("ns", repo, &asked).await.unwrap() }
    };
    assert_eq!(pushed("app", &["latest"]).await, None, "nothing pushed yet");

    // `create` asks for latest and v1.
    let done = create(&store, "ns", "app").await;
    let failed = (store.create_build(
        buildman_core::NewBuild {
            tags: tags(&["v2"]),
            ..new_build("ns", "app")
        },
        3,
        None,
    ))
    .await
    .unwrap();
    store
        .set_phase(done.id, Phase::Complete, &[], None, None)
        .await
        .unwrap();
    store
        .set_phase(failed.id, Phase::Error, &[], None, None)
        .await
        .unwrap();
    assert_eq!(
        pushed("app", &["v2", "v1", "latest"]).await.as_deref(),
        Some("v1")
    );
    assert_eq!(
        pushed("app", &["latest", "v1"]).await.as_deref(),
        Some("latest")
    );
    assert_eq!(
        pushed("app", &["v2"]).await,
        None,
        "an error pushes nothing"
    );
    assert_eq!(
        pushed("other", &["v1"]).await,
        None,
        "another repository's tags"
    );

    let untagged = (store.create_build(
        buildman_core::NewBuild {
            tags: vec![],
            ..new_build("ns", "bare")
        },
        3,
        None,
    ))
    .await
    .unwrap();
    store
        .set_phase(untagged.id, Phase::Complete, &[], None, None)
        .await
        .unwrap();
    assert_eq!(
        pushed("bare", &["v9", "latest"]).await.as_deref(),
        Some("latest")
    );

    // Retention deletes the builds (over for good: final, out of the queue, their contexts
    // pruned); the registry keeps the tags.
    let ids = [done.id, failed.id, untagged.id];
    for id in ids {
        store.delete_item(id).await.unwrap();
    }
    store.mark_contexts_pruned(&ids).await.unwrap();
    let deleted = store
        .delete_ended_builds(Utc::now() + TimeDelta::seconds(60), 100)
        .await
        .unwrap();
    assert_eq!(deleted, 3);
    assert_eq!(pushed("app", &["v1"]).await.as_deref(), Some("v1"));
}
