//! A chat message, one type for every form it takes: encoded once by the server and shared by
//! its recipients (newline included), stored offline (the same text without the newline),
//! carried inside a login ack's `offlinemsg`, and decoded again by clients.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::MsgId;
use crate::{GroupId, UserId};

/// Where a chat message goes: one user or one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    User(UserId),
    Group(GroupId),
}

/// A chat message as delivered (msgid 6 or 10). Borrows when encoding; owns what had escapes
/// when decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage<'a> {
    pub from: UserId,
    pub name: Cow<'a, str>,
    pub to: Target,
    pub msg: Cow<'a, str>,
    /// The sender's formatted time (or the server's, when the sender gave none).
    pub time: Cow<'a, str>,
    /// The server's receive time in Unix milliseconds; 0 when a canonical server left it out.
    pub ts: u64,
    /// The message's id in the cluster, once it is durable (every copy carries it).
    pub mid: Option<u64>,
    /// The sender's own id for the message, when it gave one.
    pub cid: Option<Cow<'a, str>>,
}

/// The field layout on the wire, `msgid` first as in the protocol's examples.
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    msgid: u8,
    id: UserId,
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    toid: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    groupid: Option<GroupId>,
    #[serde(borrow)]
    msg: Cow<'a, str>,
    #[serde(borrow, default)]
    time: Cow<'a, str>,
    #[serde(default)]
    ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mid: Option<u64>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    cid: Option<Cow<'a, str>>,
}

impl<'a> ChatMessage<'a> {
    fn wire(&self) -> Wire<'_> {
        let (msgid, toid, groupid) = match self.to {
            Target::User(u) => (MsgId::OneChat, Some(u), None),
            Target::Group(g) => (MsgId::GroupChat, None, Some(g)),
        };
        Wire {
            msgid: msgid.code(),
            id: self.from,
            name: Cow::Borrowed(&self.name),
            toid,
            groupid,
            msg: Cow::Borrowed(&self.msg),
            time: Cow::Borrowed(&self.time),
            ts: self.ts,
            mid: self.mid,
            cid: self.cid.as_deref().map(Cow::Borrowed),
        }
    }

    /// As a JSON object, for lists of messages (history pages).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self.wire()).unwrap_or_default() // strings and integers always serialize
    }

    /// The delivered form, newline included; the offline store keeps it without.
    pub fn encode(&self) -> Arc<str> {
        let wire = self.wire();
        // Sized for the message, escapes aside, so the encoding rarely reallocates.
        let mut out = Vec::with_capacity(self.msg.len() + self.name.len() + self.time.len() + 96);
        if serde_json::to_writer(&mut out, &wire).is_err() {
            out.clear(); // unreachable: strings and integers always serialize
        }
        out.push(b'\n');
        Arc::from(String::from_utf8(out).unwrap_or_default())
    }

    /// Reads any form back (delivered, stored, or an `offlinemsg` entry); `None` if it is not
    /// a chat message.
    pub fn decode(text: &'a str) -> Option<ChatMessage<'a>> {
        let w: Wire<'a> = serde_json::from_str(text.trim_end()).ok()?;
        let to = match (MsgId::from_code(w.msgid.into()), w.toid, w.groupid) {
            (Some(MsgId::OneChat), Some(u), _) => Target::User(u),
            (Some(MsgId::GroupChat), _, Some(g)) => Target::Group(g),
            _ => return None,
        };
        Some(ChatMessage { from: w.id, name: w.name, to, msg: w.msg, time: w.time, ts: w.ts, mid: w.mid, cid: w.cid })
    }

    /// The same message, owning its text.
    pub fn into_owned(self) -> ChatMessage<'static> {
        ChatMessage {
            from: self.from,
            name: Cow::Owned(self.name.into_owned()),
            to: self.to,
            msg: Cow::Owned(self.msg.into_owned()),
            time: Cow::Owned(self.time.into_owned()),
            ts: self.ts,
            mid: self.mid,
            cid: self.cid.map(|c| Cow::Owned(c.into_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_reads_back() {
        let m = ChatMessage {
            from: 2,
            name: "bob".into(),
            to: Target::User(1),
            msg: "a \"quoted\"\nline".into(),
            time: "t".into(),
            ts: 5,
            mid: Some(9001),
            cid: Some("c-1".into()),
        };
        let wire = m.encode();
        assert!(wire.starts_with("{\"msgid\":6,\"id\":2,\"name\":\"bob\",\"toid\":1,"));
        assert!(wire.ends_with("\"ts\":5,\"mid\":9001,\"cid\":\"c-1\"}\n"));
        assert_eq!(ChatMessage::decode(&wire), Some(m.clone()));
        let stored = wire.strip_suffix('\n').unwrap();
        assert_eq!(ChatMessage::decode(stored).map(ChatMessage::into_owned), Some(m.clone()));
        let group = ChatMessage { to: Target::Group(3), msg: "".into(), ..m.clone() };
        assert_eq!(ChatMessage::decode(&group.encode()), Some(group));
    }

    #[test]
    fn what_is_not_a_chat_message_is_none() {
        for bad in [
            "",
            "[]",
            "{\"msgid\":6,\"id\":1,\"msg\":\"x\"}",
            "{\"msgid\":11,\"errno\":0}",
            "{\"msgid\":10,\"id\":\"x\"}",
        ] {
            assert_eq!(ChatMessage::decode(bad), None, "{bad}");
        }
        // A canonical server's message without `ts` still reads.
        let canonical = r#"{"msgid":6,"id":2,"name":"bob","toid":1,"msg":"hi","time":"t"}"#;
        assert_eq!(ChatMessage::decode(canonical).map(|m| m.ts), Some(0));
    }
}
