//! Output: the frames the worker sends, written into buffers the caller owns.
//!
//! Invariants:
//! - Nothing is lost when a buffer is too small: a frame counts as sent only once it is written
//!   whole, so it stays pending for the next call.
//! - Answers (`Complete`, `Fail`) are written at once by the call that makes them, and the credit
//!   they free only by a later [`Worker::poll_transmit`], so credit never overtakes them.
//! - Every frame respects the limit in force: the handshake limit for the `Join` (checked when
//!   the worker is made), the agreed limit for answers.

use super::{
    CompleteError, Link, Out, Parting, Phase, State, Task, TaskHandler, Ticket, TransmitError,
    Worker,
};
use crate::proto::{
    Batch, EncodeError, HANDSHAKE_MAX_FRAME, HEADER_LEN, Join, Message, Proof, Retry, Role,
    WorkerHello, encode_frame, encoded_len,
};
use crate::time::Instant;

impl<'c, const SLOTS: usize> Worker<'c, SLOTS> {
    /// Writes pending frames (handshake, credit, heartbeat, a parting error or goodbye) into
    /// `buf`, as many whole frames as fit, and returns their total length; `None` if nothing
    /// is pending. Call it after every input and whenever [`Worker::poll_at`] passes, and send
    /// the bytes in order.
    ///
    /// # Errors
    /// [`TransmitError::BufferTooSmall`] if not even the next frame fits; nothing is lost.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<Option<usize>, TransmitError> {
        let mut used = 0;
        while let Some(out) = self.next_out(now) {
            let rest = buf.get_mut(used..).unwrap_or_default();
            match self.encode_out(out, rest) {
                Ok(n) => {
                    self.mark_sent(out, now);
                    used += n;
                }
                Err(_) if used > 0 => break,
                Err(_) => return Err(TransmitError::BufferTooSmall { len: buf.len() }),
            }
        }
        Ok((used > 0).then_some(used))
    }

    fn next_out(&self, now: Instant) -> Option<Out> {
        match &self.state {
            State::Connected(link) => match &link.phase {
                Phase::Hello {
                    hello_sent: false, ..
                } => Some(Out::Hello),
                Phase::Joining {
                    proof,
                    join_sent: false,
                    ..
                } => Some(Out::Join(*proof)),
                Phase::Ready {
                    credit,
                    next_heartbeat,
                    ..
                } => {
                    let pending = self.unsent_credit(*credit);
                    if pending > 0 {
                        Some(Out::Credit(pending))
                    } else if now >= *next_heartbeat {
                        Some(Out::Heartbeat)
                    } else {
                        None
                    }
                }
                _ => None,
            },
            State::Closing {
                parting: Some(parting),
                ..
            } => Some(Out::Parting(*parting)),
            _ => None,
        }
    }

    /// Credit neither held as a lease nor outstanding at the server.
    pub(super) fn unsent_credit(&self, credit: u32) -> u32 {
        let held = u32::try_from(self.held.len()).unwrap_or(u32::MAX);
        self.config
            .slots()
            .saturating_sub(held)
            .saturating_sub(credit)
    }

    fn encode_out(&self, out: Out, buf: &mut [u8]) -> Result<usize, EncodeError> {
        match out {
            Out::Hello => match &self.state {
                State::Connected(Link {
                    phase: Phase::Hello { handshake, .. },
                    ..
                }) => encode_frame(&Message::ClientHello(handshake.hello()), buf),
                _ => Err(EncodeError::Serialize),
            },
            Out::Join(proof) => self.encode_join(proof, buf),
            Out::Credit(count) => encode_frame(&Message::Credit { count }, buf),
            Out::Heartbeat => encode_frame(&Message::Heartbeat, buf),
            Out::Parting(Parting::Goodbye) => encode_frame(&Message::Goodbye, buf),
            Out::Parting(Parting::Error(code)) => {
                encode_frame(&Message::Error { code, detail: "" }, buf)
            }
        }
    }

    fn mark_sent(&mut self, out: Out, now: Instant) {
        match (&mut self.state, out) {
            (State::Connected(link), Out::Hello) => {
                if let Phase::Hello { hello_sent, .. } = &mut link.phase {
                    *hello_sent = true;
                }
            }
            (State::Connected(link), Out::Join(_)) => {
                if let Phase::Joining { join_sent, .. } = &mut link.phase {
                    *join_sent = true;
                }
            }
            (State::Connected(link), Out::Credit(count)) => {
                if let Phase::Ready { credit, .. } = &mut link.phase {
                    *credit = credit.saturating_add(count);
                }
            }
            (State::Connected(link), Out::Heartbeat) => {
                let interval = link.heartbeat;
                if let Phase::Ready { next_heartbeat, .. } = &mut link.phase {
                    *next_heartbeat = now + interval;
                }
            }
            (State::Closing { parting, .. }, Out::Parting(_)) => *parting = None,
            _ => {}
        }
    }

    /// The `Join`, with the kinds batch encoded at the end of `buf` and the frame at its start.
    fn encode_join(&self, proof: Proof, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let split = buf
            .len()
            .checked_sub(self.kinds_len)
            .ok_or(EncodeError::BufferFull)?;
        let (head, tail) = buf.split_at_mut(split);
        let kinds = Batch::<&str>::encode(self.config.kinds(), tail)?;
        encode_frame(&self.join(proof, kinds), head)
    }

    fn join<'a>(&self, proof: Proof, kinds: Batch<'a, &'a str>) -> Message<'a>
    where
        'c: 'a,
    {
        Message::Join(Join {
            proof,
            role: Role::Worker(WorkerHello {
                name: self.config.name(),
                platform: self.config.platform(),
                kinds,
                slots: self.config.slots(),
            }),
        })
    }

    /// The `Join` payload's length, computed without a buffer.
    pub(super) fn join_len(&self) -> usize {
        let count = u32::try_from(self.config.kinds().len()).unwrap_or(u32::MAX);
        let empty = self.join([0; 32], Batch::from_encoded(count, &[]));
        // An empty byte string is one length byte; the real one is its length varint and bytes.
        encoded_len(&empty)
            .unwrap_or(usize::MAX)
            .saturating_sub(1)
            .saturating_add(varint_len(self.kinds_len))
            .saturating_add(self.kinds_len)
    }

    // ---- answers ----

    pub(super) fn position(&self, ticket: Ticket) -> Option<usize> {
        if ticket.session() != self.session {
            return None;
        }
        self.held.iter().position(|lease| *lease == ticket.lease())
    }

    /// The payload limit for frames to the server.
    pub(super) fn send_limit(&self) -> u32 {
        match &self.state {
            State::Connected(Link {
                phase: Phase::Ready { max_frame, .. },
                ..
            }) => *max_frame,
            _ => HANDSHAKE_MAX_FRAME,
        }
    }

    /// Answers `ticket` with its task's `output`: writes the `Complete` frame into `buf`,
    /// releases the lease, and makes its credit pending. Returns the frame's length, or 0 if the
    /// worker no longer holds the lease (revoked, or its connection lost): the output is then
    /// discarded and nothing is to be sent.
    ///
    /// Send the frame before anything [`Worker::poll_transmit`] writes afterwards.
    ///
    /// # Errors
    /// [`CompleteError`] if the frame does not fit `buf` or the agreed limit; the lease is still
    /// held.
    pub fn complete(
        &mut self,
        ticket: Ticket,
        output: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, CompleteError> {
        let Some(pos) = self.position(ticket) else {
            return Ok(0);
        };
        let message = Message::Complete {
            lease: ticket.lease(),
            output,
        };
        let len = encoded_len(&message).unwrap_or(usize::MAX);
        let max = self.send_limit();
        if len > max as usize {
            return Err(CompleteError::OutputTooLarge { len, max });
        }
        let n = encode_answer(&message, len, buf)?;
        self.held.swap_remove(pos);
        Ok(n)
    }

    /// Answers `ticket` with a failure: writes the `Fail` frame into `buf` (the error text cut,
    /// at a character boundary, to what fits `buf` and the agreed limit), releases the lease, and
    /// makes its credit pending. Returns the frame's length, or 0 if the worker no longer holds
    /// the lease.
    ///
    /// Send the frame before anything [`Worker::poll_transmit`] writes afterwards.
    ///
    /// # Errors
    /// [`CompleteError::BufferTooSmall`] if `buf` cannot hold even the frame with an empty error
    /// text; the lease is still held.
    pub fn fail(
        &mut self,
        ticket: Ticket,
        retry: Retry,
        error: &str,
        buf: &mut [u8],
    ) -> Result<usize, CompleteError> {
        let Some(pos) = self.position(ticket) else {
            return Ok(0);
        };
        let lease = ticket.lease();
        let bare = encoded_len(&Message::Fail {
            lease,
            retry,
            error: "",
        })
        .unwrap_or(usize::MAX);
        let room = (self.send_limit() as usize).min(buf.len().saturating_sub(HEADER_LEN));
        // `bare` holds a one-byte length; the text adds its bytes and a possibly longer length.
        let budget = room.saturating_sub(bare.saturating_sub(1));
        let mut keep = error.len().min(budget);
        keep = keep.min(budget.saturating_sub(varint_len(keep)));
        while !error.is_char_boundary(keep) {
            keep -= 1;
        }
        let message = Message::Fail {
            lease,
            retry,
            error: error.get(..keep).unwrap_or_default(),
        };
        let len = encoded_len(&message).unwrap_or(usize::MAX);
        let n = encode_answer(&message, len, buf)?;
        self.held.swap_remove(pos);
        Ok(n)
    }

    /// Runs `task` through `handler` and answers it: its output as a `Complete`, its error as a
    /// `Fail`, written into `buf` (see [`Worker::complete`] and [`Worker::fail`]). `scratch`
    /// receives the output; an output over the agreed frame limit, or a length beyond `scratch`,
    /// is reported as a permanent failure. Returns 0 without running the task if the worker no
    /// longer holds its lease.
    ///
    /// This is the synchronous path microcontrollers use: handle the [`Event::Granted`](super::Event::Granted), then
    /// for each task call `run` and send the frame before the next.
    ///
    /// # Errors
    /// [`CompleteError::BufferTooSmall`] if the answer does not fit `buf`; the lease is still
    /// held, so the caller may [`Worker::fail`] it with a larger buffer.
    pub fn run<H: TaskHandler + ?Sized>(
        &mut self,
        task: &Task<'_>,
        handler: &mut H,
        scratch: &mut [u8],
        buf: &mut [u8],
    ) -> Result<usize, CompleteError> {
        let ticket = task.ticket();
        if !self.holds(ticket) {
            return Ok(0);
        }
        let len = match handler.run(task.kind(), task.input(), scratch) {
            Ok(len) => len,
            Err(err) => return self.fail(ticket, err.retry(), err.message(), buf),
        };
        let Some(output) = scratch.get(..len) else {
            return self.fail(
                ticket,
                Retry::Permanent,
                "task output overflows its buffer",
                buf,
            );
        };
        match self.complete(ticket, output, buf) {
            Err(CompleteError::OutputTooLarge { .. }) => self.fail(
                ticket,
                Retry::Permanent,
                "task output exceeds the frame limit",
                buf,
            ),
            other => other,
        }
    }
}

/// Encodes an answer whose payload is `len` bytes, or says how much room it needs.
fn encode_answer(
    message: &Message<'_>,
    len: usize,
    buf: &mut [u8],
) -> Result<usize, CompleteError> {
    let needed = HEADER_LEN.saturating_add(len);
    if needed > buf.len() {
        return Err(CompleteError::BufferTooSmall {
            needed,
            len: buf.len(),
        });
    }
    encode_frame(message, buf).map_err(|_| CompleteError::BufferTooSmall {
        needed,
        len: buf.len(),
    })
}

/// Bytes of the postcard varint of `n`.
pub(super) const fn varint_len(n: usize) -> usize {
    let mut len = 1;
    let mut rest = n >> 7;
    while rest > 0 {
        len += 1;
        rest >>= 7;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::decode_message;
    use crate::worker::Config;

    const SECRET: &[u8] = b"unit-test secret, 32 bytes long!";

    #[test]
    fn varint_lengths() {
        for (n, len) in [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (usize::MAX, 10),
        ] {
            assert_eq!(varint_len(n), len, "{n}");
        }
        let mut buf = [0u8; 16];
        for n in [0usize, 127, 128, 300, 16_384, 1 << 30] {
            assert_eq!(
                postcard::to_slice(&n, &mut buf).unwrap().len(),
                varint_len(n),
                "{n}"
            );
        }
    }

    #[test]
    fn join_length_is_computed_exactly() {
        let long: &[&str] = &["a-rather-long-kind-name-number-one", "k2", "", "ünïcödé"];
        let many: Vec<&str> = (0..150).map(|_| "x").collect();
        for kinds in [&[][..], &["square"][..], long, &many] {
            let w: Worker<'_, 2> = Worker::new(Config::new("name", SECRET, kinds)).unwrap();
            let mut buf = [0u8; 4096];
            let n = w.encode_join([9; 32], &mut buf).unwrap();
            assert_eq!(n - HEADER_LEN, w.join_len(), "{kinds:?}");
            // The frame decodes back to the kinds.
            let Message::Join(join) = decode_message(&buf[HEADER_LEN..n]).unwrap() else {
                panic!()
            };
            let Role::Worker(hello) = join.role else {
                panic!()
            };
            let decoded: Vec<&str> = hello.kinds.iter().map(Result::unwrap).collect();
            assert_eq!(decoded, kinds);
        }
    }

    #[test]
    fn join_fits_a_buffer_of_frame_plus_kinds() {
        let w: Worker<'_, 1> = Worker::new(Config::new("n", SECRET, &["abc", "de"])).unwrap();
        let exact = HEADER_LEN + w.join_len() + w.kinds_len;
        let mut buf = vec![0u8; exact];
        assert_eq!(
            w.encode_join([0; 32], &mut buf),
            Ok(HEADER_LEN + w.join_len())
        );
        assert_eq!(
            w.encode_join([0; 32], &mut buf[..exact - 1]),
            Err(EncodeError::BufferFull)
        );
    }
}
