//! The worker protocol's codec with small buffers. tonic's default codec reserves 8 KiB to
//! read and 8 KiB to write for every call, up front, and every worker keeps two calls open
//! for its whole build (the heartbeat and log streams): 32 KiB per connected worker in
//! buffers alone, most of the manager's memory with thousands of workers. The protocol's
//! messages are a JWT plus at most a log line, about 1 KiB; a larger one still fits, as
//! the buffers grow in steps of their initial size.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::prost::Message;
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial read buffer per call: a heartbeat (a JWT) fits, a log line grows it once.
const DECODE_BUFFER: usize = 2 * 1024;
/// Initial write buffer per call: replies are a few bytes (a BuildPack grows it).
const ENCODE_BUFFER: usize = 512;
/// tonic's default: how much ready output is gathered before it is handed on.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Protobuf via prost, as tonic's `ProstCodec`, with the buffers above.
pub struct CompactCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for CompactCodec<T, U> {
    fn default() -> Self {
        CompactCodec(PhantomData)
    }
}

impl<T, U> Codec for CompactCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(DECODE_BUFFER, YIELD_THRESHOLD))
    }
}
