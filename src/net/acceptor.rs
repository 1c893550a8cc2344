//! The acceptor: one `mio::Poll` on the listening socket, handing sockets round-robin to the
//! worker reactors, until asked to stop. It keeps a spare descriptor so that at the open-file
//! limit a waiting client is refused cleanly instead of hanging, and the loop does not spin.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{SockRef, TcpKeepalive};

use super::admission::{Admission, Refused};
use super::router::{Msg, Router};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Wait before retrying `accept` when out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections for a set of reactors. Runs on the thread that calls [`Acceptor::run`].
#[derive(Debug)]
pub(crate) struct Acceptor {
    listener: TcpListener,
    poll: Poll,
    stop: ShutdownHandle,
    admission: Arc<Admission>,
    /// Clients come through a proxy that sends a PROXY header (their address comes with it).
    proxied: bool,
}

/// Asks a running acceptor (and so its server) to stop. Any thread.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        if let Err(e) = self.waker.wake() {
            log::error!("cannot wake the acceptor: {e}");
        }
    }
}

impl Acceptor {
    pub(crate) fn new(
        listener: std::net::TcpListener,
        admission: Arc<Admission>,
        proxied: bool,
    ) -> io::Result<Acceptor> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = ShutdownHandle { stop: Arc::new(AtomicBool::new(false)), waker };
        Ok(Acceptor { listener, poll, stop, admission, proxied })
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub(crate) fn shutdown_handle(&self) -> ShutdownHandle {
        self.stop.clone()
    }

    /// Accepts until [`ShutdownHandle::shutdown`], then closes the listener.
    pub(crate) fn run<M>(mut self, router: &Router<M>) -> io::Result<()> {
        let result = self.accept_loop(router);
        let _ = self.poll.registry().deregister(&mut self.listener);
        result
    }

    fn accept_loop<M>(&mut self, router: &Router<M>) -> io::Result<()> {
        let mut events = Events::with_capacity(64);
        let mut next = 0;
        // Descriptors kept in reserve: when the process runs out, one is freed to accept and
        // close one waiting client, which then sees a clean close instead of hanging. Several,
        // because another thread (a store opening a file) may take a freed descriptor first.
        let mut spares = Spares::default();
        spares.refill();
        let mut backoff = None;
        let mut refusals = Refusals::default();
        loop {
            if let Err(e) = self.poll.poll(&mut events, backoff) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if self.stop.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            // Accept on every wake-up: a listener event, or the end of a back-off.
            backoff = None;
            let mut warned = false;
            loop {
                match self.listener.accept() {
                    Ok((stream, peer)) => match self.admission.admit(peer.ip(), self.proxied) {
                        Ok(ticket) => {
                            tune(&stream);
                            router.control(next, Msg::NewConn(stream, ticket));
                            next = (next + 1) % router.len().max(1);
                        }
                        Err(why) => {
                            // Reset at once: no slot, no buffer, no time-wait on our side.
                            let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                            drop(stream);
                            refusals.count(why, peer);
                        }
                    },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENFILE | libc::EMFILE)) => {
                        // Edge-triggered, so the backlog raises no new event.
                        if !warned {
                            log::warn!("out of file descriptors: refusing clients until some close");
                            warned = true;
                        }
                        // Linux reports EMFILE before it looks at the queue, so the queue may
                        // well be empty: only the accept with a spare freed tells.
                        if spares.free_one() {
                            let refused = self.listener.accept().map(|(stream, _)| drop(stream));
                            spares.refill();
                            match refused {
                                Ok(()) => log::debug!("out of file descriptors: refused a client"),
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(_) => {
                                    backoff = Some(ACCEPT_BACKOFF);
                                    break;
                                }
                            }
                        } else {
                            // Descriptors may have been freed since the spares were lost.
                            spares.refill();
                            if spares.is_empty() {
                                log::warn!("out of file descriptors: accepting again in {ACCEPT_BACKOFF:?}");
                                backoff = Some(ACCEPT_BACKOFF);
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        // E.g. ECONNABORTED: that client is gone; others may be waiting.
                        log::debug!("accept: {e}");
                        backoff = Some(Duration::from_millis(10));
                        break;
                    }
                }
            }
        }
    }
}

/// Descriptors held in reserve (see `accept_loop`).
#[derive(Default)]
struct Spares(Vec<std::fs::File>);

impl Spares {
    const KEEP: usize = 4;

    /// Opens spares up to `KEEP`, as far as descriptors allow.
    fn refill(&mut self) {
        while self.0.len() < Self::KEEP {
            match std::fs::File::open("/dev/null") {
                Ok(f) => self.0.push(f),
                Err(_) => return,
            }
        }
    }

    /// Closes one spare, so the next descriptor the process opens can be had; `false` if none.
    fn free_one(&mut self) -> bool {
        self.0.pop().is_some()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Refused connections, logged at most once a second with how many there were.
#[derive(Default)]
struct Refusals {
    since_log: u64,
    logged_at: Option<std::time::Instant>,
}

impl Refusals {
    fn count(&mut self, why: Refused, peer: SocketAddr) {
        self.since_log += 1;
        let now = std::time::Instant::now();
        if self.logged_at.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return;
        }
        let what = match why {
            Refused::NodeFull => "the node holds its most connections (--max-connections)",
            Refused::AddressFull => "its address holds its most connections (--max-conns-per-ip)",
        };
        log::warn!("refused {} connection(s), the last from {peer}: {what}", self.since_log);
        self.since_log = 0;
        self.logged_at = Some(now);
    }
}

/// Per-socket options: no Nagle delay for small frames; keepalive and a user timeout so a
/// vanished client's session ends within about two minutes instead of hours.
fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let sock = SockRef::from(stream);
    let keepalive =
        TcpKeepalive::new().with_time(Duration::from_secs(60)).with_interval(Duration::from_secs(10)).with_retries(3);
    if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
        log::debug!("keepalive: {e}");
    }
    if let Err(e) = sock.set_tcp_user_timeout(Some(Duration::from_secs(90))) {
        log::debug!("user timeout: {e}");
    }
}
