//! The protobuf codec of every service, with small per-stream buffers.
//!
//! tonic's default codec reserves an 8 KiB encode buffer for every response
//! stream up front. A watch stream sends a few hundred bytes at a time and
//! idles in between, and a server holds tens of thousands of them, so this
//! codec starts at 1 KiB and lets the buffer grow for large messages.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// Initial encode/decode buffer of a stream.
const BUFFER_SIZE: usize = 1024;
/// tonic's default: how much a stream may buffer before yielding to the
/// transport.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// `ProstCodec` with [`BUFFER_SIZE`] buffers; `build.rs` makes every
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
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }
}
