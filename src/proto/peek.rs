//! One number read out of a frame by a byte scan, without parsing it: for the load generator
//! and the bare relay baseline, whose point is to cost as little as possible per message. Never
//! for the server's decisions: a key inside a string value would fool it.

use memchr::memmem;

use super::MsgId;

/// The unsigned integer after `"key":`, where the key's quotes make `"id"` not match `"toid"`.
pub fn number(frame: &[u8], key: &str) -> Option<u64> {
    let mut at = 0;
    while let Some(found) = memmem::find(&frame[at..], key.as_bytes()) {
        let start = at + found;
        let after = start + key.len();
        let quoted = start > 0 && frame[start - 1] == b'"' && frame[after..].starts_with(b"\":");
        if quoted {
            let value = &frame[after + 2..];
            let digits = value.iter().take_while(|b| b.is_ascii_digit()).count();
            return std::str::from_utf8(&value[..digits]).ok()?.parse().ok();
        }
        at = after;
    }
    None
}

/// The frame's message id.
pub fn msgid(frame: &[u8]) -> Option<MsgId> {
    MsgId::from_code(number(frame, "msgid")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_their_quotes() {
        let frame = br#"{"msgid":6,"toid":42,"msg":"x","seq":7}"#;
        assert_eq!(msgid(frame), Some(MsgId::OneChat));
        assert_eq!(number(frame, "toid"), Some(42));
        assert_eq!(number(frame, "id"), None);
        assert_eq!(number(frame, "seq"), Some(7));
        assert_eq!(number(br#"{"msgid":99}"#, "msgid"), Some(99));
        assert_eq!(msgid(br#"{"msgid":99}"#), None);
    }
}
