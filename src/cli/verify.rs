//! `policyhub verify --jwks FILE BUNDLE`: a bundle checked offline against
//! a JWKS, as a runtime checks it.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::document;
use super::failure::{Unusable, What};
use super::output;
use crate::signing::{self, Jwks};

/// The JWS in a bundle file: the text itself, or the "jws" member of JSON.
fn bundle_jws(text: &str) -> anyhow::Result<String> {
    let text = text.trim();
    if !text.starts_with('{') {
        return Ok(text.to_owned());
    }
    let value: serde_json::Value = serde_json::from_str(text).context(Unusable::new(
        What::Bundle,
        "the bundle is neither a JWS nor JSON",
    ))?;
    value
        .get("jws")
        .and_then(|jws| jws.as_str())
        .filter(|jws| !jws.is_empty())
        .map(str::to_owned)
        .context(Unusable::new(
            What::Bundle,
            "the JSON has no \"jws\" member: an unsigned draft cannot be verified",
        ))
}

/// Verifies the bundle in `bundle` (standard input without one) against the
/// JWKS in `jwks_path`, offline.
pub fn verify(jwks_path: &Path, bundle: Option<&Path>) -> anyhow::Result<ExitCode> {
    let jwks: Jwks = serde_json::from_str(&document::read_text(jwks_path)?).with_context(|| {
        Unusable::new(What::Jwks, format!("{} is not a JWKS", jwks_path.display()))
    })?;
    let jws = bundle_jws(&document::read_text(bundle.unwrap_or(Path::new("-")))?)?;
    match signing::verify(&jws, &jwks) {
        Ok(claims) => {
            outln!(
                "verified: {} version {}{} digest {}",
                claims.sub,
                claims.ver,
                claims
                    .label
                    .map(|label| format!(" ({label})"))
                    .unwrap_or_default(),
                claims.digest
            );
            if !claims.requirements.is_empty() {
                let requirements = claims
                    .requirements
                    .iter()
                    .map(|requirement| (requirement.name.as_str(), requirement.range.as_str()));
                outln!("requires: {}", output::requirements_text(requirements));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => Err(Unusable::new(
            What::Signature,
            format!("the bundle does not verify: {error}"),
        )
        .into()),
    }
}
