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

// The store's behaviour is specified once for both stores: tests/store_contract, run against
// SQLite by tests/sqlite_store.rs and against DynamoDB (moto) by tests/dynamo_store.rs.
