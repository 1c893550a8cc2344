//! One simulated user's connection to the system under test: the chat protocol (chat server or
//! bare relay) or Redis pub/sub. The generator must cost less than what it measures, so the hot
//! path neither builds nor parses JSON values: requests are written into one buffer and flushed
//! with one `write` per batch; replies are read in 64 KiB chunks and scanned for the few fields
//! that matter.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use memchr::memchr;

use crate::proto::message::{ChatMessage, Target};
use crate::proto::reply::{self, Answer, Reply};
use crate::proto::request::write_chat;
use crate::proto::{peek, MsgId, Request};

/// What a receiver learns from one delivery: when it was sent (µs since the run's start, from
/// the body) and which of the sender's messages it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub sent_us: u64,
    pub n: usize,
    /// The server's message id, for an acknowledgement (msgid 12).
    pub mid: Option<u64>,
}

/// A message body: `"SENT_US N PAD"`.
pub fn body(sent_us: u64, n: usize, pad: &str) -> String {
    format!("{sent_us} {n} {pad}")
}

fn parse_body(text: &[u8]) -> Option<Delivered> {
    let mut words = text.splitn(3, |&b| b == b' ');
    let sent_us = std::str::from_utf8(words.next()?).ok()?.parse().ok()?;
    let n = std::str::from_utf8(words.next()?).ok()?.parse().ok()?;
    Some(Delivered { sent_us, n, mid: None })
}

pub fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// A socket read in large chunks, handing out lines and byte runs. On a non-blocking socket a
/// parse can stop halfway for want of input: `mark` before it and `rewind` then.
#[derive(Debug)]
struct Reader {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    mark: usize,
}

impl Reader {
    fn new(stream: TcpStream) -> Reader {
        Reader { stream, buf: vec![0; 64 * 1024], start: 0, end: 0, mark: 0 }
    }

    fn mark(&mut self) {
        self.mark = self.start;
    }

    fn rewind(&mut self) {
        self.start = self.mark;
    }

    /// Reads more input, first moving what is left since the mark to the front (and growing if
    /// full).
    fn fill(&mut self) -> io::Result<()> {
        let keep = self.mark.min(self.start);
        if keep > 0 {
            self.buf.copy_within(keep..self.end, 0);
            self.end -= keep;
            self.start -= keep;
            self.mark -= keep;
        }
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        match self.stream.read(&mut self.buf[self.end..])? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                self.end += n;
                Ok(())
            }
        }
    }

    /// The next line, without its `\n`.
    fn line(&mut self) -> io::Result<&[u8]> {
        loop {
            if let Some(i) = memchr(b'\n', &self.buf[self.start..self.end]) {
                let line = self.start..self.start + i;
                self.start += i + 1;
                return Ok(&self.buf[line]);
            }
            self.fill()?;
        }
    }

    /// The next line if it is already buffered: no read.
    fn buffered_line(&mut self) -> Option<&[u8]> {
        let i = memchr(b'\n', &self.buf[self.start..self.end])?;
        let line = self.start..self.start + i;
        self.start += i + 1;
        Some(&self.buf[line])
    }

    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        while self.end - self.start < n {
            self.fill()?;
        }
        let run = self.start..self.start + n;
        self.start += n;
        Ok(&self.buf[run])
    }
}

/// Whether connections begin with a PROXY header, as nginx's would (for nodes started with
/// `--proxy-protocol`, reached directly).
static PROXY_HEADER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn send_proxy_header(on: bool) {
    PROXY_HEADER.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Writes the PROXY header for `s` if asked to (naming its own addresses).
pub(crate) fn introduce(s: &mut TcpStream) -> io::Result<()> {
    if !PROXY_HEADER.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    let (local, peer) = (s.local_addr()?, s.peer_addr()?);
    let family = if local.is_ipv4() { "TCP4" } else { "TCP6" };
    let header = format!("PROXY {family} {} {} {} {}\r\n", local.ip(), peer.ip(), local.port(), peer.port());
    s.write_all(header.as_bytes())
}

fn connect(addr: &str) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    introduce(&mut s)?;
    Ok(s)
}

/// A user of the chat protocol: the chat server, or the bare relay.
#[derive(Debug)]
pub struct ChatLink {
    writer: TcpStream,
    reader: Reader,
    out: Vec<u8>,
}

impl ChatLink {
    pub fn open(addr: &str) -> io::Result<ChatLink> {
        let s = connect(addr)?;
        Ok(ChatLink { reader: Reader::new(s.try_clone()?), writer: s, out: Vec::new() })
    }

    /// From an already connected socket (the idle scenario binds its own source address).
    pub fn from_stream(s: TcpStream) -> io::Result<ChatLink> {
        Ok(ChatLink { reader: Reader::new(s.try_clone()?), writer: s, out: Vec::new() })
    }

    pub fn into_stream(self) -> TcpStream {
        self.writer
    }

    /// Another handle on the socket, for a thread that only writes.
    pub fn writer(&self) -> io::Result<TcpStream> {
        self.writer.try_clone()
    }

    /// The next line received, without its `\n`.
    pub fn next_line(&mut self) -> io::Result<&[u8]> {
        self.reader.line()
    }

    /// Setup only: one request (with `seq` when it wants an ack) and its answer, which must
    /// be a success.
    pub fn request(&mut self, request: &Request, seq: Option<u64>) -> io::Result<Answer> {
        let mut v = request.to_json();
        if let Some(seq) = seq {
            v["seq"] = seq.into();
        }
        self.writer.write_all(format!("{v}\n").as_bytes())?;
        let line = self.reader.line()?;
        match reply::decode(line) {
            Some(Reply::Login { answer, .. } | Reply::Register(answer) | Reply::Ack(answer)) if answer.ok() => {
                Ok(answer)
            }
            _ => Err(err(format!("{v} answered {}", String::from_utf8_lossy(line)))),
        }
    }

    /// Registers a fresh user and logs it in (`acks`: a session that acknowledges deliveries);
    /// returns its id.
    pub fn sign_up(&mut self, name: &str, password: &str, acks: bool) -> io::Result<u32> {
        let register = Request::Register { name: name.to_owned(), password: password.to_owned() };
        let id = self.request(&register, None)?.id.ok_or_else(|| err("register: no id"))?;
        self.request(&Request::Login { id, password: password.to_owned(), acks }, None)?;
        Ok(id)
    }

    fn push(&mut self, to: Target, body: &str, seq: Option<usize>) {
        write_chat(&mut self.out, to, body, seq.map(|s| s as u64));
    }

    fn next(&mut self, want: &[MsgId]) -> io::Result<(MsgId, &[u8])> {
        loop {
            let line = self.reader.line()?;
            let Some(msgid) = peek::msgid(line) else { continue };
            if msgid == MsgId::Ack && peek::number(line, "errno") != Some(0) {
                return Err(err(format!("request failed: {}", String::from_utf8_lossy(line))));
            }
            if want.contains(&msgid) {
                // Reborrow to return the line (the loop's borrow ends with this iteration).
                let len = line.len();
                let end = self.reader.start - 1;
                return Ok((msgid, &self.reader.buf[end - len..end]));
            }
        }
    }
}

/// A user of Redis pub/sub as a chat relay: it SUBSCRIBEs its own channel (and its group's)
/// on one connection and PUBLISHes to its partner's on another, since a subscribed connection
/// can do nothing else. The payload is what the chat server would deliver.
#[derive(Debug)]
pub struct RedisLink {
    id: u32,
    tag: String,
    publisher: TcpStream,
    replies: Reader,
    subscriber: Reader,
    out: Vec<u8>,
}

fn resp(out: &mut Vec<u8>, args: &[&[u8]]) {
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n", a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

impl RedisLink {
    /// Connects user `id` of run `tag`; it listens on its channel and on `groups`'. With
    /// `acks` false the publisher asks Redis for no replies (a chat client that wants no acks).
    pub fn open(addr: &str, tag: &str, id: u32, groups: &[u32], acks: bool) -> io::Result<RedisLink> {
        let publisher = connect(addr)?;
        let sub = connect(addr)?;
        let mut link = RedisLink {
            id,
            tag: tag.to_owned(),
            replies: Reader::new(publisher.try_clone()?),
            publisher,
            subscriber: Reader::new(sub.try_clone()?),
            out: Vec::new(),
        };
        let mut channels = vec![link.channel('u', id)];
        channels.extend(groups.iter().map(|&g| link.channel('g', g)));
        let mut cmd = Vec::new();
        let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
        args.extend(channels.iter().map(|c| c.as_bytes()));
        resp(&mut cmd, &args);
        (&sub).write_all(&cmd)?;
        for _ in &channels {
            // *3 $9 subscribe $N channel :count
            for _ in 0..6 {
                link.subscriber.line()?;
            }
        }
        if !acks {
            let mut cmd = Vec::new();
            resp(&mut cmd, &[b"CLIENT", b"REPLY", b"OFF"]);
            link.publisher.write_all(&cmd)?;
        }
        Ok(link)
    }

    fn channel(&self, kind: char, id: u32) -> String {
        format!("{}:{kind}{id}", self.tag)
    }

    fn publish(&mut self, to: Target, body: &str) {
        let channel = match to {
            Target::User(u) => self.channel('u', u),
            Target::Group(g) => self.channel('g', g),
        };
        let (name, msg, time) = ("".into(), body.into(), "".into());
        let payload = ChatMessage { from: self.id, name, to, msg, time, ts: 0, mid: None, cid: None }.encode();
        resp(&mut self.out, &[b"PUBLISH", channel.as_bytes(), payload.trim_end().as_bytes()]);
    }

    /// The payload of the next pushed message: `*3`, then `message`, the channel, the payload.
    fn message(&mut self) -> io::Result<&[u8]> {
        let header = self.subscriber.line()?;
        if header != b"*3\r" {
            return Err(err(format!("unexpected push {}", String::from_utf8_lossy(header))));
        }
        for _ in 0..2 {
            let len = self.bulk_len()?;
            self.subscriber.take(len + 2)?;
        }
        let len = self.bulk_len()?;
        Ok(&self.subscriber.take(len + 2)?[..len])
    }

    fn bulk_len(&mut self) -> io::Result<usize> {
        let line = self.subscriber.line()?;
        let digits = line.strip_prefix(b"$").and_then(|l| l.strip_suffix(b"\r")).unwrap_or_default();
        std::str::from_utf8(digits).ok().and_then(|n| n.parse().ok()).ok_or_else(|| err("bad bulk length"))
    }
}

/// One user's connection, whichever system is under test.
#[derive(Debug)]
pub enum Link {
    Chat(ChatLink),
    Redis(RedisLink),
}

impl Link {
    /// Queues a one-to-one message; `seq` asks for an acknowledgement.
    pub fn chat(&mut self, to: u32, body: &str, seq: Option<usize>) {
        match self {
            Link::Chat(c) => c.push(Target::User(to), body, seq),
            Link::Redis(r) => r.publish(Target::User(to), body),
        }
    }

    /// Queues a group message.
    pub fn group(&mut self, group: u32, body: &str, seq: Option<usize>) {
        match self {
            Link::Chat(c) => c.push(Target::Group(group), body, seq),
            Link::Redis(r) => r.publish(Target::Group(group), body),
        }
    }

    /// Sends everything queued in one write.
    pub fn flush(&mut self) -> io::Result<()> {
        let (stream, out) = match self {
            Link::Chat(c) => (&mut c.writer, &mut c.out),
            Link::Redis(r) => (&mut r.publisher, &mut r.out),
        };
        stream.write_all(out)?;
        out.clear();
        Ok(())
    }

    /// Where deliveries arrive.
    fn deliveries(&mut self) -> &mut Reader {
        match self {
            Link::Chat(c) => &mut c.reader,
            Link::Redis(r) => &mut r.subscriber,
        }
    }

    /// Where acknowledgements arrive (for the chat, the same socket as deliveries).
    fn acks(&mut self) -> &mut Reader {
        match self {
            Link::Chat(c) => &mut c.reader,
            Link::Redis(r) => &mut r.replies,
        }
    }

    /// For an event loop: makes the sockets non-blocking (the chat's reader and writer, and the
    /// publisher and its replies, are clones of one socket each) and returns the one deliveries
    /// arrive on, to register.
    pub fn set_nonblocking(&mut self) -> io::Result<&TcpStream> {
        if let Link::Redis(r) = self {
            r.publisher.set_nonblocking(true)?;
        }
        let stream = &self.deliveries().stream;
        stream.set_nonblocking(true)?;
        Ok(stream)
    }

    /// The next delivery if it has fully arrived; `None` once the socket has nothing more
    /// (non-blocking sockets only).
    pub fn try_delivery(&mut self) -> io::Result<Option<Delivered>> {
        self.deliveries().mark();
        match self.delivery() {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.deliveries().rewind();
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The socket acknowledgements arrive on, to register.
    pub fn ack_stream(&mut self) -> &TcpStream {
        &self.acks().stream
    }

    /// Takes every acknowledgement that has arrived, without waiting (non-blocking sockets
    /// only); returns how many.
    pub fn try_acks(&mut self) -> io::Result<usize> {
        let mut n = 0;
        loop {
            n += self.buffered_acks()?;
            let reader = self.acks();
            reader.mark();
            match reader.fill() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(n),
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends everything queued, on a non-blocking socket: waits (briefly) when it is full.
    pub fn flush_nonblocking(&mut self) -> io::Result<()> {
        let (stream, out) = match self {
            Link::Chat(c) => (&mut c.writer, &mut c.out),
            Link::Redis(r) => (&mut r.publisher, &mut r.out),
        };
        let mut sent = 0;
        while sent < out.len() {
            match stream.write(&out[sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                    std::thread::yield_now()
                }
                Err(e) => return Err(e),
            }
        }
        out.clear();
        Ok(())
    }

    /// Waits for the next chat or group message for this user.
    pub fn delivery(&mut self) -> io::Result<Delivered> {
        let line = match self {
            Link::Chat(c) => c.next(&[MsgId::OneChat, MsgId::GroupChat])?.1,
            Link::Redis(r) => r.message()?,
        };
        let at = memchr::memmem::find(line, b"\"msg\":\"").ok_or_else(|| err("a delivery without msg"))? + 7;
        let mid = peek::number(line, "mid");
        let d = parse_body(&line[at..]).ok_or_else(|| err("a delivery with a foreign body"))?;
        Ok(Delivered { mid, ..d })
    }

    /// Queues an acknowledgement of these deliveries (chat only; msgid 12, no answer).
    pub fn acknowledge(&mut self, mids: &[u64]) {
        if let (Link::Chat(c), false) = (self, mids.is_empty()) {
            c.out.extend_from_slice(b"{\"msgid\":12,\"mids\":[");
            for (i, mid) in mids.iter().enumerate() {
                if i > 0 {
                    c.out.push(b',');
                }
                c.out.extend_from_slice(mid.to_string().as_bytes());
            }
            c.out.extend_from_slice(b"]}\n");
        }
    }

    /// Takes the acknowledgements already received, without waiting; returns how many.
    pub fn buffered_acks(&mut self) -> io::Result<usize> {
        let mut n = 0;
        let reader = self.acks();
        while let Some(line) = reader.buffered_line() {
            let ok = match line.first() {
                Some(b'{') => peek::msgid(line) != Some(MsgId::Ack) || peek::number(line, "errno") == Some(0),
                other => other == Some(&b':'),
            };
            if !ok {
                return Err(err(format!("request failed: {}", String::from_utf8_lossy(line))));
            }
            n += usize::from(line.first() == Some(&b':') || peek::msgid(line) == Some(MsgId::Ack));
        }
        Ok(n)
    }

    /// Waits for the next acknowledgement; an error reply is an error.
    pub fn ack(&mut self) -> io::Result<()> {
        match self {
            Link::Chat(c) => c.next(&[MsgId::Ack]).map(drop),
            Link::Redis(r) => {
                let line = r.replies.line()?;
                match line.first() {
                    Some(b':') => Ok(()),
                    _ => Err(err(format!("publish failed: {}", String::from_utf8_lossy(line)))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip() {
        let b = body(1234, 56, "xx");
        assert_eq!(parse_body(b.as_bytes()), Some(Delivered { sent_us: 1234, n: 56, mid: None }));
        assert_eq!(parse_body(b"nope"), None);
    }

    #[test]
    fn resp_encodes_bulk_strings() {
        let mut out = Vec::new();
        resp(&mut out, &[b"PUBLISH", b"c", b"hi"]);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$2\r\nhi\r\n");
    }
}
