//! Impact analysis (docs/src/guides/impact.md): the decisions OPAs
//! uploaded, replayed against the namespace's active bundle and against
//! the bundle a version would make.

use serde_json::Value;

use crate::domain::decision::{Decision, DecisionFilter};
use crate::domain::impact::{Decider, ImpactReport, analyze};
use crate::domain::rego;
use crate::domain::{Error, PolicyName, PolicyRef, Result, VersionSelector};

use super::PolicyHub;
use super::rego::{claims, given};

/// Decisions read per page while gathering those to replay.
const READ_PAGE: u32 = 500;

impl PolicyHub {
    /// What `version` of `policy` would decide differently from the active
    /// bundle, on at most `limit` of the newest decisions `filter` takes;
    /// and the revision whose active bundle was the baseline.
    pub async fn analyze_impact(
        &self,
        policy: &PolicyRef,
        version: u32,
        filter: &DecisionFilter,
        limit: u32,
    ) -> Result<(u64, ImpactReport)> {
        self.served_to_opa(&policy.namespace)?;
        let candidate = self
            .repository
            .get_version(policy, &VersionSelector::Number(version))
            .await?;
        let index = self.namespace_index(&policy.namespace);
        let (view, _) = given(&index, None);
        let active: Vec<(PolicyName, Value)> = view
            .iter()
            .map(|(name, indexed)| Ok(((*name).clone(), claims(&indexed.bundle.jws)?.body)))
            .collect::<Result<_>>()?;
        let mut proposed: Vec<(PolicyName, Value)> = active
            .iter()
            .filter(|(name, _)| *name != policy.name)
            .cloned()
            .chain([(policy.name.clone(), candidate.body.value().clone())])
            .collect();
        proposed.sort_by(|a, b| a.0.cmp(&b.0));
        let compose = |bodies: &[(PolicyName, Value)]| {
            rego::compose(bodies.iter().map(|(name, body)| (name, body)))
        };
        let (active, proposed) = (compose(&active)?, compose(&proposed)?);
        let decisions = self.decisions_to_replay(policy, filter, limit).await?;
        let report = tokio::task::spawn_blocking(move || {
            let mut before = Decider::new(&active)?;
            let mut after = Decider::new(&proposed)?;
            Ok::<_, Error>(analyze(&mut before, &mut after, &decisions))
        })
        .await
        .map_err(|error| Error::Internal(format!("the replay did not finish: {error}")))??;
        Ok((index.revision, report))
    }

    /// The newest `limit` decisions of the policy's namespace `filter`
    /// takes.
    async fn decisions_to_replay(
        &self,
        policy: &PolicyRef,
        filter: &DecisionFilter,
        limit: u32,
    ) -> Result<Vec<Decision>> {
        let mut decisions = Vec::new();
        let mut token = String::new();
        while decisions.len() < limit as usize {
            let left = limit - decisions.len() as u32;
            let page = self
                .list_decisions(&policy.namespace, filter, left.min(READ_PAGE), &token)
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
