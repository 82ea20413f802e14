//! Requests marked in flight on their connection: the response body that
//! holds the mark, the gRPC port's layer and the hyper ports' HTTP/1.1
//! serving.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::{InFlight, Tracker};

/// A response body that keeps its request in flight until it ends or is
/// dropped.
pub struct Tracked<B> {
    body: B,
    _in_flight: Option<InFlight>,
}

impl<B> Tracked<B> {
    /// `body`, keeping `in_flight` (none: nothing to keep) until it is
    /// dropped.
    pub fn new(body: B, in_flight: Option<InFlight>) -> Self {
        Tracked {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Marks each gRPC request in flight on its connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrackLayer;

impl<S> tower_layer::Layer<S> for TrackLayer {
    type Service = TrackService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrackService { inner }
    }
}

/// See [`TrackLayer`].
#[derive(Clone, Debug)]
pub struct TrackService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for TrackService<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body<Data = hyper::body::Bytes> + Send + Unpin + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let in_flight = request.extensions().get::<Tracker>().map(Tracker::begin);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| tonic::body::Body::new(Tracked::new(body, in_flight))))
        })
    }
}

/// Serves HTTP/1.1 on `io`, each request marked in flight on `tracker`
/// until its response's body ends. Once `stop` is cancelled the request
/// under way, if any, is answered and the connection closes (at once when
/// it has none): hyper's graceful shutdown.
pub async fn serve_http1<IO, F, Fut, B>(
    io: IO,
    tracker: Tracker,
    stop: CancellationToken,
    handle: F,
) -> hyper::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let handle = Arc::new(handle);
    let service = hyper::service::service_fn(move |request| {
        let in_flight = tracker.begin();
        let handle = handle.clone();
        async move {
            let response = handle(request).await;
            Ok::<_, std::convert::Infallible>(
                response.map(|body| Tracked::new(body, Some(in_flight))),
            )
        }
    });
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => return served,
        () = stop.cancelled() => {}
    }
    connection.as_mut().graceful_shutdown();
    connection.await
}
