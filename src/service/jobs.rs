//! The pool half of request handling: everything that needs the store or the bus. Pool threads
//! only; these calls block.

use std::sync::Arc;

use super::{Delivery, Effect, Job, JobKind, Loc, Outcome, Outlet, Service};
use crate::bus::BusError;
use crate::proto::message::Target;
use crate::proto::reply::{self, LoginData};
use crate::proto::{Errno, MsgId};
use crate::store::{Conversation, Mid, StoreResult};
use crate::UserId;

/// Most messages one login ack (or one drain) takes from a mailbox; the rest follow in slices.
pub(crate) const SLICE_MESSAGES: usize = 1000;
/// Most bytes of messages one slice takes (a single larger message still goes, alone).
pub(crate) const SLICE_BYTES: usize = 1024 * 1024;

/// A dependency failed; the request is answered with errno 10 and the cause logged once, with
/// the job it stopped.
#[derive(Debug, thiserror::Error)]
pub(super) enum Unavailable {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Hash(#[from] super::HashError),
}

impl Job {
    /// The answer refusing this job's request with `errno`, if it came from a client.
    pub(crate) fn reject(&self, errno: Errno) -> Option<Vec<u8>> {
        let req = self.kind.request()?;
        Some(reply::error(Some(req.code().into()), self.seq.as_ref(), errno, errno.message()))
    }
}

impl JobKind {
    /// Whether it answers a client and may be refused (errno 10) when the pool is overloaded.
    /// Not a logout: its session has already ended here, and the bus claim must go with it.
    /// Nor a logged chat message: it was accepted already.
    pub(crate) fn sheddable(&self) -> bool {
        self.request().is_some()
            && !matches!(self, JobKind::Logout { .. } | JobKind::Chat { .. } | JobKind::GroupChats { .. })
    }

    /// The mid of a logged chat message (of the first, for group messages).
    pub(crate) fn mid(&self) -> Option<Mid> {
        match self {
            JobKind::Chat { mid, .. } => Some(*mid),
            JobKind::GroupChats { chats, .. } => chats.first().map(|c| c.mid),
            _ => None,
        }
    }

    /// Whether a logged one-to-one message is a retry of one logged before.
    pub(crate) fn dup(&self) -> bool {
        matches!(self, JobKind::Chat { dup: true, .. })
    }

    /// For logs.
    fn name(&self) -> &'static str {
        match self {
            JobKind::Login { .. } => "login",
            JobKind::Register { .. } => "register",
            JobKind::Chat { .. } => "chat",
            JobKind::AddFriend { .. } => "add-friend",
            JobKind::CreateGroup { .. } => "create-group",
            JobKind::AddGroup { .. } => "add-group",
            JobKind::GroupChats { .. } => "group chat",
            JobKind::History { .. } => "history",
            JobKind::Drain { .. } => "mailbox drain",
            JobKind::Peek { .. } => "mailbox read",
            JobKind::Forget { .. } => "acknowledgement",
            JobKind::Offline { .. } => "session end",
            JobKind::Logout { .. } => "logout",
        }
    }

    fn request(&self) -> Option<MsgId> {
        Some(match self {
            JobKind::Login { .. } => MsgId::Login,
            JobKind::Register { .. } => MsgId::Register,
            JobKind::Chat { .. } => MsgId::OneChat,
            JobKind::AddFriend { .. } => MsgId::AddFriend,
            JobKind::CreateGroup { .. } => MsgId::CreateGroup,
            JobKind::AddGroup { .. } => MsgId::AddGroup,
            JobKind::GroupChats { .. } => MsgId::GroupChat,
            JobKind::History { .. } => MsgId::History,
            JobKind::Logout { .. } => MsgId::Logout,
            JobKind::Forget { .. } => MsgId::Acknowledge,
            JobKind::Drain { .. } | JobKind::Peek { .. } | JobKind::Offline { .. } => return None,
        })
    }
}

impl Service {
    /// Carries out a job for the connection at `here`.
    pub(crate) fn run(&self, job: Job, here: Loc, outlet: &dyn Outlet) -> Outcome {
        let req = job.kind.request();
        let what = job.kind.name();
        let seq = job.seq;
        let error = |errno: Errno, errmsg: &str| Outcome {
            reply: req.map(|r| reply::error(Some(r.code().into()), seq.as_ref(), errno, errmsg)),
            effect: Effect::None,
        };
        let (mid, dup) = (job.kind.mid(), job.kind.dup());
        let ok = |groupid| Outcome {
            reply: seq.as_ref().zip(req).map(|(seq, r)| match mid {
                Some(mid) => reply::sent(r, seq, mid, dup),
                None => reply::ok(r, seq, groupid),
            }),
            effect: Effect::None,
        };
        // A logged message refused after all leaves the log, so history never shows it (not
        // a retry: its first copy may have reached someone).
        let refuse = |errno: Errno| -> Result<Outcome, Unavailable> {
            if let Some(mid) = mid.filter(|_| !dup) {
                self.store.unlog(mid)?;
            }
            Ok(error(errno, errno.message()))
        };
        // Errno 14: retry after the wait, in whole seconds (at least one).
        let throttled = |wait: std::time::Duration| Outcome {
            reply: req.map(|r| {
                reply::throttled(Some(r.code().into()), seq.as_ref(), wait.as_secs_f64().ceil().max(1.0) as u64)
            }),
            effect: Effect::None,
        };
        let result: Result<Outcome, Unavailable> = (|| {
            Ok(match job.kind {
                JobKind::Login { id, password, acks, from } => {
                    // Refused before the hash is computed: a guesser costs no argon2id.
                    let attempts = self.throttle.login_attempts(&*self.bus, id, from)?;
                    if let Some(wait) = attempts.blocked {
                        return Ok(throttled(wait));
                    }
                    match self.login(id, &password, here, acks)? {
                        Ok((data, more)) => {
                            self.retry_releases(outlet); // the bus answered the claim
                            if let Err(e) = self.throttle.login_succeeded(&*self.bus, id, attempts) {
                                log::warn!("user {id}: failed logins not reset: {e}");
                            }
                            let bytes = reply::login_ok(&data, seq.as_ref());
                            Outcome { reply: None, effect: Effect::LoggedIn { data, bytes, more } }
                        }
                        Err(Errno::Credentials) => {
                            self.throttle.login_failed(&*self.bus, id, from)?;
                            error(Errno::Credentials, Errno::Credentials.message())
                        }
                        Err(errno) => error(errno, errno.message()),
                    }
                }
                JobKind::Register { name, password, from } => {
                    if let Some(wait) = self.throttle.register_blocked(&*self.bus, from)? {
                        return Ok(throttled(wait));
                    }
                    let hash = self.hasher.hash(&password)?;
                    match self.store.create_user(&name, &hash)? {
                        Some(id) => {
                            if let Err(e) = self.throttle.registered(&*self.bus, from) {
                                log::warn!("registration from {from:?} not counted: {e}");
                            }
                            Outcome { reply: Some(reply::registered(id, seq.as_ref())), effect: Effect::None }
                        }
                        None => error(Errno::Credentials, "name is already taken"),
                    }
                }
                JobKind::Chat { toid, msg, .. } => {
                    // The bus has said the user is live on no other node (see `Service::route`);
                    // it may have logged in here meanwhile. A live user exists: the database
                    // is asked only when storing.
                    // A session with acks here gets it stored first, then told (below).
                    let delivered = self
                        .presence
                        .with_unacked(toid, |to| outlet.deliver(Delivery { to, user: toid, msg: msg.clone() }));
                    if delivered.flatten().is_some() {
                        return Ok(ok(None));
                    }
                    if !self.store.user_exists(toid)? {
                        return refuse(Errno::NoSuchUser);
                    }
                    match self.store_offline(toid, &msg, outlet)? {
                        true => ok(None),
                        false => refuse(Errno::MailboxFull)?,
                    }
                }
                JobKind::AddFriend { me, friendid } => {
                    if !self.store.user_exists(friendid)? {
                        return Ok(error(Errno::NoSuchUser, Errno::NoSuchUser.message()));
                    }
                    self.store.add_friend(me, friendid)?;
                    ok(None)
                }
                JobKind::CreateGroup { me, name, desc } => ok(Some(self.store.create_group(me, &name, &desc)?)),
                JobKind::AddGroup { me, groupid } => match self.store.join_group(groupid, me)? {
                    true => {
                        self.groups.invalidate(groupid);
                        // Before the answer: the next message sent to the group, on any node,
                        // reaches the new member. Should the bus fail, errno 10 asks for a
                        // retry, and other nodes read the members again within a while.
                        self.bus.group_changed(groupid)?;
                        ok(None)
                    }
                    false => error(Errno::NoSuchGroup, Errno::NoSuchGroup.message()),
                },
                JobKind::GroupChats { me, chats } => {
                    let replies = self.group_chats(me, chats, here, outlet);
                    Outcome { reply: (!replies.is_empty()).then_some(replies), effect: Effect::None }
                }
                JobKind::History { me, with, before, limit } => {
                    match with {
                        Target::User(peer) if !self.store.user_exists(peer)? => {
                            return Ok(error(Errno::NoSuchUser, Errno::NoSuchUser.message()));
                        }
                        Target::User(_) => {}
                        Target::Group(g) => match self.store.group_members(g)? {
                            None => return Ok(error(Errno::NoSuchGroup, Errno::NoSuchGroup.message())),
                            Some(members) if !members.contains(&me) => {
                                return Ok(error(Errno::NotMember, Errno::NotMember.message()));
                            }
                            Some(_) => {}
                        },
                    }
                    match self.store.history(Conversation::of(me, with), before, limit)? {
                        Some(page) => Outcome {
                            reply: Some(reply::history(seq.as_ref(), &page.messages, page.more)),
                            effect: Effect::None,
                        },
                        None => error(Errno::BadRequest, "bad request: before is not a message of this conversation"),
                    }
                }
                JobKind::Peek { user, after, limit } => Outcome {
                    reply: None,
                    effect: Effect::Peeked { user, rows: self.store.peek_offline(user, after, limit)?, limit },
                },
                JobKind::Forget { user, rows } => {
                    self.store.delete_offline(user, &rows)?;
                    ok(None)
                }
                JobKind::Drain { user } => {
                    let (msgs, more) = self.take_mailbox_slice(user)?;
                    Outcome { reply: None, effect: Effect::Drained { user, msgs, more } }
                }
                JobKind::Offline { user } => {
                    self.go_offline(user, outlet)?;
                    Outcome::default()
                }
                JobKind::Logout { user } => {
                    // The session has ended here whatever the bus says; a claim left behind is
                    // released later (see `go_offline`).
                    if let Err(e) = self.go_offline(user, outlet) {
                        log::warn!("user {user}: logged out with the bus claim or state not cleared: {e}");
                    }
                    ok(None)
                }
            })
        })();
        result.unwrap_or_else(|e| {
            log::error!("{what} for connection {}.{}: {e}", here.reactor, here.conn);
            error(Errno::Unavailable, Errno::Unavailable.message())
        })
    }

    /// Takes the oldest messages of a canonical session's mailbox, at most one slice (by count
    /// and bytes), so no login ack or drain is unbounded: a full mailbox of large messages would
    /// otherwise be one huge write, built and queued at once. `true`: more is waiting.
    fn take_mailbox_slice(&self, user: UserId) -> StoreResult<(Vec<String>, bool)> {
        let rows = self.store.peek_offline(user, 0, SLICE_MESSAGES)?;
        let mut more = rows.len() >= SLICE_MESSAGES;
        let (mut ids, mut msgs, mut bytes) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()), 0);
        for (row, text) in rows {
            if !msgs.is_empty() && bytes + text.len() > SLICE_BYTES {
                more = true;
                break;
            }
            bytes += text.len();
            ids.push(row);
            msgs.push(text);
        }
        if !ids.is_empty() {
            self.store.delete_offline(user, &ids)?;
        }
        Ok((msgs, more))
    }

    /// Checks the password, claims presence, then reads what the ack shows. The mailbox is taken
    /// last and presence registered first: a message stored after the take finds the user live.
    /// An acks login leaves the mailbox in place: its session reads it after the ack.
    fn login(
        &self,
        id: UserId,
        password: &str,
        here: Loc,
        acks: bool,
    ) -> Result<Result<(LoginData, bool), Errno>, Unavailable> {
        let user = self.store.user(id)?;
        if !self.hasher.verify(password, user.as_ref().map(|u| u.password.as_str())) {
            return Ok(Err(Errno::Credentials));
        }
        let Some(user) = user else { return Ok(Err(Errno::Credentials)) };
        if self.hasher.outdated(&user.password) {
            // Made with an older cost: made again with the configured one, now that the
            // password is known to be right. A failure only leaves the old hash in place.
            match self.hasher.hash(password) {
                Ok(hash) => {
                    if let Err(e) = self.store.set_password(id, &hash) {
                        log::warn!("user {id}: password hash not upgraded: {e}");
                    }
                }
                Err(e) => log::warn!("user {id}: password hash not upgraded: {e}"),
            }
        }
        if !self.presence.insert_if_absent(id, here, acks) {
            return Ok(Err(Errno::AlreadyOnline));
        }
        let gather = || -> Result<Result<(LoginData, bool), Errno>, Unavailable> {
            if !self.bus.claim(id, Some(acks))? {
                return Ok(Err(Errno::AlreadyOnline));
            }
            let friends = self.store.friends(id)?;
            let groups = self.store.user_groups(id)?;
            let members = groups.iter().flat_map(|g| g.members.iter().map(|m| m.id));
            let online = self.online_among(friends.iter().map(|(fid, _)| *fid).chain(members));
            let friends =
                friends.iter().map(|(fid, name)| reply::friend_entry(*fid, name, online.contains(fid))).collect();
            let groups = groups
                .iter()
                .map(|g| {
                    let users: Vec<String> = g
                        .members
                        .iter()
                        .map(|m| reply::member_entry(m.id, &m.name, online.contains(&m.id), m.creator))
                        .collect();
                    reply::group_entry(g.id, &g.name, &g.desc, &users)
                })
                .collect();
            let (offline, more) = if acks { (Vec::new(), false) } else { self.take_mailbox_slice(id)? };
            Ok(Ok((LoginData { id, name: Arc::from(user.name.as_str()), friends, groups, offline, acks }, more)))
        };
        let result = gather();
        if !matches!(result, Ok(Ok(_))) {
            self.presence.remove_if(id, here);
            // Compare-and-delete on the bus side: harmless when the claim was never ours.
            if let Err(e) = self.bus.release(id) {
                log::warn!("user {id}: bus claim not released: {e}");
            }
            return result;
        }
        if let Err(e) = self.store.set_state(id, true) {
            log::warn!("user {id}: state not written: {e}");
        }
        result
    }

    /// A session of `user` ended here: release its bus claim and write the state. A claim that
    /// cannot be released now (the bus is unreachable) would make other nodes refuse the user's
    /// logins, so it is kept and tried again once the bus answers.
    fn go_offline(&self, user: UserId, outlet: &dyn Outlet) -> Result<(), Unavailable> {
        let result = self.release_claim(user, outlet);
        match result {
            Ok(()) => self.retry_releases(outlet),
            Err(_) => self.unreleased.lock().push(user),
        }
        result
    }

    fn retry_releases(&self, outlet: &dyn Outlet) {
        let pending = std::mem::take(&mut *self.unreleased.lock());
        for user in pending {
            if self.release_claim(user, outlet).is_err() {
                self.unreleased.lock().push(user);
            }
        }
    }

    /// The claim is per node, so a new session of the user on this node may have claimed before
    /// this release took it away: then it claims again and fetches what was stored meanwhile
    /// (or, if another node claimed in between, its session here is the one to go).
    fn release_claim(&self, user: UserId, outlet: &dyn Outlet) -> Result<(), Unavailable> {
        if self.presence.get(user).is_some() {
            return Ok(()); // live here again: the claim is its
        }
        self.bus.release(user)?;
        match self.presence.get(user) {
            None => self.store.set_state(user, false)?,
            Some(loc) if self.bus.claim(user, None)? => outlet.drain(loc, user),
            Some(loc) => outlet.evict(loc),
        }
        Ok(())
    }

    /// Which of `users` are online: here, or elsewhere by one question to the bus for all the
    /// rest. A bus that cannot answer leaves them offline (a login does not fail for it).
    fn online_among(&self, users: impl Iterator<Item = UserId>) -> std::collections::HashSet<UserId> {
        let (mut online, mut asked) = (std::collections::HashSet::new(), std::collections::HashSet::new());
        let mut ask = Vec::new();
        for user in users {
            if self.presence.get(user).is_some() {
                online.insert(user);
            } else if asked.insert(user) {
                ask.push(user);
            }
        }
        if let Ok(elsewhere) = self.bus.online_elsewhere(&ask) {
            online.extend(ask.into_iter().zip(elsewhere).filter_map(|(user, on)| on.then_some(user)));
        }
        online
    }

    /// Delivers `msg` to `user` if it is live on this node or another; `false`: it is not, or
    /// its session acknowledges deliveries (store it: the session reads it from its mailbox).
    pub(super) fn deliver_live(&self, user: UserId, msg: &Arc<str>, outlet: &dyn Outlet) -> Result<bool, Unavailable> {
        // Sent under the presence read lock: a session ending meanwhile still finds it queued.
        match self.presence.with_unacked(user, |to| outlet.deliver(Delivery { to, user, msg: msg.clone() })) {
            Some(Some(())) => Ok(true),
            Some(None) => Ok(false), // a session with acks here: stored first
            None => Ok(self.bus.route(user, msg)?),
        }
    }

    /// Stores `msg` in `user`'s mailbox, in order with every other write to it. `false`: full.
    pub(super) fn store_offline(&self, user: UserId, msg: &Arc<str>, outlet: &dyn Outlet) -> Result<bool, Unavailable> {
        if !self.mailboxes.store(user, msg.clone(), self.mailbox_cap)? {
            return Ok(false);
        }
        super::mailbox::poke_if_online(&self.presence, &*self.bus, outlet, user);
        Ok(true)
    }
}
