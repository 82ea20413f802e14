//! The TLS a subscription speaks to an `https://` server: whom it trusts
//! and, for mTLS, who it is. PEM in, so no transport type reaches the
//! application.

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// TLS settings of a [`Subscription`](crate::Subscription): the web PKI's
/// roots are trusted, and so is each certificate authority added; a client
/// certificate makes it mTLS.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    authorities: Vec<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain_name: Option<String>,
}

impl Tls {
    /// Trusts the web PKI's roots.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also trusts the certificate authority `pem` (a private CA's
    /// certificate, PEM).
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.authorities.push(pem.into());
        self
    }

    /// Presents this client certificate chain and its private key (both
    /// PEM): mTLS.
    pub fn identity(mut self, certificate: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((certificate.into(), key.into()));
        self
    }

    /// Expects the server's certificate to name `name` rather than the
    /// host of the address.
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain_name = Some(name.into());
        self
    }

    pub(crate) fn client_config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().with_webpki_roots();
        for pem in &self.authorities {
            config = config.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some((certificate, key)) = &self.identity {
            config = config.identity(Identity::from_pem(certificate, key));
        }
        if let Some(name) = &self.domain_name {
            config = config.domain_name(name);
        }
        config
    }
}
