//! Witness cosignatures of a checkpoint: C2SP `tlog-cosignature`, the
//! timestamped Ed25519 `cosignature/v1` (signature type 0x04). A witness
//! signs `cosignature/v1\ntime <t>\n` followed by the checkpoint's text;
//! its note signature is the 8-byte big-endian `t` (seconds since the
//! epoch) then the 64-byte Ed25519 signature. Its verifier key is
//! `<name>+<key id>+base64(0x04 ‖ public key)`, the key id the first four
//! bytes of SHA-256(`<name>\n` ‖ 0x04 ‖ public key), per C2SP signed-note.

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use signed_note::{Note, Signer, Verifier, VerifierList};

/// The signature type of a timestamped Ed25519 cosignature.
const COSIGNATURE_V1: u8 = 0x04;

fn message(time: u64, text: &[u8]) -> Vec<u8> {
    let mut message = format!("cosignature/v1\ntime {time}\n").into_bytes();
    message.extend_from_slice(text);
    message
}

fn key_id(name: &str, public: &VerifyingKey) -> u32 {
    signed_note::key_id(
        name,
        &[&[COSIGNATURE_V1], public.as_bytes().as_slice()].concat(),
    )
}

/// The verifier key of a witness's Ed25519 key under `name`.
pub fn verifier_key(name: &str, public: &VerifyingKey) -> String {
    let key = [&[COSIGNATURE_V1], public.as_bytes().as_slice()].concat();
    format!(
        "{name}+{:08x}+{}",
        key_id(name, public),
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// A witness's key signing cosignatures at `time` (seconds).
pub struct Cosigner<'a> {
    pub name: &'a str,
    pub key: &'a SigningKey,
    pub time: u64,
}

impl Signer for Cosigner<'_> {
    fn name(&self) -> &str {
        self.name
    }

    fn key_id(&self) -> u32 {
        key_id(self.name, &self.key.verifying_key())
    }

    fn sign(&self, text: &[u8]) -> Result<Vec<u8>, ed25519_dalek::SignatureError> {
        let signature = self.key.try_sign(&message(self.time, text))?;
        Ok([
            self.time.to_be_bytes().as_slice(),
            signature.to_bytes().as_slice(),
        ]
        .concat())
    }
}

/// A witness's cosignatures, verified with its verifier key.
pub struct CosignatureVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl CosignatureVerifier {
    /// Parses a witness's verifier key, `<name>+<key id>+base64(0x04 ‖ key)`.
    pub fn new(vkey: &str) -> Result<Self, String> {
        let malformed = || format!("{vkey:?} is not a cosignature/v1 verifier key");
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed());
        };
        let key = base64::engine::general_purpose::STANDARD
            .decode(key)
            .map_err(|_| malformed())?;
        let Some((&COSIGNATURE_V1, public)) = key.split_first() else {
            return Err(malformed());
        };
        let key = VerifyingKey::from_bytes(&public.try_into().map_err(|_| malformed())?)
            .map_err(|_| malformed())?;
        let id = u32::from_str_radix(id, 16).map_err(|_| malformed())?;
        if name.is_empty() || id != key_id(name, &key) {
            return Err(malformed());
        }
        Ok(CosignatureVerifier {
            name: name.to_owned(),
            id,
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Verifier for CosignatureVerifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        self.id
    }

    fn verify(&self, text: &[u8], signature: &[u8]) -> bool {
        let Some((time, signature)) = signature.split_first_chunk::<8>() else {
            return false;
        };
        let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        let time = u64::from_be_bytes(*time);
        time != 0 && self.key.verify(&message(time, text), &signature).is_ok()
    }
}

/// The names of the witnesses among `witnesses` (verifier keys) whose
/// cosignature on `note` verifies. A cosignature that names a witness's
/// key but does not verify is an error.
pub fn cosigned_by(note: &str, witnesses: &[String]) -> Result<Vec<String>, String> {
    let parsed =
        Note::from_bytes(note.as_bytes()).map_err(|error| format!("not a signed note: {error}"))?;
    let verifiers = witnesses
        .iter()
        .map(|vkey| CosignatureVerifier::new(vkey).map(|v| Box::new(v) as Box<dyn Verifier>))
        .collect::<Result<Vec<_>, _>>()?;
    match parsed.verify(&VerifierList::new(verifiers)) {
        Ok((verified, _)) => Ok(verified
            .iter()
            .map(|signature| signature.name().to_owned())
            .collect()),
        Err(signed_note::NoteError::UnverifiedNote) => Ok(Vec::new()),
        Err(error) => Err(format!("a witness's cosignature does not verify: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cosignature_verifies_under_its_key_and_not_over_another_text() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let vkey = verifier_key("witness.example/w1", &key.verifying_key());
        let cosigner = Cosigner {
            name: "witness.example/w1",
            key: &key,
            time: 1_700_000_000,
        };
        let mut note = Note::new(
            b"log.example/a\n3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
            &[],
        )
        .unwrap();
        note.add_sigs(&[&cosigner]).unwrap();
        let text = String::from_utf8(note.to_bytes()).unwrap();
        assert_eq!(
            cosigned_by(&text, std::slice::from_ref(&vkey)).unwrap(),
            ["witness.example/w1"]
        );
        let other = text.replacen("\n3\n", "\n4\n", 1);
        assert!(cosigned_by(&other, &[vkey]).is_err());
    }
}
