//! The driver loop end to end on the host: the embassy worker against a scripted server built
//! from the core's protocol, over in-memory pipes, with faults injected between sessions.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use colony_core::crc::crc32c;
use colony_core::proto::{
    Batch, Decoded, FrameDecoder, JobOutcome, LeaseGrant, Message, Role, ServerHandshake, Welcome,
    decode_message, encode_frame,
};
use colony_core::worker::{Backoff, Config, TaskError};
use colony_core::{Attempt, Duration, JobId, LeaseId, TaskId, WorkerId};
use colony_embassy::{
    Buffers, Connection, Finished, Link, Shutdown, TaskKind, Until, Worker, kind_names, rx_len,
    tx_len,
};
use embassy_futures::block_on;
use embassy_futures::join::join;
use embedded_io_async::{ErrorKind, ErrorType, Read, Write};

const SECRET: &[u8] = b"loopback test secret, 32 bytes!!";
const MAX_FRAME: u32 = 1024;
const SLOTS: usize = 4;

fn crc(input: &[u8], output: &mut [u8]) -> Result<usize, TaskError<'static>> {
    let out = output.get_mut(..4).ok_or(TaskError::permanent("no room"))?;
    out.copy_from_slice(&crc32c(input).to_le_bytes());
    Ok(4)
}

static KINDS: [TaskKind; 1] = [TaskKind::new("crc32c", crc)];
static NAMES: [&str; 1] = kind_names(&KINDS);

// ---- in-memory pipes ----

#[derive(Default)]
struct Half {
    bytes: VecDeque<u8>,
    closed: bool,
    waker: Option<Waker>,
}

impl Half {
    fn close(&mut self) {
        self.closed = true;
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// One end of a duplex pipe.
struct End {
    rx: Rc<RefCell<Half>>,
    tx: Rc<RefCell<Half>>,
}

fn pipe() -> (End, End) {
    let (a, b) = (Rc::default(), Rc::default());
    (
        End {
            rx: Rc::clone(&a),
            tx: Rc::clone(&b),
        },
        End { rx: b, tx: a },
    )
}

impl End {
    fn shut(&self) {
        self.rx.borrow_mut().close();
        self.tx.borrow_mut().close();
    }
}

impl Drop for End {
    fn drop(&mut self) {
        self.shut();
    }
}

impl ErrorType for End {
    type Error = ErrorKind;
}

impl Read for End {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        poll_fn(|cx| {
            let mut half = self.rx.borrow_mut();
            if !half.bytes.is_empty() {
                let n = buf.len().min(half.bytes.len());
                for (dst, src) in buf.iter_mut().zip(half.bytes.drain(..n)) {
                    *dst = src;
                }
                Poll::Ready(Ok(n))
            } else if half.closed {
                Poll::Ready(Ok(0))
            } else {
                half.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

impl Write for End {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        let mut half = self.tx.borrow_mut();
        if half.closed {
            return Err(ErrorKind::BrokenPipe);
        }
        half.bytes.extend(buf);
        if let Some(w) = half.waker.take() {
            w.wake();
        }
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), ErrorKind> {
        Ok(())
    }
}

impl Connection for End {
    async fn close(&mut self, _how: Shutdown) {
        self.shut();
    }
}

/// Hands the server end of every new pipe to the scripted server.
#[derive(Clone, Default)]
struct Listener(Rc<RefCell<(VecDeque<End>, Option<Waker>)>>);

impl Listener {
    async fn accept(&self) -> End {
        poll_fn(|cx| {
            let mut inner = self.0.borrow_mut();
            match inner.0.pop_front() {
                Some(end) => Poll::Ready(end),
                None => {
                    inner.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

struct PipeLink(Listener);

impl Link for PipeLink {
    type Error = ();
    type Conn<'s> = End;

    async fn connect(&mut self) -> Result<End, ()> {
        let (client, server) = pipe();
        let mut inner = (self.0).0.borrow_mut();
        inner.0.push_back(server);
        if let Some(w) = inner.1.take() {
            w.wake();
        }
        Ok(client)
    }
}

// ---- the scripted server ----

struct Peer {
    end: End,
    buf: Vec<u8>,
}

impl Peer {
    /// The next frame's payload, or `None` at end of stream.
    async fn recv(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Decoded::Frame(frame) = FrameDecoder::new(MAX_FRAME).decode(&self.buf).unwrap() {
                let payload = frame.payload().to_vec();
                self.buf.drain(..frame.frame_len());
                return Some(payload);
            }
            let mut chunk = [0u8; 512];
            let n = self.end.read(&mut chunk).await.unwrap();
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn send(&mut self, message: &Message<'_>) {
        let mut frame = vec![0u8; 2048];
        let n = encode_frame(message, &mut frame).unwrap();
        self.end.write_all(&frame[..n]).await.unwrap();
    }

    /// Runs the server's half of the handshake; returns the worker's credit.
    async fn handshake(listener: &Listener) -> (Peer, u32) {
        let mut peer = Peer {
            end: listener.accept().await,
            buf: Vec::new(),
        };
        let mut server = ServerHandshake::new(MAX_FRAME);
        let payload = peer.recv().await.unwrap();
        let Message::ClientHello(hello) = decode_message(&payload).unwrap() else {
            panic!("expected ClientHello")
        };
        let hello = server.hello(SECRET, &hello, [5; 16]).unwrap();
        peer.send(&Message::ServerHello(hello)).await;
        let payload = peer.recv().await.unwrap();
        let Message::Join(join) = decode_message(&payload).unwrap() else {
            panic!("expected Join")
        };
        server.join(SECRET, &join).unwrap();
        let Role::Worker(me) = join.role else {
            panic!("expected a worker")
        };
        assert_eq!(
            me.kinds.iter().map(Result::unwrap).collect::<Vec<_>>(),
            NAMES
        );
        let welcome = Welcome {
            worker: WorkerId(7),
            lease_ms: 5_000,
            heartbeat_ms: 1_000,
        };
        peer.send(&Message::Welcome(welcome)).await;
        let payload = peer.recv().await.unwrap();
        let Message::Credit { count } = decode_message(&payload).unwrap() else {
            panic!("expected Credit")
        };
        (peer, count)
    }

    /// Reads until the worker closes; returns the messages' names.
    async fn drain(mut self) -> Vec<&'static str> {
        let mut names = Vec::new();
        while let Some(payload) = self.recv().await {
            names.push(decode_message(&payload).unwrap().name());
        }
        names
    }
}

fn input(task: u32) -> Vec<u8> {
    format!("input of task {task}").into_bytes()
}

/// Grants `total` tasks as credit allows and checks every answer; returns outputs by task.
async fn serve_job(peer: &mut Peer, mut credit: u32, total: u32) -> HashMap<u32, Vec<u8>> {
    let mut next = 0u32;
    let mut outputs = HashMap::new();
    let mut leases = HashMap::new();
    while outputs.len() < total as usize {
        let count = credit.min(total - next);
        if count > 0 {
            let inputs: Vec<Vec<u8>> = (next..next + count).map(input).collect();
            let grants: Vec<LeaseGrant<'_>> = (0..count)
                .map(|i| {
                    let task = next + i;
                    leases.insert(LeaseId(u64::from(task) + 100), task);
                    LeaseGrant {
                        lease: LeaseId(u64::from(task) + 100),
                        job: JobId(1),
                        task: TaskId(task),
                        attempt: Attempt(0),
                        kind: 0,
                        input: &inputs[i as usize],
                    }
                })
                .collect();
            let mut buf = vec![0u8; 2048];
            let batch = Batch::<LeaseGrant<'_>>::encode(&grants, &mut buf).unwrap();
            peer.send(&Message::Grant(batch)).await;
            credit -= count;
            next += count;
        }
        let payload = peer.recv().await.expect("worker hung up mid-job");
        match decode_message(&payload).unwrap() {
            Message::Complete { lease, output } => {
                let task = leases
                    .remove(&lease)
                    .expect("answer for a lease never granted");
                assert_eq!(output, crc32c(&input(task)).to_le_bytes(), "task {task}");
                assert!(outputs.insert(task, output.to_vec()).is_none());
            }
            Message::Credit { count } => credit += count,
            Message::Heartbeat => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    outputs
}

#[test]
fn bad_frame_and_dropped_link_reconnect_then_the_job_completes() {
    let (mut rx, mut tx, mut scratch) = (
        vec![0u8; rx_len(MAX_FRAME)],
        vec![0u8; tx_len(MAX_FRAME)],
        [0u8; 16],
    );
    let config = Config::new("loopback", SECRET, &NAMES)
        .with_slots(SLOTS as u32)
        .with_max_frame(MAX_FRAME)
        .with_backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(5),
        ));
    let buffers = Buffers::new(&mut rx, &mut tx, &mut scratch);
    let mut worker = Worker::<SLOTS>::new(config, &KINDS, buffers).unwrap();
    let listener = Listener::default();
    let mut link = PipeLink(listener.clone());
    let mut counter = 0u8;
    let mut entropy = |buf: &mut [u8]| {
        for b in buf {
            counter = counter.wrapping_add(1);
            *b = counter;
        }
    };

    let server = async {
        // 1: a frame whose checksum is wrong: the worker answers with an error and hangs up.
        let (mut peer, _) = Peer::handshake(&listener).await;
        peer.end
            .write_all(&[4, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4])
            .await
            .unwrap();
        assert_eq!(peer.drain().await, ["Error"]);

        // 2: the link drops in the middle of a grant.
        let (mut peer, credit) = Peer::handshake(&listener).await;
        assert_eq!(credit, SLOTS as u32);
        let mut frame = vec![0u8; 256];
        let grant = LeaseGrant {
            lease: LeaseId(1),
            job: JobId(1),
            task: TaskId(0),
            attempt: Attempt(0),
            kind: 0,
            input: b"lost",
        };
        let mut buf = [0u8; 64];
        let batch = Batch::<LeaseGrant<'_>>::encode([grant], &mut buf).unwrap();
        let n = encode_frame(&Message::Grant(batch), &mut frame).unwrap();
        peer.end.write_all(&frame[..n / 2]).await.unwrap();
        drop(peer);

        // 3: a whole job, then JobFinished: the worker says goodbye.
        let (mut peer, credit) = Peer::handshake(&listener).await;
        let outputs = serve_job(&mut peer, credit, 200).await;
        assert_eq!(outputs.len(), 200);
        peer.send(&Message::JobFinished {
            job: JobId(1),
            outcome: JobOutcome::Finished,
        })
        .await;
        let rest = peer.drain().await;
        assert_eq!(rest.last(), Some(&"Goodbye"), "{rest:?}");
    };

    let run = worker.run(&mut link, &mut entropy, Until::JobFinished);
    let (finished, ()) = block_on(async {
        embassy_time::with_timeout(embassy_time::Duration::from_secs(20), join(run, server))
            .await
            .expect("the loopback test timed out")
    });
    assert_eq!(
        finished,
        Finished {
            job: JobId(1),
            outcome: JobOutcome::Finished
        }
    );
    let stats = worker.stats();
    assert_eq!(stats.sessions(), 3);
    assert_eq!(stats.answered(), 200);
}
