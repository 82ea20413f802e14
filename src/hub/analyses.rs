//! Rollouts' analyses (docs/src/guides/rollout-analysis.md): checking their
//! queries with Prometheus before a rollout starts, and taking the
//! measurements that are due, for the controller.

use std::sync::Arc;

use chrono::Utc;

use crate::domain::rollout::{
    self, Measurement, MetricsSource, QueryAnswer, QueryFacts, Rollout, StartRolloutCommand,
};
use crate::domain::{Error, Result};

use super::PolicyHub;

/// Measurements of one step a rollout's judgement reads at most: far more
/// than any analysis's limits, at the floor's interval, within a long bake.
const JUDGED_MEASUREMENTS: u64 = 10_000;

/// Measurements a rollout's reply shows, the newest.
pub const SHOWN_MEASUREMENTS: u64 = 1_000;

impl PolicyHub {
    /// Queries rollouts' analyses against `source`'s Prometheus servers.
    pub fn with_metrics_source(mut self, source: Arc<dyn MetricsSource>) -> Self {
        self.metrics_source = Some(source);
        self
    }

    /// Checks the analyses of a rollout about to start as `id`: their
    /// fields, then each query with the Prometheus server it names, which
    /// must parse it. Nothing is written before.
    pub(super) async fn check_analyses(
        &self,
        command: &StartRolloutCommand,
        id: &str,
    ) -> Result<()> {
        let facts = |step| QueryFacts::provisional(command, id, step);
        let queries = rollout::validate_analyses(
            &command.analyses,
            &command.steps,
            &facts,
            self.metrics_source.as_deref(),
        )?;
        let Some(source) = &self.metrics_source else {
            return Ok(());
        };
        for (field, server, query) in queries {
            match source.query(&server, &query).await {
                QueryAnswer::Refused(why) => {
                    return Err(Error::invalid(
                        field,
                        format!("Prometheus {server} cannot run it: {why}"),
                    ));
                }
                QueryAnswer::Unanswered(why) => {
                    return Err(Error::Unavailable(format!(
                        "Prometheus {server} did not answer, so {field} could not be checked: \
                         {why}"
                    )));
                }
                QueryAnswer::Value(_) | QueryAnswer::NoData(_) => {}
            }
        }
        Ok(())
    }

    /// Takes every measurement of `running` that is due now and records
    /// it; returns the current step's measurements, oldest first, for the
    /// controller to judge. Without analyses, nothing is read.
    pub async fn take_measurements(&self, running: &Rollout) -> Result<Vec<Measurement>> {
        if running.analyses_in_force().next().is_none() {
            return Ok(Vec::new());
        }
        let mut measurements = self
            .repository
            .measurements(&running.id, Some(running.step), JUDGED_MEASUREMENTS)
            .await?;
        let due: Vec<_> = running
            .due_analyses(&measurements, Utc::now())
            .into_iter()
            .cloned()
            .collect();
        if due.is_empty() {
            return Ok(measurements);
        }
        let facts = QueryFacts::of(running, running.step);
        let mut taken = Vec::with_capacity(due.len());
        for analysis in &due {
            let (query, answer) = match rollout::render_query("query", &analysis.query, &facts) {
                Ok(query) => {
                    let answer = match &self.metrics_source {
                        Some(source) => source.query(&analysis.prometheus, &query).await,
                        None => QueryAnswer::Unanswered(
                            "no Prometheus server is configured any more".into(),
                        ),
                    };
                    (query, answer)
                }
                Err(error) => (String::new(), QueryAnswer::NoData(error.to_string())),
            };
            let measurement = rollout::measure(analysis, running.step, &query, answer, Utc::now());
            tracing::info!(rollout = %running.id, analysis = %analysis.name,
                phase = measurement.phase.as_str(), value = ?measurement.value,
                "analysis measured");
            taken.push(measurement);
        }
        self.repository
            .record_measurements(&running.id, &taken)
            .await?;
        measurements.extend(taken);
        Ok(measurements)
    }

    /// The newest measurements of a rollout's analyses, oldest first.
    pub async fn rollout_measurements(&self, rollout: &Rollout) -> Result<Vec<Measurement>> {
        self.repository
            .measurements(&rollout.id, None, SHOWN_MEASUREMENTS)
            .await
    }
}
