//! How an announcement is written: a CloudEvents 1.0 JSON message in
//! structured mode, or a readable line for chat incoming webhooks
//! (Slack-compatible `{"text": …}`). Bounded: free text is cut.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::domain::EventRecord;
use crate::domain::subscription::{Announcement, Format, webhook_id};

/// The longest reason a message carries, in bytes.
const MAX_REASON_BYTES: usize = 4096;

/// The content type of a structured-mode CloudEvent.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// A message ready to sign and send.
#[derive(Debug, Clone)]
pub struct Message {
    /// The `webhook-id`: one per event, the same on every attempt.
    pub id: String,
    /// The body.
    pub body: String,
    /// Its content type.
    pub content_type: &'static str,
}

fn cut(text: &str) -> &str {
    if text.len() <= MAX_REASON_BYTES {
        return text;
    }
    let mut end = MAX_REASON_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The CloudEvents `type` of an event kind: `io.policyhub.` and the kind in
/// lowercase, dotted (`io.policyhub.rollout.scheduled`).
pub fn event_type(record: &EventRecord) -> String {
    format!(
        "io.policyhub.{}",
        record.kind.as_str().to_ascii_lowercase().replace('_', ".")
    )
}

fn data(record: &EventRecord) -> Value {
    let (namespace, name) = record.policy.clone().unwrap_or_default();
    json!({
        "id": record.id,
        "kind": record.kind.as_str(),
        "namespace": namespace,
        "name": name,
        "actor": record.actor,
        "reason": cut(&record.reason),
        "request_id": record.request_id,
        "previous_version": record.previous_version,
        "new_version": record.new_version,
        "revision": record.revision,
        "key_id": record.key_id,
        "rollout_id": record.rollout_id,
        "hash": record.hash,
    })
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The message announcing `announcement` in `format`; `source` is the
/// CloudEvents source of this deployment.
pub fn write(announcement: Announcement<'_>, format: Format, source: &str) -> Message {
    let (id, event) = match announcement {
        Announcement::Event(record) => (webhook_id(record.id), Some(record)),
        Announcement::Test => (format!("test_{}", uuid::Uuid::new_v4().simple()), None),
    };
    let body = match (format, event) {
        (Format::CloudEvents, Some(record)) => {
            let mut message = json!({
                "specversion": "1.0",
                "id": id,
                "source": source,
                "type": event_type(record),
                "time": time(record.at),
                "datacontenttype": "application/json",
                "data": data(record),
            });
            if let Some(about) = about(record) {
                message["subject"] = json!(about);
            }
            message
        }
        (Format::CloudEvents, None) => json!({
            "specversion": "1.0",
            "id": id,
            "source": source,
            "type": "io.policyhub.subscription.test",
            "time": time(Utc::now()),
            "datacontenttype": "application/json",
            "data": {"message": "a test message from policyhub"},
        }),
        (Format::Chat, Some(record)) => json!({"text": chat_line(record)}),
        (Format::Chat, None) => json!({"text": "policyhub: a test message"}),
    };
    Message {
        id,
        body: body.to_string(),
        content_type: match format {
            Format::CloudEvents => CLOUDEVENTS_JSON,
            Format::Chat => "application/json",
        },
    }
}

/// What an event concerns: `namespace/name` for a policy, the namespace
/// alone for an event of no policy in it, nothing for the deployment.
fn about(record: &EventRecord) -> Option<String> {
    let (namespace, name) = record.policy.as_ref()?;
    Some(if name.is_empty() {
        namespace.clone()
    } else {
        format!("{namespace}/{name}")
    })
}

/// One readable line: what happened, to what, by whom, and why.
fn chat_line(record: &EventRecord) -> String {
    let what = record.kind.as_str().to_ascii_lowercase().replace('_', " ");
    let mut line = format!("policyhub: {what}");
    if let Some(about) = about(record) {
        line.push_str(&format!(" {about}"));
    }
    if let Some(version) = record.new_version {
        line.push_str(&format!(" v{version}"));
    }
    if let Some(rollout) = &record.rollout_id {
        line.push_str(&format!(" (rollout {rollout})"));
    }
    line.push_str(&format!(" by {}", record.actor));
    if !record.reason.is_empty() {
        line.push_str(&format!(": {}", cut(&record.reason)));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventKind;

    fn record() -> EventRecord {
        EventRecord {
            id: 42,
            kind: EventKind::RolloutScheduled,
            policy: Some(("payments".into(), "limits".into())),
            actor: "alice".into(),
            at: Utc::now(),
            reason: "x".repeat(10_000),
            request_id: "r".into(),
            previous_version: None,
            new_version: Some(3),
            revision: None,
            key_id: None,
            rollout_id: Some("ro-1".into()),
            hash: "sha256:00".into(),
        }
    }

    #[test]
    fn a_cloudevent_names_the_event_and_bounds_its_reason() {
        let record = record();
        let message = write(
            Announcement::Event(&record),
            Format::CloudEvents,
            "/policyhub",
        );
        let parsed: Value = serde_json::from_str(&message.body).unwrap();
        assert_eq!(parsed["id"], "evt_42");
        assert_eq!(message.id, "evt_42");
        assert_eq!(parsed["type"], "io.policyhub.rollout.scheduled");
        assert_eq!(parsed["subject"], "payments/limits");
        assert_eq!(
            parsed["data"]["reason"].as_str().unwrap().len(),
            MAX_REASON_BYTES
        );
    }

    #[test]
    fn a_chat_message_is_one_readable_line() {
        let record = record();
        let message = write(Announcement::Event(&record), Format::Chat, "/policyhub");
        let parsed: Value = serde_json::from_str(&message.body).unwrap();
        assert!(parsed["text"].as_str().unwrap().starts_with(
            "policyhub: rollout scheduled payments/limits v3 (rollout ro-1) by alice"
        ));
    }
}
