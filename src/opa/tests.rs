use std::io::Read as _;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::json;

use super::*;
use crate::domain::PolicyName;
use crate::domain::rego::compose;

fn files(tarball: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tarball));
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            (name, bytes)
        })
        .collect()
}

#[test]
fn a_bundle_holds_its_files_each_claimed_by_its_signature() {
    let (key, _) = OpaSigningKey::generate().unwrap();
    let roots = BundleRoots::parse("roots", &["payments".into()]).unwrap();
    let name = PolicyName::parse("name", "limits").unwrap();
    let body = json!({
        "modules": {"authz/allow.rego": "package payments.authz\n\nallow := true\n"},
        "data": {"payments": {"max": 500, "note": "<&>\u{2028}"}},
    });
    let content = compose([(&name, &body)]).unwrap();
    let namespace = Namespace::parse("namespace", "payments").unwrap();
    let given = OpaDue {
        revision: 7,
        versions: [(name.clone(), 3)].into(),
    };
    let bundle = build(&namespace, &given, &roots, &content, &key, 0).unwrap();
    let again = build(&namespace, &given, &roots, &content, &key, 0).unwrap();
    assert_eq!(bundle.etag, again.etag, "one content, one tag");

    let files = files(&bundle.tarball);
    let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            ".manifest",
            "data.json",
            "limits/authz/allow.rego",
            ".signatures.json"
        ]
    );
    let manifest: Value = serde_json::from_slice(&files[0].1).unwrap();
    assert_eq!(
        manifest["revision"], "7;limits@3",
        "the revision and each version"
    );
    assert_eq!(manifest["roots"], json!(["payments"]));
    assert_eq!(
        manifest["metadata"]["policyhub"]["policies"],
        json!({"limits": 3})
    );

    let signatures: Value = serde_json::from_slice(&files[3].1).unwrap();
    let jws = signatures["signatures"][0].as_str().unwrap();
    let decoding = jsonwebtoken::DecodingKey::from_ec_pem(key.public_pem().as_bytes()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let claims = jsonwebtoken::decode::<Value>(jws, &decoding, &validation)
        .unwrap()
        .claims;
    let claimed = claims["files"].as_array().unwrap();
    assert_eq!(claimed.len(), 3);
    for ((name, bytes), claim) in files.iter().zip(claimed) {
        assert_eq!(claim["name"], name.as_str());
        let digest = if name.ends_with(".rego") {
            digest::raw(bytes)
        } else {
            digest::structured(&serde_json::from_slice(bytes).unwrap())
        };
        assert_eq!(claim["hash"], hex(&digest), "{name}");
    }
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(jws.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], key.key_id());
}
