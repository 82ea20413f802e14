//! Rollouts' analyses (docs/src/guides/rollout-analysis.md): checking their
//! queries with Prometheus before a rollout starts, and taking the
//! measurements that are due, for the controller.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::domain::rollout::{
    self, Analysis, Measurement, MetricsSource, QueryAnswer, QueryFacts, Rollout,
    StartRolloutCommand,
};
use crate::domain::{Error, Result};

use super::PolicyHub;

/// Measurements of one step a rollout's judgement reads at most: far more
/// than any analysis's limits, at the floor's interval, within a long bake.
const JUDGED_MEASUREMENTS: u64 = 10_000;

/// Measurements a rollout's reply shows, the newest.
pub const SHOWN_MEASUREMENTS: u64 = 1_000;

/// Queries sent to Prometheus at once, at most, over every rollout.
const CONCURRENT_QUERIES: usize = 16;

/// The measurements being taken: one at a time per analysis of a rollout,
/// however slow its Prometheus, and a bounded number of queries at once.
#[derive(Debug)]
pub(super) struct Measuring {
    /// `(rollout, analysis)` of each measurement being taken.
    taking: Arc<Mutex<HashSet<(String, String)>>>,
    queries: tokio::sync::Semaphore,
}

impl Default for Measuring {
    fn default() -> Self {
        Measuring {
            taking: Arc::default(),
            queries: tokio::sync::Semaphore::new(CONCURRENT_QUERIES),
        }
    }
}

/// A measurement being taken, until dropped.
struct Taking {
    taking: Arc<Mutex<HashSet<(String, String)>>>,
    key: (String, String),
}

impl Drop for Taking {
    fn drop(&mut self) {
        self.taking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.key);
    }
}

impl Measuring {
    /// Marks `analysis` of `rollout` as being taken, unless it already is.
    fn start(&self, rollout: &str, analysis: &str) -> Option<Taking> {
        let key = (rollout.to_owned(), analysis.to_owned());
        let mut taking = self
            .taking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        taking.insert(key.clone()).then(|| Taking {
            taking: self.taking.clone(),
            key,
        })
    }

    /// A turn among the queries sent at once.
    async fn permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.queries
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }
}

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

    /// Starts every measurement of `running` that is due now and not
    /// already being taken, each recorded by its own task as Prometheus
    /// answers, and waits for them at most `wait` (a controller tick);
    /// returns the current step's measurements recorded by then, oldest
    /// first, for the controller to judge. A Prometheus slower than `wait`
    /// holds up no judgement: its measurement is judged at the first tick
    /// after it is recorded. Without analyses, nothing is read.
    pub async fn take_measurements(
        &self,
        running: &Rollout,
        wait: Duration,
    ) -> Result<Vec<Measurement>> {
        if running.analyses_in_force().next().is_none() {
            return Ok(Vec::new());
        }
        let mut measurements = self
            .repository
            .measurements(&running.id, Some(running.step), JUDGED_MEASUREMENTS)
            .await?;
        let due: Vec<Analysis> = running
            .due_analyses(&measurements, Utc::now(), wait)
            .into_iter()
            .cloned()
            .collect();
        let mut taking: FuturesUnordered<_> = due
            .into_iter()
            .filter_map(|analysis| {
                let taken = self.measuring.start(&running.id, &analysis.name)?;
                Some(tokio::spawn(self.clone().measure(
                    running.clone(),
                    analysis,
                    taken,
                )))
            })
            .collect();
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                done = taking.next() => match done {
                    Some(Ok(Some(measurement))) => measurements.push(measurement),
                    Some(_) => {}
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        Ok(measurements)
    }

    /// Takes one measurement of `analysis` and records it; `None` when it
    /// could not be recorded (logged). `_taking` marks it as being taken
    /// until it ends, however it ends.
    async fn measure(
        self,
        running: Rollout,
        analysis: Analysis,
        _taking: Taking,
    ) -> Option<Measurement> {
        let facts = QueryFacts::of(&running, running.step);
        let (query, answer) = match rollout::render_query("query", &analysis.query, &facts) {
            Ok(query) => {
                let answer = match &self.metrics_source {
                    Some(source) => {
                        let _permit = self.measuring.permit().await;
                        source.query(&analysis.prometheus, &query).await
                    }
                    None => QueryAnswer::Unanswered(
                        "no Prometheus server is configured any more".into(),
                    ),
                };
                (query, answer)
            }
            Err(error) => (String::new(), QueryAnswer::NoData(error.to_string())),
        };
        let measurement = rollout::measure(&analysis, running.step, &query, answer, Utc::now());
        tracing::info!(rollout = %running.id, analysis = %analysis.name,
            phase = measurement.phase.as_str(), value = ?measurement.value,
            "analysis measured");
        let recorded = self
            .repository
            .record_measurements(&running.id, std::slice::from_ref(&measurement))
            .await;
        match recorded {
            Ok(()) => Some(measurement),
            Err(error) => {
                tracing::warn!(rollout = %running.id, analysis = %analysis.name, %error,
                    "a measurement could not be recorded; it is taken again");
                None
            }
        }
    }

    /// The newest measurements of a rollout's analyses, oldest first.
    pub async fn rollout_measurements(&self, rollout: &Rollout) -> Result<Vec<Measurement>> {
        self.repository
            .measurements(&rollout.id, None, SHOWN_MEASUREMENTS)
            .await
    }
}
