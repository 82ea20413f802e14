//! `policyhub receive-alerts`: hands the server an Alertmanager webhook
//! notification (ReceiveAlerts), as Alertmanager's webhook does, to try a
//! route's labels before Alertmanager relies on them, to replay a
//! notification it sent, or to stop rollouts from another alerting system.
//! The notification comes from a file, as with `kubectl apply -f`, or is
//! one firing alert made of labels, as `amtool alert add` takes them.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;

use super::ClientCommand;
use super::connection::AuthChannel;
use super::document;
use super::failure::{Reply, Unusable, What};
use super::output::{Output, Table, message_from_json, print_message};
use crate::grpc::proto::{self, policy_service_client::PolicyServiceClient};

/// Arguments of `policyhub receive-alerts`.
#[derive(Debug, clap::Args)]
pub struct ReceiveAlertsArgs {
    /// The labels of one firing alert, NAME=VALUE, as `amtool alert add`
    /// takes them: `alertname`, `namespace` (required), and `policy`,
    /// `rollout` and `policyhub_action` (abort or pause) to narrow what it
    /// stops and say how.
    #[arg(
        value_name = "NAME=VALUE",
        value_parser = parse_label,
        required_unless_present = "filename",
        conflicts_with = "filename"
    )]
    labels: Vec<(String, String)>,
    /// Where that alert's rule is (its expression in Prometheus); recorded
    /// with what the alert did.
    #[arg(long, value_name = "URL", conflicts_with = "filename")]
    generator_url: Option<String>,
    /// A notification as Alertmanager's webhook posts it (payload version
    /// 4, which is the protobuf JSON mapping of ReceiveAlertsRequest), in
    /// JSON or YAML; `-` reads standard input.
    #[arg(long, short = 'f', value_name = "FILE")]
    filename: Option<PathBuf>,
}

/// A label written NAME=VALUE.
fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!(
            "{text:?}: a label is NAME=VALUE, such as namespace=payments"
        )),
    }
}

impl ReceiveAlertsArgs {
    /// The notification: the file's, or one firing alert of the labels.
    fn request(self) -> anyhow::Result<proto::ReceiveAlertsRequest> {
        if let Some(file) = &self.filename {
            let not_a_notification = || {
                Unusable::new(
                    What::Document,
                    format!(
                        "{} is not an Alertmanager notification: an object with \"alerts\", \
                         each with status, labels and generatorURL, as its webhook posts it",
                        file.display()
                    ),
                )
            };
            return message_from_json(document::read(file)?).with_context(not_a_notification);
        }
        let labels: std::collections::HashMap<String, String> = self.labels.into_iter().collect();
        let group_labels = labels
            .get("alertname")
            .map(|name| [("alertname".to_owned(), name.clone())].into())
            .unwrap_or_default();
        Ok(proto::ReceiveAlertsRequest {
            version: "4".into(),
            status: "firing".into(),
            group_labels,
            common_labels: labels.clone(),
            alerts: vec![proto::Alert {
                status: "firing".into(),
                labels,
                starts_at: Some(crate::grpc::convert::timestamp(chrono::Utc::now())),
                generator_url: self.generator_url.unwrap_or_default(),
                ..Default::default()
            }],
            ..Default::default()
        })
    }
}

impl ClientCommand for ReceiveAlertsArgs {
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let request = self.request()?;
        let received = PolicyServiceClient::new(channel)
            .receive_alerts(request)
            .await
            .reply("handing over the alerts")?;
        if output == Output::Json {
            print_message(&received);
            return Ok(ExitCode::SUCCESS);
        }
        let mut table = Table::new(&["ALERT", "STATUS", "ROLLOUT", "ACTION", "STATE"]);
        for alert in &received.alerts {
            if alert.rollouts.is_empty() {
                let untouched = ["-", "-", "-"].map(str::to_owned);
                table.row(
                    [alert.alertname.clone(), alert.status.clone()]
                        .into_iter()
                        .chain(untouched)
                        .collect(),
                );
            }
            for rollout in &alert.rollouts {
                table.row(vec![
                    alert.alertname.clone(),
                    alert.status.clone(),
                    format!("{}/{}", rollout.namespace, rollout.id),
                    rollout.action.clone(),
                    state_name(rollout.state()),
                ]);
            }
        }
        out!("{table}");
        Ok(ExitCode::SUCCESS)
    }
}

/// A rollout's state as `rollout status` prints it: `aborted`, `paused`.
fn state_name(state: proto::RolloutState) -> String {
    state
        .as_str_name()
        .trim_start_matches("ROLLOUT_STATE_")
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_make_one_firing_alert_and_a_file_is_taken_as_alertmanager_posts_it() {
        let args = ReceiveAlertsArgs {
            labels: vec![
                ("alertname".into(), "ErrorRate".into()),
                ("namespace".into(), "payments".into()),
            ],
            generator_url: Some("http://prometheus/graph".into()),
            filename: None,
        };
        let request = args.request().unwrap();
        assert_eq!(
            (request.version.as_str(), request.status.as_str()),
            ("4", "firing")
        );
        let alert = &request.alerts[0];
        assert_eq!(request.alerts.len(), 1);
        assert_eq!(alert.status, "firing");
        assert_eq!(alert.labels["namespace"], "payments");
        assert_eq!(alert.generator_url, "http://prometheus/graph");
        assert_eq!(request.group_labels["alertname"], "ErrorRate");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("notification.json");
        std::fs::write(
            &file,
            r#"{"version": "4", "groupKey": "{}:{alertname=\"E\"}", "truncatedAlerts": 0,
                "status": "firing", "receiver": "policyhub", "groupLabels": {},
                "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
                "alerts": [{"status": "resolved", "labels": {"namespace": "payments"},
                            "annotations": {}, "startsAt": "2026-11-28T04:00:00.123+01:00",
                            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://p",
                            "fingerprint": "c0ffee"}]}"#,
        )
        .unwrap();
        let args = ReceiveAlertsArgs {
            labels: Vec::new(),
            generator_url: None,
            filename: Some(file),
        };
        let request = args.request().unwrap();
        assert_eq!(request.external_url, "http://am");
        assert_eq!(request.alerts[0].generator_url, "http://p");
        assert_eq!(request.alerts[0].status, "resolved");
    }

    #[test]
    fn a_label_is_a_name_and_a_value() {
        assert_eq!(
            parse_label("policyhub_action=pause").unwrap(),
            ("policyhub_action".into(), "pause".into())
        );
        assert_eq!(parse_label("empty=").unwrap(), ("empty".into(), "".into()));
        assert!(parse_label("namespace").is_err());
        assert!(parse_label("=payments").is_err());
    }
}
