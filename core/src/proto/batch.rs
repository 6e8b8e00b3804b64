//! [`Batch`]: a list on the wire, decoded lazily and without allocation.
//!
//! A batch is a varint item count followed by a postcard byte string holding the items' postcard
//! encodings back to back. Decoding a message only checks that the byte string is there; each
//! item is decoded when the iterator reaches it, borrowing from the frame. A batch whose bytes do
//! not hold exactly `count` well-formed items yields an error from its iterator, never a panic.

use core::fmt;
use core::marker::PhantomData;

use serde::de::Deserialize;
use serde::ser::{Serialize, SerializeTuple, Serializer};

use super::DecodeError;

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
        Batch { count, bytes, _item: PhantomData }
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

impl<'a, T: Deserialize<'a>> Batch<'a, T> {
    /// Iterates over the items, decoding each in turn.
    ///
    /// Yields `Err` once (and then stops) if an item does not decode, if the bytes end early, or if
    /// bytes are left over after the last item.
    pub fn iter(&self) -> BatchIter<'a, T> {
        BatchIter { remaining: self.count, bytes: self.bytes, failed: false, _item: PhantomData }
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
        f.debug_struct("Batch").field("count", &self.count).field("bytes", &self.bytes.len()).finish()
    }
}

#[cfg(feature = "defmt")]
impl<T> defmt::Format for Batch<'_, T> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "Batch {{ count: {}, bytes: {} }}", self.count, self.bytes.len())
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
            Err(_) => {
                self.failed = true;
                Some(Err(DecodeError::Malformed))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.failed { (0, Some(0)) } else { (0, Some(self.remaining as usize + 1)) }
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
        BatchBuf { count: 0, bytes: alloc::vec::Vec::new() }
    }

    /// Appends one item.
    ///
    /// # Errors
    /// [`EncodeError::Serialize`](super::EncodeError) if `item` cannot be encoded by postcard.
    pub fn push<T: Serialize + ?Sized>(&mut self, item: &T) -> Result<(), super::EncodeError> {
        let bytes = core::mem::take(&mut self.bytes);
        self.bytes = postcard::to_extend(item, bytes).map_err(|_| super::EncodeError::Serialize)?;
        self.count = self.count.saturating_add(1);
        Ok(())
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
