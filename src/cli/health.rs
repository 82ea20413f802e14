//! `policyhub health`: the server's gRPC health, asked as a probe asks it.
//!
//! Kubernetes' native gRPC probe speaks only plaintext, so a server that
//! serves TLS is probed by running this command in its container. Inside
//! the pod the probe asks whether the server serves, not who it is:
//! `--tls-no-verify` speaks TLS without verifying the certificate, as the
//! kubelet's own HTTPS probes do, and presents `--cert-file`/`--key-file`
//! to a server that requires client certificates.

use std::{
    path::Path,
    process::ExitCode,
    sync::{Arc, LazyLock},
};

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::{
    TlsConnector,
    rustls::{
        self, ClientConfig, DigitallySignedStruct, SignatureScheme,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::CryptoProvider,
    },
};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
    health_client::HealthClient,
};

use super::Client;
use super::failure::{Reply, Unusable, Usage, What};
use super::output::{Output, print_json};

/// Arguments of `policyhub health`.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// The health service asked: `policyhub.liveness` answers SERVING while
    /// the process serves, whatever the database does; empty asks for the
    /// whole server, which follows the database.
    #[arg(long, default_value = "")]
    service: String,
    /// Speak TLS (to an https:// server) without verifying its certificate:
    /// for a probe inside the server's pod.
    #[arg(long)]
    tls_no_verify: bool,
}

/// Asks the health service; exits 0 when it answers SERVING, 1 otherwise.
pub async fn health(client: &Client, args: HealthArgs) -> anyhow::Result<ExitCode> {
    let (connection, output) = (&client.connection, client.output);
    if !args.tls_no_verify {
        let health = HealthClient::new(connection.connect().await?);
        return check(health, args.service, output).await;
    }
    let resolved = connection.resolve()?;
    let server = resolved.server()?;
    let uri: Uri = server.parse().map_err(|_| not_https())?;
    if uri.scheme_str() != Some("https") {
        return Err(not_https().into());
    }
    let identity = match &resolved.identity {
        Some((cert, key)) => Some(identity(cert, key)?),
        None => None,
    };
    let connecting = unverified_channel(uri, identity, &resolved);
    let channel =
        super::connection::connected_within(server, resolved.connect_timeout, connecting).await?;
    check(HealthClient::new(channel), args.service, output).await
}

/// Asks `client` for the status of `service` and prints it.
async fn check<T>(
    mut client: HealthClient<T>,
    service: String,
    output: Output,
) -> anyhow::Result<ExitCode>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let answer = client
        .check(HealthCheckRequest { service })
        .await
        .reply("checking health")?;
    let status = answer.status();
    match output {
        Output::Json => print_json(&reply_json(&answer)),
        Output::Table => outln!("{}", status.as_str_name()),
    }
    Ok(match status {
        ServingStatus::Serving => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

/// The reply in the protobuf JSON mapping, as grpcurl prints it
/// (`{"status": "SERVING"}`), read with the health service's own
/// descriptors: the API's descriptor set does not hold them.
fn reply_json(answer: &HealthCheckResponse) -> serde_json::Value {
    static HEALTH: LazyLock<DescriptorPool> = LazyLock::new(|| {
        DescriptorPool::decode(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .expect("tonic-health ships valid descriptors")
    });
    let descriptor = HEALTH
        .get_message_by_name("grpc.health.v1.HealthCheckResponse")
        .expect("the health descriptors hold the reply");
    let dynamic = DynamicMessage::decode(descriptor, answer.encode_to_vec().as_slice())
        .expect("a message decodes with its own descriptor");
    serde_json::to_value(&dynamic).expect("a message always serializes")
}

fn not_https() -> Usage {
    Usage::new(
        "--tls-no-verify needs an https:// server",
        "point --server at https://HOST:PORT, or leave --tls-no-verify out for http://",
    )
}

/// The client certificate chain and key, for a server that requires them.
fn identity(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let read = |path: &Path| {
        std::fs::read(path)
            .with_context(|| Unusable::new(What::Connection, format!("reading {}", path.display())))
    };
    let chain = pem::parse_many(read(cert)?)
        .with_context(|| format!("{} is not PEM", cert.display()))?
        .into_iter()
        .map(|block| CertificateDer::from(block.into_contents()))
        .collect();
    let block = pem::parse(read(key)?).with_context(|| format!("{} is not PEM", key.display()))?;
    let key = PrivateKeyDer::try_from(block.into_contents())
        .map_err(|error| anyhow::anyhow!("{}: {error}", key.display()))?;
    Ok((chain, key))
}

/// A channel over TLS to `uri` that accepts any server certificate.
async fn unverified_channel(
    uri: Uri,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    resolved: &super::connection::Resolved,
) -> anyhow::Result<Channel> {
    let host = uri.host().unwrap_or_default().to_string();
    let port = uri.port_u16().unwrap_or(443);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)));
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .context("the client certificate and key")?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(host.clone())?;
    let mut endpoint = Endpoint::from_shared(format!("http://{host}:{port}"))?
        .connect_timeout(resolved.connect_timeout);
    if !resolved.request_timeout.is_zero() {
        endpoint = endpoint.timeout(resolved.request_timeout);
    }
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let (connector, name, host) = (connector.clone(), name.clone(), host.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await?;
    Ok(channel)
}

/// Accepts any certificate, checking only that the server holds its key
/// (the handshake's signature).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
