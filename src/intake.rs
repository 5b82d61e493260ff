//! Accepting an uploaded source archive: the body streams into the source store while it is
//! hashed, counted against the size limit, and checked by the archive checker on a blocking
//! thread — one pass, bounded memory. A rejected upload is aborted and leaves nothing behind.

use std::io::Read;

use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::archive::{ArchiveError, ArchiveLimits, check_archive};
use crate::model::{BuildId, SourceInfo};
use crate::sources::{SourceError, SourceStore, SourceUpload};

/// Chunks in flight between the upload and the checker thread; bounds memory per upload.
const CHECKER_QUEUE: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("the upload is larger than the limit of {limit} bytes (limits.max_source_bytes)")]
    SourceTooLarge { limit: u64 },
    #[error("the upload is empty: send a gzip-compressed tar of the build context")]
    EmptyBody,
    #[error("{0}")]
    Archive(#[from] ArchiveError),
    #[error("reading the upload failed: {0}")]
    Body(String),
    #[error(transparent)]
    Storage(#[from] SourceError),
    #[error("the archive checker failed: {0}")]
    Checker(String),
}

/// Streams `body` into `sources` under `id`, checking it on the way. On success the source is
/// committed and its size and sha256 returned; on any error nothing is stored.
pub async fn receive_source<S, B, E>(
    id: BuildId,
    body: S,
    sources: &dyn SourceStore,
    limits: &ArchiveLimits,
    max_source_bytes: u64,
    dockerfile: &str,
) -> Result<SourceInfo, IntakeError>
where
    S: Stream<Item = Result<B, E>>,
    B: Buf,
    E: std::fmt::Display,
{
    let mut upload = sources.begin(id).await?;
    match stream_and_check(&mut *upload, body, limits, max_source_bytes, dockerfile).await {
        Ok(info) => {
            upload.commit().await?;
            Ok(info)
        }
        Err(e) => {
            upload.abort().await;
            Err(e)
        }
    }
}

async fn stream_and_check<S, B, E>(
    upload: &mut dyn SourceUpload,
    body: S,
    limits: &ArchiveLimits,
    max_source_bytes: u64,
    dockerfile: &str,
) -> Result<SourceInfo, IntakeError>
where
    S: Stream<Item = Result<B, E>>,
    B: Buf,
    E: std::fmt::Display,
{
    let (to_checker, from_upload) = mpsc::channel::<Bytes>(CHECKER_QUEUE);
    let limits = limits.clone();
    let dockerfile = dockerfile.to_string();
    let mut checker = tokio::task::spawn_blocking(move || {
        check_archive(ChannelReader::new(from_upload), &limits, &dockerfile)
    });
    let mut to_checker = Some(to_checker);
    let mut verdict = None;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| IntakeError::Body(e.to_string()))?;
        let chunk = chunk.copy_to_bytes(chunk.remaining());
        size += chunk.len() as u64;
        if size > max_source_bytes {
            return Err(IntakeError::SourceTooLarge {
                limit: max_source_bytes,
            });
        }
        hasher.update(&chunk);
        upload.write(chunk.clone()).await?;
        if let Some(tx) = &to_checker
            && tx.send(chunk).await.is_err()
        {
            // The checker stopped reading: the archive ended (gzip padding may follow) or it
            // found a problem — then there is no point reading the rest.
            to_checker = None;
            let early = (&mut checker)
                .await
                .map_err(|e| IntakeError::Checker(e.to_string()))?;
            verdict = Some(Ok(early?));
        }
    }
    drop(to_checker);
    let verdict = match verdict {
        Some(v) => v,
        None => checker
            .await
            .map_err(|e| IntakeError::Checker(e.to_string()))?,
    };
    if size == 0 {
        return Err(IntakeError::EmptyBody);
    }
    verdict?;
    Ok(SourceInfo {
        bytes: size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// A blocking `Read` over chunks arriving on a channel (runs on the checker's thread).
struct ChannelReader {
    chunks: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    fn new(chunks: mpsc::Receiver<Bytes>) -> Self {
        ChannelReader {
            chunks,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}
