//! The fleet view through the hub: runtimes arriving and reporting, and
//! what the fleet tells about a policy or a rollout.

use crate::domain::rollout::{Progress, Rollout, progress};
use crate::domain::runtime::{
    PolicyStatus, RuntimeFilter, RuntimeRecord, RuntimeState, StatusReport, policy_status,
    runtimes_page,
};
use crate::domain::{Namespace, Page, PolicyRef, Result};
use crate::fleet::{Arrival, Connection};

use super::PolicyHub;

impl PolicyHub {
    /// Registers a stream of an identified runtime (see `Fleet::connect`).
    pub async fn connect_runtime(&self, arrival: Arrival) -> Result<Connection> {
        self.fleet.connect(arrival).await
    }

    /// Records a runtime's report from `subject`; returns how many outcomes
    /// were older than what it reported before.
    pub async fn report_status(&self, subject: &str, report: StatusReport) -> Result<u32> {
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
        let fleet = self.fleet.runtimes(namespace).await?;
        runtimes_page(fleet, filter, page_size, page_token)
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
        let fleet = self.fleet.runtimes(&policy.namespace).await?;
        let version = active.map_or(0, |(version, _)| version);
        Ok((active, policy_status(&policy.name, version, &fleet)))
    }

    /// The namespace's runtimes that count for cohorts: every one not stale.
    pub async fn cohorts(&self, namespace: &Namespace) -> Result<Vec<RuntimeRecord>> {
        Ok(self
            .fleet
            .runtimes(namespace)
            .await?
            .into_iter()
            .filter(|(_, state)| *state != RuntimeState::Stale)
            .map(|(record, _)| record)
            .collect())
    }

    /// A rollout with its current step's progress through the fleet.
    pub async fn with_progress(&self, rollout: Rollout) -> Result<(Rollout, Progress)> {
        let fleet = self.cohorts(&rollout.namespace).await?;
        let progress = progress(&rollout, &fleet);
        Ok((rollout, progress))
    }
}
