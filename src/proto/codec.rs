//! Incremental framing of the client → server byte stream.
//!
//! Requests are JSON values separated by any run of whitespace or NUL bytes, or by nothing at all.
//! The decoder does not parse JSON; it only finds where one value ends, tracking string and
//! nesting state, and remembers how far it has scanned so a frame that trickles in one byte at a
//! time costs O(n) in total. `serde_json` then parses exactly the bytes of one frame.

/// Deepest nesting accepted; deeper input is an attack, not a chat message.
pub const MAX_DEPTH: u32 = 64;

/// Why a byte stream cannot be framed. Each one closes the connection: a byte stream cannot be
/// resynchronised safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame larger than the limit")]
    TooLarge,
    #[error("nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("bytes that are not JSON")]
    Garbage,
}

/// What `Decoder::decode` found in the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// `buf[start..end]` is one complete value; the caller consumes `buf[..end]`.
    Frame { start: usize, end: usize },
    /// No complete value yet. The caller may drop `buf[..discard]` (separators already skipped)
    /// and must call again with the rest followed by more bytes.
    Need { discard: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Between values: skipping separators.
    Between,
    /// Inside an object or array.
    Nested,
    /// A top-level string.
    Text,
    /// A top-level number or literal; it ends at the next separator or structural byte.
    Bare,
}

/// Scanner state for one connection. Reset after each frame.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_frame: usize,
    kind: Kind,
    /// Bytes of the current buffer already scanned.
    pos: usize,
    /// Where the current value starts.
    start: usize,
    depth: u32,
    in_string: bool,
    escaped: bool,
}

fn is_separator(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0)
}

impl Decoder {
    pub fn new(max_frame: usize) -> Decoder {
        Decoder { max_frame, kind: Kind::Between, pos: 0, start: 0, depth: 0, in_string: false, escaped: false }
    }

    /// A new cap for frames; the frame being scanned counts against it too.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Scans `buf`, which must begin with the bytes given to the previous call minus what that call
    /// let the caller consume or discard.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Decoded, FrameError> {
        while self.pos < buf.len() {
            let b = buf[self.pos];
            match self.kind {
                Kind::Between => {
                    if !is_separator(b) {
                        self.start = self.pos;
                        self.kind = match b {
                            b'{' | b'[' => {
                                self.depth = 1;
                                Kind::Nested
                            }
                            b'"' => {
                                self.in_string = true;
                                Kind::Text
                            }
                            b'}' | b']' => return Err(FrameError::Garbage),
                            _ => Kind::Bare,
                        };
                    }
                }
                Kind::Bare => {
                    if is_separator(b) || matches!(b, b'{' | b'[' | b'"' | b'}' | b']') {
                        return Ok(self.finish(self.pos));
                    }
                }
                Kind::Nested | Kind::Text => {
                    if self.in_string {
                        if self.escaped {
                            self.escaped = false;
                        } else if b == b'\\' {
                            self.escaped = true;
                        } else if b == b'"' {
                            self.in_string = false;
                            if self.kind == Kind::Text {
                                return Ok(self.finish(self.pos + 1));
                            }
                        }
                    } else {
                        match b {
                            b'"' => self.in_string = true,
                            b'{' | b'[' => {
                                self.depth += 1;
                                if self.depth > MAX_DEPTH {
                                    return Err(FrameError::TooDeep);
                                }
                            }
                            b'}' | b']' => {
                                self.depth -= 1;
                                if self.depth == 0 {
                                    return Ok(self.finish(self.pos + 1));
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            self.pos += 1;
            if self.kind != Kind::Between && self.pos - self.start > self.max_frame {
                return Err(FrameError::TooLarge);
            }
        }
        // Out of bytes: everything before the current value is separators.
        let discard = if self.kind == Kind::Between { self.pos } else { self.start };
        self.pos -= discard;
        self.start -= discard.min(self.start);
        Ok(Decoded::Need { discard })
    }

    fn finish(&mut self, end: usize) -> Decoded {
        let start = self.start;
        *self = Decoder::new(self.max_frame);
        Decoded::Frame { start, end }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in chunks of `step` bytes, the way a reactor would, and returns the frames.
    fn frames(input: &[u8], step: usize, max: usize) -> Result<Vec<String>, FrameError> {
        let mut dec = Decoder::new(max);
        let mut pending: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        for chunk in input.chunks(step) {
            pending.extend_from_slice(chunk);
            loop {
                match dec.decode(&pending)? {
                    Decoded::Frame { start, end } => {
                        out.push(String::from_utf8_lossy(&pending[start..end]).into_owned());
                        pending.drain(..end);
                    }
                    Decoded::Need { discard } => {
                        pending.drain(..discard);
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    #[test]
    fn all_separators_and_none() {
        let input = b"{\"a\":1}\0{\"b\":\"}\\\"{\"}\n\r\n {\"c\":[1,{}]}{\"d\":2}\t";
        let want = vec![r#"{"a":1}"#, r#"{"b":"}\"{"}"#, r#"{"c":[1,{}]}"#, r#"{"d":2}"#];
        for step in [1, 2, 3, 7, input.len()] {
            assert_eq!(frames(input, step, 1024).unwrap(), want, "step {step}");
        }
    }

    #[test]
    fn scalars_are_frames_too() {
        assert_eq!(frames(b"42 \"x y\" true\n", 1, 64).unwrap(), vec!["42", "\"x y\"", "true"]);
    }

    #[test]
    fn separators_are_discarded_not_buffered() {
        let mut dec = Decoder::new(16);
        assert_eq!(dec.decode(&[b'\n'; 1000]).unwrap(), Decoded::Need { discard: 1000 });
        assert_eq!(dec.decode(b"  {\"a\"").unwrap(), Decoded::Need { discard: 2 });
        assert_eq!(dec.decode(b"{\"a\":1}").unwrap(), Decoded::Frame { start: 0, end: 7 });
    }

    #[test]
    fn limits() {
        assert_eq!(frames(&[b'['; 65], 5, 1 << 20), Err(FrameError::TooDeep));
        assert!(frames(&[b'['; 64], 5, 1 << 20).unwrap().is_empty());
        let big = format!("{{\"m\":\"{}\"}}", "x".repeat(100));
        assert_eq!(frames(big.as_bytes(), 9, 50), Err(FrameError::TooLarge));
        assert_eq!(frames(big.as_bytes(), 9, big.len()).unwrap().len(), 1);
        assert_eq!(frames(b"}", 1, 50), Err(FrameError::Garbage));
    }
}
