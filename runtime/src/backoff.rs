//! Capped exponential backoff with full jitter (the AWS architecture blog's
//! "full jitter"): attempt n sleeps a uniformly random time in
//! `[0, min(max, initial × 2ⁿ))`, so a fleet that lost its server comes back
//! spread over the window instead of in waves.
//!
//! Written out because the maintained backoff crates jitter differently:
//! `backon` adds a random extra to the delay (`[d, 2d)`), `exponential-backoff`
//! clamps the jittered delay to its minimum, and `failsafe` counts in whole
//! seconds.

use std::time::Duration;

/// Delays of successive reconnection attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `initial`, doubling the bound per attempt up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let bound = self
            .initial
            .saturating_mul(2u32.saturating_pow(self.attempt))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        bound.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_a_doubling_capped_bound() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        for bound in [100, 200, 400, 800, 800, 800] {
            assert!(backoff.next_delay() < Duration::from_millis(bound));
        }
    }

    #[test]
    fn delays_are_spread_from_zero() {
        let delays: Vec<Duration> = (0..1000)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay())
            .collect();
        let early = delays
            .iter()
            .filter(|d| **d < Duration::from_millis(250))
            .count();
        assert!(
            (150..350).contains(&early),
            "{early} of 1000 in the first quarter"
        );
    }
}
