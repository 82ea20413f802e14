//! The protobuf codec of every service, with small per-stream buffers.
//!
//! tonic's default codec reserves 8 KiB buffers for every call up front.
//! Most requests and replies here are a few hundred bytes, so this codec
//! starts at 1 KiB and lets a buffer grow for large messages. (Watch streams
//! write their messages without an encode buffer: `bundle_route`.)
//!
//! A message that does not decode is the sender's fault: INVALID_ARGUMENT
//! saying so (prost's decoder answers INTERNAL, which gRPC reserves for
//! faults of the server).

use std::marker::PhantomData;

use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstCodec;

use crate::domain::{Error, MAX_JSON_DEPTH};

/// Initial encode/decode buffer of a stream.
const BUFFER_SIZE: usize = 1024;
/// tonic's default: how much a stream may buffer before yielding to the
/// transport.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// `ProstCodec` with `BUFFER_SIZE` buffers; `build.rs` makes every
/// generated service use it.
#[derive(Debug)]
pub struct CompactCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for CompactCodec<T, U> {
    fn default() -> Self {
        CompactCodec(PhantomData)
    }
}

impl<T, U> Codec for CompactCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = CheckedDecoder<<ProstCodec<T, U> as Codec>::Decoder>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder(ProstCodec::<T, U>::raw_decoder(BufferSettings::new(
            BUFFER_SIZE,
            YIELD_THRESHOLD,
        )))
    }
}

/// prost's decoder, with undecodable messages refused as INVALID_ARGUMENT.
#[derive(Debug)]
pub struct CheckedDecoder<D>(D);

impl<D: Decoder<Error = Status>> Decoder for CheckedDecoder<D> {
    type Item = D::Item;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<D::Item>, Status> {
        self.0
            .decode(buf)
            .map_err(|status| Error::invalid("request", undecodable(status.message())).into())
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// What to say about a message prost could not decode.
fn undecodable(error: &str) -> String {
    if error.contains("recursion limit reached") {
        format!(
            "the message nests too deeply to decode: a body or schema may nest at most \
             {MAX_JSON_DEPTH} levels of objects and arrays"
        )
    } else {
        format!(
            "the message is not a valid protobuf encoding of this method's request: {}",
            error.chars().take(200).collect::<String>()
        )
    }
}
