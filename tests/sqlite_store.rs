//! The store contract (tests/store_contract) against the embedded SQLite store.

mod store_contract;

use slipway::cache::Cache;
use slipway::store::{BuildStore, SqliteStore};

use store_contract::store_contract_tests;

struct SqliteFixture {
    _dir: tempfile::TempDir,
    store: SqliteStore,
}

impl SqliteFixture {
    fn store(&self) -> &dyn BuildStore {
        &self.store
    }

    async fn close(self) {}
}

async fn sqlite_store() -> SqliteFixture {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    SqliteFixture {
        store: SqliteStore::new(cache),
        _dir: dir,
    }
}

store_contract_tests!(sqlite_store);
