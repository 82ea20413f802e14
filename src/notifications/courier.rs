//! Sends one message: written, signed per Standard Webhooks (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature`) with the specification's own
//! crate, POSTed with a deadline and no redirects. The secret is used here
//! and never logged.

use std::{net::SocketAddr, pin::Pin, sync::Arc, time::Instant};

use chrono::Utc;

use super::message::{self, Message};
use crate::domain::subscription::{
    Announcement, Courier, DeliveryRecord, Outcome, Subscription, is_private,
};

/// The longest part of an endpoint's error answer kept in a delivery's
/// error, in bytes.
const MAX_ERROR_BYTES: usize = 512;

/// Delivers over HTTPS (or HTTP where allowed) with reqwest.
pub struct HttpCourier {
    client: reqwest::Client,
    /// The CloudEvents `source` of this deployment.
    source: String,
}

/// Resolves endpoint names as the system does, refusing every address that
/// is not of the public internet unless private addresses are allowed: the
/// URL rules see only the name, and a name may resolve anywhere.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let public: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|address| !is_private(address.ip()))
                .collect();
            if public.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            let addresses: reqwest::dns::Addrs = Box::new(public.into_iter());
            Ok(addresses)
        })
    }
}

impl HttpCourier {
    /// A courier whose attempts end after `timeout`, writing `source` as
    /// each CloudEvent's source; endpoints resolving to private addresses
    /// are refused unless `allow_private_addresses`.
    pub fn new(
        timeout: std::time::Duration,
        allow_private_addresses: bool,
        source: String,
    ) -> anyhow::Result<Self> {
        let mut client = reqwest::Client::builder();
        if !allow_private_addresses {
            client = client.dns_resolver(Arc::new(PublicOnly));
        }
        let client = client
            .timeout(timeout)
            // A redirect could lead to an address the URL rules refuse.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("policyhub/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpCourier { client, source })
    }

    async fn send(
        &self,
        subscription: &Subscription,
        message: Message,
    ) -> Result<u16, (u16, String)> {
        let timestamp = Utc::now().timestamp();
        let signature = standardwebhooks::Webhook::new(subscription.secret.expose())
            .and_then(|webhook| webhook.sign(&message.id, timestamp, message.body.as_bytes()))
            .map_err(|error| (0, format!("cannot sign: {error}")))?;
        let answer = self
            .client
            .post(&subscription.url)
            .header(reqwest::header::CONTENT_TYPE, message.content_type)
            .header(standardwebhooks::HEADER_WEBHOOK_ID, &message.id)
            .header(
                standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
                timestamp.to_string(),
            )
            .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
            .body(message.body)
            .send()
            .await
            .map_err(|error| (0, describe(error)))?;
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            let mut end = text.len().min(MAX_ERROR_BYTES);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            Err((
                status.as_u16(),
                format!("answered {status}: {}", &text[..end]),
            ))
        }
    }
}

/// A transport error without the URL's query, which may carry a token.
fn describe(error: reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    format!("{kind}: {}", error.without_url())
}

impl Courier for HttpCourier {
    fn deliver<'a>(
        &'a self,
        subscription: &'a Subscription,
        announcement: Announcement<'a>,
        attempt: u32,
    ) -> Pin<Box<dyn Future<Output = DeliveryRecord> + Send + 'a>> {
        Box::pin(async move {
            let message = message::write(announcement, subscription.format, &self.source);
            let event_id = match announcement {
                Announcement::Event(record) => record.id,
                Announcement::Test => 0,
            };
            let at = Utc::now();
            let started = Instant::now();
            let sent = self.send(subscription, message).await;
            let latency_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
            let (outcome, status_code, error) = match sent {
                Ok(status) => (Outcome::Delivered, status, String::new()),
                Err((status, error)) => (Outcome::Failed, status, error),
            };
            DeliveryRecord {
                event_id,
                attempt,
                outcome,
                status_code,
                latency_ms,
                error,
                at,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use reqwest::dns::Resolve;

    use super::*;

    #[tokio::test]
    async fn a_name_resolving_to_loopback_only_is_refused() {
        let refused = PublicOnly
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost is not public");
        assert!(
            refused.to_string().contains("no public address"),
            "{refused}"
        );
    }
}
