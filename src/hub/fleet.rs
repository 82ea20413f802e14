//! The fleet view through the hub: runtimes arriving and reporting, and
//! what the fleet tells about a policy or a rollout.

use std::{sync::Arc, time::Duration};

use crate::domain::rollout::{Progress, Rollout};
use crate::domain::runtime::{
    PolicyStatus, RuntimeFilter, RuntimeRecord, RuntimeState, StatusReport, runtimes_page,
};
use crate::domain::{Namespace, Page, PolicyRef, Result};
use crate::fleet::{Arrival, Connection, FleetView};

use super::PolicyHub;

/// The longest a report waits for the fan-out of a revision to end.
const REPORT_WAITS_FOR_FAN_OUT: Duration = Duration::from_secs(1);

impl PolicyHub {
    /// Registers a stream of an identified runtime (see `Fleet::connect`).
    pub async fn connect_runtime(&self, arrival: Arrival) -> Result<Connection> {
        self.fleet.connect(arrival).await
    }

    /// Records a runtime's report from `subject`; returns how many outcomes
    /// were older than what it reported before. Deliveries go first: a
    /// report arriving while a revision is fanned out to the streams waits
    /// until every stream took it (at most [`REPORT_WAITS_FOR_FAN_OUT`]).
    /// Runtimes answer each update, the first of them while the server
    /// still writes it to the rest, and those answers would take the cores
    /// from the runtimes not reached yet.
    pub async fn report_status(&self, subject: &str, report: StatusReport) -> Result<u32> {
        self.index.fan_out_ended(REPORT_WAITS_FOR_FAN_OUT).await;
        self.fleet.report(subject, report).await
    }

    /// A page of the namespace's runtimes that `filter` selects.
    pub async fn list_runtimes(
        &self,
        namespace: &Namespace,
        filter: &RuntimeFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<(RuntimeRecord, RuntimeState)>> {
        let fleet = self.fleet_view(namespace).await?;
        runtimes_page(fleet.runtimes(), filter, page_size, page_token)
    }

    /// "Did my change land?": the active version and revision of `policy`,
    /// if any, and what the fleet applied or rejected of it.
    pub async fn policy_status(
        &self,
        policy: &PolicyRef,
    ) -> Result<(Option<(u32, u64)>, PolicyStatus)> {
        let active = self
            .index
            .snapshot()
            .get(policy)
            .map(|indexed| (indexed.bundle.version, indexed.bundle.revision));
        let version = active.map_or(0, |(version, _)| version);
        let status = self
            .fleet
            .policy_status(&policy.namespace, &policy.name, version)
            .await?;
        Ok((active, status))
    }

    /// The namespace's runtimes; those that count for cohorts are
    /// [`FleetView::not_stale`].
    pub async fn fleet_view(&self, namespace: &Namespace) -> Result<Arc<FleetView>> {
        self.fleet.runtimes(namespace).await
    }

    /// A rollout with its current step's progress through the fleet.
    pub async fn with_progress(&self, rollout: Rollout) -> Result<(Rollout, Progress)> {
        let progress = self.fleet.progress(&rollout).await?;
        Ok((rollout, progress))
    }
}
