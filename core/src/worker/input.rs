//! Input: frames from the server, checked, decoded and turned into state changes and events.
//!
//! Invariants:
//! - Every failure is a [`WorkerError`] that also moves the worker to closing; nothing panics,
//!   whatever the bytes.
//! - A grant is checked whole (credit, kinds, duplicate leases) before the caller sees any of it;
//!   a bad one is refused and the connection closed, so no lease of it is ever run.

use super::{CloseReason, Event, Grants, Phase, Received, State, Ticket, Worker, WorkerError};
use crate::id::LeaseId;
use crate::proto::{Batch, Decoded, FrameDecoder, LeaseGrant, Message, Role, decode_message};
use crate::time::{Duration, Instant};

impl<'c, const SLOTS: usize> Worker<'c, SLOTS> {
    /// Finds the first frame in `received` (bytes read from the socket, oldest first) and
    /// handles it, checking it against the limit in force. The caller drops the frame's bytes
    /// from its buffer once done with the event.
    ///
    /// # Errors
    /// A [`WorkerError`] if the frame is bad or breaks the protocol; the worker is then closing.
    pub fn receive<'f>(
        &mut self,
        now: Instant,
        received: &'f [u8],
    ) -> Result<Received<'f>, WorkerError>
    where
        'c: 'f,
    {
        match FrameDecoder::new(self.max_frame()).decode(received) {
            Ok(Decoded::Incomplete { needed }) => Ok(Received::Incomplete { needed }),
            Ok(Decoded::Frame(frame)) => {
                let event = self.handle_frame(now, frame.payload())?;
                Ok(Received::Frame {
                    len: frame.frame_len(),
                    event,
                })
            }
            Err(err) => Err(self.protocol_error(WorkerError::Frame(err))),
        }
    }

    /// Handles one frame's payload (the transport checked the frame's length and CRC). Frames
    /// arriving while no connection is up, or while closing, are ignored.
    ///
    /// # Errors
    /// A [`WorkerError`] if the payload is too large, does not decode, or breaks the protocol;
    /// the worker is then closing.
    pub fn handle_frame<'f>(
        &mut self,
        now: Instant,
        payload: &'f [u8],
    ) -> Result<Option<Event<'f>>, WorkerError>
    where
        'c: 'f,
    {
        let max = self.max_frame();
        let State::Connected(link) = &mut self.state else {
            return Ok(None);
        };
        link.last_rx = link.last_rx.max(now);
        if payload.len() > max as usize {
            let err = WorkerError::FrameTooLarge {
                len: payload.len(),
                max,
            };
            return Err(self.protocol_error(err));
        }
        let result = match decode_message(payload) {
            Ok(message) => self.on_message(now, message),
            Err(err) => Err(WorkerError::Decode(err)),
        };
        result.map_err(|err| self.protocol_error(err))
    }

    fn protocol_error(&mut self, err: WorkerError) -> WorkerError {
        if matches!(self.state, State::Connected(_)) {
            warn!("worker: closing: {}", err);
            self.close(CloseReason::Protocol(err));
        }
        err
    }

    fn on_message<'f>(
        &mut self,
        now: Instant,
        message: Message<'f>,
    ) -> Result<Option<Event<'f>>, WorkerError>
    where
        'c: 'f,
    {
        let config = self.config;
        let session = self.session;
        let State::Connected(link) = &mut self.state else {
            return Ok(None);
        };
        match (message, &mut link.phase) {
            (Message::Heartbeat, _) => Ok(None),
            (
                Message::ServerHello(hello),
                Phase::Hello {
                    handshake,
                    hello_sent: true,
                },
            ) => {
                // The role is built again when the `Join` is encoded; only the proof is kept.
                let join = handshake.server_hello(config.secret(), &hello, Role::Observer)?;
                link.phase = Phase::Joining {
                    handshake: handshake.clone(),
                    proof: join.proof,
                    join_sent: false,
                };
                Ok(None)
            }
            (
                Message::Welcome(welcome),
                Phase::Joining {
                    handshake,
                    join_sent: true,
                    ..
                },
            ) => {
                let max_frame = handshake.welcomed()?;
                if welcome.heartbeat_ms > 0 {
                    link.heartbeat = Duration::from_millis(u64::from(welcome.heartbeat_ms));
                }
                link.phase = Phase::Ready {
                    max_frame,
                    credit: 0,
                    next_heartbeat: now + link.heartbeat,
                };
                self.failures = 0;
                self.worker = Some(welcome.worker);
                debug!("worker: welcomed as {}", welcome.worker);
                Ok(Some(Event::Ready {
                    worker: welcome.worker,
                }))
            }
            (Message::Grant(batch), Phase::Ready { credit, .. }) => {
                let granted = batch.len();
                if granted > *credit {
                    return Err(WorkerError::CreditExceeded {
                        granted,
                        credit: *credit,
                    });
                }
                take_grant(&mut self.held, batch, config.kinds(), *credit)?;
                *credit -= granted;
                Ok((!batch.is_empty())
                    .then(|| Event::Granted(Grants::new(batch, config.kinds(), session))))
            }
            (Message::Revoke { lease }, Phase::Ready { .. }) => {
                let Some(pos) = self.held.iter().position(|held| *held == lease) else {
                    return Ok(None);
                };
                self.held.swap_remove(pos);
                Ok(Some(Event::Revoked(Ticket::new(lease, session))))
            }
            (Message::Ack { lease }, Phase::Ready { .. }) => {
                Ok(Some(Event::Acked(Ticket::new(lease, session))))
            }
            (Message::JobFinished { job, outcome }, Phase::Ready { .. }) => {
                Ok(Some(Event::JobFinished { job, outcome }))
            }
            (Message::ServerGoingAway, _) => {
                self.close(CloseReason::ServerGoingAway);
                Ok(Some(Event::ServerGoingAway))
            }
            (Message::Goodbye, _) => {
                self.close(CloseReason::ServerGoodbye);
                Ok(Some(Event::ServerGoodbye))
            }
            (Message::Error { code, detail }, _) => {
                self.close(CloseReason::ServerError(code));
                Ok(Some(Event::ServerError { code, detail }))
            }
            (other, _) => Err(WorkerError::Unexpected {
                message: other.name(),
            }),
        }
    }
}

/// Records the leases of a grant within credit; fails on the first bad item.
fn take_grant<const SLOTS: usize>(
    held: &mut heapless::Vec<LeaseId, SLOTS>,
    batch: Batch<'_, LeaseGrant<'_>>,
    kinds: &[&str],
    credit: u32,
) -> Result<(), WorkerError> {
    for item in batch.iter() {
        let grant = item?;
        if usize::from(grant.kind) >= kinds.len() {
            return Err(WorkerError::UnknownKind { kind: grant.kind });
        }
        if held.contains(&grant.lease) {
            return Err(WorkerError::DuplicateLease { lease: grant.lease });
        }
        held.push(grant.lease)
            .map_err(|_| WorkerError::CreditExceeded {
                granted: batch.len(),
                credit,
            })?;
    }
    Ok(())
}
