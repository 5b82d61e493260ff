//! Runs one claimed build: fetch the source, `docker build` it on this host, push it when a
//! registry is configured, and record the outcome under the lease. Every step logs a line.

use std::sync::Arc;
use std::time::Instant;

use rusqlite::params;

use super::lease::keep_lease;
use super::{AgentContext, BuildControl, StopReason};
use crate::docker::{self, BuiltImage, DockerError, RegistryCredentials};
use crate::logs::LogWriter;
use crate::model::{Build, Status, Timestamp};
use crate::sources::SourceError;
use crate::store::{Lease, Outcome, StoreError};

/// Repository namespace of images that are only kept in the local daemon.
pub const LOCAL_REPOSITORY_PREFIX: &str = "slipway";

/// Why an attempt did not produce an image.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("fetching the source failed: {0}")]
    Fetch(#[from] SourceError),
    #[error("{0}")]
    Docker(#[from] DockerError),
}

/// Per-phase timings and cache use of one attempt, kept in the local cache.
#[derive(Debug, Default)]
struct AttemptReport {
    fetch_ms: Option<u64>,
    build_ms: Option<u64>,
    push_ms: Option<u64>,
    built: Option<BuiltImage>,
}

/// What a successful attempt made.
struct Produced {
    image: String,
    digest: Option<String>,
}

pub(super) async fn run_build(ctx: Arc<AgentContext>, build: Build, control: Arc<BuildControl>) {
    let lease = Lease {
        id: build.id,
        attempt: build.attempt,
        node: ctx.node.clone(),
    };
    let log = match ctx.logs.start(build.id, build.attempt).await {
        Ok(log) => log,
        Err(e) => {
            // Without a log the build cannot be followed; leave it to the lease to requeue.
            tracing::error!(build = %build.id, error = %e, "cannot open the build log");
            return;
        }
    };
    log.line(&format!(
        "slipway: build {} of {} — attempt {} on node {}",
        build.id, build.app, build.attempt, ctx.node
    ));
    record_claim(&ctx, &lease).await;

    let keeper = tokio::spawn(keep_lease(ctx.clone(), lease.clone(), control.clone()));
    let timeout = {
        let control = control.clone();
        let limit = ctx.settings.build_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            control.stop(StopReason::TimedOut);
        })
    };

    let mut report = AttemptReport::default();
    let result = execute(&ctx, &build, &log, &control, &mut report).await;
    timeout.abort();
    // Stop the keeper before the final write; a cancel that arrives now is too late to matter.
    control.token().cancel();
    let _ = keeper.await;

    let outcome = decide_outcome(&ctx, result, control.reason(), &report);
    let Some(outcome) = outcome else {
        // Lease lost or shutting down: the build belongs to someone else now (or to the queue).
        if control.reason() == Some(StopReason::Shutdown) {
            log.line("slipway: node is stopping; the build goes back to the queue");
            let _ = log.persist().await;
            if let Err(e) = ctx.store.release(&lease).await {
                tracing::warn!(build = %build.id, error = %e, "could not requeue on shutdown");
            }
        }
        let _ = log.close().await;
        record_attempt(&ctx, &lease, &report, "abandoned", None).await;
        return;
    };
    log.line(&match &outcome.error {
        None => format!(
            "slipway: {} {}",
            outcome.status,
            outcome.image.as_deref().unwrap_or("")
        ),
        Some(error) => format!("slipway: {}: {error}", outcome.status),
    });
    if let Err(e) = log.persist().await {
        tracing::warn!(build = %build.id, error = %e, "could not persist the whole log");
    }
    match ctx.store.finish(&lease, &outcome).await {
        Ok(()) => {}
        Err(StoreError::LeaseLost { .. }) => {
            tracing::warn!(build = %build.id, "lease lost before the outcome was written; dropped it");
        }
        Err(e) => tracing::error!(build = %build.id, error = %e, "could not record the outcome"),
    }
    let _ = log.close().await;
    record_attempt(
        &ctx,
        &lease,
        &report,
        outcome.status.as_str(),
        outcome.error.clone(),
    )
    .await;
}

/// Turns what happened into the outcome to record; `None` when nothing may be recorded.
fn decide_outcome(
    ctx: &AgentContext,
    result: Result<Produced, RunError>,
    stopped: Option<StopReason>,
    report: &AttemptReport,
) -> Option<Outcome> {
    let (cached_steps, total_steps) = report
        .built
        .as_ref()
        .map(|b| (Some(b.cached_steps), Some(b.total_steps)))
        .unwrap_or((None, None));
    let failed = |status, error: String| Outcome {
        status,
        image: None,
        digest: None,
        error: Some(error),
        cached_steps,
        total_steps,
    };
    match (result, stopped) {
        (_, Some(StopReason::LeaseLost | StopReason::Shutdown)) => None,
        (Ok(produced), _) => Some(Outcome {
            status: Status::Succeeded,
            image: Some(produced.image),
            digest: produced.digest,
            error: None,
            cached_steps,
            total_steps,
        }),
        (Err(_), Some(StopReason::Cancelled)) => {
            Some(failed(Status::Cancelled, "cancelled by request".into()))
        }
        (Err(_), Some(StopReason::TimedOut)) => Some(failed(
            Status::Failed,
            format!(
                "build timed out after {} (build_timeout)",
                humantime::format_duration(ctx.settings.build_timeout)
            ),
        )),
        (Err(e), None) => Some(failed(Status::Failed, e.to_string())),
    }
}

/// Fetch → build → push, each phase timed.
async fn execute(
    ctx: &AgentContext,
    build: &Build,
    log: &LogWriter,
    control: &BuildControl,
    report: &mut AttemptReport,
) -> Result<Produced, RunError> {
    let started = Instant::now();
    let source = ctx.sources.open(build.id).await?;
    report.fetch_ms = Some(started.elapsed().as_millis() as u64);

    let (repository, tag) = image_name(ctx, build);
    let request = docker::BuildRequest {
        tag: format!("{repository}:{tag}"),
        dockerfile: build.options.dockerfile.clone(),
        target: build.options.target.clone(),
        build_args: build.options.build_args.clone(),
        no_cache: build.options.no_cache,
        // Only labels that stay the same from build to build: a per-build label would add a
        // step that never hits the cache, so a no-change rebuild would not reuse every layer.
        // The tag carries the build id.
        labels: [(docker::APP_LABEL.to_string(), build.app.to_string())].into(),
        network_mode: ctx.settings.docker.network_mode.clone(),
        memory_bytes: ctx.settings.docker.memory.map(|m| m.as_u64()),
        cpu_quota: ctx
            .settings
            .docker
            .cpus
            .map(|cpus| (cpus * docker::CPU_PERIOD_MICROS as f64) as u64),
        cache_from: Vec::new(),
    };
    let started = Instant::now();
    let mut on_line = |line: &str| log.line(line);
    let built = ctx
        .docker
        .build(&request, source, &mut on_line, control.token())
        .await;
    report.build_ms = Some(started.elapsed().as_millis() as u64);
    let built = built?;
    report.built = Some(built);

    let digest = match registry_credentials(ctx) {
        None => None,
        Some(credentials) => {
            log.line(&format!("slipway: pushing {repository}:{tag}"));
            let started = Instant::now();
            let pushed = ctx
                .docker
                .push(
                    &repository,
                    &tag,
                    credentials.as_ref(),
                    &mut on_line,
                    control.token(),
                )
                .await;
            report.push_ms = Some(started.elapsed().as_millis() as u64);
            Some(pushed?)
        }
    };
    Ok(Produced {
        image: format!("{repository}:{tag}"),
        digest,
    })
}

/// `{registry}/{app}` (or `slipway/{app}` without a registry) and the build id as the tag.
fn image_name(ctx: &AgentContext, build: &Build) -> (String, String) {
    let prefix = ctx
        .settings
        .registry
        .url
        .as_deref()
        .unwrap_or(LOCAL_REPOSITORY_PREFIX);
    (format!("{prefix}/{}", build.app), build.id.to_string())
}

/// `None`: no registry, nothing to push. `Some(None)`: push without credentials.
fn registry_credentials(ctx: &AgentContext) -> Option<Option<RegistryCredentials>> {
    let registry = &ctx.settings.registry;
    let url = registry.url.as_ref()?;
    let server = url.split('/').next().unwrap_or(url).to_string();
    Some(
        registry
            .username
            .as_ref()
            .map(|username| RegistryCredentials {
                username: username.clone(),
                password: registry.password.clone().unwrap_or_default(),
                server,
            }),
    )
}

async fn record_claim(ctx: &AgentContext, lease: &Lease) {
    let (id, attempt, node) = (lease.id.to_string(), lease.attempt, lease.node.clone());
    let now = Timestamp::now().millis();
    let recorded = ctx
        .cache
        .call(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO attempts (build_id, attempt, node, claimed_at) VALUES (?1, ?2, ?3, ?4)",
                params![id, attempt, node, now],
            )
        })
        .await;
    if let Err(e) = recorded {
        tracing::warn!(build = %lease.id, error = %e, "could not record the claim in the local cache");
    }
    let _ = ctx
        .cache
        .record_event(
            Some(lease.id.to_string()),
            "claim",
            format!("attempt {}", lease.attempt),
        )
        .await;
}

async fn record_attempt(
    ctx: &AgentContext,
    lease: &Lease,
    report: &AttemptReport,
    outcome: &str,
    error: Option<String>,
) {
    let (id, attempt) = (lease.id.to_string(), lease.attempt);
    let ms = |phase: Option<u64>| phase.map(|ms| ms as i64);
    let (fetch, build, push) = (ms(report.fetch_ms), ms(report.build_ms), ms(report.push_ms));
    let (cached, total) = report
        .built
        .as_ref()
        .map(|b| (Some(b.cached_steps), Some(b.total_steps)))
        .unwrap_or((None, None));
    let outcome = outcome.to_string();
    let now = Timestamp::now().millis();
    let recorded =
        ctx.cache
            .call(move |c| {
                c.execute(
                "UPDATE attempts SET finished_at = ?1, fetch_ms = ?2, build_ms = ?3, push_ms = ?4, \
                 cached_steps = ?5, total_steps = ?6, outcome = ?7, error = ?8 \
                 WHERE build_id = ?9 AND attempt = ?10",
                params![now, fetch, build, push, cached, total, outcome, error, id, attempt],
            )
            })
            .await;
    if let Err(e) = recorded {
        tracing::warn!(build = %lease.id, error = %e, "could not record the attempt in the local cache");
    }
}
