//! `policyhub.v1.WatchActiveResponse`, encoded by hand.
//!
//! A watch message is mostly signed bundles, and the same bundle goes to
//! every subscriber of its namespace. The index encodes each bundle once
//! (`policyhub.v1.Bundle` bytes behind a `Bytes`), so fanning an
//! activation out to ten thousand streams encodes none again.
//! [`WatchActiveResponse::into_grpc_frame`] copies a message of at most
//! 16 KiB into one piece, which goes out as one HTTP/2 DATA frame, and
//! hands a larger one to the transport in pieces: the few bytes of the
//! message's own fields, then each bundle's bytes as they are, so a large
//! bundle is never copied (`super::bundle_route` writes the frames). Each
//! piece is a send of its own to the HTTP/2 stream, which waits for
//! flow-control capacity, so a large message puts its bundles last: one
//! large bundle is two pieces, not three (protobuf parsers take fields in
//! any order). On the wire it is the message `bundle_service.proto`
//! declares;
//! `build.rs` maps the protobuf name to this type, so clients decode it
//! with prost.

use prost::{
    DecodeError, Message,
    bytes::{Buf, BufMut, Bytes, BytesMut},
    encoding::{
        DecodeContext, WireType, bool as boolean, bytes, encode_key, encode_varint,
        encoded_len_varint, int32, key_len, skip_field, uint64,
    },
};

use super::proto::{Bundle, WatchEventKind};
use crate::watch::{MessageKind, WatchMessage};

/// The message of a watch stream: the watch produces it as it goes on the
/// wire, and this module encodes it.
pub type WatchActiveResponse = WatchMessage;

impl WatchMessage {
    /// The message kind, as the protocol names it.
    pub fn kind(&self) -> WatchEventKind {
        WatchEventKind::try_from(self.kind as i32).unwrap_or(WatchEventKind::Unspecified)
    }

    /// The bundles, decoded.
    pub fn decode_bundles(&self) -> Result<Vec<Bundle>, DecodeError> {
        self.bundles
            .iter()
            .map(|bundle| Bundle::decode(bundle.clone()))
            .collect()
    }
}

impl WatchMessage {
    /// The fields written before the bundles.
    fn encode_head(&self, buf: &mut impl BufMut) {
        if self.kind != MessageKind::Unspecified {
            int32::encode(1, &(self.kind as i32), buf);
        }
        if self.revision != 0 {
            uint64::encode(2, &self.revision, buf);
        }
        if self.reset {
            boolean::encode(3, &self.reset, buf);
        }
    }

    /// The fields written after the bundles.
    fn encode_tail(&self, buf: &mut impl BufMut) {
        if self.complete {
            boolean::encode(5, &self.complete, buf);
        }
        if let Some(checkpoint) = &self.checkpoint {
            bytes::encode(6, checkpoint, buf);
        }
    }

    /// This message as one gRPC length-prefixed frame: in one piece when
    /// it is at most [`COPIED_UP_TO`] bytes, else in pieces that reference
    /// the bundles' shared bytes instead of copying them.
    pub fn into_grpc_frame(self) -> GrpcFrame {
        let length = self.encoded_len();
        let prefix_length =
            u32::try_from(length).expect("a watch message is split into parts of at most 4 MiB");
        if GRPC_PREFIX_LEN + length <= COPIED_UP_TO {
            let mut whole = BytesMut::with_capacity(GRPC_PREFIX_LEN + length);
            put_grpc_prefix(&mut whole, prefix_length);
            self.encode_raw(&mut whole);
            return GrpcFrame {
                head_len: whole.len(),
                own: whole.freeze(),
                bundles: Vec::new().into_iter(),
                bundle_next: false,
            };
        }
        let bundles_length: usize = self.bundles.iter().map(Bytes::len).sum();
        let mut own = BytesMut::with_capacity(GRPC_PREFIX_LEN + length - bundles_length);
        put_grpc_prefix(&mut own, prefix_length);
        self.encode_head(&mut own);
        self.encode_tail(&mut own);
        let head_len = own.len();
        for bundle in &self.bundles {
            encode_key(4, WireType::LengthDelimited, &mut own);
            encode_varint(bundle.len() as u64, &mut own);
        }
        debug_assert_eq!(own.len() + bundles_length, GRPC_PREFIX_LEN + length);
        GrpcFrame {
            own: own.freeze(),
            head_len,
            bundles: self.bundles.into_iter(),
            bundle_next: false,
        }
    }
}

/// The compression flag and the length in front of every gRPC message.
pub const GRPC_PREFIX_LEN: usize = 5;

/// Writes the prefix of an uncompressed gRPC message of `length` bytes.
pub fn put_grpc_prefix(buf: &mut impl BufMut, length: u32) {
    buf.put_u8(0); // not compressed
    buf.put_u32(length);
}

/// The largest frame sent copied into one piece (HTTP/2's default largest
/// DATA frame): each piece is a send and a DATA frame of its own, which
/// costs the server and the runtime more than copying a small bundle once
/// per stream; a larger bundle costs more to copy than to send as it is.
const COPIED_UP_TO: usize = 16 * 1024;

/// One watch message on the wire, whole or handed out piece by piece: the
/// bytes of the message's own fields (one small allocation, sliced), and
/// between them each bundle's shared bytes as they are. Once every piece is
/// out, nothing of the message is left here.
#[derive(Debug)]
pub struct GrpcFrame {
    /// The prefix, the fields, each bundle's key and length, in wire order.
    own: Bytes,
    /// The prefix and every field but the bundles.
    head_len: usize,
    /// The bundles not yet handed out.
    bundles: std::vec::IntoIter<Bytes>,
    /// Whether the next piece is a bundle (its key and length are out).
    bundle_next: bool,
}

impl Iterator for GrpcFrame {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.bundle_next {
            self.bundle_next = false;
            return self.bundles.next();
        }
        if self.own.is_empty() {
            return None;
        }
        // Up to and including the next bundle's key and length, or the rest.
        let length = match self.bundles.as_slice().first() {
            Some(bundle) => {
                self.bundle_next = true;
                std::mem::take(&mut self.head_len)
                    + key_len(4)
                    + encoded_len_varint(bundle.len() as u64)
            }
            None => self.own.len(),
        };
        Some(self.own.split_to(length))
    }
}

impl Message for WatchMessage {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.encode_head(buf);
        for bundle in &self.bundles {
            bytes::encode(4, bundle, buf);
        }
        self.encode_tail(buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => {
                let mut number = 0;
                int32::merge(wire_type, &mut number, buf, ctx)?;
                // A kind newer than this code reads as unspecified.
                self.kind = MessageKind::from_wire(number).unwrap_or_default();
                Ok(())
            }
            2 => uint64::merge(wire_type, &mut self.revision, buf, ctx),
            3 => boolean::merge(wire_type, &mut self.reset, buf, ctx),
            4 => {
                let mut bundle = Bytes::new();
                bytes::merge(wire_type, &mut bundle, buf, ctx)?;
                self.bundles.push(bundle);
                Ok(())
            }
            5 => boolean::merge(wire_type, &mut self.complete, buf, ctx),
            6 => {
                let checkpoint = self.checkpoint.get_or_insert_default();
                bytes::merge(wire_type, checkpoint, buf, ctx)
            }
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let mut length = 0;
        if self.kind != MessageKind::Unspecified {
            length += int32::encoded_len(1, &(self.kind as i32));
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
        if let Some(checkpoint) = &self.checkpoint {
            length += bytes::encoded_len(6, checkpoint);
        }
        length
            + self
                .bundles
                .iter()
                .map(|bundle| bytes::encoded_len(4, bundle))
                .sum::<usize>()
    }

    fn clear(&mut self) {
        *self = WatchMessage::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::proto::Checkpoint;

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
        #[prost(message, optional, tag = "6")]
        checkpoint: Option<Checkpoint>,
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
        let checkpoint = Checkpoint {
            jws: "h.p.s".into(),
            revision: 9,
            last_event_id: 40,
            chain_head: "sha256:00".into(),
            ..Checkpoint::default()
        };
        let generated = Generated {
            kind: WatchEventKind::Update as i32,
            revision: 9,
            reset: true,
            bundles: bundles.clone(),
            complete: true,
            checkpoint: Some(checkpoint.clone()),
        };
        let hand_written = WatchActiveResponse {
            kind: MessageKind::Update,
            revision: 9,
            reset: true,
            bundles: bundles
                .iter()
                .map(|bundle| Bytes::from(bundle.encode_to_vec()))
                .collect(),
            complete: true,
            checkpoint: Some(Bytes::from(checkpoint.encode_to_vec())),
        };
        assert_eq!(hand_written.encode_to_vec(), generated.encode_to_vec());
        assert_eq!(hand_written.encoded_len(), generated.encoded_len());
        let decoded = WatchActiveResponse::decode(generated.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, hand_written);
        assert_eq!(decoded.decode_bundles().unwrap(), bundles);
    }

    fn message_with(bundles: Vec<Bytes>, complete: bool) -> WatchActiveResponse {
        WatchActiveResponse {
            kind: MessageKind::Snapshot,
            revision: 300,
            reset: false,
            bundles,
            complete,
            checkpoint: Some(Bytes::from_static(b"a checkpoint")),
        }
    }

    #[test]
    fn a_grpc_frame_is_the_length_prefix_and_the_encoded_message() {
        for message in [
            message_with(vec![], true),
            message_with(vec![], false),
            message_with(vec![Bytes::from_static(b"one")], true),
            message_with(
                vec![
                    Bytes::from(vec![7; 200]),
                    Bytes::new(),
                    Bytes::from(vec![9; 70_000]),
                ],
                false,
            ),
        ] {
            let encoded = message.encode_to_vec();
            let copied = GRPC_PREFIX_LEN + encoded.len() <= COPIED_UP_TO;
            let wire: Vec<u8> = message.clone().into_grpc_frame().flatten().collect();
            assert_eq!(wire[0], 0);
            assert_eq!(wire[1..5], (encoded.len() as u32).to_be_bytes());
            assert_eq!(wire.len(), GRPC_PREFIX_LEN + encoded.len());
            assert_eq!(WatchActiveResponse::decode(&wire[5..]).unwrap(), message);
            if copied {
                // Copied whole: exactly prost's order of fields.
                assert_eq!(wire[5..], encoded);
            }
        }
    }

    #[test]
    fn a_small_grpc_frame_is_one_piece() {
        let pieces = |bundle_len| {
            let bundle = Bytes::from(vec![5; bundle_len]);
            message_with(vec![bundle], true).into_grpc_frame().count()
        };
        assert_eq!(pieces(2_500), 1);
        // The largest bundle whose frame is at most COPIED_UP_TO bytes, and
        // one more.
        let largest = (0..COPIED_UP_TO)
            .rev()
            .find(|&len| {
                let message = message_with(vec![Bytes::from(vec![5; len])], true);
                GRPC_PREFIX_LEN + message.encoded_len() <= COPIED_UP_TO
            })
            .unwrap();
        assert_eq!(pieces(largest), 1);
        assert_eq!(pieces(largest + 1), 2);
    }

    #[test]
    fn a_grpc_frame_hands_out_the_shared_bundle_bytes_without_copying_them() {
        let large = Bytes::from(vec![1; 1 << 20]);
        let small = Bytes::from(vec![2; 100]);
        let frame = message_with(vec![large.clone(), small.clone()], true).into_grpc_frame();
        let pieces: Vec<Bytes> = frame.collect();
        // fields and key, bundle, key, bundle
        assert_eq!(pieces.len(), 4);
        assert_eq!(pieces[1].as_ptr(), large.as_ptr());
        assert_eq!(pieces[3].as_ptr(), small.as_ptr());
        let own: usize = [0, 2].iter().map(|&index| pieces[index].len()).sum();
        assert!(own < 48, "the message's own bytes are {own}");
    }
}
