//! WatchActive over Server-Sent Events
//! (docs/src/contributing/design.md#transports): the gRPC stream's messages,
//! read as they come, become one event per whole revision (its parts joined),
//! whose `id` is the revision, so that an `EventSource` reconnecting with
//! `Last-Event-ID` resumes without missing a change. PROGRESS messages are
//! comments, which keep the connection alive and tell the revision without
//! moving the resume point; one that brings a newer signed checkpoint adds a
//! `checkpoint` event without an id, which leaves the resume point where it
//! was. A stream that ends with an error says so in a last `error` event.

use std::convert::Infallible;

use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use prost::bytes::{Buf, Bytes, BytesMut};
use prost_reflect::{DynamicMessage, MessageDescriptor};
use serde_json::{Value, json};
use tonic::Status;

use super::status::{message_json, status_json};
use crate::grpc::watch_message::WatchActiveResponse;
use crate::watch::MessageKind;

/// The whole revisions of a WatchActive response body, its parts joined.
pub struct Revisions {
    body: tonic::body::Body,
    /// Bytes of the gRPC stream not yet a whole message.
    buffer: BytesMut,
    /// The parts of a revision so far.
    pending: Option<WatchActiveResponse>,
    ended: bool,
}

impl Revisions {
    /// The revisions of `body`.
    pub fn new(body: tonic::body::Body) -> Self {
        Revisions {
            body,
            buffer: BytesMut::new(),
            pending: None,
            ended: false,
        }
    }

    /// The next whole revision (a PROGRESS is one), the status the stream
    /// ended with, or `None` at its end.
    pub async fn next(&mut self) -> Option<Result<WatchActiveResponse, Status>> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(message) = self.take_message() {
                if let Some(whole) = self.join(message) {
                    return Some(Ok(whole));
                }
                continue;
            }
            match self.body.frame().await {
                None => self.ended = true,
                Some(Err(status)) => {
                    self.ended = true;
                    return Some(Err(status));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buffer.extend_from_slice(&data),
                    Err(frame) => {
                        self.ended = true;
                        let trailers = frame.into_trailers().unwrap_or_default();
                        if let Some(status) = Status::from_header_map(&trailers)
                            && status.code() != tonic::Code::Ok
                        {
                            return Some(Err(status));
                        }
                    }
                },
            }
        }
    }

    /// A whole message from the buffer, if one has arrived.
    fn take_message(&mut self) -> Option<WatchActiveResponse> {
        if self.buffer.len() < 5 {
            return None;
        }
        let length = u32::from_be_bytes(self.buffer[1..5].try_into().ok()?) as usize;
        if self.buffer.len() < 5 + length {
            return None;
        }
        self.buffer.advance(5);
        let message = self.buffer.split_to(length).freeze();
        match WatchActiveResponse::decode(message) {
            Ok(message) => Some(message),
            Err(error) => {
                tracing::warn!(%error, "a watch message does not decode");
                self.ended = true;
                None
            }
        }
    }

    /// The revision `message` completes, if it is its last part.
    fn join(&mut self, message: WatchActiveResponse) -> Option<WatchActiveResponse> {
        let complete = message.complete;
        let whole = match self.pending.take() {
            Some(mut pending) => {
                pending.bundles.extend(message.bundles);
                pending.complete = complete;
                pending.checkpoint = message.checkpoint;
                pending
            }
            None => message,
        };
        if complete {
            return Some(whole);
        }
        self.pending = Some(whole);
        None
    }
}

/// The events of a WatchActive response body.
pub fn stream(
    body: tonic::body::Body,
    bundle: MessageDescriptor,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
    let state = (Revisions::new(body), None::<Bytes>);
    futures::stream::unfold(Some(state), move |state| {
        let bundle = bundle.clone();
        async move {
            let (mut revisions, mut shown) = state?;
            let (text, more) = match revisions.next().await? {
                Ok(whole) => (event(&whole, &bundle, &mut shown), true),
                Err(status) => (error_event(&status), false),
            };
            Some((
                Ok(Frame::data(Bytes::from(text))),
                more.then_some((revisions, shown)),
            ))
        }
    })
}

/// A checkpoint as JSON, in the protobuf JSON mapping.
fn checkpoint_json(encoded: &Bytes, bundle: &MessageDescriptor) -> Option<Value> {
    let descriptor = bundle
        .parent_pool()
        .get_message_by_name("policyhub.v1.Checkpoint")?;
    let decoded = DynamicMessage::decode(descriptor, encoded.clone()).ok()?;
    Some(message_json(&decoded))
}

/// The text of a whole revision: a comment for a PROGRESS (followed by a
/// `checkpoint` event without an id when it carries a checkpoint not shown
/// yet), else an event whose id is the revision. `shown` is the last
/// checkpoint this stream showed.
fn event(
    whole: &WatchActiveResponse,
    bundle: &MessageDescriptor,
    shown: &mut Option<Bytes>,
) -> String {
    let fresh = whole
        .checkpoint
        .as_ref()
        .filter(|checkpoint| Some(*checkpoint) != shown.as_ref());
    let checkpoint = whole
        .checkpoint
        .as_ref()
        .and_then(|encoded| checkpoint_json(encoded, bundle));
    if whole.kind == MessageKind::Progress {
        let mut text = format!(": progress {}\n\n", whole.revision);
        if fresh.is_some()
            && let Some(json) = &checkpoint
        {
            text.push_str(&format!("event: checkpoint\ndata: {json}\n\n"));
        }
        shown.clone_from(&whole.checkpoint);
        return text;
    }
    shown.clone_from(&whole.checkpoint);
    let bundles: Vec<Value> = whole
        .bundles
        .iter()
        .filter_map(|encoded| DynamicMessage::decode(bundle.clone(), encoded.clone()).ok())
        .map(|decoded| message_json(&decoded))
        .collect();
    let (name, kind) = match whole.kind {
        MessageKind::Snapshot => ("snapshot", "WATCH_EVENT_KIND_SNAPSHOT"),
        _ => ("update", "WATCH_EVENT_KIND_UPDATE"),
    };
    let data = json!({
        "kind": kind,
        "revision": whole.revision.to_string(),
        "reset": whole.reset,
        "bundles": bundles,
        "checkpoint": checkpoint,
    });
    format!("id: {}\nevent: {name}\ndata: {data}\n\n", whole.revision)
}

/// The last event of a stream that ended with an error.
fn error_event(status: &Status) -> String {
    format!("event: error\ndata: {}\n\n", status_json(status))
}
