//! Who is trusted to say who a caller is: the local issuer, the OpenID
//! Connect issuers (`[[auth.issuers]]`) and the file of role bindings.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// How bearer tokens are verified. The local issuer (`issuer`, `audience`,
/// `roles_claim` with `jwks_file` or `hs256_secret_file`) is trusted beside
/// every `[[auth.issuers]]` entry. With neither file and no
/// `[[auth.issuers]]`, a local HS256 secret is generated into the data
/// directory on first start (`policyhub token` mints tokens with it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// The local issuer's public keys (RFC 7517 JWKS): RS*, PS*, ES* or
    /// EdDSA.
    pub jwks_file: Option<PathBuf>,
    /// A file holding a shared HS256 secret (at least 32 bytes), for small
    /// setups.
    pub hs256_secret_file: Option<PathBuf>,
    /// Required `iss` of the local issuer's tokens.
    pub issuer: String,
    /// Required `aud` of the local issuer's tokens.
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// The claim of the local issuer's tokens that holds the caller's
    /// grants, such as `["payments:publisher", "*:reader"]`.
    pub roles_claim: String,
    /// Serve reflection (grpcurl's `list` and `describe`) without a token.
    /// Health is always served without one, for probes.
    pub public_reflection: bool,
    /// OpenID Connect issuers trusted beside the local one (an identity
    /// provider, a Kubernetes cluster), as `[[auth.issuers]]` tables.
    pub issuers: Vec<IssuerSettings>,
    /// The role bindings (TOML, `[[bindings]]` tables): what a verified
    /// token or client certificate says, mapped to grants. Read again on
    /// SIGHUP and when the file changes; a file that does not parse leaves
    /// the previous bindings in force.
    pub bindings_file: Option<PathBuf>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            jwks_file: None,
            hs256_secret_file: None,
            issuer: LOCAL_ISSUER.into(),
            audience: "policyhub".into(),
            leeway: Duration::from_secs(30),
            roles_claim: "roles".into(),
            public_reflection: true,
            issuers: Vec::new(),
            bindings_file: None,
        }
    }
}

/// One trusted OpenID Connect issuer: its tokens are checked with its keys
/// and audiences only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IssuerSettings {
    /// The issuer's URL, exactly as its tokens' `iss` says it. Its keys are
    /// found through `<issuer>/.well-known/openid-configuration` unless
    /// `jwks_file` is set; `https://` (plain `http://` on a loopback address
    /// only).
    pub issuer: String,
    /// The `aud` values accepted (the client id, for ID tokens; the
    /// audience of a Kubernetes projected token).
    pub audiences: Vec<String>,
    /// The issuer's keys from a file (RFC 7517 JWKS) rather than discovery.
    pub jwks_file: Option<PathBuf>,
    /// PEM certificates trusted for the issuer's `https://` endpoints,
    /// instead of the public roots (a cluster's own CA).
    pub ca_file: Option<PathBuf>,
    /// A claim whose `"<namespace>:<role>"` values are taken as grants, as
    /// the local issuer's `roles` claim is; unset: grants come from bindings
    /// only.
    pub roles_claim: Option<String>,
    /// Claims of this issuer's tokens that bindings may match, besides
    /// `sub`: a binding on any other claim is refused.
    pub claims: Vec<String>,
    /// How often the keys are fetched again.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// The shortest time between two fetches: a token with an unknown `kid`
    /// fetches the keys again at most this often.
    #[serde(with = "humantime_serde")]
    pub min_refresh_interval: Duration,
    /// How long the last keys fetched keep verifying while fetching them
    /// again fails.
    #[serde(with = "humantime_serde")]
    pub keys_grace_period: Duration,
    /// A public client (no secret) registered at the issuer for people to
    /// sign in with: the console and `policyhub login` offer sign-in with
    /// this issuer when it is set.
    pub client_id: Option<String>,
    /// The scopes asked for at sign-in.
    pub scopes: Vec<String>,
}

impl Default for IssuerSettings {
    fn default() -> Self {
        IssuerSettings {
            issuer: String::new(),
            audiences: Vec::new(),
            jwks_file: None,
            ca_file: None,
            roles_claim: None,
            claims: vec!["groups".into(), "email".into()],
            refresh_interval: Duration::from_secs(3600),
            min_refresh_interval: Duration::from_secs(30),
            keys_grace_period: Duration::from_secs(24 * 3600),
            client_id: None,
            scopes: ["openid", "profile", "email", "offline_access"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// The issuer of tokens minted with the generated local secret.
pub const LOCAL_ISSUER: &str = "policyhub-local";

/// File name of the HS256 secret generated on first start.
pub const GENERATED_SECRET_FILE: &str = "token-secret";
