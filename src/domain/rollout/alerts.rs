//! Alerts that stop rollouts (docs/src/guides/rollout-analysis.md#alertmanager):
//! which running rollouts a firing alert matches, and whether it aborts or
//! pauses them. Alertmanager's labels are the vocabulary: `namespace`
//! (required), `policy` and `rollout` narrow the match, `policyhub_action`
//! picks the action.

use std::collections::BTreeMap;

use super::{Rollout, RolloutState};
use crate::domain::{Error, Namespace, Result};

/// Most alerts in one notification: Alertmanager's webhook `max_alerts`
/// keeps a group's notification within it.
pub const MAX_ALERTS: usize = 100;

/// The label that chooses the action.
pub const ACTION_LABEL: &str = "policyhub_action";

/// What a firing alert does to the rollouts it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertAction {
    /// Stop the rollout: the cohort is sent the stable versions again.
    Abort,
    /// Halt it for a person: the cohort keeps the candidates.
    Pause,
}

impl AlertAction {
    /// The action's name, as the label and the reply spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertAction::Abort => "abort",
            AlertAction::Pause => "pause",
        }
    }

    /// The states a rollout it acts on may be in: an abort ends a paused
    /// rollout too (its cohort still runs the candidates); a pause halts a
    /// running one.
    pub fn acts_on(self) -> &'static [RolloutState] {
        match self {
            AlertAction::Abort => &[RolloutState::Running, RolloutState::Paused],
            AlertAction::Pause => &[RolloutState::Running],
        }
    }
}

/// One alert of a notification, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// Its `alertname` label.
    pub name: String,
    /// Firing (it acts) or resolved (it does not).
    pub firing: bool,
    /// Its `namespace` label: the rollouts it may match live there.
    pub namespace: Namespace,
    /// Its `policy` label: only rollouts moving this policy match.
    pub policy: Option<String>,
    /// Its `rollout` label: only the rollout of this id matches.
    pub rollout: Option<String>,
    /// Its `policyhub_action` label; `None`: the rollout's failure
    /// handling decides.
    pub action: Option<AlertAction>,
    /// Where its rule is, as Alertmanager sent it.
    pub generator_url: String,
}

impl Alert {
    /// An alert from Alertmanager's status and labels; `field` names it in
    /// errors (`alerts[2]`).
    pub fn parse(
        field: &str,
        status: &str,
        labels: &BTreeMap<String, String>,
        generator_url: String,
    ) -> Result<Alert> {
        let firing = match status {
            "firing" => true,
            "resolved" => false,
            other => {
                return Err(Error::invalid(
                    format!("{field}.status"),
                    format!("{other:?} is neither \"firing\" nor \"resolved\""),
                ));
            }
        };
        let label = |name: &str| labels.get(name).filter(|value| !value.is_empty());
        let Some(namespace) = label("namespace") else {
            return Err(Error::invalid(
                format!("{field}.labels.namespace"),
                "an alert for rollouts names the namespace they run in (a namespace label)",
            ));
        };
        let namespace = Namespace::parse(&format!("{field}.labels.namespace"), namespace)?;
        let action = match label(ACTION_LABEL).map(String::as_str) {
            None => None,
            Some("abort") => Some(AlertAction::Abort),
            Some("pause") => Some(AlertAction::Pause),
            Some(other) => {
                return Err(Error::invalid(
                    format!("{field}.labels.{ACTION_LABEL}"),
                    format!("{other:?} is neither \"abort\" nor \"pause\""),
                ));
            }
        };
        Ok(Alert {
            name: labels.get("alertname").cloned().unwrap_or_default(),
            firing,
            namespace,
            policy: label("policy").cloned(),
            rollout: label("rollout").cloned(),
            action,
            generator_url,
        })
    }

    /// Whether it matches `rollout`: the same namespace, and the policy and
    /// rollout it names, if it names them.
    pub fn matches(&self, rollout: &Rollout) -> bool {
        rollout.namespace == self.namespace
            && self.rollout.as_ref().is_none_or(|id| *id == rollout.id)
            && self.policy.as_ref().is_none_or(|name| {
                rollout
                    .targets
                    .iter()
                    .any(|target| target.policy.name.as_str() == name)
            })
    }

    /// What it does to `rollout` if it fires and matches: its label's
    /// action, or else what a failed step does to that rollout (abort when
    /// it rolls back on failure, pause when not).
    pub fn action_on(&self, rollout: &Rollout) -> AlertAction {
        self.action.unwrap_or(match rollout.auto_rollback {
            true => AlertAction::Abort,
            false => AlertAction::Pause,
        })
    }

    /// The action it takes on `rollout` now, if any: firing, matching, and
    /// the rollout in a state the action acts on.
    pub fn acts_on(&self, rollout: &Rollout) -> Option<AlertAction> {
        let action = self.action_on(rollout);
        (self.firing && self.matches(rollout) && action.acts_on().contains(&rollout.state))
            .then_some(action)
    }

    /// Why the rollout stopped, as its events and `halted_because` say.
    pub fn reason(&self) -> String {
        let name = match self.name.as_str() {
            "" => "without an alertname",
            name => name,
        };
        match self.generator_url.as_str() {
            "" => format!("alert {name} fired"),
            url => format!("alert {name} fired ({url})"),
        }
    }
}

/// Refuses a notification of no alerts or of more than [`MAX_ALERTS`].
pub fn ensure_alert_count(count: usize) -> Result<()> {
    if count == 0 {
        return Err(Error::invalid("alerts", "a notification carries alerts"));
    }
    if count > MAX_ALERTS {
        return Err(Error::invalid(
            "alerts",
            format!(
                "{count} alerts, at most {MAX_ALERTS} in one notification \
                 (set max_alerts: {MAX_ALERTS} in Alertmanager's webhook_config)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::rollout::tests::{rollout, step};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn alert(pairs: &[(&str, &str)]) -> Alert {
        Alert::parse(
            "alerts[0]",
            "firing",
            &labels(pairs),
            "http://p/graph".into(),
        )
        .unwrap()
    }

    #[test]
    fn an_alert_matches_by_namespace_then_policy_and_rollout_when_named() {
        let running = rollout(vec![step(100, 60)]);
        assert!(alert(&[("namespace", "team")]).matches(&running));
        assert!(alert(&[("namespace", "team"), ("policy", "limits")]).matches(&running));
        assert!(alert(&[("namespace", "team"), ("rollout", "7c6f")]).matches(&running));
        assert!(!alert(&[("namespace", "other")]).matches(&running));
        assert!(!alert(&[("namespace", "team"), ("policy", "fees")]).matches(&running));
        assert!(!alert(&[("namespace", "team"), ("rollout", "8d7a")]).matches(&running));
    }

    #[test]
    fn the_label_chooses_the_action_else_the_rollouts_failure_handling() {
        let mut running = rollout(vec![step(100, 60)]);
        let plain = alert(&[("namespace", "team")]);
        assert_eq!(plain.acts_on(&running), Some(AlertAction::Abort));
        running.auto_rollback = false;
        assert_eq!(plain.acts_on(&running), Some(AlertAction::Pause));
        let abort = alert(&[("namespace", "team"), (ACTION_LABEL, "abort")]);
        assert_eq!(abort.acts_on(&running), Some(AlertAction::Abort));
        // A paused rollout is aborted, not paused again; an ended one is
        // left alone.
        running.state = RolloutState::Paused;
        assert_eq!(plain.acts_on(&running), None);
        assert_eq!(abort.acts_on(&running), Some(AlertAction::Abort));
        running.state = RolloutState::Aborted;
        assert_eq!(abort.acts_on(&running), None);
    }

    #[test]
    fn a_resolved_alert_does_nothing() {
        let running = rollout(vec![step(100, 60)]);
        let resolved = Alert::parse(
            "alerts[0]",
            "resolved",
            &labels(&[("namespace", "team")]),
            "".into(),
        )
        .unwrap();
        assert_eq!(resolved.acts_on(&running), None);
    }

    #[test]
    fn bad_labels_are_refused_naming_the_label() {
        let refused = |status: &str, pairs: &[(&str, &str)]| match Alert::parse(
            "alerts[3]",
            status,
            &labels(pairs),
            String::new(),
        ) {
            Err(Error::InvalidArgument(violations)) => violations[0].field.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(refused("firing", &[]), "alerts[3].labels.namespace");
        assert_eq!(
            refused("firing", &[("namespace", "Not A Namespace")]),
            "alerts[3].labels.namespace"
        );
        assert_eq!(
            refused(
                "firing",
                &[("namespace", "team"), (ACTION_LABEL, "rollback")]
            ),
            "alerts[3].labels.policyhub_action"
        );
        assert_eq!(
            refused("pending", &[("namespace", "team")]),
            "alerts[3].status"
        );
    }

    #[test]
    fn the_reason_names_the_alert_and_its_generator() {
        assert_eq!(
            alert(&[("namespace", "team"), ("alertname", "HighErrorRate")]).reason(),
            "alert HighErrorRate fired (http://p/graph)"
        );
        assert!(ensure_alert_count(MAX_ALERTS).is_ok());
        assert!(ensure_alert_count(MAX_ALERTS + 1).is_err());
        assert!(ensure_alert_count(0).is_err());
    }
}
