//! Cluster source storage: `sources/{id}.tgz` in the `aws.bucket` S3 bucket, written by a
//! streaming multipart upload so memory stays bounded whatever the size of the upload.
//!
//! An upload holds at most one part being filled and one part in flight. It starts the
//! multipart upload only when the first part is full; anything smaller goes up with a single
//! PutObject on commit. On abort, on any error and when dropped unfinished, the multipart upload
//! is aborted, so a failed upload leaves no object and no stored parts behind (the bucket's
//! lifecycle rule from [`ensure_bucket`] sweeps up what a crashed node could not).

use std::io;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, BucketLocationConstraint,
    CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration, ExpirationStatus,
    LifecycleRule, LifecycleRuleFilter,
};
use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

use super::{SourceError, SourceStore, SourceStream, SourceUpload};
use crate::config::AwsSettings;
use crate::model::BuildId;

/// Size of every part but the last: above S3's 5 MiB minimum, small enough that one part
/// buffered plus one in flight stays a modest 16 MiB per upload.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of uploads abandoned by a crashed node are deleted by S3 after this many days.
const ABANDONED_UPLOAD_DAYS: i32 = 1;
/// The id of the lifecycle rule [`ensure_bucket`] puts on the bucket.
pub const ABANDONED_UPLOAD_RULE: &str = "slipway-abort-incomplete-uploads";

/// An S3 client for `settings`: the standard AWS chain from `sdk` (region, credentials,
/// endpoint, retries), with path-style addressing when `aws.s3_force_path_style` asks for it.
pub fn s3_client(sdk: &aws_config::SdkConfig, settings: &AwsSettings) -> Client {
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(settings.s3_force_path_style)
        .build();
    Client::from_conf(config)
}

/// Creates `bucket` unless this account already owns it, and puts the lifecycle rule that
/// deletes the parts of abandoned multipart uploads. Safe to run any number of times.
pub async fn ensure_bucket(client: &Client, bucket: &str) -> Result<(), SourceError> {
    let mut create = client.create_bucket().bucket(bucket);
    // us-east-1 is the one region that refuses an explicit location constraint.
    if let Some(region) = client.config().region().map(|r| r.as_ref().to_owned())
        && region != "us-east-1"
    {
        create = create.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region.as_str()))
                .build(),
        );
    }
    match create.send().await {
        Ok(_) => {}
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_bucket_already_owned_by_you()) => {}
        Err(err) => return Err(remote("creating the bucket", err)),
    }

    let rule = LifecycleRule::builder()
        .id(ABANDONED_UPLOAD_RULE)
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix("").build())
        .abort_incomplete_multipart_upload(
            AbortIncompleteMultipartUpload::builder()
                .days_after_initiation(ABANDONED_UPLOAD_DAYS)
                .build(),
        )
        .build()
        .map_err(|err| remote("describing the lifecycle rule", err))?;
    let lifecycle = BucketLifecycleConfiguration::builder()
        .rules(rule)
        .build()
        .map_err(|err| remote("describing the lifecycle rule", err))?;
    client
        .put_bucket_lifecycle_configuration()
        .bucket(bucket)
        .lifecycle_configuration(lifecycle)
        .send()
        .await
        .map_err(|err| remote("putting the bucket lifecycle rule", err))?;
    Ok(())
}

pub struct S3SourceStore {
    client: Client,
    bucket: String,
}

impl S3SourceStore {
    /// Sources in `aws.bucket`, reached the way the standard AWS chain in `sdk` says.
    pub fn new(sdk: &aws_config::SdkConfig, settings: &AwsSettings) -> Self {
        Self::with_client(s3_client(sdk, settings), &settings.bucket)
    }

    pub fn with_client(client: Client, bucket: &str) -> Self {
        S3SourceStore {
            client,
            bucket: bucket.to_owned(),
        }
    }

    /// The object key of a build's source.
    pub fn key(id: BuildId) -> String {
        format!("sources/{id}.tgz")
    }
}

/// A storage failure with the full SDK error chain (the bare SDK error says only "service error").
fn remote(action: &'static str, err: impl std::error::Error) -> SourceError {
    SourceError::Remote {
        action,
        detail: DisplayErrorContext(err).to_string(),
    }
}

/// Where the object goes and how to reach it; cloned into each part's upload task.
#[derive(Clone)]
struct Target {
    client: Client,
    bucket: String,
    key: String,
}

struct S3Upload {
    target: Target,
    /// Bytes not yet sent: always less than one part between calls.
    buffer: BytesMut,
    /// Set when the first part is full; an upload that never fills a part uses PutObject.
    upload_id: Option<String>,
    /// Parts S3 acknowledged, in order, for CompleteMultipartUpload.
    completed: Vec<CompletedPart>,
    /// The part uploading while the next one fills; awaited before another starts.
    in_flight: Option<JoinHandle<Result<CompletedPart, SourceError>>>,
    /// Set once committed or aborted, so dropping knows whether anything is left to clean up.
    finished: bool,
}

impl S3Upload {
    fn new(target: Target) -> Self {
        S3Upload {
            target,
            buffer: BytesMut::new(),
            upload_id: None,
            completed: Vec::new(),
            in_flight: None,
            finished: false,
        }
    }

    async fn write_chunk(&mut self, mut chunk: Bytes) -> Result<(), SourceError> {
        while !chunk.is_empty() {
            if self.buffer.is_empty() && self.upload_id.is_some() {
                // A large upload: take the next part's memory at once rather than by doubling.
                self.buffer.reserve(PART_SIZE);
            }
            let room = PART_SIZE - self.buffer.len();
            let taken = chunk.split_to(room.min(chunk.len()));
            self.buffer.extend_from_slice(&taken);
            if self.buffer.len() == PART_SIZE {
                self.send_buffered_part().await?;
            }
        }
        Ok(())
    }

    /// Starts uploading the buffer as the next part, once the previous part has landed.
    async fn send_buffered_part(&mut self) -> Result<(), SourceError> {
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let id = self.create_multipart_upload().await?;
                self.upload_id = Some(id.clone());
                id
            }
        };
        self.wait_for_part_in_flight().await?;
        let part_number = self.completed.len() as i32 + 1;
        let body = self.buffer.split().freeze();
        self.in_flight = Some(tokio::spawn(upload_part(
            self.target.clone(),
            upload_id,
            part_number,
            body,
        )));
        Ok(())
    }

    async fn create_multipart_upload(&self) -> Result<String, SourceError> {
        let Target {
            client,
            bucket,
            key,
        } = &self.target;
        let created = client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type("application/gzip")
            .send()
            .await
            .map_err(|err| remote("starting a multipart upload", err))?;
        created
            .upload_id
            .ok_or_else(|| remote_message("starting a multipart upload", "S3 sent no upload id"))
    }

    async fn wait_for_part_in_flight(&mut self) -> Result<(), SourceError> {
        if let Some(part) = self.in_flight.take() {
            let part = part
                .await
                .map_err(|err| remote("uploading a part", err))??;
            self.completed.push(part);
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), SourceError> {
        let Some(upload_id) = self.upload_id.clone() else {
            return self.put_whole_object().await;
        };
        if !self.buffer.is_empty() {
            self.send_buffered_part().await?;
        }
        self.wait_for_part_in_flight().await?;
        let Target {
            client,
            bucket,
            key,
        } = &self.target;
        client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(std::mem::take(&mut self.completed)))
                    .build(),
            )
            .send()
            .await
            .map_err(|err| remote("completing a multipart upload", err))?;
        Ok(())
    }

    async fn put_whole_object(&mut self) -> Result<(), SourceError> {
        let Target {
            client,
            bucket,
            key,
        } = &self.target;
        client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type("application/gzip")
            .body(ByteStream::from(self.buffer.split().freeze()))
            .send()
            .await
            .map_err(|err| remote("storing an upload", err))?;
        Ok(())
    }

    /// Aborts the multipart upload (if one was started) after the part in flight has landed,
    /// so S3 keeps none of its parts.
    async fn discard(&mut self) {
        self.finished = true;
        self.buffer = BytesMut::new();
        if let Some(part) = self.in_flight.take() {
            let _ = part.await;
        }
        if let Some(upload_id) = self.upload_id.take() {
            abort_multipart_upload(self.target.clone(), upload_id).await;
        }
    }
}

async fn upload_part(
    target: Target,
    upload_id: String,
    part_number: i32,
    body: Bytes,
) -> Result<CompletedPart, SourceError> {
    let uploaded = target
        .client
        .upload_part()
        .bucket(target.bucket)
        .key(target.key)
        .upload_id(upload_id)
        .part_number(part_number)
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|err| remote("uploading a part", err))?;
    Ok(CompletedPart::builder()
        .part_number(part_number)
        .set_e_tag(uploaded.e_tag)
        .build())
}

async fn abort_multipart_upload(target: Target, upload_id: String) {
    let aborted = target
        .client
        .abort_multipart_upload()
        .bucket(&target.bucket)
        .key(&target.key)
        .upload_id(upload_id)
        .send()
        .await;
    if let Err(err) = aborted {
        // The bucket's lifecycle rule deletes the parts within a day.
        tracing::warn!(
            key = %target.key,
            error = %DisplayErrorContext(err),
            "could not abort a multipart upload"
        );
    }
}

fn remote_message(action: &'static str, detail: &str) -> SourceError {
    SourceError::Remote {
        action,
        detail: detail.to_owned(),
    }
}

#[async_trait]
impl SourceUpload for S3Upload {
    async fn write(&mut self, chunk: Bytes) -> Result<(), SourceError> {
        let written = self.write_chunk(chunk).await;
        if written.is_err() {
            self.discard().await;
        }
        written
    }

    async fn commit(mut self: Box<Self>) -> Result<(), SourceError> {
        if self.finished {
            return Err(remote_message(
                "storing an upload",
                "the upload already failed and was discarded",
            ));
        }
        let finished = self.finish().await;
        if finished.is_err() {
            self.discard().await;
        }
        self.finished = true;
        finished
    }

    async fn abort(mut self: Box<Self>) {
        self.discard().await;
    }
}

impl Drop for S3Upload {
    /// An upload dropped half-way (the client went away mid-request) still cleans up after
    /// itself, in the background.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let in_flight = self.in_flight.take();
        let upload_id = self.upload_id.take();
        let target = self.target.clone();
        runtime.spawn(async move {
            if let Some(part) = in_flight {
                let _ = part.await;
            }
            if let Some(upload_id) = upload_id {
                abort_multipart_upload(target, upload_id).await;
            }
        });
    }
}

/// The object body as the stream builds read.
fn body_stream(body: ByteStream) -> SourceStream {
    Box::pin(futures_util::stream::try_unfold(
        body,
        |mut body| async move {
            match body.try_next().await {
                Ok(Some(chunk)) => Ok(Some((chunk, body))),
                Ok(None) => Ok(None),
                Err(err) => Err(io::Error::other(err)),
            }
        },
    ))
}

#[async_trait]
impl SourceStore for S3SourceStore {
    async fn begin(&self, id: BuildId) -> Result<Box<dyn SourceUpload>, SourceError> {
        Ok(Box::new(S3Upload::new(Target {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: Self::key(id),
        })))
    }

    async fn open(&self, id: BuildId) -> Result<SourceStream, SourceError> {
        let fetched = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(Self::key(id))
            .send()
            .await;
        match fetched {
            Ok(object) => Ok(body_stream(object.body)),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                Err(SourceError::NotFound(id))
            }
            Err(err) => Err(remote("opening a source", err)),
        }
    }

    async fn delete(&self, id: BuildId) -> Result<(), SourceError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(Self::key(id))
            .send()
            .await
            .map_err(|err| remote("deleting a source", err))?;
        Ok(())
    }
}
