//! The server's log as a Merkle tree, as a runtime remembers it: the last
//! checkpoint note it verified (C2SP tlog-checkpoint in a C2SP signed note,
//! signed under the log's origin by a key of the JWKS). A newer tree is
//! accepted only with an RFC 9162 consistency proof from the remembered
//! one; a smaller tree, another tree of the same size, or a tree the proof
//! does not tie to the remembered one is a history wound back or forked:
//! refused, and the state in force stays, unless the server proves that
//! its tree records a restore an operator declared (a RESTORED event)
//! after any restore taken before: then it is taken, and said.

use base64::Engine as _;
use signed_note::{Note, StandardVerifier, Verifier, VerifierList};
use tlog_tiles::Hash;

use crate::bundle::Jwks;

/// A verified checkpoint of the server's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeHead {
    /// The origin line: which log.
    pub origin: String,
    /// How many events the tree holds.
    pub size: u64,
    /// Its RFC 9162 root hash.
    pub root: [u8; 32],
    /// The signed note itself, for the cache.
    pub note: String,
}

/// The note verifier of `key` under `origin`, when it is an Ed25519 key.
fn verifier(origin: &str, key: &crate::bundle::Jwk) -> Option<Box<dyn Verifier>> {
    let public = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&key.x)
        .ok()?;
    let public = ed25519_dalek::VerifyingKey::from_bytes(&public.try_into().ok()?).ok()?;
    let vkey = signed_note::new_ed25519_verifier_key(origin, &public);
    Some(Box::new(StandardVerifier::new(&vkey).ok()?))
}

/// Verifies a checkpoint note: signed under its origin (which must be
/// `origin` when one is pinned) by a key of `jwks`.
pub fn verify_note(note: &str, origin: Option<&str>, jwks: &Jwks) -> Result<TreeHead, String> {
    let parsed =
        Note::from_bytes(note.as_bytes()).map_err(|error| format!("not a signed note: {error}"))?;
    let body = tlog_tiles::Checkpoint::from_bytes(parsed.text())
        .map_err(|error| format!("not a checkpoint of a tree: {error}"))?;
    if let Some(origin) = origin
        && body.origin() != origin
    {
        return Err(format!(
            "the checkpoint is of the log {:?}, not of {origin:?}",
            body.origin()
        ));
    }
    let verifiers = jwks
        .keys
        .iter()
        .filter_map(|key| verifier(body.origin(), key))
        .collect();
    parsed
        .verify(&VerifierList::new(verifiers))
        .map_err(|error| format!("the checkpoint note does not verify: {error}"))?;
    Ok(TreeHead {
        origin: body.origin().to_owned(),
        size: body.size(),
        root: body.hash().0,
        note: note.to_owned(),
    })
}

/// What a runtime makes of a verified tree head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Judgement {
    /// The tree it holds.
    Same,
    /// A larger tree: accept it with a consistency proof from this size.
    ProveFrom(u64),
    /// A tree that cannot extend the one held (why): wound back, or
    /// forked at the same size; refused unless it records a restore.
    Diverges(String),
}

/// The proof that a tree records a restore: the RESTORED event's canonical
/// form, its leaf, and its inclusion proof in the tree of `tree_size`.
#[derive(Debug, Clone)]
pub(crate) struct RestoreProof {
    pub(crate) canonical: String,
    pub(crate) leaf_index: u64,
    pub(crate) tree_size: u64,
    pub(crate) hashes: Vec<[u8; 32]>,
}

/// The tree a runtime verified last.
#[derive(Debug, Default)]
pub(crate) struct Remembered {
    /// The log it follows: pinned, or the first one it verified.
    pub(crate) origin: Option<String>,
    pub(crate) head: Option<TreeHead>,
    /// The witnesses' verifier keys, and how many of them must have
    /// cosigned a checkpoint before it is taken.
    pub(crate) witnesses: Vec<String>,
    pub(crate) cosignatures: usize,
    /// The leaf of the last restore taken: an older one is not taken again.
    pub(crate) restored_through: Option<u64>,
}

impl Remembered {
    /// Whether `offered` may follow the remembered tree, and with which
    /// proof; why not, when it may not.
    pub(crate) fn judge(&self, offered: &TreeHead) -> Result<Judgement, String> {
        if self.cosignatures > 0 {
            let cosigned = crate::cosignature::cosigned_by(&offered.note, &self.witnesses)?;
            if cosigned.len() < self.cosignatures {
                return Err(format!(
                    "the server's checkpoint of {} events carries {} of the {} witnesses' \
                     cosignatures this runtime requires",
                    offered.size,
                    cosigned.len(),
                    self.cosignatures
                ));
            }
        }
        let Some(held) = &self.head else {
            return Ok(Judgement::ProveFrom(0));
        };
        if offered.origin != held.origin {
            return Err(format!(
                "the server's checkpoint is of the log {:?}, this runtime follows {:?}",
                offered.origin, held.origin
            ));
        }
        match offered.size.cmp(&held.size) {
            std::cmp::Ordering::Less => Ok(Judgement::Diverges(format!(
                "the server's log of {} events is smaller than the {} this runtime verified: \
                 its history was wound back",
                offered.size, held.size
            ))),
            std::cmp::Ordering::Equal if offered.root == held.root => Ok(Judgement::Same),
            std::cmp::Ordering::Equal => Ok(Judgement::Diverges(format!(
                "the server's log of {} events is not the one of {} events this runtime \
                 verified: a forked history",
                offered.size, held.size
            ))),
            std::cmp::Ordering::Greater => Ok(Judgement::ProveFrom(held.size)),
        }
    }

    /// Takes `offered` when `proof` shows it extends the remembered tree.
    pub(crate) fn extend(&mut self, offered: TreeHead, proof: &[[u8; 32]]) -> Result<(), String> {
        if let Some(held) = &self.head
            && !proves_consistency(proof, (held.size, held.root), (offered.size, offered.root))
        {
            return Err(format!(
                "the server's log of {} events does not extend the one of {} events this \
                 runtime verified: a forked history",
                offered.size, held.size
            ));
        }
        self.origin = Some(offered.origin.clone());
        self.head = Some(offered);
        Ok(())
    }

    /// Takes `offered`, a tree that does not extend the remembered one,
    /// when `restore` proves that it records a restore newer than any
    /// taken before; returns the operator's reason for it.
    pub(crate) fn restore(
        &mut self,
        offered: TreeHead,
        restore: &RestoreProof,
    ) -> Result<String, String> {
        if restore.tree_size != offered.size {
            return Err(format!(
                "the restore is proven in a tree of {} events, not the {} offered",
                restore.tree_size, offered.size
            ));
        }
        if self
            .restored_through
            .is_some_and(|through| restore.leaf_index <= through)
        {
            return Err(format!(
                "the restore it records (leaf {}) is not newer than the one taken before",
                restore.leaf_index
            ));
        }
        let event: serde_json::Value = serde_json::from_str(&restore.canonical)
            .map_err(|error| format!("the restore's event is not JSON: {error}"))?;
        if event["kind"] != "RESTORED" {
            return Err("the event proven is not a restore".into());
        }
        if !proves_inclusion(
            &restore.hashes,
            (offered.size, offered.root),
            restore.leaf_index,
            restore.canonical.as_bytes(),
        ) {
            return Err("the restore's inclusion proof does not verify".to_owned());
        }
        self.restored_through = Some(restore.leaf_index);
        self.origin = Some(offered.origin.clone());
        self.head = Some(offered);
        Ok(event["reason"].as_str().unwrap_or_default().to_owned())
    }
}

/// Whether `proof` shows (RFC 9162) that the tree `new` (its size and
/// root) extends the tree `old`.
fn proves_consistency(proof: &[[u8; 32]], old: (u64, [u8; 32]), new: (u64, [u8; 32])) -> bool {
    let proof: Vec<Hash> = proof.iter().map(|hash| Hash(*hash)).collect();
    tlog_tiles::check_tree(&proof, new.0, Hash(new.1), old.0, Hash(old.1)).is_ok()
}

/// Whether `proof` shows (RFC 9162) the leaf of `data` at `index` in the
/// tree `tree` (its size and root).
fn proves_inclusion(proof: &[[u8; 32]], tree: (u64, [u8; 32]), index: u64, data: &[u8]) -> bool {
    let proof: Vec<Hash> = proof.iter().map(|hash| Hash(*hash)).collect();
    let leaf = tlog_tiles::record_hash(data);
    tlog_tiles::check_record(&proof, tree.0, Hash(tree.1), index, leaf).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::tests::vectors;
    use crate::cosignature::{Cosigner, verifier_key};

    fn hash(hex: &serde_json::Value) -> [u8; 32] {
        let hex = hex.as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).unwrap())
            .collect();
        bytes.try_into().unwrap()
    }

    fn proof(case: &serde_json::Value) -> Vec<[u8; 32]> {
        case["proof"].as_array().unwrap().iter().map(hash).collect()
    }

    /// `proof` with one bit of its first hash flipped, or (an empty
    /// proof) `root` with one flipped.
    fn tampered(mut proof: Vec<[u8; 32]>, mut root: [u8; 32]) -> (Vec<[u8; 32]>, [u8; 32]) {
        match proof.first_mut() {
            Some(first) => first[0] ^= 1,
            None => root[0] ^= 1,
        }
        (proof, root)
    }

    #[test]
    fn every_note_of_the_shared_vectors_is_verified_as_they_say() {
        let vectors = vectors("notes.json");
        let jwks: Jwks = serde_json::from_value(vectors["jwks"].clone()).unwrap();
        let witnesses: Vec<String> = serde_json::from_value(vectors["witnesses"].clone()).unwrap();
        for case in vectors["cases"].as_array().unwrap() {
            let note = case["note"].as_str().unwrap();
            let head = verify_note(note, case["origin"].as_str(), &jwks);
            match &case["tree"] {
                serde_json::Value::Null => assert!(head.is_err(), "{}", case["name"]),
                tree => {
                    let head = head.unwrap_or_else(|why| panic!("{}: {why}", case["name"]));
                    assert_eq!(head.size, tree["size"], "{}", case["name"]);
                    assert_eq!(head.root, hash(&tree["root"]), "{}", case["name"]);
                }
            }
            let cosigned = crate::cosignature::cosigned_by(note, &witnesses);
            match case.get("cosigned_by") {
                None => {}
                Some(serde_json::Value::Null) => assert!(cosigned.is_err(), "{}", case["name"]),
                Some(names) => assert_eq!(
                    serde_json::json!(cosigned.unwrap()),
                    *names,
                    "{}",
                    case["name"]
                ),
            }
        }
    }

    #[test]
    fn every_proof_of_the_shared_vectors_verifies_and_none_altered() {
        let merkle = vectors("merkle.json");
        let leaves = merkle["leaves"].as_array().unwrap();
        for (leaf, expected) in leaves.iter().zip(merkle["leaf_hashes"].as_array().unwrap()) {
            let data = leaf.as_str().unwrap().as_bytes();
            assert_eq!(tlog_tiles::record_hash(data).0, hash(expected));
        }
        let root = |size: &serde_json::Value| {
            let at = merkle["roots"]
                .as_array()
                .unwrap()
                .iter()
                .find(|root| &root["tree_size"] == size)
                .unwrap();
            (size.as_u64().unwrap(), hash(&at["root"]))
        };
        for case in merkle["inclusion"].as_array().unwrap() {
            let (size, tree_root) = root(&case["tree_size"]);
            let index = case["leaf_index"].as_u64().unwrap();
            let data = leaves[index as usize].as_str().unwrap().as_bytes();
            let proof = proof(case);
            assert!(
                proves_inclusion(&proof, (size, tree_root), index, data),
                "{case}"
            );
            let (proof, tree_root) = tampered(proof, tree_root);
            assert!(
                !proves_inclusion(&proof, (size, tree_root), index, data),
                "{case}"
            );
        }
        for case in merkle["consistency"].as_array().unwrap() {
            let (old, new) = (root(&case["old_size"]), root(&case["new_size"]));
            let proof = proof(case);
            assert!(proves_consistency(&proof, old, new), "{case}");
            let (proof, new_root) = tampered(proof, new.1);
            assert!(
                !proves_consistency(&proof, old, (new.0, new_root)),
                "{case}"
            );
        }
    }

    #[test]
    fn a_checkpoint_without_the_cosignatures_required_is_refused_and_with_them_taken() {
        let witness = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let text = "log.example/a\n3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
        let mut note = Note::new(text.as_bytes(), &[]).unwrap();
        let log = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let log_signer = Cosigner {
            name: "other.example/w",
            key: &log,
            time: 1,
        };
        note.add_sigs(&[&log_signer]).unwrap();
        let offered = |note: &Note| TreeHead {
            origin: "log.example/a".into(),
            size: 3,
            root: [0; 32],
            note: String::from_utf8(note.to_bytes()).unwrap(),
        };
        let remembered = Remembered {
            witnesses: vec![verifier_key("witness.example/w1", &witness.verifying_key())],
            cosignatures: 1,
            ..Remembered::default()
        };
        let refused = remembered.judge(&offered(&note)).unwrap_err();
        assert!(refused.contains("carries 0 of the 1"), "{refused}");
        note.add_sigs(&[&Cosigner {
            name: "witness.example/w1",
            key: &witness,
            time: 1_700_000_000,
        }])
        .unwrap();
        assert_eq!(
            remembered.judge(&offered(&note)),
            Ok(Judgement::ProveFrom(0))
        );
    }

    /// A tree of two events, the second a restore: its head, and the proof
    /// of the restore (leaf 1) in it.
    fn restored_tree(kind: &str) -> (TreeHead, RestoreProof) {
        let first = tlog_tiles::record_hash(b"{\"kind\":\"ACTIVATED\"}");
        let canonical = format!(r#"{{"kind":"{kind}","reason":"disk lost"}}"#);
        let root = tlog_tiles::node_hash(first, tlog_tiles::record_hash(canonical.as_bytes()));
        let head = TreeHead {
            origin: "log.example/a".into(),
            size: 2,
            root: root.0,
            note: String::new(),
        };
        let proof = RestoreProof {
            canonical,
            leaf_index: 1,
            tree_size: 2,
            hashes: vec![first.0],
        };
        (head, proof)
    }

    #[test]
    fn a_proven_restore_is_taken_once_and_anything_else_refused() {
        let held = || Remembered {
            origin: Some("log.example/a".into()),
            head: Some(TreeHead {
                origin: "log.example/a".into(),
                size: 5,
                root: [7; 32],
                note: String::new(),
            }),
            ..Remembered::default()
        };
        let (offered, restore) = restored_tree("RESTORED");
        assert!(matches!(
            held().judge(&offered),
            Ok(Judgement::Diverges(reason)) if reason.contains("wound back")
        ));

        let (other, not_a_restore) = restored_tree("ACTIVATED");
        let refused = held().restore(other, &not_a_restore).unwrap_err();
        assert!(refused.contains("not a restore"), "{refused}");
        let mut tampered = restore.clone();
        tampered.hashes[0][0] ^= 1;
        let refused = held().restore(offered.clone(), &tampered).unwrap_err();
        assert!(refused.contains("does not verify"), "{refused}");

        let mut remembered = held();
        assert_eq!(
            remembered.restore(offered.clone(), &restore),
            Ok("disk lost".to_owned())
        );
        assert_eq!(remembered.head.as_ref().map(|head| head.size), Some(2));
        assert_eq!(remembered.restored_through, Some(1));
        let refused = remembered.restore(offered, &restore).unwrap_err();
        assert!(refused.contains("not newer"), "{refused}");
    }
}
