//! What one subscription follows and how: the server's addresses, their
//! TLS and token, the namespace and names, the runtime identity, the cache,
//! heartbeats, backoff, rebalancing and checkpoint age. How it is followed is in
//! [`watcher`](crate::watcher).

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::{Mutex, mpsc};
use tonic::transport::Endpoint;

use crate::event::WatchError;
use crate::proto::RuntimeIdentity;
use crate::revoke::{Revocation, Revoker};
use crate::tls::Tls;

/// Gives the bearer token of each call (so a rotated token file is read
/// again, see [`token_file`](crate::token_file)); `None` sends no token.
pub type TokenSource = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The response header of `WatchActive` in which the server says its
/// heartbeat interval, in milliseconds (`policyhub serve`'s
/// `watch.heartbeat_interval`).
pub const HEARTBEAT_INTERVAL_HEADER: &str = "policyhub-heartbeat-interval-ms";

/// The heartbeat interval assumed of a server that does not say it.
pub(crate) const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// The window over which a runtime spreads its reports unless the
/// subscription says otherwise: the server's default report flush interval.
pub const DEFAULT_REPORT_SPREAD: Duration = Duration::from_secs(1);

/// How long after an outcome a runtime whose report spread is `spread`
/// reports it: a uniformly random moment in the spread's second half
/// ("equal jitter"). Spread over the window, a fleet's reports do not
/// arrive together; held back at least half of it, none arrives while the
/// server still writes the update to the rest of a fleet it reaches within
/// that half (10,000 runtimes in about a quarter of a second in the
/// benchmarks). Zero reports at once.
pub fn report_delay(spread: Duration) -> Duration {
    spread / 2 + (spread / 2).mul_f64(fastrand::f64())
}

/// How long a subscription away from its first choice of several addresses
/// waits, at most, before trying that one again, unless it says otherwise.
pub const DEFAULT_REBALANCE_INTERVAL: Duration = Duration::from_secs(60);

/// How old a checkpoint may grow unless the subscription says otherwise.
pub(crate) const DEFAULT_MAX_CHECKPOINT_AGE: Duration = Duration::from_secs(600);

/// The shortest interval a subscription takes (a heartbeat interval, the
/// backoff's first bound, the rebalance interval, the maximum checkpoint
/// age): the server counts its own in milliseconds, and a shorter one has
/// the subscription reconnect or retry in a loop (a zero heartbeat
/// interval declares every stream dead as it opens).
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// What one subscription follows and how.
///
/// The builder takes any value; a subscription that cannot be followed as
/// configured (see [`check`](Self::check)) is refused before it reads its
/// cache or connects: the first and only item of its stream is
/// [`WatchError::Config`], naming the setting and the value.
#[derive(Clone)]
pub struct Subscription {
    /// The server's addresses, replicas of one deployment.
    pub(crate) endpoints: Vec<String>,
    tls: Option<Tls>,
    pub(crate) token: Option<TokenSource>,
    pub(crate) namespace: String,
    pub(crate) names: Vec<String>,
    pub(crate) runtime: Option<RuntimeIdentity>,
    pub(crate) cache_dir: Option<PathBuf>,
    /// Overrides the interval the server announces.
    pub(crate) heartbeat_interval: Option<Duration>,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    /// Away from the first choice, it is tried again after a random time
    /// in the second half of this.
    pub(crate) rebalance_interval: Duration,
    /// Reports go out at a random moment within it; zero: at once.
    pub(crate) report_spread: Duration,
    /// Older checkpoints are stale; `None`: not checked.
    pub(crate) max_checkpoint_age: Option<Duration>,
    /// A refused token is retried rather than the end.
    pub(crate) retry_refused: bool,
    /// The origin of the server's log, pinned; `None`: the first one
    /// verified.
    pub(crate) log_origin: Option<String>,
    pub(crate) witnesses: Vec<String>,
    pub(crate) cosignatures: usize,
    /// Where a [`Revoker`](crate::Revoker)'s requests arrive, once one was made.
    pub(crate) revocations: Option<Arc<Mutex<mpsc::Receiver<Revocation>>>>,
}

impl Subscription {
    /// Follows every policy of `namespace` at `endpoint` (`http://` or
    /// `https://`).
    pub fn new(endpoint: impl Into<String>, namespace: impl Into<String>) -> Self {
        Subscription::with_endpoints([endpoint], namespace)
    }

    /// Follows every policy of `namespace` at any of `endpoints`, replicas
    /// of one deployment (each `http://` or `https://`, with the same TLS
    /// and token). The runtime prefers one of them, chosen by its
    /// [runtime id](Self::runtime) with rendezvous hashing (so a fleet
    /// spreads evenly, each runtime always on the same one) or at random
    /// without an id. When a connection fails or a stream is lost it
    /// resumes on the next one, from the revision it holds; the
    /// [backoff](Self::backoff) waits only once every address failed in a
    /// row. Away from its first choice, it tries that one again after a
    /// random time within the [rebalance interval](Self::rebalance_interval)
    /// and moves back once it answers, closing the stream it leaves only
    /// then. [`Event::Connected`](crate::Event::Connected) says which
    /// address each stream is on.
    pub fn with_endpoints(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
        namespace: impl Into<String>,
    ) -> Self {
        Subscription {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            tls: None,
            token: None,
            namespace: namespace.into(),
            names: Vec::new(),
            runtime: None,
            cache_dir: None,
            heartbeat_interval: None,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            rebalance_interval: DEFAULT_REBALANCE_INTERVAL,
            report_spread: DEFAULT_REPORT_SPREAD,
            max_checkpoint_age: Some(DEFAULT_MAX_CHECKPOINT_AGE),
            retry_refused: false,
            log_origin: None,
            witnesses: Vec::new(),
            cosignatures: 0,
            revocations: None,
        }
    }

    /// Lets the application take back the state in force after it applied
    /// it (a reload that failed later, a health check after the change): a
    /// [`Revoker`] for this subscription.
    pub fn revocable(mut self) -> (Self, Revoker) {
        let (revoker, receiver) = Revoker::channel();
        self.revocations = Some(Arc::new(Mutex::new(receiver)));
        (self, revoker)
    }

    /// Only these policies.
    pub fn names(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.names = names.into_iter().map(Into::into).collect();
        self.names.sort();
        self.names.dedup();
        self
    }

    /// Names the runtime, so that it appears in the fleet view and reports
    /// what it applied.
    pub fn runtime(
        mut self,
        id: impl Into<String>,
        labels: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        self.runtime = Some(RuntimeIdentity {
            id: id.into(),
            labels: labels.into_iter().collect(),
        });
        self
    }

    /// The bearer token of every call.
    pub fn token(mut self, source: TokenSource) -> Self {
        self.token = Some(source);
        self
    }

    /// TLS settings for an `https://` endpoint.
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Keeps the last-known-good state in this directory.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Overrides the heartbeat interval the server announces (10 s when it
    /// announces none): three intervals without a message mean a dead
    /// stream.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = Some(interval);
        self
    }

    /// How old the server's newest signed checkpoint may grow before the
    /// subscription reports
    /// [`Event::CheckpointStale`](crate::Event::CheckpointStale) (10
    /// minutes unless set; `None` turns the check off). Compared with this
    /// host's clock: keep clocks synchronized well within it. A server
    /// signs one at least every `audit.checkpoint_interval` (1 minute by
    /// default).
    pub fn max_checkpoint_age(mut self, max_age: Option<Duration>) -> Self {
        self.max_checkpoint_age = max_age;
        self
    }

    /// Keeps following when the server refuses the credentials
    /// (`UNAUTHENTICATED`, `PERMISSION_DENIED`): each refusal is an
    /// [`Event::Refused`](crate::Event::Refused), the state in force stays,
    /// and the subscription tries again after the backoff, or at once when
    /// the token source gives another token (a rotated token file is read
    /// twice a second meanwhile). Off unless set: a refusal then ends the
    /// subscription with [`WatchError::Refused`]. For a process that serves
    /// the state in force to others while its credentials are fixed.
    pub fn retry_when_refused(mut self, retry: bool) -> Self {
        self.retry_refused = retry;
        self
    }

    /// The origin line of the server's log (its `audit.log_origin`): a
    /// checkpoint of any other log is refused. Unset, the subscription
    /// follows the log of the first checkpoint it verifies (kept in the
    /// cache with the tree it verified last).
    pub fn log_origin(mut self, origin: impl Into<String>) -> Self {
        self.log_origin = Some(origin.into());
        self
    }

    /// Take a checkpoint only when at least `required` of `witnesses`
    /// (their verifier keys, `<name>+<key id>+base64(0x04 ‖ key)`) cosigned
    /// it (C2SP tlog-cosignature): one with fewer is refused as a forked
    /// history is, and the state in force stays.
    pub fn witnesses(mut self, witnesses: Vec<String>, required: usize) -> Self {
        self.witnesses = witnesses;
        self.cosignatures = required;
        self
    }

    /// Reconnection delays: a random duration up to `initial`, doubling the
    /// bound per failed attempt up to `max` (full jitter).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// With several [endpoints](Self::with_endpoints): how long, at most,
    /// the subscription stays away from its first choice before trying it
    /// again (a uniformly random time in the second half of `interval`, so
    /// that a fleet does not move back in one wave; 60 s unless set). The
    /// stream in use stays open until the one on the first choice is.
    pub fn rebalance_interval(mut self, interval: Duration) -> Self {
        self.rebalance_interval = interval;
        self
    }

    /// Spreads reports: each outcome the runtime decides is reported at a
    /// uniformly random moment within the second half of `spread` after it
    /// (1 s unless set; zero reports at once; see [`report_delay`]),
    /// together with any decided meanwhile. A fleet answering an update at
    /// once would send its reports while the server still writes that
    /// update to the rest of the fleet; spread and held back, they cost the
    /// delivery little. The server makes reports visible at its flush
    /// interval (1 s by default) anyway.
    pub fn report_spread(mut self, spread: Duration) -> Self {
        self.report_spread = spread;
        self
    }

    /// Refuses what the subscription cannot follow, naming the setting and
    /// the value ([`WatchError::Config`]): no endpoint, an address that is
    /// not `http://host[:port]` or `https://host[:port]` (another scheme
    /// would be taken for plaintext, a path not used); a heartbeat interval,
    /// rebalance interval or maximum checkpoint age below
    /// [`MIN_INTERVAL`] (zero among them: a loop of connections dropped at
    /// once, of moves back, of stale checkpoints; `None` turns the last
    /// off); a backoff whose first bound is below [`MIN_INTERVAL`] or above
    /// its cap (zero: reconnections as fast as the host allows); more
    /// cosignatures required than witnesses, or a witness key that does
    /// not parse. A report spread of zero is valid: reports go out at
    /// once.
    ///
    /// [`events`](Self::events) and the other ways to follow check first;
    /// call it to refuse a configuration at start-up, before following.
    pub fn check(&self) -> Result<(), WatchError> {
        let refuse = |message: String| Err(WatchError::Config(message));
        if self.endpoints.is_empty() {
            return refuse("the subscription names no endpoint".to_owned());
        }
        if let Some(address) = self
            .endpoints
            .iter()
            .find(|address| !is_http_address(address))
        {
            return refuse(format!(
                "endpoint {address:?} is not an http:// or https:// address (http://host:port)"
            ));
        }
        let intervals = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("backoff initial delay", Some(self.backoff_initial)),
            ("rebalance_interval", Some(self.rebalance_interval)),
            ("max_checkpoint_age", self.max_checkpoint_age),
        ];
        for (setting, interval) in intervals {
            if let Some(interval) = interval.filter(|interval| *interval < MIN_INTERVAL) {
                return refuse(format!(
                    "{setting} must be at least {MIN_INTERVAL:?}, got {interval:?}"
                ));
            }
        }
        if self.backoff_initial > self.backoff_max {
            return refuse(format!(
                "backoff must have its initial delay at most its maximum, got {:?} and {:?}",
                self.backoff_initial, self.backoff_max
            ));
        }
        if self.cosignatures > self.witnesses.len() {
            return refuse(format!(
                "witnesses: {} cosignatures required of {} witnesses given",
                self.cosignatures,
                self.witnesses.len()
            ));
        }
        for witness in &self.witnesses {
            crate::cosignature::CosignatureVerifier::new(witness)
                .map_err(|error| WatchError::Config(format!("witnesses: {error}")))?;
        }
        Ok(())
    }

    /// The connection settings of `address`, one of the endpoints.
    pub(crate) fn endpoint(&self, address: &str) -> Result<Endpoint, WatchError> {
        // Before the server has said its interval, the override or the
        // default paces the connection's own checks.
        let interval = self
            .heartbeat_interval
            .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
        let mut endpoint = Endpoint::from_shared(address.to_owned())
            .map_err(|_| WatchError::Config(format!("{address:?} is not a URL")))?
            .connect_timeout(interval.max(Duration::from_secs(1)))
            // HTTP/2 pings find a half-open connection even when the
            // server's heartbeats are far apart.
            .http2_keep_alive_interval(interval)
            .keep_alive_timeout(interval)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.client_config())
                .map_err(|error| WatchError::Config(format!("tls: {error}")))?;
        }
        Ok(endpoint)
    }
}

/// Whether `address` is `http://host[:port]` or `https://host[:port]`
/// (with at most a `/` after it).
fn is_http_address(address: &str) -> bool {
    let Ok(uri) = address.parse::<tonic::codegen::http::Uri>() else {
        return false;
    };
    let Some(authority) = uri.authority() else {
        return false;
    };
    matches!(uri.scheme_str(), Some("http" | "https"))
        && !authority.host().is_empty()
        && !authority.as_str().contains('@')
        && matches!(uri.path(), "" | "/")
        && uri.query().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refusal of `subscription`, or a panic if it is accepted.
    fn refusal(subscription: Subscription) -> String {
        match subscription.check() {
            Err(WatchError::Config(message)) => message,
            Err(other) => panic!("refused as {other:?}"),
            Ok(()) => panic!("accepted"),
        }
    }

    fn following() -> Subscription {
        Subscription::new("http://127.0.0.1:50051", "payments")
    }

    #[test]
    fn an_address_that_is_not_http_or_https_is_refused_by_name() {
        for address in [
            "ftp://127.0.0.1:50051",
            "127.0.0.1:50051",
            "localhost:50051",
            "http://127.0.0.1:50051/policyhub",
            "http://127.0.0.1:50051/?x=1",
            "http://user@127.0.0.1:50051",
            "http://",
            "not a url",
        ] {
            let message = refusal(Subscription::with_endpoints(
                ["https://replica-1:50051", address],
                "payments",
            ));
            assert_eq!(
                message,
                format!(
                    "endpoint {address:?} is not an http:// or https:// address (http://host:port)"
                )
            );
        }
        let none: [&str; 0] = [];
        assert_eq!(
            refusal(Subscription::with_endpoints(none, "payments")),
            "the subscription names no endpoint"
        );
        for address in [
            "http://127.0.0.1:50051",
            "http://127.0.0.1:50051/",
            "https://policyhub.example.com",
            "http://[::1]:50051",
        ] {
            assert!(
                Subscription::new(address, "payments").check().is_ok(),
                "{address}"
            );
        }
    }

    #[test]
    fn an_interval_under_a_millisecond_is_refused_by_name() {
        let zero = Duration::ZERO;
        let cases = [
            (
                following().heartbeat_interval(zero),
                "heartbeat_interval must be at least 1ms, got 0ns",
            ),
            (
                following().heartbeat_interval(Duration::from_micros(10)),
                "heartbeat_interval must be at least 1ms, got 10µs",
            ),
            (
                following().backoff(zero, Duration::from_secs(30)),
                "backoff initial delay must be at least 1ms, got 0ns",
            ),
            (
                following().rebalance_interval(zero),
                "rebalance_interval must be at least 1ms, got 0ns",
            ),
            (
                following().max_checkpoint_age(Some(zero)),
                "max_checkpoint_age must be at least 1ms, got 0ns",
            ),
            (
                following().backoff(Duration::from_secs(5), Duration::from_secs(1)),
                "backoff must have its initial delay at most its maximum, got 5s and 1s",
            ),
            (
                following().witnesses(Vec::new(), 1),
                "witnesses: 1 cosignatures required of 0 witnesses given",
            ),
            (
                following().witnesses(vec!["not-a-key".to_owned()], 1),
                "witnesses: \"not-a-key\" is not a cosignature/v1 verifier key",
            ),
        ];
        for (subscription, expected) in cases {
            assert_eq!(refusal(subscription), expected);
        }
    }

    #[test]
    fn settings_in_range_are_accepted() {
        let tight = following()
            .heartbeat_interval(MIN_INTERVAL)
            .backoff(MIN_INTERVAL, MIN_INTERVAL)
            .rebalance_interval(MIN_INTERVAL)
            .max_checkpoint_age(None)
            .report_spread(Duration::ZERO);
        assert!(tight.check().is_ok());
        assert!(following().check().is_ok(), "the defaults");
    }

    #[test]
    fn reports_go_out_in_the_second_half_of_the_spread() {
        let spread = Duration::from_secs(4);
        let delays: Vec<Duration> = (0..1000).map(|_| report_delay(spread)).collect();
        assert!(
            delays
                .iter()
                .all(|delay| *delay >= spread / 2 && *delay <= spread)
        );
        // Spread over the half, not bunched: both quarters of it are used.
        let late = delays
            .iter()
            .filter(|delay| **delay > spread * 3 / 4)
            .count();
        assert!(
            (300..700).contains(&late),
            "{late} of 1000 in the last quarter"
        );
        assert_eq!(report_delay(Duration::ZERO), Duration::ZERO);
    }
}
