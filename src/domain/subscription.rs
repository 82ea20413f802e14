//! Webhook subscriptions: who is told of which events, where, and how far
//! each has been told. Validation of what a caller asks for lives here, so
//! that every transport refuses the same inputs with the same field names.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;

use base64::Engine;
use chrono::{DateTime, Utc};

use super::{Error, EventKind, EventRecord, FieldViolation, Namespace, Result};

/// The most event kinds one subscription names.
pub const MAX_EVENT_KINDS: usize = 32;
/// The longest endpoint URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A subscription's name inside its scope, with the rules of a policy name.
pub use super::names::SubscriptionName;

/// How a delivery's body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// CloudEvents 1.0 JSON, structured mode.
    CloudEvents,
    /// A readable message for chat incoming webhooks (`{"text": …}`).
    Chat,
}

impl Format {
    /// The name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::CloudEvents => "CLOUDEVENTS",
            Format::Chat => "CHAT",
        }
    }

    /// The format a stored name names.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "CLOUDEVENTS" => Ok(Format::CloudEvents),
            "CHAT" => Ok(Format::Chat),
            other => Err(Error::Internal(format!("unknown stored format {other:?}"))),
        }
    }
}

/// A Standard Webhooks signing secret, `whsec_` and the base64 of 24 to
/// 64 bytes. Never printed: its `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// Parses a secret, naming `field` in the error (whose text never
    /// repeats the secret).
    pub fn parse(field: &str, value: &str) -> Result<Self> {
        let Some(encoded) = value.strip_prefix(SECRET_PREFIX) else {
            return Err(Error::invalid(
                field,
                format!("must start with {SECRET_PREFIX:?} (Standard Webhooks form)"),
            ));
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| Error::invalid(field, "is not base64 after the prefix"))?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(Error::invalid(
                field,
                format!("holds {} bytes, 24 to 64 are allowed", bytes.len()),
            ));
        }
        Ok(WebhookSecret(value.to_owned()))
    }

    /// A secret of the given random bytes.
    pub fn from_random(bytes: &[u8; 32]) -> Self {
        WebhookSecret(format!(
            "{SECRET_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ))
    }

    /// The secret itself, to sign with or to show once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(redacted)")
    }
}

/// Which endpoints the deployment allows.
#[derive(Debug, Clone, Copy, Default)]
pub struct EndpointRules {
    /// `http://` as well as `https://`.
    pub allow_http: bool,
    /// Loopback, private, link-local and unique-local addresses.
    pub allow_private_addresses: bool,
}

/// Checks an endpoint URL against the rules, naming `field`.
pub fn check_url(field: &str, value: &str, rules: EndpointRules) -> Result<()> {
    if value.len() > MAX_URL_BYTES {
        return Err(Error::invalid(
            field,
            format!(
                "is {} bytes, at most {MAX_URL_BYTES} are allowed",
                value.len()
            ),
        ));
    }
    let url = url::Url::parse(value)
        .map_err(|error| Error::invalid(field, format!("is not a URL: {error}")))?;
    match url.scheme() {
        "https" => {}
        "http" if rules.allow_http => {}
        "http" => {
            return Err(Error::invalid(
                field,
                "must be https (this deployment does not allow http endpoints)",
            ));
        }
        other => {
            return Err(Error::invalid(
                field,
                format!("scheme {other:?} is not https"),
            ));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::invalid(field, "must not carry credentials"));
    }
    let private = match url.host() {
        None => return Err(Error::invalid(field, "names no host")),
        Some(url::Host::Domain(domain)) => {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            domain == "localhost" || domain.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(address)) => is_private(IpAddr::V4(address)),
        Some(url::Host::Ipv6(address)) => is_private(IpAddr::V6(address)),
    };
    if private && !rules.allow_private_addresses {
        return Err(Error::invalid(
            field,
            "names a private address (this deployment does not allow them)",
        ));
    }
    Ok(())
}

/// Whether an address is loopback, private, link-local, unique-local,
/// unspecified or otherwise not of the public internet.
pub fn is_private(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private_v4(v4),
            None => is_private_v6(v6),
        },
    }
}

fn is_private_v4(address: Ipv4Addr) -> bool {
    let [a, b, ..] = address.octets();
    address.is_loopback()
        || address.is_private()
        || address.is_link_local()
        || address.is_unspecified()
        || address.is_broadcast()
        // carrier-grade NAT, 100.64.0.0/10
        || (a == 100 && (64..128).contains(&b))
}

fn is_private_v6(address: Ipv6Addr) -> bool {
    let first = address.segments()[0];
    address.is_loopback()
        || address.is_unspecified()
        // unique local fc00::/7, link-local fe80::/10
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
}

/// Checks the event kinds a subscription names: at least one, at most
/// [`MAX_EVENT_KINDS`], none twice.
pub fn check_event_kinds(field: &str, kinds: &[EventKind]) -> Result<()> {
    if kinds.is_empty() {
        return Err(Error::invalid(field, "name at least one event kind"));
    }
    if kinds.len() > MAX_EVENT_KINDS {
        return Err(Error::invalid(
            field,
            format!(
                "names {} event kinds, at most {MAX_EVENT_KINDS} are allowed",
                kinds.len()
            ),
        ));
    }
    for (index, kind) in kinds.iter().enumerate() {
        if kinds[..index].contains(kind) {
            return Err(Error::invalid(
                format!("{field}[{index}]"),
                format!("{kind} is named twice"),
            ));
        }
    }
    Ok(())
}

/// Gathers the violations of several checks into one error, so that a
/// request learns of every bad field at once.
pub fn all_of(checks: impl IntoIterator<Item = Result<()>>) -> Result<()> {
    let mut violations: Vec<FieldViolation> = Vec::new();
    for check in checks {
        match check {
            Ok(()) => {}
            Err(Error::InvalidArgument(found)) => violations.extend(found),
            Err(other) => return Err(other),
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(violations))
    }
}

/// A new subscription, validated.
#[derive(Debug, Clone)]
pub struct NewSubscription {
    /// Its namespace; `None` for a deployment-wide one.
    pub namespace: Option<Namespace>,
    /// Its name.
    pub name: SubscriptionName,
    /// The endpoint.
    pub url: String,
    /// The kinds of event delivered.
    pub event_kinds: Vec<EventKind>,
    /// How bodies are written.
    pub format: Format,
    /// What deliveries are signed with.
    pub secret: WebhookSecret,
}

/// A change to a subscription; `None` keeps a field as it is.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionChange {
    /// A new endpoint.
    pub url: Option<String>,
    /// New event kinds.
    pub event_kinds: Option<Vec<EventKind>>,
    /// A new format.
    pub format: Option<Format>,
    /// Disable, or enable again.
    pub enabled: Option<bool>,
}

/// A subscription as stored.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Its row id: the key of its delivery lock and of its metrics.
    pub id: i64,
    /// Its namespace; `None` for a deployment-wide one.
    pub namespace: Option<Namespace>,
    /// Its name.
    pub name: SubscriptionName,
    /// The endpoint.
    pub url: String,
    /// The kinds of event delivered.
    pub event_kinds: Vec<EventKind>,
    /// How bodies are written.
    pub format: Format,
    /// What deliveries are signed with.
    pub secret: WebhookSecret,
    /// False once disabled.
    pub enabled: bool,
    /// Why it is disabled.
    pub disabled_reason: String,
    /// The last event id it delivered or passed over.
    pub delivered_through: u64,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// Not before this is the next attempt made.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl Subscription {
    /// Whether an event of `kind` about `namespace` (none: the deployment)
    /// is for this subscription. A deployment-wide subscription hears every
    /// namespace.
    pub fn wants(&self, kind: EventKind, namespace: Option<&str>) -> bool {
        let in_scope = match &self.namespace {
            None => true,
            Some(own) => namespace == Some(own.as_str()),
        };
        in_scope && self.event_kinds.contains(&kind)
    }

    /// How it is named in messages: `namespace/name`, or `name` alone for a
    /// deployment-wide one.
    pub fn display_name(&self) -> String {
        match &self.namespace {
            Some(namespace) => format!("{namespace}/{}", self.name),
            None => self.name.to_string(),
        }
    }
}

/// The `webhook-id` of an event's deliveries: the same on every attempt,
/// from any replica; empty for a test message (event 0), whose id is new
/// each time.
pub fn webhook_id(event_id: u64) -> String {
    match event_id {
        0 => String::new(),
        id => format!("evt_{id}"),
    }
}

/// What a delivery announces.
#[derive(Debug, Clone, Copy)]
pub enum Announcement<'a> {
    /// An event of the log.
    Event(&'a EventRecord),
    /// A test message, asked for by TestSubscription.
    Test,
}

/// Sends one message to a subscription's endpoint and says how it went:
/// what the delivery worker and TestSubscription share. The transport
/// that calls it never learns how messages are written or signed.
pub trait Courier: Send + Sync {
    /// Delivers `announcement` to `subscription` as attempt `attempt`.
    fn deliver<'a>(
        &'a self,
        subscription: &'a Subscription,
        announcement: Announcement<'a>,
        attempt: u32,
    ) -> Pin<Box<dyn Future<Output = DeliveryRecord> + Send + 'a>>;
}

/// How one delivery attempt went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Delivered,
    /// Anything else; tried again.
    Failed,
}

impl Outcome {
    /// The name used in storage and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
        }
    }
}

/// One delivery attempt, as recorded.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    /// The event delivered; 0 for a test message.
    pub event_id: u64,
    /// 1 for the first attempt of the event.
    pub attempt: u32,
    /// How it went.
    pub outcome: Outcome,
    /// The endpoint's status; 0 when it did not answer.
    pub status_code: u16,
    /// From sending to the end of the answer.
    pub latency_ms: u32,
    /// Why it failed.
    pub error: String,
    /// When it was made.
    pub at: DateTime<Utc>,
}

/// A run of attempts on one subscription, in order, as the delivery worker
/// records it: each one delivered moves the subscription past its event;
/// the last may have failed, and `next_attempt_at` and `disabled` (the
/// reason) then apply.
#[derive(Debug, Clone)]
pub struct DeliveryRun {
    /// The subscription as it was read before the run.
    pub subscription: Subscription,
    /// The attempts, in the order they were made.
    pub attempts: Vec<DeliveryRecord>,
    /// When to try again after a failed last attempt.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Why the subscription is disabled after a failed last attempt.
    pub disabled: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_refused_by_scheme_and_address_unless_allowed() {
        let strict = EndpointRules::default();
        assert!(check_url("url", "https://hooks.example.com/x", strict).is_ok());
        for refused in [
            "http://hooks.example.com/x",
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://localhost:8080/x",
            "https://169.254.169.254/latest",
            "ftp://hooks.example.com",
            "https://user:pw@hooks.example.com",
            "not a url",
        ] {
            assert!(check_url("url", refused, strict).is_err(), "{refused}");
        }
        let open = EndpointRules {
            allow_http: true,
            allow_private_addresses: true,
        };
        assert!(check_url("url", "http://127.0.0.1:9/x", open).is_ok());
    }

    #[test]
    fn secrets_are_of_the_standard_webhooks_form() {
        let secret = WebhookSecret::from_random(&[7; 32]);
        assert!(WebhookSecret::parse("secret", secret.expose()).is_ok());
        assert!(WebhookSecret::parse("secret", "whsec_c2hvcnQ=").is_err());
        assert!(WebhookSecret::parse("secret", "whsec_!!!").is_err());
        assert!(WebhookSecret::parse("secret", "abc").is_err());
        assert!(!format!("{secret:?}").contains("whsec_"));
    }

    #[test]
    fn event_kinds_are_one_to_thirty_two_without_repeats() {
        assert!(check_event_kinds("event_kinds", &[]).is_err());
        assert!(check_event_kinds("event_kinds", &[EventKind::Activated]).is_ok());
        assert!(
            check_event_kinds("event_kinds", &[EventKind::Activated, EventKind::Activated])
                .is_err()
        );
    }
}
