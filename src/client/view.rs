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
//! ok          SEQ COMMAND [GROUPID]    error  SEQ COMMAND ERRNO ERRMSG
//! usage       HINT                     loggedout    disconnected
//! ```

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Human,
    Script,
}

/// Formats events; every field is read defensively, as it came from the network.
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub style: Style,
}

fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Escapes a field of a script line.
fn field(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\t', "\\t").replace('\n', "\\n").replace('\r', "\\r")
}

fn line(fields: &[&str]) -> String {
    fields.iter().map(|f| field(f)).collect::<Vec<_>>().join("\t")
}

/// The login ack's lists hold JSON-encoded strings (the canonical quirk).
fn decoded_list(v: &Value, key: &str) -> Vec<Value> {
    v[key]
        .as_array()
        .map_or_else(Vec::new, |a| a.iter().filter_map(|s| serde_json::from_str(s.as_str()?).ok()).collect())
}

impl View {
    pub fn registered(&self, v: &Value) -> String {
        match self.style {
            Style::Human => format!("registered: your id is {}. Log in with it.", text(v, "id")),
            Style::Script => line(&["registered", &text(v, "id")]),
        }
    }

    pub fn failed(&self, what: &str, v: &Value) -> String {
        match self.style {
            Style::Human => format!("{what} failed: {} (errno {})", text(v, "errmsg"), text(v, "errno")),
            Style::Script => line(&[&format!("{what}-failed"), &text(v, "errno"), &text(v, "errmsg")]),
        }
    }

    /// Everything a successful login shows: who you are, friends, groups, what arrived meanwhile.
    pub fn logged_in(&self, v: &Value) -> Vec<String> {
        let friends = decoded_list(v, "friends");
        let groups = decoded_list(v, "groups");
        let offline = decoded_list(v, "offlinemsg");
        let mut out = Vec::new();
        match self.style {
            Style::Human => {
                out.push(format!("Welcome, {} (id {})!", text(v, "name"), text(v, "id")));
                out.push(format!("Friends ({}):", friends.len()));
                for f in &friends {
                    out.push(format!("  {:>6}  {}  [{}]", text(f, "id"), text(f, "name"), text(f, "state")));
                }
                out.push(format!("Groups ({}):", groups.len()));
                for g in &groups {
                    out.push(format!("  #{}  {} — {}", text(g, "id"), text(g, "groupname"), text(g, "groupdesc")));
                    for m in decoded_list(g, "users") {
                        out.push(format!(
                            "        {:>6}  {}  [{}] {}",
                            text(&m, "id"),
                            text(&m, "name"),
                            text(&m, "state"),
                            text(&m, "role")
                        ));
                    }
                }
                if !offline.is_empty() {
                    out.push(format!("While you were away ({}):", offline.len()));
                    out.extend(offline.iter().map(|m| format!("  {}", self.message(m, false))));
                }
                out.push("Type help for the commands.".to_owned());
            }
            Style::Script => {
                out.push(line(&["loggedin", &text(v, "id"), &text(v, "name")]));
                for f in &friends {
                    out.push(line(&["friend", &text(f, "id"), &text(f, "name"), &text(f, "state")]));
                }
                for g in &groups {
                    let gid = text(g, "id");
                    out.push(line(&["group", &gid, &text(g, "groupname"), &text(g, "groupdesc")]));
                    for m in decoded_list(g, "users") {
                        let fields = [&text(&m, "id"), &text(&m, "name"), &text(&m, "state"), &text(&m, "role")];
                        out.push(line(&["member", &gid, fields[0], fields[1], fields[2], fields[3]]));
                    }
                }
                out.extend(offline.iter().map(|m| self.message(m, false)));
            }
        }
        out
    }

    /// A chat message (msgid 6 or 10), delivered live or from the offline store.
    pub fn message(&self, m: &Value, live: bool) -> String {
        let group = m["msgid"] == 10;
        let (from, name, time, msg) = (text(m, "id"), text(m, "name"), text(m, "time"), text(m, "msg"));
        match self.style {
            Style::Human if group => format!("[{time}] group #{} | {name} ({from}): {msg}", text(m, "groupid")),
            Style::Human => format!("[{time}] {name} ({from}): {msg}"),
            Style::Script => {
                let kind = match (group, live) {
                    (true, true) => "groupchat",
                    (true, false) => "offline-groupchat",
                    (false, true) => "chat",
                    (false, false) => "offline-chat",
                };
                if group {
                    line(&[kind, &text(m, "groupid"), &from, &name, &time, &msg])
                } else {
                    line(&[kind, &from, &name, &time, &msg])
                }
            }
        }
    }

    /// The outcome of a command the client sent with `seq` (an `ACK_MSG`).
    pub fn outcome(&self, seq: &str, what: &str, ack: &Value) -> String {
        let ok = ack["errno"] == 0;
        let groupid = text(ack, "groupid");
        match (self.style, ok) {
            (Style::Human, true) if !groupid.is_empty() => format!("ok: {what}: group id {groupid}"),
            (Style::Human, true) => format!("ok: {what}"),
            (Style::Human, false) => format!("error: {what}: {} (errno {})", text(ack, "errmsg"), text(ack, "errno")),
            (Style::Script, true) if !groupid.is_empty() => line(&["ok", seq, what, &groupid]),
            (Style::Script, true) => line(&["ok", seq, what]),
            (Style::Script, false) => line(&["error", seq, what, &text(ack, "errno"), &text(ack, "errmsg")]),
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
    use serde_json::json;

    #[test]
    fn script_lines_escape_and_keep_one_event_per_line() {
        let v = View { style: Style::Script };
        let m = json!({"msgid":6,"id":2,"name":"bob","toid":1,"msg":"a\tb\nc","time":"t"});
        assert_eq!(v.message(&m, true), "chat\t2\tbob\tt\ta\\tb\\nc");
        let ack = json!({"msgid":2,"errno":0,"id":1,"name":"alice","friends":["{\"id\":2,\"name\":\"bob\",\"state\":\"online\"}"],
            "groups":["{\"id\":1,\"groupname\":\"g\",\"groupdesc\":\"d\",\"users\":[\"{\\\"id\\\":1,\\\"name\\\":\\\"alice\\\",\\\"state\\\":\\\"online\\\",\\\"role\\\":\\\"creator\\\"}\"]}"]});
        assert_eq!(
            v.logged_in(&ack),
            vec![
                "loggedin\t1\talice",
                "friend\t2\tbob\tonline",
                "group\t1\tg\td",
                "member\t1\t1\talice\tonline\tcreator"
            ]
        );
        assert_eq!(v.outcome("3", "creategroup", &json!({"errno":0,"groupid":4})), "ok\t3\tcreategroup\t4");
    }

    #[test]
    fn hostile_server_data_does_not_panic() {
        let v = View { style: Style::Human };
        for bad in [json!(null), json!([1]), json!({"friends":[1, "{", null], "groups":"x", "offlinemsg":[{}]})] {
            v.logged_in(&bad);
            v.message(&bad, true);
            v.outcome("1", "x", &bad);
        }
    }
}
