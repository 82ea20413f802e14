//! Alertmanager's webhook notification as validated alerts, and what they
//! did back as protobuf.

use std::collections::BTreeMap;

use super::proto;
use super::rollouts::state;
use crate::config::Limits;
use crate::domain::Result;
use crate::domain::rollout::{Alert, ensure_alert_count};
use crate::hub::AlertedRollouts;

/// The alerts of a notification, every one valid, or the first refusal
/// naming its field (`alerts[2].labels.namespace`). The fields the server
/// records (the alert's name and generator URL) are bounded as any reason.
pub(super) fn received(
    request: proto::ReceiveAlertsRequest,
    limits: &Limits,
) -> Result<Vec<Alert>> {
    ensure_alert_count(request.alerts.len())?;
    request
        .alerts
        .into_iter()
        .enumerate()
        .map(|(index, alert)| {
            let field = format!("alerts[{index}]");
            let mut labels: BTreeMap<String, String> = alert.labels.into_iter().collect();
            if let Some(name) = labels.remove("alertname") {
                let name = limits.text(&format!("{field}.labels.alertname"), name)?;
                labels.insert("alertname".into(), name);
            }
            let generator_url =
                limits.text(&format!("{field}.generatorURL"), alert.generator_url)?;
            Alert::parse(&field, &alert.status, &labels, generator_url)
        })
        .collect()
}

/// What each alert did, in the request's order.
pub(super) fn outcomes(
    alerts: &[Alert],
    acted: &[AlertedRollouts],
) -> proto::ReceiveAlertsResponse {
    proto::ReceiveAlertsResponse {
        alerts: alerts
            .iter()
            .zip(acted)
            .map(|(alert, acted)| proto::AlertOutcome {
                alertname: alert.name.clone(),
                status: match alert.firing {
                    true => "firing",
                    false => "resolved",
                }
                .into(),
                rollouts: acted
                    .iter()
                    .map(|(rollout, action)| proto::AlertedRollout {
                        namespace: rollout.namespace.to_string(),
                        id: rollout.id.clone(),
                        action: action.as_str().into(),
                        state: state(rollout.state) as i32,
                    })
                    .collect(),
            })
            .collect(),
    }
}
