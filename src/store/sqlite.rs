//! The embedded build store: the `builds` table of the local cache, with the same conditional
//! writes the DynamoDB store makes (`UPDATE … WHERE status = 'queued' AND attempt = ?`).

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, params};

use super::{
    BuildStore, ExpiredLease, Lease, ListFilter, Outcome, QueuedBuild, Reaped, Renewal, StoreError,
};
use crate::cache::{Cache, CacheError};
use crate::model::{Build, BuildId, SourceInfo, Timestamp};

pub struct SqliteStore {
    cache: Cache,
}

impl SqliteStore {
    pub fn new(cache: Cache) -> Self {
        SqliteStore { cache }
    }
}

impl From<CacheError> for StoreError {
    fn from(e: CacheError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

const COLUMNS: &str = "id, app, status, created_at, started_at, finished_at, node, attempt, \
     source_bytes, source_sha256, options, description, image, digest, error, cached_steps, \
     total_steps, cancel_requested";

fn read_build(row: &Row<'_>) -> rusqlite::Result<Result<Build, StoreError>> {
    let id: String = row.get(0)?;
    let app: String = row.get(1)?;
    let status: String = row.get(2)?;
    let options: String = row.get(10)?;
    let ts = |i: usize| -> rusqlite::Result<Option<Timestamp>> {
        Ok(row.get::<_, Option<i64>>(i)?.map(Timestamp::from_millis))
    };
    let corrupt = |what: &str| StoreError::Corrupt(format!("build {id}: {what}"));
    let parsed = (|| {
        Ok(Build {
            id: id.parse().map_err(|_| corrupt("id"))?,
            app: app.parse().map_err(|_| corrupt("app"))?,
            status: status.parse().map_err(|_| corrupt("status"))?,
            created_at: Timestamp::from_millis(row.get(3).map_err(|_| corrupt("created_at"))?),
            started_at: ts(4).map_err(|_| corrupt("started_at"))?,
            finished_at: ts(5).map_err(|_| corrupt("finished_at"))?,
            node: row.get(6).map_err(|_| corrupt("node"))?,
            attempt: row.get(7).map_err(|_| corrupt("attempt"))?,
            source: SourceInfo {
                bytes: row.get::<_, i64>(8).map_err(|_| corrupt("source_bytes"))? as u64,
                sha256: row.get(9).map_err(|_| corrupt("source_sha256"))?,
            },
            options: serde_json::from_str(&options).map_err(|_| corrupt("options"))?,
            description: row.get(11).map_err(|_| corrupt("description"))?,
            image: row.get(12).map_err(|_| corrupt("image"))?,
            digest: row.get(13).map_err(|_| corrupt("digest"))?,
            error: row.get(14).map_err(|_| corrupt("error"))?,
            cached_steps: row.get(15).map_err(|_| corrupt("cached_steps"))?,
            total_steps: row.get(16).map_err(|_| corrupt("total_steps"))?,
            cancel_requested: row.get(17).map_err(|_| corrupt("cancel_requested"))?,
        })
    })();
    Ok(parsed)
}

fn select_one(
    conn: &rusqlite::Connection,
    id: &str,
) -> rusqlite::Result<Option<Result<Build, StoreError>>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM builds WHERE id = ?1"),
        [id],
        read_build,
    )
    .optional()
}

#[async_trait]
impl BuildStore for SqliteStore {
    async fn create(&self, build: &Build) -> Result<(), StoreError> {
        let b = build.clone();
        let options = serde_json::to_string(&b.options)
            .map_err(|e| StoreError::Corrupt(format!("options do not serialize: {e}")))?;
        let inserted = self
            .cache
            .call(move |c| {
                c.execute(
                    "INSERT INTO builds (id, app, status, created_at, attempt, source_bytes, \
                     source_sha256, options, description) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (id) DO NOTHING",
                    params![
                        b.id.to_string(),
                        b.app.as_str(),
                        b.status.as_str(),
                        b.created_at.millis(),
                        b.attempt,
                        b.source.bytes as i64,
                        b.source.sha256,
                        options,
                        b.description,
                    ],
                )
            })
            .await?;
        if inserted == 0 {
            return Err(StoreError::AlreadyExists(build.id));
        }
        Ok(())
    }

    async fn get(&self, id: BuildId) -> Result<Option<Build>, StoreError> {
        let key = id.to_string();
        self.cache
            .call(move |c| select_one(c, &key))
            .await?
            .transpose()
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<Build>, StoreError> {
        let app = filter.app.as_ref().map(|a| a.to_string());
        let status = filter.status.map(|s| s.as_str());
        let before = filter.before.map(|b| b.to_string());
        let limit = filter.limit as i64;
        let rows = self
            .cache
            .call(move |c| {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM builds \
                     WHERE (?1 IS NULL OR app = ?1) AND (?2 IS NULL OR status = ?2) \
                       AND (?3 IS NULL OR id < ?3) \
                     ORDER BY id DESC LIMIT ?4"
                ))?;
                let rows = stmt.query_map(params![app, status, before, limit], read_build)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter().collect()
    }

    async fn queued(&self, limit: usize) -> Result<Vec<QueuedBuild>, StoreError> {
        let limit = limit as i64;
        let rows = self
            .cache
            .call(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT id, attempt FROM builds WHERE status = 'queued' ORDER BY id LIMIT ?1",
                )?;
                let rows = stmt.query_map([limit], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter()
            .map(|(id, attempt)| {
                Ok(QueuedBuild {
                    id: id
                        .parse()
                        .map_err(|_| StoreError::Corrupt(format!("queued id {id}")))?,
                    attempt,
                })
            })
            .collect()
    }

    async fn claim(
        &self,
        candidate: &QueuedBuild,
        node: &str,
        lease_until: Timestamp,
    ) -> Result<Option<Build>, StoreError> {
        let key = candidate.id.to_string();
        let seen = candidate.attempt;
        let node = node.to_string();
        let now = Timestamp::now().millis();
        let claimed = self
            .cache
            .call(move |c| {
                let changed = c.execute(
                    "UPDATE builds SET status = 'running', node = ?1, attempt = attempt + 1, \
                     lease_until = ?2, started_at = ?3, cancel_requested = 0 \
                     WHERE id = ?4 AND status = 'queued' AND attempt = ?5",
                    params![node, lease_until.millis(), now, key, seen],
                )?;
                if changed == 0 {
                    return Ok(None);
                }
                select_one(c, &key)
            })
            .await?;
        claimed.transpose()
    }

    async fn renew(&self, lease: &Lease, lease_until: Timestamp) -> Result<Renewal, StoreError> {
        let (key, node, attempt) = (lease.id.to_string(), lease.node.clone(), lease.attempt);
        let cancel_requested: Option<bool> = self
            .cache
            .call(move |c| {
                c.query_row(
                    "UPDATE builds SET lease_until = ?1 \
                     WHERE id = ?2 AND node = ?3 AND attempt = ?4 AND status = 'running' \
                     RETURNING cancel_requested",
                    params![lease_until.millis(), key, node, attempt],
                    |r| r.get(0),
                )
                .optional()
            })
            .await?;
        match cancel_requested {
            Some(cancel_requested) => Ok(Renewal { cancel_requested }),
            None => Err(lease_lost(lease)),
        }
    }

    async fn finish(&self, lease: &Lease, outcome: &Outcome) -> Result<(), StoreError> {
        let (key, node, attempt) = (lease.id.to_string(), lease.node.clone(), lease.attempt);
        let o = outcome.clone();
        let now = Timestamp::now().millis();
        let changed = self
            .cache
            .call(move |c| {
                c.execute(
                    "UPDATE builds SET status = ?1, finished_at = ?2, image = ?3, digest = ?4, \
                     error = ?5, cached_steps = ?6, total_steps = ?7, lease_until = NULL \
                     WHERE id = ?8 AND node = ?9 AND attempt = ?10 AND status = 'running'",
                    params![
                        o.status.as_str(),
                        now,
                        o.image,
                        o.digest,
                        o.error,
                        o.cached_steps,
                        o.total_steps,
                        key,
                        node,
                        attempt
                    ],
                )
            })
            .await?;
        if changed == 0 {
            return Err(lease_lost(lease));
        }
        Ok(())
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let (key, node, attempt) = (lease.id.to_string(), lease.node.clone(), lease.attempt);
        let changed = self
            .cache
            .call(move |c| {
                c.execute(
                    "UPDATE builds SET status = 'queued', node = NULL, lease_until = NULL \
                     WHERE id = ?1 AND node = ?2 AND attempt = ?3 AND status = 'running'",
                    params![key, node, attempt],
                )
            })
            .await?;
        if changed == 0 {
            return Err(lease_lost(lease));
        }
        Ok(())
    }

    async fn request_cancel(&self, id: BuildId) -> Result<Build, StoreError> {
        let key = id.to_string();
        let now = Timestamp::now().millis();
        let found = self
            .cache
            .call(move |c| {
                let tx = c.transaction()?;
                let status: Option<String> = tx
                    .query_row("SELECT status FROM builds WHERE id = ?1", [&key], |r| r.get(0))
                    .optional()?;
                // A queued build is cancelled outright; a running one is flagged for its owner.
                match status.as_deref() {
                    Some("queued") => tx.execute(
                        "UPDATE builds SET status = 'cancelled', finished_at = ?1, \
                         error = 'cancelled before it started' WHERE id = ?2 AND status = 'queued'",
                        params![now, key],
                    )?,
                    Some("running") => tx.execute(
                        "UPDATE builds SET cancel_requested = 1 WHERE id = ?1 AND status = 'running'",
                        [&key],
                    )?,
                    _ => 0,
                };
                let build = select_one(&tx, &key)?;
                tx.commit()?;
                Ok((status, build))
            })
            .await?;
        match found {
            (_, None) => Err(StoreError::NotFound(id)),
            (Some(before), Some(build)) if before == "queued" || before == "running" => build,
            (_, Some(build)) => {
                let build = build?;
                Err(StoreError::AlreadyFinished {
                    id,
                    status: build.status,
                })
            }
        }
    }

    async fn expired_leases(&self, before: Timestamp) -> Result<Vec<ExpiredLease>, StoreError> {
        let rows = self
            .cache
            .call(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT id, attempt, lease_until FROM builds \
                     WHERE status = 'running' AND lease_until < ?1 ORDER BY id",
                )?;
                let rows = stmt.query_map([before.millis()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter()
            .map(|(id, attempt, lease_until)| {
                Ok(ExpiredLease {
                    id: id
                        .parse()
                        .map_err(|_| StoreError::Corrupt(format!("running id {id}")))?,
                    attempt,
                    lease_until: Timestamp::from_millis(lease_until),
                })
            })
            .collect()
    }

    async fn reap(&self, expired: &ExpiredLease, max_attempts: u32) -> Result<Reaped, StoreError> {
        let key = expired.id.to_string();
        let (attempt, seen) = (expired.attempt, expired.lease_until.millis());
        let now = Timestamp::now().millis();
        let give_up = attempt >= max_attempts;
        let changed = self
            .cache
            .call(move |c| {
                if give_up {
                    c.execute(
                        "UPDATE builds SET status = 'failed', finished_at = ?1, lease_until = NULL, \
                         error = 'agent lost: the node running this build stopped renewing its lease ' \
                                 || ?2 || ' times' \
                         WHERE id = ?3 AND attempt = ?2 AND lease_until = ?4 AND status = 'running'",
                        params![now, attempt, key, seen],
                    )
                } else {
                    c.execute(
                        "UPDATE builds SET status = 'queued', node = NULL, lease_until = NULL \
                         WHERE id = ?1 AND attempt = ?2 AND lease_until = ?3 AND status = 'running'",
                        params![key, attempt, seen],
                    )
                }
            })
            .await?;
        Ok(match (changed, give_up) {
            (0, _) => Reaped::Skipped,
            (_, true) => Reaped::Failed,
            (_, false) => Reaped::Requeued,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.cache
            .call(|c| c.query_row("SELECT 1", [], |_| Ok(())))
            .await?;
        Ok(())
    }
}

fn lease_lost(lease: &Lease) -> StoreError {
    StoreError::LeaseLost {
        id: lease.id,
        attempt: lease.attempt,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{BuildRequest, Status};

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        (dir, SqliteStore::new(cache))
    }

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

    async fn enqueue(store: &SqliteStore) -> Build {
        let build = queued_build("app");
        store.create(&build).await.unwrap();
        build
    }

    async fn claim_as(store: &SqliteStore, build: &Build, node: &str) -> Option<Build> {
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

    #[tokio::test]
    async fn creating_the_same_id_twice_is_refused() {
        let (_dir, store) = store();
        let build = enqueue(&store).await;
        assert!(matches!(
            store.create(&build).await,
            Err(StoreError::AlreadyExists(id)) if id == build.id
        ));
    }

    #[tokio::test]
    async fn a_claim_makes_the_build_running_on_that_node_with_the_next_attempt() {
        let (_dir, store) = store();
        let build = enqueue(&store).await;
        let claimed = claim_as(&store, &build, "node-a").await.unwrap();
        assert_eq!(claimed.status, Status::Running);
        assert_eq!(claimed.node.as_deref(), Some("node-a"));
        assert_eq!(claimed.attempt, 1);
        assert!(claimed.started_at.is_some());
        assert_eq!(store.queued(10).await.unwrap(), vec![]);
    }

    #[tokio::test]
    async fn second_agent_cannot_claim_a_running_build() {
        let (_dir, store) = store();
        let build = enqueue(&store).await;
        claim_as(&store, &build, "node-a").await.unwrap();
        assert_eq!(claim_as(&store, &build, "node-b").await, None);
        let now = store.get(build.id).await.unwrap().unwrap();
        assert_eq!(now.node.as_deref(), Some("node-a"));
    }

    #[tokio::test]
    async fn the_queue_lists_oldest_first() {
        let (_dir, store) = store();
        let first = enqueue(&store).await;
        let second = enqueue(&store).await;
        let ids: Vec<BuildId> = store
            .queued(10)
            .await
            .unwrap()
            .into_iter()
            .map(|q| q.id)
            .collect();
        assert_eq!(ids, vec![first.id, second.id]);
    }

    #[tokio::test]
    async fn a_stale_attempt_can_neither_renew_nor_finish() {
        let (_dir, store) = store();
        let build = enqueue(&store).await;
        let first = claim_as(&store, &build, "node-a").await.unwrap();
        // The lease lapses and the reaper requeues it; node-b claims attempt 2.
        let expired = ExpiredLease {
            id: build.id,
            attempt: 1,
            lease_until: Timestamp::from_millis(0),
        };
        store.release(&lease(&first, "node-a")).await.unwrap();
        let requeued = store.get(build.id).await.unwrap().unwrap();
        assert_eq!(store.reap(&expired, 3).await.unwrap(), Reaped::Skipped);
        let second = claim_as(&store, &requeued, "node-b").await.unwrap();
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

    #[tokio::test]
    async fn renewal_reports_a_cancel_request() {
        let (_dir, store) = store();
        let build = enqueue(&store).await;
        let running = claim_as(&store, &build, "node-a").await.unwrap();
        let held = lease(&running, "node-a");
        assert!(!store.renew(&held, soon()).await.unwrap().cancel_requested);
        let flagged = store.request_cancel(build.id).await.unwrap();
        assert_eq!(
            (flagged.status, flagged.cancel_requested),
            (Status::Running, true)
        );
        assert!(store.renew(&held, soon()).await.unwrap().cancel_requested);
    }

    #[tokio::test]
    async fn cancelling_a_queued_build_ends_it_at_once_and_nobody_can_claim_it() {
        let (_dir, store) = store();
        let build = enqueue(&store).await;
        let cancelled = store.request_cancel(build.id).await.unwrap();
        assert_eq!(cancelled.status, Status::Cancelled);
        assert!(cancelled.finished_at.is_some());
        assert_eq!(claim_as(&store, &build, "node-a").await, None);
    }

    #[tokio::test]
    async fn cancelling_a_finished_build_is_refused_with_its_status() {
        let (_dir, store) = store();
        let build = enqueue(&store).await;
        let running = claim_as(&store, &build, "node-a").await.unwrap();
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

    #[tokio::test]
    async fn an_expired_lease_is_requeued_then_failed_after_max_attempts() {
        let (_dir, store) = store();
        let build = enqueue(&store).await;
        let mut current = build.clone();
        for attempt in 1..=2 {
            let running = store
                .claim(
                    &QueuedBuild {
                        id: build.id,
                        attempt: current.attempt,
                    },
                    "node-a",
                    Timestamp::from_millis(1),
                )
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
            } else {
                assert_eq!((reaped, current.status), (Reaped::Failed, Status::Failed));
                assert!(current.error.unwrap().starts_with("agent lost"));
            }
        }
    }

    #[tokio::test]
    async fn a_renewed_lease_is_not_reaped() {
        let (_dir, store) = store();
        let build = enqueue(&store).await;
        let running = store
            .claim(
                &QueuedBuild {
                    id: build.id,
                    attempt: 0,
                },
                "node-a",
                Timestamp::from_millis(1),
            )
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

    #[tokio::test]
    async fn listing_pages_newest_first_with_filters() {
        let (_dir, store) = store();
        let mut ids = Vec::new();
        for app in ["a", "b", "a", "a"] {
            let build = queued_build(app);
            store.create(&build).await.unwrap();
            ids.push(build.id);
        }
        let filter = ListFilter {
            app: Some("a".parse().unwrap()),
            limit: 2,
            ..ListFilter::default()
        };
        let page: Vec<BuildId> = store
            .list(&filter)
            .await
            .unwrap()
            .iter()
            .map(|b| b.id)
            .collect();
        assert_eq!(page, vec![ids[3], ids[2]]);
        let next = ListFilter {
            before: Some(ids[2]),
            ..filter
        };
        let page: Vec<BuildId> = store
            .list(&next)
            .await
            .unwrap()
            .iter()
            .map(|b| b.id)
            .collect();
        assert_eq!(page, vec![ids[0]]);
    }
}
