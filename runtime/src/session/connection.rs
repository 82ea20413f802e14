//! One connection to the server: the channel with the token attached to
//! every call, the JWKS fetched on it, where events go ([`EventSink`]) and how
//! a session ends ([`Failure`]).

use std::{collections::BTreeSet, time::Duration};

use tokio::sync::mpsc;
use tonic::{
    Code, Request, Status, metadata::MetadataValue, service::interceptor::InterceptedService,
    transport::Channel,
};

use crate::bundle::Jwks;
use crate::event::{Event, Refusal, Validate, WatchError};
use crate::proto::{GetSigningKeysRequest, bundle_service_client::BundleServiceClient};
use crate::subscription::{HEARTBEAT_INTERVAL_HEADER, Subscription, TokenSource};

/// Attaches the token to every call.
#[derive(Clone)]
pub(super) struct Bearer(Option<TokenSource>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = self.0.as_ref().and_then(|source| source()) {
            let value = MetadataValue::try_from(format!("Bearer {}", token.trim()))
                .map_err(|_| Status::unauthenticated("the token is not valid metadata"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// How often the token is read again while the server refuses it.
const TOKEN_POLL: Duration = Duration::from_millis(500);

/// Resolves once `source` gives another token than `refused` (a rotated
/// token file); never without a source.
pub(super) async fn token_changed(source: Option<&TokenSource>, refused: Option<&str>) {
    let Some(source) = source else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(TOKEN_POLL).await;
        if source().as_deref() != refused {
            return;
        }
    }
}

/// Whether `status` refuses the caller's credentials (a token expired,
/// rotated or without the role), which new credentials may fix without a
/// restart.
pub(super) fn refuses_credentials(refusal: Refusal) -> bool {
    matches!(
        refusal,
        Refusal::Unauthenticated | Refusal::PermissionDenied
    )
}

pub(super) type Client = BundleServiceClient<InterceptedService<Channel, Bearer>>;

/// The heartbeat interval the server announced on a watch response.
pub(super) fn announced_heartbeat(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let millis: u64 = metadata
        .get(HEARTBEAT_INTERVAL_HEADER)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    (millis > 0).then(|| Duration::from_millis(millis))
}

/// Where events go, and the application's verdict on each new state.
pub(crate) struct EventSink<F> {
    pub(super) events: mpsc::Sender<Result<Event, WatchError>>,
    pub(super) validate: F,
}

/// The consumer of the events went away: the subscription stops.
pub(super) struct Gone;

impl<F> EventSink<F>
where
    F: Validate,
{
    pub(crate) fn new(events: mpsc::Sender<Result<Event, WatchError>>, validate: F) -> Self {
        EventSink { events, validate }
    }

    pub(super) async fn emit(&self, event: Event) -> Result<(), Gone> {
        self.events.send(Ok(event)).await.map_err(|_| Gone)
    }
}

/// A channel to `address`, one of the subscription's endpoints.
pub(super) async fn connect(subscription: &Subscription, address: &str) -> Result<Client, Failure> {
    let endpoint = subscription.endpoint(address)?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| Failure::Transient(format!("cannot connect to {address}: {error}")))?;
    Ok(BundleServiceClient::with_interceptor(
        channel,
        Bearer(subscription.token.clone()),
    ))
}

/// How a session ended.
pub(super) enum Failure {
    /// Retry after a backoff.
    Transient(String),
    /// The server showed a history that does not extend the one verified
    /// last: retry after a backoff, applying nothing meanwhile.
    History(String),
    /// The server refused for good.
    Permanent { refusal: Refusal, message: String },
    /// The subscription cannot work as configured.
    Config(String),
    /// Nobody listens any more.
    Gone,
}

impl From<Gone> for Failure {
    fn from(_: Gone) -> Self {
        Failure::Gone
    }
}

impl Failure {
    /// What happened, for a log line.
    pub(super) fn reason(&self) -> String {
        match self {
            Failure::Transient(reason) | Failure::History(reason) | Failure::Config(reason) => {
                reason.clone()
            }
            Failure::Permanent { refusal, message } => format!("{refusal:?}: {message}"),
            Failure::Gone => "nobody listens".to_owned(),
        }
    }

    pub(super) fn from_status(status: Status) -> Self {
        let refusal = match status.code() {
            Code::Unauthenticated => Refusal::Unauthenticated,
            Code::PermissionDenied => Refusal::PermissionDenied,
            Code::InvalidArgument => Refusal::InvalidArgument,
            Code::FailedPrecondition => Refusal::FailedPrecondition,
            Code::Unimplemented => Refusal::Unimplemented,
            code => return Failure::Transient(format!("{code:?}: {}", status.message())),
        };
        Failure::Permanent {
            refusal,
            message: status.message().to_owned(),
        }
    }
}

impl From<WatchError> for Failure {
    fn from(error: WatchError) -> Self {
        match error {
            WatchError::Refused { refusal, message } => Failure::Permanent { refusal, message },
            WatchError::Config(message) => Failure::Config(message),
        }
    }
}

/// The keys that verify, and the ids of the revoked ones.
pub(super) async fn fetch_keys(client: &mut Client) -> Result<(Jwks, BTreeSet<String>), Failure> {
    let mut keys = client
        .get_signing_keys(GetSigningKeysRequest {})
        .await
        .map_err(Failure::from_status)?
        .into_inner();
    let revoked = std::mem::take(&mut keys.revoked_key_ids)
        .into_iter()
        .collect();
    Ok((Jwks::from_response(keys), revoked))
}
