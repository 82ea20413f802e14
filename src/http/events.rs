//! WatchActive over Server-Sent Events (DESIGN §11): the gRPC stream's
//! messages, read as they come, become one event per whole revision (its
//! parts joined), whose `id` is the revision, so that an `EventSource`
//! reconnecting with `Last-Event-ID` resumes without missing a change.
//! PROGRESS messages are comments, which keep the connection alive and
//! tell the revision without moving the resume point. A stream that ends
//! with an error says so in a last `error` event.

use std::convert::Infallible;

use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use prost::bytes::{Buf, Bytes, BytesMut};
use prost_reflect::{DynamicMessage, MessageDescriptor};
use serde_json::{Value, json};
use tonic::Status;

use super::status::status_json;
use crate::grpc::watch_message::WatchActiveResponse;
use crate::watch::MessageKind;

/// The state of one event stream.
struct Events {
    body: tonic::body::Body,
    /// Bytes of the gRPC stream not yet a whole message.
    buffer: BytesMut,
    /// The parts of a revision so far.
    pending: Option<WatchActiveResponse>,
    /// `policyhub.v1.Bundle`, to print bundles in the JSON mapping.
    bundle: MessageDescriptor,
    ended: bool,
}

/// The events of a WatchActive response body.
pub fn stream(
    body: tonic::body::Body,
    bundle: MessageDescriptor,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
    let events = Events {
        body,
        buffer: BytesMut::new(),
        pending: None,
        bundle,
        ended: false,
    };
    futures::stream::unfold(events, |mut events| async move {
        let text = events.next().await?;
        Some((Ok(Frame::data(Bytes::from(text))), events))
    })
}

impl Events {
    /// The next event's text; `None` once the stream has ended.
    async fn next(&mut self) -> Option<String> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(message) = self.take_message() {
                if let Some(text) = self.event(message) {
                    return Some(text);
                }
                continue;
            }
            match self.body.frame().await {
                None => self.ended = true,
                Some(Err(status)) => {
                    self.ended = true;
                    return Some(error_event(&status));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buffer.extend_from_slice(&data),
                    Err(frame) => {
                        self.ended = true;
                        let trailers = frame.into_trailers().unwrap_or_default();
                        if let Some(status) = Status::from_header_map(&trailers)
                            && status.code() != tonic::Code::Ok
                        {
                            return Some(error_event(&status));
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

    /// The text for `message`: a comment for a PROGRESS, an event once a
    /// revision is whole, nothing for a part before its last.
    fn event(&mut self, message: WatchActiveResponse) -> Option<String> {
        if message.kind == MessageKind::Progress {
            return Some(format!(": progress {}\n\n", message.revision));
        }
        let complete = message.complete;
        let whole = match self.pending.take() {
            Some(mut pending) => {
                pending.bundles.extend(message.bundles);
                pending.complete = complete;
                pending
            }
            None => message,
        };
        if !complete {
            self.pending = Some(whole);
            return None;
        }
        let bundles: Vec<Value> = whole
            .bundles
            .iter()
            .filter_map(|bundle| DynamicMessage::decode(self.bundle.clone(), bundle.clone()).ok())
            .filter_map(|bundle| serde_json::to_value(&bundle).ok())
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
        });
        Some(format!(
            "id: {}\nevent: {name}\ndata: {data}\n\n",
            whole.revision
        ))
    }
}

/// The last event of a stream that ended with an error.
fn error_event(status: &Status) -> String {
    format!("event: error\ndata: {}\n\n", status_json(status))
}
