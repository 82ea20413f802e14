//! Identity: GetActive from a caller whose grants come from role bindings,
//! on a server trusting three OpenID Connect issuers (keys from JWKS files)
//! beside its local one, with 100 bindings, against the same call from a caller of the local
//! issuer whose grants are its `roles` claim, on a server trusting only
//! that issuer. Both servers run side by side and are measured alternately,
//! 64 calls in flight over 16 connections each.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::json;
use tonic::metadata::MetadataValue;

use crate::{
    Outcome, Row, Settings, Target, Unit,
    support::{Options, Policyhub},
    unary::{Call, Caller, IN_FLIGHT, rate_in_flight},
};

/// Issuers trusted beside the local one.
const ISSUERS: usize = 3;
/// Role bindings, spread over them.
const BINDINGS: usize = 100;
/// Connections of each server's callers.
const CONNECTIONS: usize = 16;
/// The floor on the ratio.
const RATIO_FLOOR: f64 = 0.95;

pub async fn run(settings: &Settings) -> anyhow::Result<Outcome> {
    let duration = Duration::from_secs(settings.size(2, 5));
    let dir = tempfile::tempdir()?;
    let issuer = |index: usize| format!("https://idp-{index}.example.com");
    let mut entries = Vec::new();
    let mut signer = None;
    for index in 0..ISSUERS {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("generating a key"))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| anyhow::anyhow!("reading a key"))?;
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": format!("key-{index}"),
            "alg": "EdDSA", "use": "sig", "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())}]});
        let jwks_file = dir.path().join(format!("idp-{index}.json"));
        std::fs::write(&jwks_file, jwks.to_string())?;
        entries.push(format!(
            "{{issuer = \"{}\", audiences = [\"policyhub\"], jwks_file = \"{}\"}}",
            issuer(index),
            jwks_file.display()
        ));
        if index == ISSUERS - 1 {
            signer = Some(EncodingKey::from_ed_der(pkcs8.as_ref()));
        }
    }
    // The caller's binding is the last one read, of the last issuer.
    let mut bindings = String::new();
    for index in 0..BINDINGS {
        let (grant, issuer_index) = if index == BINDINGS - 1 {
            (format!("{}:reader", crate::support::NAMESPACE), ISSUERS - 1)
        } else {
            (format!("team-{index}:operator"), index % ISSUERS)
        };
        bindings.push_str(&format!(
            "[[bindings]]\nname = \"binding-{index}\"\nissuer = \"{}\"\nclaim = \"groups\"\n\
             value = \"group-{index}\"\ngrants = [\"{grant}\"]\n\n",
            issuer(issuer_index)
        ));
    }
    let bindings_file = dir.path().join("bindings.toml");
    std::fs::write(&bindings_file, bindings)?;
    // The local issuer stays beside them (with `[[auth.issuers]]` it is
    // not generated): the bench publishes with its token.
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir)?;
    let secret = data_dir.join(policyhub::config::GENERATED_SECRET_FILE);
    std::fs::write(&secret, "a local secret of at least thirty-two bytes")?;
    let mut bound = Policyhub::start(Options {
        authenticated: true,
        data_dir: Some(data_dir),
        env: vec![
            (
                "POLICYHUB_AUTH__HS256_SECRET_FILE".into(),
                secret.display().to_string(),
            ),
            (
                "POLICYHUB_AUTH__ISSUERS".into(),
                format!("[{}]", entries.join(", ")),
            ),
            (
                "POLICYHUB_AUTH__BINDINGS_FILE".into(),
                bindings_file.display().to_string(),
            ),
        ],
        ..Options::default()
    })
    .await?;
    let mut local = Policyhub::start(Options {
        authenticated: true,
        ..Options::default()
    })
    .await?;
    bound.publish(1).await?;
    local.publish(1).await?;

    // A person of the last issuer, in twenty groups, the last one bound
    // to a grant in the bench's namespace (and some bound for other
    // issuers only). The baseline's caller is the same person, with the
    // same claims and its grant in the roles claim, so that the tokens
    // weigh the same on the wire and only the configuration differs.
    let now = jsonwebtoken::get_current_timestamp();
    let groups: Vec<String> = (BINDINGS - 20..BINDINGS)
        .map(|index| format!("group-{index}"))
        .collect();
    let claims = |iss: &str| {
        json!({"iss": iss, "aud": "policyhub", "sub": "person", "groups": groups,
            "email": "person@example.com", "exp": now + 3600,
            "roles": [format!("{}:reader", crate::support::NAMESPACE)]})
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(format!("key-{}", ISSUERS - 1));
    let bound_token = jsonwebtoken::encode(
        &header,
        &claims(&issuer(ISSUERS - 1)),
        signer.as_ref().expect("the last issuer signs"),
    )?;
    let secret = std::fs::read_to_string(
        local
            .data_dir
            .join(policyhub::config::GENERATED_SECRET_FILE),
    )?;
    let local_token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(policyhub::config::LOCAL_ISSUER),
        &EncodingKey::from_secret(secret.trim().as_bytes()),
    )?;
    let bearer = |token: String| -> anyhow::Result<MetadataValue<_>> {
        Ok(format!("Bearer {token}").parse()?)
    };

    let callers = |policyhub: &Policyhub, token: Option<MetadataValue<_>>| {
        let endpoint = policyhub.endpoint.clone();
        async move {
            let mut callers = Vec::with_capacity(CONNECTIONS);
            for _ in 0..CONNECTIONS {
                callers.push(Caller::new(endpoint.connect().await?, token.clone()));
            }
            anyhow::Ok(callers)
        }
    };
    let bound_callers = callers(&bound, Some(bearer(bound_token)?)).await?;
    let local_callers = callers(&local, Some(bearer(local_token)?)).await?;
    // Each caller is answered before anything is measured.
    for callers in [&bound_callers, &local_callers] {
        if let Err(status) = callers[0].clone().call(Call::GetActive).await {
            anyhow::bail!("a caller is refused: {status:?}");
        }
    }
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for repeat in 1..=settings.repeats {
        // Which goes first alternates, so neither always meets a warmer
        // machine.
        let (with_bindings, roles_claim) = if repeat % 2 == 1 {
            let ours = rate_in_flight(&bound_callers, Call::GetActive, duration, IN_FLIGHT).await?;
            let theirs =
                rate_in_flight(&local_callers, Call::GetActive, duration, IN_FLIGHT).await?;
            (ours, theirs)
        } else {
            let theirs =
                rate_in_flight(&local_callers, Call::GetActive, duration, IN_FLIGHT).await?;
            let ours = rate_in_flight(&bound_callers, Call::GetActive, duration, IN_FLIGHT).await?;
            (ours, theirs)
        };
        println!(
            "  repeat {repeat}: GetActive {with_bindings:.0}/s with {ISSUERS} issuers and \
             {BINDINGS} bindings, {roles_claim:.0}/s with one issuer's roles claim"
        );
        ours.push(with_bindings);
        theirs.push(roles_claim);
    }
    let mut outcome = Outcome::default();
    outcome.rows.push(
        Row::new(
            format!(
                "GetActive calls/s, {ISSUERS} OIDC issuers and {BINDINGS} bindings, \
                 {IN_FLIGHT} in flight over {CONNECTIONS} connections"
            ),
            Unit::PerSecond,
            ours,
            "one issuer, grants in the roles claim, same concurrency",
            theirs,
        )
        .target(Target::RatioAtLeast(RATIO_FLOOR)),
    );
    outcome.notes.push(format!(
        "two servers side by side, measured alternately (which goes first alternates); the \
         same person's claims in both tokens (20 groups; EdDSA from an OIDC issuer, HS256 \
         from the local one); the issuers' keys from JWKS files (discovery fetches them \
         once); {} s per run after 0.3 s of warm-up",
        duration.as_secs()
    ));
    Ok(outcome)
}
