//! The wire encoding of the jobworker API: prost, with encoder buffers sized so that an output
//! stream at rest pins little memory.
//!
//! tonic encodes a stream's messages into one buffer that lives as long as the stream; after a
//! message is sent, that buffer keeps its allocation until the next message is encoded. With the
//! default settings and 64 KiB output messages, a caught-up follower of a job pinned 64 KiB
//! there (heaptrack: the largest live allocation of a daemon holding 1000 idle streams), more
//! than its TLS and HTTP/2 state cost (~49 KiB). So output travels in messages of at most
//! [`MAX_OUTPUT_CHUNK`] bytes, each encoded and handed to HTTP/2 on its own: an idle stream pins
//! at most 12 KiB, and each message fits one HTTP/2 DATA frame. Measured: 1000 idle followers
//! cost 58–61 KiB each (57–113 KiB before); replaying output costs the daemon 15–20% more CPU
//! per byte than with 64 KiB messages (8 KiB messages: 60–100% more). See docs/design.md.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The most output bytes one `StreamOutputResponse` carries: with its gRPC header (5 bytes),
/// protobuf framing and a few more small fields, it fits the encoder's buffer.
pub const MAX_OUTPUT_CHUNK: usize = 12 * 1024 - 32;

/// The encoder's buffer: one output message.
const ENCODE_BUFFER: usize = 12 * 1024;

/// Hand each message to HTTP/2 as soon as it is encoded, rather than batching ready messages
/// into a larger buffer (tonic's default, up to 32 KiB) that an idle stream would then pin.
const YIELD_THRESHOLD: usize = 1;

/// prost encoding with the buffer settings above; named by `build.rs` as the codec of every
/// generated client and server.
#[derive(Debug, Clone)]
pub struct BoundedCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        BoundedCodec {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        // Decoding keeps tonic's defaults: a client's buffer grows to the largest message it
        // receives, and a server only decodes small requests.
        ProstDecoder::new(BufferSettings::default())
    }
}
