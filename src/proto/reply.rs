//! Server → client messages: encoded by the server, each compact JSON followed by exactly one
//! `\n`, and decoded for clients ([`decode`]).
//!
//! Field order follows PROTOCOL.md's examples (`msgid` first); keys whose value is absent or an
//! empty list are left out, as canonical clients expect.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::message::ChatMessage;
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
    #[serde(skip_serializing_if = "Option::is_none")]
    mid: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dup: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    more: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    full: Option<&'a [UserId]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

impl Ack<'_> {
    fn new(msgid: MsgId, errno: Errno) -> Self {
        Ack {
            msgid: msgid.code(),
            req: None,
            seq: None,
            errno: errno.code(),
            errmsg: None,
            id: None,
            groupid: None,
            mid: None,
            dup: None,
            messages: None,
            more: None,
            full: None,
            retry_after: None,
        }
    }
}

/// An error answer to request `req`: login and register use their own ack ids, others `ACK_MSG`.
pub fn error(req: Option<i64>, seq: Option<&Value>, errno: Errno, errmsg: &str) -> Vec<u8> {
    encode(&error_ack(req, seq, errno, errmsg))
}

fn error_ack<'a>(req: Option<i64>, seq: Option<&'a Value>, errno: Errno, errmsg: &'a str) -> Ack<'a> {
    let answered = req.and_then(|n| MsgId::from_code(u64::try_from(n).ok()?));
    let mut ack = match answered {
        Some(MsgId::Login) => Ack::new(MsgId::LoginAck, errno),
        Some(MsgId::Register) => Ack::new(MsgId::RegisterAck, errno),
        _ => Ack { req, ..Ack::new(MsgId::Ack, errno) },
    };
    ack.seq = seq;
    ack.errmsg = Some(errmsg);
    ack
}

/// Errno 14 to request `req` (in its own ack id, as `error`): retry after `retry_after` seconds.
pub fn throttled(req: Option<i64>, seq: Option<&Value>, retry_after: u64) -> Vec<u8> {
    let mut ack = error_ack(req, seq, Errno::TooManyAttempts, Errno::TooManyAttempts.message());
    ack.retry_after = Some(retry_after);
    encode(&ack)
}

pub fn rejection(r: &Rejection) -> Vec<u8> {
    error(r.req, r.seq.as_ref(), r.errno, &r.errmsg)
}

/// The success `ACK_MSG` of a request that carried `seq`.
pub fn ok(req: MsgId, seq: &Value, groupid: Option<GroupId>) -> Vec<u8> {
    encode(&Ack { req: Some(req.code().into()), seq: Some(seq), groupid, ..Ack::new(MsgId::Ack, Errno::Ok) })
}

/// The success `ACK_MSG` of a chat: its `mid`, and `dup` when the `cid` had been accepted before.
pub fn sent(req: MsgId, seq: &Value, mid: u64, dup: bool) -> Vec<u8> {
    let ack = Ack { req: Some(req.code().into()), seq: Some(seq), mid: Some(mid), ..Ack::new(MsgId::Ack, Errno::Ok) };
    encode(&Ack { dup: dup.then_some(true), ..ack })
}

/// A group message accepted but not stored for these offline members: their mailboxes are
/// full (they find it in the group's history).
pub fn group_sent_but_full(seq: &Value, mid: u64, dup: bool, full: &[UserId]) -> Vec<u8> {
    let req = Some(MsgId::GroupChat.code().into());
    let ack = Ack { req, seq: Some(seq), mid: Some(mid), full: Some(full), ..Ack::new(MsgId::Ack, Errno::Ok) };
    encode(&Ack { dup: dup.then_some(true), ..ack })
}

/// A history page (msgid 14): always answered, with or without `seq`.
pub fn history(seq: Option<&Value>, messages: &[ChatMessage<'_>], more: bool) -> Vec<u8> {
    let messages = Some(messages.iter().map(ChatMessage::to_value).collect());
    let req = Some(MsgId::History.code().into());
    encode(&Ack { req, seq, messages, more: Some(more), ..Ack::new(MsgId::Ack, Errno::Ok) })
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
    #[serde(skip_serializing_if = "Option::is_none")]
    acks: Option<bool>,
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
    /// An acks session: what waits is sent after the ack, not in it.
    pub acks: bool,
}

pub fn login_ok(data: &LoginData, seq: Option<&Value>) -> Vec<u8> {
    encode(&LoginOk {
        msgid: MsgId::LoginAck.code(),
        errno: 0,
        id: data.id,
        name: &data.name,
        acks: data.acks.then_some(true),
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

/// One entry of the login ack's `friends` list (sent as a JSON-encoded string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Friend {
    pub id: UserId,
    pub name: String,
    /// `online` or `offline`.
    pub state: String,
}

/// One member inside a `groups` entry (a JSON-encoded string in its `users`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: UserId,
    pub name: String,
    pub state: String,
    /// `creator` or `normal`.
    pub role: String,
}

/// One entry of the login ack's `groups` list (sent as a JSON-encoded string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub id: GroupId,
    pub groupname: String,
    #[serde(default)]
    pub groupdesc: String,
    /// JSON-encoded [`Member`]s.
    #[serde(default)]
    pub users: Vec<String>,
}

impl Group {
    /// The members that decode; others are skipped.
    pub fn members(&self) -> Vec<Member> {
        decoded(&self.users)
    }
}

fn entry<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default() // strings and integers always serialize
}

pub fn friend_entry(id: UserId, name: &str, online: bool) -> String {
    entry(&Friend { id, name: name.to_owned(), state: state(online).to_owned() })
}

pub fn member_entry(id: UserId, name: &str, online: bool, creator: bool) -> String {
    let role = if creator { "creator" } else { "normal" };
    entry(&Member { id, name: name.to_owned(), state: state(online).to_owned(), role: role.to_owned() })
}

pub fn group_entry(id: GroupId, groupname: &str, groupdesc: &str, users: &[String]) -> String {
    entry(&Group { id, groupname: groupname.to_owned(), groupdesc: groupdesc.to_owned(), users: users.to_vec() })
}

/// A server message as a client reads it, decoded defensively: a field that is missing or of
/// the wrong type is absent, a list entry that does not decode is skipped; nothing panics.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// msgid 2; `welcome` when the login succeeded.
    Login { answer: Answer, welcome: Option<Welcome> },
    /// msgid 5; the new id in `answer.id`.
    Register(Answer),
    /// msgid 11: the outcome of a request sent with `seq`, or an error without one.
    Ack(Answer),
    /// msgid 6 or 10, delivered live.
    Chat(ChatMessage<'static>),
    /// A message this client does not know: the protocol asks clients to ignore it.
    Other(Option<u64>),
}

/// The common fields of an answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    /// The request answered (msgid 11).
    pub req: Option<i64>,
    pub seq: Option<Value>,
    pub errno: Option<i64>,
    pub errmsg: String,
    pub id: Option<UserId>,
    pub groupid: Option<GroupId>,
    /// A chat's mid.
    pub mid: Option<u64>,
    /// A chat's `cid` had been accepted before.
    pub dup: bool,
    /// A history page, oldest first.
    pub messages: Vec<ChatMessage<'static>>,
    /// Older messages exist.
    pub more: bool,
}

impl Answer {
    pub fn ok(&self) -> bool {
        self.errno == Some(0)
    }
}

/// What a successful login carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Welcome {
    pub id: UserId,
    pub name: String,
    pub friends: Vec<Friend>,
    pub groups: Vec<Group>,
    /// Messages stored while the user was away, oldest first.
    pub offline: Vec<ChatMessage<'static>>,
    /// The session acknowledges deliveries (msgid 12); what waits follows the ack.
    pub acks: bool,
}

fn decoded<T: serde::de::DeserializeOwned>(entries: &[String]) -> Vec<T> {
    entries.iter().filter_map(|s| serde_json::from_str(s).ok()).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map_or_else(Vec::new, |a| a.iter().filter_map(|s| Some(s.as_str()?.to_owned())).collect())
}

/// Decodes one frame from the server; `None` if it is not a JSON object.
pub fn decode(frame: &[u8]) -> Option<Reply> {
    let v: Value = serde_json::from_slice(frame).ok()?;
    let object = v.as_object()?;
    let id = |key: &str| object.get(key).and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok());
    let answer = Answer {
        req: object.get("req").and_then(Value::as_i64),
        seq: object.get("seq").cloned(),
        errno: object.get("errno").and_then(Value::as_i64),
        errmsg: object.get("errmsg").and_then(Value::as_str).unwrap_or_default().to_owned(),
        id: id("id"),
        groupid: id("groupid"),
        mid: object.get("mid").and_then(Value::as_u64),
        dup: object.get("dup") == Some(&Value::Bool(true)),
        messages: object.get("messages").and_then(Value::as_array).map_or_else(Vec::new, |list| {
            list.iter().filter_map(|m| ChatMessage::decode(&m.to_string()).map(ChatMessage::into_owned)).collect()
        }),
        more: object.get("more") == Some(&Value::Bool(true)),
    };
    let code = object.get("msgid").and_then(Value::as_u64);
    Some(match code.and_then(MsgId::from_code) {
        Some(MsgId::LoginAck) => {
            let welcome = match (answer.ok(), answer.id) {
                (true, Some(id)) => Some(Welcome {
                    id,
                    name: object.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    friends: decoded(&strings(&v["friends"])),
                    groups: decoded(&strings(&v["groups"])),
                    offline: strings(&v["offlinemsg"])
                        .iter()
                        .filter_map(|m| ChatMessage::decode(m).map(ChatMessage::into_owned))
                        .collect(),
                    acks: object.get("acks") == Some(&Value::Bool(true)),
                }),
                _ => None,
            };
            Reply::Login { answer, welcome }
        }
        Some(MsgId::RegisterAck) => Reply::Register(answer),
        Some(MsgId::Ack) => Reply::Ack(answer),
        Some(MsgId::OneChat | MsgId::GroupChat) => {
            match std::str::from_utf8(frame).ok().and_then(ChatMessage::decode) {
                Some(m) => Reply::Chat(m.into_owned()),
                None => Reply::Other(code),
            }
        }
        _ => Reply::Other(code),
    })
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
    }
}
