//! Embedded source storage: `data_dir/sources/{id}.tgz`, staged as `.incoming/{id}.part` and
//! renamed into place on commit (a rename is atomic, so readers never see half a file).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use super::{SourceError, SourceStore, SourceStream, SourceUpload};
use crate::model::BuildId;

/// Read size when streaming a source into a build: large enough to keep dockerd busy.
const READ_CHUNK: usize = 256 * 1024;

pub struct FsSourceStore {
    dir: PathBuf,
}

impl FsSourceStore {
    /// Uses `dir` (created if missing); clears stale partial uploads a crash left behind.
    pub fn open(dir: &Path) -> Result<Self, SourceError> {
        let incoming = dir.join(".incoming");
        if incoming.exists() {
            std::fs::remove_dir_all(&incoming).map_err(io("clearing stale uploads"))?;
        }
        std::fs::create_dir_all(&incoming).map_err(io("creating the source directory"))?;
        Ok(FsSourceStore {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, id: BuildId) -> PathBuf {
        self.dir.join(format!("{id}.tgz"))
    }
}

fn io(action: &'static str) -> impl Fn(std::io::Error) -> SourceError {
    move |source| SourceError::Io { action, source }
}

struct FsUpload {
    file: tokio::io::BufWriter<tokio::fs::File>,
    partial: PathBuf,
    destination: PathBuf,
}

#[async_trait]
impl SourceUpload for FsUpload {
    async fn write(&mut self, chunk: Bytes) -> Result<(), SourceError> {
        self.file
            .write_all(&chunk)
            .await
            .map_err(io("writing an upload"))
    }

    async fn commit(mut self: Box<Self>) -> Result<(), SourceError> {
        self.file.flush().await.map_err(io("writing an upload"))?;
        tokio::fs::rename(&self.partial, &self.destination)
            .await
            .map_err(io("storing an upload"))
    }

    async fn abort(self: Box<Self>) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.partial).await;
    }
}

#[async_trait]
impl SourceStore for FsSourceStore {
    async fn begin(&self, id: BuildId) -> Result<Box<dyn SourceUpload>, SourceError> {
        let partial = self.dir.join(".incoming").join(format!("{id}.part"));
        let file = tokio::fs::File::create(&partial)
            .await
            .map_err(io("starting an upload"))?;
        Ok(Box::new(FsUpload {
            file: tokio::io::BufWriter::with_capacity(256 * 1024, file),
            partial,
            destination: self.path(id),
        }))
    }

    async fn open(&self, id: BuildId) -> Result<SourceStream, SourceError> {
        match tokio::fs::File::open(self.path(id)).await {
            Ok(file) => Ok(Box::pin(ReaderStream::with_capacity(file, READ_CHUNK))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SourceError::NotFound(id)),
            Err(e) => Err(SourceError::Io {
                action: "opening a source",
                source: e,
            }),
        }
    }

    async fn delete(&self, id: BuildId) -> Result<(), SourceError> {
        match tokio::fs::remove_file(self.path(id)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SourceError::Io {
                action: "deleting a source",
                source: e,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt;

    #[tokio::test]
    async fn a_committed_upload_reads_back_and_an_aborted_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsSourceStore::open(dir.path()).unwrap();
        let (kept, dropped) = (BuildId::new(), BuildId::new());

        let mut upload = store.begin(kept).await.unwrap();
        upload.write(Bytes::from_static(b"hello ")).await.unwrap();
        upload.write(Bytes::from_static(b"world")).await.unwrap();
        upload.commit().await.unwrap();

        let mut upload = store.begin(dropped).await.unwrap();
        upload.write(Bytes::from_static(b"junk")).await.unwrap();
        upload.abort().await;

        let read: Vec<Bytes> = store.open(kept).await.unwrap().try_collect().await.unwrap();
        assert_eq!(read.concat(), b"hello world");
        assert!(matches!(
            store.open(dropped).await,
            Err(SourceError::NotFound(_))
        ));
        assert_eq!(
            std::fs::read_dir(dir.path().join(".incoming"))
                .unwrap()
                .count(),
            0
        );
    }
}
