//! The acceptor and the node's lifecycle: start the pool and the reactors, hand out sockets
//! round-robin, and shut everything down in order.
//!
//! Shutdown: stop accepting → reactors stop reading and finish the jobs in flight (phase 1) →
//! reactors end their sessions, flush with a deadline and store what is unsent (phase 2) →
//! reactor threads joined → pool drained and joined → mailbox writes finished and joined.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{SockRef, TcpKeepalive};

use crate::bus::{Bus, Inbox};
use crate::config::Config;
use crate::net::{Msg, Reactor, Router};
use crate::pool::Pool;
use crate::service::Outlet as _;
use crate::service::{Delivery, Service};
use crate::store::Store;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Wait before retrying `accept` when out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One chat node. `new` binds nothing: it takes a bound listener, so tests can use port 0.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    config: Config,
    service: Arc<Service>,
    poll: Poll,
    stop: ShutdownHandle,
}

/// Asks a running server to shut down gracefully. Any thread.
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

impl Server {
    pub fn new(
        listener: std::net::TcpListener,
        config: Config,
        store: Box<dyn Store>,
        bus: Box<dyn Bus>,
    ) -> io::Result<Server> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let service = Arc::new(Service::new(store, bus, &config)?);
        let stop = ShutdownHandle { stop: Arc::new(AtomicBool::new(false)), waker };
        Ok(Server { listener, config, service, poll, stop })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.stop.clone()
    }

    /// Serves until [`ShutdownHandle::shutdown`], then shuts down gracefully and returns.
    pub fn run(mut self) -> io::Result<()> {
        let pool = Pool::start(self.config.pool_threads, self.config.pool_queue)?;
        let threads = self.config.threads.max(1);
        let mut seeds = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..threads {
            let (seed, handle) = Reactor::seed()?;
            seeds.push(seed);
            handles.push(handle);
        }
        let router = Arc::new(Router::new(handles));
        let (quiet_tx, quiet_rx) = crossbeam_channel::unbounded();
        let mut joins = Vec::new();
        for (i, seed) in seeds.into_iter().enumerate() {
            let reactor = Reactor::new(
                i,
                seed,
                &self.config,
                self.service.clone(),
                router.clone(),
                pool.handle(),
                quiet_tx.clone(),
            );
            joins.push(std::thread::Builder::new().name(format!("reactor-{i}")).spawn(move || reactor.run())?);
        }
        self.service.bus().start(self.inbox(&router))?;
        log::info!("serving on {} with {threads} reactors", self.local_addr()?);

        self.accept_loop(&router)?;

        log::info!("shutting down");
        let _ = self.poll.registry().deregister(&mut self.listener);
        drop(self.listener);
        let grace = self.config.shutdown_grace;
        router.broadcast(|| Msg::Quiesce);
        let deadline = Instant::now() + grace;
        for _ in 0..router.len() {
            if quiet_rx.recv_deadline(deadline).is_err() {
                log::warn!("shutdown: jobs still in flight after {grace:?}; going on");
                break;
            }
        }
        let deadline = Instant::now() + grace;
        router.broadcast(|| Msg::Finish { deadline });
        for j in joins {
            if j.join().is_err() {
                log::error!("a reactor thread panicked");
            }
        }
        self.service.bus().shutdown();
        pool.shutdown();
        self.service.shutdown();
        log::info!("shut down");
        Ok(())
    }

    /// What the bus calls with messages from other nodes: deliver to the live session (under
    /// the presence read lock, as every remote delivery), or store in order if it has gone.
    fn inbox(&self, router: &Arc<Router>) -> Inbox {
        let (service, router) = (self.service.clone(), router.clone());
        let users = self.service.clone();
        let (evicting, evict_router) = (self.service.clone(), router.clone());
        let (draining, drain_router) = (self.service.clone(), router.clone());
        Inbox {
            deliver: Box::new(move |user, msg| {
                let mut pending = Some(msg);
                service.presence().with(user, |to| {
                    if let Some(msg) = pending.take() {
                        router.deliver(Delivery { to, user, msg });
                    }
                });
                if let Some(msg) = pending {
                    service.spill(user, vec![msg], router.clone());
                }
            }),
            local_users: Box::new(move || users.presence().users()),
            evict: Box::new(move |user| {
                evicting.presence().with(user, |to| evict_router.send(to.reactor, Msg::Evict { to }));
            }),
            drain: Box::new(move |user| {
                draining.presence().with(user, |to| drain_router.drain(to, user));
            }),
        }
    }

    fn accept_loop(&mut self, router: &Router) -> io::Result<()> {
        let mut events = Events::with_capacity(64);
        let mut next = 0;
        // A descriptor kept in reserve: when the process runs out, it is freed to accept and
        // close one waiting client, which then sees a clean close instead of hanging.
        let mut spare = std::fs::File::open("/dev/null").ok();
        let mut backoff = None;
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
                    Ok((stream, _)) => {
                        tune(&stream);
                        router.send(next, Msg::NewConn(stream));
                        next = (next + 1) % router.len();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if matches!(e.raw_os_error(), Some(23 | 24)) => {
                        // ENFILE / EMFILE: edge-triggered, so the backlog raises no new event.
                        if !warned {
                            log::warn!("out of file descriptors: refusing clients until some close");
                            warned = true;
                        }
                        // Linux reports EMFILE before it looks at the queue, so the queue may
                        // well be empty: only the accept with the spare freed tells.
                        if spare.take().is_some() {
                            // Dropped before the spare is reopened: that needs the descriptor.
                            let refused = self.listener.accept().map(|(stream, _)| drop(stream));
                            spare = std::fs::File::open("/dev/null").ok();
                            match refused {
                                Ok(()) => log::debug!("out of file descriptors: refused a client"),
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(_) => {
                                    backoff = Some(ACCEPT_BACKOFF);
                                    break;
                                }
                            }
                        } else {
                            // Descriptors may have been freed since the spare was lost.
                            spare = std::fs::File::open("/dev/null").ok();
                            if spare.is_none() {
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

/// Per-socket options: no Nagle delay for small chat frames; keepalive and a user timeout so a
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
