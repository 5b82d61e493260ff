//! The node's local SQLite cache (`data_dir/cache.db`): the builds this node saw, their attempts
//! with per-phase timings, log lines and events. In embedded mode its `builds` table is the store.
//!
//! One connection behind a mutex, used from blocking threads: SQLite serialises writers anyway,
//! and WAL lets operators read the file with `sqlite3` while the node runs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

/// Versioned schema: `MIGRATIONS[i]` moves `PRAGMA user_version` from `i` to `i + 1`.
/// Append only; never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: builds (the embedded store), attempts, log lines, events.
    "CREATE TABLE builds (
        id TEXT PRIMARY KEY,
        app TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        node TEXT,
        attempt INTEGER NOT NULL DEFAULT 0,
        source_bytes INTEGER NOT NULL,
        source_sha256 TEXT NOT NULL,
        options TEXT NOT NULL,
        description TEXT,
        image TEXT,
        digest TEXT,
        error TEXT,
        cached_steps INTEGER,
        total_steps INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        lease_until INTEGER
     );
     CREATE INDEX builds_by_status ON builds (status, id);
     CREATE INDEX builds_by_app ON builds (app, id);
     CREATE TABLE attempts (
        build_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        node TEXT NOT NULL,
        claimed_at INTEGER NOT NULL,
        finished_at INTEGER,
        fetch_ms INTEGER,
        build_ms INTEGER,
        push_ms INTEGER,
        cached_steps INTEGER,
        total_steps INTEGER,
        outcome TEXT,
        error TEXT,
        PRIMARY KEY (build_id, attempt)
     );
     CREATE TABLE log_lines (
        build_id TEXT NOT NULL,
        offset INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        line TEXT NOT NULL,
        PRIMARY KEY (build_id, offset)
     ) WITHOUT ROWID;
     CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        build_id TEXT,
        kind TEXT NOT NULL,
        detail TEXT
     );
     CREATE INDEX events_by_build ON events (build_id, id);",
];

/// The cache file could not be opened or queried.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot open the local cache {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot create the data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the local cache {path} has schema version {found}, newer than this binary knows ({known}); upgrade slipway"
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error("local cache query failed: {0}")]
    Query(#[from] rusqlite::Error),
    #[error("local cache worker failed: {0}")]
    Worker(String),
}

/// A shared handle on `cache.db`.
#[derive(Clone)]
pub struct Cache {
    conn: Arc<Mutex<Connection>>,
}

impl Cache {
    pub const FILE_NAME: &'static str = "cache.db";

    /// Opens (creating if needed) `data_dir/cache.db` and brings its schema up to date.
    pub fn open(data_dir: &Path) -> Result<Cache, CacheError> {
        std::fs::create_dir_all(data_dir).map_err(|source| CacheError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(Self::FILE_NAME);
        let open_err = |source| CacheError::Open {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(open_err)?;
        // WAL: readers (operators, `slipway cache`) never block the node; NORMAL sync is
        // durable across process crashes, which is what a cache needs.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
        )
        .map_err(open_err)?;
        migrate(&mut conn, &path)?;
        Ok(Cache {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `work` on the connection in a blocking thread.
    pub async fn call<T, F>(&self, work: F) -> Result<T, CacheError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| CacheError::Worker("connection lock poisoned".into()))?;
            work(&mut conn).map_err(CacheError::from)
        })
        .await
        .map_err(|e| CacheError::Worker(e.to_string()))?
    }

    /// Records something that happened to a build on this node (claim, lease lost, reap, …).
    pub async fn record_event(
        &self,
        build_id: Option<String>,
        kind: &'static str,
        detail: String,
    ) -> Result<(), CacheError> {
        let at = crate::model::Timestamp::now().millis();
        self.call(move |c| {
            c.execute(
                "INSERT INTO events (at, build_id, kind, detail) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![at, build_id, kind, detail],
            )
            .map(|_| ())
        })
        .await
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), CacheError> {
    let known = MIGRATIONS.len() as u32;
    let found: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > known {
        return Err(CacheError::TooNew {
            path: path.to_path_buf(),
            found,
            known,
        });
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version as u32 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_twice_keeps_the_schema_at_the_latest_version() {
        let dir = tempfile::tempdir().unwrap();
        drop(Cache::open(dir.path()).unwrap());
        let cache = Cache::open(dir.path()).unwrap();
        let conn = cache.conn.lock().unwrap();
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as u32);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn a_cache_from_a_newer_binary_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(Cache::FILE_NAME)).unwrap();
            conn.pragma_update(None, "user_version", 99).unwrap();
        }
        assert!(matches!(
            Cache::open(dir.path()),
            Err(CacheError::TooNew { found: 99, .. })
        ));
    }
}
