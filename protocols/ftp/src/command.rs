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
    /// `AUTH`, `ADAT`, `MIC`, `CONF`, `ENC` (RFC 2228): they would make the
    /// channel unparseable or carry commands the gateway cannot inspect.
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
        b"AUTH" | b"ADAT" | b"MIC" | b"CONF" | b"ENC" => Command::Security,
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
        assert_eq!(parse_command(b"auth TLS"), Ok(Command::Security));
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
}
