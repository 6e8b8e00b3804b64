//! [`Item`]: one element of the loop, as the loop body sees it.
//!
//! An item is settled when it is dropped: completed with what the body [`produce`](Item::produce)d
//! (or nothing), failed if the body called [`fail`](Item::fail), or failed as "the loop body
//! panicked" if it is dropped during a panic. Either way the process never hangs on it.

use std::cell::RefCell;
use std::fmt;
use std::ops::Deref;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::LoopError;

/// What became of one item, as reported to the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The body finished; the bytes are the stored output (see [`encode_output`]).
    Done(Vec<u8>),
    /// The body failed with this message.
    Failed(String),
}

/// The stored form of an output: `[]` when the body produced nothing, else `[1]` followed by
/// the postcard encoding, so that a produced `()` is still told apart from nothing.
pub(crate) fn encode_output<O: Serialize>(output: &O) -> Result<Vec<u8>, postcard::Error> {
    let mut bytes = vec![1];
    postcard::to_io(output, &mut bytes)?;
    Ok(bytes)
}

/// Decodes a stored output: `Ok(None)` for an item that produced nothing.
pub(crate) fn decode_output<O: DeserializeOwned>(
    bytes: &[u8],
) -> Result<Option<O>, postcard::Error> {
    match bytes.split_first() {
        None => Ok(None),
        Some((1, rest)) => postcard::from_bytes(rest).map(Some),
        Some(_) => Err(postcard::Error::DeserializeBadEncoding),
    }
}

/// Where an item reports its outcome, and where its `execute` calls go.
pub(crate) trait Settle {
    fn settle(&self, ticket: u64, outcome: Outcome);
    fn execute(&self, name: &str, args: &[u8]) -> Result<Vec<u8>, String>;
}

/// One item of the loop, handed to the loop body. Dereferences to the item's value.
pub struct Item<'a, T> {
    index: usize,
    attempt: u16,
    value: &'a T,
    ticket: u64,
    settle: &'a dyn Settle,
    state: RefCell<Option<Outcome>>,
}

impl<'a, T> Item<'a, T> {
    pub(crate) fn new(
        index: usize,
        attempt: u16,
        value: &'a T,
        ticket: u64,
        settle: &'a dyn Settle,
    ) -> Self {
        Item {
            index,
            attempt,
            value,
            ticket,
            settle,
            state: RefCell::new(None),
        }
    }

    /// The item's position in the loop's item list.
    pub fn index(&self) -> usize {
        self.index
    }

    /// How many times this item was handed out before (0 on its first run).
    pub fn attempt(&self) -> u16 {
        self.attempt
    }

    /// The item's value.
    pub fn value(&self) -> &'a T {
        self.value
    }

    /// Attaches `output` to this item: the serving process gets it in the loop's product, in
    /// item order. Producing again replaces the earlier output.
    ///
    /// # Errors
    /// [`LoopError::Encode`] if `output` cannot be encoded.
    pub fn produce<O: Serialize>(&self, output: &O) -> Result<(), LoopError> {
        let bytes = encode_output(output).map_err(|e| LoopError::Encode(e.to_string()))?;
        *self.state.borrow_mut() = Some(Outcome::Done(bytes));
        Ok(())
    }

    /// Fails this item with `error`: it is retried (up to the loop's attempts) and, if it keeps
    /// failing, reported in the loop's failures.
    pub fn fail(&self, error: impl fmt::Display) {
        *self.state.borrow_mut() = Some(Outcome::Failed(error.to_string()));
    }

    /// Runs the function registered as `name` on the serving process's machine with `args`,
    /// and returns its result. Scheduling goes on meanwhile.
    ///
    /// # Errors
    /// [`LoopError::Execute`] with the function's error text, or if no such function exists, or
    /// if the arguments or result do not encode.
    pub fn execute<A: Serialize, R: DeserializeOwned>(
        &self,
        name: &str,
        args: &A,
    ) -> Result<R, LoopError> {
        let args = postcard::to_allocvec(args).map_err(|e| LoopError::Encode(e.to_string()))?;
        let result = self
            .settle
            .execute(name, &args)
            .map_err(|message| LoopError::Execute {
                name: name.to_string(),
                message,
            })?;
        postcard::from_bytes(&result).map_err(|e| LoopError::Execute {
            name: name.to_string(),
            message: format!("result does not decode as the expected type: {e}"),
        })
    }
}

impl<T> Deref for Item<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Item<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Item")
            .field("index", &self.index)
            .field("value", self.value)
            .finish()
    }
}

impl<T> Drop for Item<'_, T> {
    fn drop(&mut self) {
        let outcome = if std::thread::panicking() {
            Outcome::Failed("the loop body panicked".to_string())
        } else {
            self.state
                .borrow_mut()
                .take()
                .unwrap_or(Outcome::Done(Vec::new()))
        };
        self.settle.settle(self.ticket, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_round_trip_and_unit_is_not_nothing() {
        let unit = encode_output(&()).unwrap();
        assert_eq!(decode_output::<()>(&unit).unwrap(), Some(()));
        assert_eq!(decode_output::<()>(&[]).unwrap(), None);
        let v = encode_output(&vec![1u32, 2]).unwrap();
        assert_eq!(decode_output::<Vec<u32>>(&v).unwrap(), Some(vec![1, 2]));
        assert!(decode_output::<u32>(&[7, 1]).is_err());
    }
}
