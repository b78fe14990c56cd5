//! gRPC messages counted as a body streams, for Istio's `istio_request_messages_total` and
//! `istio_response_messages_total`.
//!
//! A gRPC body is a sequence of messages, each a five-byte prefix (a compression flag and a
//! big-endian 32-bit length) and that many bytes; a message is counted when its prefix begins,
//! as Envoy's gRPC frame inspector counts frames, however the body's data frames cut it.

use bytes::Buf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where a body is in its sequence of messages, and how many have begun.
#[derive(Clone, Debug, Default)]
pub(super) struct MessageCount {
    /// Bytes of the current message still to come (0: the next byte begins a prefix, or
    /// continues one).
    payload_left: u64,
    /// Bytes of the current prefix read so far (0 to 4).
    prefix_read: u8,
    /// The length being read from the prefix.
    length: u32,
    /// Messages begun.
    messages: u64,
}

impl MessageCount {
    /// Reads one data frame.
    pub(super) fn feed(&mut self, data: &impl Buf) {
        // A buffer in several pieces (hyper's and the mesh's are one): each piece in turn.
        let mut pieces = [std::io::IoSlice::new(&[]); 8];
        let filled = data.chunks_vectored(&mut pieces);
        for piece in &pieces[..filled] {
            self.feed_bytes(piece);
        }
    }

    fn feed_bytes(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip = bytes
                    .len()
                    .min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                self.payload_left -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            let byte = bytes[0];
            bytes = &bytes[1..];
            if self.prefix_read == 0 {
                // The compression flag: a message begins.
                self.messages += 1;
                self.length = 0;
            } else {
                self.length = self.length << 8 | u32::from(byte);
            }
            self.prefix_read += 1;
            if self.prefix_read == 5 {
                self.prefix_read = 0;
                self.payload_left = u64::from(self.length);
            }
        }
    }

    /// Messages begun so far.
    pub(super) fn messages(&self) -> u64 {
        self.messages
    }
}

/// A request body's count, published for the observation that reads it when the response
/// ends (the body streams in the service's task, the count is read where the response ends).
#[derive(Clone, Debug, Default)]
pub(super) struct SharedCount {
    count: MessageCount,
    published: Arc<AtomicU64>,
}

impl SharedCount {
    /// A count and the cell it publishes its messages to.
    pub(super) fn new() -> (Self, Arc<AtomicU64>) {
        let count = Self::default();
        let published = count.published.clone();
        (count, published)
    }

    pub(super) fn feed(&mut self, data: &impl Buf) {
        self.count.feed(data);
        self.published
            .store(self.count.messages(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(payload: &[u8]) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn messages_are_counted_however_the_frames_cut_them() {
        let stream: Vec<u8> = [
            message(b"hello"),
            message(b""),
            message(&[7; 300]),
            message(b"x"),
        ]
        .concat();
        // Whole, then cut at every size from one byte up: always four.
        for cut in 1..=stream.len() {
            let mut count = MessageCount::default();
            for piece in stream.chunks(cut) {
                count.feed(&Bytes::copy_from_slice(piece));
            }
            assert_eq!(count.messages(), 4, "frames of {cut} bytes");
        }
        // A message whose prefix has come but not its payload has begun.
        let mut count = MessageCount::default();
        count.feed(&Bytes::copy_from_slice(&message(&[1; 10])[..7]));
        assert_eq!(count.messages(), 1);
        count.feed(&Bytes::copy_from_slice(&message(&[1; 10])[7..]));
        assert_eq!(count.messages(), 1);
        count.feed(&Bytes::from_static(&[0, 0, 0]));
        assert_eq!(count.messages(), 2);
    }

    #[test]
    fn a_buffer_in_pieces_is_read_piece_by_piece() {
        let first = message(b"ab");
        let second = message(b"cde");
        let chained = Bytes::copy_from_slice(&first[..3])
            .chain(Bytes::copy_from_slice(&[&first[3..], &second[..]].concat()));
        let mut count = MessageCount::default();
        count.feed(&chained);
        assert_eq!(count.messages(), 2);
    }

    #[test]
    fn a_shared_count_publishes_what_it_read() {
        let (mut count, published) = SharedCount::new();
        count.feed(&Bytes::from(message(b"one")));
        count.feed(&Bytes::from(message(b"two")));
        assert_eq!(published.load(Ordering::Relaxed), 2);
    }
}
