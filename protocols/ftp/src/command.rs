//! Client command lines → [`Command`].
//!
//! Read first: RFC 959 §4.1 and §5.3 (command syntax), RFC 2428 (EPRT, EPSV),
//! RFC 1639 (LPRT, LPSV), RFC 2228 (AUTH and the protected-command verbs),
//! ATTACKS.md 10, 27–31.
//!
//! Input is one complete line from the framer (no line end). Only the verb
//! position counts (`RETR PORT 1,2,3,4,5,6` is a RETR).

use nom::branch::alt;
use nom::bytes::complete::{tag, take_while_m_n};
use nom::combinator::{eof, rest};
use nom::sequence::preceded;
use nom::{IResult, Parser};

use crate::addr::{AddrError, ExtAddr, HostPort};

/// The argument of EPSV.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpsvArg {
    /// `EPSV`
    Any,
    /// `EPSV 1` / `EPSV 2` (or another protocol number, for the server to refuse).
    Proto(u8),
    /// `EPSV ALL`: from now on only EPSV may set up data connections.
    All,
}

/// One parsed client command. Borrowed from the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `USER name`
    User(&'a [u8]),
    /// `PASS …`: deliberately carries nothing, so a password cannot be kept
    /// or logged.
    Pass,
    /// `PORT h1,h2,h3,h4,p1,p2`
    Port(HostPort),
    /// `EPRT |proto|addr|port|`
    Eprt(ExtAddr),
    /// `PASV`
    Pasv,
    /// `EPSV [proto|ALL]`
    Epsv(EpsvArg),
    /// `LPRT`/`LPSV` (RFC 1639): refused, never relayed.
    LongPassive,
    /// `AUTH mechanism` (RFC 2228, RFC 4217): `AUTH TLS` turns the control
    /// channel into TLS the gateway cannot parse.
    Auth(&'a [u8]),
    /// `ADAT`, `MIC`, `CONF`, `ENC` (RFC 2228): they carry commands the
    /// gateway cannot inspect.
    Security,
    /// `REIN`: resets the login.
    Rein,
    /// `ABOR`: interrupts the running transfer; forwarded as a Telnet Synch.
    Abor,
    /// A command that uses the data connection (RETR, STOR, STOU, APPE, LIST,
    /// NLST, MLSD).
    Transfer {
        /// The verb as sent.
        verb: &'a [u8],
        /// The argument (may be empty).
        arg: &'a [u8],
    },
    /// Any other well-formed command, relayed as is.
    Other {
        /// The verb as sent.
        verb: &'a [u8],
        /// The argument (may be empty).
        arg: &'a [u8],
    },
}

/// Why a command line was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// Not `verb[ SP arg]` with a 3–4 letter verb.
    Syntax,
    /// A PORT/EPRT argument that does not parse.
    Address(AddrError),
}

/// `verb [SP arg]`: the verb is 3 or 4 ASCII letters.
fn verb_and_arg(line: &[u8]) -> IResult<&[u8], (&[u8], &[u8])> {
    (take_while_m_n(3, 4, |b: u8| b.is_ascii_alphabetic()), alt((preceded(tag(&b" "[..]), rest), eof)))
        .parse(line)
}

/// Why a client line is not FTP at all (ATTACKS.md 10): the session ends
/// instead of answering it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Junk {
    /// An HTTP request line (`GET / HTTP/1.1`): a browser or a slipstreaming
    /// page talking to the FTP port.
    Http,
    /// A control byte (other than the line end) where FTP has text: a TLS
    /// ClientHello (`16 03 …`), an SSH or binary protocol.
    Binary,
    /// The line does not start with a 3–4 letter verb followed by a space or
    /// the line end (RFC 959 §5.3.1).
    NoVerb,
}

/// HTTP/1.x request methods (RFC 9110 §9, plus PATCH). FTP has none of them.
const HTTP_METHODS: [&[u8]; 9] =
    [b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT", b"PATCH"];

/// `METHOD SP target SP HTTP/d.d`: an HTTP request line, whatever the
/// case. Only HTTP methods count, so no FTP command whose argument happens
/// to end in `HTTP/1.1` is taken for one.
pub fn is_http_request_line(line: &[u8]) -> bool {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let version_ok = matches!(version, [h, t1, t2, p, b'/', major, b'.', minor]
        if [*h, *t1, *t2, *p].eq_ignore_ascii_case(b"HTTP") && major.is_ascii_digit() && minor.is_ascii_digit());
    !target.is_empty() && version_ok && HTTP_METHODS.iter().any(|m| m.eq_ignore_ascii_case(method))
}

/// Whether a complete line (framed, without its line end) is not FTP. Used
/// on the client's first line, where anything but a command ends the
/// session, and (HTTP only) on every line.
pub fn junk(line: &[u8]) -> Option<Junk> {
    if is_http_request_line(line) {
        return Some(Junk::Http);
    }
    if line.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Some(Junk::Binary);
    }
    if verb_and_arg(line).is_err() {
        return Some(Junk::NoVerb);
    }
    None
}

/// Whether the start of a first line still being received (decoded bytes,
/// no line end yet) can no longer become an FTP command: a TLS ClientHello
/// or a binary greeting is refused at once, not after `MAX_LINE` bytes or
/// the idle timeout.
pub fn junk_prefix(partial: &[u8]) -> Option<Junk> {
    let line = partial.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Some(Junk::Binary);
    }
    for (i, &b) in line.iter().take(5).enumerate() {
        match b {
            b if b.is_ascii_alphabetic() && i < 4 => {}
            b' ' if i >= 3 => return None,
            _ => return Some(Junk::NoVerb),
        }
    }
    None
}

/// Parse one command line.
pub fn parse_command(line: &[u8]) -> Result<Command<'_>, CommandError> {
    let (_, (verb, arg)) = verb_and_arg(line).map_err(|_| CommandError::Syntax)?;
    let mut upper = [0u8; 4];
    upper[..verb.len()].copy_from_slice(verb);
    upper.make_ascii_uppercase();
    let upper = &upper[..verb.len()];
    Ok(match upper {
        b"USER" => Command::User(arg),
        b"PASS" => Command::Pass,
        b"PORT" => Command::Port(HostPort::parse(arg).map_err(CommandError::Address)?),
        b"EPRT" => {
            let ext = ExtAddr::parse(arg).map_err(CommandError::Address)?;
            if ext.ip.is_none() {
                return Err(CommandError::Address(AddrError::Syntax));
            }
            Command::Eprt(ext)
        }
        b"PASV" => Command::Pasv,
        b"EPSV" => Command::Epsv(epsv_arg(arg)?),
        b"LPRT" | b"LPSV" => Command::LongPassive,
        b"AUTH" => Command::Auth(arg),
        b"ADAT" | b"MIC" | b"CONF" | b"ENC" => Command::Security,
        b"REIN" => Command::Rein,
        b"ABOR" => Command::Abor,
        b"RETR" | b"STOR" | b"STOU" | b"APPE" | b"LIST" | b"NLST" | b"MLSD" => {
            Command::Transfer { verb, arg }
        }
        _ => Command::Other { verb, arg },
    })
}

fn epsv_arg(arg: &[u8]) -> Result<EpsvArg, CommandError> {
    if arg.is_empty() {
        return Ok(EpsvArg::Any);
    }
    if arg.eq_ignore_ascii_case(b"ALL") {
        return Ok(EpsvArg::All);
    }
    match arg {
        [d @ b'0'..=b'9'] => Ok(EpsvArg::Proto(d - b'0')),
        _ => Err(CommandError::Syntax),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn command_verbs_case_insensitive() {
        assert_eq!(parse_command(b"user anna"), Ok(Command::User(b"anna")));
        assert_eq!(parse_command(b"PASS secret"), Ok(Command::Pass));
        assert_eq!(parse_command(b"pasv"), Ok(Command::Pasv));
        assert_eq!(parse_command(b"EPSV ALL"), Ok(Command::Epsv(EpsvArg::All)));
        assert_eq!(parse_command(b"EPSV 2"), Ok(Command::Epsv(EpsvArg::Proto(2))));
        assert_eq!(parse_command(b"auth TLS"), Ok(Command::Auth(b"TLS")));
        assert_eq!(parse_command(b"ADAT x"), Ok(Command::Security));
        assert_eq!(parse_command(b"LPSV"), Ok(Command::LongPassive));
        assert_eq!(parse_command(b"abor"), Ok(Command::Abor));
    }

    #[test]
    fn command_port_parsed_with_host() {
        assert_eq!(
            parse_command(b"PORT 192,0,2,10,156,64"),
            Ok(Command::Port(HostPort { ip: Ipv4Addr::new(192, 0, 2, 10), port: 40000 }))
        );
        assert_eq!(parse_command(b"PORT 192,0,2,10,156"), Err(CommandError::Address(AddrError::Syntax)));
        assert_eq!(parse_command(b"EPRT |3|x|1|"), Err(CommandError::Address(AddrError::Family)));
        assert_eq!(parse_command(b"EPRT |||1|"), Err(CommandError::Address(AddrError::Syntax)));
    }

    #[test]
    fn command_only_verb_position_counts() {
        assert_eq!(
            parse_command(b"RETR PORT 1,2,3,4,5,6"),
            Ok(Command::Transfer { verb: b"RETR", arg: b"PORT 1,2,3,4,5,6" })
        );
    }

    #[test]
    fn command_hostile_lines_are_syntax_errors() {
        for bad in [
            &b""[..],
            b" USER a",
            b"US",
            b"USERS a",
            b"RETR\tx",
            b"12 x",
            b"POST/ HTTP/1.1",
            b"\xff\xfe",
            b"EPSV x",
        ] {
            assert_eq!(parse_command(bad), Err(CommandError::Syntax), "{bad:?}");
        }
    }

    #[test]
    fn junk_http_request_lines_in_any_case() {
        for http in [
            &b"GET / HTTP/1.1"[..],
            b"POST /upload HTTP/1.0",
            b"get /index.html http/1.1",
            b"CONNECT ftp.example:21 HTTP/1.1",
            b"OPTIONS * HTTP/1.1",
        ] {
            assert!(is_http_request_line(http), "{http:?}");
            assert_eq!(junk(http), Some(Junk::Http), "{http:?}");
        }
    }

    #[test]
    fn junk_not_for_ftp_commands_that_mention_http() {
        for ftp in [
            &b"RETR / HTTP/1.1"[..],
            b"STOR a HTTP/1.1",
            b"USER anna",
            b"GET",
            b"GET /",
            b"GET / HTTP/1.1 x",
            b"GET / HTTP/x.1",
            b"NOOP",
            b"RETR caf\xc3\xa9.txt",
        ] {
            assert!(!is_http_request_line(ftp), "{ftp:?}");
        }
        assert_eq!(junk(b"USER anna"), None);
        assert_eq!(junk(b"RETR caf\xc3\xa9.txt"), None);
        assert_eq!(junk(b"EPSV x"), None, "a bad argument is a syntax error, not junk");
    }

    #[test]
    fn junk_binary_and_verbless_lines() {
        assert_eq!(junk(b"\x16\x03\x01\x02\x00"), Some(Junk::Binary));
        assert_eq!(junk(b"USER a\tb"), Some(Junk::Binary));
        assert_eq!(junk(b"SSH-2.0-OpenSSH_9.6"), Some(Junk::NoVerb));
        assert_eq!(junk(b"12 x"), Some(Junk::NoVerb));
        assert_eq!(junk(b""), Some(Junk::NoVerb));
        assert_eq!(junk(b"\xff\xfe"), Some(Junk::NoVerb));
    }

    #[test]
    fn junk_prefix_refuses_a_tls_hello_before_its_line_ends() {
        assert_eq!(junk_prefix(b"\x16\x03\x01\x00\xa5\x01"), Some(Junk::Binary));
        assert_eq!(junk_prefix(b"SSH-"), Some(Junk::NoVerb));
        assert_eq!(junk_prefix(b"USERS"), Some(Junk::NoVerb));
        assert_eq!(junk_prefix(b"1"), Some(Junk::NoVerb));
        // still possible FTP: wait for the line
        for ok in [&b""[..], b"U", b"USE", b"USER", b"USER ", b"USER an", b"PWD\r", b"GET / HTTP/1"] {
            assert_eq!(junk_prefix(ok), None, "{ok:?}");
        }
    }
}
