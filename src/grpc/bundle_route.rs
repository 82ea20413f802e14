//! `BundleService.WatchActive` and `BundleService.GetActive` written to
//! the transport without tonic's response encoder.
//!
//! tonic encodes every message of a response into a buffer the call owns.
//! A watch stream keeps that buffer at the largest size it ever reached:
//! measured, an idle watch stream held 108 KiB after one 64 KiB snapshot,
//! which with 1 MiB policies and ten thousand runtimes is over 10 GiB held
//! by streams doing nothing. And every reply copies its bundle into it:
//! once per subscriber per update, and once per GetActive call, after
//! converting the bundle to its protobuf type anew.
//!
//! This route serves the two methods itself: the request is decoded by
//! tonic's decoder and the handler is [`BundleApi`]'s. A watch message of
//! at most 16 KiB goes out copied into one frame; a larger one in pieces:
//! the index's shared bundle bytes as they are (encoded once per version),
//! between the few bytes of the message's own fields. A GetActive reply is
//! those bytes and the checkpoint's field, copied once into one frame.
//! Once a message is out, the call holds nothing of it; an idle stream is
//! its subscriber's cursor and the HTTP/2 stream. The authentication
//! interceptor, the metrics layer and the trace span wrap this route as
//! they wrap every other method.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use futures::{
    Stream, StreamExt, TryStreamExt,
    future::{BoxFuture, Either},
};
use http::header::CONTENT_TYPE;
use http_body::Frame;
use prost::bytes::{BufMut, Bytes, BytesMut};
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
use super::proto::bundle_service_server::BundleService;
use super::watch_message::{GRPC_PREFIX_LEN, WatchActiveResponse, put_grpc_prefix};
use crate::domain::Error;

/// The methods this route serves, within the service it wraps; every other
/// request goes to that service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    WatchActive,
    GetActive,
}

impl Served {
    const ALL: [Served; 2] = [Served::WatchActive, Served::GetActive];

    fn name(self) -> &'static str {
        match self {
            Served::WatchActive => "WatchActive",
            Served::GetActive => "GetActive",
        }
    }

    /// The method `path` names when it is `/<service>/<method>` of the
    /// service named `service` and one served here.
    fn of(path: &str, service: &str) -> Option<Served> {
        let method = path
            .strip_prefix('/')?
            .strip_prefix(service)?
            .strip_prefix('/')?;
        Served::ALL
            .into_iter()
            .find(|served| served.name() == method)
    }
}

/// `BundleService` with `WatchActive` and `GetActive` served here.
#[derive(Clone)]
pub struct BundleRoute<S> {
    /// The generated service, for every other method.
    inner: S,
    /// Shared: tonic's router clones the route for every call, and a call
    /// takes its own handle, so each is one reference count, not a copy of
    /// the hub's handles.
    api: Arc<BundleApi>,
    /// The largest request message accepted, as the generated service has.
    max_request_bytes: usize,
}

impl<S> BundleRoute<S> {
    /// `inner` with its `WatchActive` and `GetActive` answered by `api`
    /// here.
    pub fn new(inner: S, api: BundleApi, max_request_bytes: usize) -> Self {
        BundleRoute {
            inner,
            api: Arc::new(api),
            max_request_bytes,
        }
    }
}

impl<S: NamedService> NamedService for BundleRoute<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for BundleRoute<S>
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
        let Some(served) = Served::of(request.uri().path(), S::NAME) else {
            return Either::Left(self.inner.call(request));
        };
        let api = self.api.clone();
        let max_request_bytes = self.max_request_bytes;
        Either::Right(Box::pin(async move {
            let response = match served {
                Served::WatchActive => watch_active(api, request, max_request_bytes).await,
                Served::GetActive => get_active(api, request, max_request_bytes).await,
            };
            Ok(response.unwrap_or_else(Status::into_http))
        }))
    }
}

/// The one request message of a call, decoded as the generated service
/// would.
async fn request_message<M>(
    request: http::Request<Body>,
    max_request_bytes: usize,
) -> Result<tonic::Request<M>, Status>
where
    M: prost::Message + Default + Send + 'static,
{
    if let Some(encoding) = request.headers().get("grpc-encoding")
        && encoding != "identity"
    {
        return Err(Status::unimplemented(format!(
            "the request is compressed with {encoding:?}, which this server does not accept: \
             send it uncompressed"
        )));
    }
    let (parts, body) = request.into_parts();
    let decoder = CompactCodec::<WatchActiveResponse, M>::default().decoder();
    let message = Streaming::new_request(decoder, body, None, Some(max_request_bytes))
        .message()
        .await?
        .ok_or_else(|| Error::invalid("request", "the call carries no request message"))?;
    Ok(tonic::Request::from_http(http::Request::from_parts(
        parts, message,
    )))
}

/// A gRPC response of `body` with `headers`.
fn response<B>(headers: http::HeaderMap, body: B) -> http::Response<Body>
where
    B: http_body::Body<Data = Bytes, Error = Status> + Send + 'static,
{
    let mut response = http::Response::new(Body::new(body));
    *response.headers_mut() = headers;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, GRPC_CONTENT_TYPE);
    response
}

/// Decodes the request, calls the handler, and answers with its stream.
async fn watch_active(
    api: Arc<BundleApi>,
    request: http::Request<Body>,
    max_request_bytes: usize,
) -> Result<http::Response<Body>, Status> {
    let request = request_message(request, max_request_bytes).await?;
    let (metadata, messages, _) = api.watch_active(request).await?.into_parts();
    let frames = messages.map_ok(WatchActiveResponse::into_grpc_frame);
    Ok(response(metadata.into_headers(), FramedBody::new(frames)))
}

/// Decodes the request, calls the handler, and answers with its reply as
/// one gRPC message in one buffer: the index's pieces copied once, where
/// tonic would convert, encode and copy. One data frame, not one per piece:
/// measured, writing the pieces as they are cost more per call than the
/// copy.
async fn get_active(
    api: Arc<BundleApi>,
    request: http::Request<Body>,
    max_request_bytes: usize,
) -> Result<http::Response<Body>, Status> {
    let request = request_message(request, max_request_bytes).await?;
    let pieces = api.active_reply(request).await?;
    let length: usize = pieces.iter().map(Bytes::len).sum();
    let mut message = BytesMut::with_capacity(GRPC_PREFIX_LEN + length);
    let prefix_length = u32::try_from(length).map_err(|_| {
        Status::resource_exhausted("the active bundle does not fit one gRPC message")
    })?;
    put_grpc_prefix(&mut message, prefix_length);
    for piece in &pieces {
        message.put_slice(piece);
    }
    let frame = std::iter::once(message.freeze());
    let body = FramedBody::new(futures::stream::iter([Ok(frame)]));
    Ok(response(http::HeaderMap::new(), body))
}

/// A response body that writes each message of `frames` piece by piece,
/// then the call's status as trailers.
pub struct FramedBody<M, F> {
    frames: M,
    /// What is left to write of the current message.
    sending: Option<F>,
    /// The trailers are out: nothing follows.
    finished: bool,
}

impl<M, F> FramedBody<M, F> {
    /// The body of a stream of `frames`.
    pub fn new(frames: M) -> Self {
        FramedBody {
            frames,
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

impl<M, F> http_body::Body for FramedBody<M, F>
where
    M: Stream<Item = Result<F, Status>> + Unpin,
    F: Iterator<Item = Bytes> + Unpin,
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
            let ending = match ready!(this.frames.poll_next_unpin(cx)) {
                Some(Ok(frame)) => {
                    this.sending = Some(frame);
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
    fn the_route_takes_the_served_methods_and_nothing_else() {
        use super::super::proto::bundle_service_server::BundleServiceServer;
        let service = <BundleServiceServer<BundleApi> as NamedService>::NAME;
        for served in Served::ALL {
            let path = format!("/{service}/{}", served.name());
            // A method the served descriptors declare, so a renamed one fails here.
            assert_eq!(
                crate::grpc::methods::classify(&path),
                (service, served.name())
            );
            assert_eq!(Served::of(&path, service), Some(served));
        }
        for other in [
            format!("/{service}/GetSigningKeys"),
            format!("/{service}/WatchActiveX"),
            format!("/{service}/GetActiv"),
            "/policyhub.v1.PolicyService/WatchActive".to_owned(),
            format!("{service}/WatchActive"),
        ] {
            assert_eq!(Served::of(&other, service), None, "{other}");
        }
    }

    #[test]
    fn after_a_large_message_the_stream_holds_none_of_it() {
        let large = Bytes::from(vec![3; 1 << 20]);
        // One message, then a stream that waits, as an idle watch does.
        let messages = futures::stream::iter([Ok(message(vec![large.clone()]))])
            .chain(futures::stream::pending());
        let mut body = FramedBody::new(messages.map_ok(WatchActiveResponse::into_grpc_frame));
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
        let mut body = FramedBody::new(messages.map_ok(WatchActiveResponse::into_grpc_frame));
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
