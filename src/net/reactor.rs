//! A worker reactor: one thread, one `mio::Poll`, the connections it owns, and a [`Handler`]
//! that decides what frames and channel messages mean.
//!
//! Per loop iteration: socket events (read → frame → handler; writable → mark for flush), then
//! a bounded batch of channel messages, then connections whose input was cut short by the read
//! budget or that the handler resumed, then one flush per connection with output. The read
//! budget, the batch limit, the output cap and the shutdown phases live here once, for every
//! handler. Reactor thread only; other threads reach it through [`super::Router`].

use std::collections::VecDeque;
use std::io::{self, Read};
use std::mem;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use socket2::SockRef;

use super::conn::{bytes_acked, Conn, Outbound, State};
use super::proxy::Header;
use super::router::{Loc, Msg, ReactorHandle};
use super::Ticket;
use crate::proto::codec::{Decoded, FrameError};

const WAKER: Token = Token(usize::MAX);
/// Bytes one connection may read per loop iteration before others get their turn.
const READ_BUDGET: usize = 256 * 1024;
const SCRATCH: usize = 64 * 1024;
/// Channel messages handled per loop iteration, so sockets are never starved. Large because
/// output is flushed once per iteration: a group message reaches a reactor as one channel
/// message per member there, and larger batches let one write carry many of them.
const MSG_BATCH: usize = 16384;
/// How often the handler's [`Handler::on_tick`] runs.
pub(crate) const TICK: Duration = Duration::from_secs(1);
/// How long a half-closed peer gets to acknowledge our last output, and how often we look.
const ACK_WAIT: Duration = Duration::from_secs(5);
const ACK_POLL: Duration = Duration::from_millis(5);
/// Input a lingering connection may still send before it is simply closed.
const LINGER_LIMIT: usize = 1024 * 1024;

/// What a reactor's connections may cost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Each connection begins with a PROXY header naming the client (see `proxy.rs`).
    pub proxy_protocol: bool,
    /// Largest frame (one JSON value), in bytes, once the handler trusts the connection.
    pub max_frame: usize,
    /// Largest frame before that (a chat connection before its login).
    pub max_frame_untrusted: usize,
    /// Largest output queue behind the item being written; a slower reader is closed.
    pub max_outbound: usize,
}

/// What the transport does for a handler: the decisions a handler can take. Reactor thread only.
/// Every call names a connection by [`Loc`]; a connection that has closed since (or a new one in
/// its slot) is simply not found.
pub(crate) trait Io<H: Handler> {
    /// This reactor's index.
    fn reactor(&self) -> usize;
    /// `false` once shutdown began: no new input is read.
    fn running(&self) -> bool;
    /// Queues output for `to`; `Err` gives it back when that connection is closed or lingering.
    fn send(&mut self, to: Loc, out: H::Out) -> Result<(), H::Out>;
    /// Calls [`Handler::on_flushed`] for `at` once its output queue is empty (now, if it is).
    fn notify_flushed(&mut self, at: Loc);
    /// Holds `at`'s further frames (already read or not) until [`Io::resume`].
    fn pause(&mut self, at: Loc);
    /// Frames of `at` may be as large as [`Limits::max_frame`] (`true`, e.g. once logged in),
    /// or only [`Limits::max_frame_untrusted`] (as every connection starts).
    fn trust(&mut self, at: Loc, trusted: bool);
    /// The client's address.
    fn peer(&self, at: Loc) -> Option<std::net::IpAddr>;
    fn resume(&mut self, at: Loc);
    /// Closes `at` now; returns its output that was never (fully) written.
    fn close(&mut self, at: Loc, why: &str) -> Vec<H::Out>;
    /// Answers a stream that cannot be framed with `answer`, then lingers until the peer closes.
    fn reject(&mut self, at: Loc, answer: H::Out);
    /// Takes the messages already queued on this reactor's channel that `pick` chooses; the
    /// others are kept, in order, for later (`pick` may take a part of one it keeps).
    fn take_queued(&mut self, pick: &mut dyn FnMut(&mut H::Msg) -> bool) -> Vec<H::Msg>;
    /// Every connection of this reactor.
    fn conns(&self) -> Vec<Loc>;
}

/// The meaning of frames and messages. One per reactor, on its thread; its methods run there.
pub(crate) trait Handler: Sized {
    /// Messages other threads send this reactor's handler.
    type Msg: Send + std::fmt::Debug + 'static;
    /// An item of a connection's output queue.
    type Out: Outbound + Send + std::fmt::Debug;

    /// A new connection.
    fn on_open(&mut self, _io: &mut impl Io<Self>, _at: Loc) {}
    /// One complete frame from `at`.
    fn on_frame(&mut self, io: &mut impl Io<Self>, at: Loc, frame: &[u8]);
    /// `at`'s byte stream cannot be framed; the handler answers with [`Io::reject`] or closes.
    fn on_frame_error(&mut self, io: &mut impl Io<Self>, at: Loc, error: FrameError);
    fn on_message(&mut self, io: &mut impl Io<Self>, msg: Self::Msg);
    /// The transport closed `at` (peer gone, I/O error, output over its cap, shutdown);
    /// `unsent` is its output never fully written. Not called for [`Io::close`].
    fn on_close(&mut self, io: &mut impl Io<Self>, at: Loc, unsent: Vec<Self::Out>);
    /// `at`'s output queue ran empty after [`Io::notify_flushed`].
    fn on_flushed(&mut self, _io: &mut impl Io<Self>, _at: Loc) {}
    /// About once per [`TICK`], for what depends on time passing rather than on events.
    fn on_tick(&mut self, _io: &mut impl Io<Self>) {}
    /// Shutdown, phase 2 begins: end sessions before output is flushed and connections close.
    fn on_shutdown(&mut self, _io: &mut impl Io<Self>) {}
    /// The reactor exits; `leftover` raced with the exit.
    fn on_exit(&mut self, _leftover: Vec<Self::Msg>) {}
    /// Work in flight that shutdown phase 1 waits for.
    fn busy(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Quiescing { reported: bool },
    Finished,
}

/// The parts of a reactor that exist before its handler does (the handler needs the router,
/// which needs every reactor's handle).
#[derive(Debug)]
pub(crate) struct ReactorSeed<M> {
    poll: Poll,
    rx: Receiver<Msg<M>>,
    notified: Arc<AtomicBool>,
}

impl<M> ReactorSeed<M> {
    pub(crate) fn new() -> io::Result<(ReactorSeed<M>, ReactorHandle<M>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = crossbeam_channel::unbounded();
        let notified = Arc::new(AtomicBool::new(false));
        Ok((ReactorSeed { poll, rx, notified: notified.clone() }, ReactorHandle::new(tx, waker, notified)))
    }
}

impl<M> ReactorSeed<M> {
    /// A handle whose messages land in the returned channel, for tests without a reactor.
    #[cfg(test)]
    pub(crate) fn detached() -> io::Result<(ReactorHandle<M>, Receiver<Msg<M>>)> {
        let (seed, handle) = ReactorSeed::new()?;
        Ok((handle, seed.rx))
    }
}

/// The transport half of a reactor: everything but the handler.
#[derive(Debug)]
pub(super) struct Transport<H: Handler> {
    idx: usize,
    poll: Poll,
    rx: Receiver<Msg<H::Msg>>,
    notified: Arc<AtomicBool>,
    conns: Slab<Conn<H::Out>>,
    next_conn_id: u64,
    limits: Limits,
    scratch: Vec<u8>,
    /// Connections with output to flush at the end of this iteration.
    dirty: Vec<usize>,
    /// Connections with input to look at again: cut short by the read budget, or resumed.
    backlog: Vec<usize>,
    /// Channel messages set aside by `take_queued`; handled before the channel.
    deferred: VecDeque<Msg<H::Msg>>,
    /// Half-closed connections, answered, waiting until the peer acknowledged the answer (or
    /// the deadline): (key, id, deadline).
    acking: Vec<(usize, u64, Instant)>,
    phase: Phase,
}

/// A worker reactor, before and while it runs on its thread.
#[derive(Debug)]
pub(crate) struct Reactor<H: Handler> {
    io: Transport<H>,
    handler: H,
    /// Where shutdown phase 1 is reported.
    quiet: Option<Sender<usize>>,
}

impl<H: Handler> Reactor<H> {
    pub(crate) fn new(
        idx: usize,
        seed: ReactorSeed<H::Msg>,
        limits: Limits,
        handler: H,
        quiet: Option<Sender<usize>>,
    ) -> Self {
        let io = Transport {
            idx,
            poll: seed.poll,
            rx: seed.rx,
            notified: seed.notified,
            conns: Slab::new(),
            next_conn_id: 0,
            limits,
            scratch: vec![0; SCRATCH],
            dirty: Vec::new(),
            backlog: Vec::new(),
            deferred: VecDeque::new(),
            acking: Vec::new(),
            phase: Phase::Running,
        };
        Reactor { io, handler, quiet }
    }

    /// The event loop. Returns after `Msg::Finish`, or when the poll fails.
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut more_msgs = false;
        let mut next_tick = Instant::now() + TICK;
        while self.io.phase != Phase::Finished {
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                // Acknowledged output is forgotten here too (flushes look only when much waits).
                for (_, conn) in self.io.conns.iter_mut() {
                    conn.confirm_received();
                }
                self.handler.on_tick(&mut self.io);
            }
            let timeout = if more_msgs || !self.io.backlog.is_empty() {
                Duration::ZERO
            } else if !self.io.acking.is_empty() {
                ACK_POLL // acknowledgements raise no event
            } else {
                next_tick - now
            };
            let timeout = Some(timeout);
            if let Err(e) = self.io.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("reactor {}: poll failed: {e}", self.io.idx);
                break;
            }
            for event in events.iter() {
                match event.token() {
                    // Cleared before the queue is read: a message sent after this wakes us again.
                    WAKER => self.io.notified.store(false, Ordering::Release),
                    Token(key) => {
                        let Some(conn) = self.io.conns.get_mut(key) else { continue };
                        if event.is_writable() {
                            self.io.dirty.push(key);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            conn.readable = true;
                            self.pump(key);
                        }
                    }
                }
            }
            more_msgs = self.handle_messages();
            for key in mem::take(&mut self.io.backlog) {
                self.pump(key);
            }
            self.flush_dirty();
            if !self.io.acking.is_empty() {
                self.close_acknowledged();
            }
            if self.io.phase == (Phase::Quiescing { reported: false }) && !self.handler.busy() {
                self.io.phase = Phase::Quiescing { reported: true };
                if let Some(quiet) = &self.quiet {
                    let _ = quiet.send(self.io.idx);
                }
            }
        }
        let mut leftover = Vec::new();
        for msg in self.io.deferred.drain(..).chain(self.io.rx.try_iter()) {
            if let Msg::App(m) = msg {
                leftover.push(m);
            }
        }
        self.handler.on_exit(leftover);
    }

    /// Handles up to one batch of channel messages; `true` if more are waiting.
    fn handle_messages(&mut self) -> bool {
        for _ in 0..MSG_BATCH {
            let msg = match self.io.deferred.pop_front() {
                Some(msg) => msg,
                None => match self.io.rx.try_recv() {
                    Ok(msg) => msg,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => return false,
                },
            };
            match msg {
                Msg::NewConn(stream, ticket) => self.accept(stream, ticket),
                Msg::App(m) => self.handler.on_message(&mut self.io, m),
                Msg::Quiesce => {
                    if self.io.phase == Phase::Running {
                        self.io.phase = Phase::Quiescing { reported: false };
                    }
                }
                Msg::Finish { deadline } => {
                    self.finish(deadline);
                    return false;
                }
            }
        }
        true
    }

    fn accept(&mut self, mut stream: TcpStream, ticket: Ticket) {
        if self.io.phase != Phase::Running {
            return; // dropped: the node is shutting down
        }
        let entry = self.io.conns.vacant_entry();
        let key = entry.key();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.io.poll.registry().register(&mut stream, Token(key), interest) {
            log::warn!("reactor {}: cannot register a connection: {e}", self.io.idx);
            return;
        }
        self.io.next_conn_id += 1;
        let id = self.io.next_conn_id;
        log::debug!("conn {}.{id}: open", self.io.idx);
        let mut conn = Conn::new(stream, id, self.io.limits.max_frame_untrusted, ticket);
        conn.awaiting_proxy = self.io.limits.proxy_protocol;
        entry.insert(conn);
        let at = Loc { reactor: self.io.idx, token: key, conn: id };
        self.handler.on_open(&mut self.io, at);
        // Edge-triggered: bytes that came before registration raise no event; look now.
        self.pump(key);
    }

    /// Handles buffered frames, then reads more while the connection may proceed.
    fn pump(&mut self, key: usize) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(conn) = self.io.conns.get(key) else { return };
            if conn.paused {
                return;
            }
            if conn.is_open() && !conn.inbuf.is_empty() && !self.process_inbuf(key) {
                return;
            }
            let running = self.io.phase == Phase::Running;
            let Some(conn) = self.io.conns.get_mut(key) else { return };
            if !conn.readable || conn.eof || !running {
                return; // when shutting down, frames already received are done, no new ones read
            }
            if budget == 0 {
                self.io.backlog.push(key);
                return;
            }
            let mut scratch = mem::take(&mut self.io.scratch);
            let go_on = match conn.stream.read(&mut scratch) {
                Ok(0) if conn.is_open() => {
                    // Half-close: answer what was asked, then close (see `flush_dirty`).
                    conn.eof = true;
                    self.io.dirty.push(key);
                    false
                }
                Ok(0) => {
                    self.close(key, "peer closed");
                    false
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    self.on_input(key, &scratch[..n]);
                    true
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.readable = false;
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
                Err(e) => {
                    self.close(key, &e.to_string());
                    false
                }
            };
            self.io.scratch = scratch;
            if !go_on {
                return;
            }
        }
    }

    /// New bytes from the socket. Framed in place when nothing is pending, so an idle connection
    /// holds no input buffer; only an incomplete tail (or input behind a pause) is copied.
    fn on_input(&mut self, key: usize, data: &[u8]) {
        let Some(conn) = self.io.conns.get_mut(key) else { return };
        if let State::Lingering { discarded } = &mut conn.state {
            *discarded += data.len();
            if *discarded > LINGER_LIMIT {
                self.close(key, "lingering peer kept sending");
            }
            return;
        }
        if conn.inbuf.is_empty() {
            let id = conn.id;
            let used = self.process(key, data);
            if let Some(conn) = self.io.conns.get_mut(key).filter(|c| c.id == id && c.is_open()) {
                conn.inbuf.extend_from_slice(&data[used..]);
            }
        } else {
            conn.inbuf.extend_from_slice(data);
            self.process_inbuf(key);
        }
    }

    /// Processes `inbuf`; `true` if the connection may read more.
    fn process_inbuf(&mut self, key: usize) -> bool {
        let Some(conn) = self.io.conns.get_mut(key) else { return false };
        let id = conn.id;
        let pending = mem::take(&mut conn.inbuf);
        let used = self.process(key, &pending);
        let Some(conn) = self.io.conns.get_mut(key).filter(|c| c.id == id) else { return false };
        if conn.is_open() {
            conn.inbuf = pending;
            conn.inbuf.drain(..used);
            conn.compact_input();
        }
        conn.is_open() && !conn.paused
    }

    /// Frames `data` and hands each frame to the handler until the data runs out or the handler
    /// pauses or closes the connection. Returns how many bytes were used.
    fn process(&mut self, key: usize, data: &[u8]) -> usize {
        let Some(id) = self.io.conns.get(key).map(|c| c.id) else { return data.len() };
        let at = Loc { reactor: self.io.idx, token: key, conn: id };
        let mut used = 0;
        loop {
            let Some(conn) = self.io.conns.get_mut(key).filter(|c| c.id == id) else { return data.len() };
            if !conn.is_open() {
                return data.len();
            }
            if conn.paused {
                return used;
            }
            if conn.awaiting_proxy {
                match super::proxy::parse(&data[used..]) {
                    Header::Incomplete => return used,
                    Header::Complete { len, client } => {
                        used += len;
                        conn.awaiting_proxy = false;
                        let admitted = client.map_or(Ok(()), |ip| conn.ticket.readdress(ip));
                        if let Err(why) = admitted {
                            log::debug!("conn {}.{id}: refused after its PROXY header: {why:?}", self.io.idx);
                            self.reset(key, "over a connection limit");
                            return data.len();
                        }
                        continue;
                    }
                    Header::Invalid => {
                        log::debug!("conn {}.{id}: no valid PROXY header", self.io.idx);
                        self.reset(key, "no PROXY header");
                        return data.len();
                    }
                }
            }
            match conn.decoder.decode(&data[used..]) {
                Ok(Decoded::Frame { start, end }) => {
                    let frame = &data[used + start..used + end];
                    used += end;
                    self.handler.on_frame(&mut self.io, at, frame);
                }
                Ok(Decoded::Need { discard }) => return used + discard,
                Err(e) => {
                    log::debug!("conn {}.{id}: framing error: {e}", self.io.idx);
                    self.handler.on_frame_error(&mut self.io, at, e);
                    return data.len();
                }
            }
        }
    }

    /// Resets `key` at once (nothing of it was read as a request) and tells the handler.
    fn reset(&mut self, key: usize, why: &str) {
        if let Some(conn) = self.io.conns.get(key) {
            let _ = SockRef::from(&conn.stream).set_linger(Some(Duration::ZERO));
        }
        self.close(key, why);
    }

    /// Closes `key` and tells the handler, with the output that never went out.
    fn close(&mut self, key: usize, why: &str) {
        let Some(id) = self.io.conns.get(key).map(|c| c.id) else { return };
        let at = Loc { reactor: self.io.idx, token: key, conn: id };
        let unsent = self.io.close(at, why);
        self.handler.on_close(&mut self.io, at, unsent);
    }

    fn flush_dirty(&mut self) {
        let mut dirty = mem::take(&mut self.io.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        let mut flushed = Vec::new();
        for key in dirty.drain(..) {
            let Some(conn) = self.io.conns.get_mut(key) else { continue };
            if conn.out.is_empty() && !conn.eof {
                if mem::take(&mut conn.notify_flushed) {
                    flushed.push(Loc { reactor: self.io.idx, token: key, conn: conn.id });
                }
                continue;
            }
            if let Err(e) = conn.flush() {
                self.close(key, &e.to_string());
                continue;
            }
            if conn.eof && !conn.paused && conn.out.is_empty() {
                if conn.confirm_received() {
                    // A half-closed peer may still be reading: close once it has our answer.
                    self.io.acking.push((key, conn.id, Instant::now() + ACK_WAIT));
                } else {
                    self.close(key, "peer closed");
                }
                continue;
            }
            let backlog = conn.out.backlog_bytes();
            if backlog > self.io.limits.max_outbound {
                log::warn!("conn {}.{}: reader too slow, {backlog} bytes queued; closing", self.io.idx, conn.id);
                self.close(key, "outbound queue over its cap");
            } else if conn.out.is_empty() && mem::take(&mut conn.notify_flushed) {
                flushed.push(Loc { reactor: self.io.idx, token: key, conn: conn.id });
            }
        }
        for at in flushed {
            self.handler.on_flushed(&mut self.io, at);
        }
        if self.io.dirty.is_empty() {
            self.io.dirty = dirty; // keep the allocation
        }
    }

    /// Closes the half-closed connections whose peer has acknowledged everything (or that
    /// waited long enough: what it did not acknowledge goes back to the handler).
    fn close_acknowledged(&mut self) {
        let now = Instant::now();
        for (key, id, deadline) in mem::take(&mut self.io.acking) {
            let Some(conn) = self.io.conns.get_mut(key).filter(|c| c.id == id) else { continue };
            if !conn.out.is_empty() {
                continue; // more output came: `flush_dirty` looks at it again
            }
            if !conn.confirm_received() || now >= deadline {
                self.close(key, "peer closed");
            } else {
                self.io.acking.push((key, id, deadline));
            }
        }
    }

    /// Shutdown phase 2. Sessions end first so nothing new is delivered to them; output gets
    /// until `deadline` to drain; then every connection closes (the handler keeps what is unsent).
    fn finish(&mut self, deadline: Instant) {
        self.handler.on_shutdown(&mut self.io);
        let mut events = Events::with_capacity(256);
        loop {
            let io = &mut self.io;
            io.dirty.extend(io.conns.iter().filter(|(_, c)| !c.out.is_empty()).map(|(k, _)| k));
            self.flush_dirty();
            let pending = self.io.conns.iter().any(|(_, c)| !c.out.is_empty());
            // Written is not received: give peers their acknowledgements too, which raise no
            // event, so look again every few milliseconds.
            let unconfirmed = self.io.conns.iter_mut().any(|(_, c)| c.confirm_received());
            let now = Instant::now();
            if !(pending || unconfirmed) || now >= deadline {
                break;
            }
            let _ = self.io.poll.poll(&mut events, Some((deadline - now).min(Duration::from_millis(5))));
        }
        let keys: Vec<usize> = self.io.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key, "server shutting down");
        }
        self.io.phase = Phase::Finished;
    }
}

impl<H: Handler> Transport<H> {
    fn conn_mut(&mut self, at: Loc) -> Option<&mut Conn<H::Out>> {
        if at.reactor != self.idx {
            return None;
        }
        self.conns.get_mut(at.token).filter(|c| c.id == at.conn)
    }
}

impl<H: Handler> Io<H> for Transport<H> {
    fn reactor(&self) -> usize {
        self.idx
    }

    fn running(&self) -> bool {
        self.phase == Phase::Running
    }

    fn send(&mut self, to: Loc, out: H::Out) -> Result<(), H::Out> {
        match self.conn_mut(to) {
            Some(conn) if conn.is_open() => {
                conn.out.push(out);
                self.dirty.push(to.token);
                Ok(())
            }
            _ => Err(out),
        }
    }

    fn notify_flushed(&mut self, at: Loc) {
        if let Some(conn) = self.conn_mut(at) {
            conn.notify_flushed = true;
            self.dirty.push(at.token);
        }
    }

    fn pause(&mut self, at: Loc) {
        if let Some(conn) = self.conn_mut(at) {
            conn.paused = true;
        }
    }

    fn peer(&self, at: Loc) -> Option<std::net::IpAddr> {
        self.conns.get(at.token).filter(|c| c.id == at.conn).map(|c| c.ticket.peer())
    }

    fn trust(&mut self, at: Loc, trusted: bool) {
        let max = if trusted { self.limits.max_frame } else { self.limits.max_frame_untrusted };
        if let Some(conn) = self.conn_mut(at) {
            conn.decoder.set_max_frame(max);
        }
    }

    fn resume(&mut self, at: Loc) {
        if let Some(conn) = self.conn_mut(at) {
            conn.paused = false;
            self.backlog.push(at.token);
            self.dirty.push(at.token); // a half-closed peer is closed once answered
        }
    }

    fn close(&mut self, at: Loc, why: &str) -> Vec<H::Out> {
        if self.conn_mut(at).is_none() {
            return Vec::new();
        }
        let mut conn = self.conns.remove(at.token);
        log::debug!("conn {}.{}: closed: {why}", self.idx, conn.id);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if conn.confirm_received() {
            // What the peer has not acknowledged goes back to the handler, so the kernel must
            // not deliver it after all: reset instead of closing, which drops the send queue.
            let _ = SockRef::from(&conn.stream).set_linger(Some(Duration::ZERO));
            return conn.out.take(bytes_acked(&conn.stream));
        }
        let _ = conn.stream.shutdown(Shutdown::Both);
        conn.out.take(0)
    }

    fn reject(&mut self, at: Loc, answer: H::Out) {
        if let Some(conn) = self.conn_mut(at) {
            conn.out.push(answer);
            conn.state = State::Lingering { discarded: 0 };
            conn.inbuf = Vec::new();
            self.dirty.push(at.token);
        }
    }

    fn take_queued(&mut self, pick: &mut dyn FnMut(&mut H::Msg) -> bool) -> Vec<H::Msg> {
        // Messages deferred earlier were queued before the channel's: look at them first.
        let (mut taken, mut kept) = (Vec::new(), VecDeque::new());
        for msg in self.deferred.drain(..).chain(self.rx.try_iter()) {
            match msg {
                Msg::App(mut m) => match pick(&mut m) {
                    true => taken.push(m),
                    false => kept.push_back(Msg::App(m)),
                },
                other => kept.push_back(other),
            }
        }
        self.deferred = kept;
        taken
    }

    fn conns(&self) -> Vec<Loc> {
        self.conns.iter().map(|(token, c)| Loc { reactor: self.idx, token, conn: c.id }).collect()
    }
}
