//! The acceptor and the node's lifecycle: start the pool and the reactors, hand out sockets
//! round-robin, and shut everything down in order.
//!
//! Shutdown: stop accepting → mailbox sweep stopped → reactors stop reading and finish the jobs in flight (phase 1) →
//! reactors end their sessions, flush with a deadline and store what is unsent (phase 2) →
//! reactor threads joined → message log committed and joined → pool drained and joined →
//! mailbox writes finished and joined.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::bus::{Bus, BusError, Inbox};
use crate::config::Config;
use crate::net::{self, Acceptor, Admission, AdmissionLimits, Limits, Loc, Msg, Router};
use crate::pool::Pool;
use crate::service::{ChatHandler, Delivery, Event, LogHandle, MessageLog, Outlet as _, Service, Sweeper};
use crate::store::Store;
use crate::UserId;

pub use crate::net::ShutdownHandle;

/// One chat node. `new` binds nothing: it takes a bound listener, so tests can use port 0.
#[derive(Debug)]
pub struct Server {
    acceptor: Acceptor,
    config: Config,
    service: Arc<Service>,
}

impl Server {
    pub fn new(
        listener: std::net::TcpListener,
        config: Config,
        store: Box<dyn Store>,
        bus: Box<dyn Bus>,
    ) -> io::Result<Server> {
        let admission =
            AdmissionLimits { max_connections: config.max_connections, max_per_address: config.max_conns_per_ip };
        let acceptor = Acceptor::new(listener, Admission::new(admission), config.proxy_protocol)?;
        let service = Arc::new(Service::new(store, bus, &config)?);
        Ok(Server { acceptor, config, service })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.acceptor.local_addr()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.acceptor.shutdown_handle()
    }

    /// Serves until [`ShutdownHandle::shutdown`], then shuts down gracefully and returns.
    pub fn run(self) -> io::Result<()> {
        let pool = Pool::start(self.config.pool_threads, self.config.pool_queue)?;
        let (log, log_queue) = LogHandle::channel();
        let threads = self.config.threads.max(1);
        let (quiet_tx, quiet_rx) = crossbeam_channel::unbounded();
        let limits = Limits {
            proxy_protocol: self.config.proxy_protocol,
            max_frame: self.config.max_frame,
            max_frame_untrusted: self.config.max_frame_before_login.min(self.config.max_frame),
            max_outbound: self.config.max_outbound,
        };
        let net::Reactors { router, threads: joins } =
            net::start_reactors("reactor", threads, limits, Some(quiet_tx), |_, router| {
                ChatHandler::new(self.service.clone(), router.clone(), pool.handle(), log.clone())
            })?;
        drop(log); // the reactors hold the handles: the writer ends after them
        let (store, clock) = (self.service.store(), self.config.clock.clone());
        let message_log = MessageLog::start(log_queue, store, router.clone(), clock, self.config.history_days)?;
        self.service.bus().start(Arc::new(NodeInbox { service: self.service.clone(), router: router.clone() }))?;
        let sweeper = Sweeper::start(self.service.clone(), router.clone(), self.config.sweep_every)?;
        log::info!("serving on {} with {threads} reactors", self.local_addr()?);

        let Server { acceptor, config, service } = self;
        acceptor.run(&router)?;

        log::info!("shutting down");
        sweeper.shutdown();
        let grace = config.shutdown_grace;
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
        message_log.shutdown();
        service.bus().shutdown();
        pool.shutdown();
        service.shutdown();
        log::info!("shut down");
        Ok(())
    }
}

/// What the bus hands this node: deliver to the live session (under the presence read lock, as
/// every remote delivery), or store in order if it has gone.
#[derive(Debug)]
struct NodeInbox {
    service: Arc<Service>,
    router: Arc<Router<Event>>,
}

impl Inbox for NodeInbox {
    fn deliver(&self, user: UserId, msg: Arc<str>) {
        let mut pending = Some(msg);
        self.service.presence().with(user, |to| {
            if let Some(msg) = pending.take() {
                self.router.deliver(Delivery { to, user, msg });
            }
        });
        if let Some(msg) = pending {
            self.service.spill(user, vec![msg], self.router.clone());
        }
    }

    fn deliver_many(&self, users: &[UserId], msg: Arc<str>) {
        let gone: Vec<UserId> = self.service.presence().with_all(|at| {
            let (mut live, mut gone) = (Vec::new(), Vec::new());
            for &user in users {
                match at(user) {
                    Some((to, _)) => live.push(Delivery { to, user, msg: msg.clone() }),
                    None => gone.push(user),
                }
            }
            self.router.deliver_many(live); // one hand-over per reactor, under the locks
            gone
        });
        for user in gone {
            self.service.spill(user, vec![msg.clone()], self.router.clone());
        }
    }

    fn local_users(&self) -> Vec<UserId> {
        self.service.presence().users()
    }

    fn evict(&self, user: UserId) {
        self.service.presence().with(user, |to| self.router.evict(to));
    }

    fn drain(&self, user: UserId) {
        self.service.presence().with(user, |to| self.router.drain(to, user));
    }

    fn routed(&self, mut answers: Vec<(Loc, Result<bool, BusError>)>) {
        // One channel message per reactor; stable, so each sender's answers keep their order.
        answers.sort_by_key(|(from, _)| from.reactor);
        while let Some((last, _)) = answers.last() {
            let reactor = last.reactor;
            let split = answers.partition_point(|(from, _)| from.reactor < reactor);
            self.router.send(reactor, Event::Routed(answers.split_off(split)));
        }
    }
}
