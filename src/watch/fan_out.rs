//! Whether a fan-out is under way: from waking the streams to a new
//! revision until each of them has taken it. Work that can wait (the
//! runtimes' status reports) waits for its end, so that it never runs
//! beside a delivery it would delay.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use tokio::sync::Notify;

use super::notified_until;

/// The streams yet to take the newest revision, counted down as each
/// takes it (a stream closed first counts as taken).
#[derive(Debug, Default)]
pub struct FanOut {
    waiting: AtomicUsize,
    ended: Notify,
}

impl FanOut {
    /// A fan-out to `streams` streams begins (a newer one replaces it: the
    /// streams yet to take the older revision take the newer one).
    pub(super) fn begin(&self, streams: usize) {
        self.waiting.store(streams, Ordering::Release);
        if streams == 0 {
            self.ended.notify_waiters();
        }
    }

    /// A stream took the newest revision; nothing when no fan-out is
    /// under way.
    pub(super) fn taken(&self) {
        let before = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                waiting.checked_sub(1)
            });
        if before == Ok(1) {
            self.ended.notify_waiters();
        }
    }

    /// Returns at once when no fan-out is under way, otherwise when it
    /// ends or after `bound`, whichever comes first: a stream that cannot
    /// take the revision (its client stopped reading) holds no one longer.
    pub async fn ended(&self, bound: Duration) {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return;
        }
        let ended = notified_until(&self.ended, || self.waiting.load(Ordering::Acquire) == 0);
        let _ = tokio::time::timeout(bound, ended).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_fan_out_ends_when_every_stream_took_it_or_at_the_bound() {
        let fan_out = Arc::new(FanOut::default());
        let bound = Duration::from_secs(1);
        // None under way: at once.
        let started = tokio::time::Instant::now();
        fan_out.ended(bound).await;
        assert_eq!(started.elapsed(), Duration::ZERO);

        fan_out.begin(2);
        let waiter = tokio::spawn({
            let fan_out = fan_out.clone();
            async move {
                let started = tokio::time::Instant::now();
                fan_out.ended(bound).await;
                started.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        fan_out.taken();
        assert!(!waiter.is_finished(), "one stream is yet to take it");
        tokio::time::sleep(Duration::from_millis(10)).await;
        fan_out.taken();
        assert_eq!(waiter.await.unwrap(), Duration::from_millis(20));
        // More takes than streams (a stream opened meanwhile) change nothing.
        fan_out.taken();

        fan_out.begin(1);
        let started = tokio::time::Instant::now();
        fan_out.ended(bound).await;
        assert_eq!(started.elapsed(), bound, "a stream that never takes it");
    }
}
