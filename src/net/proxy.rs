//! The PROXY protocol (versions 1 and 2, as HAProxy specifies them and nginx sends them): the
//! header a proxy puts before a client's bytes to say where the client connects from. A node
//! behind nginx then limits and logs by the client's address, not the proxy's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The binary header's first 12 bytes.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest text header, `\r\n` included.
const V1_MAX: usize = 107;
/// The longest binary header we accept (addresses of any family, plus extensions).
const V2_MAX: usize = 16 + 536;

/// What the start of a stream says.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Header {
    /// More bytes are needed.
    Incomplete,
    /// A header of `len` bytes; `client`: the address it names (`None`: the proxy's own
    /// connection, e.g. a health check, or an address family without one).
    Complete { len: usize, client: Option<IpAddr> },
    /// Not a PROXY header: the connection must be closed.
    Invalid,
}

pub(super) fn parse(data: &[u8]) -> Header {
    let v2_prefix = data.len().min(V2_SIGNATURE.len());
    if data[..v2_prefix] == V2_SIGNATURE[..v2_prefix] && !data.is_empty() {
        return parse_v2(data);
    }
    let v1_prefix = data.len().min(6);
    if data[..v1_prefix] == b"PROXY "[..v1_prefix] {
        return parse_v1(data);
    }
    Header::Invalid
}

fn parse_v1(data: &[u8]) -> Header {
    let Some(end) = data.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if data.len() >= V1_MAX { Header::Invalid } else { Header::Incomplete };
    };
    let len = end + 2;
    let Ok(line) = std::str::from_utf8(&data[..end]) else { return Header::Invalid };
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Header::Complete { len, client: None },
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let (Ok(src), Ok(_), Ok(_), Ok(_)) =
                (src.parse::<IpAddr>(), dst.parse::<IpAddr>(), sport.parse::<u16>(), dport.parse::<u16>())
            else {
                return Header::Invalid;
            };
            if src.is_ipv4() != (*family == "TCP4") {
                return Header::Invalid;
            }
            Header::Complete { len, client: Some(src) }
        }
        _ => Header::Invalid,
    }
}

fn parse_v2(data: &[u8]) -> Header {
    if data.len() < 16 {
        return Header::Incomplete;
    }
    let (version_command, family) = (data[12], data[13]);
    let body = u16::from_be_bytes([data[14], data[15]]) as usize;
    let len = 16 + body;
    if version_command >> 4 != 2 || len > V2_MAX {
        return Header::Invalid;
    }
    if data.len() < len {
        return Header::Incomplete;
    }
    let addresses = &data[16..len];
    let client = match (version_command & 0x0f, family) {
        (0, _) => None, // LOCAL: the proxy speaking for itself
        (1, 0x11 | 0x12) if addresses.len() >= 12 => {
            Some(IpAddr::V4(Ipv4Addr::new(addresses[0], addresses[1], addresses[2], addresses[3])))
        }
        (1, 0x21 | 0x22) if addresses.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addresses[..16]);
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        (1, 0x00 | 0x31 | 0x32) => None, // unspecified or a Unix socket: no address to use
        _ => return Header::Invalid,
    };
    Header::Complete { len, client }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_headers() {
        let h = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 6000\r\n{\"msgid\":1}";
        assert_eq!(parse(h), Header::Complete { len: 46, client: Some("192.0.2.7".parse().unwrap()) });
        let h6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert_eq!(parse(h6), Header::Complete { len: h6.len(), client: Some("2001:db8::1".parse().unwrap()) });
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Header::Complete { len: 15, client: None });
        assert_eq!(parse(b"PROXY TCP4 192.0.2.7 19"), Header::Incomplete);
        assert_eq!(parse(b"PRO"), Header::Incomplete);
        assert_eq!(parse(b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n"), Header::Invalid, "family mismatch");
        assert_eq!(parse(b"PROXY TCP4 999.0.0.1 192.0.2.1 1 2\r\n"), Header::Invalid);
        assert_eq!(parse(format!("PROXY {}", "x".repeat(200)).as_bytes()), Header::Invalid, "too long");
        assert_eq!(parse(b"{\"msgid\":1}\n"), Header::Invalid, "no header at all");
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Header::Invalid);
    }

    #[test]
    fn version_2_headers() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0, 12, 203, 0, 113, 9, 127, 0, 0, 1, 0xdc, 0x04, 0x17, 0x70]);
        assert_eq!(parse(&h), Header::Complete { len: 28, client: Some("203.0.113.9".parse().unwrap()) });
        assert_eq!(parse(&h[..20]), Header::Incomplete);
        assert_eq!(parse(&h[..5]), Header::Incomplete);
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local), Header::Complete { len: 16, client: None });
        let mut bad = h.clone();
        bad[12] = 0x31; // version 3
        assert_eq!(parse(&bad), Header::Invalid);
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&huge), Header::Invalid);
    }
}
