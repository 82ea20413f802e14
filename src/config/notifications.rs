//! Webhook subscriptions: which endpoints they may name, and how their
//! deliveries are retried.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Webhook subscriptions and their delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationSettings {
    /// Allow `http://` endpoints; otherwise only `https://`.
    pub allow_http: bool,
    /// Allow endpoints at loopback, private, link-local and unique-local
    /// addresses (and `localhost`); otherwise refused, so that a
    /// subscription cannot reach into the server's own network.
    pub allow_private_addresses: bool,
    /// The longest one delivery attempt may take, from connecting to the
    /// end of the answer.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The first retry's delay bound; each further retry doubles it, up to
    /// `max_retry_delay`, with jitter.
    #[serde(with = "humantime_serde")]
    pub initial_retry_delay: Duration,
    /// The longest delay between two attempts.
    #[serde(with = "humantime_serde")]
    pub max_retry_delay: Duration,
    /// Failed attempts in a row after which a subscription is disabled
    /// (with a SUBSCRIPTION_DISABLED event); it keeps its place, and
    /// enabling it again delivers from there.
    pub disable_after_failures: u32,
    /// How often each replica looks for subscriptions to deliver to; also
    /// how long an event waits, at most, for a subscription that has caught
    /// up: each poll delivers what arrived since in one run, recorded in
    /// one transaction.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for NotificationSettings {
    fn default() -> Self {
        NotificationSettings {
            allow_http: false,
            allow_private_addresses: false,
            timeout: Duration::from_secs(10),
            initial_retry_delay: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(300),
            disable_after_failures: 20,
            poll_interval: Duration::from_millis(200),
        }
    }
}
