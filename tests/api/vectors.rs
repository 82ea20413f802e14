//! The conformance vectors (`conformance/vectors/`): what the server's own
//! code makes of fixed inputs, which every runtime library's unit tests
//! read and must reproduce byte for byte: canonical JSON (RFC 8785) with
//! its edge cases and the digests over it, the log's Merkle tree (RFC 9162)
//! of 1 to 17 leaves with an inclusion proof of every leaf and a
//! consistency proof between every two sizes, signed bundles, with the
//! envelope each arrives in, that a runtime must take or refuse, the order
//! in which runtimes rank the replicas they are given, and checkpoints as
//! signed notes with witnesses' cosignatures; and a state every library
//! writes into its cache and reads back from every library's. Ed25519
//! signatures are deterministic, so a fixed key makes fixed bundles. A
//! stale file fails here;
//! `UPDATE_VECTORS=1 cargo test --test api vectors::` writes them anew.

use std::path::{Path, PathBuf};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use policyhub::domain::log::{
    LeafIndex, MemoryTree, TreeSize, checkpoint_body, leaf_hash, leaf_position, prove_consistency,
    prove_inclusion,
};
use policyhub::domain::{Digest, PolicyBody, canonical_json};
use policyhub::signing::{
    BUNDLE_TYPE, BundleClaims, CHECKPOINT_TYPE, Jwks, SigningKey, claims_for,
};
use policyhub_runtime::cosignature::{Cosigner, verifier_key};
use serde_json::{Value, json};
use signed_note::Signature;

/// The largest tree the Merkle vectors hold.
const LEAVES: u64 = 17;

/// Canonical JSON's cases: a name and the JSON text each library parses.
const CANONICAL: [(&str, &str); 16] = [
    (
        "members sorted by UTF-16 code units",
        r#"{"b":1,"a":2,"aa":3,"A":4,"":5}"#,
    ),
    (
        "a key outside the BMP sorts by its surrogates, before U+FB01",
        r#"{"\ufb01":1,"\ud83d\ude00":2,"\u00e9":3}"#,
    ),
    ("1e21 in exponent form", r#"{"n":1e21}"#),
    ("the largest number written whole", r#"{"n":1e20}"#),
    ("the smallest subnormal", r#"{"n":5e-324}"#),
    ("minus zero", r#"{"n":-0.0}"#),
    ("2^53 - 1", r#"{"n":9007199254740991}"#),
    ("-(2^53 - 1)", r#"{"n":-9007199254740991}"#),
    (
        "fractions in shortest form",
        r#"{"a":0.1,"b":1.5e-7,"c":0.000001,"d":123.456e2}"#,
    ),
    (
        "integral floats written whole",
        r#"{"a":1.0,"b":-25e0,"c":4.50}"#,
    ),
    (
        "escapes only where RFC 8785 asks",
        r#"{"s":"\u0000\u001f\"\\/\b\f\n\r\t\u007f\u2028<&>"}"#,
    ),
    (
        "text outside ASCII written as is",
        r#"{"s":"caf\u00e9 \ud83d\ude00 \u4e2d"}"#,
    ),
    ("literals", r#"{"t":true,"f":false,"z":null}"#),
    (
        "nesting and whitespace",
        " { \"o\" : { \"b\" : [ 3 , { \"y\":1,\"x\":2 } ] , \"a\" : [ ] } , \"e\" : { } } ",
    ),
    ("an empty object", "{}"),
    ("an array at the top", r#"[1,"two",{"b":3,"a":4}]"#),
];

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/vectors")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn canonical_vectors() -> Value {
    let cases: Vec<Value> = CANONICAL
        .iter()
        .map(|(name, input)| {
            let value: Value = serde_json::from_str(input).unwrap();
            let canonical = canonical_json(&value);
            json!({
                "name": name,
                "input": input,
                "canonical": canonical,
                "digest": Digest::of_canonical(canonical.as_bytes()).as_str(),
            })
        })
        .collect();
    json!({
        "description": "RFC 8785 canonical JSON as the server writes it, and the digest over it \
            (sha256: and the lowercase hex SHA-256 of the canonical bytes, as a bundle's digest): \
            parse each input with the language's own JSON parser, canonicalize, and compare.",
        "cases": cases,
    })
}

fn merkle_vectors() -> Value {
    let leaves: Vec<String> = (0..LEAVES).map(|index| format!("leaf {index}")).collect();
    let mut tree = MemoryTree::default();
    for leaf in &leaves {
        tree.push(leaf.as_bytes()).unwrap();
    }
    let size = |leaves: u64| TreeSize::new(leaves).unwrap();
    let hashes = |proof: Vec<policyhub::domain::log::Hash>| -> Vec<String> {
        proof.iter().map(|hash| hex(&hash.0)).collect()
    };
    let roots: Vec<Value> = (1..=LEAVES)
        .map(|leaves| json!({"tree_size": leaves, "root": hex(&tree.root(leaves).unwrap().0)}))
        .collect();
    let mut inclusion = Vec::new();
    let mut consistency = Vec::new();
    for new in 1..=LEAVES {
        for index in 0..new {
            let leaf = LeafIndex::at_position(leaf_position(index));
            let proof = prove_inclusion(size(new), leaf, &tree).unwrap();
            inclusion.push(json!({"tree_size": new, "leaf_index": index, "proof": hashes(proof)}));
        }
        for old in 1..=new {
            let proof = prove_consistency(size(old), size(new), &tree).unwrap();
            consistency.push(json!({"old_size": old, "new_size": new, "proof": hashes(proof)}));
        }
    }
    json!({
        "description": "The log's Merkle tree as the server builds it (RFC 9162: a leaf hash is \
            SHA-256(0x00 || data), a node's SHA-256(0x01 || left || right)), over leaves whose \
            data is the UTF-8 of each string of `leaves`; hashes in lowercase hex. Every proof \
            verifies against the roots; each with one hash changed, or taken for another size or \
            leaf, must not.",
        "leaves": leaves,
        "leaf_hashes": leaves.iter().map(|leaf| hex(&leaf_hash(leaf.as_bytes()).0)).collect::<Vec<_>>(),
        "roots": roots,
        "inclusion": inclusion,
        "consistency": consistency,
    })
}

/// RFC 8410's PKCS#8 of the Ed25519 key of `seed`.
fn pkcs8(seed: u8) -> Vec<u8> {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend([seed; 32]);
    der
}

/// The Ed25519 key of `seed`, as the server reads a key file.
fn key(seed: u8) -> SigningKey {
    SigningKey::from_pem(&pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8(seed)))).unwrap()
}

/// A compact JWS of `header` and `claims` with `key`'s signature, for the
/// bundles the server would never sign.
fn signed_as(key: u8, header: &Value, claims: &BundleClaims) -> String {
    let encode = |value: &[u8]| URL_SAFE_NO_PAD.encode(value);
    let message = format!(
        "{}.{}",
        encode(header.to_string().as_bytes()),
        encode(&serde_json::to_vec(claims).unwrap())
    );
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8(key)).unwrap();
    format!(
        "{message}.{}",
        encode(pair.sign(message.as_bytes()).as_ref())
    )
}

/// The body of the bundle vectors' policies, with a limit of `limit`.
fn body(limit: u64) -> PolicyBody {
    let value = json!({"limits": {"max": limit}, "note": "caf\u{e9}"});
    PolicyBody::parse("body", value, 1 << 20).unwrap()
}

/// The claims of version 3 of `subject`, of `body`, published at a fixed
/// time.
fn claims(subject: &str, body: &PolicyBody) -> BundleClaims {
    let published = chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap();
    let label = Some("1.2.0".into());
    claims_for("policyhub", subject, 3, label, body, &[], published)
}

fn bundle_vectors() -> Value {
    let signer = key(7);
    let authz = claims("payments/authz", &body(500));
    let valid = signer.sign(&authz).unwrap();
    let digest = authz.digest.clone();
    let header = |alg: &str, typ: &str| json!({"alg": alg, "kid": signer.key_id(), "typ": typ});
    let tampered_signature = {
        let (message, signature) = valid.rsplit_once('.').unwrap();
        let mut signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        signature[0] ^= 1;
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
    };
    let digest_mismatch = BundleClaims {
        digest: body(501).digest().to_string(),
        ..authz.clone()
    };
    let alg_none = {
        let encode = |value: &[u8]| URL_SAFE_NO_PAD.encode(value);
        let header = header("none", BUNDLE_TYPE).to_string();
        format!(
            "{}.{}.",
            encode(header.as_bytes()),
            encode(&serde_json::to_vec(&authz).unwrap())
        )
    };
    let envelope = |name: &str, version: u32, digest: &str| json!({"namespace": "payments", "name": name, "version": version, "digest": digest});
    let cases = [
        (
            "a bundle as the server signs it",
            &valid,
            envelope("authz", 3, &digest),
            true,
        ),
        (
            "signed by a key the JWKS does not hold",
            &key(8).sign(&authz).unwrap(),
            envelope("authz", 3, &digest),
            false,
        ),
        (
            "a signature altered",
            &tampered_signature,
            envelope("authz", 3, &digest),
            false,
        ),
        (
            "alg none, no signature",
            &alg_none,
            envelope("authz", 3, &digest),
            false,
        ),
        (
            "a digest claim its body does not make",
            &signer.sign(&digest_mismatch).unwrap(),
            envelope("authz", 3, &digest_mismatch.digest),
            false,
        ),
        (
            "typ of a checkpoint",
            &signed_as(7, &header("EdDSA", CHECKPOINT_TYPE), &authz),
            envelope("authz", 3, &digest),
            false,
        ),
        (
            "another policy's valid bundle in its place",
            &signer.sign(&claims("payments/limits", &body(500))).unwrap(),
            envelope("authz", 3, &digest),
            false,
        ),
        (
            "an older version under a newer envelope",
            &valid,
            envelope("authz", 4, &digest),
            false,
        ),
        (
            "an envelope naming another digest",
            &valid,
            envelope("authz", 3, body(501).digest().as_str()),
            false,
        ),
    ];
    let jwks = Jwks {
        keys: vec![signer.jwk().clone()],
    };
    json!({
        "description": "Signed bundles as the server signs them (EdDSA over Ed25519, typ \
            policyhub-bundle+jwt), each with the envelope a watch message carries it in, and \
            whether a runtime holding `jwks` must take it (`valid`) or refuse it: verify each \
            with the library's own check of a bundle in its envelope.",
        "jwks": jwks,
        "cases": cases.map(|(name, jws, envelope, valid)| json!({
            "name": name,
            "jws": jws,
            "envelope": envelope,
            "valid": valid,
        })),
    })
}

fn cache_vectors() -> Value {
    let signer = key(7);
    let authz = signer.sign(&claims("payments/authz", &body(500))).unwrap();
    let limits = signer.sign(&claims("payments/limits", &body(500))).unwrap();
    json!({
        "description": "A state every runtime library writes into its cache and reads back from \
            every library's cache file (cache/<library>.state.json, which each library's own \
            tests write): namespace `namespace`, every policy (names none), at `revision`, each \
            bundle at its revision, verified at `verified_at_unix_ms` with `jwks`, no key known \
            revoked.",
        "namespace": "payments",
        "revision": 12,
        "verified_at_unix_ms": 1_790_000_000_000_u64,
        "jwks": Jwks { keys: vec![signer.jwk().clone()] },
        "bundles": [
            {"jws": authz, "revision": 12},
            {"jws": limits, "revision": 9},
        ],
    })
}

/// The log's origin line in the note vectors.
const ORIGIN: &str = "policyhub.example/log";

/// A witness of seed `seed` under `name`: its cosignature line on `text`
/// at a fixed time, and its verifier key.
fn witness(seed: u8, name: &str, text: &[u8]) -> (String, String) {
    use signed_note::Signer as _;
    let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    let cosigner = Cosigner {
        name,
        key: &key,
        time: 1_790_000_000,
    };
    let line =
        Signature::new(name.into(), cosigner.key_id(), cosigner.sign(text).unwrap()).unwrap();
    (
        String::from_utf8(line.to_bytes()).unwrap(),
        verifier_key(name, &key.verifying_key()),
    )
}

fn note_vectors() -> Value {
    let mut tree = MemoryTree::default();
    for index in 0..5 {
        tree.push(format!("leaf {index}").as_bytes()).unwrap();
    }
    let root = tree.root(5).unwrap();
    let body = checkpoint_body(ORIGIN, 5, root).unwrap();
    let signer = key(7);
    let note = signer.sign_note(ORIGIN, &body).unwrap();
    let (first, first_key) = witness(9, "witness.example/w1", body.as_bytes());
    let (second, second_key) = witness(10, "witness.example/w2", body.as_bytes());
    let other_body = checkpoint_body(ORIGIN, 6, tree.root(5).unwrap()).unwrap();
    let (forged, _) = witness(9, "witness.example/w1", other_body.as_bytes());
    let grown = note.replacen(&format!("{ORIGIN}\n5\n"), &format!("{ORIGIN}\n6\n"), 1);
    let head = json!({"size": 5, "root": hex(&root.0)});
    let valid = |name: &str, note: String, cosigned_by: &[&str]| json!({"name": name, "note": note, "origin": ORIGIN, "tree": head, "cosigned_by": cosigned_by});
    let refused = |name: &str, note: String, origin: &str| json!({"name": name, "note": note, "origin": origin, "tree": null});
    let cases = [
        valid("a checkpoint as the server signs it", note.clone(), &[]),
        valid(
            "cosigned by one witness",
            format!("{note}{first}"),
            &["witness.example/w1"],
        ),
        valid(
            "cosigned by both witnesses",
            format!("{note}{first}{second}"),
            &["witness.example/w1", "witness.example/w2"],
        ),
        json!({
            "name": "a witness's cosignature of another checkpoint",
            "note": format!("{note}{forged}"),
            "origin": ORIGIN,
            "tree": head,
            "cosigned_by": null,
        }),
        refused(
            "another log than the one followed",
            note.clone(),
            "other.example/log",
        ),
        refused(
            "signed by a key the JWKS does not hold",
            key(8).sign_note(ORIGIN, &body).unwrap(),
            ORIGIN,
        ),
        refused("a size changed after signing", grown, ORIGIN),
    ];
    json!({
        "description": "Checkpoints of the log's tree as C2SP signed notes, signed by the key of \
            `jwks` under the log's origin, some with witnesses' cosignatures (C2SP \
            tlog-cosignature, cosignature/v1). Verify each note under `origin` with `jwks`: \
            `tree` is the size and root (hex) it must give, null when it must be refused. \
            `cosigned_by` names the witnesses of `witnesses` whose cosignature verifies, in \
            their order there; null where a cosignature under a witness's key does not verify, \
            which must be refused.",
        "jwks": Jwks { keys: vec![signer.jwk().clone()] },
        "witnesses": [first_key, second_key],
        "cases": cases,
    })
}

/// Replica sets a runtime may be given, some with an address twice.
const ENDPOINT_SETS: [&[&str]; 4] = [
    &[
        "http://replica-a:50051",
        "http://replica-b:50051",
        "http://replica-c:50051",
    ],
    &[
        "https://policyhub-0.policyhub.svc:50051",
        "https://policyhub-1.policyhub.svc:50051",
        "https://policyhub-2.policyhub.svc:50051",
        "https://policyhub-3.policyhub.svc:50051",
        "https://policyhub-4.policyhub.svc:50051",
    ],
    &[
        "http://10.0.0.1:50051",
        "http://10.0.0.2:50051",
        "http://10.0.0.1:50051",
    ],
    &["http://[::1]:50051", "http://127.0.0.1:50051"],
];

/// Runtime ids, some outside ASCII.
const RUNTIME_IDS: [&str; 6] = [
    "payments-7d9f8-abcde",
    "payments-7d9f8-fghij",
    "opa-0",
    "opa-1",
    "edge/eu-west-1/42",
    "r\u{e9}plica-\u{1f600}",
];

fn ranking_vectors() -> Value {
    let mut cases = Vec::new();
    for endpoints in ENDPOINT_SETS {
        let endpoints: Vec<String> = endpoints.iter().map(|&endpoint| endpoint.into()).collect();
        for id in RUNTIME_IDS {
            let ranking = policyhub_runtime::ranking(&endpoints, id);
            cases.push(json!({"runtime_id": id, "endpoints": endpoints, "ranking": ranking}));
        }
    }
    json!({
        "description": "The order in which a runtime with an id prefers the addresses it is \
            given (rendezvous hashing: an address's weight is the first eight bytes, big-endian, \
            of SHA-256(runtime id || 0x00 || address), the heaviest first; an address given twice \
            counts once).",
        "cases": cases,
    })
}

#[test]
fn the_conformance_vectors_are_fresh() {
    let files = [
        ("canonical-json.json", canonical_vectors()),
        ("merkle.json", merkle_vectors()),
        ("bundles.json", bundle_vectors()),
        ("ranking.json", ranking_vectors()),
        ("notes.json", note_vectors()),
        ("cache.json", cache_vectors()),
    ];
    let mut stale = Vec::new();
    for (name, vectors) in files {
        let path = vectors_dir().join(name);
        let generated = serde_json::to_string_pretty(&vectors).unwrap() + "\n";
        if std::env::var_os("UPDATE_VECTORS").is_some() {
            std::fs::create_dir_all(vectors_dir()).unwrap();
            std::fs::write(&path, &generated).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(generated.as_str()) {
            stale.push(format!("conformance/vectors/{name}"));
        }
    }
    assert!(
        stale.is_empty(),
        "stale: {stale:?}; UPDATE_VECTORS=1 cargo test --test api vectors:: writes them anew"
    );
}
