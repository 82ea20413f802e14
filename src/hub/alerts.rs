//! Alertmanager's alerts against running rollouts
//! (docs/src/guides/rollout-analysis.md#alertmanager): each firing alert
//! aborts or pauses the rollouts it matches, through the same controls an
//! operator uses, so the events and the rollout say why as they would for
//! an operator.

use crate::domain::rollout::{Alert, AlertAction, Rollout};
use crate::domain::{Error, RequestContext, Result};

use super::{Control, PolicyHub};

/// What one alert did: each rollout it acted on, as it is now, and how.
pub type AlertedRollouts = Vec<(Rollout, AlertAction)>;

impl PolicyHub {
    /// Acts on `alerts` in order; one [`AlertedRollouts`] per alert. A
    /// rollout that another alert of the notification, an operator or the
    /// controller moved out of the action's states meanwhile is left as it
    /// is: the alert's purpose, a rollout that stopped, holds already.
    #[tracing::instrument(name = "hub.receive_alerts", skip_all, fields(alerts = alerts.len()))]
    pub async fn receive_alerts(
        &self,
        alerts: &[Alert],
        context: &RequestContext,
    ) -> Result<Vec<AlertedRollouts>> {
        let mut live = match alerts.iter().any(|alert| alert.firing) {
            true => self.live_rollouts().await?,
            false => Vec::new(),
        };
        live.retain(|rollout| alerts.iter().any(|alert| alert.matches(rollout)));
        let mut outcomes = Vec::with_capacity(alerts.len());
        for alert in alerts {
            let mut acted = Vec::new();
            for rollout in &mut live {
                let Some(action) = alert.acts_on(rollout) else {
                    continue;
                };
                let control = match action {
                    AlertAction::Abort => Control::Abort,
                    AlertAction::Pause => Control::Pause,
                };
                let reason = alert.reason();
                let namespace = rollout.namespace.clone();
                let controlled = self
                    .control_rollout(&namespace, &rollout.id, control, &reason, context)
                    .await;
                match controlled {
                    Ok(controlled) => {
                        tracing::info!(rollout = %controlled.id, alert = %alert.name,
                            action = action.as_str(), "alert stopped a rollout");
                        *rollout = controlled.clone();
                        acted.push((controlled, action));
                    }
                    Err(Error::FailedPrecondition { .. } | Error::NotFound(_)) => {}
                    Err(error) => return Err(error),
                }
            }
            if !alert.firing {
                tracing::info!(alert = %alert.name, namespace = %alert.namespace,
                    "resolved alert received: rollouts stay as they are");
            }
            outcomes.push(acted);
        }
        Ok(outcomes)
    }
}
