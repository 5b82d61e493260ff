//! Where uploaded source archives live until a build has used them: a local directory in
//! embedded mode, S3 in cluster mode. Uploads are staged and only become visible on commit, so a
//! rejected upload leaves nothing behind.

mod fs;
mod s3;

pub use fs::FsSourceStore;
pub use s3::{ABANDONED_UPLOAD_RULE, PART_SIZE, S3SourceStore, ensure_bucket, s3_client};

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

use crate::model::BuildId;

/// The bytes of a stored source archive, streamed.
pub type SourceStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("no stored source for build {0}")]
    NotFound(BuildId),
    #[error("source storage failed while {action}: {source}")]
    Io {
        action: &'static str,
        source: std::io::Error,
    },
    /// The object store answered with an error (after the SDK's retries) or not at all.
    #[error("source storage failed while {action}: {detail}")]
    Remote {
        action: &'static str,
        detail: String,
    },
}

/// An upload in progress: written chunk by chunk, then committed or aborted.
#[async_trait]
pub trait SourceUpload: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<(), SourceError>;
    /// Makes the source readable under its build id.
    async fn commit(self: Box<Self>) -> Result<(), SourceError>;
    /// Discards everything written so far.
    async fn abort(self: Box<Self>);
}

#[async_trait]
pub trait SourceStore: Send + Sync {
    async fn begin(&self, id: BuildId) -> Result<Box<dyn SourceUpload>, SourceError>;
    async fn open(&self, id: BuildId) -> Result<SourceStream, SourceError>;
    async fn delete(&self, id: BuildId) -> Result<(), SourceError>;
}
