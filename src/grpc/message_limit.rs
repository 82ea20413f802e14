//! Refuses an oversized gRPC message from its length prefix, before its body
//! is read, with RESOURCE_EXHAUSTED.
//!
//! tonic's own limit answers OUT_OF_RANGE; this layer sits in front of it and
//! answers the way every other limit of policyhub does. It watches the
//! 5-byte prefix of each message in the request body as the bytes stream by,
//! holding nothing but that prefix.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http_body::{Body as HttpBody, Frame};
use prost::bytes::{Buf, Bytes};
use tonic::{Status, body::Body};

use crate::domain::Error;
use tower_layer::Layer;
use tower_service::Service;

/// Layer that limits the size of each request message.
#[derive(Debug, Clone, Copy)]
pub struct MessageLimitLayer {
    /// Largest encoded message, in bytes.
    pub limit: usize,
}

impl<S> Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageLimit {
            inner,
            limit: self.limit,
        }
    }
}

/// The service of [`MessageLimitLayer`].
#[derive(Debug, Clone)]
pub struct MessageLimit<S> {
    inner: S,
    limit: usize,
}

impl<S> Service<http::Request<Body>> for MessageLimit<S>
where
    S: Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let body = Body::new(LimitedBody {
            inner: body,
            limit: self.limit,
            prefix: Vec::with_capacity(5),
            message_left: 0,
        });
        self.inner.call(http::Request::from_parts(parts, body))
    }
}

/// A request body that fails as soon as a message prefix announces more
/// than `limit` bytes.
struct LimitedBody {
    inner: Body,
    limit: usize,
    /// The bytes of the current message prefix seen so far.
    prefix: Vec<u8>,
    /// Bytes of the current message still to pass.
    message_left: usize,
}

impl LimitedBody {
    fn check(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.message_left > 0 {
                let skipped = self.message_left.min(data.len());
                self.message_left -= skipped;
                data.advance(skipped);
                continue;
            }
            let needed = 5 - self.prefix.len();
            let taken = needed.min(data.len());
            self.prefix.extend_from_slice(&data[..taken]);
            data.advance(taken);
            if self.prefix.len() == 5 {
                let length = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]) as usize;
                self.prefix.clear();
                if length > self.limit {
                    return Err(Error::TooLarge(format!(
                        "the request message is {length} bytes, over the limit of {} bytes \
                         (twice limits.max_body_bytes plus 64 KiB)",
                        self.limit
                    ))
                    .into());
                }
                self.message_left = length;
            }
        }
        Ok(())
    }
}

impl HttpBody for LimitedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(context) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let data = data.clone();
            if let Err(status) = self.check(&data) {
                return Poll::Ready(Some(Err(status)));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(limit: usize) -> LimitedBody {
        LimitedBody {
            inner: Body::empty(),
            limit,
            prefix: Vec::new(),
            message_left: 0,
        }
    }

    fn message(length: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend(std::iter::repeat_n(7u8, length as usize));
        bytes
    }

    #[test]
    fn messages_within_the_limit_pass_in_any_chunking() {
        let stream: Vec<u8> = [message(10), message(3)].concat();
        for chunk in [1, 2, 5, 7, stream.len()] {
            let mut limited = body(10);
            for piece in stream.chunks(chunk) {
                limited.check(piece).unwrap();
            }
        }
    }

    #[test]
    fn an_oversized_prefix_is_refused_before_its_body() {
        let mut limited = body(10);
        let status = limited.check(&[0, 0, 0, 0, 11]).unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    }
}
