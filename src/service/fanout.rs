//! Group messages, sent from the pool: the consecutive ones of a sender at once, in order.
//!
//! For a batch, members come from the cache (read again when the bus says a version is
//! stale); one bus call sends every message to the members live on other nodes; one hand-over
//! per reactor delivers all of them to the members live here, so a reactor writes many
//! messages to a member at once; the rest are stored in the members' mailboxes.

use std::collections::HashMap;

use super::groups::Members;
use super::jobs::Unavailable;
use super::{Delivery, GroupChat, Loc, Outlet, Service};
use crate::bus::{BusError, GroupRouting, GroupSend};
use crate::proto::{reply, Errno, MsgId};
use crate::{GroupId, UserId};

/// Most times a batch reads members again because they changed meanwhile.
const GROUP_READS: usize = 3;

/// What became of one group message: sent (naming the members whose mailbox was full),
/// refused, or not sent for a failed dependency.
type Sent = Result<Result<Vec<UserId>, Errno>, Unavailable>;

/// One message of a batch on its way.
struct Plan {
    members: Members,
    /// The other members live here when the batch began, and the rest.
    here: Vec<UserId>,
    elsewhere: Vec<UserId>,
}

impl Service {
    /// Sends the logged group messages `chats` of `me`, in order, and returns their answers,
    /// one after the other (a message without `seq` is answered only if refused). Each
    /// member gets a sender's messages in the order sent, as with one-to-one messages.
    pub(super) fn group_chats(&self, me: UserId, chats: Vec<GroupChat>, here: Loc, outlet: &dyn Outlet) -> Vec<u8> {
        let mut sent: Vec<Sent> = Vec::with_capacity(chats.len());
        let mut told = HashMap::new();
        let mut rereads = 0;
        while sent.len() < chats.len() {
            if rereads == GROUP_READS {
                let e = BusError::Protocol("a group whose members change faster than they can be read");
                sent.extend((sent.len()..chats.len()).map(|_| Err(e.clone().into())));
                break;
            }
            let start = sent.len();
            if self.send_some(me, &chats[start..], &mut told, outlet, &mut sent) {
                rereads += 1;
            }
        }
        let mut replies = Vec::new();
        for (chat, sent) in chats.into_iter().zip(sent) {
            replies.extend(self.group_answer(chat, sent, here));
        }
        replies
    }

    /// Sends a prefix of `chats`, pushing what became of each to `sent`; `true` if it stopped
    /// at a message whose members changed (their version is in `told`: read them again).
    fn send_some(
        &self,
        me: UserId,
        chats: &[GroupChat],
        told: &mut HashMap<GroupId, u64>,
        outlet: &dyn Outlet,
        sent: &mut Vec<Sent>,
    ) -> bool {
        let mut plans: Vec<Result<Plan, Sent>> = chats
            .iter()
            .map(|c| match self.members_of(c.groupid, told.remove(&c.groupid)) {
                Err(e) => Err(Err(e)),
                Ok(None) => Err(Ok(Err(Errno::NoSuchGroup))),
                Ok(Some(m)) if !m.users.contains(&me) => Err(Ok(Err(Errno::NotMember))),
                Ok(Some(members)) => Ok(Plan { members, here: Vec::new(), elsewhere: Vec::new() }),
            })
            .collect();
        self.presence.with_all(|at| {
            for plan in plans.iter_mut().flatten() {
                let others = plan.members.users.iter().copied().filter(|&u| u != me);
                (plan.here, plan.elsewhere) = others.partition(|&u| at(u).is_some());
            }
        });
        let sends: Vec<GroupSend<'_>> = plans
            .iter()
            .zip(chats)
            .filter_map(|(plan, c)| {
                let plan = plan.as_ref().ok()?;
                Some(GroupSend { group: c.groupid, version: plan.members.version, users: &plan.elsewhere, msg: &c.msg })
            })
            .collect();
        let routed = self.bus.route_groups(&sends);
        drop(sends);
        let mut answers = match routed {
            Ok(answers) => answers.into_iter(),
            Err(e) => {
                sent.extend(plans.into_iter().map(|p| match p {
                    Ok(_) => Err(e.clone().into()),
                    Err(refused) => refused,
                }));
                return false;
            }
        };
        // Up to the first stale message: what each became, or the members it is for.
        let mut done: Vec<Result<(Plan, Vec<UserId>), Sent>> = Vec::new();
        let mut stale = false;
        for (plan, chat) in plans.into_iter().zip(chats) {
            match (plan, answers.next()) {
                (Err(s), _) => done.push(Err(s)),
                (Ok(plan), Some(GroupRouting::Routed { missed })) => done.push(Ok((plan, missed))),
                (Ok(_), Some(GroupRouting::Stale { current })) => {
                    self.groups.invalidate(chat.groupid);
                    told.insert(chat.groupid, current);
                    stale = true;
                    break;
                }
                (Ok(_), None) => break, // past a stale one (the bus answers none after it)
            }
        }
        // One hand-over per reactor for everything live here; then, message by message, the
        // members who left meanwhile or use acks, and those live nowhere.
        let unreached: Vec<Vec<UserId>> = self.presence.with_all(|at| {
            let mut live = Vec::new();
            let unreached = done
                .iter()
                .zip(chats)
                .map(|(d, chat)| {
                    let Ok((plan, _)) = d else { return Vec::new() };
                    let mut unreached = Vec::new();
                    for &user in &plan.here {
                        match at(user) {
                            Some((to, false)) => live.push(Delivery { to, user, msg: chat.msg.clone() }),
                            _ => unreached.push(user),
                        }
                    }
                    unreached
                })
                .collect();
            outlet.deliver_many(live);
            unreached
        });
        for ((d, chat), unreached) in done.into_iter().zip(chats).zip(unreached) {
            sent.push(match d {
                Err(s) => s,
                Ok((_, missed)) => self.store_for_missed(&chat.msg, unreached, missed, outlet).map(Ok),
            });
        }
        stale
    }

    /// The members of `group` and their version: cached, or read (under the version the bus
    /// `told`, after a stale one). `None`: no such group.
    fn members_of(&self, group: GroupId, told: Option<u64>) -> Result<Option<Members>, Unavailable> {
        if told.is_none() {
            if let Some(m) = self.groups.members(group) {
                return Ok(Some(m));
            }
        }
        let generation = self.groups.generation();
        let version = match told {
            Some(v) => v,
            None => self.bus.group_version(group)?,
        };
        Ok(self.store.group_members(group)?.map(|users| self.groups.fill(group, &users, version, generation)))
    }

    /// Delivers or stores a group message for the members a batch's hand-over did not reach
    /// and those the bus `missed`; returns those whose mailbox was full.
    fn store_for_missed(
        &self,
        msg: &std::sync::Arc<str>,
        unreached: Vec<UserId>,
        missed: Vec<UserId>,
        outlet: &dyn Outlet,
    ) -> Result<Vec<UserId>, Unavailable> {
        let mut full = Vec::new();
        for member in unreached {
            if !(self.deliver_live(member, msg, outlet)? || self.store_offline(member, msg, outlet)?) {
                full.push(member);
            }
        }
        for member in missed {
            if !self.store_offline(member, msg, outlet)? {
                full.push(member);
            }
        }
        Ok(full)
    }

    /// The answer to one group message. Members whose mailbox was full are named in it (the
    /// message is in the group's history). A refused message leaves the log, so history never
    /// shows it (not a retry: its first copy may have reached someone).
    fn group_answer(&self, chat: GroupChat, sent: Sent, here: Loc) -> Vec<u8> {
        let GroupChat { seq, mid, dup, .. } = chat;
        let error =
            |errno: Errno| reply::error(Some(MsgId::GroupChat.code().into()), seq.as_ref(), errno, errno.message());
        let sent = match sent {
            Ok(Err(errno)) if !dup => self.store.unlog(mid).map_err(Unavailable::from).map(|()| Err(errno)),
            other => other,
        };
        match sent {
            Ok(Ok(full)) => match &seq {
                None => Vec::new(),
                Some(seq) if full.is_empty() => reply::sent(MsgId::GroupChat, seq, mid, dup),
                Some(seq) => reply::group_sent_but_full(seq, mid, dup, &full),
            },
            Ok(Err(errno)) => error(errno),
            Err(e) => {
                log::error!("group chat for connection {}.{}: {e}", here.reactor, here.conn);
                error(Errno::Unavailable)
            }
        }
    }
}
