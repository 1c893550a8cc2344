//! The input half of a reactor: read, frame, parse, dispatch. A connection reads only while no
//! job holds it, and at most a budget per loop iteration so one client cannot starve the others.

use std::io::{self, Read};
use std::mem;

use super::{Phase, Reactor, LINGER_LIMIT, READ_BUDGET};
use crate::net::conn::State;
use crate::proto::codec::{Decoded, FrameError};
use crate::proto::request::{self, Parsed};
use crate::proto::Errno;
use crate::service::JobKind;

impl Reactor {
    /// Handles buffered requests, then reads more while the connection may proceed.
    pub(super) fn pump(&mut self, key: usize) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(conn) = self.conns.get(key) else { return };
            if conn.busy || conn.state == State::Closed {
                return;
            }
            if conn.is_open() && !conn.inbuf.is_empty() && !self.process_inbuf(key) {
                return;
            }
            let shutting_down = self.phase != Phase::Running;
            let Some(conn) = self.conns.get_mut(key) else { return };
            if !conn.readable || conn.eof || shutting_down {
                return; // when shutting down, requests already received are done, no new ones read
            }
            if budget == 0 {
                self.backlog.push(key);
                return;
            }
            let mut scratch = mem::take(&mut self.scratch);
            let go_on = match conn.stream.read(&mut scratch) {
                Ok(0) if conn.is_open() => {
                    // Half-close: answer what was asked, then close (see `flush_dirty`).
                    conn.eof = true;
                    self.dirty.push(key);
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
            self.scratch = scratch;
            if !go_on {
                return;
            }
        }
    }

    /// New bytes from the socket. Parsed in place when nothing is pending, so an idle connection
    /// holds no input buffer; only an incomplete tail (or input behind a job) is copied.
    fn on_input(&mut self, key: usize, data: &[u8]) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if let State::Lingering { discarded } = &mut conn.state {
            *discarded += data.len();
            if *discarded > LINGER_LIMIT {
                self.close(key, "lingering peer kept sending");
            }
            return;
        }
        if conn.inbuf.is_empty() {
            let used = self.process(key, data);
            if let Some(conn) = self.conns.get_mut(key) {
                if conn.is_open() {
                    conn.inbuf.extend_from_slice(&data[used..]);
                }
            }
        } else {
            conn.inbuf.extend_from_slice(data);
            self.process_inbuf(key);
        }
    }

    /// Processes `inbuf`; `true` if the connection may read more.
    fn process_inbuf(&mut self, key: usize) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        let pending = mem::take(&mut conn.inbuf);
        let used = self.process(key, &pending);
        let Some(conn) = self.conns.get_mut(key) else { return false };
        if conn.is_open() {
            conn.inbuf = pending;
            conn.inbuf.drain(..used);
            conn.compact_input();
        }
        conn.is_open() && !conn.busy
    }

    /// Frames and handles requests from `data` until it runs out or a job holds the connection.
    /// Returns how many bytes were used.
    fn process(&mut self, key: usize, data: &[u8]) -> usize {
        let mut used = 0;
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return data.len() };
            if !conn.is_open() {
                return data.len();
            }
            if conn.busy {
                return used;
            }
            match conn.decoder.decode(&data[used..]) {
                Ok(Decoded::Frame { start, end }) => {
                    let frame = &data[used + start..used + end];
                    used += end;
                    match request::parse(frame, self.service.limits()) {
                        Ok(parsed) => self.dispatch(key, parsed),
                        Err(_) => {
                            self.reject_stream(key, Errno::BadRequest, "bad request: not JSON");
                            return data.len();
                        }
                    }
                }
                Ok(Decoded::Need { discard }) => return used + discard,
                Err(e) => {
                    let errno = if e == FrameError::TooLarge { Errno::TooLarge } else { Errno::BadRequest };
                    self.reject_stream(key, errno, &e.to_string());
                    return data.len();
                }
            }
        }
    }

    fn dispatch(&mut self, key: usize, parsed: Parsed) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let job = self.service.handle(&mut conn.session, parsed, &mut self.fx);
        let ended = self.fx.ended.take();
        self.apply_effects(key);
        if let Some(user) = ended {
            let released = job.as_ref().is_some_and(|j| matches!(j.kind, JobKind::Logout { .. }));
            self.end_session(key, user, Vec::new(), released);
        }
        if let Some(job) = job {
            self.submit(key, job);
        }
    }
}
