//! How the client subcommands reach the server: URL, TLS and bearer token.

use std::path::PathBuf;

use anyhow::Context;
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

use super::failure::Unreachable;

/// Where the server is and how to authenticate to it.
#[derive(Debug, clap::Args)]
pub struct Connection {
    /// The server's URL; https:// speaks TLS.
    #[arg(
        long,
        env = "POLICYHUB_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// Bearer token (prefer --token-file or POLICYHUB_TOKEN: a flag shows in `ps`).
    #[arg(long, env = "POLICYHUB_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, env = "POLICYHUB_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the server's certificate; default:
    /// the public web roots.
    #[arg(long, env = "POLICYHUB_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for servers that require mTLS.
    #[arg(long, env = "POLICYHUB_CERT_FILE", requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, env = "POLICYHUB_KEY_FILE", requires = "cert_file")]
    key_file: Option<PathBuf>,
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

impl Connection {
    /// Connects, with TLS for https:// URLs.
    pub async fn connect(&self) -> anyhow::Result<AuthChannel> {
        let mut endpoint = Channel::from_shared(self.server.clone())
            .with_context(|| format!("{:?} is not a server URL", self.server))?;
        if self.server.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_webpki_roots();
            if let Some(ca) = &self.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            endpoint = endpoint.tls_config(tls).context("configuring tls")?;
        }
        let channel = endpoint.connect().await.map_err(|source| Unreachable {
            server: self.server.clone(),
            source,
        })?;
        Ok(InterceptedService::new(channel, self.bearer()?))
    }

    fn bearer(&self) -> anyhow::Result<BearerToken> {
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => Some(token.trim().to_owned()),
            (None, Some(path)) => Some(String::from_utf8(read(path)?)?.trim().to_owned()),
            (None, None) => None,
        };
        let value = token
            .map(|token| {
                MetadataValue::try_from(format!("Bearer {token}"))
                    .context("the token holds characters not allowed in metadata")
            })
            .transpose()?;
        Ok(BearerToken(value))
    }
}
