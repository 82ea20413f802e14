//! What a subscription says of a server that answers a watch in one way
//! or another, a server here that answers every call alike: with its
//! response headers (the stream is open, then ends), or with a status and
//! no headers (a trailers-only refusal).

use std::{
    collections::BTreeSet,
    convert::Infallible,
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Stream, StreamExt};
use tokio::sync::oneshot;
use tonic::{
    body::Body,
    codegen::{Service, http, tokio_stream::wrappers::TcpListenerStream},
};

use crate::cache::{Cache, tests::signed_state};
use crate::event::{Event, WatchError};
use crate::subscription::Subscription;

/// Answers every call alike, and counts them.
#[derive(Clone)]
struct Answering {
    /// Response headers (the call is open), or a status alone.
    headers: bool,
    calls: Arc<AtomicUsize>,
}

impl Service<http::Request<Body>> for Answering {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<Body>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let response = if self.headers {
            // Headers, then a body that ends without trailers.
            http::Response::builder()
                .header("content-type", "application/grpc")
                .body(Body::empty())
                .unwrap()
        } else {
            tonic::Status::unavailable("the database is away").into_http()
        };
        std::future::ready(Ok(response))
    }
}

impl tonic::server::NamedService for Answering {
    const NAME: &'static str = "policyhub.v1.BundleService";
}

/// A server answering as `answering` does, its address, and what stops it.
async fn serve(answering: Answering) -> (String, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(answering)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                stopped.await.ok();
            }),
    );
    (address, stop)
}

/// A subscription of `payments` at `address` whose cache holds a verified
/// state and its keys, so that it asks the server for nothing but the
/// watch; a short backoff.
async fn cached_subscription(address: &str, cache: &std::path::Path) -> Subscription {
    let (state, jwks) = signed_state(3);
    Cache::new(cache, "payments", &[])
        .save(&state, &jwks, &BTreeSet::new())
        .await
        .unwrap();
    Subscription::new(address, "payments")
        .cache_dir(cache)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .max_checkpoint_age(None)
}

/// The next event, within 20 s.
async fn next(events: &mut (impl Stream<Item = Result<Event, WatchError>> + Unpin)) -> Event {
    tokio::time::timeout(Duration::from_secs(20), events.next())
        .await
        .expect("an event within 20 s")
        .expect("the stream goes on")
        .expect("no permanent failure")
}

fn calls() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

#[tokio::test]
async fn a_watch_refused_before_the_server_answers_or_a_server_gone_is_no_connection() {
    let answering = Answering {
        headers: false,
        calls: calls(),
    };
    let (address, stop) = serve(answering.clone()).await;
    let cache = tempfile::tempdir().unwrap();
    let subscription = cached_subscription(&address, cache.path()).await;
    let mut events = pin!(subscription.events());
    assert!(matches!(next(&mut events).await, Event::FromCache(_)));
    for _ in 0..3 {
        let event = next(&mut events).await;
        let Event::Disconnected { reason, .. } = event else {
            panic!("{event:?} after a watch refused before any headers");
        };
        assert!(reason.contains("the database is away"), "{reason}");
    }
    assert!(answering.calls.load(Ordering::SeqCst) >= 3);
    // The server gone: every attempt fails, none is a connection.
    stop.send(()).unwrap();
    for _ in 0..3 {
        let event = next(&mut events).await;
        assert!(
            matches!(event, Event::Disconnected { .. }),
            "{event:?} with the server gone"
        );
    }
}

#[tokio::test]
async fn a_watch_the_server_answers_is_connected() {
    let (address, _stop) = serve(Answering {
        headers: true,
        calls: calls(),
    })
    .await;
    let cache = tempfile::tempdir().unwrap();
    let subscription = cached_subscription(&address, cache.path()).await;
    let events: Vec<_> = subscription.events().take(3).collect().await;
    let events: Vec<Event> = events.into_iter().map(Result::unwrap).collect();
    assert!(matches!(events[0], Event::FromCache(_)), "{events:?}");
    assert_eq!(
        events[1],
        Event::Connected {
            revision: 7,
            endpoint: address
        }
    );
    assert!(
        matches!(events[2], Event::Disconnected { .. }),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_setting_that_cannot_be_followed_ends_the_stream_before_anything_connects() {
    let answering = Answering {
        headers: true,
        calls: calls(),
    };
    let (address, _stop) = serve(answering.clone()).await;
    let cache = tempfile::tempdir().unwrap();
    let subscription = cached_subscription(&address, cache.path())
        .await
        .heartbeat_interval(Duration::ZERO);
    let events: Vec<_> = subscription.events().collect().await;
    let [Err(WatchError::Config(message))] = &events[..] else {
        panic!("{events:?}");
    };
    assert_eq!(message, "heartbeat_interval must be at least 1ms, got 0ns");
    assert_eq!(
        answering.calls.load(Ordering::SeqCst),
        0,
        "nothing was asked of the server"
    );
}
