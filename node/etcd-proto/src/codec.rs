//! The protobuf codec of every generated service and client.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Encodes `T` and decodes `U` with prost. A message that does not decode is answered
/// `INVALID_ARGUMENT` naming what prost found wrong: it is the sender's input that is bad,
/// and a client must not retry it as it would an `INTERNAL` error.
#[derive(Debug, Clone)]
pub struct ProtoCodec<T, U> {
    _messages: PhantomData<(T, U)>,
}

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        ProtoCodec {
            _messages: PhantomData,
        }
    }
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProtoEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> ProtoEncoder<T> {
        ProtoEncoder(PhantomData)
    }

    fn decoder(&mut self) -> ProtoDecoder<U> {
        ProtoDecoder(PhantomData)
    }
}

/// Encodes one message of type `T`.
#[derive(Debug)]
pub struct ProtoEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for ProtoEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // The buffer grows as needed, so encoding cannot run out of room; map the error
        // anyway rather than trust that.
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding a response: {e}")))
    }
}

/// Decodes one message of type `U`.
#[derive(Debug)]
pub struct ProtoDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed protobuf message: {e}")))
    }
}
