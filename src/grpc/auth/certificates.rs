//! The SPIFFE ID of a client certificate: its one `spiffe://` URI SAN
//! (X.509-SVID). The certificate itself was verified by the TLS handshake
//! against `tls.client_ca_file`.

use x509_cert::der::Decode;
use x509_cert::{Certificate, ext::pkix::SubjectAltName, ext::pkix::name::GeneralName};

/// The `spiffe://` URI of a DER certificate's subject alternative names;
/// `None` unless it holds exactly one, as an X.509-SVID does.
pub fn spiffe_id(der: &[u8]) -> Option<String> {
    let certificate = Certificate::from_der(der).ok()?;
    let (_, names) = certificate
        .tbs_certificate
        .get::<SubjectAltName>()
        .ok()
        .flatten()?;
    let mut uris = names.0.iter().filter_map(|name| match name {
        GeneralName::UniformResourceIdentifier(uri) => Some(uri.as_str()),
        _ => None,
    });
    let id = uris.next()?;
    (uris.next().is_none()
        && id.starts_with("spiffe://")
        && id.len() <= crate::domain::MAX_ACTOR_BYTES)
        .then(|| id.to_owned())
}
