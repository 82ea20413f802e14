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
//! `policyhub login` writes the tokens of a sign-in into the context it
//! signs in: the provider (`issuer`, `client_id`, `scopes`) and the session
//! (`id_token`, `refresh_token`, `expiry`). The file is then written whole
//! (a new file renamed over the old one), mode 0600, its other settings and
//! comments kept; `policyhub logout` removes the session.
//!
//! The file is `POLICYHUB_CLIENT_CONFIG`, else `policyhub/config.toml` in
//! `XDG_CONFIG_HOME` (by default `~/.config`). `--context` or
//! `POLICYHUB_CONTEXT` picks a context; otherwise `current_context` does.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use std::os::unix::fs::DirBuilderExt as _;

use anyhow::Context as _;
use figment::{
    Figment,
    providers::{Format, Toml},
};
use secrecy::{ExposeSecret, SecretString};
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
    /// The OpenID provider `policyhub login` signs in with.
    pub issuer: Option<String>,
    /// The public client of policyhub at that provider.
    pub client_id: Option<String>,
    /// The scopes `policyhub login` asks for.
    pub scopes: Option<Vec<String>>,
    /// The ID token of the sign-in: the bearer token of every call.
    pub id_token: Option<SecretString>,
    /// Gets a new ID token when this one expires.
    pub refresh_token: Option<SecretString>,
    /// When the ID token expires.
    pub expiry: Option<chrono::DateTime<chrono::Utc>>,
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
/// the file's current context, else an empty one; with its name when it has
/// one.
pub fn load(selected: Option<&str>) -> anyhow::Result<(Option<String>, Context)> {
    let (path, config) = read()?;
    let Some(name) = selected.or(config.current_context.as_deref()) else {
        return Ok((None, Context::default()));
    };
    match config.contexts.get(name) {
        Some(context) => Ok((Some(name.to_owned()), context.clone())),
        None => Err(undefined(name, &config, path).into()),
    }
}

/// The context `policyhub login` signs in: `selected`, else the file's
/// current context, else [`DEFAULT_CONTEXT`]; empty when the file does not
/// define it yet.
pub fn load_or_new(selected: Option<&str>) -> anyhow::Result<(String, Context)> {
    let (_, config) = read()?;
    let name = selected
        .or(config.current_context.as_deref())
        .unwrap_or(DEFAULT_CONTEXT);
    let context = config.contexts.get(name).cloned().unwrap_or_default();
    Ok((name.to_owned(), context))
}

/// The client config file, where it is and what it holds.
fn read() -> anyhow::Result<(Option<PathBuf>, ClientConfig)> {
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
    Ok((path, config))
}

/// The refusal of a context the file does not define.
fn undefined(name: &str, config: &ClientConfig, path: Option<PathBuf>) -> Usage {
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
}

/// The context `policyhub login` signs in when none is selected, made
/// current.
pub const DEFAULT_CONTEXT: &str = "default";

/// The tokens of a sign-in, and where they come from.
pub struct Session {
    /// The OpenID provider.
    pub issuer: String,
    /// The public client of policyhub at that provider.
    pub client_id: String,
    /// The scopes asked for; none: those the context names are kept.
    pub scopes: Vec<String>,
    /// The bearer token of every call.
    pub id_token: SecretString,
    /// Gets a new ID token; none when the provider gave none.
    pub refresh_token: Option<SecretString>,
    /// When the ID token expires.
    pub expiry: chrono::DateTime<chrono::Utc>,
}

/// The session keys of a context, removed by `policyhub logout`.
const SESSION_KEYS: [&str; 3] = ["id_token", "refresh_token", "expiry"];

/// Whether saving a session also makes its context current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saving {
    /// A sign-in: the context becomes current when no context is.
    SignIn,
    /// A renewal: nothing else changes.
    Renewal,
}

/// Writes `session` into context `name`, created if need be.
pub fn save_session(name: &str, session: &Session, saving: Saving) -> anyhow::Result<()> {
    edit(|document| {
        if saving == Saving::SignIn && document.get("current_context").is_none() {
            document["current_context"] = toml_edit::value(name);
        }
        let context = context_table(document, name)?;
        context.insert("issuer", toml_edit::value(&session.issuer));
        context.insert("client_id", toml_edit::value(&session.client_id));
        if !session.scopes.is_empty() {
            context.insert(
                "scopes",
                toml_edit::value(session.scopes.iter().collect::<toml_edit::Array>()),
            );
        }
        context.insert(
            "id_token",
            toml_edit::value(session.id_token.expose_secret()),
        );
        match &session.refresh_token {
            Some(token) => context.insert("refresh_token", toml_edit::value(token.expose_secret())),
            None => context.remove("refresh_token"),
        };
        context.insert(
            "expiry",
            toml_edit::value(
                session
                    .expiry
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ),
        );
        Ok(())
    })
}

/// Removes the session of context `name`; whether it had one.
pub fn remove_session(name: &str) -> anyhow::Result<bool> {
    let mut removed = false;
    edit(|document| {
        let context = context_table(document, name)?;
        for key in SESSION_KEYS {
            removed |= context.remove(key).is_some();
        }
        Ok(())
    })?;
    Ok(removed)
}

/// The table of context `name` in `document`, created if need be.
fn context_table<'d>(
    document: &'d mut toml_edit::DocumentMut,
    name: &str,
) -> anyhow::Result<&'d mut dyn toml_edit::TableLike> {
    let not_a_table = || Unusable::new(What::ClientConfig, "contexts is not a table of tables");
    let contexts = document
        .entry("contexts")
        .or_insert_with(|| {
            let mut table = toml_edit::Table::new();
            table.set_implicit(true);
            toml_edit::Item::Table(table)
        })
        .as_table_like_mut()
        .ok_or_else(not_a_table)?;
    Ok(contexts
        .entry(name)
        .or_insert(toml_edit::Item::Table(toml_edit::Table::new()))
        .as_table_like_mut()
        .ok_or_else(not_a_table)?)
}

/// An exclusive lock on renewing sessions, released when dropped: two
/// commands must not both spend the same refresh token, as a provider that
/// rotates refresh tokens takes the second use for a stolen token and ends
/// the sign-in. It is `flock` on the file `<client config>.lock`.
pub struct RenewalLock {
    _locked: std::fs::File,
}

/// Waits for the [`RenewalLock`].
pub async fn lock_renewal() -> anyhow::Result<RenewalLock> {
    use std::os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _};

    let Some(config) = config_path() else {
        return Err(Usage::new(
            "the client config file has no place: none of POLICYHUB_CLIENT_CONFIG, \
             XDG_CONFIG_HOME and HOME is set",
            "set POLICYHUB_CLIENT_CONFIG to the file that keeps the sign-in",
        )
        .into());
    };
    let mut path = config.into_os_string();
    path.push(".lock");
    let path = PathBuf::from(path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening the lock {}", path.display()))?;
    tokio::task::spawn_blocking(move || {
        // SAFETY: flock on a descriptor this function owns.
        #[allow(unsafe_code)]
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0;
        if locked {
            Ok(RenewalLock { _locked: file })
        } else {
            Err(std::io::Error::last_os_error())
        }
    })
    .await?
    .with_context(|| format!("locking {}", path.display()))
}

/// Rewrites the client config file through `change`, keeping its comments
/// and layout: a new file, mode 0600 from its creation (it holds tokens),
/// renamed over the old one.
fn edit(
    change: impl FnOnce(&mut toml_edit::DocumentMut) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use std::io::Write as _;

    let path = config_path().ok_or_else(|| {
        Usage::new(
            "the client config file has no place: none of POLICYHUB_CLIENT_CONFIG, \
             XDG_CONFIG_HOME and HOME is set",
            "set POLICYHUB_CLIENT_CONFIG to the file to keep the sign-in in",
        )
    })?;
    let reading = || {
        Unusable::new(
            What::ClientConfig,
            format!("reading the client config {}", path.display()),
        )
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(error).with_context(reading),
    };
    let mut document: toml_edit::DocumentMut = text.parse().with_context(reading)?;
    change(&mut document)?;
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let writing = || format!("writing the client config {}", path.display());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(directory)
        .with_context(writing)?;
    let mut file = tempfile::NamedTempFile::new_in(directory).with_context(writing)?;
    file.write_all(document.to_string().as_bytes())
        .and_then(|()| file.as_file().sync_all())
        .with_context(writing)?;
    file.persist(&path)
        .map_err(|error| error.error)
        .with_context(writing)?;
    Ok(())
}
