//! Server → client messages, each encoded as compact JSON followed by exactly one `\n`.
//!
//! Field order follows PROTOCOL.md's examples (`msgid` first); keys whose value is absent or an
//! empty list are left out, as canonical clients expect.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::request::Rejection;
use super::{Errno, MsgId};
use crate::{GroupId, UserId};

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    // These types hold only strings, integers and lists: serialization cannot fail.
    if let Err(e) = serde_json::to_writer(&mut out, value) {
        log::error!("reply serialization failed: {e}");
        out.clear();
        out.extend_from_slice(br#"{"msgid":11,"errno":10}"#);
    }
    out.push(b'\n');
    out
}

#[derive(Serialize)]
struct Ack<'a> {
    msgid: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    req: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<&'a Value>,
    errno: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    errmsg: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<UserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    groupid: Option<GroupId>,
}

impl Ack<'_> {
    fn new(msgid: MsgId, errno: Errno) -> Self {
        Ack { msgid: msgid.code(), req: None, seq: None, errno: errno.code(), errmsg: None, id: None, groupid: None }
    }
}

/// An error answer to request `req`: login and register use their own ack ids, others `ACK_MSG`.
pub fn error(req: Option<i64>, seq: Option<&Value>, errno: Errno, errmsg: &str) -> Vec<u8> {
    let mut ack = match req {
        Some(1) => Ack::new(MsgId::LoginAck, errno),
        Some(4) => Ack::new(MsgId::RegisterAck, errno),
        _ => Ack { req, ..Ack::new(MsgId::Ack, errno) },
    };
    ack.seq = seq;
    ack.errmsg = Some(errmsg);
    encode(&ack)
}

pub fn rejection(r: &Rejection) -> Vec<u8> {
    error(r.req, r.seq.as_ref(), r.errno, &r.errmsg)
}

/// The success `ACK_MSG` of a request that carried `seq`.
pub fn ok(req: MsgId, seq: &Value, groupid: Option<GroupId>) -> Vec<u8> {
    encode(&Ack { req: Some(req.code().into()), seq: Some(seq), groupid, ..Ack::new(MsgId::Ack, Errno::Ok) })
}

pub fn registered(id: UserId, seq: Option<&Value>) -> Vec<u8> {
    encode(&Ack { seq, id: Some(id), ..Ack::new(MsgId::RegisterAck, Errno::Ok) })
}

#[derive(Serialize)]
struct LoginOk<'a> {
    msgid: u8,
    errno: u8,
    id: UserId,
    name: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    friends: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    groups: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    offlinemsg: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<&'a Value>,
}

/// What a successful login returns; lists hold JSON-encoded strings (the canonical quirk).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoginData {
    pub id: UserId,
    pub name: Arc<str>,
    pub friends: Vec<String>,
    pub groups: Vec<String>,
    pub offline: Vec<String>,
}

pub fn login_ok(data: &LoginData, seq: Option<&Value>) -> Vec<u8> {
    encode(&LoginOk {
        msgid: MsgId::LoginAck.code(),
        errno: 0,
        id: data.id,
        name: &data.name,
        friends: &data.friends,
        groups: &data.groups,
        offlinemsg: &data.offline,
        seq,
    })
}

fn state(online: bool) -> &'static str {
    if online {
        "online"
    } else {
        "offline"
    }
}

/// One entry of the login ack's `friends` list.
pub fn friend_entry(id: UserId, name: &str, online: bool) -> String {
    #[derive(Serialize)]
    struct Friend<'a> {
        id: UserId,
        name: &'a str,
        state: &'a str,
    }
    serde_json::to_string(&Friend { id, name, state: state(online) }).unwrap_or_default()
}

/// One member inside a `groups` entry.
pub fn member_entry(id: UserId, name: &str, online: bool, creator: bool) -> String {
    #[derive(Serialize)]
    struct Member<'a> {
        id: UserId,
        name: &'a str,
        state: &'a str,
        role: &'a str,
    }
    let role = if creator { "creator" } else { "normal" };
    serde_json::to_string(&Member { id, name, state: state(online), role }).unwrap_or_default()
}

/// One entry of the login ack's `groups` list.
pub fn group_entry(id: GroupId, groupname: &str, groupdesc: &str, users: &[String]) -> String {
    #[derive(Serialize)]
    struct Group<'a> {
        id: GroupId,
        groupname: &'a str,
        groupdesc: &'a str,
        users: &'a [String],
    }
    serde_json::to_string(&Group { id, groupname, groupdesc, users }).unwrap_or_default()
}

/// Where a chat message goes: one user or one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    User(UserId),
    Group(GroupId),
}

/// A chat message as delivered, encoded once and shared by every recipient.
#[derive(Debug, Clone, Copy)]
pub struct Chat<'a> {
    pub from: UserId,
    pub name: &'a str,
    pub to: Target,
    pub msg: &'a str,
    pub time: &'a str,
    pub ts: u64,
}

/// Encodes a delivered chat message, newline included; the offline store keeps it without.
pub fn chat(c: &Chat<'_>) -> Arc<str> {
    #[derive(Serialize)]
    struct Wire<'a> {
        msgid: u8,
        id: UserId,
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        toid: Option<UserId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        groupid: Option<GroupId>,
        msg: &'a str,
        time: &'a str,
        ts: u64,
    }
    let (msgid, toid, groupid) = match c.to {
        Target::User(u) => (MsgId::OneChat, Some(u), None),
        Target::Group(g) => (MsgId::GroupChat, None, Some(g)),
    };
    let wire =
        Wire { msgid: msgid.code(), id: c.from, name: c.name, toid, groupid, msg: c.msg, time: c.time, ts: c.ts };
    // Sized for the message, escapes aside, so the encoding rarely reallocates.
    let mut out = Vec::with_capacity(c.msg.len() + c.name.len() + c.time.len() + 96);
    if serde_json::to_writer(&mut out, &wire).is_err() {
        out.clear(); // unreachable: these fields always serialize
    }
    out.push(b'\n');
    Arc::from(String::from_utf8(out).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn shapes_match_the_protocol_examples() {
        assert_eq!(text(registered(1, None)), "{\"msgid\":5,\"errno\":0,\"id\":1}\n");
        assert_eq!(
            text(ok(MsgId::CreateGroup, &json!(7), Some(3))),
            "{\"msgid\":11,\"req\":8,\"seq\":7,\"errno\":0,\"groupid\":3}\n"
        );
        assert_eq!(
            text(error(Some(6), None, Errno::NoSuchUser, "no such user")),
            "{\"msgid\":11,\"req\":6,\"errno\":6,\"errmsg\":\"no such user\"}\n"
        );
        assert_eq!(
            text(error(Some(1), None, Errno::Credentials, Errno::Credentials.message())),
            "{\"msgid\":2,\"errno\":1,\"errmsg\":\"id or password is invalid!\"}\n"
        );
        let data = LoginData { id: 1, name: "alice".into(), ..LoginData::default() };
        assert_eq!(text(login_ok(&data, None)), "{\"msgid\":2,\"errno\":0,\"id\":1,\"name\":\"alice\"}\n");
        let c = Chat { from: 2, name: "bob", to: Target::User(1), msg: "hi", time: "t", ts: 5 };
        assert_eq!(
            &*chat(&c),
            "{\"msgid\":6,\"id\":2,\"name\":\"bob\",\"toid\":1,\"msg\":\"hi\",\"time\":\"t\",\"ts\":5}\n"
        );
    }
}
