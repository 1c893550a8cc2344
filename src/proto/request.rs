//! Requests, parsed once at the edge from one JSON value.
//!
//! Parsing is two-staged so errors come in the order PROTOCOL.md gives them: the envelope
//! (`msgid`, `seq`) first, so unknown ids are errno 5 whether logged in or not; the service then
//! checks the session (errno 3) before the body is parsed (errno 4 and 9).
//!
//! Chat messages, most of a busy node's requests, first try a fast path that parses the frame
//! straight into its fields without building a `Value` tree (the largest cost per message). It
//! takes only requests it can accept as they are; everything else, errors included, goes the
//! general way, so both paths give the same answers.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::message::Target;
use super::Errno;
use crate::{GroupId, UserId};

/// Message ids of PROTOCOL.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgId {
    Login = 1,
    LoginAck = 2,
    Logout = 3,
    Register = 4,
    RegisterAck = 5,
    OneChat = 6,
    AddFriend = 7,
    CreateGroup = 8,
    AddGroup = 9,
    GroupChat = 10,
    Ack = 11,
    /// The client acknowledges deliveries (version 2, acks sessions).
    Acknowledge = 12,
    History = 14,
}

impl MsgId {
    /// The ids a client may send.
    fn request(n: i64) -> Option<MsgId> {
        Some(match n {
            1 => MsgId::Login,
            3 => MsgId::Logout,
            4 => MsgId::Register,
            6 => MsgId::OneChat,
            7 => MsgId::AddFriend,
            8 => MsgId::CreateGroup,
            9 => MsgId::AddGroup,
            10 => MsgId::GroupChat,
            12 => MsgId::Acknowledge,
            14 => MsgId::History,
            _ => return None,
        })
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    /// Any id of the protocol, either direction.
    pub fn from_code(n: u64) -> Option<MsgId> {
        Some(match n {
            2 => MsgId::LoginAck,
            5 => MsgId::RegisterAck,
            11 => MsgId::Ack,
            n => return i64::try_from(n).ok().and_then(MsgId::request),
        })
    }
}

/// Appends a chat request as a client sends it, newline included, without building a
/// `Value`: the load generator's hot path. [`Request::to_json`] is the general encoder.
pub fn write_chat(out: &mut Vec<u8>, to: Target, msg: &str, seq: Option<u64>) {
    #[derive(serde::Serialize)]
    struct Wire<'a> {
        msgid: u8,
        #[serde(skip_serializing_if = "Option::is_none")]
        toid: Option<UserId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        groupid: Option<GroupId>,
        msg: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    }
    let (msgid, toid, groupid) = match to {
        Target::User(u) => (MsgId::OneChat, Some(u), None),
        Target::Group(g) => (MsgId::GroupChat, None, Some(g)),
    };
    // Integers and a string: serialization into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &Wire { msgid: msgid.code(), toid, groupid, msg, seq });
    out.push(b'\n');
}

/// One request, its fields checked for type and range.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Login {
        id: UserId,
        password: String,
        /// Acknowledged delivery for this session (version 2).
        acks: bool,
    },
    /// Acknowledges delivered messages of an acks session (version 2).
    Acknowledge {
        id: Option<UserId>,
        mids: Vec<u64>,
    },
    Logout {
        id: Option<UserId>,
    },
    Register {
        name: String,
        password: String,
    },
    OneChat {
        id: Option<UserId>,
        toid: UserId,
        msg: String,
        time: Option<String>,
        cid: Option<String>,
    },
    AddFriend {
        id: Option<UserId>,
        friendid: UserId,
    },
    CreateGroup {
        id: Option<UserId>,
        name: String,
        desc: String,
    },
    AddGroup {
        id: Option<UserId>,
        groupid: GroupId,
    },
    GroupChat {
        id: Option<UserId>,
        groupid: GroupId,
        msg: String,
        time: Option<String>,
        cid: Option<String>,
    },
    /// A page of a conversation's history, newest `limit` before `before`, oldest first.
    History {
        id: Option<UserId>,
        with: Target,
        before: Option<u64>,
        limit: usize,
    },
}

impl Request {
    /// The request as a client sends it (without `seq`): what [`parse_body`] reads back.
    /// Canonical clients also put the sender's `name` in a chat; the server ignores it.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| drop(m.insert(k.to_owned(), v));
        let msgid = match self {
            Request::Login { .. } => MsgId::Login,
            Request::Acknowledge { .. } => MsgId::Acknowledge,
            Request::Logout { .. } => MsgId::Logout,
            Request::Register { .. } => MsgId::Register,
            Request::OneChat { .. } => MsgId::OneChat,
            Request::AddFriend { .. } => MsgId::AddFriend,
            Request::CreateGroup { .. } => MsgId::CreateGroup,
            Request::AddGroup { .. } => MsgId::AddGroup,
            Request::GroupChat { .. } => MsgId::GroupChat,
            Request::History { .. } => MsgId::History,
        };
        put("msgid", msgid.code().into());
        if let Some(id) = self.claimed_id() {
            put("id", id.into());
        }
        match self {
            Request::Login { id, password, acks } => {
                put("id", (*id).into());
                put("password", password.as_str().into());
                if *acks {
                    put("acks", true.into());
                }
            }
            Request::Acknowledge { mids, .. } => put("mids", mids.clone().into()),
            Request::Register { name, password } => {
                put("name", name.as_str().into());
                put("password", password.as_str().into());
            }
            Request::Logout { .. } => {}
            Request::OneChat { toid, msg, time, cid, .. }
            | Request::GroupChat { groupid: toid, msg, time, cid, .. } => {
                let key = if msgid == MsgId::OneChat { "toid" } else { "groupid" };
                put(key, (*toid).into());
                put("msg", msg.as_str().into());
                if let Some(time) = time {
                    put("time", time.as_str().into());
                }
                if let Some(cid) = cid {
                    put("cid", cid.as_str().into());
                }
            }
            Request::History { with, before, limit, .. } => {
                match with {
                    Target::User(u) => put("peer", (*u).into()),
                    Target::Group(g) => put("groupid", (*g).into()),
                }
                if let Some(before) = before {
                    put("before", (*before).into());
                }
                put("limit", (*limit).into());
            }
            Request::AddFriend { friendid, .. } => put("friendid", (*friendid).into()),
            Request::CreateGroup { name, desc, .. } => {
                put("groupname", name.as_str().into());
                put("groupdesc", desc.as_str().into());
            }
            Request::AddGroup { groupid, .. } => put("groupid", (*groupid).into()),
        }
        Value::Object(m)
    }

    /// The `id` the client claims to be, for the identity check.
    pub fn claimed_id(&self) -> Option<UserId> {
        match *self {
            Request::Login { .. } | Request::Register { .. } => None,
            Request::Logout { id }
            | Request::OneChat { id, .. }
            | Request::AddFriend { id, .. }
            | Request::CreateGroup { id, .. }
            | Request::AddGroup { id, .. }
            | Request::GroupChat { id, .. }
            | Request::History { id, .. }
            | Request::Acknowledge { id, .. } => id,
        }
    }
}

/// A request that cannot be carried out, and what to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The request's msgid when it was readable (answers to 1 and 4 use their own ack ids).
    pub req: Option<i64>,
    pub seq: Option<Value>,
    pub errno: Errno,
    pub errmsg: String,
}

/// The first stage: a JSON object with a known msgid and a well-formed `seq`.
#[derive(Debug)]
pub struct Envelope {
    pub msgid: MsgId,
    pub seq: Option<Value>,
    pub fields: Map<String, Value>,
}

/// Limits that body parsing enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_msg: usize,
}

pub const MAX_NAME: usize = 50;
pub const MAX_PASSWORD: usize = 128;
pub const MAX_GROUP_DESC: usize = 200;
pub const MAX_TIME: usize = 64;
pub const MAX_SEQ: usize = 64;
pub const MAX_CID: usize = 64;
/// The largest `mid`: 2^53 - 1, exact in every JSON implementation.
pub const MAX_MID: u64 = (1 << 53) - 1;
pub const MAX_HISTORY_LIMIT: usize = 200;
pub const MAX_ACK_MIDS: usize = 1000;
pub const DEFAULT_HISTORY_LIMIT: usize = 50;

/// A body field that is wrong: errno and text for the reply.
pub type FieldError = (Errno, String);

fn bad(what: impl Into<String>) -> FieldError {
    (Errno::BadRequest, what.into())
}

/// One frame, parsed as far as the reactor can before the session is looked at.
#[derive(Debug)]
pub enum Parsed {
    /// A valid one-to-one or group chat message, from the fast path.
    Chat { msgid: MsgId, seq: Option<Value>, req: Request },
    /// Any other JSON value: for [`parse_envelope`] and [`parse_body`].
    General(Value),
    /// Valid JSON that cannot be a request: a number beyond what any field takes (`1e400`,
    /// an integer of 10,000 digits). Answered with errno 4; the stream is fine.
    Refused(Rejection),
}

impl Parsed {
    /// Whether it asks to send a chat message (valid or not).
    pub fn is_chat(&self) -> bool {
        match self {
            Parsed::Chat { .. } => true,
            Parsed::General(v) => matches!(v.get("msgid").and_then(Value::as_i64), Some(6 | 10)),
            Parsed::Refused(r) => matches!(r.req, Some(6 | 10)),
        }
    }
}

/// Parses one frame; an error means it is not JSON at all.
pub fn parse(frame: &[u8], limits: Limits) -> Result<Parsed, serde_json::Error> {
    match fast_chat(frame, limits) {
        Some((msgid, seq, req)) => Ok(Parsed::Chat { msgid, seq, req }),
        None => match serde_json::from_slice(frame) {
            Ok(value) => Ok(Parsed::General(value)),
            // UTF-8, and a scan that does not convert numbers accepts it: valid JSON, out of range.
            Err(_) if std::str::from_utf8(frame).is_ok_and(|t| serde_json::from_str::<IgnoredAny>(t).is_ok()) => {
                Ok(Parsed::Refused(out_of_range(frame)))
            }
            Err(e) => Err(e),
        },
    }
}

/// The answer to valid JSON holding a number out of range, with its msgid and `seq` when those
/// are readable.
fn out_of_range(frame: &[u8]) -> Rejection {
    #[derive(Deserialize)]
    struct Readable {
        #[serde(default)]
        msgid: Option<i64>,
        #[serde(default)]
        seq: Option<Value>,
    }
    let (req, seq) = serde_json::from_slice::<Readable>(frame).map_or((None, None), |r| (r.msgid, r.seq));
    let seq = seq.filter(|v| v.is_i64() || v.is_u64() || v.as_str().is_some_and(|s| s.len() <= MAX_SEQ));
    Rejection { req, seq, errno: Errno::BadRequest, errmsg: "bad request: a number is out of range".to_owned() }
}

/// A field that may be absent but, when present, must be a `T`: unlike `Option`, JSON `null`
/// is not taken for absent (the general path rejects it).
struct Present<T>(Option<T>);

impl<T> Default for Present<T> {
    fn default() -> Self {
        Present(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Present<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(|v| Present(Some(v)))
    }
}

/// The fields of a chat request (msgid 6 or 10); other keys are ignored, as the general path
/// ignores them. Duplicate keys fail here and are left to the general path.
#[derive(Deserialize)]
struct ChatFields<'a> {
    msgid: u8,
    #[serde(default)]
    seq: Present<Value>,
    #[serde(default)]
    id: Present<i64>,
    #[serde(default)]
    toid: Present<i64>,
    #[serde(default)]
    groupid: Present<i64>,
    #[serde(borrow)]
    msg: Cow<'a, str>,
    /// Borrowed only: a `time` with escapes takes the general path.
    #[serde(default, borrow)]
    time: Present<&'a str>,
    #[serde(default, borrow)]
    cid: Present<&'a str>,
}

/// The fast path: `Some` only for a chat request the general path would accept unchanged.
fn fast_chat(frame: &[u8], limits: Limits) -> Option<(MsgId, Option<Value>, Request)> {
    // Serde would also read a struct from a JSON array; the protocol wants objects.
    if frame.first() != Some(&b'{') {
        return None;
    }
    let f: ChatFields<'_> = serde_json::from_slice(frame).ok()?;
    let user = |v: Option<i64>| v.filter(|n| (1..=i64::from(i32::MAX)).contains(n)).map(|n| n as u32);
    let id = match f.id.0 {
        None => None,
        some => Some(user(some)?),
    };
    let seq = match f.seq.0 {
        None => None,
        Some(v @ Value::String(_)) if v.as_str().is_some_and(|s| s.len() <= MAX_SEQ) => Some(v),
        Some(v @ Value::Number(_)) if v.is_i64() || v.is_u64() => Some(v),
        Some(_) => return None,
    };
    if f.msg.len() > limits.max_msg
        || f.time.0.is_some_and(|t| t.len() > MAX_TIME)
        || f.cid.0.is_some_and(|c| !(1..=MAX_CID).contains(&c.len()))
    {
        return None;
    }
    let (msg, time, cid) = (f.msg.into_owned(), f.time.0.map(str::to_owned), f.cid.0.map(str::to_owned));
    match f.msgid {
        6 => Some((MsgId::OneChat, seq, Request::OneChat { id, toid: user(f.toid.0)?, msg, time, cid })),
        10 => Some((MsgId::GroupChat, seq, Request::GroupChat { id, groupid: user(f.groupid.0)?, msg, time, cid })),
        _ => None,
    }
}

pub fn parse_envelope(value: Value) -> Result<Envelope, Rejection> {
    let reject = |req, seq, errno: Errno, errmsg: &str| Rejection { req, seq, errno, errmsg: errmsg.to_owned() };
    let Value::Object(mut fields) = value else {
        return Err(reject(None, None, Errno::BadRequest, "bad request: not a JSON object"));
    };
    let msgid = match fields.get("msgid") {
        Some(Value::Number(n)) => match n.as_i64() {
            Some(msgid) => Some(msgid),
            // An integer, but beyond any msgid: unknown, as 99 is.
            None if n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0) => {
                return Err(reject(None, None, Errno::UnknownMsgId, Errno::UnknownMsgId.message()));
            }
            None => None,
        },
        _ => None,
    };
    let Some(msgid) = msgid else {
        return Err(reject(None, None, Errno::BadRequest, "bad request: msgid must be an integer"));
    };
    let seq = match fields.remove("seq") {
        None => None,
        Some(v @ Value::String(_)) if v.as_str().is_some_and(|s| s.len() <= MAX_SEQ) => Some(v),
        Some(v @ Value::Number(_)) if v.is_i64() || v.is_u64() => Some(v),
        Some(_) => {
            let errmsg = "bad request: seq must be an integer or a string of at most 64 bytes";
            return Err(reject(Some(msgid), None, Errno::BadRequest, errmsg));
        }
    };
    match MsgId::request(msgid) {
        Some(msgid) => Ok(Envelope { msgid, seq, fields }),
        None => Err(reject(Some(msgid), seq, Errno::UnknownMsgId, Errno::UnknownMsgId.message())),
    }
}

/// The second stage: the body of a request whose envelope was accepted.
pub fn parse_body(msgid: MsgId, mut f: Map<String, Value>, limits: Limits) -> Result<Request, FieldError> {
    Ok(match msgid {
        MsgId::Login => {
            // `events` and `presence` are checked, not served yet.
            flag(&f, "events")?;
            flag(&f, "presence")?;
            Request::Login { id: id(&f, "id")?, password: login_password(&mut f)?, acks: flag(&f, "acks")? }
        }
        MsgId::Acknowledge => Request::Acknowledge { id: opt_id(&f, "id")?, mids: mids(&f)? },
        MsgId::Register => Request::Register { name: user_name(&mut f)?, password: new_password(&mut f)? },
        MsgId::Logout => Request::Logout { id: opt_id(&f, "id")? },
        MsgId::OneChat => Request::OneChat {
            id: opt_id(&f, "id")?,
            toid: id(&f, "toid")?,
            msg: msg(&mut f, limits)?,
            time: time(&mut f)?,
            cid: cid(&mut f)?,
        },
        MsgId::AddFriend => Request::AddFriend { id: opt_id(&f, "id")?, friendid: id(&f, "friendid")? },
        MsgId::CreateGroup => Request::CreateGroup {
            id: opt_id(&f, "id")?,
            name: name(&mut f, "groupname")?,
            desc: match f.remove("groupdesc") {
                None => String::new(),
                Some(v) => text(v, "groupdesc", 0, MAX_GROUP_DESC)?,
            },
        },
        MsgId::AddGroup => Request::AddGroup { id: opt_id(&f, "id")?, groupid: id(&f, "groupid")? },
        MsgId::GroupChat => Request::GroupChat {
            id: opt_id(&f, "id")?,
            groupid: id(&f, "groupid")?,
            msg: msg(&mut f, limits)?,
            time: time(&mut f)?,
            cid: cid(&mut f)?,
        },
        MsgId::History => history(&mut f)?,
        MsgId::LoginAck | MsgId::RegisterAck | MsgId::Ack => return Err((Errno::UnknownMsgId, "unknown msgid".into())),
    })
}

fn opt_id(f: &Map<String, Value>, key: &str) -> Result<Option<u32>, FieldError> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if (1..=i64::from(i32::MAX)).contains(&n) => Ok(Some(n as u32)),
            _ => Err(bad(format!("bad request: {key} must be an integer in 1..2147483647"))),
        },
    }
}

fn id(f: &Map<String, Value>, key: &str) -> Result<u32, FieldError> {
    opt_id(f, key)?.ok_or_else(|| bad(format!("bad request: missing {key}")))
}

/// A required string field of `min..=max` bytes.
fn text(v: Value, key: &str, min: usize, max: usize) -> Result<String, FieldError> {
    match v {
        Value::String(s) if (min..=max).contains(&s.len()) => Ok(s),
        Value::String(_) => Err(bad(format!("bad request: {key} must be {min} to {max} bytes"))),
        _ => Err(bad(format!("bad request: {key} must be a string"))),
    }
}

fn required(f: &mut Map<String, Value>, key: &str) -> Result<Value, FieldError> {
    f.remove(key).ok_or_else(|| bad(format!("bad request: missing {key}")))
}

fn name(f: &mut Map<String, Value>, key: &str) -> Result<String, FieldError> {
    let s = text(required(f, key)?, key, 1, MAX_NAME)?;
    if s.chars().any(char::is_control) {
        return Err(bad(format!("bad request: {key} must not contain control characters")));
    }
    Ok(s)
}

/// A name or password: the wrong length or content is errno 1, as a taken name or a wrong
/// password is; a missing field or a wrong type stays errno 4.
fn credential(f: &mut Map<String, Value>, key: &str, max: usize) -> Result<String, FieldError> {
    let Value::String(s) = required(f, key)? else {
        return Err(bad(format!("bad request: {key} must be a string")));
    };
    if !(1..=max).contains(&s.len()) {
        return Err((Errno::Credentials, format!("{key} must be 1 to {max} bytes")));
    }
    if key != "password" && s.chars().any(char::is_control) {
        return Err((Errno::Credentials, format!("{key} must not contain control characters")));
    }
    Ok(s)
}

fn user_name(f: &mut Map<String, Value>) -> Result<String, FieldError> {
    credential(f, "name", MAX_NAME)
}

fn new_password(f: &mut Map<String, Value>) -> Result<String, FieldError> {
    credential(f, "password", MAX_PASSWORD)
}

/// Login's password: an empty or over-long one is answered as a wrong one, never saying why.
fn login_password(f: &mut Map<String, Value>) -> Result<String, FieldError> {
    credential(f, "password", MAX_PASSWORD).map_err(|(errno, errmsg)| match errno {
        Errno::Credentials => (errno, Errno::Credentials.message().to_owned()),
        _ => (errno, errmsg),
    })
}

fn msg(f: &mut Map<String, Value>, limits: Limits) -> Result<String, FieldError> {
    match required(f, "msg")? {
        Value::String(s) if s.len() > limits.max_msg => {
            Err((Errno::TooLarge, format!("too large: msg is over {} bytes", limits.max_msg)))
        }
        Value::String(s) => Ok(s),
        _ => Err(bad("bad request: msg must be a string")),
    }
}

fn time(f: &mut Map<String, Value>) -> Result<Option<String>, FieldError> {
    f.remove("time").map(|v| text(v, "time", 0, MAX_TIME)).transpose()
}

/// An optional boolean, false when absent.
fn flag(f: &Map<String, Value>, key: &str) -> Result<bool, FieldError> {
    match f.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(format!("bad request: {key} must be true or false"))),
    }
}

/// The mids of an acknowledgement: 1..=1000 of them.
fn mids(f: &Map<String, Value>) -> Result<Vec<u64>, FieldError> {
    let err = || bad(format!("bad request: mids must be a list of 1 to {MAX_ACK_MIDS} mids"));
    let list = f.get("mids").and_then(Value::as_array).ok_or_else(err)?;
    if !(1..=MAX_ACK_MIDS).contains(&list.len()) {
        return Err(err());
    }
    list.iter().map(|m| m.as_u64().filter(|m| (1..=MAX_MID).contains(m)).ok_or_else(err)).collect()
}

fn cid(f: &mut Map<String, Value>) -> Result<Option<String>, FieldError> {
    f.remove("cid").map(|v| text(v, "cid", 1, MAX_CID)).transpose()
}

fn history(f: &mut Map<String, Value>) -> Result<Request, FieldError> {
    let with = match (opt_id(f, "peer")?, opt_id(f, "groupid")?) {
        (Some(peer), None) => Target::User(peer),
        (None, Some(group)) => Target::Group(group),
        _ => return Err(bad("bad request: exactly one of peer and groupid")),
    };
    let before = match f.get("before") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(m) if (1..=MAX_MID).contains(&m) => Some(m),
            _ => return Err(bad("bad request: before must be a mid")),
        },
    };
    let limit = match f.get("limit") {
        None => DEFAULT_HISTORY_LIMIT,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_HISTORY_LIMIT as u64).contains(&n) => n as usize,
            _ => return Err(bad(format!("bad request: limit must be an integer in 1..={MAX_HISTORY_LIMIT}"))),
        },
    };
    Ok(Request::History { id: opt_id(f, "id")?, with, before, limit })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: Limits = Limits { max_msg: 16 };

    fn parse(v: Value) -> Result<Request, FieldError> {
        let env = parse_envelope(v).map_err(|r| (r.errno, r.errmsg))?;
        parse_body(env.msgid, env.fields, LIMITS)
    }

    /// What a client encodes, the server parses back unchanged.
    #[test]
    fn requests_round_trip() {
        let (msg, time) = ("hi \"there\"".to_owned(), Some("t".to_owned()));
        let requests = [
            Request::Login { id: 1, password: "pw".into(), acks: false },
            Request::Login { id: 1, password: "pw".into(), acks: true },
            Request::Acknowledge { id: None, mids: vec![3, 1, 2] },
            Request::Logout { id: Some(1) },
            Request::Logout { id: None },
            Request::Register { name: "alice".into(), password: "pw".into() },
            Request::OneChat { id: Some(1), toid: 2, msg: msg.clone(), time: time.clone(), cid: None },
            Request::OneChat { id: None, toid: 2, msg: "x".into(), time: None, cid: None },
            Request::AddFriend { id: Some(1), friendid: 2 },
            Request::CreateGroup { id: Some(1), name: "g".into(), desc: "d".into() },
            Request::AddGroup { id: None, groupid: 3 },
            Request::GroupChat { id: Some(1), groupid: 3, msg, time, cid: Some("c-1".into()) },
            Request::History { id: None, with: Target::User(2), before: Some(9001), limit: 2 },
            Request::History { id: Some(1), with: Target::Group(3), before: None, limit: 50 },
        ];
        for r in requests {
            assert_eq!(parse(r.to_json()).unwrap(), r);
        }
        let mut out = Vec::new();
        write_chat(&mut out, Target::Group(3), "a \"b\"", Some(9));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["seq"], 9);
        assert_eq!(
            parse(v).unwrap(),
            Request::GroupChat { id: None, groupid: 3, msg: "a \"b\"".into(), time: None, cid: None }
        );
    }

    #[test]
    fn canonical_requests_parse() {
        let chat = json!({"msgid":6,"id":1,"name":"a","toid":2,"msg":"hi","time":"t"});
        assert_eq!(
            parse(chat).unwrap(),
            Request::OneChat { id: Some(1), toid: 2, msg: "hi".into(), time: Some("t".into()), cid: None }
        );
        let group = json!({"msgid":8,"id":1,"groupname":"g","groupdesc":"d"});
        assert_eq!(parse(group).unwrap(), Request::CreateGroup { id: Some(1), name: "g".into(), desc: "d".into() });
    }

    /// The fast path and the general path agree on every frame, whichever takes it.
    #[test]
    fn the_fast_path_agrees_with_the_general_one() {
        let general = |frame: &str| {
            let value: Value = serde_json::from_str(frame).unwrap();
            let env = parse_envelope(value).map_err(|r| (r.errno, r.errmsg))?;
            parse_body(env.msgid, env.fields, LIMITS).map(|req| (env.msgid, env.seq, req))
        };
        let frames = [
            r#"{"msgid":6,"id":1,"name":"a","toid":2,"msg":"hi","time":"t"}"#,
            r#"{"msgid":6,"toid":2,"msg":"h\"i\u00e9","seq":"s"}"#,
            r#"{"msgid":10,"groupid":3,"msg":"hi","seq":7}"#,
            r#"{"msgid":10,"groupid":3,"msg":"hi","toid":"ignored"}"#,
            r#"{"msgid":10,"groupid":3,"msg":"hi","time":"a\tb"}"#,
            r#"{"msgid":6,"toid":2,"msg":"hi","seq":null}"#,
            r#"{"msgid":6,"toid":2,"msg":"hi","id":null}"#,
            r#"{"msgid":6,"toid":2,"msg":"hi","time":null}"#,
            r#"{"msgid":6,"toid":2,"msg":"hi","seq":1.5}"#,
            r#"{"msgid":6,"toid":2,"msg":"hi","seq":[1]}"#,
            r#"{"msgid":6,"toid":0,"msg":"hi"}"#,
            r#"{"msgid":6,"toid":2147483648,"msg":"hi"}"#,
            r#"{"msgid":6,"toid":2,"msg":"xxxxxxxxxxxxxxxxx"}"#,
            r#"{"msgid":6,"toid":2,"msg":"a","msg":"b"}"#,
            r#"{"msgid":6.0,"toid":2,"msg":"hi"}"#,
            r#"{"msgid":6,"groupid":2,"msg":"hi"}"#,
            r#"{"msgid":7,"friendid":2,"msg":"hi"}"#,
            r#"{"msgid":6,"toid":2,"msg":"hi","cid":"c-1"}"#,
            r#"{"msgid":6,"toid":2,"msg":"hi","cid":""}"#,
            r#"{"msgid":6,"toid":2,"msg":"hi","cid":7}"#,
            r#"{"msgid":6,"toid":2,"msg":"hi","cid":"c\u0001"}"#,
            r#"{"msgid":10,"groupid":2,"msg":"hi","cid":"ccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"}"#,
            r#"{"msgid":6,"toid":2,"id":3,"msg":"hi","time":"ttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttt"}"#,
        ];
        for frame in frames {
            let fast = fast_chat(frame.as_bytes(), LIMITS);
            match (fast, general(frame)) {
                (Some(fast), Ok(general)) => assert_eq!(fast, general, "{frame}"),
                (Some(fast), Err(e)) => panic!("{frame}: fast path took {fast:?}, general says {e:?}"),
                (None, _) => {}
            }
        }
        // The common shapes do take the fast path.
        assert!(fast_chat(frames[0].as_bytes(), LIMITS).is_some());
        assert!(fast_chat(frames[1].as_bytes(), LIMITS).is_some());
        assert!(fast_chat(frames[2].as_bytes(), LIMITS).is_some());
        // An array is not a request, whatever serde could make of it.
        assert!(fast_chat(br#"[6,null,null,2,null,"hi"]"#, LIMITS).is_none());
    }

    #[test]
    fn valid_json_with_a_number_out_of_range_is_refused_not_broken() {
        let huge = "9".repeat(10_000);
        let frames = [
            format!(r#"{{"msgid":7,"friendid":{huge},"seq":3}}"#),
            r#"{"msgid":7,"friendid":1e400,"seq":3}"#.to_owned(),
        ];
        for frame in &frames {
            let Ok(Parsed::Refused(r)) = super::parse(frame.as_bytes(), LIMITS) else {
                panic!("not refused: {frame:.40}")
            };
            assert_eq!((r.req, r.seq, r.errno), (Some(7), Some(json!(3)), Errno::BadRequest));
        }
        // With the msgid itself out of range there is nothing to echo.
        let Ok(Parsed::Refused(r)) = super::parse(br#"{"msgid":1e400,"seq":3}"#, LIMITS) else { panic!("not refused") };
        assert_eq!((r.req, r.seq), (None, None));
        assert!(super::parse(br#"{"msgid":1e400"#, LIMITS).is_err(), "not JSON at all");
        assert!(super::parse(b"{\"a\":\"\xff\"}", LIMITS).is_err(), "not UTF-8");
    }

    proptest::proptest! {
        // Most random objects miss the fast path; enough cases that many hit it.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// Random chat-shaped objects: whatever the fast path takes, the general path takes
        /// the same way.
        #[test]
        fn the_paths_agree_on_random_objects(
            fields in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["msgid", "seq", "id", "toid", "groupid", "msg", "time", "name"]),
                    proptest::sample::select(vec![
                        json!(null), json!(0), json!(1), json!(6), json!(10), json!(-3), json!(2.5),
                        json!(2147483647_i64), json!(2147483648_i64), json!(u64::MAX), json!("s"),
                        json!("a\"b"), json!("x".repeat(17)), json!("t".repeat(65)), json!([1]), json!({"a":1}),
                    ]),
                ),
                0..8,
            ),
            msgid in proptest::sample::select(vec![json!(6), json!(10), json!(7), json!("6")]),
        ) {
            let mut text = format!("{{\"msgid\":{msgid}");
            for (k, v) in &fields {
                text += &format!(",\"{k}\":{v}");
            }
            text.push('}');
            if let Some(fast) = fast_chat(text.as_bytes(), LIMITS) {
                let value: Value = serde_json::from_str(&text).unwrap();
                let env = parse_envelope(value).unwrap();
                let req = parse_body(env.msgid, env.fields, LIMITS).unwrap();
                proptest::prop_assert_eq!(fast, (env.msgid, env.seq, req));
            }
        }
    }

    #[test]
    fn errors_in_protocol_order() {
        let errno = |v| parse(v).unwrap_err().0;
        assert_eq!(errno(json!([1])), Errno::BadRequest);
        assert_eq!(errno(json!({"msgid":"6"})), Errno::BadRequest);
        assert_eq!(errno(json!({"msgid":99})), Errno::UnknownMsgId);
        assert_eq!(errno(json!({"msgid":u64::MAX})), Errno::UnknownMsgId);
        assert_eq!(errno(json!({"msgid":1e30})), Errno::UnknownMsgId);
        assert_eq!(errno(json!({"msgid":6.5})), Errno::BadRequest);
        assert_eq!(errno(json!({"msgid":2})), Errno::UnknownMsgId);
        assert_eq!(errno(json!({"msgid":6,"toid":"2","msg":"x"})), Errno::BadRequest);
        assert_eq!(errno(json!({"msgid":6,"toid":0,"msg":"x"})), Errno::BadRequest);
        assert_eq!(errno(json!({"msgid":6,"toid":2147483648_i64,"msg":"x"})), Errno::BadRequest);
        assert_eq!(errno(json!({"msgid":6,"toid":2,"msg":"x".repeat(17)})), Errno::TooLarge);
        assert_eq!(errno(json!({"msgid":6,"toid":2,"msg":"x","time":"t".repeat(65)})), Errno::BadRequest);
        assert_eq!(errno(json!({"msgid":4,"name":"a\nb","password":"p"})), Errno::Credentials);
        assert_eq!(errno(json!({"msgid":4,"name":"n".repeat(51),"password":"p"})), Errno::Credentials);
        assert_eq!(errno(json!({"msgid":4,"name":"n","password":""})), Errno::Credentials);
        assert_eq!(errno(json!({"msgid":4,"name":5,"password":"p"})), Errno::BadRequest);
        assert_eq!(errno(json!({"msgid":1,"id":1,"password":""})), Errno::Credentials);
        assert_eq!(
            parse(json!({"msgid":1,"id":1,"password":"p".repeat(129)})),
            Err((Errno::Credentials, "id or password is invalid!".to_owned()))
        );
        assert_eq!(errno(json!({"msgid":1,"id":1,"password":7})), Errno::BadRequest);
        assert_eq!(errno(json!({"msgid":7,"friendid":2,"seq":[1]})), Errno::BadRequest);
    }
}
