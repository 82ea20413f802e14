//! WatchActive over Server-Sent Events
//! (docs/src/contributing/design.md#transports), with curl as the
//! EventSource: whole revisions with their ids, heartbeats as comments, and a
//! resume by Last-Event-ID across a kill -9.

use std::process::Stdio;

use serde_json::Value;

use crate::helpers::{Backend, TestDatabase, spawn_on};
use crate::http::release_over_http_in;

/// One server-sent event, or a comment.
#[derive(Debug, Default)]
struct Event {
    id: Option<u64>,
    event: String,
    data: Value,
    comment: Option<String>,
}

/// An EventSource as curl plays it: the events of one connection, in order.
struct EventSource {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl EventSource {
    fn open(url: &str, last_event_id: Option<u64>) -> Self {
        let mut command = tokio::process::Command::new("curl");
        command.args(["-sN", "-H", "Accept: text/event-stream", url]);
        if let Some(last) = last_event_id {
            command.args(["-H", &format!("Last-Event-ID: {last}")]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run curl");
        let stdout = child.stdout.take().unwrap();
        let lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        EventSource { child, lines }
    }

    /// The next event or comment, within ten seconds.
    async fn next(&mut self) -> Event {
        let read = async {
            let mut event = Event::default();
            while let Some(line) = self.lines.next_line().await.expect("curl's output") {
                if line.is_empty() {
                    return event;
                }
                if let Some(comment) = line.strip_prefix(':') {
                    event.comment = Some(comment.trim().to_owned());
                } else if let Some((field, value)) = line.split_once(": ") {
                    match field {
                        "id" => event.id = value.parse().ok(),
                        "event" => event.event = value.to_owned(),
                        "data" => event.data = serde_json::from_str(value).expect("JSON data"),
                        _ => {}
                    }
                }
            }
            panic!("the event stream ended: {event:?}");
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("an event within ten seconds")
    }

    /// The next event that is not a comment.
    async fn next_event(&mut self) -> Event {
        loop {
            let event = self.next().await;
            if event.comment.is_none() {
                return event;
            }
        }
    }

    async fn close(mut self) {
        self.child.kill().await.ok();
    }
}

/// `(name, version)` of each bundle of an event.
fn bundles(event: &Event) -> Vec<(String, u64)> {
    event.data["bundles"]
        .as_array()
        .expect("bundles")
        .iter()
        .map(|bundle| {
            (
                bundle["name"].as_str().unwrap().to_owned(),
                bundle["version"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn release_over_http(address: std::net::SocketAddr, name: &str, max: u64) {
    release_over_http_in(address, "team", name, max);
}

/// WatchActive as Server-Sent Events: a snapshot, then one event per
/// revision with the revision as its id, heartbeats as comments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_is_a_stream_of_server_sent_events() {
    let app = spawn_on(TestDatabase::new(Backend::Sqlite).await, |settings| {
        settings.http_listen = Some("127.0.0.1:0".parse().unwrap());
        settings.watch.heartbeat_interval = std::time::Duration::from_millis(200);
    })
    .await;
    let address = app.http_address.unwrap();
    release_over_http(address, "limits", 1);
    let url = format!("http://{address}/v1/namespaces/team/active:watch");
    let mut source = EventSource::open(&url, None);
    let snapshot = source.next_event().await;
    assert_eq!(
        (snapshot.id, snapshot.event.as_str()),
        (Some(1), "snapshot")
    );
    assert_eq!(bundles(&snapshot), [("limits".to_owned(), 1)]);
    assert!(
        snapshot.data["bundles"][0]["jws"]
            .as_str()
            .is_some_and(|jws| jws.split('.').count() == 3),
        "the same verification data as the gRPC stream"
    );
    let heartbeat = source.next().await;
    assert_eq!(heartbeat.comment.as_deref(), Some("progress 1"));
    release_over_http(address, "other", 7);
    let update = source.next_event().await;
    assert_eq!((update.id, update.event.as_str()), (Some(2), "update"));
    assert_eq!(bundles(&update), [("other".to_owned(), 1)]);
    assert_eq!(
        update.data["checkpoint"]["revision"], "2",
        "the update carries its revision's signed checkpoint: {}",
        update.data
    );
    source.close().await;

    // Only what was asked for, as in gRPC.
    let mut limits_only = EventSource::open(&format!("{url}?names=limits"), None);
    assert_eq!(
        bundles(&limits_only.next_event().await),
        [("limits".to_owned(), 1)]
    );
    limits_only.close().await;
}

/// An EventSource that reconnects with Last-Event-ID after the server was
/// killed and restarted gets every change it missed, in one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_source_resumes_by_last_event_id_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc_port, http_port) = (crate::helpers::free_port(), crate::helpers::free_port());
    let start = || {
        let mut command = std::process::Command::new(crate::helpers::policyhub_binary());
        command
            .args(crate::helpers::serve_args(grpc_port, dir.path()))
            .args(["--http-listen", &format!("127.0.0.1:{http_port}")]);
        crate::helpers::start_serving(command, grpc_port)
    };
    let address: std::net::SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let (mut server, _) = start().await;
    release_over_http(address, "limits", 1);
    let url = format!("http://{address}/v1/namespaces/team/active:watch");
    let mut source = EventSource::open(&url, None);
    let last = source.next_event().await.id.expect("an id");
    assert_eq!(last, 1);

    server.kill().unwrap();
    server.wait().unwrap();
    source.close().await;
    let (mut server, _) = start().await;
    release_over_http(address, "limits", 2);
    release_over_http(address, "other", 3);
    let mut resumed = EventSource::open(&url, Some(last));
    let caught_up = resumed.next_event().await;
    assert_eq!(
        (caught_up.id, caught_up.event.as_str()),
        (Some(3), "update")
    );
    let mut missed = bundles(&caught_up);
    missed.sort();
    assert_eq!(
        missed,
        [("limits".to_owned(), 2), ("other".to_owned(), 1)],
        "everything since revision 1, nothing before"
    );
    release_over_http(address, "limits", 4);
    let next = resumed.next_event().await;
    assert_eq!(
        (next.id, bundles(&next)),
        (Some(4), vec![("limits".to_owned(), 3)])
    );
    resumed.close().await;
    server.kill().unwrap();
    server.wait().unwrap();
}

/// A quiet SSE stream learns of each newer signed checkpoint from a
/// `checkpoint` event without an id, which leaves the resume point alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_sse_stream_shows_each_newer_checkpoint() {
    let app = spawn_on(TestDatabase::new(Backend::Sqlite).await, |settings| {
        settings.http_listen = Some("127.0.0.1:0".parse().unwrap());
        settings.watch.heartbeat_interval = std::time::Duration::from_millis(100);
        settings.audit.checkpoint_interval = std::time::Duration::from_millis(400);
    })
    .await;
    let address = app.http_address.unwrap();
    release_over_http(address, "limits", 1);
    let url = format!("http://{address}/v1/namespaces/team/active:watch");
    let mut source = EventSource::open(&url, None);
    let snapshot = source.next_event().await;
    assert_eq!(snapshot.id, Some(1));
    let shown = snapshot.data["checkpoint"]["time"].clone();
    let checkpoint = tokio::time::timeout(std::time::Duration::from_secs(5), source.next_event())
        .await
        .expect("a newer checkpoint within the interval");
    assert_eq!(
        (checkpoint.id, checkpoint.event.as_str()),
        (None, "checkpoint")
    );
    assert_eq!(checkpoint.data["revision"], "1");
    assert_ne!(checkpoint.data["time"], shown, "a newer one");
    assert_eq!(
        checkpoint.data["jws"]
            .as_str()
            .map(|jws| jws.split('.').count()),
        Some(3)
    );
    source.close().await;
}
