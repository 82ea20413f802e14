//! Per-subject quotas: concurrent watch streams, as many report streams,
//! and a token bucket for mutating requests. Each refusal is RESOURCE_EXHAUSTED and says which
//! limit was hit.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::config::QuotaSettings;
use crate::domain::{Error, Result};

/// Shared quota state of one server.
/// Buckets kept before the full ones are dropped.
const PRUNE_ABOVE: usize = 1024;

#[derive(Debug)]
pub struct Quotas {
    settings: QuotaSettings,
    /// Open streams per kind and subject.
    streams: Mutex<HashMap<(StreamKind, String), usize>>,
    /// Mutation token bucket per subject: tokens left, and when last filled.
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// The long-lived streams a subject holds, each kind counted on its own
/// against `quotas.max_streams_per_subject`: a runtime holds one of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// `WatchActive`.
    Watch,
    /// `ReportStatusStream`.
    Report,
}

/// Held by an open stream; dropping it frees the slot.
#[derive(Debug)]
pub struct StreamPermit {
    quotas: Arc<Quotas>,
    key: (StreamKind, String),
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut streams = self.quotas.streams.lock().expect("quota lock");
        if let Some(open) = streams.get_mut(&self.key) {
            *open -= 1;
            if *open == 0 {
                streams.remove(&self.key);
            }
        }
    }
}

impl Quotas {
    /// Quotas with these limits.
    pub fn new(settings: QuotaSettings) -> Arc<Self> {
        Arc::new(Quotas {
            settings,
            streams: Mutex::default(),
            buckets: Mutex::default(),
        })
    }

    /// Takes a slot for a `kind` stream of `subject`.
    pub fn open_stream(self: &Arc<Self>, kind: StreamKind, subject: &str) -> Result<StreamPermit> {
        let key = (kind, subject.to_owned());
        let mut streams = self.streams.lock().expect("quota lock");
        let open = streams.entry(key.clone()).or_default();
        if *open >= self.settings.max_streams_per_subject {
            let kind = match kind {
                StreamKind::Watch => "watch",
                StreamKind::Report => "report",
            };
            return Err(Error::exhausted(format!(
                "{subject} already holds {open} {kind} streams, the most allowed per subject \
                 (quotas.max_streams_per_subject)"
            )));
        }
        *open += 1;
        Ok(StreamPermit {
            quotas: self.clone(),
            key,
        })
    }

    /// Admits one mutating request of `subject`, or says when to retry.
    pub fn admit_mutation(&self, subject: &str) -> Result<()> {
        let rate = self.settings.mutations_per_second;
        let burst = self.settings.mutation_burst.max(1.0);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("quota lock");
        let (tokens, filled_at) = buckets.entry(subject.to_owned()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*filled_at).as_secs_f64() * rate).min(burst);
        *filled_at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            if buckets.len() > PRUNE_ABOVE {
                // A bucket that has refilled is the same as no bucket: keep
                // only subjects active within the last refill time.
                buckets.retain(|_, (tokens, filled_at)| {
                    *tokens + now.duration_since(*filled_at).as_secs_f64() * rate < burst
                });
            }
            return Ok(());
        }
        let wait = (1.0 - *tokens) / rate.max(f64::MIN_POSITIVE);
        // The delay also travels as google.rpc.RetryInfo, for clients.
        Err(Error::ResourceExhausted {
            message: format!(
                "{subject} exceeded {rate} mutating requests per second (quotas.mutations_per_second); \
                 retry in {wait:.1} s"
            ),
            retry_after: Some(Duration::from_secs_f64(wait.min(3600.0))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refilled_rate_buckets_are_forgotten() {
        let quotas = Quotas::new(QuotaSettings {
            mutations_per_second: 1e12,
            mutation_burst: 1.0,
            ..QuotaSettings::default()
        });
        for n in 0..10 * PRUNE_ABOVE {
            quotas.admit_mutation(&format!("subject-{n}")).unwrap();
        }
        let kept = quotas.buckets.lock().unwrap().len();
        assert!(kept <= PRUNE_ABOVE + 1, "{kept} buckets kept");
    }

    #[test]
    fn streams_are_counted_per_subject_and_freed_on_drop() {
        let quotas = Quotas::new(QuotaSettings {
            max_streams_per_subject: 2,
            ..QuotaSettings::default()
        });
        let watch = |subject| quotas.open_stream(StreamKind::Watch, subject);
        let first = watch("alice").unwrap();
        let _second = watch("alice").unwrap();
        assert_eq!(
            tonic::Status::from(watch("alice").unwrap_err()).code(),
            tonic::Code::ResourceExhausted
        );
        assert!(watch("bob").is_ok());
        let _report = quotas.open_stream(StreamKind::Report, "alice").unwrap();
        drop(first);
        assert!(watch("alice").is_ok());
    }

    #[test]
    fn mutations_beyond_the_burst_are_refused() {
        let quotas = Quotas::new(QuotaSettings {
            mutations_per_second: 0.001,
            mutation_burst: 3.0,
            ..QuotaSettings::default()
        });
        for _ in 0..3 {
            quotas.admit_mutation("alice").unwrap();
        }
        let refused = tonic::Status::from(quotas.admit_mutation("alice").unwrap_err());
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("retry in"),
            "{}",
            refused.message()
        );
        assert!(quotas.admit_mutation("bob").is_ok());
    }
}
