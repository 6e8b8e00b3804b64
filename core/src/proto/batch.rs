//! [`Batch`]: a list on the wire, decoded lazily and without allocation.
//!
//! A batch is a varint item count followed by a postcard byte string holding the items' postcard
//! encodings back to back. Decoding a message only checks that the byte string is there; each
//! item is decoded when the iterator reaches it, borrowing from the frame. A batch whose bytes do
//! not hold exactly `count` well-formed items yields an error from its iterator, never a panic.
//!
//! Every item type used in a batch encodes to at least one byte, so iterating a batch does at most
//! as many steps as it has bytes, whatever count a peer claims.

use core::fmt;
use core::marker::PhantomData;

use core::borrow::Borrow;

use serde::de::Deserialize;
use serde::ser::{Serialize, SerializeTuple, Serializer};

use super::{DecodeError, EncodeError};

/// A lazily decoded list of `T`, borrowing its bytes from a frame.
pub struct Batch<'a, T> {
    count: u32,
    bytes: &'a [u8],
    _item: PhantomData<fn() -> T>,
}

impl<'a, T> Batch<'a, T> {
    /// A batch over `count` items already encoded back to back in `bytes`.
    ///
    /// Nothing is checked here; iteration reports items that do not decode.
    pub const fn from_encoded(count: u32, bytes: &'a [u8]) -> Self {
        Batch {
            count,
            bytes,
            _item: PhantomData,
        }
    }

    /// The empty batch.
    pub const fn empty() -> Self {
        Self::from_encoded(0, &[])
    }

    /// The number of items the batch claims to hold.
    pub const fn len(&self) -> u32 {
        self.count
    }

    /// Whether the batch claims no items.
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The items' concatenated encodings.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

impl<'a, T: Serialize> Batch<'a, T> {
    /// Encodes `items` back to back into `buf` and returns the batch over them, without
    /// allocating (a worker builds its [`WorkerHello::kinds`](super::WorkerHello) this way).
    ///
    /// # Errors
    /// [`EncodeError::BufferFull`] if `buf` cannot hold every item, [`EncodeError::TooLarge`] if
    /// there are more than `u32::MAX` items, [`EncodeError::Serialize`] if postcard refuses one.
    pub fn encode<I>(items: I, buf: &'a mut [u8]) -> Result<Self, EncodeError>
    where
        I: IntoIterator,
        I::Item: Borrow<T>,
    {
        let mut count: u32 = 0;
        let mut used = 0;
        for item in items {
            let rest = buf.get_mut(used..).ok_or(EncodeError::BufferFull)?;
            let written = postcard::to_slice(item.borrow(), rest)
                .map_err(|err| EncodeError::from_postcard(&err))?
                .len();
            used += written;
            count = count.checked_add(1).ok_or(EncodeError::TooLarge)?;
        }
        let buf: &'a [u8] = buf;
        Ok(Batch::from_encoded(
            count,
            buf.get(..used).unwrap_or_default(),
        ))
    }
}

impl<'a, T: Deserialize<'a>> Batch<'a, T> {
    /// Iterates over the items, decoding each in turn.
    ///
    /// Yields `Err` once (and then stops) if an item does not decode, if the bytes end early, or if
    /// bytes are left over after the last item.
    pub fn iter(&self) -> BatchIter<'a, T> {
        BatchIter {
            remaining: self.count,
            bytes: self.bytes,
            failed: false,
            _item: PhantomData,
        }
    }
}

impl<T> Clone for Batch<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Batch<'_, T> {}

impl<T> PartialEq for Batch<'_, T> {
    fn eq(&self, other: &Self) -> bool {
        self.count == other.count && self.bytes == other.bytes
    }
}
impl<T> Eq for Batch<'_, T> {}

impl<T> fmt::Debug for Batch<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("count", &self.count)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

#[cfg(feature = "defmt")]
impl<T> defmt::Format for Batch<'_, T> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "Batch {{ count: {}, bytes: {} }}",
            self.count,
            self.bytes.len()
        )
    }
}

/// Iterator over a [`Batch`].
pub struct BatchIter<'a, T> {
    remaining: u32,
    bytes: &'a [u8],
    failed: bool,
    _item: PhantomData<fn() -> T>,
}

impl<'a, T: Deserialize<'a>> Iterator for BatchIter<'a, T> {
    type Item = Result<T, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.remaining == 0 {
            if self.bytes.is_empty() {
                return None;
            }
            self.failed = true;
            return Some(Err(DecodeError::TrailingBytes));
        }
        match postcard::take_from_bytes::<T>(self.bytes) {
            Ok((item, rest)) => {
                self.remaining -= 1;
                self.bytes = rest;
                Some(Ok(item))
            }
            Err(err) => {
                self.failed = true;
                Some(Err(DecodeError::from_postcard(&err)))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // Each item may fail instead, and trailing bytes add one last `Err`.
        let upper = usize::try_from(self.remaining)
            .ok()
            .and_then(|n| n.checked_add(1));
        if self.failed {
            (0, Some(0))
        } else {
            (0, upper)
        }
    }
}

impl<T> Serialize for Batch<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(2)?;
        tuple.serialize_element(&self.count)?;
        tuple.serialize_element(&Bytes(self.bytes))?;
        tuple.end()
    }
}

impl<'de: 'a, 'a, T> Deserialize<'de> for Batch<'a, T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (count, bytes): (u32, &'de [u8]) = Deserialize::deserialize(deserializer)?;
        Ok(Batch::from_encoded(count, bytes))
    }
}

/// Serializes a byte slice as one byte string (postcard: varint length, then the bytes).
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// Encodes items back to back into a growable buffer, for building a [`Batch`] on the heap.
#[cfg(feature = "alloc")]
#[derive(Clone, Debug, Default)]
pub struct BatchBuf {
    count: u32,
    bytes: alloc::vec::Vec<u8>,
}

#[cfg(feature = "alloc")]
impl BatchBuf {
    /// An empty buffer.
    pub const fn new() -> Self {
        BatchBuf {
            count: 0,
            bytes: alloc::vec::Vec::new(),
        }
    }

    /// Appends one item. On error the buffer is left as it was.
    ///
    /// # Errors
    /// [`EncodeError::Serialize`] if `item` cannot be encoded by postcard,
    /// [`EncodeError::TooLarge`] if the buffer already holds `u32::MAX` items.
    pub fn push<T: Serialize + ?Sized>(&mut self, item: &T) -> Result<(), EncodeError> {
        let count = self.count.checked_add(1).ok_or(EncodeError::TooLarge)?;
        super::append_postcard(item, &mut self.bytes)?;
        self.count = count;
        Ok(())
    }

    /// Appends one byte-string item (an item of a `Batch<&[u8]>`), copying it in one go.
    ///
    /// # Errors
    /// [`EncodeError::TooLarge`] if the buffer already holds `u32::MAX` items.
    pub fn push_bytes(&mut self, item: &[u8]) -> Result<(), EncodeError> {
        self.push(&Bytes(item))
    }

    /// Reserves room for at least `additional` more encoded bytes.
    pub fn reserve(&mut self, additional: usize) {
        self.bytes.reserve(additional);
    }

    /// Items pushed so far.
    pub const fn len(&self) -> u32 {
        self.count
    }

    /// Whether nothing was pushed.
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded bytes so far.
    pub fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    /// A [`Batch`] view of the items pushed so far.
    pub fn as_batch<T>(&self) -> Batch<'_, T> {
        Batch::from_encoded(self.count, &self.bytes)
    }

    /// Forgets every item, keeping the allocation.
    pub fn clear(&mut self) {
        self.count = 0;
        self.bytes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::TaskId;
    use crate::proto::Edge;

    fn edge(a: u32, b: u32) -> Edge {
        Edge {
            before: TaskId(a),
            after: TaskId(b),
        }
    }

    #[test]
    fn encode_without_alloc_matches_batch_buf() {
        let edges = [edge(0, 1), edge(1, 300), edge(70_000, 2)];
        let mut buf = [0u8; 32];
        let batch = Batch::<Edge>::encode(edges, &mut buf).unwrap();
        assert_eq!(batch.len(), 3);
        let mut heap = BatchBuf::new();
        for e in &edges {
            heap.push(e).unwrap();
        }
        assert_eq!(heap.as_batch::<Edge>(), batch);
        assert_eq!(heap.encoded_len(), batch.as_bytes().len());
        let back: Vec<Edge> = batch.iter().map(Result::unwrap).collect();
        assert_eq!(back, edges);
    }

    #[test]
    fn encode_reports_a_full_buffer() {
        let mut buf = [0u8; 4];
        assert_eq!(
            Batch::<&str>::encode(["abc", "def"], &mut buf),
            Err(EncodeError::BufferFull)
        );
        let mut buf = [0u8; 8];
        let kinds = Batch::<&str>::encode(["abc", "def"], &mut buf).unwrap();
        assert_eq!(kinds.as_bytes(), b"\x03abc\x03def");
        assert_eq!(kinds.iter().collect::<Vec<_>>(), [Ok("abc"), Ok("def")]);
    }

    #[test]
    fn push_bytes_matches_generic_push() {
        let mut a = BatchBuf::new();
        let mut b = BatchBuf::new();
        let long = [7u8; 200];
        for item in [&b""[..], b"x", &long] {
            a.push(item).unwrap();
            b.push_bytes(item).unwrap();
        }
        assert_eq!(a.as_batch::<&[u8]>(), b.as_batch::<&[u8]>());
        assert_eq!(a.len(), 3);
        a.clear();
        assert!(a.is_empty());
        assert_eq!(a.encoded_len(), 0);
    }

    #[test]
    fn too_few_bytes_for_the_count() {
        let mut buf = [0u8; 16];
        let good = Batch::<Edge>::encode([edge(1, 2)], &mut buf).unwrap();
        let claims_two = Batch::<Edge>::from_encoded(2, good.as_bytes());
        let items: Vec<_> = claims_two.iter().collect();
        assert_eq!(items, [Ok(edge(1, 2)), Err(DecodeError::Truncated)]);
    }

    #[test]
    fn bytes_left_after_the_count() {
        let mut buf = [0u8; 16];
        let good = Batch::<Edge>::encode([edge(1, 2), edge(3, 4)], &mut buf).unwrap();
        let claims_one = Batch::<Edge>::from_encoded(1, good.as_bytes());
        let items: Vec<_> = claims_one.iter().collect();
        assert_eq!(items, [Ok(edge(1, 2)), Err(DecodeError::TrailingBytes)]);
        let claims_none = Batch::<Edge>::from_encoded(0, good.as_bytes());
        assert_eq!(
            claims_none.iter().collect::<Vec<_>>(),
            [Err(DecodeError::TrailingBytes)]
        );
    }

    #[test]
    fn malformed_item_stops_iteration() {
        // A string item that is not UTF-8, then a good one that must not be reached.
        let bytes = b"\x01\xFF\x02ok";
        let batch = Batch::<&str>::from_encoded(2, bytes);
        let mut iter = batch.iter();
        assert_eq!(iter.next(), Some(Err(DecodeError::Malformed)));
        assert_eq!(iter.next(), None);
        assert_eq!(iter.size_hint(), (0, Some(0)));
    }

    #[test]
    fn huge_claimed_count_is_bounded_by_bytes() {
        let batch = Batch::<&[u8]>::from_encoded(u32::MAX, b"\x00\x00");
        let mut iter = batch.iter();
        assert_eq!(iter.size_hint().0, 0);
        let items: Vec<_> = iter.by_ref().collect();
        assert_eq!(
            items,
            [Ok(&b""[..]), Ok(&b""[..]), Err(DecodeError::Truncated)]
        );
    }

    #[test]
    fn batch_wire_form_and_decode_with_trailing() {
        let batch = Batch::<&str>::from_encoded(2, b"\x01a\x01b");
        let encoded = postcard::to_allocvec(&batch).unwrap();
        assert_eq!(encoded, b"\x02\x04\x01a\x01b");
        let (back, rest) = postcard::take_from_bytes::<Batch<'_, &str>>(&encoded).unwrap();
        assert!(rest.is_empty());
        assert_eq!(back, batch);
        // The byte string must be complete.
        assert!(postcard::from_bytes::<Batch<'_, &str>>(&encoded[..4]).is_err());
    }
}
