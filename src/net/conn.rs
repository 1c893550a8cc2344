//! One client connection: its socket, its buffers and its session. Reactor thread only.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::net::Shutdown;
use std::sync::Arc;

use mio::net::TcpStream;

use crate::proto::codec::Decoder;
use crate::service::Session;
use crate::UserId;

/// Writes gathered into one `writev`.
const MAX_IOVECS: usize = 64;

/// One queued outbound message.
#[derive(Debug)]
pub(super) enum Out {
    /// An answer to this connection's own request.
    Reply(Vec<u8>),
    /// A chat message for `user`, shared with its other recipients; stored offline if unsent.
    Chat(UserId, Arc<str>),
    /// A login ack: the offline messages it carries go back to the mailbox if it is not sent.
    LoginAck(UserId, Vec<u8>),
}

impl Out {
    fn bytes(&self) -> &[u8] {
        match self {
            Out::Reply(b) | Out::LoginAck(_, b) => b,
            Out::Chat(_, m) => m.as_bytes(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Open,
    /// A framing error was answered: flush, shut down our side, discard input until the peer
    /// closes, so the answer is not destroyed by a reset.
    Lingering {
        discarded: usize,
    },
    /// The socket is closed; the slot lives on until the job in flight returns.
    Closed,
}

#[derive(Debug)]
pub(super) struct Conn {
    pub stream: TcpStream,
    /// Unique within the reactor: tells this connection from a later one in the same slot.
    pub id: u64,
    pub state: State,
    /// Unparsed input, kept only while a frame is incomplete or a job holds the connection.
    pub inbuf: Vec<u8>,
    pub decoder: Decoder,
    out: VecDeque<Out>,
    /// Bytes queued in `out`, the front item counted whole.
    out_bytes: usize,
    /// Bytes of the front item already written.
    out_front: usize,
    write_shut: bool,
    /// Deliveries that arrived while a job was in flight; they queue behind its answer.
    pub held: Vec<(UserId, Arc<str>)>,
    pub session: Session,
    /// A job is in flight: later requests wait in `inbuf`.
    pub busy: bool,
    /// A mailbox drain was asked for while busy.
    pub drain_wanted: bool,
    /// The socket may have unread input (edge-triggered: set by events, cleared by `WouldBlock`).
    pub readable: bool,
    /// The peer shut down its side: no more requests; close once answered.
    pub eof: bool,
}

impl Conn {
    pub fn new(stream: TcpStream, id: u64, max_frame: usize) -> Conn {
        Conn {
            stream,
            id,
            state: State::Open,
            inbuf: Vec::new(),
            decoder: Decoder::new(max_frame),
            out: VecDeque::new(),
            out_bytes: 0,
            out_front: 0,
            write_shut: false,
            held: Vec::new(),
            session: Session::default(),
            busy: false,
            drain_wanted: false,
            readable: true,
            eof: false,
        }
    }

    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    pub fn queue(&mut self, out: Out) {
        self.out_bytes += out.bytes().len();
        self.out.push_back(out);
    }

    /// Bytes waiting behind the message being written. A single message larger than the cap
    /// (a login ack with a full mailbox) is still sent; a reader that lets more pile up is not.
    pub fn backlog_bytes(&self) -> usize {
        self.out_bytes - self.out.front().map_or(0, |o| o.bytes().len())
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Writes queued output until done or the socket is full, gathering many messages per call.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n = 0;
            for (i, out) in self.out.iter().take(MAX_IOVECS).enumerate() {
                let skip = if i == 0 { self.out_front } else { 0 };
                slices[i] = IoSlice::new(&out.bytes()[skip..]);
                n += 1;
            }
            match self.stream.write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.advance(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.out.is_empty() && self.out.capacity() > 16 {
            self.out = VecDeque::new(); // idle connections give their queue back
        }
        if self.out.is_empty() && matches!(self.state, State::Lingering { .. }) && !self.write_shut {
            self.write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    fn advance(&mut self, mut written: usize) {
        while let Some(front) = self.out.front() {
            let len = front.bytes().len();
            let left = len - self.out_front;
            if written < left {
                self.out_front += written;
                return;
            }
            written -= left;
            self.out_bytes -= len;
            self.out_front = 0;
            self.out.pop_front();
        }
    }

    /// Takes every chat message not yet fully written, and every held one, for the offline store.
    /// A partly written message counts as unsent: the client cannot use half a frame.
    pub fn take_unsent(&mut self) -> Vec<(UserId, Arc<str>)> {
        let mut unsent = Vec::new();
        for out in self.out.drain(..) {
            match out {
                Out::Chat(user, msg) => unsent.push((user, msg)),
                Out::LoginAck(user, bytes) => unsent.extend(offline_of_ack(&bytes).map(|m| (user, m))),
                Out::Reply(_) => {}
            }
        }
        unsent.append(&mut self.held);
        self.out_bytes = 0;
        self.out_front = 0;
        unsent
    }

    /// Releases input buffer memory once nothing is pending.
    pub fn compact_input(&mut self) {
        if self.inbuf.is_empty() && self.inbuf.capacity() > 0 {
            self.inbuf = Vec::new();
        }
    }
}

/// The stored messages inside an encoded login ack (rare path: only when it could not be sent).
fn offline_of_ack(bytes: &[u8]) -> impl Iterator<Item = Arc<str>> {
    #[derive(serde::Deserialize)]
    struct Ack {
        #[serde(default)]
        offlinemsg: Vec<String>,
    }
    let msgs = serde_json::from_slice::<Ack>(bytes).map_or_else(|_| Vec::new(), |a| a.offlinemsg);
    msgs.into_iter().map(|m| Arc::from(m + "\n"))
}
