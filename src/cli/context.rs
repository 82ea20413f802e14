//! The client config file: named contexts (server, token file, TLS files,
//! timeouts), as kubectl's kubeconfig and etcdctl's environments, so one
//! machine can talk to several deployments.
//!
//! ```toml
//! current_context = "staging"
//!
//! [contexts.staging]
//! server = "https://policyhub.staging.example:50051"
//! token_file = "/home/me/.config/policyhub/staging.token"
//! ca_file = "/home/me/.config/policyhub/staging-ca.pem"
//! request_timeout = "1m"
//! ```
//!
//! The file is `POLICYHUB_CLIENT_CONFIG`, else `policyhub/config.toml` in
//! `XDG_CONFIG_HOME` (by default `~/.config`). `--context` or
//! `POLICYHUB_CONTEXT` picks a context; otherwise `current_context` does.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use figment::{
    Figment,
    providers::{Format, Toml},
};
use serde::Deserialize;

use super::failure::{Unusable, Usage, What};

/// One named deployment.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// The server's URL.
    pub server: Option<String>,
    /// File holding the bearer token.
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) of the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for mTLS.
    pub cert_file: Option<PathBuf>,
    /// Client private key (PEM).
    pub key_file: Option<PathBuf>,
    /// How long to try to connect, such as "5s".
    #[serde(default, with = "humantime_serde_option")]
    pub connect_timeout: Option<Duration>,
    /// How long to wait for an answer, such as "30s"; "0s" waits forever.
    #[serde(default, with = "humantime_serde_option")]
    pub request_timeout: Option<Duration>,
}

/// Durations written as humans do ("5s", "1m30s").
mod humantime_serde_option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| humantime::parse_duration(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientConfig {
    current_context: Option<String>,
    #[serde(default)]
    contexts: BTreeMap<String, Context>,
}

/// Where the client config file is.
fn config_path() -> Option<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    if let Some(path) = non_empty("POLICYHUB_CLIENT_CONFIG") {
        return Some(PathBuf::from(path));
    }
    let config_home = non_empty("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| non_empty("HOME").map(|home| Path::new(&home).join(".config")))?;
    Some(config_home.join("policyhub").join("config.toml"))
}

/// The context named by `selected` (`--context`, `POLICYHUB_CONTEXT`), else
/// the file's current context, else an empty one.
pub fn load(selected: Option<&str>) -> anyhow::Result<Context> {
    let path = config_path();
    let config: ClientConfig = match &path {
        Some(path) if path.exists() => {
            Figment::from(Toml::file(path)).extract().with_context(|| {
                Unusable::new(
                    What::ClientConfig,
                    format!("reading the client config {}", path.display()),
                )
            })?
        }
        _ => ClientConfig::default(),
    };
    let Some(name) = selected.or(config.current_context.as_deref()) else {
        return Ok(Context::default());
    };
    config.contexts.get(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = config.contexts.keys().map(String::as_str).collect();
        let file = path.map_or("no client config file".to_owned(), |path| {
            path.display().to_string()
        });
        Usage::new(
            format!(
                "context {name:?} is not defined in {file} (defined: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
            "name a defined context with --context or POLICYHUB_CONTEXT, or add a \
             [contexts.NAME] table to the client config file",
        )
        .into()
    })
}
