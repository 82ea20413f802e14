//! How the client subcommands reach the server: URL, TLS, bearer token and
//! timeouts.
//!
//! Each setting comes from its flag, else its `POLICYHUB_*` variable (an
//! empty one counts as unset), else the selected context of the client
//! config file (see `context`), else its default: flags over the
//! environment over the config file, as with kubectl and etcdctl.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

use secrecy::ExposeSecret as _;

use super::context::{self, Context};
use super::failure::{Unreachable, Unusable, Usage, What};
use super::session;

/// The server when nothing names one.
const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";
/// How long to try to connect when nothing says (etcdctl's dial timeout is
/// 2 s, its command timeout 5 s).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for an answer when nothing says.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the server is and how to authenticate to it.
#[derive(Debug, clap::Args)]
pub struct Connection {
    #[command(flatten)]
    server: Server,
    /// Bearer token; prefer --token-file, a flag shows in `ps` [env: POLICYHUB_TOKEN]
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// File holding the bearer token [env: POLICYHUB_TOKEN_FILE]
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// Where the server is: a [`Connection`] without its token, for what the
/// server answers anyone.
#[derive(Debug, clap::Args)]
pub struct Server {
    /// The server's URL; https:// speaks TLS [env: POLICYHUB_SERVER] [default: http://127.0.0.1:50051]
    #[arg(long)]
    server: Option<String>,
    /// CA certificate (PEM) of the server's certificate [env: POLICYHUB_CA_FILE] [default: the public web roots]
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for servers that require mTLS [env: POLICYHUB_CERT_FILE]
    #[arg(long)]
    cert_file: Option<PathBuf>,
    /// Client private key (PEM) [env: POLICYHUB_KEY_FILE]
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// A context of the client config file [env: POLICYHUB_CONTEXT] [default: its current_context]
    #[arg(long)]
    context: Option<String>,
    /// Give up connecting after this long, such as 5s [env: POLICYHUB_CONNECT_TIMEOUT] [default: 5s]
    #[arg(long, value_parser = humantime::parse_duration)]
    connect_timeout: Option<Duration>,
    /// Give up waiting for an answer after this long; 0s waits forever [env: POLICYHUB_REQUEST_TIMEOUT] [default: 30s]
    #[arg(long, value_parser = humantime::parse_duration)]
    request_timeout: Option<Duration>,
}

/// The token flags of a [`Connection`].
struct TokenFlags<'a> {
    token: Option<&'a String>,
    token_file: Option<&'a PathBuf>,
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// A channel that authenticates every call.
pub type AuthChannel = InterceptedService<Channel, BearerToken>;

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// The token a token file holds.
fn read_token(path: &PathBuf) -> anyhow::Result<String> {
    String::from_utf8(read(path)?).map_err(|_| {
        Unusable::new(
            What::Token,
            format!("{} holds no token: it is not text", path.display()),
        )
        .into()
    })
}

/// The refusal of a server that is not an http:// or https:// URL, wherever
/// it came from (flag, variable or context).
fn not_a_server_url(server: &str) -> Usage {
    Usage::new(
        format!("{server:?} is not a server URL"),
        "write http://HOST:PORT, or https://HOST:PORT for TLS, in --server, POLICYHUB_SERVER \
         or the context's server",
    )
}

/// The URLs of a comma-separated list (one URL is a list of one): each
/// http:// or https://, all with the same scheme, since one TLS setting
/// serves them all.
fn servers_of(list: &str) -> anyhow::Result<Vec<String>> {
    let servers: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|server| !server.is_empty())
        .map(str::to_owned)
        .collect();
    let Some(first) = servers.first() else {
        return Err(not_a_server_url(list).into());
    };
    if let Some(bad) = servers
        .iter()
        .find(|server| !(server.starts_with("http://") || server.starts_with("https://")))
    {
        return Err(not_a_server_url(bad).into());
    }
    let tls = first.starts_with("https://");
    if servers
        .iter()
        .any(|server| server.starts_with("https://") != tls)
    {
        return Err(Usage::new(
            format!("{list:?} mixes http:// and https:// servers"),
            "give replicas of one deployment, all https:// (or all http://)",
        )
        .into());
    }
    Ok(servers)
}

/// A `POLICYHUB_*` variable; empty counts as unset.
pub(super) fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

fn env_duration(name: &str) -> anyhow::Result<Option<Duration>> {
    env(name)
        .map(|text| {
            humantime::parse_duration(&text).map_err(|error| {
                Usage::new(
                    format!("{name}={text:?} is not a duration: {error}"),
                    "write a duration such as 5s or 1m30s (0s: no limit on requests)",
                )
            })
        })
        .transpose()
        .map_err(Into::into)
}

/// The settings of one connection, resolved.
pub(super) struct Resolved {
    /// The server's URLs: one, or for a runtime (`agent`, `watch-active`)
    /// several replicas of one deployment, given comma-separated.
    servers: Vec<String>,
    token: Option<String>,
    /// The context whose sign-in gives the token, when nothing else does.
    session: Option<(String, Context)>,
    /// Where the token was read from, to read it again (a rotated token).
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    /// The client certificate and key (PEM files), for mTLS.
    pub(super) identity: Option<(PathBuf, PathBuf)>,
    pub(super) connect_timeout: Duration,
    pub(super) request_timeout: Duration,
}

/// What a runtime subscription needs to reach the server.
pub struct RuntimeTarget {
    /// The server's URLs, replicas of one deployment.
    pub servers: Vec<String>,
    /// TLS, for an https:// URL.
    pub tls: Option<policyhub_runtime::Tls>,
    /// The bearer token of each call: a token file is read again each time
    /// (a rotated token), the last good one kept if it cannot be.
    pub token: Option<policyhub_runtime::TokenSource>,
}

impl Resolved {
    /// The one server a command other than a runtime talks to.
    pub(super) fn server(&self) -> anyhow::Result<&str> {
        match &self.servers[..] {
            [server] => Ok(server),
            servers => Err(Usage::new(
                format!(
                    "{} servers are given, and this command talks to one",
                    servers.len()
                ),
                "give one URL in --server, POLICYHUB_SERVER or the context's server; \
                 several, comma-separated, are for `policyhub agent` and `watch-active`",
            )
            .into()),
        }
    }

    /// Whether the servers speak TLS (they all do or none does).
    fn speaks_tls(&self) -> bool {
        self.servers[0].starts_with("https://")
    }

    /// The channel to the resolved server: TLS for https:// URLs, within
    /// the connect timeout, every call bounded by the request timeout.
    async fn channel(&self) -> anyhow::Result<Channel> {
        let server = self.server()?;
        let mut endpoint = Channel::from_shared(server.to_owned())
            .map_err(|_| not_a_server_url(server))?
            .connect_timeout(self.connect_timeout);
        if !self.request_timeout.is_zero() {
            endpoint = endpoint.timeout(self.request_timeout);
        }
        if self.speaks_tls() {
            endpoint = endpoint
                .tls_config(self.tls()?)
                .context(Unusable::new(What::Connection, "configuring tls"))?;
        }
        // The TCP connect has its own timeout; this one also bounds a server
        // that accepts the connection and never speaks HTTP/2.
        connected_within(server, self.connect_timeout, endpoint.connect()).await
    }

    /// The bearer token: the one named, else the sign-in's ID token,
    /// renewed when it expires within a minute.
    async fn token(&self) -> anyhow::Result<Option<String>> {
        match &self.session {
            Some((name, context)) => Ok(Some(
                session::fresh_id_token(name, context)
                    .await?
                    .expose_secret()
                    .to_owned(),
            )),
            None => Ok(self.token.clone()),
        }
    }

    fn tls(&self) -> anyhow::Result<ClientTlsConfig> {
        let mut tls = ClientTlsConfig::new().with_webpki_roots();
        if let Some(ca) = &self.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(tls)
    }

    /// The same TLS settings, as the runtime library takes them.
    fn runtime_tls(&self) -> anyhow::Result<policyhub_runtime::Tls> {
        let mut tls = policyhub_runtime::Tls::new();
        if let Some(ca) = &self.ca_file {
            tls = tls.ca_certificate(read(ca)?);
        }
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(read(cert)?, read(key)?);
        }
        Ok(tls)
    }
}

/// Where a connection's bearer token comes from.
#[derive(Default)]
struct TokenSources {
    /// The token a flag, a variable or a token file names.
    token: Option<String>,
    /// The token file, to read it again (a rotated token).
    token_file: Option<PathBuf>,
    /// The context whose sign-in gives the token, when nothing else does.
    session: Option<(String, Context)>,
}

/// The token the flags, variables and context name.
fn token_of(
    flags: TokenFlags<'_>,
    context_name: Option<String>,
    context: &Context,
) -> anyhow::Result<TokenSources> {
    let token_file = match (flags.token, flags.token_file) {
        (Some(_), _) => None,
        (None, Some(file)) => Some(file.clone()),
        (None, None) => match (env("POLICYHUB_TOKEN"), env("POLICYHUB_TOKEN_FILE")) {
            (Some(_), _) => None,
            (None, Some(file)) => Some(PathBuf::from(file)),
            (None, None) => context.token_file.clone(),
        },
    };
    let token = match (&token_file, flags.token) {
        (Some(file), _) => Some(read_token(file)?),
        (None, Some(token)) => Some(token.clone()),
        (None, None) => env("POLICYHUB_TOKEN"),
    };
    // A token named by a flag, a variable or a token file comes first
    // (automation); then the sign-in of `policyhub login`.
    let session = match (&token, context_name) {
        (None, Some(name)) if context.id_token.is_some() => Some((name, context.clone())),
        _ => None,
    };
    Ok(TokenSources {
        token,
        token_file,
        session,
    })
}

impl Connection {
    /// The flags, variables and context resolved into one connection's
    /// settings.
    pub(super) fn resolve(&self) -> anyhow::Result<Resolved> {
        self.server.resolve(Some(TokenFlags {
            token: self.token.as_ref(),
            token_file: self.token_file.as_ref(),
        }))
    }
}

impl Server {
    /// The context the flag or the variable selects, if any.
    pub(super) fn selected_context(&self) -> Option<String> {
        self.context.clone().or_else(|| env("POLICYHUB_CONTEXT"))
    }

    /// Connects without a token, for what the server answers anyone.
    pub(super) async fn connect(&self) -> anyhow::Result<Channel> {
        self.resolve(None)?.channel().await
    }

    /// The flags, variables and context resolved into one connection's
    /// settings; with `tokens`, the token too.
    fn resolve(&self, tokens: Option<TokenFlags<'_>>) -> anyhow::Result<Resolved> {
        let (context_name, context): (Option<String>, Context) = context::load(
            self.context
                .clone()
                .or_else(|| env("POLICYHUB_CONTEXT"))
                .as_deref(),
        )?;
        let path = |flag: &Option<PathBuf>, name: &str, from_context: Option<PathBuf>| {
            flag.clone()
                .or_else(|| env(name).map(PathBuf::from))
                .or(from_context)
        };
        let TokenSources {
            token,
            token_file,
            session,
        } = match tokens {
            Some(flags) => token_of(flags, context_name, &context)?,
            None => TokenSources::default(),
        };
        let cert_file = path(&self.cert_file, "POLICYHUB_CERT_FILE", context.cert_file);
        let key_file = path(&self.key_file, "POLICYHUB_KEY_FILE", context.key_file);
        let identity = match (cert_file, key_file) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(Usage::new(
                    "a client certificate needs both --cert-file and --key-file",
                    "pass both for a server that requires client certificates (mTLS), or neither",
                )
                .into());
            }
        };
        let server = self
            .server
            .clone()
            .or_else(|| env("POLICYHUB_SERVER"))
            .or(context.server)
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        let servers = servers_of(&server)?;
        Ok(Resolved {
            servers,
            token: token.map(|token| token.trim().to_owned()),
            session,
            token_file,
            ca_file: path(&self.ca_file, "POLICYHUB_CA_FILE", context.ca_file),
            identity,
            connect_timeout: match self.connect_timeout {
                Some(timeout) => timeout,
                None => env_duration("POLICYHUB_CONNECT_TIMEOUT")?
                    .or(context.connect_timeout)
                    .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            },
            request_timeout: match self.request_timeout {
                Some(timeout) => timeout,
                None => env_duration("POLICYHUB_REQUEST_TIMEOUT")?
                    .or(context.request_timeout)
                    .unwrap_or(DEFAULT_REQUEST_TIMEOUT),
            },
        })
    }
}

impl Connection {
    /// Where and how a runtime subscription connects: the server URL, its
    /// TLS settings and the token (a sign-in's as it is at the start).
    pub async fn runtime_target(&self) -> anyhow::Result<RuntimeTarget> {
        let mut resolved = self.resolve()?;
        resolved.token = resolved.token().await?;
        let tls = if resolved.speaks_tls() {
            Some(resolved.runtime_tls()?)
        } else {
            None
        };
        let token: Option<policyhub_runtime::TokenSource> = match resolved.token_file {
            Some(file) => Some(policyhub_runtime::token_file(file)),
            None => resolved
                .token
                .map(|token| -> policyhub_runtime::TokenSource {
                    std::sync::Arc::new(move || Some(token.clone()))
                }),
        };
        Ok(RuntimeTarget {
            servers: resolved.servers,
            tls,
            token,
        })
    }

    /// Connects, with TLS for https:// URLs, within the connect timeout;
    /// every call of the channel is bounded by the request timeout.
    pub async fn connect(&self) -> anyhow::Result<AuthChannel> {
        let resolved = self.resolve()?;
        let channel = resolved.channel().await?;
        let bearer = resolved
            .token()
            .await?
            .map(|token| {
                MetadataValue::try_from(format!("Bearer {token}")).context(Unusable::new(
                    What::Token,
                    "the token holds characters not allowed in metadata",
                ))
            })
            .transpose()?;
        Ok(InterceptedService::new(channel, BearerToken(bearer)))
    }
}

/// The channel `connecting` makes within `timeout`, or the server named
/// unreachable. The TCP connect has its own timeout; this one also bounds a
/// server that accepts the connection and never speaks HTTP/2.
pub(super) async fn connected_within<E>(
    server: &str,
    timeout: std::time::Duration,
    connecting: impl std::future::Future<Output = Result<Channel, E>>,
) -> anyhow::Result<Channel>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let source = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(channel)) => return Ok(channel),
        Ok(Err(source)) => source.into(),
        Err(_) => format!(
            "no answer within {} (--connect-timeout)",
            humantime::format_duration(timeout)
        )
        .into(),
    };
    Err(Unreachable {
        server: server.to_owned(),
        source,
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_list_is_split_on_commas_and_holds_urls_of_one_scheme() {
        assert_eq!(
            servers_of("http://a:50051").unwrap(),
            vec!["http://a:50051".to_owned()]
        );
        assert_eq!(
            servers_of("https://a:50051, https://b:50051,").unwrap(),
            vec!["https://a:50051".to_owned(), "https://b:50051".to_owned()]
        );
        let mixed = servers_of("https://a:50051,http://b:50051").unwrap_err();
        assert!(mixed.to_string().contains("mixes"), "{mixed}");
        let bare = servers_of("http://a:50051,b:50051").unwrap_err();
        assert!(bare.to_string().contains("\"b:50051\""), "{bare}");
        assert!(servers_of(" , ").is_err());
    }
}
