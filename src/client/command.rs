//! What a user types after logging in: the canonical client's `name:arg:arg` commands.

use crate::{GroupId, UserId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Chat {
        to: UserId,
        msg: String,
    },
    AddFriend {
        id: UserId,
    },
    CreateGroup {
        name: String,
        desc: String,
    },
    AddGroup {
        id: GroupId,
    },
    GroupChat {
        id: GroupId,
        msg: String,
    },
    /// The newest `limit` messages with a user.
    History {
        peer: UserId,
        limit: usize,
    },
    /// The newest `limit` messages of a group.
    GroupHistory {
        id: GroupId,
        limit: usize,
    },
    Loginout,
    Quit,
}

pub const HELP: &str = "\
help                               show this list
chat:friendid:message              send a message to a user
addfriend:friendid                 add a friend
creategroup:groupname:groupdesc    create a group
addgroup:groupid                   join a group
groupchat:groupid:message          send a message to a group
history:userid[:count]             show the last messages with a user (default 20)
ghistory:groupid[:count]           show the last messages of a group (default 20)
loginout                           log out
quit                               leave";

fn id(s: &str, what: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=i32::MAX as u32).contains(&n) => Ok(n),
        _ => Err(format!("{what} must be a positive number, not {s:?}")),
    }
}

/// Parses one line; `Err` is a hint for the user. Messages may themselves contain colons.
pub fn parse(line: &str) -> Result<Command, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (name, rest) = match line.split_once(':') {
        Some((name, rest)) => (name.trim(), Some(rest)),
        None => (line.trim(), None),
    };
    let usage = |u: &str| Err(format!("usage: {u}"));
    match (name, rest) {
        ("help", None) => Ok(Command::Help),
        ("loginout", None) => Ok(Command::Loginout),
        ("quit", None) => Ok(Command::Quit),
        ("chat", Some(rest)) => match rest.split_once(':') {
            Some((to, msg)) if !msg.is_empty() => Ok(Command::Chat { to: id(to, "friendid")?, msg: msg.to_owned() }),
            _ => usage("chat:friendid:message"),
        },
        ("addfriend", Some(rest)) => Ok(Command::AddFriend { id: id(rest, "friendid")? }),
        ("creategroup", Some(rest)) => match rest.split_once(':') {
            Some((name, desc)) if !name.is_empty() => {
                Ok(Command::CreateGroup { name: name.to_owned(), desc: desc.to_owned() })
            }
            None if !rest.is_empty() => Ok(Command::CreateGroup { name: rest.to_owned(), desc: String::new() }),
            _ => usage("creategroup:groupname:groupdesc"),
        },
        ("addgroup", Some(rest)) => Ok(Command::AddGroup { id: id(rest, "groupid")? }),
        ("groupchat", Some(rest)) => match rest.split_once(':') {
            Some((gid, msg)) if !msg.is_empty() => {
                Ok(Command::GroupChat { id: id(gid, "groupid")?, msg: msg.to_owned() })
            }
            _ => usage("groupchat:groupid:message"),
        },
        ("history" | "ghistory", Some(rest)) => {
            let (target, limit) = match rest.split_once(':') {
                Some((t, n)) => match n.trim().parse::<usize>() {
                    Ok(n) if (1..=200).contains(&n) => (t, n),
                    _ => return Err(format!("count must be 1 to 200, not {n:?}")),
                },
                None => (rest, 20),
            };
            match name {
                "history" => Ok(Command::History { peer: id(target, "userid")?, limit }),
                _ => Ok(Command::GroupHistory { id: id(target, "groupid")?, limit }),
            }
        }
        ("history", None) => usage("history:userid[:count]"),
        ("ghistory", None) => usage("ghistory:groupid[:count]"),
        ("chat", None) => usage("chat:friendid:message"),
        ("addfriend", None) => usage("addfriend:friendid"),
        ("creategroup", None) => usage("creategroup:groupname:groupdesc"),
        ("addgroup", None) => usage("addgroup:groupid"),
        ("groupchat", None) => usage("groupchat:groupid:message"),
        ("", None) => Err("type a command, or help".to_owned()),
        _ => Err(format!("unknown command {name:?}; type help for the list")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_commands() {
        assert_eq!(parse("chat:2:hi: there"), Ok(Command::Chat { to: 2, msg: "hi: there".into() }));
        assert_eq!(parse("addfriend:7"), Ok(Command::AddFriend { id: 7 }));
        assert_eq!(parse("creategroup:rust:a:b"), Ok(Command::CreateGroup { name: "rust".into(), desc: "a:b".into() }));
        assert_eq!(parse("creategroup:rust"), Ok(Command::CreateGroup { name: "rust".into(), desc: String::new() }));
        assert_eq!(parse("addgroup:3\r\n"), Ok(Command::AddGroup { id: 3 }));
        assert_eq!(parse("groupchat:3:yo"), Ok(Command::GroupChat { id: 3, msg: "yo".into() }));
        assert_eq!(parse("loginout"), Ok(Command::Loginout));
        assert_eq!(parse("help"), Ok(Command::Help));
    }

    #[test]
    fn mistakes_get_hints() {
        assert!(parse("chat:x:hi").unwrap_err().contains("friendid"));
        assert!(parse("chat:2").unwrap_err().starts_with("usage"));
        assert!(parse("chat:2:").unwrap_err().starts_with("usage"));
        assert!(parse("addfriend:0").is_err());
        assert!(parse("addfriend:99999999999").is_err());
        assert!(parse("creategroup::d").is_err());
        assert!(parse("dance").unwrap_err().contains("unknown command"));
        assert!(parse("").is_err());
    }

    #[test]
    fn history_commands() {
        assert_eq!(parse("history:2"), Ok(Command::History { peer: 2, limit: 20 }));
        assert_eq!(parse("ghistory:3:5"), Ok(Command::GroupHistory { id: 3, limit: 5 }));
        assert!(parse("history:2:0").is_err() && parse("history:x").is_err() && parse("ghistory").is_err());
    }
}
