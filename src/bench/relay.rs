//! A bare relay: the chat server's transport with the chat taken out, as a benchmark baseline
//! ("what the machine and the transport allow").
//!
//! It is a [`Handler`] on the server's own reactor: the same acceptor and round-robin hand-off,
//! read budget, frame codec, output queue (gathered `writev`) and cap, channel batches with
//! coalesced wake-ups, and the server's sharded presence map. It leaves out everything the chat
//! adds: no JSON parsing (a byte scan, `proto::peek`, finds `msgid`, `id`, `toid` and `seq`), no validation, sessions, store,
//! pool or bus. Register answers a fresh id, login binds an id to the connection (no password),
//! and any other frame with a `toid` is forwarded verbatim to that user, acked when it has a `seq`.
//! It trusts its clients: it is a yardstick, not a server.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::net::{self, Acceptor, Admission, AdmissionLimits, Handler, Io, Limits, Loc, Outbound, Router};
use crate::proto::codec::FrameError;
use crate::proto::reply::{self, LoginData};
use crate::proto::{peek, Errno, MsgId};
use crate::service::Presence;
use crate::UserId;

/// The server's defaults, so the relay's connections have the very same limits.
const LIMITS: Limits = Limits {
    proxy_protocol: false,
    max_frame: 64 * 1024,
    max_frame_untrusted: 64 * 1024,
    max_outbound: 4 * 1024 * 1024,
};

/// Serves the relay protocol on `listener` with `threads` reactors, until the process ends.
pub fn serve(listener: std::net::TcpListener, threads: usize) -> io::Result<()> {
    let shared = Arc::new(Shared { presence: Presence::default(), next_id: AtomicU32::new(1) });
    let acceptor = Acceptor::new(listener, Admission::new(AdmissionLimits::default()), false)?;
    let reactors = net::start_reactors("relay", threads, LIMITS, None, |_, router| Relay {
        router: router.clone(),
        shared: shared.clone(),
        users: Vec::new(),
    })?;
    acceptor.run(&reactors.router)
}

#[derive(Debug)]
struct Shared {
    presence: Presence,
    next_id: AtomicU32,
}

/// A frame forwarded to the connection at `to`.
#[derive(Debug)]
struct Forward {
    to: Loc,
    frame: Arc<str>,
}

/// Output: an answer of the relay's own, or a frame shared with its other recipients.
#[derive(Debug)]
enum Out {
    Reply(Vec<u8>),
    Frame(Arc<str>),
}

impl Outbound for Out {
    fn bytes(&self) -> &[u8] {
        match self {
            Out::Reply(b) => b,
            Out::Frame(f) => f.as_bytes(),
        }
    }
}

#[derive(Debug)]
struct Relay {
    router: Arc<Router<Forward>>,
    shared: Arc<Shared>,
    /// The user bound to each connection, by slab key.
    users: Vec<Option<(Loc, UserId)>>,
}

impl Relay {
    fn forget(&mut self, at: Loc) {
        if let Some(slot) = self.users.get_mut(at.token) {
            if let Some((loc, user)) = slot.take_if(|(loc, _)| *loc == at) {
                self.shared.presence.remove_if(user, loc);
            }
        }
    }
}

impl Handler for Relay {
    type Msg = Forward;
    type Out = Out;

    fn on_frame(&mut self, io: &mut impl Io<Self>, at: Loc, frame: &[u8]) {
        let user = |key| peek::number(frame, key).and_then(|id| UserId::try_from(id).ok());
        let reply = match peek::msgid(frame) {
            Some(MsgId::Register) => reply::registered(self.shared.next_id.fetch_add(1, Ordering::Relaxed), None),
            Some(MsgId::Login) => {
                let Some(id) = user("id") else { return };
                if !self.shared.presence.insert_if_absent(id, at, false) {
                    let errno = Errno::AlreadyOnline;
                    let _ = io.send(at, Out::Reply(reply::error(Some(1), None, errno, errno.message())));
                    return;
                }
                if self.users.len() <= at.token {
                    self.users.resize(at.token + 1, None);
                }
                self.users[at.token] = Some((at, id));
                reply::login_ok(&LoginData { id, ..LoginData::default() }, None)
            }
            Some(req) => {
                let Some(to) = user("toid") else { return };
                let forward: Arc<str> = Arc::from(format!("{}\n", String::from_utf8_lossy(frame)));
                let mut local = None;
                self.shared.presence.with(to, |loc| {
                    if loc.reactor == io.reactor() {
                        local = Some(loc);
                    } else {
                        self.router.send(loc.reactor, Forward { to: loc, frame: forward.clone() });
                    }
                });
                if let Some(loc) = local {
                    let _ = io.send(loc, Out::Frame(forward));
                }
                match peek::number(frame, "seq") {
                    Some(seq) => reply::ok(req, &seq.into(), None),
                    None => return,
                }
            }
            None => return,
        };
        let _ = io.send(at, Out::Reply(reply));
    }

    fn on_frame_error(&mut self, io: &mut impl Io<Self>, at: Loc, _error: FrameError) {
        io.close(at, "framing error");
        self.forget(at);
    }

    fn on_message(&mut self, io: &mut impl Io<Self>, msg: Forward) {
        let _ = io.send(msg.to, Out::Frame(msg.frame));
    }

    fn on_close(&mut self, _io: &mut impl Io<Self>, at: Loc, _unsent: Vec<Out>) {
        self.forget(at);
    }
}
