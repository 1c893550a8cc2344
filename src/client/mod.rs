//! The command-line client: the canonical client's menu and commands, with acks, line editing
//! and a script mode.
//!
//! Two threads: the caller's thread reads what the user types and sends requests; a reader thread
//! decodes what the server sends and prints it as it arrives. Login and register answers go
//! from the reader to the caller over a channel; command outcomes are matched to their `seq`.
//!
//! Logins ask for acknowledged delivery: the reader acknowledges every message it has shown
//! (msgid 12), so what the client never showed comes again at the next login. With reconnection
//! on, a lost connection of a logged-in session is made again by the reader, which logs in
//! again and resends every chat whose outcome had not come (same `cid`: the server takes it
//! once); messages shown already are dropped by their `mid`.

pub mod command;
pub mod view;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use serde_json::Value;

use crate::proto::codec::{Decoded, Decoder};
use crate::proto::message::Target;
use crate::proto::reply::{self, Answer, Reply, Welcome};
use crate::proto::time::{format_utc, now_ms};
use crate::proto::Request;
use crate::UserId;
use command::Command;
pub use view::{Seen, Style, View};

/// Where typed lines come from: a terminal with line editing, or a script on stdin.
pub trait Input {
    /// The next line, without its newline; `None` at end of input.
    fn line(&mut self, prompt: &str) -> Option<String>;
    /// A line typed without echo (passwords).
    fn secret(&mut self, prompt: &str) -> Option<String>;
}

/// Where events are printed. Any thread: the reader prints while the user types.
pub trait Output: Send + Sync {
    fn print(&self, line: &str);
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, io::Error),
    #[error("connection to the server lost")]
    Disconnected,
}

/// How long to wait for a login or register answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// At end of input, how long to wait for the outcomes of commands already sent.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// Login acks carry whole mailboxes: accept large frames from the server.
const MAX_SERVER_FRAME: usize = 256 << 20;

/// How long to wait between attempts to connect again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

struct Shared {
    out: Arc<dyn Output>,
    view: View,
    /// Commands sent with a `seq`, waiting for their outcome.
    pending: Mutex<HashMap<u64, Pending>>,
    seen: Mutex<SeenMids>,
    quitting: AtomicBool,
    /// Where requests go; replaced when the reader connects again.
    writer: Mutex<TcpStream>,
    /// Connect again to this address when the connection is lost while logged in.
    reconnect: Option<String>,
    /// Who is logged in, to log in again after a reconnection.
    login: Mutex<Option<(UserId, String)>>,
    /// The session acknowledges deliveries.
    acks: AtomicBool,
    /// When the last login was answered (ms, this machine's clock): a message the server
    /// received before it was stored while the user was away.
    logged_in_at: AtomicU64,
    /// The reader is logging in again: the login answer is its own.
    relogging: AtomicBool,
}

/// A command sent, waiting for its outcome.
struct Pending {
    what: &'static str,
    /// A chat, sent again (same `seq` and `cid`) after a reconnection.
    resend: Option<Value>,
}

/// The mids of the latest messages shown, to drop redeliveries.
#[derive(Default)]
struct SeenMids {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl SeenMids {
    const KEEP: usize = 10_000;

    fn first_time(&mut self, mid: u64) -> bool {
        if !self.set.insert(mid) {
            return false;
        }
        self.order.push_back(mid);
        if self.order.len() > Self::KEEP {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// Connects to `addr` and runs the menu until the user quits or input ends. `on_disconnect` runs
/// on the reader thread if the server goes away while the user is idle at a prompt (and, with
/// `reconnect`, is not logged in).
pub fn run(
    addr: &str,
    style: Style,
    reconnect: bool,
    input: &mut dyn Input,
    out: Arc<dyn Output>,
    on_disconnect: Box<dyn FnOnce() + Send>,
) -> Result<(), ClientError> {
    let stream = TcpStream::connect(addr).map_err(|e| ClientError::Connect(addr.to_owned(), e))?;
    let _ = stream.set_nodelay(true);
    let reader = stream.try_clone().map_err(|e| ClientError::Connect(addr.to_owned(), e))?;
    let writer = stream.try_clone().map_err(|e| ClientError::Connect(addr.to_owned(), e))?;
    let shared = Arc::new(Shared {
        out,
        view: View { style },
        pending: Mutex::new(HashMap::new()),
        seen: Mutex::new(SeenMids::default()),
        quitting: AtomicBool::new(false),
        writer: Mutex::new(writer),
        reconnect: reconnect.then(|| addr.to_owned()),
        login: Mutex::new(None),
        acks: AtomicBool::new(false),
        logged_in_at: AtomicU64::new(0),
        relogging: AtomicBool::new(false),
    });
    let (tx, replies) = crossbeam_channel::unbounded();
    let for_reader = shared.clone();
    std::thread::spawn(move || read_loop(reader, for_reader, tx, on_disconnect));
    let cid_prefix = format!("{:x}-{:x}", now_ms(), std::process::id());
    let mut session = Session { shared, replies, next_seq: 1, cid_prefix, next_cid: 1 };
    let result = session.menu(input);
    session.shared.quitting.store(true, Ordering::Release);
    let _ = session.shared.writer.lock().shutdown(Shutdown::Both);
    drop(stream);
    result
}

/// Decodes the server's stream (newline-, NUL- or un-separated, as canonical servers send);
/// with reconnection on, connects again whenever it ends while a user is logged in.
fn read_loop(
    mut stream: TcpStream,
    shared: Arc<Shared>,
    replies: Sender<Reply>,
    on_disconnect: Box<dyn FnOnce() + Send>,
) {
    loop {
        read_stream(&mut stream, &shared, &replies);
        if shared.quitting.load(Ordering::Acquire) {
            return;
        }
        let relogin = shared.login.lock().clone();
        match (&shared.reconnect, relogin) {
            (Some(addr), Some((id, password))) => {
                shared.out.print(&shared.view.event("connection to the server lost; connecting again", "reconnecting"));
                match reconnect(addr, &shared, id, &password) {
                    Some(s) => stream = s,
                    None => return, // quitting
                }
            }
            _ => {
                if !shared.quitting.load(Ordering::Acquire) {
                    shared.out.print(&shared.view.event("connection to the server lost", "disconnected"));
                    drop(replies);
                    on_disconnect();
                }
                return;
            }
        }
    }
}

/// Reads `stream` until it ends, handing every frame on; acknowledges the messages of each read.
fn read_stream(stream: &mut TcpStream, shared: &Shared, replies: &Sender<Reply>) {
    let mut decoder = Decoder::new(MAX_SERVER_FRAME);
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut shown = Vec::new();
    'read: loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match decoder.decode(&buf) {
                Ok(Decoded::Frame { start, end }) => {
                    if let Some(reply) = reply::decode(&buf[start..end]) {
                        shared.on_message(reply, replies, &mut shown);
                    }
                    buf.drain(..end);
                }
                Ok(Decoded::Need { discard }) => {
                    buf.drain(..discard);
                    break;
                }
                Err(_) => break 'read, // the server speaks something else
            }
        }
        if shared.acks.load(Ordering::Acquire) {
            for mids in shown.chunks(1000) {
                shared.write(&Request::Acknowledge { id: None, mids: mids.to_vec() }.to_json());
            }
        }
        shown.clear();
    }
}

/// Connects to `addr` until it answers, logs in as `id` again, and resends the chats whose
/// outcome has not come; the new stream for the reader, or `None` if the user quit meanwhile.
fn reconnect(addr: &str, shared: &Shared, id: UserId, password: &str) -> Option<TcpStream> {
    loop {
        std::thread::sleep(RECONNECT_PAUSE);
        if shared.quitting.load(Ordering::Acquire) {
            return None;
        }
        let Ok(stream) = TcpStream::connect(addr) else { continue };
        let _ = stream.set_nodelay(true);
        let (Ok(reader), Ok(writer)) = (stream.try_clone(), stream.try_clone()) else { continue };
        *shared.writer.lock() = writer;
        shared.relogging.store(true, Ordering::Release);
        if shared.write(&Request::Login { id, password: password.to_owned(), acks: true }.to_json()) {
            return Some(reader); // the login's answer comes to the reader (`on_message`)
        }
    }
}

impl Shared {
    /// Writes one request on the current connection; `false` if it is gone.
    fn write(&self, request: &Value) -> bool {
        let mut bytes = request.to_string().into_bytes();
        bytes.push(b'\n');
        self.writer.lock().write_all(&bytes).is_ok()
    }

    /// The reader's own login after a reconnection was answered: on success, the chats still
    /// waiting for an outcome go out again; otherwise (say, the old session has not ended yet
    /// on the server) the connection is dropped and made again.
    fn relogged(&self, answer: &Answer, welcome: Option<Welcome>) {
        let Some(w) = welcome else {
            self.out.print(&self.view.failed("login", answer));
            let _ = self.writer.lock().shutdown(Shutdown::Both);
            return;
        };
        self.relogging.store(false, Ordering::Release);
        self.acks.store(w.acks, Ordering::Release);
        self.logged_in_at.store(now_ms(), Ordering::Release);
        self.out.print(&self.view.event("connected again", &format!("reconnected\t{}", w.id)));
        for m in &w.offline {
            self.show(m, Seen::Offline, &mut Vec::new());
        }
        let mut resend: Vec<(u64, Value)> =
            self.pending.lock().iter().filter_map(|(&seq, p)| Some((seq, p.resend.clone()?))).collect();
        resend.sort_by_key(|(seq, _)| *seq);
        for (_, request) in resend {
            self.write(&request);
        }
    }

    /// Shows a chat message unless it was shown already; notes its mid to acknowledge.
    fn show(&self, m: &crate::proto::message::ChatMessage<'_>, seen: Seen, shown: &mut Vec<u64>) {
        if let Some(mid) = m.mid {
            shown.push(mid);
        }
        // A message shown already (a redelivery after a reconnect) is shown once.
        if m.mid.map_or(true, |mid| self.seen.lock().first_time(mid)) {
            self.out.print(&self.view.message(m, seen));
        }
    }
}

impl Shared {
    fn on_message(&self, reply: Reply, replies: &Sender<Reply>, shown: &mut Vec<u64>) {
        match reply {
            Reply::Login { answer, welcome } if self.relogging.load(Ordering::Acquire) => {
                self.relogged(&answer, welcome);
            }
            Reply::Login { welcome: Some(ref w), .. } => {
                // Set here, before the deliveries that follow the ack are read.
                self.acks.store(w.acks, Ordering::Release);
                self.logged_in_at.store(now_ms(), Ordering::Release);
                // Shown here, on the reading thread, so the deliveries that follow the ack are
                // shown after it.
                for line in self.view.logged_in(w) {
                    self.out.print(&line);
                }
                let _ = replies.send(reply);
            }
            Reply::Login { .. } | Reply::Register(_) => {
                let _ = replies.send(reply);
            }
            Reply::Chat(m) => {
                // In an acks session what waited follows the login ack: what the server
                // received before the login was stored while the user was away.
                let stored =
                    self.acks.load(Ordering::Acquire) && m.ts > 0 && m.ts < self.logged_in_at.load(Ordering::Acquire);
                self.show(&m, if stored { Seen::Offline } else { Seen::Live }, shown);
            }
            Reply::Ack(ack) => {
                for m in &ack.messages {
                    self.out.print(&self.view.message(m, Seen::History));
                }
                let seq = ack.seq.as_ref().and_then(Value::as_u64);
                match seq.and_then(|seq| self.pending.lock().remove(&seq)) {
                    Some(p) => self.out.print(&self.view.outcome(&opt(seq), p.what, &ack)),
                    None => self.out.print(&self.view.outcome("-", "request", &ack)),
                }
            }
            Reply::Other(_) => {} // unknown messages are ignored, as the protocol asks of clients
        }
    }
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

struct Session {
    shared: Arc<Shared>,
    replies: Receiver<Reply>,
    next_seq: u64,
    /// This run's prefix of `cid`s: the server drops a resent message with a `cid` it took.
    cid_prefix: String,
    next_cid: u64,
}

enum After {
    Menu,
    Quit,
}

impl Session {
    fn print(&self, line: &str) {
        self.shared.out.print(line);
    }

    /// A `cid` unique among this user's messages (a run's start time, process and counter).
    fn cid(&mut self) -> String {
        self.next_cid += 1;
        format!("{}-{}", self.cid_prefix, self.next_cid - 1)
    }

    fn human(&self) -> bool {
        self.shared.view.style == Style::Human
    }

    fn send(&mut self, mut request: Value, what: Option<&'static str>) -> Result<(), ClientError> {
        let mut resendable = false;
        if let Some(what) = what {
            let seq = self.next_seq;
            self.next_seq += 1;
            request["seq"] = seq.into();
            resendable = self.shared.reconnect.is_some() && matches!(what, "chat" | "groupchat");
            let resend = resendable.then(|| request.clone());
            self.shared.pending.lock().insert(seq, Pending { what, resend });
        }
        if self.shared.write(&request) || resendable {
            return Ok(()); // a chat not written goes out after the reconnection
        }
        if self.shared.reconnect.is_some() && self.shared.login.lock().is_some() {
            if let Some(seq) = request["seq"].as_u64() {
                self.shared.pending.lock().remove(&seq);
            }
            self.print(&self.shared.view.hint("not sent: connecting to the server again"));
            return Ok(());
        }
        Err(ClientError::Disconnected)
    }

    /// The answer to a login or register request.
    fn reply(&self) -> Result<Option<Reply>, ClientError> {
        match self.replies.recv_timeout(REPLY_TIMEOUT) {
            Ok(v) => Ok(Some(v)),
            Err(RecvTimeoutError::Timeout) => {
                self.print(&self.shared.view.event("no answer from the server", "usage\tno answer from the server"));
                Ok(None)
            }
            Err(RecvTimeoutError::Disconnected) => Err(ClientError::Disconnected),
        }
    }

    fn menu(&mut self, input: &mut dyn Input) -> Result<(), ClientError> {
        loop {
            if self.human() {
                self.print("========================\n1. login\n2. register\n3. quit\n========================");
            }
            let Some(choice) = input.line(if self.human() { "choice: " } else { "" }) else { return Ok(()) };
            match choice.trim() {
                "1" | "login" => {
                    let Some(id) = input.line("userid: ") else { return Ok(()) };
                    let Ok(id) = id.trim().parse::<UserId>() else {
                        self.print(&self.shared.view.hint("userid must be a number"));
                        continue;
                    };
                    let Some(password) = input.secret("password: ") else { return Ok(()) };
                    self.send(Request::Login { id, password: password.clone(), acks: true }.to_json(), None)?;
                    let welcome = match self.reply()? {
                        Some(Reply::Login { welcome: Some(w), .. }) => w,
                        Some(Reply::Login { answer, welcome: None }) => {
                            self.print(&self.shared.view.failed("login", &answer));
                            continue;
                        }
                        Some(_) => {
                            self.print(&self.shared.view.failed("login", &Answer::default()));
                            continue;
                        }
                        None => continue,
                    };
                    *self.shared.login.lock() = Some((id, password));
                    if let After::Quit = self.chat(input, id, &welcome.name)? {
                        return Ok(());
                    }
                }
                "2" | "register" => {
                    let Some(name) = input.line("username: ") else { return Ok(()) };
                    let Some(password) = input.secret("password: ") else { return Ok(()) };
                    self.send(Request::Register { name: name.trim().to_owned(), password }.to_json(), None)?;
                    match self.reply()? {
                        Some(Reply::Register(ack)) if ack.ok() => self.print(&self.shared.view.registered(&ack)),
                        Some(Reply::Register(ack)) => self.print(&self.shared.view.failed("register", &ack)),
                        Some(_) => self.print(&self.shared.view.failed("register", &Answer::default())),
                        None => {}
                    }
                }
                "3" | "quit" => return Ok(()),
                "" => {}
                _ => self.print(&self.shared.view.hint("choose 1 (login), 2 (register) or 3 (quit)")),
            }
        }
    }

    /// The logged-in command loop.
    fn chat(&mut self, input: &mut dyn Input, me: UserId, name: &str) -> Result<After, ClientError> {
        let prompt = if self.human() { format!("{name}> ") } else { String::new() };
        loop {
            let Some(line) = input.line(&prompt) else {
                self.wait_for_outcomes();
                return Ok(After::Quit);
            };
            let time = || format_utc(now_ms());
            let (request, what) = match command::parse(&line) {
                Err(hint) => {
                    self.print(&self.shared.view.hint(&hint));
                    continue;
                }
                Ok(Command::Help) => {
                    for l in command::HELP.lines() {
                        self.print(&self.shared.view.hint(l));
                    }
                    continue;
                }
                Ok(Command::Quit) => return Ok(After::Quit),
                Ok(Command::Loginout) => {
                    *self.shared.login.lock() = None;
                    self.send(Request::Logout { id: Some(me) }.to_json(), Some("loginout"))?;
                    self.wait_for_outcomes();
                    self.print(&self.shared.view.event("logged out", "loggedout"));
                    return Ok(After::Menu);
                }
                Ok(Command::Chat { to, msg }) => {
                    let mut chat =
                        Request::OneChat { id: Some(me), toid: to, msg, time: Some(time()), cid: Some(self.cid()) }
                            .to_json();
                    chat["name"] = name.into(); // as canonical clients do
                    (chat, "chat")
                }
                Ok(Command::AddFriend { id }) => {
                    (Request::AddFriend { id: Some(me), friendid: id }.to_json(), "addfriend")
                }
                Ok(Command::CreateGroup { name: g, desc }) => {
                    (Request::CreateGroup { id: Some(me), name: g, desc }.to_json(), "creategroup")
                }
                Ok(Command::AddGroup { id }) => (Request::AddGroup { id: Some(me), groupid: id }.to_json(), "addgroup"),
                Ok(Command::History { peer, limit }) => {
                    let q = Request::History { id: Some(me), with: Target::User(peer), before: None, limit };
                    (q.to_json(), "history")
                }
                Ok(Command::GroupHistory { id, limit }) => {
                    let q = Request::History { id: Some(me), with: Target::Group(id), before: None, limit };
                    (q.to_json(), "ghistory")
                }
                Ok(Command::GroupChat { id, msg }) => {
                    let mut chat = Request::GroupChat {
                        id: Some(me),
                        groupid: id,
                        msg,
                        time: Some(time()),
                        cid: Some(self.cid()),
                    }
                    .to_json();
                    chat["name"] = name.into();
                    (chat, "groupchat")
                }
            };
            self.send(request, Some(what))?;
        }
    }

    /// Gives commands already sent a moment to report (a server without acks never does).
    fn wait_for_outcomes(&self) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while !self.shared.pending.lock().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
