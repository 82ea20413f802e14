//! The reads every transport serves: versions, listings, diffs, rollouts,
//! and the active bundle from memory where the index holds the answer.

use crate::domain::chain::Checkpoint;
use crate::domain::rollout::{Progress, Rollout};
use crate::domain::runtime::PolicyStatus;
use crate::domain::{
    AsOf, Error, EventFilter, EventRecord, Namespace, NamespaceScope, Page, PolicyRef,
    PolicySummary, Result, VersionRecord, VersionSelector,
};

use super::{ActiveView, PolicyHub};
use crate::watch::Watcher;

impl PolicyHub {
    /// One version.
    pub async fn get_version(
        &self,
        policy: &PolicyRef,
        selector: &VersionSelector,
    ) -> Result<VersionRecord> {
        self.repository.get_version(policy, selector).await
    }

    /// A page of a policy's versions, newest first.
    pub async fn list_versions(
        &self,
        policy: &PolicyRef,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<VersionRecord>> {
        self.repository
            .list_versions(policy, page_size, page_token)
            .await
    }

    /// One policy as a listing shows it, with what the fleet made of its
    /// active version.
    pub async fn get_policy(&self, policy: &PolicyRef) -> Result<(PolicySummary, PolicyStatus)> {
        let summary = self.repository.summary(policy).await?;
        let active = summary.active.map_or(0, |(version, _)| version);
        let status = self
            .fleet
            .policy_statuses(&policy.namespace, &[(&policy.name, active)])
            .await?
            .pop()
            .ok_or_else(|| Error::Internal("no fleet status for one policy".into()))?;
        Ok((summary, status))
    }

    /// A page of the policies in `scope`, each with what the fleet made of
    /// its active version: what a listing shows of each policy, read once
    /// for the page instead of once per policy.
    pub async fn list_policies(
        &self,
        scope: &NamespaceScope,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<(PolicySummary, PolicyStatus)>> {
        let page = self
            .repository
            .list_policies(scope, page_size, page_token)
            .await?;
        let mut statuses = Vec::with_capacity(page.items.len());
        // The page is ordered by namespace: one roster read per namespace.
        for run in page
            .items
            .chunk_by(|a, b| a.policy.namespace == b.policy.namespace)
        {
            let policies: Vec<_> = run
                .iter()
                .map(|summary| {
                    let active = summary.active.map_or(0, |(version, _)| version);
                    (&summary.policy.name, active)
                })
                .collect();
            let namespace = &run[0].policy.namespace;
            statuses.extend(self.fleet.policy_statuses(namespace, &policies).await?);
        }
        Ok(Page {
            items: page.items.into_iter().zip(statuses).collect(),
            next_page_token: page.next_page_token,
        })
    }

    /// A page of the events `filter` selects, newest first.
    pub async fn list_events(
        &self,
        filter: &EventFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<EventRecord>> {
        self.repository
            .list_events(filter, page_size, page_token)
            .await
    }

    /// A page of the signed checkpoints, newest first.
    pub async fn list_checkpoints(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<Checkpoint>> {
        self.repository
            .list_checkpoints(page_size, page_token)
            .await
    }

    /// One rollout, with its progress.
    pub async fn get_rollout(
        &self,
        namespace: &Namespace,
        id: &str,
    ) -> Result<(Rollout, Progress)> {
        let rollout = self.repository.get_rollout(namespace, id).await?;
        self.with_progress(rollout).await
    }

    /// A page of a namespace's rollouts, newest first, with their progress.
    pub async fn list_rollouts(
        &self,
        namespace: &Namespace,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<(Rollout, Progress)>> {
        let page = self
            .repository
            .list_rollouts(namespace, page_size, page_token)
            .await?;
        let mut items = Vec::with_capacity(page.items.len());
        for rollout in page.items {
            let progress = self.fleet.progress(&rollout).await?;
            items.push((rollout, progress));
        }
        Ok(Page {
            items,
            next_page_token: page.next_page_token,
        })
    }

    /// The RFC 6902 patch from one version's body to another's.
    pub async fn diff(
        &self,
        policy: &PolicyRef,
        from: u32,
        to: u32,
    ) -> Result<(VersionRecord, VersionRecord, json_patch::Patch)> {
        let from = self
            .repository
            .get_version(policy, &VersionSelector::Number(from))
            .await?;
        let to = self
            .repository
            .get_version(policy, &VersionSelector::Number(to))
            .await?;
        let patch = json_patch::diff(from.body.value(), to.body.value());
        Ok((from, to, patch))
    }

    /// The active bundle now (from memory; for `watcher`, the candidate when
    /// a rollout's cohort holds it), or as of a past revision or instant
    /// (from the event log).
    pub async fn get_active(
        &self,
        policy: &PolicyRef,
        as_of: Option<AsOf>,
        allow_draft_fallback: bool,
        watcher: Option<&Watcher>,
    ) -> Result<ActiveView> {
        if let Some(as_of) = as_of {
            if let AsOf::Revision(revision) = as_of {
                let current = self.index.revision();
                if revision.get() > current {
                    return Err(Error::invalid(
                        "as_of_revision",
                        format!("revision {revision} is ahead of the current revision {current}"),
                    ));
                }
            }
            return match self.repository.active_as_of(policy, as_of).await? {
                Some(bundle) => {
                    let proof = self.repository.proving_checkpoint(as_of).await?;
                    Ok(ActiveView::Signed(bundle, proof))
                }
                None => Err(Error::NotFound(format!(
                    "no version of {policy} was active at that point"
                ))),
            };
        }
        let snapshot = self.index.snapshot();
        let indexed = match watcher {
            Some(watcher) => snapshot.get_for(policy, watcher),
            None => snapshot.get(policy),
        };
        if let Some(indexed) = indexed {
            let proof = self.index.checkpoint();
            return Ok(ActiveView::Current(indexed.clone(), proof));
        }
        // The rare path: tell a missing policy from one with nothing active.
        let draft = self.repository.open_draft(policy).await?;
        match draft {
            Some(draft) if allow_draft_fallback => Ok(ActiveView::UnsignedDraft(draft)),
            _ if allow_draft_fallback => Err(Error::NotFound(format!(
                "{policy} has no active version and no open draft"
            ))),
            _ => Err(Error::NotFound(format!(
                "{policy} has no active version (set allow_draft_fallback to get its open draft)"
            ))),
        }
    }
}
