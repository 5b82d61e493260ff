//! Where builds live and how agents take turns on them: the claim / lease / finish / reap
//! protocol of DESIGN.md as one trait, with SQLite (embedded) and DynamoDB (cluster) behind it.
//! Every state change is a conditional write; `attempt` is the fencing token.

pub mod dynamo;
mod sqlite;

pub use dynamo::{DynamoStore, SetupReport, ensure_table};
pub use sqlite::SqliteStore;

use async_trait::async_trait;

use crate::model::{AppName, Build, BuildId, Status, Timestamp};

/// A store operation that could not be done. Conflicts are variants, not strings, because the
/// agent acts on them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("build {0} already exists")]
    AlreadyExists(BuildId),
    #[error("no build with id {0}")]
    NotFound(BuildId),
    #[error("build {id} is already {status}")]
    AlreadyFinished { id: BuildId, status: Status },
    /// The build moved on without us (reaped, requeued, finished elsewhere): stop, write nothing.
    #[error("lease on build {id} attempt {attempt} is lost")]
    LeaseLost { id: BuildId, attempt: u32 },
    #[error("the build store is unavailable: {0}")]
    Unavailable(String),
    #[error("the build store holds a row it cannot read: {0}")]
    Corrupt(String),
}

/// Which builds a listing wants, newest first.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub app: Option<AppName>,
    pub status: Option<Status>,
    /// Only builds older than this id (the `next` cursor of the previous page).
    pub before: Option<BuildId>,
    pub limit: usize,
}

/// A queued build as the queue shows it: enough to attempt a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedBuild {
    pub id: BuildId,
    /// The attempt number the claim must still see (condition of the claim write).
    pub attempt: u32,
}

/// Proof that this node holds a build: every write after the claim is conditional on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: BuildId,
    pub attempt: u32,
    pub node: String,
}

/// What a renewal learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    pub cancel_requested: bool,
}

/// How an attempt ended, as written by `finish`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    pub image: Option<String>,
    pub digest: Option<String>,
    pub error: Option<String>,
    pub cached_steps: Option<u32>,
    pub total_steps: Option<u32>,
}

/// A running build whose lease ran out: its agent is presumed lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredLease {
    pub id: BuildId,
    pub attempt: u32,
    pub lease_until: Timestamp,
}

/// What reaping an expired lease did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaped {
    Requeued,
    /// `max_attempts` reached: the build is failed ("agent lost").
    Failed,
    /// Someone else reaped or renewed it first.
    Skipped,
}

#[async_trait]
pub trait BuildStore: Send + Sync {
    /// Enqueue: writes a new queued build, only if the id is new.
    async fn create(&self, build: &Build) -> Result<(), StoreError>;
    async fn get(&self, id: BuildId) -> Result<Option<Build>, StoreError>;
    async fn list(&self, filter: &ListFilter) -> Result<Vec<Build>, StoreError>;
    /// The oldest queued builds (a hint: the claim decides).
    async fn queued(&self, limit: usize) -> Result<Vec<QueuedBuild>, StoreError>;
    /// Claim: `queued → running` owned by `node`, `attempt + 1`, if the build is still queued at
    /// the attempt we saw. `None` means another node won.
    async fn claim(
        &self,
        candidate: &QueuedBuild,
        node: &str,
        lease_until: Timestamp,
    ) -> Result<Option<Build>, StoreError>;
    /// Extends the lease if we still hold it; reports a pending cancel request.
    async fn renew(&self, lease: &Lease, lease_until: Timestamp) -> Result<Renewal, StoreError>;
    /// Writes the outcome if we still hold the lease.
    async fn finish(&self, lease: &Lease, outcome: &Outcome) -> Result<(), StoreError>;
    /// Gives a build back to the queue at once (drain), if we still hold it.
    async fn release(&self, lease: &Lease) -> Result<(), StoreError>;
    /// Cancel: a queued build is cancelled at once; a running one is flagged for its owner.
    async fn request_cancel(&self, id: BuildId) -> Result<Build, StoreError>;
    /// Running builds whose lease ended before `before`.
    async fn expired_leases(&self, before: Timestamp) -> Result<Vec<ExpiredLease>, StoreError>;
    /// Requeues an expired build, or fails it once `max_attempts` is reached, unless it moved.
    async fn reap(&self, expired: &ExpiredLease, max_attempts: u32) -> Result<Reaped, StoreError>;
    /// Answers when the store is reachable.
    async fn ping(&self) -> Result<(), StoreError>;
}
