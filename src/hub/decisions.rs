//! The decisions OPAs upload (docs/src/guides/decisions.md): taken from
//! the OPA that holds the runtime, kept with the namespace's retention,
//! listed for authors.

use chrono::Utc;

use crate::domain::decision::{Decision, DecisionFilter, Kept, StoredDecision};
use crate::domain::runtime::RuntimeId;
use crate::domain::{Namespace, Page, Result};
use crate::fleet::held_by_other;
use crate::storage::Retention;

use super::PolicyHub;

impl PolicyHub {
    /// Keeps the decisions `runtime`, an OPA of `namespace` held by
    /// `subject`, uploaded; returns what keeping them did.
    pub async fn upload_opa_decisions(
        &self,
        subject: &str,
        namespace: &Namespace,
        runtime: &RuntimeId,
        decisions: &[Decision],
    ) -> Result<Kept> {
        let record = self.opa_runtime(namespace, runtime).await?;
        if record.subject != subject {
            return Err(held_by_other(runtime, &record.subject));
        }
        self.repository
            .keep_decisions(namespace, decisions, self.decision_retention())
            .await
    }

    /// A page of the decisions of `namespace` that `filter` takes, newest
    /// first.
    pub async fn list_decisions(
        &self,
        namespace: &Namespace,
        filter: &DecisionFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<StoredDecision>> {
        self.served_to_opa(namespace)?;
        let retention = self.decision_retention();
        self.repository
            .list_decisions(
                namespace,
                filter,
                retention.received_after,
                page_size,
                page_token,
            )
            .await
    }

    /// What a namespace keeps, as of now.
    fn decision_retention(&self) -> Retention {
        let settings = &self.opa.decisions;
        let max_age =
            chrono::TimeDelta::from_std(settings.max_age).unwrap_or(chrono::TimeDelta::MAX);
        Retention {
            max_count: settings.max_per_namespace,
            received_after: Utc::now()
                .checked_sub_signed(max_age)
                .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC),
        }
    }
}
