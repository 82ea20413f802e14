//! `policyhub.v1.WatchActiveResponse`, encoded by hand.
//!
//! A watch message is mostly signed bundles, and the same bundle goes to
//! every subscriber of its namespace. The index encodes each bundle once
//! (`policyhub.v1.Bundle` bytes behind a `Bytes`), and this message writes
//! those bytes as field 4 as they are, so fanning an activation out to ten
//! thousand streams copies no bundle and encodes none again. On the wire it
//! is exactly the message `bundle_service.proto` declares; `build.rs` maps
//! the protobuf name to this type.

use std::fmt;

use prost::{
    DecodeError, Message,
    bytes::{Buf, BufMut, Bytes},
    encoding::{DecodeContext, WireType, bool as boolean, bytes, int32, skip_field, uint64},
};

use super::proto::{Bundle, WatchEventKind};

/// One message of a watch stream.
#[derive(Clone, Default, PartialEq)]
pub struct WatchActiveResponse {
    /// `WatchEventKind` as its number.
    pub kind: i32,
    /// The server's revision once this message is applied.
    pub revision: u64,
    /// On a snapshot: the client must drop what it held.
    pub reset: bool,
    /// Each element is one encoded `policyhub.v1.Bundle`.
    pub bundles: Vec<Bytes>,
    /// False when more parts of the same revision follow.
    pub complete: bool,
}

impl WatchActiveResponse {
    /// The message kind.
    pub fn kind(&self) -> WatchEventKind {
        WatchEventKind::try_from(self.kind).unwrap_or(WatchEventKind::Unspecified)
    }

    /// The bundles, decoded.
    pub fn decode_bundles(&self) -> Result<Vec<Bundle>, DecodeError> {
        self.bundles
            .iter()
            .map(|bundle| Bundle::decode(bundle.clone()))
            .collect()
    }
}

impl fmt::Debug for WatchActiveResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchActiveResponse")
            .field("kind", &self.kind())
            .field("revision", &self.revision)
            .field("reset", &self.reset)
            .field("bundles", &self.bundles.len())
            .field("complete", &self.complete)
            .finish()
    }
}

impl Message for WatchActiveResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if self.kind != 0 {
            int32::encode(1, &self.kind, buf);
        }
        if self.revision != 0 {
            uint64::encode(2, &self.revision, buf);
        }
        if self.reset {
            boolean::encode(3, &self.reset, buf);
        }
        for bundle in &self.bundles {
            bytes::encode(4, bundle, buf);
        }
        if self.complete {
            boolean::encode(5, &self.complete, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => int32::merge(wire_type, &mut self.kind, buf, ctx),
            2 => uint64::merge(wire_type, &mut self.revision, buf, ctx),
            3 => boolean::merge(wire_type, &mut self.reset, buf, ctx),
            4 => {
                let mut bundle = Bytes::new();
                bytes::merge(wire_type, &mut bundle, buf, ctx)?;
                self.bundles.push(bundle);
                Ok(())
            }
            5 => boolean::merge(wire_type, &mut self.complete, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let mut length = 0;
        if self.kind != 0 {
            length += int32::encoded_len(1, &self.kind);
        }
        if self.revision != 0 {
            length += uint64::encoded_len(2, &self.revision);
        }
        if self.reset {
            length += boolean::encoded_len(3, &self.reset);
        }
        if self.complete {
            length += boolean::encoded_len(5, &self.complete);
        }
        length
            + self
                .bundles
                .iter()
                .map(|bundle| bytes::encoded_len(4, bundle))
                .sum::<usize>()
    }

    fn clear(&mut self) {
        *self = WatchActiveResponse::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What prost would generate for the declared message, to check that the
    /// hand-written encoding is the same on the wire.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Generated {
        #[prost(enumeration = "WatchEventKind", tag = "1")]
        kind: i32,
        #[prost(uint64, tag = "2")]
        revision: u64,
        #[prost(bool, tag = "3")]
        reset: bool,
        #[prost(message, repeated, tag = "4")]
        bundles: Vec<Bundle>,
        #[prost(bool, tag = "5")]
        complete: bool,
    }

    #[test]
    fn encodes_exactly_like_the_declared_message() {
        let bundles = vec![
            Bundle {
                namespace: "a".into(),
                name: "x".into(),
                version: 3,
                jws: "h.p.s".into(),
                revision: 9,
                ..Bundle::default()
            },
            Bundle {
                namespace: "a".into(),
                name: "y".into(),
                version: 1,
                ..Bundle::default()
            },
        ];
        let generated = Generated {
            kind: WatchEventKind::Update as i32,
            revision: 9,
            reset: true,
            bundles: bundles.clone(),
            complete: true,
        };
        let hand_written = WatchActiveResponse {
            kind: WatchEventKind::Update as i32,
            revision: 9,
            reset: true,
            bundles: bundles
                .iter()
                .map(|bundle| Bytes::from(bundle.encode_to_vec()))
                .collect(),
            complete: true,
        };
        assert_eq!(hand_written.encode_to_vec(), generated.encode_to_vec());
        assert_eq!(hand_written.encoded_len(), generated.encoded_len());
        let decoded = WatchActiveResponse::decode(generated.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, hand_written);
        assert_eq!(decoded.decode_bundles().unwrap(), bundles);
    }
}
