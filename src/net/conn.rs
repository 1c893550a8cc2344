//! One connection's transport state: its socket, input buffer, framing and output queue.
//! Reactor thread only.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::net::Shutdown;

use mio::net::TcpStream;

use crate::proto::codec::Decoder;

/// Writes gathered into one `writev`.
const MAX_IOVECS: usize = 64;

/// An item of a connection's output queue: bytes to write, and whatever the handler wants back
/// if they never reach the peer (see [`super::Handler::on_close`]).
pub(crate) trait Outbound {
    fn bytes(&self) -> &[u8];
    /// Kept after it is written until the peer's TCP stack has acknowledged its last byte, so
    /// that a connection that dies first gives it back as unsent.
    fn needs_peer_ack(&self) -> bool {
        false
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
}

/// The queued output of one connection, gathered into `writev` calls.
///
/// ```text
///   unconfirmed (written, peer's ack not seen) ║ front (front_done bytes written) │ item │ … │ back
///                                              ║ └─────── bytes counts every item whole ──────┘
/// ```
///
/// A write only puts bytes in the kernel's send queue: a peer that vanishes or resets loses
/// whatever its TCP stack never acknowledged. Items that matter ([`Outbound::needs_peer_ack`])
/// therefore wait in `unconfirmed`, with the stream offset of their last byte, until the
/// kernel's count of acknowledged bytes passes it.
/// Written items (or bytes of them) waiting for the peer's acknowledgement at which a flush
/// looks it up.
const CONFIRM_AT: usize = 64;
const CONFIRM_AT_BYTES: u64 = 64 * 1024;

#[derive(Debug)]
pub(super) struct OutQueue<O> {
    items: VecDeque<O>,
    /// Bytes queued, the front item counted whole.
    bytes: usize,
    /// Bytes of the front item already written.
    front_done: usize,
    /// Bytes ever written to the socket.
    written: u64,
    /// Written items that need the peer's acknowledgement, each with its end offset.
    unconfirmed: VecDeque<(u64, O)>,
}

impl<O: Outbound> OutQueue<O> {
    pub(super) fn new() -> Self {
        OutQueue { items: VecDeque::new(), bytes: 0, front_done: 0, written: 0, unconfirmed: VecDeque::new() }
    }

    /// Written items waiting for the peer's acknowledgement.
    pub(super) fn unconfirmed_len(&self) -> usize {
        self.unconfirmed.len()
    }

    /// About how many bytes they hold (all but the oldest item's).
    pub(super) fn unconfirmed_bytes(&self) -> u64 {
        self.unconfirmed.front().map_or(0, |(end, _)| self.written - end)
    }

    /// `true` while some written item waits for the peer's acknowledgement.
    pub(super) fn awaits_peer(&self) -> bool {
        !self.unconfirmed.is_empty()
    }

    /// Forgets the written items the peer has acknowledged: `acked` bytes of the stream.
    pub(super) fn confirm(&mut self, acked: u64) {
        while self.unconfirmed.front().is_some_and(|(end, _)| *end <= acked) {
            self.unconfirmed.pop_front();
        }
        if self.unconfirmed.is_empty() && self.unconfirmed.capacity() > 16 {
            self.unconfirmed = VecDeque::new();
        }
    }

    pub(super) fn push(&mut self, out: O) {
        self.bytes += out.bytes().len();
        self.items.push_back(out);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes waiting behind the item being written. A single item larger than the cap (a login
    /// ack with a full mailbox) is still sent; a reader that lets more pile up is not.
    pub(super) fn backlog_bytes(&self) -> usize {
        self.bytes - self.items.front().map_or(0, |o| o.bytes().len())
    }

    /// Writes until done or `w` is full, gathering many items per call.
    pub(super) fn write_to(&mut self, w: &mut impl Write) -> io::Result<()> {
        while !self.items.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n = 0;
            for (i, out) in self.items.iter().take(MAX_IOVECS).enumerate() {
                let skip = if i == 0 { self.front_done } else { 0 };
                slices[i] = IoSlice::new(&out.bytes()[skip..]);
                n += 1;
            }
            match w.write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.advance(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.items.is_empty() && self.items.capacity() > 16 {
            self.items = VecDeque::new(); // idle connections give their queue back
        }
        Ok(())
    }

    fn advance(&mut self, mut written: usize) {
        self.written += written as u64;
        while let Some(front) = self.items.front() {
            let len = front.bytes().len();
            let left = len - self.front_done;
            if written < left {
                self.front_done += written;
                return;
            }
            written -= left;
            self.bytes -= len;
            self.front_done = 0;
            if let Some(done) = self.items.pop_front().filter(Outbound::needs_peer_ack) {
                let end = self.written - written as u64;
                self.unconfirmed.push_back((end, done));
            }
        }
    }

    /// Every item the peer has not received whole: those written but not acknowledged by its
    /// TCP stack (`acked` bytes were), then those not yet fully written. A partly received one
    /// counts as unsent: the peer cannot use half a frame.
    pub(super) fn take(&mut self, acked: u64) -> Vec<O> {
        self.confirm(acked);
        self.bytes = 0;
        self.front_done = 0;
        self.unconfirmed.drain(..).map(|(_, o)| o).chain(self.items.drain(..)).collect()
    }
}

#[derive(Debug)]
pub(super) struct Conn<O> {
    pub(super) stream: TcpStream,
    /// Unique within the reactor: tells this connection from a later one in the same slot.
    pub(super) id: u64,
    pub(super) state: State,
    /// Unparsed input, kept only while a frame is incomplete or the handler paused the input.
    pub(super) inbuf: Vec<u8>,
    pub(super) decoder: Decoder,
    pub(super) out: OutQueue<O>,
    write_shut: bool,
    /// The handler holds further frames until it resumes the connection.
    pub(super) paused: bool,
    /// The socket may have unread input (edge-triggered: set by events, cleared by `WouldBlock`).
    pub(super) readable: bool,
    /// The peer shut down its side: no more requests; close once answered.
    pub(super) eof: bool,
    /// The handler wants to hear when the output queue is empty.
    pub(super) notify_flushed: bool,
    /// Its first bytes must be a PROXY header, not read yet.
    pub(super) awaiting_proxy: bool,
    /// Its place among the node's connections, given back when it is dropped (and the
    /// client's address).
    pub(super) ticket: super::Ticket,
}

impl<O: Outbound> Conn<O> {
    pub(super) fn new(stream: TcpStream, id: u64, max_frame: usize, ticket: super::Ticket) -> Self {
        Conn {
            stream,
            id,
            state: State::Open,
            inbuf: Vec::new(),
            decoder: Decoder::new(max_frame),
            out: OutQueue::new(),
            write_shut: false,
            paused: false,
            readable: true,
            eof: false,
            notify_flushed: false,
            awaiting_proxy: false,
            ticket,
        }
    }

    pub(super) fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Writes queued output; once a lingering connection's answer is out, shuts down our side.
    /// Written items are forgotten once acknowledged, looked up only when many wait: bytes
    /// just written are not acknowledged yet, and a lookup is a system call (the reactor's
    /// tick and a close look up the rest).
    pub(super) fn flush(&mut self) -> io::Result<()> {
        self.out.write_to(&mut self.stream)?;
        if self.out.unconfirmed_len() >= CONFIRM_AT || self.out.unconfirmed_bytes() >= CONFIRM_AT_BYTES {
            self.confirm_received();
        }
        if self.out.is_empty() && matches!(self.state, State::Lingering { .. }) && !self.write_shut {
            self.write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    /// Forgets written items the peer has acknowledged; `true` if some are still waiting.
    pub(super) fn confirm_received(&mut self) -> bool {
        if self.out.awaits_peer() {
            self.out.confirm(bytes_acked(&self.stream));
        }
        self.out.awaits_peer()
    }

    /// Releases input buffer memory once nothing is pending.
    pub(super) fn compact_input(&mut self) {
        if self.inbuf.is_empty() && self.inbuf.capacity() > 0 {
            self.inbuf = Vec::new();
        }
    }
}

/// How many bytes of the stream the peer's TCP stack has acknowledged (`tcpi_bytes_acked`,
/// Linux 4.1+). Still readable after a reset. 0 if the kernel cannot say, so nothing counts
/// as received that might not have been.
pub(super) fn bytes_acked(stream: &TcpStream) -> u64 {
    use std::os::fd::AsRawFd;
    // SAFETY: `info` is a plain C struct the kernel fills up to `len` bytes; the fd is open.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        let have = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + std::mem::size_of::<u64>();
        if rc == 0 && len as usize >= have {
            info.tcpi_bytes_acked
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Outbound for Vec<u8> {
        fn bytes(&self) -> &[u8] {
            self
        }
    }

    /// A writer that takes at most `room` bytes, then would block.
    struct Pipe {
        room: usize,
        got: Vec<u8>,
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Invariant 6's exemption: the item being written does not count against the cap, so a
    /// huge login ack still goes out; what queues behind it does.
    #[test]
    fn the_item_in_progress_is_exempt_from_the_cap() {
        let mut q = OutQueue::new();
        q.push(vec![b'a'; 10_000]);
        assert_eq!(q.backlog_bytes(), 0);
        let mut pipe = Pipe { room: 4_000, got: Vec::new() };
        q.write_to(&mut pipe).unwrap();
        assert_eq!(q.backlog_bytes(), 0, "a partly written item is still exempt");
        q.push(vec![b'b'; 300]);
        q.push(vec![b'c'; 200]);
        assert_eq!(q.backlog_bytes(), 500);
        pipe.room = 6_300;
        q.write_to(&mut pipe).unwrap();
        assert_eq!(q.backlog_bytes(), 0);
        assert_eq!(pipe.got.len(), 10_300);
        // The partly written item and everything behind it come back as unsent.
        let unsent = q.take(0);
        assert_eq!(unsent, vec![vec![b'c'; 200]]);
        assert!(q.is_empty());
    }

    /// Output that must reach the peer whole.
    #[derive(Debug, PartialEq)]
    struct Precious(Vec<u8>);

    impl Outbound for Precious {
        fn bytes(&self) -> &[u8] {
            &self.0
        }
        fn needs_peer_ack(&self) -> bool {
            true
        }
    }

    /// Written is not received: an item stays the sender's until the peer's TCP stack has
    /// acknowledged its last byte.
    #[test]
    fn written_items_come_back_until_the_peer_acknowledged_them() {
        let mut q = OutQueue::new();
        for b in [b'a', b'b', b'c'] {
            q.push(Precious(vec![b; 100]));
        }
        let mut pipe = Pipe { room: 250, got: Vec::new() };
        q.write_to(&mut pipe).unwrap();
        assert!(q.awaits_peer());
        q.confirm(99);
        assert!(q.awaits_peer(), "99 of 100 bytes is not the whole item");
        q.confirm(100);
        // 'b' written but acknowledged only in part, 'c' written in part.
        let unsent = q.take(150);
        assert_eq!(unsent, vec![Precious(vec![b'b'; 100]), Precious(vec![b'c'; 100])]);
        assert!(!q.awaits_peer());
    }
}
