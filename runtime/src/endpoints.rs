//! Which of a subscription's server addresses to use, and which next.
//!
//! Each runtime ranks the addresses by rendezvous hashing (highest random
//! weight, Thaler and Ravishankar): the weight of an address is a hash of
//! the runtime's id and the address, and the runtime prefers the heaviest.
//! A fleet so spreads evenly and deterministically over the replicas, and
//! when one address is added or removed only the runtimes that preferred
//! it change their first choice. A runtime without an id ranks the
//! addresses at random.
//!
//! A failed connection or a lost stream moves to the next address in the
//! ranking; only a whole round of failures (every address failed in a row)
//! calls for the subscription's backoff. Away from its first choice, the
//! subscription tries it again after a jittered [`rebalance_delay`] and
//! moves back when it answers, so that a fleet spread again after a
//! rolling restart.

use std::time::Duration;

use sha2::{Digest, Sha256};

/// The addresses in the runtime's order of preference, and the one in use.
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    /// Most preferred first.
    ranked: Vec<String>,
    /// The index in `ranked` of the address in use.
    at: usize,
    /// Failures in a row (each on the address after the one before) since
    /// a stream last stayed open a while.
    failed_in_a_row: usize,
}

/// The rendezvous weight of `endpoint` for the runtime `id`: the first
/// eight bytes of SHA-256 over both, so that every implementation of the
/// contract can compute the same ranking.
fn weight(id: &str, endpoint: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(id.as_bytes())
        .chain_update([0])
        .chain_update(endpoint.as_bytes())
        .finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("eight bytes"))
}

/// The addresses `endpoints` in the order the runtime `id` prefers them,
/// duplicates once: the ranking every implementation of the contract
/// computes alike (the shared vectors hold it).
pub fn ranking(endpoints: &[String], id: &str) -> Vec<String> {
    Endpoints::rank(endpoints, Some(id)).ranked
}

impl Endpoints {
    /// Ranks `endpoints` for the runtime `id` (at random without one); the
    /// first is in use. Duplicates count once.
    pub(crate) fn rank(endpoints: &[String], id: Option<&str>) -> Self {
        let mut ranked = endpoints.to_vec();
        ranked.sort();
        ranked.dedup();
        match id {
            Some(id) => {
                ranked.sort_by_cached_key(|endpoint| std::cmp::Reverse(weight(id, endpoint)))
            }
            None => fastrand::shuffle(&mut ranked),
        }
        Endpoints {
            ranked,
            at: 0,
            failed_in_a_row: 0,
        }
    }

    /// The address in use.
    pub(crate) fn current(&self) -> &str {
        &self.ranked[self.at]
    }

    /// The runtime's first choice.
    pub(crate) fn preferred(&self) -> &str {
        &self.ranked[0]
    }

    /// Whether the address in use is the first choice.
    pub(crate) fn on_preferred(&self) -> bool {
        self.at == 0
    }

    /// A stream stayed open a while (as long as the backoff's largest
    /// bound): failures count from zero again. Counted from the last one
    /// that did, a server that opens streams and drops them at once still
    /// meets the backoff once a round.
    pub(crate) fn settled(&mut self) {
        self.failed_in_a_row = 0;
    }

    /// A stream opened on the first choice, which is now in use.
    pub(crate) fn moved_to_preferred(&mut self) {
        self.at = 0;
    }

    /// The address in use failed: the next one is in use. True when every
    /// address has now failed in a row, a whole round: time for the backoff
    /// (the count starts over).
    pub(crate) fn failed(&mut self) -> bool {
        self.at = (self.at + 1) % self.ranked.len();
        self.failed_in_a_row += 1;
        if self.failed_in_a_row >= self.ranked.len() {
            self.failed_in_a_row = 0;
            return true;
        }
        false
    }
}

/// How long a subscription away from its first choice waits before trying
/// it again: a uniformly random time in the second half of `interval`
/// ("equal jitter"), so that a fleet moved by one replica's restart does not
/// move back in one wave.
pub(crate) fn rebalance_delay(interval: Duration) -> Duration {
    interval / 2 + (interval / 2).mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn every_ranking_of_the_shared_vectors_is_the_same_here() {
        let vectors = crate::bundle::tests::vectors("ranking.json");
        for case in vectors["cases"].as_array().unwrap() {
            let endpoints: Vec<String> = serde_json::from_value(case["endpoints"].clone()).unwrap();
            let expected: Vec<String> = serde_json::from_value(case["ranking"].clone()).unwrap();
            let id = case["runtime_id"].as_str().unwrap();
            assert_eq!(ranking(&endpoints, id), expected, "{case}");
        }
    }

    fn addresses(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("http://replica-{i}:50051"))
            .collect()
    }

    #[test]
    fn the_ranking_is_a_function_of_the_runtime_id() {
        let endpoints = addresses(3);
        let mut reversed = endpoints.clone();
        reversed.reverse();
        let once = Endpoints::rank(&endpoints, Some("enforcer-7"));
        let again = Endpoints::rank(&reversed, Some("enforcer-7"));
        assert_eq!(once.ranked, again.ranked);
        assert_eq!(once.current(), once.preferred());
        // Another id may rank them otherwise: over many ids, every address
        // comes first for some.
        let firsts: std::collections::BTreeSet<String> = (0..100)
            .map(|i| {
                Endpoints::rank(&endpoints, Some(&format!("enforcer-{i}")))
                    .preferred()
                    .to_owned()
            })
            .collect();
        assert_eq!(firsts.len(), 3);
    }

    #[test]
    fn a_fleet_spreads_evenly_over_the_addresses() {
        let endpoints = addresses(3);
        let mut preferred: BTreeMap<String, usize> = BTreeMap::new();
        for i in 0..3000 {
            let ranked = Endpoints::rank(&endpoints, Some(&format!("runtime-{i}")));
            *preferred.entry(ranked.preferred().to_owned()).or_default() += 1;
        }
        for (endpoint, count) in &preferred {
            assert!((850..1150).contains(count), "{endpoint}: {count} of 3000");
        }
    }

    #[test]
    fn removing_an_address_moves_only_the_runtimes_that_preferred_it() {
        let endpoints = addresses(4);
        let fewer = &endpoints[..3];
        for i in 0..500 {
            let id = format!("runtime-{i}");
            let before = Endpoints::rank(&endpoints, Some(&id));
            let after = Endpoints::rank(fewer, Some(&id));
            if before.preferred() != endpoints[3] {
                assert_eq!(before.preferred(), after.preferred(), "{id}");
            } else {
                // Its second choice takes over.
                assert_eq!(after.preferred(), before.ranked[1], "{id}");
            }
        }
    }

    #[test]
    fn failures_move_down_the_ranking_and_a_whole_round_calls_for_the_backoff() {
        let mut endpoints = Endpoints::rank(&addresses(3), Some("enforcer-1"));
        let ranked = endpoints.ranked.clone();
        assert!(endpoints.on_preferred());
        assert!(!endpoints.failed());
        assert_eq!(endpoints.current(), ranked[1]);
        assert!(!endpoints.on_preferred());
        assert!(!endpoints.failed());
        assert_eq!(endpoints.current(), ranked[2]);
        assert!(endpoints.failed(), "three addresses failed in a row");
        assert_eq!(endpoints.current(), ranked[0]);
        // A stream that stayed open starts the count over.
        assert!(!endpoints.failed());
        endpoints.settled();
        assert!(!endpoints.failed());
        assert!(!endpoints.failed());
        assert!(endpoints.failed());
        // Back on the first choice from anywhere; the count goes on.
        assert!(!endpoints.failed());
        endpoints.moved_to_preferred();
        assert!(endpoints.on_preferred());
        assert_eq!(endpoints.current(), ranked[0]);
        assert!(!endpoints.failed());
        assert!(endpoints.failed());
    }

    #[test]
    fn one_address_calls_for_the_backoff_at_every_failure() {
        let mut endpoints = Endpoints::rank(&addresses(1), Some("enforcer-1"));
        for _ in 0..3 {
            assert!(endpoints.failed());
            assert!(endpoints.on_preferred());
        }
    }

    #[test]
    fn duplicates_count_once() {
        let mut twice = addresses(2);
        twice.push(twice[0].clone());
        let endpoints = Endpoints::rank(&twice, None);
        assert_eq!(endpoints.ranked.len(), 2);
    }

    #[test]
    fn rebalancing_waits_in_the_second_half_of_the_interval() {
        let interval = Duration::from_secs(60);
        let delays: Vec<Duration> = (0..1000).map(|_| rebalance_delay(interval)).collect();
        assert!(
            delays
                .iter()
                .all(|delay| *delay >= interval / 2 && *delay <= interval)
        );
        let late = delays
            .iter()
            .filter(|delay| **delay > interval * 3 / 4)
            .count();
        assert!(
            (300..700).contains(&late),
            "{late} of 1000 in the last quarter"
        );
    }
}
