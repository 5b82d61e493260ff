//! The claim / lease / finish / reap protocol every `BuildStore` keeps, written once over
//! `&dyn BuildStore`. A test file runs the whole suite against its store with
//! `store_contract_tests!(open_fixture)`, where `open_fixture().await` gives a value with
//! `store() -> &dyn BuildStore` and `async fn close(self)` (which drops what the fixture made).
#![allow(dead_code)]

use std::time::Duration;

use slipway::model::{Build, BuildId, BuildRequest, SourceInfo, Status, Timestamp};
use slipway::store::{
    BuildStore, ExpiredLease, Lease, ListFilter, Outcome, QueuedBuild, Reaped, StoreError,
};

/// One `#[tokio::test]` per behaviour below, each on a fresh store from `$open`.
macro_rules! store_contract_tests {
    ($open:path) => {
        store_contract_tests!(@each $open;
            creating_the_same_id_twice_is_refused,
            a_claim_makes_the_build_running_on_that_node_with_the_next_attempt,
            second_agent_cannot_claim_a_running_build,
            the_queue_lists_oldest_first,
            a_stale_attempt_can_neither_renew_nor_finish,
            renewal_reports_a_cancel_request,
            cancelling_a_queued_build_ends_it_at_once_and_nobody_can_claim_it,
            cancelling_a_finished_build_is_refused_with_its_status,
            an_expired_lease_is_requeued_then_failed_after_max_attempts,
            a_renewed_lease_is_not_reaped,
            a_released_build_is_queued_again_in_its_old_place,
            a_build_reads_back_with_every_field,
            listing_pages_newest_first_with_filters,
            listing_filters_by_status,
        );
    };
    (@each $open:path; $($behaviour:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $behaviour() {
                let fixture = $open().await;
                store_contract::$behaviour(fixture.store()).await;
                fixture.close().await;
            }
        )*
    };
}

pub(crate) use store_contract_tests;

fn queued_build(app: &str) -> Build {
    let request = BuildRequest {
        app: app.parse().unwrap(),
        options: Default::default(),
        description: None,
    };
    let source = SourceInfo {
        bytes: 10,
        sha256: "ab".repeat(32),
    };
    Build::new_queued(BuildId::new(), request, source)
}

fn soon() -> Timestamp {
    Timestamp::now().plus(Duration::from_secs(30))
}

async fn enqueue(store: &dyn BuildStore) -> Build {
    let build = queued_build("app");
    store.create(&build).await.unwrap();
    build
}

async fn claim_as(store: &dyn BuildStore, build: &Build, node: &str) -> Option<Build> {
    let candidate = QueuedBuild {
        id: build.id,
        attempt: build.attempt,
    };
    store.claim(&candidate, node, soon()).await.unwrap()
}

fn lease(build: &Build, node: &str) -> Lease {
    Lease {
        id: build.id,
        attempt: build.attempt,
        node: node.to_string(),
    }
}

fn succeeded() -> Outcome {
    Outcome {
        status: Status::Succeeded,
        image: Some("slipway/app:x".into()),
        digest: None,
        error: None,
        cached_steps: Some(1),
        total_steps: Some(2),
    }
}

async fn ids(store: &dyn BuildStore, filter: &ListFilter) -> Vec<BuildId> {
    store
        .list(filter)
        .await
        .unwrap()
        .iter()
        .map(|b| b.id)
        .collect()
}

pub async fn creating_the_same_id_twice_is_refused(store: &dyn BuildStore) {
    let build = enqueue(store).await;
    assert!(matches!(
        store.create(&build).await,
        Err(StoreError::AlreadyExists(id)) if id == build.id
    ));
}

pub async fn a_claim_makes_the_build_running_on_that_node_with_the_next_attempt(
    store: &dyn BuildStore,
) {
    let build = enqueue(store).await;
    let claimed = claim_as(store, &build, "node-a").await.unwrap();
    assert_eq!(claimed.status, Status::Running);
    assert_eq!(claimed.node.as_deref(), Some("node-a"));
    assert_eq!(claimed.attempt, 1);
    assert!(claimed.started_at.is_some());
    assert_eq!(store.queued(10).await.unwrap(), vec![]);
}

pub async fn second_agent_cannot_claim_a_running_build(store: &dyn BuildStore) {
    let build = enqueue(store).await;
    claim_as(store, &build, "node-a").await.unwrap();
    assert_eq!(claim_as(store, &build, "node-b").await, None);
    let now = store.get(build.id).await.unwrap().unwrap();
    assert_eq!(now.node.as_deref(), Some("node-a"));
}

pub async fn the_queue_lists_oldest_first(store: &dyn BuildStore) {
    let first = enqueue(store).await;
    let second = enqueue(store).await;
    let ids: Vec<BuildId> = store
        .queued(10)
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.id)
        .collect();
    assert_eq!(ids, vec![first.id, second.id]);
}

pub async fn a_stale_attempt_can_neither_renew_nor_finish(store: &dyn BuildStore) {
    let build = enqueue(store).await;
    let first = claim_as(store, &build, "node-a").await.unwrap();
    // node-a gives the build back; a reaper holding the old lease view must not touch it.
    let expired = ExpiredLease {
        id: build.id,
        attempt: 1,
        lease_until: Timestamp::from_millis(0),
    };
    store.release(&lease(&first, "node-a")).await.unwrap();
    let requeued = store.get(build.id).await.unwrap().unwrap();
    assert_eq!(store.reap(&expired, 3).await.unwrap(), Reaped::Skipped);
    let second = claim_as(store, &requeued, "node-b").await.unwrap();
    assert_eq!(second.attempt, 2);

    let stale = lease(&first, "node-a");
    assert!(matches!(
        store.renew(&stale, soon()).await,
        Err(StoreError::LeaseLost { attempt: 1, .. })
    ));
    assert!(matches!(
        store.finish(&stale, &succeeded()).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(matches!(
        store.release(&stale).await,
        Err(StoreError::LeaseLost { .. })
    ));
    store
        .finish(&lease(&second, "node-b"), &succeeded())
        .await
        .unwrap();
    let done = store.get(build.id).await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.node.as_deref(), done.attempt),
        (Status::Succeeded, Some("node-b"), 2)
    );
}

pub async fn renewal_reports_a_cancel_request(store: &dyn BuildStore) {
    let build = enqueue(store).await;
    let running = claim_as(store, &build, "node-a").await.unwrap();
    let held = lease(&running, "node-a");
    assert!(!store.renew(&held, soon()).await.unwrap().cancel_requested);
    let flagged = store.request_cancel(build.id).await.unwrap();
    assert_eq!(
        (flagged.status, flagged.cancel_requested),
        (Status::Running, true)
    );
    assert!(store.renew(&held, soon()).await.unwrap().cancel_requested);
}

pub async fn cancelling_a_queued_build_ends_it_at_once_and_nobody_can_claim_it(
    store: &dyn BuildStore,
) {
    let build = enqueue(store).await;
    let cancelled = store.request_cancel(build.id).await.unwrap();
    assert_eq!(cancelled.status, Status::Cancelled);
    assert!(cancelled.finished_at.is_some());
    assert_eq!(claim_as(store, &build, "node-a").await, None);
    assert_eq!(store.queued(10).await.unwrap(), vec![]);
}

pub async fn cancelling_a_finished_build_is_refused_with_its_status(store: &dyn BuildStore) {
    let build = enqueue(store).await;
    let running = claim_as(store, &build, "node-a").await.unwrap();
    store
        .finish(&lease(&running, "node-a"), &succeeded())
        .await
        .unwrap();
    assert!(matches!(
        store.request_cancel(build.id).await,
        Err(StoreError::AlreadyFinished {
            status: Status::Succeeded,
            ..
        })
    ));
    assert!(matches!(
        store.request_cancel(BuildId::new()).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn an_expired_lease_is_requeued_then_failed_after_max_attempts(store: &dyn BuildStore) {
    let build = enqueue(store).await;
    let mut current = build.clone();
    for attempt in 1..=2 {
        let candidate = QueuedBuild {
            id: build.id,
            attempt: current.attempt,
        };
        let running = store
            .claim(&candidate, "node-a", Timestamp::from_millis(1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(running.attempt, attempt);
        let expired = store.expired_leases(Timestamp::now()).await.unwrap();
        assert_eq!(expired.len(), 1);
        let reaped = store.reap(&expired[0], 2).await.unwrap();
        current = store.get(build.id).await.unwrap().unwrap();
        if attempt == 1 {
            assert_eq!((reaped, current.status), (Reaped::Requeued, Status::Queued));
            assert_eq!(store.queued(10).await.unwrap().len(), 1);
        } else {
            assert_eq!((reaped, current.status), (Reaped::Failed, Status::Failed));
            assert!(current.error.unwrap().starts_with("agent lost"));
            assert_eq!(store.queued(10).await.unwrap(), vec![]);
        }
    }
    assert_eq!(
        store.expired_leases(Timestamp::now()).await.unwrap(),
        vec![]
    );
}

pub async fn a_renewed_lease_is_not_reaped(store: &dyn BuildStore) {
    let build = enqueue(store).await;
    let candidate = QueuedBuild {
        id: build.id,
        attempt: 0,
    };
    let running = store
        .claim(&candidate, "node-a", Timestamp::from_millis(1))
        .await
        .unwrap()
        .unwrap();
    let expired = store.expired_leases(Timestamp::now()).await.unwrap();
    store
        .renew(&lease(&running, "node-a"), soon())
        .await
        .unwrap();
    assert_eq!(store.reap(&expired[0], 3).await.unwrap(), Reaped::Skipped);
    assert_eq!(
        store.get(build.id).await.unwrap().unwrap().status,
        Status::Running
    );
}

pub async fn a_released_build_is_queued_again_in_its_old_place(store: &dyn BuildStore) {
    let first = enqueue(store).await;
    let second = enqueue(store).await;
    let running = claim_as(store, &first, "node-a").await.unwrap();
    store.release(&lease(&running, "node-a")).await.unwrap();
    let again = store.get(first.id).await.unwrap().unwrap();
    assert_eq!(
        (again.status, again.node, again.attempt),
        (Status::Queued, None, 1)
    );
    let queue = store.queued(10).await.unwrap();
    assert_eq!(
        queue,
        vec![
            QueuedBuild {
                id: first.id,
                attempt: 1
            },
            QueuedBuild {
                id: second.id,
                attempt: 0
            },
        ]
    );
}

pub async fn a_build_reads_back_with_every_field(store: &dyn BuildStore) {
    let mut build = queued_build("app");
    build.description = Some("release candidate".into());
    build.options.add_build_arg("VERSION=1.2").unwrap();
    build.options.set_target("final").unwrap();
    build.options.no_cache = true;
    store.create(&build).await.unwrap();
    assert_eq!(store.get(build.id).await.unwrap(), Some(build.clone()));

    let running = claim_as(store, &build, "node-a").await.unwrap();
    let outcome = Outcome {
        status: Status::Failed,
        image: None,
        digest: Some("sha256:0123".into()),
        error: Some("step 2 failed".into()),
        cached_steps: Some(0),
        total_steps: Some(3),
    };
    store
        .finish(&lease(&running, "node-a"), &outcome)
        .await
        .unwrap();
    let done = store.get(build.id).await.unwrap().unwrap();
    assert!(done.finished_at.is_some());
    let expected = Build {
        status: Status::Failed,
        finished_at: done.finished_at,
        digest: outcome.digest,
        error: outcome.error,
        cached_steps: Some(0),
        total_steps: Some(3),
        ..running
    };
    assert_eq!(done, expected);
    assert_eq!(store.get(BuildId::new()).await.unwrap(), None);
}

pub async fn listing_pages_newest_first_with_filters(store: &dyn BuildStore) {
    let mut created = Vec::new();
    for app in ["a", "b", "a", "a"] {
        let build = queued_build(app);
        store.create(&build).await.unwrap();
        created.push(build.id);
    }
    let filter = ListFilter {
        app: Some("a".parse().unwrap()),
        limit: 2,
        ..ListFilter::default()
    };
    assert_eq!(ids(store, &filter).await, vec![created[3], created[2]]);
    let next = ListFilter {
        before: Some(created[2]),
        ..filter
    };
    assert_eq!(ids(store, &next).await, vec![created[0]]);
    let everything = ListFilter {
        limit: 10,
        ..ListFilter::default()
    };
    let newest_first: Vec<BuildId> = created.iter().rev().copied().collect();
    assert_eq!(ids(store, &everything).await, newest_first);
}

pub async fn listing_filters_by_status(store: &dyn BuildStore) {
    let oldest = enqueue(store).await;
    let running = enqueue(store).await;
    let newest = enqueue(store).await;
    claim_as(store, &running, "node-a").await.unwrap();
    let queued = ListFilter {
        status: Some(Status::Queued),
        limit: 1,
        ..ListFilter::default()
    };
    assert_eq!(ids(store, &queued).await, vec![newest.id]);
    let older_queued = ListFilter {
        before: Some(newest.id),
        ..queued.clone()
    };
    assert_eq!(ids(store, &older_queued).await, vec![oldest.id]);
}
