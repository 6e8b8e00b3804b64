//! The task pool: `slots` dedicated OS threads that run tasks off the connection's task, so
//! CPU-bound bodies never block the runtime.
//!
//! The connection's task pushes the leases of a grant in one go. A thread whose tasks are tiny
//! takes a share of the backlog per lock (`ceil(backlog / threads)`, at most [`MAX_CHUNK`]), so
//! they cost one lock per chunk rather than per task; a thread whose tasks take longer than
//! [`CHUNKY_BELOW`] on average takes one at a time, so long tasks spread over every thread.
//! Answers go back over a channel; the connection's task is woken only when the first answer
//! lands after it last looked.
//!
//! Invariants:
//! - The inputs of one grant share one allocation ([`Item::arena`]); a task allocates nothing
//!   else on its way to a thread.
//! - Every task taken is answered, unless the pool is closing; answers for leases that are gone
//!   are dropped by the core's state machine, not here.
//! - A wake-up is never lost: a thread sets [`Shared::wake_pending`] after sending its answer,
//!   and the reader clears it before draining.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use colony_core::worker::Ticket;
use colony_core::{Attempt, JobId, TaskId};
use tokio::sync::Notify;

use super::handler::{Handler, Link, Outcome, TaskCtx, run_task};

/// The most tasks a thread takes per lock.
const MAX_CHUNK: usize = 64;

/// Tasks shorter than this on average are taken in chunks.
const CHUNKY_BELOW: Duration = Duration::from_micros(20);

/// One lease waiting for a thread.
#[derive(Debug)]
pub(super) struct Item {
    pub(super) ticket: Ticket,
    pub(super) job: JobId,
    pub(super) task: TaskId,
    pub(super) attempt: Attempt,
    pub(super) kind: u16,
    /// Where the input lies in `arena`.
    pub(super) input: Range<usize>,
    /// The inputs of the whole grant.
    pub(super) arena: Arc<Vec<u8>>,
}

/// A task's result, for the connection's task to send.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) ticket: Ticket,
    pub(super) outcome: Outcome,
}

/// The running pool; closing it (on drop) lets its threads finish their current task and exit.
pub(super) struct Pool {
    shared: Arc<Shared>,
    answers: mpsc::Receiver<Answer>,
}

struct Shared {
    queue: Mutex<Queue>,
    work: Condvar,
    threads: usize,
    closed: AtomicBool,
    /// Set by a thread that sent an answer the reader may not have seen.
    wake_pending: AtomicBool,
    /// Wakes the connection's task.
    wake: Arc<Notify>,
}

struct Queue {
    items: VecDeque<Item>,
    /// Threads waiting for work.
    idle: usize,
}

impl Pool {
    /// Starts `threads` threads running `handler`.
    ///
    /// # Errors
    /// The OS refused to start a thread.
    pub(super) fn start<H: Handler>(
        threads: usize,
        handler: &Arc<H>,
        kinds: &Arc<[String]>,
        link: &Arc<Link>,
    ) -> std::io::Result<Pool> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                idle: 0,
            }),
            work: Condvar::new(),
            threads,
            closed: AtomicBool::new(false),
            wake_pending: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
        });
        let (tx, answers) = mpsc::channel();
        let pool = Pool { shared, answers };
        for i in 0..threads {
            let shared = Arc::clone(&pool.shared);
            let handler = Arc::clone(handler);
            let kinds = Arc::clone(kinds);
            let ctx = TaskCtx::new(Arc::clone(link));
            let tx = tx.clone();
            std::thread::Builder::new()
                .name(format!("colony-task-{i}"))
                .spawn(move || work(&shared, &*handler, &kinds, ctx, &tx))?;
        }
        Ok(pool)
    }

    /// What wakes the connection's task when answers are ready.
    pub(super) fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.shared.wake)
    }

    /// Queues `items` (emptying the vector) and wakes as many idle threads as they need.
    pub(super) fn push(&self, items: &mut Vec<Item>) {
        let n = items.len();
        if n == 0 {
            return;
        }
        let wake = {
            let mut queue = self.lock();
            queue.items.extend(items.drain(..));
            queue.idle.min(n)
        };
        if wake >= self.shared.threads {
            self.shared.work.notify_all();
        } else {
            for _ in 0..wake {
                self.shared.work.notify_one();
            }
        }
    }

    /// Drops the queued task of `ticket`, if it has not started.
    pub(super) fn revoke(&self, ticket: Ticket) {
        self.lock().items.retain(|item| item.ticket != ticket);
    }

    /// Drops every queued task (their leases are gone with the connection).
    pub(super) fn clear(&self) {
        self.lock().items.clear();
    }

    /// The next answer, if any. Call [`Pool::begin_drain`] before a round of these.
    pub(super) fn try_answer(&self) -> Option<Answer> {
        self.answers.try_recv().ok()
    }

    /// Marks every answer sent so far as seen: an answer sent later wakes the reader again.
    pub(super) fn begin_drain(&self) {
        self.shared.wake_pending.swap(false, Ordering::AcqRel);
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.shared.lock()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.lock().items.clear();
        self.shared.work.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A handler's panic is caught outside the lock, so poisoning cannot leave the queue
        // half-changed.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// One thread's life: take a chunk, run it, send the answers, until the pool closes.
fn work<H: Handler + ?Sized>(
    shared: &Shared,
    handler: &H,
    kinds: &[String],
    mut ctx: TaskCtx,
    tx: &mpsc::Sender<Answer>,
) {
    let mut chunk = Vec::with_capacity(MAX_CHUNK);
    // Mean task time, as an exponential moving average (nanoseconds).
    let mut mean_ns: u64 = 0;
    loop {
        {
            let mut queue = shared.lock();
            loop {
                if shared.is_closed() {
                    return;
                }
                if !queue.items.is_empty() {
                    break;
                }
                queue.idle += 1;
                queue = shared
                    .work
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
                queue.idle -= 1;
            }
            let take = if mean_ns < CHUNKY_BELOW.as_nanos() as u64 {
                queue
                    .items
                    .len()
                    .div_ceil(shared.threads)
                    .clamp(1, MAX_CHUNK)
            } else {
                1
            };
            chunk.extend(queue.items.drain(..take));
        }
        for item in chunk.drain(..) {
            if shared.is_closed() {
                break;
            }
            ctx.set(item.job, item.task, item.attempt, item.ticket.lease());
            let kind = kinds.get(usize::from(item.kind)).map_or("", String::as_str);
            let input = item.arena.get(item.input.clone()).unwrap_or_default();
            let started = Instant::now();
            let outcome = run_task(handler, &ctx, kind, input);
            let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            mean_ns = mean_ns - mean_ns / 8 + took / 8;
            if tx
                .send(Answer {
                    ticket: item.ticket,
                    outcome,
                })
                .is_err()
            {
                return;
            }
            if !shared.wake_pending.swap(true, Ordering::AcqRel) {
                shared.wake.notify_one();
            }
        }
        chunk.clear();
    }
}
