//! `policyhub login` and `logout`: signing the CLI in with the company's
//! OpenID provider, as kubelogin does, and out again.
//!
//! By default the CLI signs in with an authorization code and PKCE on a
//! loopback redirect (RFC 8252): it listens on 127.0.0.1, on a free port,
//! prints the URL to open, and waits for the browser to come back with the
//! code. `--device` uses the device authorization grant (RFC 8628) instead,
//! for a machine without a browser: it prints a URL and a code to enter on
//! any other device, and polls the provider at the interval it sets.
//!
//! The tokens are kept in the context the sign-in is for (see `context`);
//! `session` keeps them fresh.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::Bytes;
use oauth2::{
    AuthorizationCode, CsrfToken, DeviceCodeErrorResponseType, PkceCodeChallenge, RedirectUrl,
    RequestTokenError, Scope, StandardDeviceAuthorizationResponse,
};
use secrecy::SecretString;

use super::connection::{Server, env};
use super::context::{self, Saving};
use super::failure::Reply as _;
use super::failure::{Unusable, Usage, What};
use super::oidc::{self, Provider};
use super::output::{Output, print_json};
use crate::grpc::proto::{
    IdentityProvider, ListIdentityProvidersRequest, sign_in_service_client::SignInServiceClient,
};

/// The client id when nothing names one.
const DEFAULT_CLIENT_ID: &str = "policyhub";

/// Arguments of `policyhub login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The OpenID provider's issuer URL; https, or http on this machine [env: POLICYHUB_ISSUER] [default: the context's issuer, else the one the server offers]
    #[arg(long)]
    issuer: Option<String>,
    /// policyhub's public client at the provider [env: POLICYHUB_CLIENT_ID] [default: the context's client_id, else the server's for the provider it offers, else policyhub]
    #[arg(long)]
    client_id: Option<String>,
    /// A scope to ask for; repeat for several [env: POLICYHUB_SCOPES, space-separated] [default: the context's scopes, else the server's for the provider it offers, else openid offline_access email profile]
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// Sign in with the device authorization grant: a URL and a code to enter on any device with a browser
    #[arg(long)]
    device: bool,
    /// Give up when the sign-in is not done after this long
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    timeout: Duration,
    /// How to print the sign-in: a sentence for people, json for scripts
    /// (the context, the issuer, the subject and when the ID token expires;
    /// never a token)
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
    /// The server, asked which providers it trusts when no issuer is named;
    /// the context signed in is the one --context or POLICYHUB_CONTEXT
    /// selects, else the current one, else "default"
    #[command(flatten)]
    server: Server,
}

/// Arguments of `policyhub logout`.
#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// The context to sign out of [env: POLICYHUB_CONTEXT] [default: its current_context]
    #[arg(long)]
    context: Option<String>,
}

/// Signs in and keeps the tokens in the context.
pub async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let selected = args.server.selected_context();
    let (name, context) = context::load_or_new(selected.as_deref())?;
    let named_issuer = args
        .issuer
        .or_else(|| env("POLICYHUB_ISSUER"))
        .or(context.issuer);
    // Without an issuer, the server says whom it trusts.
    let offered = match named_issuer {
        Some(issuer) => IdentityProvider {
            issuer,
            ..IdentityProvider::default()
        },
        None => offered_provider(&args.server).await?,
    };
    let client_id = args
        .client_id
        .or_else(|| env("POLICYHUB_CLIENT_ID"))
        .or(context.client_id)
        .or(Some(offered.client_id).filter(|id| !id.is_empty()))
        .unwrap_or_else(|| DEFAULT_CLIENT_ID.to_owned());
    let scopes = if !args.scopes.is_empty() {
        args.scopes
    } else if let Some(scopes) = env("POLICYHUB_SCOPES") {
        scopes.split_whitespace().map(str::to_owned).collect()
    } else if let Some(scopes) = context.scopes {
        scopes
    } else if !offered.scopes.is_empty() {
        offered.scopes
    } else {
        oidc::DEFAULT_SCOPES
            .iter()
            .map(|scope| (*scope).to_owned())
            .collect()
    };
    let issuer = offered.issuer;
    let provider = Provider::discover(&issuer, &client_id).await?;
    let response = if args.device {
        device_grant(&provider, &scopes, args.timeout).await?
    } else {
        loopback_grant(&provider, &scopes, args.timeout).await?
    };
    let session = provider.session(&response, &scopes, None)?;
    let subject = oidc::subject(&session.id_token)?;
    context::save_session(&name, &session, Saving::SignIn)?;
    let token_elsewhere = ["POLICYHUB_TOKEN", "POLICYHUB_TOKEN_FILE"]
        .into_iter()
        .find(|variable| env(variable).is_some())
        .or(context
            .token_file
            .as_ref()
            .map(|_| "the context's token_file"));
    if let Some(source) = token_elsewhere {
        eprintln!(
            "warning: {source} comes before the sign-in: commands send its token, not the \
             sign-in's, while it is set"
        );
    }
    match args.output {
        // Who signed in where, and until when, as `kubectl auth whoami`
        // tells: the tokens stay in the config file.
        Output::Json => print_json(&serde_json::json!({
            "context": name,
            "issuer": provider.issuer,
            "subject": subject,
            "expiry": session.expiry.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })),
        Output::Table => outln!(
            "signed in to {} as {subject} (context {name})",
            provider.issuer
        ),
    }
    Ok(())
}

/// The identity provider the server offers people to sign in with: the
/// only one, or none and a usage error naming them.
async fn offered_provider(server: &Server) -> anyhow::Result<IdentityProvider> {
    let channel = server.connect().await.context(
        "no issuer is named (--issuer, POLICYHUB_ISSUER, the context's issuer): asking the \
         server which it trusts",
    )?;
    let mut offered = SignInServiceClient::new(channel)
        .list_identity_providers(ListIdentityProvidersRequest {})
        .await
        .reply("asking the server which identity providers it trusts")?
        .identity_providers;
    match offered.len() {
        1 => Ok(offered.remove(0)),
        0 => Err(Usage::new(
            "no OpenID provider to sign in with: the server offers none",
            "name the provider with --issuer (or POLICYHUB_ISSUER, or the context's issuer), \
             such as --issuer https://login.example.com",
        )
        .into()),
        _ => Err(Usage::new(
            format!(
                "the server offers several OpenID providers: {}",
                offered
                    .iter()
                    .map(|provider| provider.issuer.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "choose one with --issuer",
        )
        .into()),
    }
}

/// The device authorization grant (RFC 8628).
async fn device_grant(
    provider: &Provider,
    scopes: &[String],
    timeout: Duration,
) -> anyhow::Result<oidc::TokenResponse> {
    let issuer = &provider.issuer;
    let details: StandardDeviceAuthorizationResponse = provider
        .client
        .exchange_device_code()
        .map_err(|_| {
            Unusable::new(
                What::Issuer,
                format!(
                    "{issuer} offers no device authorization grant: its discovery document \
                     names no device_authorization_endpoint"
                ),
            )
        })?
        .add_scopes(scopes.iter().cloned().map(Scope::new))
        .request_async(&provider.http)
        .await
        .map_err(|error| oidc::refused("asking for a device code", issuer, error))?;
    eprintln!(
        "To sign in, open {} in a browser and enter the code {}",
        details.verification_uri().as_str(),
        details.user_code().secret()
    );
    if let Some(complete) = details.verification_uri_complete() {
        eprintln!("(or open {})", complete.secret());
    }
    provider
        .client
        .exchange_device_access_token(&details)
        .request_async(
            &provider.http,
            tokio::time::sleep,
            Some(timeout.min(details.expires_in())),
        )
        .await
        .map_err(|error| {
            let code = match &error {
                RequestTokenError::ServerResponse(response) => Some(response.error()),
                _ => None,
            };
            match code {
                Some(DeviceCodeErrorResponseType::AccessDenied) => Unusable::new(
                    What::SignIn,
                    format!("signing in: the sign-in was denied at {issuer}"),
                ),
                Some(DeviceCodeErrorResponseType::ExpiredToken) => Unusable::new(
                    What::SignIn,
                    format!(
                        "signing in: the code was not entered and approved at {issuer} in time"
                    ),
                ),
                _ => oidc::refused("signing in", issuer, error),
            }
        })
        .map_err(Into::into)
}

/// The authorization code grant with PKCE on a loopback redirect
/// (RFC 8252).
async fn loopback_grant(
    provider: &Provider,
    scopes: &[String],
    timeout: Duration,
) -> anyhow::Result<oidc::TokenResponse> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .context("listening for the provider's redirect on 127.0.0.1")?;
    let redirect = format!(
        "http://127.0.0.1:{}/callback",
        listener.local_addr()?.port()
    );
    let client = provider
        .client
        .clone()
        .set_redirect_uri(RedirectUrl::new(redirect).context("the loopback redirect")?);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scopes(scopes.iter().cloned().map(Scope::new))
        .set_pkce_challenge(challenge)
        .url();
    eprintln!("To sign in, open this URL in a browser:\n\n    {url}\n");
    let code = match tokio::time::timeout(timeout, redirected(listener, &state)).await {
        Ok(code) => code?,
        Err(_) => {
            return Err(Unusable::new(
                What::SignIn,
                format!(
                    "signing in: the browser did not come back from {} within {}",
                    provider.issuer,
                    humantime::format_duration(timeout)
                ),
            )
            .into());
        }
    };
    client
        .exchange_code(code)
        .set_pkce_verifier(verifier)
        .request_async(&provider.http)
        .await
        .map_err(|error| oidc::refused("signing in", &provider.issuer, error).into())
}

/// The page the browser shows once it has come back.
fn page(status: u16, text: &str) -> hyper::Response<Full<Bytes>> {
    // The provider's error description comes back in the URL: text, not
    // markup.
    let text = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let html = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>policyhub</title>\
         </head><body><p>{text}</p></body></html>"
    );
    let mut response = hyper::Response::new(Full::new(Bytes::from(html)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// What a request to the loopback listener says: nothing (another path, or
/// another `state`: not this sign-in's answer), or the provider's answer.
fn answer(uri: &hyper::Uri, state: &str) -> Option<Result<String, String>> {
    if uri.path() != "/callback" {
        return None;
    }
    let url = reqwest::Url::parse(&format!("http://127.0.0.1{uri}")).ok()?;
    let parameter = |name: &str| {
        url.query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    };
    if parameter("state").as_deref() != Some(state) {
        return None;
    }
    match (parameter("code"), parameter("error")) {
        (Some(code), None) => Some(Ok(code)),
        (_, Some(error)) => Some(Err(match parameter("error_description") {
            Some(description) => format!("{error}: {description}"),
            None => error,
        })),
        (None, None) => Some(Err(
            "the redirect carries neither a code nor an error".into()
        )),
    }
}

/// Waits for the browser to come back to `listener` with this sign-in's
/// `state`; requests without it are answered 400 and ignored.
async fn redirected(
    listener: tokio::net::TcpListener,
    state: &CsrfToken,
) -> anyhow::Result<AuthorizationCode> {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Result<String, String>>(1);
    let accepting = async {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => return error,
            };
            let sender = sender.clone();
            let state = state.secret().clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                let response = match answer(request.uri(), &state) {
                    None => page(400, "This is not the answer of this sign-in."),
                    Some(outcome) => {
                        let response = match &outcome {
                            Ok(_) => page(200, "Signed in: you may close this window."),
                            Err(error) => page(400, &format!("Not signed in: {error}")),
                        };
                        let _ = sender.try_send(outcome);
                        response
                    }
                };
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    };
    let outcome = tokio::select! {
        Some(outcome) = receiver.recv() => outcome,
        error = accepting => {
            return Err(error).context("waiting for the provider's redirect");
        }
    };
    outcome.map(AuthorizationCode::new).map_err(|error| {
        let text = if error.starts_with("access_denied") {
            format!("the sign-in was denied ({error})")
        } else {
            format!("the provider answered {error}")
        };
        Unusable::new(What::SignIn, format!("signing in: {text}")).into()
    })
}

/// Signs out: revokes the refresh token at the provider (when it has a
/// revocation endpoint) and removes the session from the context.
pub async fn logout(args: LogoutArgs) -> anyhow::Result<()> {
    let selected = args.context.or_else(|| env("POLICYHUB_CONTEXT"));
    let (Some(name), context) = context::load(selected.as_deref())? else {
        outln!("not signed in: no context is selected");
        return Ok(());
    };
    if context.id_token.is_none() && context.refresh_token.is_none() {
        outln!("not signed in (context {name})");
        return Ok(());
    }
    if let (Some(token), Some(issuer), Some(client_id)) =
        (&context.refresh_token, &context.issuer, &context.client_id)
        && let Err(error) = revoke(issuer, client_id, token).await
    {
        eprintln!(
            "warning: the refresh token stays valid at {issuer} until it expires: {}",
            super::failure::report(&error).trim_end()
        );
    }
    context::remove_session(&name)?;
    outln!("signed out (context {name})");
    Ok(())
}

/// Revokes `refresh_token` at the provider that gave it, when it can.
async fn revoke(issuer: &str, client_id: &str, refresh_token: &SecretString) -> anyhow::Result<()> {
    Provider::discover(issuer, client_id)
        .await?
        .revoke(refresh_token)
        .await
        .map(|_| ())
}
