//! Per-subject quotas: concurrent watch streams and a token bucket for
//! mutating requests. Each refusal is RESOURCE_EXHAUSTED and says which
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
    /// Open watch streams per subject.
    streams: Mutex<HashMap<String, usize>>,
    /// Mutation token bucket per subject: tokens left, and when last filled.
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Held by an open watch stream; dropping it frees the slot.
#[derive(Debug)]
pub struct StreamPermit {
    quotas: Arc<Quotas>,
    subject: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut streams = self.quotas.streams.lock().expect("quota lock");
        if let Some(open) = streams.get_mut(&self.subject) {
            *open -= 1;
            if *open == 0 {
                streams.remove(&self.subject);
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

    /// Takes a watch-stream slot for `subject`.
    pub fn open_stream(self: &Arc<Self>, subject: &str) -> Result<StreamPermit> {
        let mut streams = self.streams.lock().expect("quota lock");
        let open = streams.entry(subject.to_owned()).or_default();
        if *open >= self.settings.max_streams_per_subject {
            return Err(Error::exhausted(format!(
                "{subject} already holds {open} watch streams, the most allowed per subject \
                 (quotas.max_streams_per_subject)"
            )));
        }
        *open += 1;
        Ok(StreamPermit {
            quotas: self.clone(),
            subject: subject.to_owned(),
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
        let first = quotas.open_stream("alice").unwrap();
        let _second = quotas.open_stream("alice").unwrap();
        assert_eq!(
            tonic::Status::from(quotas.open_stream("alice").unwrap_err()).code(),
            tonic::Code::ResourceExhausted
        );
        assert!(quotas.open_stream("bob").is_ok());
        drop(first);
        assert!(quotas.open_stream("alice").is_ok());
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
