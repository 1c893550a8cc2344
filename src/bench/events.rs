//! `pingpong` on an event loop: a few generator threads, each polling the sockets of its share
//! of the pairs, instead of a blocking thread per user. With hundreds of users on the same two
//! cores as the server, a thread per user turned every message into a thread wake-up, and the
//! latency tail measured the generator's scheduling more than the server.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::{body, err, Counter, Link, Pace, Tally};

/// Polls `stream` for reading under `token`.
fn register(poll: &Poll, stream: &std::net::TcpStream, token: usize) -> io::Result<()> {
    poll.registry().register(&mut SourceFd(&stream.as_raw_fd()), Token(token), Interest::READABLE)
}

/// One pair: `a` sends message `n` when it is due and `a` has the answer to `n - 1`; `b`
/// answers each message at once.
struct Pair {
    a: (Link, u32),
    b: (Link, u32),
    pace: Pace,
    /// Messages `a` has sent; `a` waits for the answer to the last one.
    sent: usize,
    answered: usize,
}

/// Runs `pairs` (each with its own pace) to `messages` round trips on this thread. Latency of
/// both directions goes into one tally, as with the thread-per-user generator. With `acks`,
/// each user acknowledges what it received in one msgid 12 per readiness event.
pub(super) fn pingpong(
    pairs: Vec<(Link, u32, Link, u32, Pace)>,
    messages: usize,
    pad: &str,
    start: Instant,
    mut count: Counter,
    acks: bool,
) -> io::Result<Tally> {
    let mut mids: Vec<u64> = Vec::new();
    let mut tally = Tally::new()?;
    let mut poll = Poll::new()?;
    let mut state: Vec<Pair> = Vec::with_capacity(pairs.len());
    for (k, (mut a, ida, mut b, idb, pace)) in pairs.into_iter().enumerate() {
        register(&poll, a.set_nonblocking()?, 2 * k)?;
        register(&poll, b.set_nonblocking()?, 2 * k + 1)?;
        state.push(Pair { a: (a, ida), b: (b, idb), pace, sent: 0, answered: 0 });
    }
    // Sends due, earliest first: (due, pair).
    let mut due: BinaryHeap<Reverse<(Instant, usize)>> =
        state.iter().enumerate().map(|(k, p)| Reverse((p.pace.due_at(0).unwrap_or(start), k))).collect();
    let mut done = state.iter().filter(|p| p.answered >= messages).count();
    let mut events = Events::with_capacity(1024);
    let now_us = || start.elapsed().as_micros() as u64;
    while done < state.len() {
        let now = Instant::now();
        while let Some(&Reverse((at, k))) = due.peek() {
            if at > now {
                break;
            }
            due.pop();
            let p = &mut state[k];
            let idb = p.b.1;
            p.a.0.chat(idb, &body(now_us(), p.sent, pad), None);
            p.a.0.flush_nonblocking()?;
            p.sent += 1;
        }
        let timeout = due.peek().map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            let (k, is_a) = (event.token().0 / 2, event.token().0 % 2 == 0);
            let p = state.get_mut(k).ok_or_else(|| err("unknown token"))?;
            if is_a {
                // Answers to `a`: the round trip is over; the next message when it is due.
                while let Some(d) = p.a.0.try_delivery()? {
                    mids.extend(d.mid.filter(|_| acks));
                    tally.record(start, d)?;
                    count.tick();
                    p.answered += 1;
                    if p.answered == messages {
                        done += 1;
                    } else if p.answered == p.sent {
                        let at = p.pace.due_at(p.sent).unwrap_or(start).max(Instant::now());
                        due.push(Reverse((at, k)));
                    }
                }
                if !mids.is_empty() {
                    p.a.0.acknowledge(&mids);
                    p.a.0.flush_nonblocking()?;
                    mids.clear();
                }
            } else {
                // Messages to `b`: answered at once.
                let ida = p.a.1;
                let mut answered = false;
                while let Some(d) = p.b.0.try_delivery()? {
                    mids.extend(d.mid.filter(|_| acks));
                    tally.record(start, d)?;
                    count.tick();
                    p.b.0.chat(ida, &body(now_us(), d.n, pad), None);
                    answered = true;
                }
                p.b.0.acknowledge(&mids);
                mids.clear();
                if answered {
                    p.b.0.flush_nonblocking()?;
                }
            }
        }
    }
    Ok(tally)
}

/// A group's sender: up to `window` group messages in flight, each acknowledged.
pub(super) struct Sender {
    pub(super) link: Link,
    pub(super) group: u32,
    pub(super) pace: Pace,
}

/// A member: times each delivery and keeps, per message, the latest member's latency.
pub(super) struct Member {
    pub(super) link: Link,
    /// Where its group's messages start in the per-message vector.
    pub(super) first: usize,
}

/// Runs this thread's share of `fanout`: some groups' senders, some members (of any group).
/// The tally's `by_msg` holds, per message of every group, the latency of the last of this
/// thread's members to receive it.
pub(super) fn fanout(
    mut senders: Vec<Sender>,
    mut members: Vec<Member>,
    messages: usize,
    window: usize,
    pad: &str,
    start: Instant,
    mut count: Counter,
) -> io::Result<Tally> {
    let mut tally = Tally::new()?;
    if messages == 0 {
        return Ok(tally);
    }
    let mut poll = Poll::new()?;
    for (k, s) in senders.iter_mut().enumerate() {
        s.link.set_nonblocking()?;
        register(&poll, s.link.ack_stream(), k)?;
    }
    for (k, m) in members.iter_mut().enumerate() {
        register(&poll, m.link.set_nonblocking()?, senders.len() + k)?;
    }
    let slots = members.iter().map(|m| m.first + messages).max().unwrap_or(0);
    tally.by_msg = vec![0; slots];
    let (mut sent, mut acked) = (vec![0usize; senders.len()], vec![0usize; senders.len()]);
    let mut received = vec![0usize; members.len()];
    let mut pending = senders.len() + members.len();
    let mut events = Events::with_capacity(1024);
    let now_us = || start.elapsed().as_micros() as u64;
    while pending > 0 {
        // Send what the window and the pace allow; wake for the earliest pace.
        let mut wake: Option<Instant> = None;
        for (k, s) in senders.iter_mut().enumerate() {
            let before = sent[k];
            while sent[k] < messages && sent[k] - acked[k] < window && s.pace.due(sent[k]) {
                s.link.group(s.group, &body(now_us(), sent[k], pad), Some(sent[k]));
                sent[k] += 1;
            }
            if sent[k] > before {
                s.link.flush_nonblocking()?;
            }
            if sent[k] < messages && sent[k] - acked[k] < window {
                wake = wake.into_iter().chain(s.pace.due_at(sent[k])).min();
            }
        }
        let timeout = wake.map(|at| at.saturating_duration_since(Instant::now()));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            let token = event.token().0;
            if let Some(s) = senders.get_mut(token) {
                let was_done = acked[token] == messages;
                acked[token] += s.link.try_acks()?;
                if !was_done && acked[token] >= messages {
                    pending -= 1;
                }
                continue;
            }
            let k = token - senders.len();
            let m = members.get_mut(k).ok_or_else(|| err("unknown token"))?;
            while let Some(d) = m.link.try_delivery()? {
                tally.record(start, d)?;
                count.tick();
                let us = now_us().saturating_sub(d.sent_us);
                if let Some(slot) = tally.by_msg.get_mut(m.first + d.n) {
                    *slot = (*slot).max(us);
                }
                received[k] += 1;
                if received[k] == messages {
                    pending -= 1;
                }
            }
        }
    }
    Ok(tally)
}
