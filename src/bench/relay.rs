//! A bare relay: the chat server's transport with the chat taken out, as a benchmark baseline
//! ("what the machine and the transport allow").
//!
//! It shares the server's parts: the round-robin hand-off to one mio reactor per thread, the
//! frame codec, the connection's output queue (gathered `writev`), the sharded presence map and
//! the channel hop with coalesced wake-ups. It leaves out everything the chat adds: no JSON
//! parsing (a byte scan finds `msgid`, `id`, `toid` and `seq`), no validation, sessions, store,
//! pool or bus. Register answers a fresh id, login binds an id to the connection (no password),
//! and any other frame with a `toid` is forwarded verbatim to that user, acked when it has a `seq`.
//! It trusts its clients: it is a yardstick, not a server.

use std::io::{self, Read};
use std::net::Shutdown;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use memchr::memmem;
use mio::net::TcpStream;
use mio::{Events, Interest, Token};
use slab::Slab;

use super::conn::{Conn, Out};
use super::reactor::{Reactor, ReactorSeed, WAKER};
use super::router::{Msg, Router};
use crate::proto::codec::Decoded;
use crate::service::{Delivery, Loc, Presence};
use crate::UserId;

const MAX_FRAME: usize = 64 * 1024;

/// Serves the relay protocol on `listener` with `threads` reactors; returns only on error.
pub fn serve(listener: std::net::TcpListener, threads: usize) -> io::Result<()> {
    let mut seeds = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..threads.max(1) {
        let (seed, handle) = Reactor::seed()?;
        seeds.push(seed);
        handles.push(handle);
    }
    let router = Arc::new(Router::new(handles));
    let shared = Arc::new(Shared { presence: Presence::default(), next_id: AtomicU32::new(1) });
    for (idx, seed) in seeds.into_iter().enumerate() {
        let relay =
            Relay { idx, seed, conns: Slab::new(), next_conn: 0, router: router.clone(), shared: shared.clone() };
        std::thread::Builder::new().name(format!("relay-{idx}")).spawn(move || relay.run())?;
    }
    // A blocking accept loop is enough for a baseline: connections are set up before timing starts.
    let mut next = 0;
    loop {
        let (stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        router.send(next, Msg::NewConn(TcpStream::from_std(stream)));
        next = (next + 1) % router.len();
    }
}

#[derive(Debug)]
struct Shared {
    presence: Presence,
    next_id: AtomicU32,
}

struct Relay {
    idx: usize,
    seed: ReactorSeed,
    conns: Slab<(Conn, Option<UserId>)>,
    next_conn: u64,
    router: Arc<Router>,
    shared: Arc<Shared>,
}

impl Relay {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut scratch = vec![0u8; 64 * 1024];
        let mut dirty = Vec::new();
        loop {
            if let Err(e) = self.seed.poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("relay {}: poll failed: {e}", self.idx);
                return;
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => self.seed.notified.store(false, Ordering::Release),
                    Token(key) => {
                        if event.is_writable() {
                            dirty.push(key);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(key, &mut scratch, &mut dirty);
                        }
                    }
                }
            }
            while let Ok(msg) = self.seed.rx.try_recv() {
                match msg {
                    Msg::NewConn(stream) => self.accept(stream, &mut scratch, &mut dirty),
                    Msg::Deliver(d) => self.deliver(d, &mut dirty),
                    _ => {}
                }
            }
            dirty.sort_unstable();
            dirty.dedup();
            for key in dirty.drain(..) {
                let failed = self.conns.get_mut(key).is_some_and(|(c, _)| c.flush().is_err());
                if failed {
                    self.close(key);
                }
            }
        }
    }

    fn accept(&mut self, mut stream: TcpStream, scratch: &mut [u8], dirty: &mut Vec<usize>) {
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if self.seed.poll.registry().register(&mut stream, Token(key), interest).is_err() {
            return;
        }
        self.next_conn += 1;
        entry.insert((Conn::new(stream, self.next_conn, MAX_FRAME), None));
        self.read(key, scratch, dirty);
    }

    /// Reads until the socket is drained, forwarding every complete frame.
    fn read(&mut self, key: usize, scratch: &mut [u8], dirty: &mut Vec<usize>) {
        loop {
            let Some((conn, _)) = self.conns.get_mut(key) else { return };
            match conn.stream.read(scratch) {
                Ok(0) => return self.close(key),
                Ok(n) if conn.inbuf.is_empty() => {
                    // Framed in place, as the server does; only an incomplete tail is kept.
                    let used = self.frames(key, &scratch[..n], dirty);
                    let Some((conn, _)) = self.conns.get_mut(key) else { return };
                    conn.inbuf.extend_from_slice(&scratch[used..n]);
                }
                Ok(n) => {
                    let mut input = std::mem::take(&mut conn.inbuf);
                    input.extend_from_slice(&scratch[..n]);
                    let used = self.frames(key, &input, dirty);
                    input.drain(..used);
                    let Some((conn, _)) = self.conns.get_mut(key) else { return };
                    conn.inbuf = input;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(key),
            }
        }
    }

    /// Handles the complete frames at the start of `input`; returns the bytes used.
    fn frames(&mut self, key: usize, input: &[u8], dirty: &mut Vec<usize>) -> usize {
        let mut used = 0;
        loop {
            let Some((conn, _)) = self.conns.get_mut(key) else { return input.len() };
            match conn.decoder.decode(&input[used..]) {
                Ok(Decoded::Frame { start, end }) => {
                    self.frame(key, &input[used + start..used + end], dirty);
                    used += end;
                }
                Ok(Decoded::Need { discard }) => return used + discard,
                Err(_) => {
                    self.close(key);
                    return input.len();
                }
            }
        }
    }

    fn frame(&mut self, key: usize, frame: &[u8], dirty: &mut Vec<usize>) {
        let reply = match number(frame, b"\"msgid\":") {
            Some(4) => {
                let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
                format!("{{\"msgid\":5,\"errno\":0,\"id\":{id}}}\n")
            }
            Some(1) => {
                let Some(id) = number(frame, b"\"id\":").and_then(|id| UserId::try_from(id).ok()) else { return };
                let loc = self.loc(key);
                let errno = if self.shared.presence.insert_if_absent(id, loc) { 0 } else { 2 };
                if let (0, Some((_, user))) = (errno, self.conns.get_mut(key)) {
                    *user = Some(id);
                }
                format!("{{\"msgid\":2,\"errno\":{errno},\"id\":{id}}}\n")
            }
            Some(req) => {
                let Some(to) = number(frame, b"\"toid\":").and_then(|id| UserId::try_from(id).ok()) else { return };
                let msg: Arc<str> = Arc::from(format!("{}\n", String::from_utf8_lossy(frame)));
                let mut local = None;
                self.shared.presence.with(to, |loc| {
                    if loc.reactor == self.idx {
                        local = Some(loc);
                    } else {
                        self.router.send(loc.reactor, Msg::Deliver(Delivery { to: loc, user: to, msg: msg.clone() }));
                    }
                });
                if let Some(loc) = local {
                    self.deliver(Delivery { to: loc, user: to, msg }, dirty);
                }
                match number(frame, b"\"seq\":") {
                    Some(seq) => format!("{{\"msgid\":11,\"req\":{req},\"seq\":{seq},\"errno\":0}}\n"),
                    None => return,
                }
            }
            None => return,
        };
        if let Some((conn, _)) = self.conns.get_mut(key) {
            conn.queue(Out::Reply(reply.into_bytes()));
            dirty.push(key);
        }
    }

    fn deliver(&mut self, d: Delivery, dirty: &mut Vec<usize>) {
        if let Some((conn, _)) = self.conns.get_mut(d.to.token).filter(|(c, _)| c.id == d.to.conn) {
            conn.queue(Out::Chat(d.user, d.msg));
            dirty.push(d.to.token);
        }
    }

    fn loc(&self, key: usize) -> Loc {
        Loc { reactor: self.idx, token: key, conn: self.conns.get(key).map_or(0, |(c, _)| c.id) }
    }

    fn close(&mut self, key: usize) {
        let loc = self.loc(key);
        if let Some((mut conn, user)) = self.conns.try_remove(key) {
            let _ = self.seed.poll.registry().deregister(&mut conn.stream);
            let _ = conn.stream.shutdown(Shutdown::Both);
            if let Some(user) = user {
                self.shared.presence.remove_if(user, loc);
            }
        }
    }
}

/// The unsigned integer after the first `key` in `frame` (keys are matched as bytes, quotes
/// included, so `"id":` does not match inside `"toid":`).
pub(crate) fn number(frame: &[u8], key: &[u8]) -> Option<u64> {
    let at = memmem::find(frame, key)? + key.len();
    let digits = frame[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&frame[at..at + digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::number;

    #[test]
    fn number_finds_keys_by_their_quotes() {
        let frame = br#"{"msgid":6,"toid":42,"msg":"x","seq":7}"#;
        assert_eq!(number(frame, b"\"msgid\":"), Some(6));
        assert_eq!(number(frame, b"\"toid\":"), Some(42));
        assert_eq!(number(frame, b"\"id\":"), None);
        assert_eq!(number(frame, b"\"seq\":"), Some(7));
    }
}
