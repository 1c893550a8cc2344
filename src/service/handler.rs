//! The reactor half of request handling: validate, check the session, take the fast path or
//! hand a job to the pool. Reactor thread only; nothing here blocks.

use std::sync::Arc;

use serde_json::Value;

use super::{Delivery, Effects, GroupChat, Job, JobKind, Service, SessionState};
use crate::proto::message::Target;
use crate::proto::reply;
use crate::proto::request::{parse_body, parse_envelope, Envelope, Parsed};
use crate::proto::{Errno, MsgId, Request};
use crate::store::{Logged, NewMessage};
use crate::{GroupId, UserId};

impl Service {
    /// Handles one request of a connection; every decision goes to `fx` (replies, deliveries,
    /// the job that must finish before the connection's next request is handled).
    pub(crate) fn handle(&self, session: &mut SessionState, frame: Parsed, fx: &mut Effects) {
        // A body that is still a map of fields is parsed below, after the session check.
        let (msgid, seq, body) = match frame {
            Parsed::Chat { msgid, seq, req } => (msgid, seq, Ok(req)),
            Parsed::General(value) => match parse_envelope(value) {
                Ok(Envelope { msgid, seq, fields }) => (msgid, seq, Err(fields)),
                Err(rejection) => {
                    fx.replies.push(reply::rejection(&rejection));
                    return;
                }
            },
            Parsed::Refused(rejection) => {
                fx.replies.push(reply::rejection(&rejection));
                return;
            }
        };
        let fail = |fx: &mut Effects, errno: Errno, errmsg: &str| {
            fx.replies.push(reply::error(Some(msgid.code().into()), seq.as_ref(), errno, errmsg));
        };
        let anonymous = matches!(msgid, MsgId::Login | MsgId::Register);
        if session.live().is_none() && !anonymous {
            return fail(fx, Errno::NotLoggedIn, Errno::NotLoggedIn.message());
        }
        let req = match body.or_else(|fields| parse_body(msgid, fields, self.limits)) {
            Ok(req) => req,
            Err((errno, errmsg)) => return fail(fx, errno, &errmsg),
        };
        let me = match (session.live(), anonymous) {
            (Some(user), false) => user.clone(),
            (_, _) => {
                return match req {
                    Request::Login { .. } if *session != SessionState::Anonymous => {
                        fail(fx, Errno::AlreadyOnline, Errno::AlreadyOnline.message())
                    }
                    Request::Login { id, password, acks } => {
                        *session = SessionState::LoggingIn(id);
                        fx.job = Some(Job { seq, kind: JobKind::Login { id, password, acks, from: None } });
                    }
                    Request::Register { name, password } => {
                        fx.job = Some(Job { seq, kind: JobKind::Register { name, password, from: None } });
                    }
                    // Unreachable: anonymous requests are exactly login and register.
                    _ => fail(fx, Errno::NotLoggedIn, Errno::NotLoggedIn.message()),
                };
            }
        };
        if req.claimed_id().is_some_and(|id| id != me.id) {
            return fail(fx, Errno::Forbidden, Errno::Forbidden.message());
        }
        let accept = |fx: &mut Effects, to: Target, msg: String, time: Option<String>, cid: Option<String>| {
            let ts = self.clock.now_ms();
            // A canonical client reads `time` unconditionally: supply the server's when absent.
            let time = time.unwrap_or_else(|| crate::proto::time::format_utc(ts));
            let msg = NewMessage { from: me.id, name: me.name.clone(), to, msg, time, ts, cid };
            fx.log = Some((seq.clone(), msg));
        };
        let kind = match req {
            Request::Login { .. } => return fail(fx, Errno::AlreadyOnline, Errno::AlreadyOnline.message()),
            Request::Register { name, password } => JobKind::Register { name, password, from: None },
            Request::Logout { .. } => {
                *session = SessionState::Anonymous;
                fx.ended = Some(me.id);
                JobKind::Logout { user: me.id }
            }
            Request::OneChat { toid, msg, time, cid, .. } => return accept(fx, Target::User(toid), msg, time, cid),
            Request::AddFriend { friendid, .. } if friendid == me.id => {
                return fail(fx, Errno::BadRequest, "bad request: cannot add yourself as a friend");
            }
            Request::AddFriend { friendid, .. } => JobKind::AddFriend { me: me.id, friendid },
            Request::CreateGroup { name, desc, .. } => JobKind::CreateGroup { me: me.id, name, desc },
            Request::AddGroup { groupid, .. } => JobKind::AddGroup { me: me.id, groupid },
            Request::GroupChat { groupid, msg, time, cid, .. } => {
                return accept(fx, Target::Group(groupid), msg, time, cid);
            }
            Request::History { with, before, limit, .. } => JobKind::History { me: me.id, with, before, limit },
            Request::Acknowledge { mids, .. } => {
                fx.acked = Some((seq, mids)); // the reactor knows the session's deliveries
                return;
            }
        };
        fx.job = Some(Job { seq, kind });
    }

    /// A chat message came back from the log. Durable under a fresh mid, it is delivered: to
    /// a recipient live here at once (the fast path), otherwise by a job. A duplicate `cid` is
    /// acknowledged with the first mid, and delivered again only with `again` (see below); a
    /// failed write is errno 10 and nobody sees the message.
    pub(crate) fn logged(
        &self,
        seq: Option<Value>,
        m: &NewMessage,
        logged: Option<Logged>,
        again: bool,
        fx: &mut Effects,
    ) {
        let req = match m.to {
            Target::User(_) => MsgId::OneChat,
            Target::Group(_) => MsgId::GroupChat,
        };
        let (mid, dup) = match logged {
            Some(Logged::Fresh(mid)) => (mid, false),
            // A retry (the same cid) is answered with the first mid. It is delivered again only
            // if this node did not log the first copy lately (`LogResult::again`): that copy's
            // node may have died before delivering it. Recipients drop a mid shown already.
            Some(Logged::Dup(mid)) if again => (mid, true),
            Some(Logged::Dup(mid)) => {
                if let Some(seq) = &seq {
                    fx.replies.push(reply::sent(req, seq, mid, true));
                }
                return;
            }
            None => {
                let errno = Errno::Unavailable;
                fx.replies.push(reply::error(Some(req.code().into()), seq.as_ref(), errno, errno.message()));
                return;
            }
        };
        let msg = m.with_mid(mid).encode();
        let ack = |fx: &mut Effects| {
            if let Some(seq) = &seq {
                fx.replies.push(reply::sent(req, seq, mid, dup));
            }
        };
        match m.to {
            // A session with acks gets the message stored before the sender is answered, so a
            // crash cannot take it between the answer and the mailbox: on the pool, as for an
            // offline user.
            Target::User(toid) => match self.presence.session(toid) {
                Some((to, false)) => {
                    fx.deliveries.push(Delivery { to, user: toid, msg });
                    ack(fx);
                }
                Some((_, true)) | None => fx.job = Some(Job { seq, kind: JobKind::Chat { toid, msg, mid, dup } }),
            },
            Target::Group(groupid) => match self.deliver_to_group_here(m.from, groupid, &msg, fx) {
                true => ack(fx),
                false => {
                    let chats = vec![GroupChat { seq, groupid, msg, mid, dup }];
                    fx.job = Some(Job { seq: None, kind: JobKind::GroupChats { me: m.from, chats } });
                }
            },
        }
    }

    /// Whether `logged` turns a logged message into a group chat job, and nothing else: a
    /// fresh one (or a retry to deliver again) to a group, in a cluster.
    pub(crate) fn becomes_group_job(&self, to: Target, logged: Option<Logged>, again: bool) -> bool {
        let delivered = match logged {
            Some(Logged::Fresh(_)) => true,
            Some(Logged::Dup(_)) => again,
            None => false,
        };
        delivered && matches!(to, Target::Group(_)) && !self.bus.sole_node()
    }

    /// The group fast path: when the member list is cached and every other member is live on
    /// this node in a session without acks, the message goes out from the reactor, as a one-to-one message to a live user
    /// does; pipelined messages then reach each member in one write. Otherwise (`false`) the
    /// pool reads the members, routes to other nodes and stores for offline members.
    fn deliver_to_group_here(&self, me: UserId, group: GroupId, msg: &Arc<str>, fx: &mut Effects) -> bool {
        if !self.bus.sole_node() {
            return false; // the bus confirms the member list first (see `Service::send_to_group`)
        }
        let Some(members) = self.groups.members(group).map(|m| m.users) else { return false };
        if !members.contains(&me) {
            return false; // the pool gives the error
        }
        let start = fx.deliveries.len();
        for &user in members.iter().filter(|&&m| m != me) {
            match self.presence.session(user) {
                Some((to, false)) => fx.deliveries.push(Delivery { to, user, msg: msg.clone() }),
                Some((_, true)) | None => {
                    fx.deliveries.truncate(start);
                    return false;
                }
            }
        }
        true
    }
}
