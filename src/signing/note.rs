//! Checkpoints of the log's Merkle tree as C2SP signed notes, signed with
//! the signing key of the moment under the log's origin as key name (as
//! C2SP tlog-checkpoint recommends): a verifier pins the origin and takes
//! the public keys from the JWKS, the same keys that sign bundles and the
//! JWS checkpoints, so no second key is kept beside the database.

use ring::signature::{Ed25519KeyPair, KeyPair};
use signed_note::{Note, Signer};

/// The algorithm byte of an Ed25519 key in a note's key id and vkey.
const ALG_ED25519: u8 = 1;

/// A signing key as a note signer under the log's origin.
pub(super) struct NoteSigner<'a> {
    pub(super) name: &'a str,
    pub(super) pair: &'a Ed25519KeyPair,
}

impl Signer for NoteSigner<'_> {
    fn name(&self) -> &str {
        self.name
    }

    fn key_id(&self) -> u32 {
        let key = [&[ALG_ED25519], self.pair.public_key().as_ref()].concat();
        signed_note::key_id(self.name, &key)
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, ed25519_dalek::SignatureError> {
        Ok(self.pair.sign(msg).as_ref().to_vec())
    }
}

/// `body` signed by `signer` as a note.
pub(super) fn sign(body: &str, signer: &NoteSigner<'_>) -> crate::domain::Result<String> {
    let failed = |error: signed_note::NoteError| {
        crate::domain::Error::Internal(format!("signing a note failed: {error}"))
    };
    let mut note = Note::new(body.as_bytes(), &[]).map_err(failed)?;
    note.add_sigs(&[signer]).map_err(failed)?;
    String::from_utf8(note.to_bytes())
        .map_err(|error| crate::domain::Error::Internal(format!("a note is not text: {error}")))
}

/// The C2SP verifier key (`name+id+base64(0x01 ‖ key)`) of an Ed25519
/// public key under `name`.
pub fn verifier_key(name: &str, public_key: &[u8; 32]) -> anyhow::Result<String> {
    let key = ed25519_dalek::VerifyingKey::from_bytes(public_key)?;
    Ok(signed_note::new_ed25519_verifier_key(name, &key))
}
