//! One `docker build` with the classic builder: the context streamed in, every log line streamed
//! out, and a cancellation that leaves no RUN container behind.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{
    BuildImageOptions, BuildImageOptionsBuilder, BuilderVersion, RemoveContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::build_log::{BuildLog, starts_builder_message};
use super::lines::ProgressLines;
use super::{DockerEngine, DockerError};
use crate::lines::LineSplitter;

/// What to build and under which limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRequest {
    /// Full reference the built image gets, e.g. "slipway/hello:01J…".
    pub tag: String,
    /// Path of the Dockerfile inside the context.
    pub dockerfile: String,
    /// Stage of a multi-stage Dockerfile to stop at.
    pub target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    pub no_cache: bool,
    /// `slipway.app` (constant per app, so it never breaks the cache); `prune` only removes images labelled
    /// [`APP_LABEL`](super::APP_LABEL).
    pub labels: BTreeMap<String, String>,
    /// "default", "none", "host", or a network name; daemons without a bridge need "none".
    pub network_mode: String,
    /// Memory limit of each RUN step's container (swap included, so no swap beyond it).
    pub memory_bytes: Option<u64>,
    /// CPU time per [`CPU_PERIOD_MICROS`] a RUN step may use, in microseconds.
    pub cpu_quota: Option<u64>,
    /// Local images whose layers may serve as cache (pull them first).
    pub cache_from: Vec<String>,
}

/// The outcome of a successful build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// "sha256:…" from the daemon's aux message (or the short id of "Successfully built").
    pub image_id: String,
    /// Steps answered from the layer cache (" ---> Using cache").
    pub cached_steps: u32,
    /// Steps that ran ("Step N/M" lines); FROM steps are never cached.
    pub total_steps: u32,
}

/// How long the daemon may take to start answering a build. It answers only once the whole
/// context is uploaded (up to `limits.max_context_bytes`), so this is generous: the caller's build
/// timeout, applied through `cancel`, is the real limit.
const BUILD_ANSWER_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// The period `cpu_quota` is a share of: docker's default of 100 ms, so a quota of 50 000 is
/// half a CPU.
pub const CPU_PERIOD_MICROS: u64 = 100_000;

/// How long a cancelled build waits for its RUN container to be gone before reporting it left.
const CONTAINER_GONE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a cancelled build checks whether its RUN container is gone.
const CONTAINER_GONE_POLL: Duration = Duration::from_millis(50);

impl DockerEngine {
    /// Runs one build with the classic builder (plain-text log: "Step N/M : …", " ---> Using
    /// cache"). `context` is the build context as a gzip or plain tar byte stream. Every
    /// complete log line, and one line per pull state change, goes to `on_line` as it arrives;
    /// the final error is not repeated there, it is the returned `DockerError`.
    ///
    /// When `cancel` fires the request is dropped, which makes dockerd kill and remove the RUN
    /// step's container; the build then removes that container itself as well and waits until it
    /// is gone before returning `Cancelled`.
    pub async fn build(
        &self,
        request: &BuildRequest,
        context: impl Stream<Item = std::io::Result<Bytes>> + Send + 'static,
        on_line: &mut (dyn FnMut(&str) + Send),
        cancel: &CancellationToken,
    ) -> Result<BuiltImage, DockerError> {
        let context_error = Arc::new(Mutex::new(None));
        let body = bollard::body_try_stream(remember_error(context, Arc::clone(&context_error)));
        let client = build_client(&self.docker, request);
        let mut events = client.build_image(build_options(request), None, Some(body));

        let mut output = BuildOutput::new(on_line);
        let mut aux_image_id = None;
        loop {
            let event = tokio::select! {
                biased;
                () = cancel.cancelled() => None,
                event = events.next() => Some(event),
            };
            let Some(event) = event else {
                drop(events);
                output.finish();
                if let Some(container) = output.log.running_container.take() {
                    self.remove_step_container(&container).await;
                }
                return Err(DockerError::Cancelled);
            };
            let info = match event {
                None => break,
                Some(Ok(info)) => info,
                Some(Err(error)) => {
                    output.finish();
                    return Err(build_error(error, &output.log, &context_error));
                }
            };
            if let Some(id) = info.aux.and_then(|aux| aux.id) {
                aux_image_id = Some(id);
            }
            if let Some(chunk) = info.stream {
                output.stream(&chunk);
            }
            if let Some(status) = info.status {
                let is_tick = info.progress_detail.is_some_and(|p| p.current.is_some());
                output.status(info.id.as_deref(), &status, is_tick);
            }
        }
        output.finish();
        let log = output.log;

        let image_id =
            aux_image_id
                .or(log.built_image)
                .ok_or_else(|| DockerError::BuildFailed {
                    message: "the daemon ended the build without reporting an image id".to_owned(),
                })?;
        tracing::debug!(
            tag = %request.tag,
            image_id,
            steps = log.total_steps,
            cached = log.cached_steps,
            "build finished"
        );
        Ok(BuiltImage {
            image_id,
            cached_steps: log.cached_steps,
            total_steps: log.total_steps,
        })
    }

    /// Makes sure a cancelled RUN step's container is gone. dockerd kills and removes it itself
    /// once it notices the dropped request (~0.1–0.2 s on 20.10); removing it here as well covers
    /// daemons that do not, and the wait makes "Cancelled" mean "nothing left running".
    async fn remove_step_container(&self, container: &str) {
        let force = RemoveContainerOptionsBuilder::new().force(true).build();
        // 404 (already removed) and 409 (removal in progress) are the expected answers.
        let _ = self.docker.remove_container(container, Some(force)).await;
        let gone = async {
            while self.docker.inspect_container(container, None).await.is_ok() {
                tokio::time::sleep(CONTAINER_GONE_POLL).await;
            }
        };
        if tokio::time::timeout(CONTAINER_GONE_TIMEOUT, gone)
            .await
            .is_err()
        {
            tracing::warn!(container, "cancelled build left its RUN container behind");
        }
    }
}

/// The build's output on its way to `on_line`: `stream` chunks reassembled into lines and read
/// for steps, `status` events reduced to state changes.
struct BuildOutput<'a> {
    splitter: LineSplitter,
    progress: ProgressLines,
    log: BuildLog,
    on_line: &'a mut (dyn FnMut(&str) + Send),
}

impl<'a> BuildOutput<'a> {
    fn new(on_line: &'a mut (dyn FnMut(&str) + Send)) -> Self {
        Self {
            splitter: LineSplitter::default(),
            progress: ProgressLines::default(),
            log: BuildLog::default(),
            on_line,
        }
    }

    fn stream(&mut self, chunk: &str) {
        let Self {
            splitter,
            log,
            on_line,
            ..
        } = self;
        let mut emit = |line: &str| {
            log.observe(line);
            on_line(line);
        };
        if starts_builder_message(chunk) {
            splitter.finish(&mut emit);
        }
        splitter.push(chunk.as_bytes(), &mut emit);
    }

    fn status(&mut self, id: Option<&str>, status: &str, is_tick: bool) {
        if let Some(line) = self.progress.line(id, status, is_tick) {
            (self.on_line)(&line);
        }
    }

    /// Passes on the last line even though it has no '\n'.
    fn finish(&mut self) {
        let Self {
            splitter,
            log,
            on_line,
            ..
        } = self;
        splitter.finish(&mut |line| {
            log.observe(line);
            on_line(line);
        });
    }
}

/// Passes the context through, keeping its first error: when the upload fails, that error (say,
/// the tar checker's) is the one to report rather than the broken request it caused.
fn remember_error(
    context: impl Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    first_error: Arc<Mutex<Option<std::io::Error>>>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    context.map(move |chunk| {
        chunk.map_err(|error| {
            let reported = std::io::Error::new(error.kind(), error.to_string());
            if let Ok(mut slot) = first_error.lock() {
                slot.get_or_insert(error);
            }
            reported
        })
    })
}

fn build_error(
    error: bollard::errors::Error,
    log: &BuildLog,
    context_error: &Mutex<Option<std::io::Error>>,
) -> DockerError {
    if let Some(source) = context_error.lock().ok().and_then(|mut slot| slot.take()) {
        return DockerError::Context { source };
    }
    match error {
        bollard::errors::Error::DockerStreamError { error } => log.failure(error),
        bollard::errors::Error::DockerResponseServerError { message, .. } => {
            DockerError::BuildFailed { message }
        }
        source => DockerError::Api {
            operation: "build",
            source,
        },
    }
}

fn build_options(request: &BuildRequest) -> BuildImageOptions {
    let mut options = BuildImageOptionsBuilder::new()
        .version(BuilderVersion::BuilderV1)
        .dockerfile(&request.dockerfile)
        .t(&request.tag)
        .nocache(request.no_cache)
        .rm(true)
        // Remove the intermediate container of a failed step too.
        .forcerm(true)
        .networkmode(&request.network_mode)
        .buildargs(&to_hash_map(&request.build_args))
        .labels(&to_hash_map(&request.labels));
    if let Some(target) = &request.target {
        options = options.target(target);
    }
    if !request.cache_from.is_empty() {
        options = options.cachefrom(&request.cache_from);
    }
    if let Some(quota) = request.cpu_quota {
        let period = i32::try_from(CPU_PERIOD_MICROS).unwrap_or(i32::MAX);
        options = options
            .cpuquota(i32::try_from(quota).unwrap_or(i32::MAX))
            .cpuperiod(period);
    }
    options.build()
}

/// The client for one build: a long answer timeout, and the memory limit added to the query by
/// hand because bollard types `memory`/`memswap` as `i32`, which cannot say more than 2 GiB.
fn build_client(docker: &Docker, request: &BuildRequest) -> Docker {
    let client = docker.clone().with_timeout(BUILD_ANSWER_TIMEOUT);
    let Some(memory) = request.memory_bytes else {
        return client;
    };
    let limits = memory_query(memory);
    client.with_request_modifier(move |mut http_request| {
        if http_request.uri().path().ends_with("/build") {
            let uri = http_request.uri().to_string();
            match append_query(&uri, &limits).parse() {
                Ok(with_limits) => *http_request.uri_mut() = with_limits,
                Err(error) => tracing::warn!(%error, "memory limit not applied to build"),
            }
        }
        http_request
    })
}

/// Memory and memory+swap equal: the limit holds without spilling into swap.
fn memory_query(memory_bytes: u64) -> String {
    format!("memory={memory_bytes}&memswap={memory_bytes}")
}

fn append_query(uri: &str, query: &str) -> String {
    let separator = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{separator}{query}")
}

fn to_hash_map(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limit_above_two_gib_is_sent_exactly() {
        assert_eq!(
            append_query(
                "http://x/v1.41/build?dockerfile=Dockerfile",
                &memory_query(8 << 30)
            ),
            "http://x/v1.41/build?dockerfile=Dockerfile&memory=8589934592&memswap=8589934592"
        );
    }

    #[test]
    fn query_is_started_when_the_uri_has_none() {
        assert_eq!(
            append_query("http://x/build", "memory=1"),
            "http://x/build?memory=1"
        );
    }
}
