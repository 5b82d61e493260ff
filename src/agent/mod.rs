//! The agent: claims queued builds while it has free slots, keeps their leases, runs them, and
//! reaps builds whose agent was lost. One code path for the embedded and the cluster store.

mod lease;
mod runner;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::Cache;
use crate::config::Settings;
use crate::docker::DockerEngine;
use crate::logs::LogHub;
use crate::model::{Build, BuildId, Timestamp};
use crate::sources::SourceStore;
use crate::store::{BuildStore, Reaped, StoreError};

/// How many queued builds one claim round looks at; more than the slots, since others may win.
const CLAIM_CANDIDATES: usize = 16;

/// Everything a running agent shares with its builds.
pub struct AgentContext {
    pub node: String,
    pub settings: Arc<Settings>,
    pub store: Arc<dyn BuildStore>,
    pub sources: Arc<dyn SourceStore>,
    pub docker: Arc<DockerEngine>,
    pub logs: LogHub,
    pub cache: Cache,
}

#[derive(Clone)]
pub struct Agent {
    inner: Arc<AgentInner>,
}

struct AgentInner {
    context: Arc<AgentContext>,
    /// One permit per build this node may run at once (`max_concurrent_builds`).
    slots: Arc<Semaphore>,
    /// Poked when a build is enqueued here, so it starts without waiting for the poll.
    wake: Notify,
    /// Stop handles of the builds running here, for cancel requests that arrive over HTTP.
    running: Mutex<HashMap<BuildId, Arc<BuildControl>>>,
    builds: TaskTracker,
}

impl Agent {
    pub fn new(context: AgentContext) -> Self {
        let slots = Arc::new(Semaphore::new(context.settings.max_concurrent_builds));
        Agent {
            inner: Arc::new(AgentInner {
                context: Arc::new(context),
                slots,
                wake: Notify::new(),
                running: Mutex::default(),
                builds: TaskTracker::new(),
            }),
        }
    }

    /// A build was enqueued: look for work now instead of at the next poll.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Stops a build running on this node, if it is here. Returns whether it was.
    pub fn cancel_running(&self, id: BuildId) -> bool {
        match self.running_map().get(&id) {
            Some(control) => {
                control.stop(StopReason::Cancelled);
                true
            }
            None => false,
        }
    }

    /// Builds running on this node right now.
    pub fn running_count(&self) -> usize {
        self.running_map().len()
    }

    /// Claims and runs builds until `shutdown`, then waits for the running builds to end.
    pub async fn run(self, shutdown: CancellationToken) {
        let reaper = tokio::spawn(self.clone().reap_until(shutdown.clone()));
        self.claim_until(&shutdown).await;
        // Stop what is running and give it back to the queue for the next node (or restart).
        for control in self.running_map().values() {
            control.stop(StopReason::Shutdown);
        }
        self.inner.builds.close();
        self.inner.builds.wait().await;
        let _ = reaper.await;
    }

    async fn claim_until(&self, shutdown: &CancellationToken) {
        let poll = self.inner.context.settings.lease.poll_interval;
        loop {
            let permit = tokio::select! {
                permit = self.inner.slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                _ = shutdown.cancelled() => return,
            };
            match self.claim_next().await {
                Ok(Some(build)) => {
                    let control = Arc::new(BuildControl::default());
                    self.running_map().insert(build.id, control.clone());
                    let agent = self.clone();
                    self.inner.builds.spawn(async move {
                        let id = build.id;
                        runner::run_build(agent.inner.context.clone(), build, control).await;
                        agent.running_map().remove(&id);
                        drop(permit);
                    });
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "claiming builds failed; will retry"),
            }
            drop(permit);
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(jittered(poll)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Claim: look at the oldest queued builds and take the first one whose conditional claim
    /// succeeds. A lost race just means another agent runs it.
    async fn claim_next(&self) -> Result<Option<Build>, StoreError> {
        let ctx = &self.inner.context;
        for candidate in ctx.store.queued(CLAIM_CANDIDATES).await? {
            let lease_until = Timestamp::now().plus(ctx.settings.lease.duration);
            if let Some(build) = ctx.store.claim(&candidate, &ctx.node, lease_until).await? {
                return Ok(Some(build));
            }
        }
        Ok(None)
    }

    /// Reap: requeue (or fail, after `max_attempts`) running builds whose lease expired.
    async fn reap_until(self, shutdown: CancellationToken) {
        let ctx = self.inner.context.clone();
        let every = ctx.settings.lease.poll_interval.max(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(jittered(every)) => {}
                _ = shutdown.cancelled() => return,
            }
            if let Err(e) = self.reap_expired().await {
                tracing::warn!(error = %e, "reaping expired leases failed; will retry");
            }
        }
    }

    async fn reap_expired(&self) -> Result<(), StoreError> {
        let ctx = &self.inner.context;
        let cutoff = Timestamp::now().minus(ctx.settings.lease.grace);
        for expired in ctx.store.expired_leases(cutoff).await? {
            let reaped = ctx
                .store
                .reap(&expired, ctx.settings.lease.max_attempts)
                .await?;
            if reaped == Reaped::Skipped {
                continue;
            }
            tracing::warn!(build = %expired.id, attempt = expired.attempt, ?reaped, "reaped a build whose agent was lost");
            let _ = ctx
                .cache
                .record_event(
                    Some(expired.id.to_string()),
                    "reap",
                    format!("attempt {} {:?}", expired.attempt, reaped),
                )
                .await;
            if reaped == Reaped::Requeued {
                self.wake();
            }
        }
        Ok(())
    }

    fn running_map(&self) -> std::sync::MutexGuard<'_, HashMap<BuildId, Arc<BuildControl>>> {
        self.inner.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a running build is being stopped before it ends by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A user asked (`POST /builds/{id}/cancel`): the build ends `cancelled`.
    Cancelled,
    /// `build_timeout` passed: the build ends `failed`.
    TimedOut,
    /// The store says we no longer hold the lease: stop and write nothing.
    LeaseLost,
    /// The node is stopping: give the build back to the queue.
    Shutdown,
}

/// How a running build is told to stop; the first reason given wins.
#[derive(Default)]
pub struct BuildControl {
    token: CancellationToken,
    reason: std::sync::OnceLock<StopReason>,
}

impl BuildControl {
    pub fn stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.reason.get().copied()
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// Spreads polls of many agents over time (±20 %) so they do not hit the store in lockstep.
fn jittered(period: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let factor = 0.8 + (nanos % 400) as f64 / 1000.0;
    period.mul_f64(factor)
}
