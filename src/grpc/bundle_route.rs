//! `BundleService.WatchActive` written to the transport without tonic's
//! response encoder.
//!
//! tonic encodes every message of a response stream into a buffer the
//! stream owns and keeps that buffer at the largest size it ever reached:
//! measured, an idle watch stream held 108 KiB after one 64 KiB snapshot,
//! which with 1 MiB policies and ten thousand runtimes is over 10 GiB held
//! by streams doing nothing. It also copies every bundle into that buffer,
//! once per subscriber per update.
//!
//! This route serves the method itself: the request is decoded by tonic's
//! decoder, the handler is [`BundleApi`]'s, and each message goes out as a
//! [`GrpcFrame`]: the index's shared bundle bytes as they are, between the
//! few bytes of the message's own fields. Once a message is out, the stream
//! holds nothing of it; an idle stream is its subscriber's cursor and the
//! HTTP/2 stream. The authentication interceptor, the metrics layer and
//! the trace span wrap this route as they wrap every other method.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll, ready},
};

use futures::{
    Stream, StreamExt,
    future::{BoxFuture, Either},
};
use http::header::CONTENT_TYPE;
use http_body::Frame;
use prost::bytes::Bytes;
use tonic::{
    Status,
    body::Body,
    codec::{Codec, Streaming},
    metadata::GRPC_CONTENT_TYPE,
    server::NamedService,
};
use tower_service::Service;

use super::BundleApi;
use super::codec::CompactCodec;
use super::proto::{self, bundle_service_server::BundleService};
use super::watch_message::{GrpcFrame, WatchActiveResponse};
use crate::domain::Error;

/// The method this route serves, within the service it wraps; every other
/// request goes to that service.
const WATCH_ACTIVE: &str = "WatchActive";

/// Whether `path` is `/<service>/WatchActive` of the service named `service`.
fn is_watch_active(path: &str, service: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|path| path.strip_prefix(service))
        .and_then(|path| path.strip_prefix('/'))
        == Some(WATCH_ACTIVE)
}

/// `BundleService` with `WatchActive` served by [`watch_active`].
#[derive(Clone)]
pub struct WatchRoute<S> {
    /// The generated service, for every other method.
    inner: S,
    api: BundleApi,
    /// The largest request message accepted, as the generated service has.
    max_request_bytes: usize,
}

impl<S> WatchRoute<S> {
    /// `inner` with its `WatchActive` answered by `api` here.
    pub fn new(inner: S, api: BundleApi, max_request_bytes: usize) -> Self {
        WatchRoute {
            inner,
            api,
            max_request_bytes,
        }
    }
}

impl<S: NamedService> NamedService for WatchRoute<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for WatchRoute<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Self::Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if !is_watch_active(request.uri().path(), S::NAME) {
            return Either::Left(self.inner.call(request));
        }
        let api = self.api.clone();
        let max_request_bytes = self.max_request_bytes;
        Either::Right(Box::pin(async move {
            Ok(watch_active(api, request, max_request_bytes)
                .await
                .unwrap_or_else(Status::into_http))
        }))
    }
}

/// Decodes the request, calls the handler, and answers with its stream.
async fn watch_active(
    api: BundleApi,
    request: http::Request<Body>,
    max_request_bytes: usize,
) -> Result<http::Response<Body>, Status> {
    if let Some(encoding) = request.headers().get("grpc-encoding")
        && encoding != "identity"
    {
        return Err(Status::unimplemented(format!(
            "the request is compressed with {encoding:?}, which this server does not accept: \
             send it uncompressed"
        )));
    }
    let (parts, body) = request.into_parts();
    let decoder =
        CompactCodec::<WatchActiveResponse, proto::WatchActiveRequest>::default().decoder();
    let message = Streaming::new_request(decoder, body, None, Some(max_request_bytes))
        .message()
        .await?
        .ok_or_else(|| Error::invalid("request", "the call carries no request message"))?;
    let request = tonic::Request::from_http(http::Request::from_parts(parts, message));
    let (metadata, messages, _) = api.watch_active(request).await?.into_parts();
    let mut response = http::Response::new(Body::new(WatchBody::new(messages)));
    *response.headers_mut() = metadata.into_headers();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, GRPC_CONTENT_TYPE);
    Ok(response)
}

/// A response body that writes each message of `messages` as a
/// [`GrpcFrame`], then the stream's status as trailers.
pub struct WatchBody<M> {
    messages: M,
    /// What is left to write of the current message.
    sending: Option<GrpcFrame>,
    /// The trailers are out: nothing follows.
    finished: bool,
}

impl<M> WatchBody<M> {
    /// The body of a stream of `messages`.
    pub fn new(messages: M) -> Self {
        WatchBody {
            messages,
            sending: None,
            finished: false,
        }
    }
}

/// The trailers that end a stream with `status`.
fn trailers(status: &Status) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    if let Err(unwritable) = status.add_header(&mut trailers) {
        // A status whose metadata is not a valid header: say so instead.
        trailers.clear();
        unwritable
            .add_header(&mut trailers)
            .expect("tonic's own status is a valid header");
    }
    trailers
}

impl<M> http_body::Body for WatchBody<M>
where
    M: Stream<Item = Result<WatchActiveResponse, Status>> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if let Some(frame) = &mut this.sending {
                if let Some(piece) = frame.next() {
                    return Poll::Ready(Some(Ok(Frame::data(piece))));
                }
                this.sending = None;
            }
            if this.finished {
                return Poll::Ready(None);
            }
            let ending = match ready!(this.messages.poll_next_unpin(cx)) {
                Some(Ok(message)) => {
                    this.sending = Some(message.into_grpc_frame());
                    continue;
                }
                Some(Err(status)) => status,
                None => Status::ok(""),
            };
            this.finished = true;
            return Poll::Ready(Some(Ok(Frame::trailers(trailers(&ending)))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.sending.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use http_body_util::BodyExt;

    fn message(bundles: Vec<Bytes>) -> WatchActiveResponse {
        WatchActiveResponse {
            kind: crate::watch::MessageKind::Snapshot,
            revision: 7,
            reset: false,
            bundles,
            complete: true,
            checkpoint: None,
        }
    }

    #[test]
    fn the_route_takes_the_served_watch_method_and_nothing_else() {
        use super::super::proto::bundle_service_server::BundleServiceServer;
        let service = <BundleServiceServer<BundleApi> as NamedService>::NAME;
        let path = format!("/{service}/{WATCH_ACTIVE}");
        // A method the served descriptors declare, so a renamed one fails here.
        assert_eq!(
            crate::grpc::methods::classify(&path),
            (service, WATCH_ACTIVE)
        );
        assert!(is_watch_active(&path, service));
        for other in [
            format!("/{service}/GetActive"),
            format!("/{service}/WatchActiveX"),
            "/policyhub.v1.PolicyService/WatchActive".to_owned(),
            format!("{service}/{WATCH_ACTIVE}"),
        ] {
            assert!(!is_watch_active(&other, service), "{other}");
        }
    }

    #[test]
    fn after_a_large_message_the_stream_holds_none_of_it() {
        let large = Bytes::from(vec![3; 1 << 20]);
        // One message, then a stream that waits, as an idle watch does.
        let messages = futures::stream::iter([Ok(message(vec![large.clone()]))])
            .chain(futures::stream::pending());
        let mut body = WatchBody::new(messages);
        let mut written = 0;
        let mut shared = false;
        while let Some(frame) = body.frame().now_or_never() {
            let data = frame.unwrap().unwrap().into_data().unwrap();
            shared |= data.as_ptr() == large.as_ptr();
            written += data.len();
        }
        assert!(
            shared,
            "the bundle went out as the shared bytes, not a copy"
        );
        assert!(written > 1 << 20);
        assert!(body.sending.is_none());
        // Nothing but this test's own handle refers to the bundle any more.
        assert!(large.is_unique());
    }

    #[test]
    fn a_stream_ends_with_its_status_as_trailers() {
        let messages = futures::stream::iter([
            Ok(message(vec![])),
            Err(Status::unavailable("shutting down")),
        ]);
        let mut body = WatchBody::new(messages);
        let mut frames = Vec::new();
        while let Some(Some(frame)) = body.frame().now_or_never() {
            frames.push(frame.unwrap());
        }
        let trailers = frames.pop().unwrap().into_trailers().unwrap();
        assert_eq!(trailers["grpc-status"], "14");
        assert_eq!(trailers["grpc-message"], "shutting%20down");
        assert!(frames.iter().all(Frame::is_data));
        assert!(http_body::Body::is_end_stream(&body));
    }
}
