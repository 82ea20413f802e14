//! The layer in front of every authenticated service: it finds the caller
//! of each request (a token's issuer may need its keys fetched, so this is
//! asynchronous, unlike tonic's interceptors) and puts it in the request's
//! extensions, or answers UNAUTHENTICATED without calling the service.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::{Status, body::Body, server::NamedService};
use tower_service::Service;

use super::Authentication;

/// Reads the SPIFFE ID a request's connection proved with its client
/// certificate, from the request's extensions.
pub type PeerIdentity = fn(&http::Extensions) -> Option<String>;

/// A service whose every request carries its verified [`Caller`](super::Caller).
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    authentication: Authentication,
    peer: PeerIdentity,
}

impl<S> Authenticated<S> {
    pub fn new(inner: S, authentication: Authentication, peer: PeerIdentity) -> Self {
        Authenticated {
            inner,
            authentication,
            peer,
        }
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Authenticated<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authentication = self.authentication.clone();
        let peer = (self.peer)(request.extensions());
        Box::pin(async move {
            match authentication
                .caller(request.headers(), peer.as_deref())
                .await
            {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Err(error) => Ok(Status::from(error).into_http()),
            }
        })
    }
}
