//! The S3 source store against moto_server: uploads of any size round-trip byte for byte, a
//! failed or aborted upload leaves neither an object nor a pending multipart upload, and
//! `ensure_bucket` is idempotent.

mod common;

use std::io::Write;
use std::time::Duration;

use aws_sdk_s3::Client;
use bytes::Bytes;
use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};
use slipway::archive::ArchiveLimits;
use slipway::config::AwsSettings;
use slipway::intake::{IntakeError, receive_source};
use slipway::model::BuildId;
use slipway::sources::{
    ABANDONED_UPLOAD_RULE, PART_SIZE, S3SourceStore, SourceError, SourceStore, ensure_bucket,
    s3_client,
};

const MIB: usize = 1024 * 1024;

/// A bucket of its own for one test; `remove` empties and deletes it at the end.
struct TestBucket {
    client: Client,
    name: String,
    store: S3SourceStore,
}

impl TestBucket {
    async fn create() -> TestBucket {
        let settings = AwsSettings {
            bucket: common::unique("slipway-sources"),
            s3_force_path_style: true,
            ..AwsSettings::default()
        };
        let sdk = common::moto_sdk_config().await;
        let client = s3_client(&sdk, &settings);
        ensure_bucket(&client, &settings.bucket)
            .await
            .unwrap_or_else(|err| panic!("creating bucket {}: {err}", settings.bucket));
        TestBucket {
            client,
            store: S3SourceStore::new(&sdk, &settings),
            name: settings.bucket,
        }
    }

    async fn keys(&self) -> Vec<String> {
        let listed = self
            .client
            .list_objects_v2()
            .bucket(&self.name)
            .send()
            .await
            .expect("listing objects");
        listed
            .contents()
            .iter()
            .filter_map(|object| object.key().map(str::to_owned))
            .collect()
    }

    async fn pending_multipart_uploads(&self) -> usize {
        let listed = self
            .client
            .list_multipart_uploads()
            .bucket(&self.name)
            .send()
            .await
            .expect("listing multipart uploads");
        listed.uploads().len()
    }

    async fn etag(&self, id: BuildId) -> String {
        let head = self
            .client
            .head_object()
            .bucket(&self.name)
            .key(S3SourceStore::key(id))
            .send()
            .await
            .expect("head object");
        head.e_tag()
            .unwrap_or_default()
            .trim_matches('"')
            .to_owned()
    }

    async fn read(&self, id: BuildId) -> Result<Vec<u8>, SourceError> {
        let stream = self.store.open(id).await?;
        let chunks: Vec<Bytes> = stream.try_collect().await.expect("reading the source");
        Ok(chunks.concat())
    }

    /// Empties the bucket (objects and pending uploads), then deletes it.
    async fn remove(self) {
        let uploads = self
            .client
            .list_multipart_uploads()
            .bucket(&self.name)
            .send()
            .await
            .expect("listing multipart uploads");
        for upload in uploads.uploads() {
            self.client
                .abort_multipart_upload()
                .bucket(&self.name)
                .key(upload.key().unwrap_or_default())
                .upload_id(upload.upload_id().unwrap_or_default())
                .send()
                .await
                .expect("aborting a leftover upload");
        }
        for key in self.keys().await {
            self.client
                .delete_object()
                .bucket(&self.name)
                .key(key)
                .send()
                .await
                .expect("deleting an object");
        }
        self.client
            .delete_bucket()
            .bucket(&self.name)
            .send()
            .await
            .expect("deleting the bucket");
    }
}

/// `len` bytes that differ from part to part, so a misplaced part cannot go unnoticed.
fn patterned(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Writes `data` in chunks of an odd size, so chunks straddle part boundaries.
async fn upload(
    store: &S3SourceStore,
    id: BuildId,
    data: &[u8],
) -> Box<dyn slipway::sources::SourceUpload> {
    let mut upload = store.begin(id).await.expect("begin");
    for chunk in data.chunks(100_003) {
        upload
            .write(Bytes::copy_from_slice(chunk))
            .await
            .expect("write");
    }
    upload
}

#[tokio::test]
async fn a_20_mib_upload_round_trips_in_three_parts() {
    let bucket = TestBucket::create().await;
    let id = BuildId::new();
    let data = patterned(20 * MIB);
    assert_eq!(data.len().div_ceil(PART_SIZE), 3);

    upload(&bucket.store, id, &data)
        .await
        .commit()
        .await
        .unwrap();

    let read = bucket.read(id).await.unwrap();
    assert!(read == data, "the source read back differs from the upload");
    // A multipart object's ETag ends with "-{number of parts}".
    assert!(
        bucket.etag(id).await.ends_with("-3"),
        "{}",
        bucket.etag(id).await
    );
    assert_eq!(bucket.keys().await, vec![format!("sources/{id}.tgz")]);
    assert_eq!(bucket.pending_multipart_uploads().await, 0);
    bucket.remove().await;
}

#[tokio::test]
async fn an_upload_of_exactly_one_part_round_trips() {
    let bucket = TestBucket::create().await;
    let id = BuildId::new();
    let data = patterned(PART_SIZE);

    upload(&bucket.store, id, &data)
        .await
        .commit()
        .await
        .unwrap();

    assert!(bucket.read(id).await.unwrap() == data);
    assert_eq!(bucket.pending_multipart_uploads().await, 0);
    bucket.remove().await;
}

#[tokio::test]
async fn a_tiny_upload_round_trips_as_a_single_object() {
    let bucket = TestBucket::create().await;
    let id = BuildId::new();

    let mut upload = bucket.store.begin(id).await.unwrap();
    upload.write(Bytes::from_static(b"hello ")).await.unwrap();
    upload.write(Bytes::from_static(b"world")).await.unwrap();
    upload.commit().await.unwrap();

    assert_eq!(bucket.read(id).await.unwrap(), b"hello world");
    assert!(
        !bucket.etag(id).await.contains('-'),
        "not a multipart object"
    );
    bucket.remove().await;
}

#[tokio::test]
async fn an_aborted_upload_leaves_no_object_and_no_pending_upload() {
    let bucket = TestBucket::create().await;
    let id = BuildId::new();

    let upload = upload(&bucket.store, id, &patterned(2 * PART_SIZE + MIB)).await;
    assert_eq!(bucket.pending_multipart_uploads().await, 1);
    upload.abort().await;

    assert!(matches!(
        bucket.read(id).await,
        Err(SourceError::NotFound(_))
    ));
    assert_eq!(bucket.keys().await, Vec::<String>::new());
    assert_eq!(bucket.pending_multipart_uploads().await, 0);
    bucket.remove().await;
}

#[tokio::test]
async fn a_dropped_upload_aborts_its_multipart_upload_in_the_background() {
    let bucket = TestBucket::create().await;
    let id = BuildId::new();

    let upload = upload(&bucket.store, id, &patterned(PART_SIZE + MIB)).await;
    assert_eq!(bucket.pending_multipart_uploads().await, 1);
    drop(upload);

    let mut waited = Duration::ZERO;
    while bucket.pending_multipart_uploads().await > 0 {
        assert!(
            waited < Duration::from_secs(10),
            "the upload is still pending"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    assert_eq!(bucket.keys().await, Vec::<String>::new());
    bucket.remove().await;
}

#[tokio::test]
async fn a_failed_commit_leaves_no_object_and_no_pending_upload() {
    let bucket = TestBucket::create().await;
    let id = BuildId::new();
    let upload = upload(&bucket.store, id, &patterned(PART_SIZE + MIB)).await;
    // Someone else (a lifecycle rule, an operator) aborts the upload under our feet.
    let pending = bucket
        .client
        .list_multipart_uploads()
        .bucket(&bucket.name)
        .send()
        .await
        .unwrap();
    let pending = &pending.uploads()[0];
    bucket
        .client
        .abort_multipart_upload()
        .bucket(&bucket.name)
        .key(pending.key().unwrap())
        .upload_id(pending.upload_id().unwrap())
        .send()
        .await
        .unwrap();

    let err = upload.commit().await.unwrap_err();

    assert!(matches!(err, SourceError::Remote { .. }), "{err}");
    assert_eq!(bucket.keys().await, Vec::<String>::new());
    assert_eq!(bucket.pending_multipart_uploads().await, 0);
    bucket.remove().await;
}

#[tokio::test]
async fn opening_a_missing_source_is_not_found() {
    let bucket = TestBucket::create().await;
    let id = BuildId::new();

    let opened = bucket.store.open(id).await;

    assert!(
        matches!(opened, Err(SourceError::NotFound(missing)) if missing == id),
        "{:?}",
        opened.err()
    );
    bucket.remove().await;
}

#[tokio::test]
async fn a_deleted_source_is_not_found() {
    let bucket = TestBucket::create().await;
    let id = BuildId::new();
    upload(&bucket.store, id, b"gone soon")
        .await
        .commit()
        .await
        .unwrap();

    bucket.store.delete(id).await.unwrap();

    assert!(matches!(
        bucket.read(id).await,
        Err(SourceError::NotFound(_))
    ));
    bucket
        .store
        .delete(id)
        .await
        .expect("deleting twice is fine");
    bucket.remove().await;
}

#[tokio::test]
async fn ensure_bucket_is_idempotent_and_expires_abandoned_uploads() {
    let bucket = TestBucket::create().await;

    ensure_bucket(&bucket.client, &bucket.name)
        .await
        .expect("a second ensure_bucket succeeds");

    let lifecycle = bucket
        .client
        .get_bucket_lifecycle_configuration()
        .bucket(&bucket.name)
        .send()
        .await
        .unwrap();
    let rules = lifecycle.rules();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0].id(), Some(ABANDONED_UPLOAD_RULE));
    assert_eq!(
        rules[0]
            .abort_incomplete_multipart_upload()
            .and_then(|abort| abort.days_after_initiation()),
        Some(1)
    );
    bucket.remove().await;
}

fn archive_limits() -> ArchiveLimits {
    ArchiveLimits {
        max_context_bytes: 1 << 30,
        max_entries: 1000,
        max_path_len: 4096,
    }
}

/// An uncompressed (stored) gzip of a tar holding a Dockerfile and `filler` bytes.
fn tgz_with_filler(filler: &[u8]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
    let mut archive = tar::Builder::new(encoder);
    for (path, content) in [
        ("Dockerfile", &b"FROM scratch\n"[..]),
        ("filler.bin", filler),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        archive.append_data(&mut header, path, content).unwrap();
    }
    let mut encoder = archive.into_inner().unwrap();
    encoder.flush().unwrap();
    encoder.finish().unwrap()
}

async fn receive(
    bucket: &TestBucket,
    id: BuildId,
    body: &[u8],
    max_source_bytes: u64,
) -> Result<slipway::model::SourceInfo, IntakeError> {
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(64 * 1024)
        .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
        .collect();
    receive_source(
        id,
        futures_util::stream::iter(chunks),
        &bucket.store,
        &archive_limits(),
        max_source_bytes,
        "Dockerfile",
    )
    .await
}

#[tokio::test]
async fn intake_commits_a_valid_archive_to_s3() {
    let bucket = TestBucket::create().await;
    let id = BuildId::new();
    let body = tgz_with_filler(&patterned(9 * MIB));

    let info = receive(&bucket, id, &body, u64::MAX).await.unwrap();

    assert_eq!(info.bytes, body.len() as u64);
    assert_eq!(info.sha256, hex::encode(Sha256::digest(&body)));
    assert!(bucket.read(id).await.unwrap() == body);
    assert_eq!(bucket.pending_multipart_uploads().await, 0);
    bucket.remove().await;
}

#[tokio::test]
async fn intake_stores_nothing_for_a_body_that_is_not_gzip() {
    let bucket = TestBucket::create().await;
    let id = BuildId::new();

    let err = receive(&bucket, id, &patterned(MIB), u64::MAX)
        .await
        .unwrap_err();

    assert!(matches!(err, IntakeError::Archive(_)), "{err}");
    assert_eq!(bucket.keys().await, Vec::<String>::new());
    assert_eq!(bucket.pending_multipart_uploads().await, 0);
    bucket.remove().await;
}

#[tokio::test]
async fn intake_stores_nothing_for_a_body_over_the_limit_after_parts_were_sent() {
    let bucket = TestBucket::create().await;
    let id = BuildId::new();
    let body = tgz_with_filler(&patterned(12 * MIB));

    let err = receive(&bucket, id, &body, (10 * MIB) as u64)
        .await
        .unwrap_err();

    assert!(matches!(err, IntakeError::SourceTooLarge { .. }), "{err}");
    assert_eq!(bucket.keys().await, Vec::<String>::new());
    assert_eq!(bucket.pending_multipart_uploads().await, 0);
    bucket.remove().await;
}
