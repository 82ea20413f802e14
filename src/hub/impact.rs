//! Impact analysis (docs/src/guides/impact.md): the decisions OPAs
//! uploaded, replayed against the namespace's active bundle and against
//! the bundle a change would make; and the gate that refuses a change
//! deciding too much differently.

use std::fmt::Display;

use serde::de::IgnoredAny;
use serde_json::Value;

use crate::domain::decision::{Decision, DecisionFilter};
use crate::domain::impact::{Decider, ImpactReport, analyze};
use crate::domain::rego;
use crate::domain::{
    Error, Namespace, PolicyName, PolicyRef, Precondition, PublishCommand, Result, VersionSelector,
};

use crate::storage::IdempotencyClaim;

use super::PolicyHub;
use super::rego::{claims, given};

/// Decisions read per page while gathering those to replay.
const READ_PAGE: u32 = 500;

impl PolicyHub {
    /// What `version` of `policy` would decide differently from the active
    /// bundle, on at most `limit` of the newest decisions `filter` takes.
    pub async fn analyze_impact(
        &self,
        policy: &PolicyRef,
        version: u32,
        filter: &DecisionFilter,
        limit: u32,
    ) -> Result<ImpactReport> {
        self.served_to_opa(&policy.namespace)?;
        let candidate = self
            .repository
            .get_version(policy, &VersionSelector::Number(version))
            .await?;
        let replaced = [(policy.name.clone(), candidate.body.value().clone())];
        self.impact_of(&policy.namespace, &replaced, filter, limit)
            .await
    }

    /// When the policy's namespace has an impact gate and the call `claim`
    /// names was not carried out already: refuses publishing the draft
    /// `command` names when it would decide too much differently. Without
    /// a draft, the publication itself fails.
    pub(super) async fn judge_publication(
        &self,
        command: &PublishCommand,
        claim: Option<&IdempotencyClaim>,
    ) -> Result<()> {
        let policy = &command.policy;
        if !self.opa.impact_gates.contains_key(&policy.namespace) || self.carried_out(claim).await?
        {
            return Ok(());
        }
        let number = match command.version {
            Some(number) => number,
            None => match self.repository.open_draft(policy).await? {
                Some(draft) => draft.version,
                None => return Ok(()),
            },
        };
        let selector = VersionSelector::Number(number);
        self.judge_targets(
            &policy.namespace,
            &[(&policy.name, &selector)],
            "publishing",
            None,
        )
        .await?;
        Ok(())
    }

    /// Whether the call `claim` names was carried out already: its retry
    /// gets the first outcome, whatever the decisions say now.
    async fn carried_out(&self, claim: Option<&IdempotencyClaim>) -> Result<bool> {
        let replayed = self.repository.replayed::<IgnoredAny>(claim).await?;
        Ok(replayed.is_some())
    }

    /// When `namespace` has an impact gate and the call `claim` names was
    /// not carried out already: refuses moving its `targets` to the
    /// versions named (`change` says how, "activating") when they would
    /// decide too much differently; else the report.
    pub(super) async fn judge_targets(
        &self,
        namespace: &Namespace,
        targets: &[(&PolicyName, &VersionSelector)],
        change: &str,
        claim: Option<&IdempotencyClaim>,
    ) -> Result<Option<ImpactReport>> {
        if !self.opa.impact_gates.contains_key(namespace) || self.carried_out(claim).await? {
            return Ok(None);
        }
        let mut replaced = Vec::with_capacity(targets.len());
        let mut named = Vec::with_capacity(targets.len());
        for (name, selector) in targets {
            let policy = PolicyRef {
                namespace: namespace.clone(),
                name: (*name).clone(),
            };
            let version = self.repository.get_version(&policy, selector).await?;
            replaced.push(((*name).clone(), version.body.value().clone()));
            named.push(format!("{policy} {selector}"));
        }
        let change = format!("{change} {}", named.join(" and "));
        self.judge_impact(namespace, &replaced, change).await
    }

    /// When `namespace` has an impact gate: refuses `change` (what the
    /// caller does, "publishing payments/authz version 2") when the bodies
    /// it puts in place of `replaced` policies' would decide more of a
    /// path's decisions differently than the gate allows; else the report.
    async fn judge_impact(
        &self,
        namespace: &Namespace,
        replaced: &[(PolicyName, Value)],
        change: impl Display,
    ) -> Result<Option<ImpactReport>> {
        let Some(gate) = self.opa.impact_gates.get(namespace) else {
            return Ok(None);
        };
        let report = self
            .impact_of(
                namespace,
                replaced,
                &DecisionFilter::default(),
                gate.decisions,
            )
            .await?;
        let exceeded = gate.exceeded(&report);
        if exceeded.is_empty() {
            return Ok(Some(report));
        }
        let paths: Vec<String> = exceeded.iter().map(|path| path.describe()).collect();
        Err(Error::refused_by(
            Precondition::Impact,
            format!(
                "the impact gate of namespace {namespace} refuses {change}: it decides more than \
             {}% of a path's decisions differently ({}), in the impact report of the {} newest \
             decisions replayed against the active bundle of revision {} (AnalyzeImpact shows \
             a version's)",
                gate.max_changed_percent,
                paths.join("; "),
                report.replayed,
                report.active_revision,
            ),
        ))
    }

    /// What the namespace's bundle with `replaced` policies' bodies in
    /// place would decide differently from its active bundle, on at most
    /// `limit` of the newest decisions `filter` takes.
    async fn impact_of(
        &self,
        namespace: &Namespace,
        replaced: &[(PolicyName, Value)],
        filter: &DecisionFilter,
        limit: u32,
    ) -> Result<ImpactReport> {
        let index = self.namespace_index(namespace);
        let (view, _) = given(&index, None);
        let active: Vec<(PolicyName, Value)> = view
            .iter()
            .map(|(name, indexed)| Ok(((*name).clone(), claims(&indexed.bundle.jws)?.body)))
            .collect::<Result<_>>()?;
        let mut proposed: Vec<(PolicyName, Value)> = active
            .iter()
            .filter(|(name, _)| replaced.iter().all(|(other, _)| other != name))
            .chain(replaced)
            .cloned()
            .collect();
        proposed.sort_by(|a, b| a.0.cmp(&b.0));
        let compose = |bodies: &[(PolicyName, Value)]| {
            rego::compose(bodies.iter().map(|(name, body)| (name, body)))
        };
        let (active, proposed) = (compose(&active)?, compose(&proposed)?);
        let decisions = self.decisions_to_replay(namespace, filter, limit).await?;
        let mut report = tokio::task::spawn_blocking(move || {
            let mut before = Decider::new(&active)?;
            let mut after = Decider::new(&proposed)?;
            Ok::<_, Error>(analyze(&mut before, &mut after, &decisions))
        })
        .await
        .map_err(|error| Error::Internal(format!("the replay did not finish: {error}")))??;
        report.active_revision = index.revision;
        Ok(report)
    }

    /// The newest `limit` decisions of `namespace` `filter` takes.
    async fn decisions_to_replay(
        &self,
        namespace: &Namespace,
        filter: &DecisionFilter,
        limit: u32,
    ) -> Result<Vec<Decision>> {
        let mut decisions = Vec::new();
        let mut token = String::new();
        while decisions.len() < limit as usize {
            let left = limit - decisions.len() as u32;
            let page = self
                .list_decisions(namespace, filter, left.min(READ_PAGE), &token)
                .await?;
            decisions.extend(page.items.into_iter().map(|stored| stored.decision));
            match page.next_page_token {
                Some(next) => token = next,
                None => break,
            }
        }
        Ok(decisions)
    }
}
