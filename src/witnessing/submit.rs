//! One submission of a checkpoint to one witness, per C2SP tlog-witness:
//! `POST <url>/add-checkpoint` with `old <size>`, the consistency proof
//! from that size, an empty line and the checkpoint note. A 409 answers
//! the size the witness holds (`text/x.tlog.size`): the checkpoint is
//! submitted once more with a proof from it. A 200 answers cosignature
//! lines, of which the one that verifies with the witness's configured key
//! is kept.

use base64::Engine as _;
use policyhub_runtime::cosignature::cosigned_by;
use reqwest::StatusCode;

use crate::config::WitnessSettings;
use crate::domain::log::TreeSize;
use crate::hub::PolicyHub;
use crate::storage::{Cosignature, ToWitness};

/// Why a submission gave no cosignature.
#[derive(Debug)]
pub enum Failure {
    /// No answer in time, or a transport error.
    Unreachable(String),
    /// An answer other than a cosignature, or a tree no proof reaches.
    Refused(String),
    /// A cosignature that does not verify with the witness's key.
    Invalid(String),
}

impl Failure {
    /// Its `outcome` label.
    pub fn outcome(&self) -> &'static str {
        match self {
            Failure::Unreachable(_) => "unreachable",
            Failure::Refused(_) => "refused",
            Failure::Invalid(_) => "invalid",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable(why) | Failure::Refused(why) | Failure::Invalid(why) => {
                f.write_str(why)
            }
        }
    }
}

/// A witness and the tree size it holds for this log, as far as known.
pub struct Witness {
    pub settings: WitnessSettings,
    /// The size it cosigned last or said it holds; 0 until it answers.
    pub size: u64,
}

/// The body of a submission: the old size, the proof, the note.
fn body(old: u64, proof: &[crate::domain::log::Hash], note: &str) -> String {
    let mut body = format!("old {old}\n");
    for hash in proof {
        body.push_str(&base64::engine::general_purpose::STANDARD.encode(hash.0));
        body.push('\n');
    }
    body.push('\n');
    body.push_str(note);
    body
}

/// The cosignature line among `lines` that verifies over `note` with
/// `key` (lines of other keys' names are passed over).
fn verified_line(note: &str, lines: &str, key: &str) -> Result<String, Failure> {
    let keys = [key.to_owned()];
    let ours = format!("— {} ", key.split('+').next().unwrap_or_default());
    for line in lines.split_inclusive('\n') {
        if !line.starts_with(&ours) || !line.ends_with('\n') {
            continue;
        }
        match cosigned_by(&format!("{note}{line}"), &keys) {
            Ok(names) if !names.is_empty() => return Ok(line.to_owned()),
            Ok(_) => {}
            Err(why) => return Err(Failure::Invalid(why)),
        }
    }
    Err(Failure::Invalid(
        "no cosignature line verifies with its key".into(),
    ))
}

impl Witness {
    /// Submits `checkpoint` (with a proof from the size it holds, fetched
    /// from `hub`); its cosignature when it verifies.
    pub async fn submit(
        &mut self,
        client: &reqwest::Client,
        hub: &PolicyHub,
        checkpoint: &ToWitness,
    ) -> Result<Cosignature, Failure> {
        // Once with the size known, once more with the one a 409 answers.
        for _ in 0..2 {
            let old = self.size;
            if old > checkpoint.size {
                return Err(Failure::Refused(format!(
                    "it holds a tree of {old} events, larger than the checkpoint's {}",
                    checkpoint.size
                )));
            }
            // From no tree, or to the same one, there is nothing to prove.
            let proof = match (TreeSize::new(old), TreeSize::new(checkpoint.size)) {
                (Some(older), Some(newer)) if older < newer => {
                    hub.consistency_proof(older, Some(newer))
                        .await
                        .map_err(|error| Failure::Refused(format!("no proof from {old}: {error}")))?
                        .hashes
                }
                _ => Vec::new(),
            };
            let reply = client
                .post(self.settings.add_checkpoint_url())
                .body(body(old, &proof, &checkpoint.note))
                .send()
                .await
                .map_err(|error| Failure::Unreachable(error.to_string()))?;
            let status = reply.status();
            let text = reply
                .text()
                .await
                .map_err(|error| Failure::Unreachable(error.to_string()))?;
            match status {
                StatusCode::OK => {
                    let line = verified_line(&checkpoint.note, &text, &self.settings.key)?;
                    self.size = checkpoint.size;
                    return Ok(Cosignature {
                        witness: self.settings.key_name().to_owned(),
                        line,
                    });
                }
                StatusCode::CONFLICT => {
                    self.size = text.trim().parse().map_err(|_| {
                        Failure::Refused(format!("a 409 without a tree size: {:?}", text.trim()))
                    })?;
                }
                status => {
                    return Err(Failure::Refused(format!("{status}: {}", text.trim())));
                }
            }
        }
        Err(Failure::Refused(format!(
            "it answered 409 twice, now holding {} events",
            self.size
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policyhub_runtime::cosignature::{Cosigner, verifier_key};
    use signed_note::{Note, Signature, Signer as _};

    #[test]
    fn only_the_line_that_verifies_with_the_key_is_kept() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[4; 32]);
        let vkey = verifier_key("w.example/a", &key.verifying_key());
        let text = b"log.example/x\n2\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
        let log = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let mut signed = Note::new(text, &[]).unwrap();
        signed
            .add_sigs(&[&Cosigner {
                name: "log.example/x",
                key: &log,
                time: 1,
            }])
            .unwrap();
        let note = String::from_utf8(signed.to_bytes()).unwrap();
        let note = note.as_str();
        let cosigner = Cosigner {
            name: "w.example/a",
            key: &key,
            time: 1_700_000_000,
        };
        let line = Signature::new(
            "w.example/a".into(),
            cosigner.key_id(),
            cosigner.sign(text).unwrap(),
        )
        .unwrap()
        .to_bytes();
        let line = String::from_utf8(line).unwrap();
        let answer = format!("— other.example/b AAAAAQ==\n{line}");
        assert_eq!(verified_line(note, &answer, &vkey).unwrap(), line);
        let forged = line.replacen("— w.example/a ", "— w.example/a AAAA", 1);
        assert!(matches!(
            verified_line(note, &forged, &vkey),
            Err(Failure::Invalid(_))
        ));
        assert!(matches!(
            verified_line(note, "", &vkey),
            Err(Failure::Invalid(_))
        ));
    }
}
