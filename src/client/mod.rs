//! The command-line client: the canonical client's menu and commands, with acks, line editing
//! and a script mode.
//!
//! Two threads: the caller's thread reads what the user types and sends requests; a reader thread
//! decodes what the server sends and prints it as it arrives. Login and register answers go
//! from the reader to the caller over a channel; command outcomes are matched to their `seq`.

pub mod command;
pub mod view;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use serde_json::Value;

use crate::proto::codec::{Decoded, Decoder};
use crate::proto::message::Target;
use crate::proto::reply::{self, Answer, Reply};
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

struct Shared {
    out: Arc<dyn Output>,
    view: View,
    /// Commands sent with a `seq`, waiting for their outcome.
    pending: Mutex<HashMap<u64, &'static str>>,
    seen: Mutex<SeenMids>,
    quitting: AtomicBool,
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
/// on the reader thread if the server goes away while the user is idle at a prompt.
pub fn run(
    addr: &str,
    style: Style,
    input: &mut dyn Input,
    out: Arc<dyn Output>,
    on_disconnect: Box<dyn FnOnce() + Send>,
) -> Result<(), ClientError> {
    let stream = TcpStream::connect(addr).map_err(|e| ClientError::Connect(addr.to_owned(), e))?;
    let _ = stream.set_nodelay(true);
    let reader = stream.try_clone().map_err(|e| ClientError::Connect(addr.to_owned(), e))?;
    let shared = Arc::new(Shared {
        out,
        view: View { style },
        pending: Mutex::new(HashMap::new()),
        seen: Mutex::new(SeenMids::default()),
        quitting: AtomicBool::new(false),
    });
    let (tx, replies) = crossbeam_channel::unbounded();
    let for_reader = shared.clone();
    std::thread::spawn(move || read_loop(reader, for_reader, tx, on_disconnect));
    let cid_prefix = format!("{:x}-{:x}", now_ms(), std::process::id());
    let mut session = Session { stream, shared, replies, next_seq: 1, cid_prefix, next_cid: 1 };
    let result = session.menu(input);
    session.shared.quitting.store(true, Ordering::Release);
    let _ = session.stream.shutdown(Shutdown::Both);
    result
}

/// Decodes the server's stream (newline-, NUL- or un-separated, as canonical servers send).
fn read_loop(
    mut stream: TcpStream,
    shared: Arc<Shared>,
    replies: Sender<Reply>,
    on_disconnect: Box<dyn FnOnce() + Send>,
) {
    let mut decoder = Decoder::new(MAX_SERVER_FRAME);
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
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
                        shared.on_message(reply, &replies);
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
    }
    if !shared.quitting.load(Ordering::Acquire) {
        shared.out.print(&shared.view.event("connection to the server lost", "disconnected"));
        drop(replies);
        on_disconnect();
    }
}

impl Shared {
    fn on_message(&self, reply: Reply, replies: &Sender<Reply>) {
        match reply {
            Reply::Login { .. } | Reply::Register(_) => {
                let _ = replies.send(reply);
            }
            Reply::Chat(m) => {
                // A message shown already (a redelivery after a reconnect) is shown once.
                if m.mid.map_or(true, |mid| self.seen.lock().first_time(mid)) {
                    self.out.print(&self.view.message(&m, Seen::Live));
                }
            }
            Reply::Ack(ack) => {
                for m in &ack.messages {
                    self.out.print(&self.view.message(m, Seen::History));
                }
                let seq = ack.seq.as_ref().and_then(Value::as_u64);
                match seq.and_then(|seq| self.pending.lock().remove(&seq)) {
                    Some(what) => self.out.print(&self.view.outcome(&opt(seq), what, &ack)),
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
    stream: TcpStream,
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
        if let Some(what) = what {
            let seq = self.next_seq;
            self.next_seq += 1;
            request["seq"] = seq.into();
            self.shared.pending.lock().insert(seq, what);
        }
        let mut bytes = request.to_string().into_bytes();
        bytes.push(b'\n');
        self.stream.write_all(&bytes).map_err(|_| ClientError::Disconnected)
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
                    self.send(Request::Login { id, password, acks: false }.to_json(), None)?;
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
                    for line in self.shared.view.logged_in(&welcome) {
                        self.print(&line);
                    }
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
