//! How the client shows what happens: for people (a terminal) or for scripts (tab-separated
//! lines, one event each, fields escaped so a message can never split a line).
//!
//! Script lines:
//! ```text
//! registered  ID                       register-failed  ERRNO  ERRMSG
//! loggedin    ID  NAME                 login-failed     ERRNO  ERRMSG
//! friend      ID  NAME  STATE          group   GID  NAME  DESC
//! member      GID ID  NAME  STATE  ROLE
//! chat        FROM NAME TIME MSG       groupchat  GID FROM NAME TIME MSG
//! offline-chat …  offline-groupchat …  (same fields, from the login ack)
//! history …  ghistory …  (same fields, one line per message of a history page, oldest first)
//! ok          SEQ COMMAND [GROUPID]    error  SEQ COMMAND ERRNO ERRMSG
//! usage       HINT                     loggedout    disconnected
//! ```

use crate::proto::message::{ChatMessage, Target};
use crate::proto::reply::{Answer, Welcome};

/// Where a shown message comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Live,
    Offline,
    History,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Human,
    Script,
}

/// Formats events decoded from the server.
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub style: Style,
}

/// Escapes a field of a script line.
fn field(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\t', "\\t").replace('\n', "\\n").replace('\r', "\\r")
}

fn line(fields: &[&str]) -> String {
    fields.iter().map(|f| field(f)).collect::<Vec<_>>().join("\t")
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

impl View {
    pub fn registered(&self, a: &Answer) -> String {
        match self.style {
            Style::Human => format!("registered: your id is {}. Log in with it.", opt(a.id)),
            Style::Script => line(&["registered", &opt(a.id)]),
        }
    }

    pub fn failed(&self, what: &str, a: &Answer) -> String {
        match self.style {
            Style::Human => format!("{what} failed: {} (errno {})", a.errmsg, opt(a.errno)),
            Style::Script => line(&[&format!("{what}-failed"), &opt(a.errno), &a.errmsg]),
        }
    }

    /// Everything a successful login shows: who you are, friends, groups, what arrived meanwhile.
    pub fn logged_in(&self, w: &Welcome) -> Vec<String> {
        let mut out = Vec::new();
        match self.style {
            Style::Human => {
                out.push(format!("Welcome, {} (id {})!", w.name, w.id));
                out.push(format!("Friends ({}):", w.friends.len()));
                for f in &w.friends {
                    out.push(format!("  {:>6}  {}  [{}]", f.id, f.name, f.state));
                }
                out.push(format!("Groups ({}):", w.groups.len()));
                for g in &w.groups {
                    out.push(format!("  #{}  {} — {}", g.id, g.groupname, g.groupdesc));
                    for m in g.members() {
                        out.push(format!("        {:>6}  {}  [{}] {}", m.id, m.name, m.state, m.role));
                    }
                }
                if !w.offline.is_empty() {
                    out.push(format!("While you were away ({}):", w.offline.len()));
                    out.extend(w.offline.iter().map(|m| format!("  {}", self.message(m, Seen::Offline))));
                }
                out.push("Type help for the commands.".to_owned());
            }
            Style::Script => {
                out.push(line(&["loggedin", &w.id.to_string(), &w.name]));
                for f in &w.friends {
                    out.push(line(&["friend", &f.id.to_string(), &f.name, &f.state]));
                }
                for g in &w.groups {
                    let gid = g.id.to_string();
                    out.push(line(&["group", &gid, &g.groupname, &g.groupdesc]));
                    for m in g.members() {
                        out.push(line(&["member", &gid, &m.id.to_string(), &m.name, &m.state, &m.role]));
                    }
                }
                out.extend(w.offline.iter().map(|m| self.message(m, Seen::Offline)));
            }
        }
        out
    }

    /// A chat message (msgid 6 or 10): delivered live, from the offline store, or a history
    /// entry.
    pub fn message(&self, m: &ChatMessage<'_>, from_where: Seen) -> String {
        let (from, name, time, msg) = (m.from.to_string(), &*m.name, &*m.time, &*m.msg);
        match (self.style, m.to) {
            (Style::Human, Target::Group(g)) => format!("[{time}] group #{g} | {name} ({from}): {msg}"),
            (Style::Human, Target::User(_)) => format!("[{time}] {name} ({from}): {msg}"),
            (Style::Script, Target::Group(g)) => {
                let kind = match from_where {
                    Seen::Live => "groupchat",
                    Seen::Offline => "offline-groupchat",
                    Seen::History => "ghistory",
                };
                line(&[kind, &g.to_string(), &from, name, time, msg])
            }
            (Style::Script, Target::User(_)) => {
                let kind = match from_where {
                    Seen::Live => "chat",
                    Seen::Offline => "offline-chat",
                    Seen::History => "history",
                };
                line(&[kind, &from, name, time, msg])
            }
        }
    }

    /// The outcome of a command the client sent with `seq` (an `ACK_MSG`).
    pub fn outcome(&self, seq: &str, what: &str, ack: &Answer) -> String {
        let groupid = opt(ack.groupid);
        let (errno, errmsg) = (opt(ack.errno), ack.errmsg.as_str());
        match (self.style, ack.ok()) {
            (Style::Human, true) if !groupid.is_empty() => format!("ok: {what}: group id {groupid}"),
            (Style::Human, true) => format!("ok: {what}"),
            (Style::Human, false) => format!("error: {what}: {errmsg} (errno {errno})"),
            (Style::Script, true) if !groupid.is_empty() => line(&["ok", seq, what, &groupid]),
            (Style::Script, true) => line(&["ok", seq, what]),
            (Style::Script, false) => line(&["error", seq, what, &errno, errmsg]),
        }
    }

    pub fn hint(&self, hint: &str) -> String {
        match self.style {
            Style::Human => hint.to_owned(),
            Style::Script => line(&["usage", hint]),
        }
    }

    pub fn event(&self, human: &str, script: &str) -> String {
        match self.style {
            Style::Human => human.to_owned(),
            Style::Script => script.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::reply::{decode, Reply};

    #[test]
    fn script_lines_escape_and_keep_one_event_per_line() {
        let v = View { style: Style::Script };
        let Some(Reply::Chat(m)) = decode(br#"{"msgid":6,"id":2,"name":"bob","toid":1,"msg":"a\tb\nc","time":"t"}"#)
        else {
            panic!("a chat message")
        };
        assert_eq!(v.message(&m, Seen::Live), "chat\t2\tbob\tt\ta\\tb\\nc");
        let ack = br#"{"msgid":2,"errno":0,"id":1,"name":"alice","friends":["{\"id\":2,\"name\":\"bob\",\"state\":\"online\"}"],
            "groups":["{\"id\":1,\"groupname\":\"g\",\"groupdesc\":\"d\",\"users\":[\"{\\\"id\\\":1,\\\"name\\\":\\\"alice\\\",\\\"state\\\":\\\"online\\\",\\\"role\\\":\\\"creator\\\"}\"]}"]}"#;
        let Some(Reply::Login { welcome: Some(w), .. }) = decode(ack) else { panic!("a login ack") };
        assert_eq!(
            v.logged_in(&w),
            vec![
                "loggedin\t1\talice",
                "friend\t2\tbob\tonline",
                "group\t1\tg\td",
                "member\t1\t1\talice\tonline\tcreator"
            ]
        );
        let Some(Reply::Ack(a)) = decode(br#"{"msgid":11,"errno":0,"groupid":4}"#) else { panic!("an ack") };
        assert_eq!(v.outcome("3", "creategroup", &a), "ok\t3\tcreategroup\t4");
    }

    #[test]
    fn hostile_server_data_decodes_to_what_is_readable() {
        let bad =
            br#"{"msgid":2,"errno":0,"id":1,"friends":[1,"{",null],"groups":"x","offlinemsg":[{}, "{\"msgid\":6}"]}"#;
        let Some(Reply::Login { welcome: Some(w), .. }) = decode(bad) else { panic!("a login ack") };
        assert_eq!((w.friends.len(), w.groups.len(), w.offline.len()), (0, 0, 0));
        for junk in [&b"null"[..], b"[1]", b"{\"msgid\":\"2\"}", b"{\"msgid\":6,\"id\":-1}"] {
            assert!(matches!(decode(junk), None | Some(Reply::Other(_))), "{}", String::from_utf8_lossy(junk));
        }
        let Some(Reply::Login { answer, welcome: None }) = decode(br#"{"msgid":2,"errno":"x"}"#) else { panic!() };
        assert_eq!(View { style: Style::Human }.failed("login", &answer), "login failed:  (errno )");
    }
}
