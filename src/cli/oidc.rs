//! The CLI's side of OpenID Connect: the provider's discovery document, the
//! public client of policyhub there (the oauth2 crate's, with the ID token
//! of the token response), and the session a token response makes.
//!
//! The ID token is the bearer token policyhub verifies, as Kubernetes' OIDC
//! authenticator does: its audience is the client id. The CLI receives it
//! straight from the provider's token endpoint, so it reads its claims
//! without checking its signature (OpenID Connect Core 3.1.3.7); the server
//! checks it on every call.

use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use oauth2::{
    AuthUrl, ClientId, DeviceAuthorizationUrl, EndpointMaybeSet, EndpointNotSet, EndpointSet,
    ExtraTokenFields, RefreshToken, RequestTokenError, StandardRevocableToken,
    StandardTokenResponse, TokenResponse as _, TokenUrl,
    basic::{
        BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
        BasicTokenType,
    },
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::context::Session;
use super::failure::{Unusable, Usage, What};

/// The scopes `policyhub login` asks for when nothing names them: the ID
/// token, a refresh token, and the claims people are commonly bound by.
pub const DEFAULT_SCOPES: [&str; 4] = ["openid", "offline_access", "email", "profile"];

/// How long a request to the provider may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The part of a token response OpenID Connect adds: the ID token.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct IdTokenField {
    id_token: Option<String>,
}

impl ExtraTokenFields for IdTokenField {}

/// A token response with its ID token.
pub type TokenResponse = StandardTokenResponse<IdTokenField, BasicTokenType>;

/// The public client of policyhub at a provider: authorization and token
/// endpoints always, device authorization when the provider has it.
pub type Client = oauth2::Client<
    BasicErrorResponse,
    TokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointMaybeSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// What the CLI reads of a provider's discovery document.
#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    device_authorization_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
}

/// A provider, discovered, and the client policyhub is there.
pub struct Provider {
    /// The issuer, as the provider names itself.
    pub issuer: String,
    /// The public client.
    pub client: Client,
    /// The HTTP client the grants go through: no redirects followed.
    pub http: reqwest::Client,
    /// Where refresh tokens are revoked (RFC 7009), when the provider says.
    revocation_endpoint: Option<reqwest::Url>,
}

/// Whether `issuer` may be spoken to: https, or plain http to this machine.
fn check_issuer(issuer: &str) -> anyhow::Result<()> {
    let url = reqwest::Url::parse(issuer).map_err(|_| not_an_issuer(issuer))?;
    let loopback = match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback()),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(not_an_issuer(issuer).into()),
    }
}

fn not_an_issuer(issuer: &str) -> Usage {
    Usage::new(
        format!("{issuer:?} is not an issuer URL: https://, or http:// on this machine only"),
        "write the provider's issuer, such as https://login.example.com, in --issuer, \
         POLICYHUB_ISSUER or the context's issuer",
    )
}

/// An HTTP client for the provider: bounded, and following no redirects
/// (the grants must not be redirected elsewhere).
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the http client")
}

impl Provider {
    /// Reads the discovery document of `issuer`
    /// (`<issuer>/.well-known/openid-configuration`) and sets up `client_id`
    /// there.
    pub async fn discover(issuer: &str, client_id: &str) -> anyhow::Result<Provider> {
        check_issuer(issuer)?;
        let http = http_client()?;
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let unusable = |reason: String| {
            Unusable::new(
                What::Issuer,
                format!("reading the OpenID configuration of {issuer} at {url}: {reason}"),
            )
        };
        let response = http
            .get(&url)
            .send()
            .await
            .map_err(|error| unusable(error_chain(&error)))?;
        if !response.status().is_success() {
            return Err(unusable(format!("the answer is {}", response.status())).into());
        }
        let discovery: Discovery = response
            .json()
            .await
            .map_err(|error| unusable(format!("not a discovery document: {error}")))?;
        if discovery.issuer != issuer {
            return Err(unusable(format!(
                "the provider names itself {:?}: use that as the issuer",
                discovery.issuer
            ))
            .into());
        }
        let endpoint = |name: &str, value: String| {
            reqwest::Url::parse(&value)
                .map_err(|_| unusable(format!("its {name} {value:?} is not a URL")))
        };
        let client = oauth2::Client::new(ClientId::new(client_id.to_owned()))
            .set_auth_uri(AuthUrl::from_url(endpoint(
                "authorization_endpoint",
                discovery.authorization_endpoint,
            )?))
            .set_token_uri(TokenUrl::from_url(endpoint(
                "token_endpoint",
                discovery.token_endpoint,
            )?))
            .set_device_authorization_url_option(
                discovery
                    .device_authorization_endpoint
                    .map(|url| endpoint("device_authorization_endpoint", url))
                    .transpose()?
                    .map(DeviceAuthorizationUrl::from_url),
            );
        Ok(Provider {
            issuer: discovery.issuer,
            client,
            http,
            revocation_endpoint: discovery
                .revocation_endpoint
                .map(|url| endpoint("revocation_endpoint", url))
                .transpose()?,
        })
    }

    /// The session a token response makes: its ID token, checked to be
    /// issued by this provider for this client, and its refresh token, or
    /// `previous_refresh_token` when the provider keeps the one it gave.
    pub fn session(
        &self,
        response: &TokenResponse,
        scopes: &[String],
        previous_refresh_token: Option<&SecretString>,
    ) -> anyhow::Result<Session> {
        let id_token = response.extra_fields().id_token.clone().ok_or_else(|| {
            Unusable::new(
                What::SignIn,
                format!(
                    "{} answered without an ID token: is \"openid\" among the scopes?",
                    self.issuer
                ),
            )
        })?;
        let claims = IdTokenClaims::read(&id_token)?;
        let client_id = self.client.client_id().as_str();
        if claims.iss != self.issuer || !claims.aud.contains(client_id) {
            return Err(Unusable::new(
                What::SignIn,
                format!(
                    "the ID token is not one of {} for {client_id}: it names the issuer {:?}",
                    self.issuer, claims.iss
                ),
            )
            .into());
        }
        let expiry = chrono::DateTime::from_timestamp(claims.exp, 0).ok_or_else(|| {
            Unusable::new(
                What::SignIn,
                format!("the ID token expires at {}, not a time", claims.exp),
            )
        })?;
        Ok(Session {
            issuer: self.issuer.clone(),
            client_id: client_id.to_owned(),
            scopes: scopes.to_vec(),
            id_token: id_token.into(),
            refresh_token: response
                .refresh_token()
                .map(|token| SecretString::from(token.secret().as_str()))
                .or_else(|| previous_refresh_token.cloned()),
            expiry,
        })
    }

    /// Revokes `refresh_token` (RFC 7009) when the provider has a
    /// revocation endpoint; whether it has one. Written out rather than the
    /// oauth2 crate's: that refuses any endpoint but https, and an issuer on
    /// this machine may speak plain http.
    pub async fn revoke(&self, refresh_token: &SecretString) -> anyhow::Result<bool> {
        let Some(endpoint) = &self.revocation_endpoint else {
            return Ok(false);
        };
        let unusable = |reason: String| {
            Unusable::new(
                What::SignIn,
                format!("revoking the refresh token at {endpoint}: {reason}"),
            )
        };
        let response = self
            .http
            .post(endpoint.clone())
            .form(&[
                ("token", refresh_token.expose_secret()),
                ("token_type_hint", "refresh_token"),
                ("client_id", self.client.client_id().as_str()),
            ])
            .send()
            .await
            .map_err(|error| unusable(error_chain(&error)))?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            return Err(unusable(format!("the answer is {status}: {}", body.trim())).into());
        }
        Ok(true)
    }

    /// A new session from `refresh_token`.
    pub async fn refresh(
        &self,
        refresh_token: &SecretString,
        scopes: &[String],
    ) -> anyhow::Result<Session> {
        let response = self
            .client
            .exchange_refresh_token(&RefreshToken::new(refresh_token.expose_secret().to_owned()))
            .request_async(&self.http)
            .await
            .map_err(|error| refused("refreshing the ID token", &self.issuer, error))?;
        self.session(&response, scopes, Some(refresh_token))
    }
}

/// Who an ID token speaks for: its `sub`.
pub fn subject(id_token: &SecretString) -> anyhow::Result<String> {
    Ok(IdTokenClaims::read(id_token.expose_secret())?.sub)
}

/// The claims of an ID token the CLI reads.
#[derive(Debug, Deserialize)]
struct IdTokenClaims {
    iss: String,
    sub: String,
    aud: Audience,
    exp: i64,
}

/// `aud`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Several(Vec<String>),
}

impl Audience {
    fn contains(&self, client_id: &str) -> bool {
        match self {
            Audience::One(audience) => audience == client_id,
            Audience::Several(audiences) => audiences.iter().any(|audience| audience == client_id),
        }
    }
}

impl IdTokenClaims {
    /// The claims of a JWT's payload.
    fn read(token: &str) -> anyhow::Result<IdTokenClaims> {
        let not_a_jwt = || Unusable::new(What::SignIn, "the ID token is not a JWT");
        let payload = token.split('.').nth(1).ok_or_else(not_a_jwt)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| not_a_jwt())?;
        serde_json::from_slice(&bytes).map_err(|_| not_a_jwt().into())
    }
}

/// An error and its causes, as one line (reqwest's own display stops at
/// "error sending request").
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A grant the provider refused or could not be asked for, said plainly:
/// the provider's own error code and description.
pub fn refused<RE, TE>(action: &str, issuer: &str, error: RequestTokenError<RE, TE>) -> Unusable
where
    RE: std::error::Error + 'static,
    TE: oauth2::ErrorResponse + std::fmt::Display + 'static,
{
    let reason = match error {
        RequestTokenError::ServerResponse(response) => {
            format!("{issuer} refused: {response}")
        }
        RequestTokenError::Request(error) => {
            format!("cannot reach {issuer}: {}", error_chain(&error))
        }
        RequestTokenError::Parse(error, _) => {
            format!("{issuer} answered with no token response: {error}")
        }
        RequestTokenError::Other(reason) => reason,
    };
    Unusable::new(What::SignIn, format!("{action}: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_are_https_or_loopback_http() {
        for issuer in [
            "https://login.example.com",
            "http://127.0.0.1:8080",
            "http://localhost:5556/dex",
            "http://[::1]:9000",
        ] {
            assert!(check_issuer(issuer).is_ok(), "{issuer}");
        }
        for issuer in [
            "http://login.example.com",
            "ftp://127.0.0.1",
            "login.example.com",
        ] {
            assert!(check_issuer(issuer).is_err(), "{issuer}");
        }
    }

    #[test]
    fn audiences_are_one_or_several() {
        let read = |payload: &str| {
            let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload);
            IdTokenClaims::read(&format!("e30.{encoded}.c2ln")).unwrap()
        };
        let one = read(r#"{"iss":"https://a","sub":"bob","aud":"policyhub","exp":1}"#);
        assert!(one.aud.contains("policyhub"));
        let several = read(r#"{"iss":"https://a","sub":"bob","aud":["x","policyhub"],"exp":1}"#);
        assert!(several.aud.contains("policyhub") && !several.aud.contains("y"));
        assert!(IdTokenClaims::read("not-a-jwt").is_err());
    }
}
