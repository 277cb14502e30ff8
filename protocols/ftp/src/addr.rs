//! Data-connection addresses: `HostPort` (PORT, 227) and `ExtAddr` (EPRT,
//! 229), each a parse/write pair.
//!
//! Read first: RFC 959 §4.1.2 (host-port), RFC 1123 §4.1.2.6 (scan a 227 for
//! the first digit), RFC 2428 (EPRT/EPSV), ATTACKS.md 3, 4, 9.
//!
//! Unlike port-only parsers these keep the host, so the session can compare
//! it with the control connection's peer (bounce check, 227 sanity).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use nom::bytes::complete::{tag, take_while_m_n};
use nom::combinator::map_res;
use nom::{IResult, Parser};

/// Why an address argument was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrError {
    /// Not the expected grammar (fields, separators, signs, spaces, digits).
    Syntax,
    /// A number out of range (octet above 255, port above 65535).
    Range,
    /// Port 0.
    PortZero,
    /// EPRT network protocol other than 1 (IPv4) or 2 (IPv6).
    Family,
    /// EPRT address that does not parse for its family, or is scoped.
    Address,
}

/// `h1,h2,h3,h4,p1,p2`: an IPv4 address and a port (PORT, 227).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// The host.
    pub ip: Ipv4Addr,
    /// The port (never 0 when parsed).
    pub port: u16,
}

/// One decimal field of a host-port: 1 to 3 digits, at most 255.
fn byte_field(input: &[u8]) -> IResult<&[u8], u8> {
    map_res(take_while_m_n(1, 3, |b: u8| b.is_ascii_digit()), |d: &[u8]| {
        // At most three ASCII digits: the u16 cannot overflow.
        let n = d.iter().fold(0u16, |n, &b| n * 10 + u16::from(b - b'0'));
        u8::try_from(n)
    })
    .parse(input)
}

/// Six comma-separated fields; the rest of the input is returned.
fn six_fields(input: &[u8]) -> IResult<&[u8], [u8; 6]> {
    let (mut rest, first) = byte_field(input)?;
    let mut f = [first, 0, 0, 0, 0, 0];
    for slot in f.iter_mut().skip(1) {
        let (r, (_, n)) = (tag(&b","[..]), byte_field).parse(rest)?;
        *slot = n;
        rest = r;
    }
    Ok((rest, f))
}

/// Six numbers of at most 255, leading zeros allowed, separated by commas
/// with optional blanks around them (a 227's text, read leniently).
fn lenient_six_fields(input: &[u8]) -> Option<(&[u8], [u8; 6])> {
    let blanks = |s: &[u8]| s.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
    let mut rest = input;
    let mut f = [0u8; 6];
    for (i, slot) in f.iter_mut().enumerate() {
        if i > 0 {
            rest = &rest[blanks(rest)..];
            rest = rest.strip_prefix(b",")?;
            rest = &rest[blanks(rest)..];
        }
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        // Bounded: more digits than "000255" name no byte anyway.
        if digits == 0 || digits > 6 {
            return None;
        }
        let n = rest[..digits].iter().fold(0u32, |n, &b| n * 10 + u32::from(b - b'0'));
        *slot = u8::try_from(n).ok()?;
        rest = &rest[digits..];
    }
    Some((rest, f))
}

impl HostPort {
    /// Parse a PORT argument strictly: exactly six fields of 1–3 digits,
    /// each at most 255, no signs or whitespace, port not 0.
    pub fn parse(arg: &[u8]) -> Result<Self, AddrError> {
        match six_fields(arg) {
            Ok((b"", f)) => Self::from_fields(f),
            Ok(_) => Err(AddrError::Syntax),
            Err(_) if Self::has_big_number(arg) => Err(AddrError::Range),
            Err(_) => Err(AddrError::Syntax),
        }
    }

    /// Find the host-port in a 227 reply text (RFC 1123 §4.1.2.6: scan for
    /// the numbers; with or without parentheses; trailing text allowed).
    /// Leniently, as the most lenient client would (an sscanf("%d,%d,...")
    /// skips blanks and takes leading zeros): the address a client may
    /// connect to must be the one the gateway checks (ATTACKS.md 7). The
    /// first run of six numbers wins.
    pub fn parse_227(text: &[u8]) -> Option<Self> {
        (0..text.len())
            .filter(|&i| text[i].is_ascii_digit() && (i == 0 || !text[i - 1].is_ascii_digit()))
            .find_map(|i| {
                let (rest, f) = lenient_six_fields(&text[i..])?;
                if rest.first().is_some_and(u8::is_ascii_digit) {
                    return None;
                }
                Self::from_fields(f).ok()
            })
    }

    /// Whether a 227 text says its host-port plainly: six comma-separated
    /// fields of one to three digits, no blanks, and no other digit
    /// anywhere in the text. Only such a text is passed on as the server
    /// wrote it; any other is rewritten to the plain form, so that no
    /// client can read another address from it than the gateway did.
    pub fn is_plain_227(text: &[u8]) -> bool {
        let Some(start) = text.iter().position(u8::is_ascii_digit) else { return false };
        match six_fields(&text[start..]) {
            Ok((rest, f)) => Self::from_fields(f).is_ok() && !rest.iter().any(u8::is_ascii_digit),
            Err(_) => false,
        }
    }

    fn from_fields(f: [u8; 6]) -> Result<Self, AddrError> {
        let port = u16::from(f[4]) << 8 | u16::from(f[5]);
        if port == 0 {
            return Err(AddrError::PortZero);
        }
        Ok(Self { ip: Ipv4Addr::new(f[0], f[1], f[2], f[3]), port })
    }

    fn has_big_number(arg: &[u8]) -> bool {
        arg.split(|&b| b == b',').any(|f| {
            f.len() > 3 && f.iter().all(u8::is_ascii_digit)
                || f.len() == 3 && f.iter().all(u8::is_ascii_digit) && f > &b"255"[..]
        })
    }

    /// Append `h1,h2,h3,h4,p1,p2`.
    pub fn write(&self, out: &mut Vec<u8>) {
        let [a, b, c, d] = self.ip.octets();
        let [p1, p2] = self.port.to_be_bytes();
        out.extend_from_slice(format!("{a},{b},{c},{d},{p1},{p2}").as_bytes());
    }
}

/// `<d><proto><d><addr><d><port><d>` (RFC 2428). In EPRT the address is
/// present; in a 229 reply protocol and address are empty (`|||port|`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExtAddr {
    /// The host; `None` for the empty form of a 229 reply.
    pub ip: Option<IpAddr>,
    /// The port (never 0 when parsed).
    pub port: u16,
}

/// RFC 2428 allows any printable ASCII delimiter; a digit would make the
/// fields ambiguous (ATTACKS.md 4).
fn is_delimiter(b: u8) -> bool {
    (33..=126).contains(&b) && !b.is_ascii_digit()
}

fn port_field(input: &[u8]) -> IResult<&[u8], u32> {
    take_while_m_n(1, 5, |b: u8| b.is_ascii_digit())
        .map(|d: &[u8]| d.iter().fold(0u32, |n, &b| n * 10 + u32::from(b - b'0')))
        .parse(input)
}

impl ExtAddr {
    /// Parse an EPRT argument (or the inside of a 229's parentheses).
    /// The whole input must be used.
    pub fn parse(arg: &[u8]) -> Result<Self, AddrError> {
        let (&d, rest) = arg.split_first().ok_or(AddrError::Syntax)?;
        if !is_delimiter(d) {
            return Err(AddrError::Syntax);
        }
        let mut fields = rest.splitn(4, |&b| b == d);
        let (Some(proto), Some(host), Some(port), Some(tail)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(AddrError::Syntax);
        };
        if !tail.is_empty() {
            return Err(AddrError::Syntax);
        }
        let port = match port_field(port) {
            Ok((rest, _)) if !rest.is_empty() => return Err(AddrError::Syntax),
            Ok((_, n)) if n > 65535 => return Err(AddrError::Range),
            Ok((_, 0)) => return Err(AddrError::PortZero),
            Ok((_, n)) => n as u16,
            Err(_) => return Err(AddrError::Syntax),
        };
        let host_str = std::str::from_utf8(host).map_err(|_| AddrError::Address);
        let ip = match proto {
            b"" if host.is_empty() => None,
            b"1" => Some(IpAddr::V4(host_str?.parse::<Ipv4Addr>().map_err(|_| AddrError::Address)?)),
            b"2" => Some(IpAddr::V6(host_str?.parse::<Ipv6Addr>().map_err(|_| AddrError::Address)?)),
            b"" => return Err(AddrError::Syntax),
            p if p.iter().all(u8::is_ascii_digit) => return Err(AddrError::Family),
            _ => return Err(AddrError::Syntax),
        };
        Ok(Self { ip, port })
    }

    /// Find the port of a 229 reply text: `(<d><d><d>port<d>)`.
    pub fn parse_229(text: &[u8]) -> Option<u16> {
        let open = text.iter().position(|&b| b == b'(')?;
        let inner = &text[open + 1..];
        let close = inner.iter().position(|&b| b == b')')?;
        match Self::parse(&inner[..close]) {
            Ok(Self { ip: None, port }) => Some(port),
            _ => None,
        }
    }

    /// Append `|1|a.b.c.d|port|`, `|2|v6|port|` or `|||port|`.
    pub fn write(&self, out: &mut Vec<u8>) {
        let s = match self.ip {
            None => format!("|||{}|", self.port),
            Some(IpAddr::V4(ip)) => format!("|1|{ip}|{}|", self.port),
            Some(IpAddr::V6(ip)) => format!("|2|{ip}|{}|", self.port),
        };
        out.extend_from_slice(s.as_bytes());
    }
}

/// Compare addresses the way the bounce check needs: an IPv4-mapped IPv6
/// address is its IPv4 address (ATTACKS.md 4).
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_valid_parses() {
        assert_eq!(
            HostPort::parse(b"192,0,2,10,156,64"),
            Ok(HostPort { ip: Ipv4Addr::new(192, 0, 2, 10), port: 40000 })
        );
        assert_eq!(HostPort::parse(b"010,0,2,10,0,1").map(|h| h.port), Ok(1));
    }

    #[test]
    fn reply_227_read_as_leniently_as_any_client_plain_only_when_strict() {
        let third = Some(HostPort { ip: Ipv4Addr::new(203, 0, 113, 5), port: 25 });
        for text in [
            &b"Entering Passive Mode (203, 0, 113, 5, 0, 25)"[..],
            b"(203 ,0 ,113 ,5 ,0 ,25)",
            b"(0203,000,113,5,0,25)",
            b"Mode v2 (203,0,113,5,0,25)",
            b"(203,\t0,113,5,0,25) port 25",
        ] {
            assert_eq!(HostPort::parse_227(text), third, "{:?}", String::from_utf8_lossy(text));
            assert!(!HostPort::is_plain_227(text), "{:?}", String::from_utf8_lossy(text));
        }
        for plain in
            [&b"Entering Passive Mode (203,0,113,5,0,25)."[..], b"=203,0,113,5,0,25", b"203,0,113,5,0,25"]
        {
            assert_eq!(HostPort::parse_227(plain), third);
            assert!(HostPort::is_plain_227(plain), "{:?}", String::from_utf8_lossy(plain));
        }
        for none in [&b"(203,0,113,5,0,256)"[..], b"(203,0,113,5,0)", b"(1,2,3,4,5,0000006789)", b"(,,,,,)"] {
            assert_eq!(HostPort::parse_227(none), None, "{:?}", String::from_utf8_lossy(none));
        }
    }

    #[test]
    fn port_hostile_arguments_refused() {
        for bad in [
            &b"256,0,2,10,156,64"[..],
            b"192,0,2,10,156,64,1",
            b"192,0,2,10,156",
            b"+192,0,2,10,156,64",
            b"192,-0,2,10,156,64",
            b"192, 0,2,10,156,64",
            b"192,0,2,10,156,64 ",
            b"192,0,2,10,70000,1",
            b"192,0,2,10,0,0",
            b"192,0,2,10,,64",
            b"",
            b"1,2,3,4,5,99999999999999999999",
        ] {
            assert!(HostPort::parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(HostPort::parse(b"192,0,2,10,70000,1"), Err(AddrError::Range));
        assert_eq!(HostPort::parse(b"192,0,2,10,0,0"), Err(AddrError::PortZero));
    }

    #[test]
    fn reply_227_irregular_forms_parse() {
        let want = Some(HostPort { ip: Ipv4Addr::new(198, 51, 100, 10), port: 50000 });
        assert_eq!(HostPort::parse_227(b"Entering Passive Mode (198,51,100,10,195,80)."), want);
        assert_eq!(HostPort::parse_227(b"Entering Passive Mode 198,51,100,10,195,80"), want);
        assert_eq!(HostPort::parse_227(b"=198,51,100,10,195,80 ok"), want);
        assert_eq!(HostPort::parse_227(b"Logout."), None);
        assert_eq!(HostPort::parse_227(b"(198,51,100,10,195,800)"), None);
        assert_eq!(HostPort::parse_227(b"(198,51,100,10,195)"), None);
    }

    #[test]
    fn eprt_valid_and_any_delimiter() {
        assert_eq!(
            ExtAddr::parse(b"|1|192.0.2.10|40000|"),
            Ok(ExtAddr { ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))), port: 40000 })
        );
        assert_eq!(ExtAddr::parse(b"!2!::1!2000!").map(|e| e.port), Ok(2000));
        assert_eq!(ExtAddr::parse(b"|||6446|"), Ok(ExtAddr { ip: None, port: 6446 }));
    }

    #[test]
    fn eprt_hostile_arguments_refused() {
        assert_eq!(ExtAddr::parse(b"|3|192.0.2.10|40000|"), Err(AddrError::Family));
        assert_eq!(ExtAddr::parse(b"|2|fe80::1%eth0|40000|"), Err(AddrError::Address));
        assert_eq!(ExtAddr::parse(b"1|1|192.0.2.10|40000|"), Err(AddrError::Syntax));
        assert_eq!(ExtAddr::parse(b"\x01|1\x01192.0.2.10\x0140000\x01"), Err(AddrError::Syntax));
        assert_eq!(ExtAddr::parse(b"|1|192.0.2.10|40000"), Err(AddrError::Syntax));
        assert_eq!(ExtAddr::parse(b"|1|192.0.2.10|70000|"), Err(AddrError::Range));
        assert_eq!(ExtAddr::parse(b"|1|192.0.2.10|0|"), Err(AddrError::PortZero));
        assert_eq!(ExtAddr::parse(b"|1|192.0.2.10|+5|"), Err(AddrError::Syntax));
        assert_eq!(ExtAddr::parse(b"|1|192.0.2.300|5000|"), Err(AddrError::Address));
        assert_eq!(ExtAddr::parse(b""), Err(AddrError::Syntax));
    }

    #[test]
    fn reply_229_parses_port() {
        assert_eq!(ExtAddr::parse_229(b"Entering Extended Passive Mode (|||6446|)"), Some(6446));
        assert_eq!(ExtAddr::parse_229(b"Entering Extended Passive Mode (!!!6446!)."), Some(6446));
        assert_eq!(ExtAddr::parse_229(b"Entering Extended Passive Mode (|||6446)"), None);
        assert_eq!(ExtAddr::parse_229(b"no parens |||6446|"), None);
    }

    #[test]
    fn write_forms() {
        let mut out = Vec::new();
        HostPort { ip: Ipv4Addr::new(1, 2, 3, 4), port: 1025 }.write(&mut out);
        assert_eq!(out, b"1,2,3,4,4,1");
        out.clear();
        ExtAddr { ip: None, port: 21 }.write(&mut out);
        assert_eq!(out, b"|||21|");
    }

    #[test]
    fn canonical_ip_maps_v4_mapped() {
        let mapped: IpAddr = "::ffff:192.0.2.10".parse().unwrap();
        assert_eq!(canonical_ip(mapped), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)));
    }
}
