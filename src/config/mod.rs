//! Settings, layered: built-in defaults, then a TOML file (`--config`), then
//! `POLICYHUB_*` environment variables (`__` separates nested keys, as in
//! `POLICYHUB_LIMITS__MAX_BODY_BYTES`), then command-line flags.

mod auth;
mod decisions;
mod limits;
mod notifications;
mod opa;
mod pool;
mod witnesses;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use figment::{
    Figment, Provider,
    providers::{Env, Format, Serialized, Toml},
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub use auth::{AuthSettings, GENERATED_SECRET_FILE, IssuerSettings, LOCAL_ISSUER};
pub use decisions::DecisionSettings;
pub use limits::Limits;
pub use notifications::NotificationSettings;
pub use opa::{ImpactGateSettings, OpaNamespace, OpaSettings};
pub use pool::PoolSize;
pub use witnesses::WitnessSettings;

/// Everything `policyhub serve` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address of the gRPC port. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Connections the kernel queues before the server accepts them (the
    /// listen backlog; etcd uses 4096). A connection storm beyond it pays
    /// TCP's one-second SYN retry. Linux caps it at `net.core.somaxconn`.
    pub listen_backlog: u32,
    /// Address of the Prometheus metrics port (`/metrics`); off when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// Address of the HTTP/JSON port (every unary RPC at the path its
    /// `google.api.http` option declares); off when unset.
    pub http_listen: Option<SocketAddr>,
    /// Directory of the SQLite database and of a generated signing key.
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; defaults to `policyhub.db` in
    /// `data_dir`. Secret: it may carry a password, so it serializes
    /// redacted.
    #[serde(serialize_with = "redacted")]
    pub database_url: Option<SecretString>,
    /// The most connections the pool opens to the database. On PostgreSQL
    /// a replica holds up to this many plus two (the one listening for the
    /// other replicas' activations and the one holding its leadership
    /// locks), so replicas × (this + 2) must stay below the server's
    /// `max_connections`. From 1 to 1000.
    pub database_pool_size: PoolSize,
    /// Serve without authentication. Refused on a non-loopback address.
    pub insecure: bool,
    /// The `iss` claim of signed bundles (tokens' issuer is
    /// `auth.issuer`).
    pub bundle_issuer: String,
    /// Signing keys.
    pub signing: SigningSettings,
    /// Request limits.
    pub limits: Limits,
    /// Bounds on every port's connections: how long one may take to send a
    /// request, or stay idle, and how many one port holds.
    pub connections: crate::connections::Limits,
    /// Log format.
    pub log_format: LogFormat,
    /// How often the database is pinged for the health service.
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// Watch streams.
    pub watch: WatchSettings,
    /// Token authentication.
    pub auth: AuthSettings,
    /// TLS on the gRPC port.
    pub tls: Option<TlsSettings>,
    /// Per-caller quotas.
    pub quotas: QuotaSettings,
    /// The fleet view of identified runtimes.
    pub runtimes: RuntimeSettings,
    /// The rollout controller.
    pub rollouts: RolloutSettings,
    /// Recurring schedules.
    pub schedules: ScheduleSettings,
    /// Signed checkpoints of the event log.
    pub audit: AuditSettings,
    /// Webhook subscriptions.
    pub notifications: NotificationSettings,
    /// Namespaces served to Open Policy Agent.
    pub opa: OpaSettings,
    /// The decisions OPAs upload.
    pub decisions: DecisionSettings,
    /// How long an idempotency key is remembered; unset: forever. A retry
    /// after that time executes again.
    #[serde(with = "humantime_serde")]
    pub idempotency_retention: Option<Duration>,
}

/// The rollout controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutSettings {
    /// How often running rollouts are checked against the fleet view: the
    /// longest a rejection waits before it rolls the cohort back, and the
    /// granularity of bake times.
    #[serde(with = "humantime_serde")]
    pub tick_interval: Duration,
    /// Approvals a rollout needs before it begins, per namespace; `*` for
    /// every namespace not named. Unset: none.
    pub required_approvals: std::collections::BTreeMap<String, u32>,
    /// The Prometheus servers rollouts' analyses may query, by name (an
    /// analysis that names none asks `default`). Requests name a server,
    /// never an address, so no caller makes the server fetch a URL of its
    /// choosing. Unset: rollouts cannot have analyses.
    pub prometheus: std::collections::BTreeMap<String, PrometheusServer>,
    /// The shortest interval an analysis may measure at.
    #[serde(with = "humantime_serde")]
    pub min_analysis_interval: Duration,
    /// The longest one query to Prometheus may take; past it the
    /// measurement is an error ("timed out after …").
    #[serde(with = "humantime_serde")]
    pub analysis_timeout: Duration,
}

/// One Prometheus server analyses query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusServer {
    /// Its base URL (`http://prometheus:9090`); queries go to
    /// `api/v1/query` below it.
    pub url: String,
}

impl Default for RolloutSettings {
    fn default() -> Self {
        RolloutSettings {
            tick_interval: Duration::from_secs(1),
            required_approvals: Default::default(),
            prometheus: Default::default(),
            min_analysis_interval: Duration::from_secs(10),
            analysis_timeout: Duration::from_secs(5),
        }
    }
}

impl RolloutSettings {
    /// The tick interval.
    pub fn tick_interval(&self) -> Duration {
        at_least_a_millisecond(self.tick_interval)
    }

    /// Approvals a rollout in `namespace` needs.
    pub fn required_approvals(&self, namespace: &str) -> u32 {
        self.required_approvals
            .get(namespace)
            .or_else(|| self.required_approvals.get("*"))
            .copied()
            .unwrap_or(0)
    }
}

/// Recurring schedules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleSettings {
    /// The shortest time an entry's pattern may leave between two firings;
    /// `SetSchedule` refuses a pattern that fires more often. Each firing
    /// that moves a pointer is a revision of the log.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        ScheduleSettings {
            min_interval: Duration::from_secs(60),
        }
    }
}

/// The fleet view (`ListRuntimes`, `GetPolicyStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSettings {
    /// A runtime silent for longer than this (no open stream, no report) is
    /// STALE, and its id may then be taken by another subject.
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    /// How often a replica writes the runtimes that changed, in one batch.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// A runtime silent for longer than this leaves the fleet view; it
    /// reappears when it connects again.
    #[serde(with = "humantime_serde")]
    pub forget_after: Duration,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            stale_after: Duration::from_secs(300),
            flush_interval: Duration::from_secs(1),
            forget_after: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// At least a millisecond: an interval of zero would spin.
fn at_least_a_millisecond(interval: Duration) -> Duration {
    interval.max(Duration::from_millis(1))
}

impl RuntimeSettings {
    /// The flush interval.
    pub fn flush_interval(&self) -> Duration {
        at_least_a_millisecond(self.flush_interval)
    }
}

/// TLS for the gRPC port (rustls).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The server's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    pub client_ca_file: Option<PathBuf>,
}

/// Limits per authenticated subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaSettings {
    /// Concurrent watch streams one subject may hold.
    pub max_streams_per_subject: usize,
    /// Sustained mutating requests (draft, discard, publish, activate,
    /// rollback, schema) per second and subject.
    pub mutations_per_second: f64,
    /// Mutating requests one subject may burst above the sustained rate.
    pub mutation_burst: f64,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        QuotaSettings {
            max_streams_per_subject: 1000,
            mutations_per_second: 20.0,
            mutation_burst: 100.0,
        }
    }
}

/// Watch streams and, on PostgreSQL, how a replica learns of the others'
/// activations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchSettings {
    /// A PROGRESS message goes out after this long without an update.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// PostgreSQL: read the event log for revisions committed by other
    /// replicas this often, in case a notification was lost.
    #[serde(with = "humantime_serde")]
    pub catch_up_interval: Duration,
    /// PostgreSQL: LISTEN for other replicas' activations (delivery within
    /// milliseconds). Without it, only the periodic catch-up delivers them.
    pub listen_notifications: bool,
    /// PostgreSQL: a replica that cannot read the database for this long
    /// stops vouching for its revision: its watch streams end with
    /// UNAVAILABLE and new ones are refused until it reads again.
    #[serde(with = "humantime_serde")]
    pub vouch_timeout: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings {
            heartbeat_interval: Duration::from_secs(10),
            catch_up_interval: Duration::from_secs(1),
            listen_notifications: true,
            vouch_timeout: Duration::from_secs(30),
        }
    }
}

impl WatchSettings {
    /// The heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        at_least_a_millisecond(self.heartbeat_interval)
    }

    /// The catch-up interval.
    pub fn catch_up_interval(&self) -> Duration {
        at_least_a_millisecond(self.catch_up_interval)
    }
}

/// Signed checkpoints of the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// Besides the one of every commit that makes a revision durable, a
    /// checkpoint is signed and stored when the newest is older than half
    /// of this, so the checkpoint watch streams carry is never older than
    /// this while the database answers.
    /// Runtimes compare its age with their `max_checkpoint_age`. Each such
    /// checkpoint gets this long to be signed, and at least 30 s.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// The origin line naming this deployment's log in its checkpoint
    /// notes (C2SP tlog-checkpoint: a schema-less URL such as
    /// `policy.example.com/log`), also the key name of their signatures.
    /// Unset: the one made at random with the database. Runtimes and
    /// witnesses pin it: set it before the first checkpoint, never change
    /// it after.
    pub log_origin: Option<String>,
    /// Witnesses (C2SP tlog-witness) every new checkpoint is submitted to,
    /// by the one replica that holds the witnessing lock; the cosignatures
    /// they answer are served on the checkpoint, so runtimes can require
    /// them. None: checkpoints carry the log's signature alone.
    pub witnesses: Vec<WitnessSettings>,
    /// With witnesses, how long a revision waits for its checkpoint (or a
    /// newer one) to be cosigned before watch streams receive it anyway;
    /// each witness has half of it to answer. Activations still commit
    /// when witnesses are down; their replies and watch streams wait up
    /// to this.
    #[serde(with = "humantime_serde")]
    pub witness_timeout: Duration,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            checkpoint_interval: Duration::from_secs(60),
            log_origin: None,
            witnesses: Vec::new(),
            witness_timeout: Duration::from_secs(3),
        }
    }
}

impl AuditSettings {
    /// The checkpoint interval.
    pub fn checkpoint_interval(&self) -> Duration {
        at_least_a_millisecond(self.checkpoint_interval)
    }

    /// The witness timeout.
    pub fn witness_timeout(&self) -> Duration {
        at_least_a_millisecond(self.witness_timeout)
    }
}

/// Where the signing keys come from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SigningSettings {
    /// PKCS#8 PEM Ed25519 private keys. The first signs new versions; the
    /// others are published in the JWKS so that their bundles still verify.
    /// Empty: a key is generated into the data directory on first start.
    pub key_files: Vec<PathBuf>,
    /// PKCS#8 PEM P-256 private keys that sign OPA bundles (OPA verifies
    /// no Ed25519): the first signs, every one is published to OPAs.
    /// Read again on SIGHUP, as `key_files` are. Empty: one is generated
    /// into the data directory on first start (SQLite only: on PostgreSQL
    /// every replica must sign with the same keys, so they are required).
    pub opa_key_files: Vec<PathBuf>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            listen_backlog: 4096,
            metrics_listen: None,
            http_listen: None,
            data_dir: PathBuf::from("data"),
            database_url: None,
            database_pool_size: PoolSize::default(),
            insecure: false,
            bundle_issuer: "policyhub".into(),
            signing: SigningSettings::default(),
            limits: Limits::default(),
            connections: crate::connections::Limits::default(),
            log_format: LogFormat::Text,
            health_check_interval: Duration::from_secs(5),
            watch: WatchSettings::default(),
            auth: AuthSettings::default(),
            tls: None,
            quotas: QuotaSettings::default(),
            runtimes: RuntimeSettings::default(),
            rollouts: RolloutSettings::default(),
            schedules: ScheduleSettings::default(),
            audit: AuditSettings::default(),
            notifications: NotificationSettings::default(),
            opa: OpaSettings::default(),
            decisions: DecisionSettings::default(),
            idempotency_retention: None,
        }
    }
}

/// Settings given as command-line flags to `serve`; only those given
/// override.
#[derive(Debug, Clone, Default, Serialize, clap::Args)]
pub struct Overrides {
    /// Address of the gRPC port [default: 127.0.0.1:50051]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Address of the Prometheus metrics port [default: off]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Address of the HTTP/JSON port [default: off]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<SocketAddr>,
    /// Serve without authentication (loopback addresses only)
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// Where the database is, and the log format.
    #[command(flatten)]
    #[serde(flatten)]
    pub database: DatabaseOverrides,
}

/// The flags `serve` and `migrate` share: where the database is.
#[derive(Debug, Clone, Default, Serialize, clap::Args)]
pub struct DatabaseOverrides {
    /// Directory for the SQLite database and a generated signing key [default: data]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Database URL, sqlite://… or postgres://… [default: sqlite in the data directory]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// The most connections the pool opens to the database, 1 to 1000 [default: 10]
    #[arg(long, value_parser = parse_pool_size)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_pool_size: Option<PoolSize>,
    /// Log format
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// A pool size given as a flag, refused as the settings refuse it.
fn parse_pool_size(value: &str) -> Result<PoolSize, String> {
    let size: u64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number of connections"))?;
    PoolSize::try_from(size)
}

/// The prefix of the variables that set settings.
const ENV_PREFIX: &str = "POLICYHUB_";

/// A secret serializes as a placeholder: what serializes the settings (the
/// environment's key list, a test) never needs its value.
fn redacted<S: serde::Serializer>(
    secret: &Option<SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => serializer.serialize_str("[redacted]"),
        None => serializer.serialize_none(),
    }
}

/// The top-level keys of the settings, read from the serialized defaults so
/// that a new setting is settable from the environment without a second
/// list to keep.
fn top_level_settings() -> Vec<String> {
    figment::value::Value::serialize(Settings::default())
        .ok()
        .and_then(|value| value.into_dict())
        .map(|dict| dict.into_keys().collect())
        .unwrap_or_default()
}

/// The `POLICYHUB_*` variables read as settings (prefix stripped, `__`
/// turned into `.`): every nested one, so that an unknown section or key
/// (`POLICYHUB_BOGUS__X`) is refused by the settings' `deny_unknown_fields`,
/// and the single-word ones that name a top-level setting. Other single-word
/// variables with the prefix are not settings and are left alone: the
/// client's and the agent's (`POLICYHUB_SERVER`, `POLICYHUB_AGENT_LISTEN`,
/// …), and the `POLICYHUB_PORT`, `POLICYHUB_SERVICE_HOST`, … that
/// Kubernetes injects into every pod when the Service is called `policyhub`.
fn environment() -> Env {
    let top_level = top_level_settings();
    Env::prefixed(ENV_PREFIX)
        .filter(move |key| {
            key.as_str().contains("__")
                || top_level
                    .iter()
                    .any(|setting| key.as_str().eq_ignore_ascii_case(setting))
        })
        .split("__")
}

/// The variable a dotted key came from, as written in the environment.
fn variable_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.to_ascii_uppercase().replace('.', "__")
    )
}

/// The errors, separated by `; `; one in a value from the environment names
/// the variable that carried it (figment names only the key, dotted), so an
/// unknown or invalid variable is found at a glance.
fn describe(errors: figment::Error, environment: &Env) -> String {
    let from_environment = environment.metadata().name;
    let variables: Vec<String> = environment.iter().map(|(key, _)| key.to_string()).collect();
    errors
        .into_iter()
        .map(|error| {
            // The path ends with the key refused, an unknown one included.
            let key = error.path.join(".");
            let is_environment = error
                .metadata
                .as_ref()
                .is_some_and(|metadata| metadata.name == from_environment);
            let named: Vec<String> = variables
                .iter()
                .filter(|variable| {
                    !key.is_empty()
                        && (variable.eq_ignore_ascii_case(&key)
                            || variable
                                .to_ascii_lowercase()
                                .starts_with(&format!("{key}.")))
                })
                .map(|variable| variable_name(variable))
                .collect();
            if is_environment && !named.is_empty() {
                format!("environment variable {}: {}", named.join(", "), error.kind)
            } else {
                error.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Settings {
    /// Layers the defaults, `config_file`, the environment and `overrides`.
    pub fn load(config_file: Option<&Path>, overrides: &impl Serialize) -> anyhow::Result<Self> {
        let mut figment = Figment::new();
        if let Some(path) = config_file {
            anyhow::ensure!(
                path.exists(),
                "config file {} does not exist",
                path.display()
            );
            figment = figment.merge(Toml::file(path));
        }
        let environment = environment();
        figment
            .merge(environment.clone())
            .merge(Serialized::defaults(overrides))
            .extract::<Settings>()
            .map_err(|errors| anyhow::anyhow!(describe(errors, &environment)))
            .and_then(|settings| {
                witnesses::check(&settings.audit.witnesses)?;
                settings.opa.bundle_roots()?;
                settings.opa.impact_gates()?;
                Ok(settings)
            })
            .context("reading the configuration")
    }

    /// The database URL, defaulting to SQLite in the data directory.
    pub fn database_url(&self) -> SecretString {
        match &self.database_url {
            Some(url) => url.clone(),
            None => {
                let path = self.data_dir.join("policyhub.db");
                SecretString::from(format!("sqlite://{}", path.display()))
            }
        }
    }

    /// Whether the database is SQLite.
    pub fn is_sqlite(&self) -> bool {
        self.database_url().expose_secret().starts_with("sqlite:")
    }

    /// Refuses OPA namespaces on PostgreSQL without `signing.opa_key_files`:
    /// each replica would generate a key of its own, and an OPA behind a
    /// load balancer would be handed bundles signed by keys its replica's
    /// discovery bundle does not list.
    pub fn check_opa_signing(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.opa.namespaces.is_empty()
                || self.is_sqlite()
                || !self.signing.opa_key_files.is_empty(),
            "opa.namespaces on PostgreSQL needs signing.opa_key_files: every replica must sign OPA \
             bundles with the same P-256 key (create one with `openssl genpkey -algorithm EC \
             -pkeyopt ec_paramgen_curve:P-256 -out opa-signing-key.pem`)"
        );
        Ok(())
    }

    /// The health-check interval.
    pub fn health_check_interval(&self) -> Duration {
        at_least_a_millisecond(self.health_check_interval)
    }
}

#[cfg(test)]
mod tests;
