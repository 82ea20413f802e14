//! A sign-in kept fresh: every command sends the ID token of the context's
//! session; when it expires within a minute the command first gets a new
//! one with the refresh token and writes it back, one command at a time.

use std::time::Duration;

use secrecy::SecretString;

use super::context::{self, Context, Saving};
use super::failure::{Unusable, What};
use super::oidc::Provider;

/// A session is renewed when its ID token expires within this long, so
/// that a call does not carry a token that expires on the way.
const RENEW_BEFORE: Duration = Duration::from_secs(60);

/// The ID token of context `name`'s session, renewed first (and written
/// back) when it expires within a minute.
pub async fn fresh_id_token(name: &str, context: &Context) -> anyhow::Result<SecretString> {
    if let Some(id_token) = unexpired(context) {
        return Ok(id_token);
    }
    // One renewal at a time; another command may have renewed the session
    // while this one waited.
    let _lock = context::lock_renewal().await?;
    let (_, context) = context::load(Some(name))?;
    if let Some(id_token) = unexpired(&context) {
        return Ok(id_token);
    }
    let (Some(refresh_token), Some(issuer), Some(client_id)) =
        (&context.refresh_token, &context.issuer, &context.client_id)
    else {
        return Err(expired(name, None));
    };
    let scopes = context.scopes.clone().unwrap_or_default();
    let renewed = async {
        Provider::discover(issuer, client_id)
            .await?
            .refresh(refresh_token, &scopes)
            .await
    }
    .await
    .map_err(|error| expired(name, Some(&error)))?;
    context::save_session(name, &renewed, Saving::Renewal)?;
    Ok(renewed.id_token)
}

/// The ID token of `context`, unless it expires within a minute.
fn unexpired(context: &Context) -> Option<SecretString> {
    let renew_at = chrono::Utc::now() + RENEW_BEFORE;
    context
        .id_token
        .clone()
        .filter(|_| context.expiry.is_some_and(|expiry| expiry > renew_at))
}

/// The refusal of a session that has expired and cannot be renewed.
fn expired(name: &str, cause: Option<&anyhow::Error>) -> anyhow::Error {
    let reason = match cause {
        Some(error) => format!(": renewing it failed: {}", super::failure::message(error)),
        None => String::new(),
    };
    Unusable::new(
        What::SignIn,
        format!("the sign-in of context {name} has expired{reason}"),
    )
    .into()
}
