//! Lease keeper: renews a running build's lease every lease/3 with the fencing condition, and
//! stops the build when the store says it is no longer ours or a cancel was requested.

use std::sync::Arc;

use super::{AgentContext, BuildControl, StopReason};
use crate::model::Timestamp;
use crate::store::{Lease, StoreError};

/// Renews `lease` until `control` stops; returns when the build is stopped or the lease lost.
pub(super) async fn keep_lease(ctx: Arc<AgentContext>, lease: Lease, control: Arc<BuildControl>) {
    let duration = ctx.settings.lease.duration;
    let mut tick = tokio::time::interval(duration / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the claim itself just set the lease
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = control.token().cancelled() => return,
        }
        match ctx
            .store
            .renew(&lease, Timestamp::now().plus(duration))
            .await
        {
            Ok(renewal) if renewal.cancel_requested => {
                control.stop(StopReason::Cancelled);
                return;
            }
            Ok(_) => {}
            Err(StoreError::LeaseLost { .. }) => {
                tracing::warn!(build = %lease.id, attempt = lease.attempt, "lease lost; stopping the build");
                let _ = ctx
                    .cache
                    .record_event(
                        Some(lease.id.to_string()),
                        "lease_lost",
                        format!("attempt {}", lease.attempt),
                    )
                    .await;
                control.stop(StopReason::LeaseLost);
                return;
            }
            // A store outage: keep building and keep trying; if the lease runs out meanwhile,
            // the next renewal reports it lost.
            Err(e) => {
                tracing::warn!(build = %lease.id, error = %e, "lease renewal failed; retrying");
                let _ = ctx
                    .cache
                    .record_event(Some(lease.id.to_string()), "renew_failed", e.to_string())
                    .await;
            }
        }
    }
}
