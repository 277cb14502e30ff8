//! Policy violations, each naming the side that broke the rules.
//!
//! A violation never reaches the shell as an `Err`: the session turns it into
//! a reply to the offending side (or a close) and an
//! [`AuditEvent::Refused`](crate::AuditEvent::Refused).

use std::net::IpAddr;

use crate::command::Junk;
use crate::Side;

/// Something a peer did that the gateway refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// A control line longer than [`MAX_LINE`](crate::line::MAX_LINE).
    LineTooLong {
        /// Who sent it.
        side: Side,
    },
    /// A NUL or a bare CR inside a line (ATTACKS.md 13).
    BadLineEnd {
        /// Who sent it.
        side: Side,
    },
    /// A client line that is not `verb[ SP arg]`.
    CommandSyntax,
    /// A PORT/EPRT argument that does not parse.
    AddressSyntax,
    /// EPRT with a network protocol other than 1 or 2.
    AddressFamily,
    /// PORT/EPRT naming a host other than the client (bounce, ATTACKS.md 1).
    PortAddressMismatch {
        /// What the client announced.
        announced: IpAddr,
        /// The control connection's client address.
        control_peer: IpAddr,
    },
    /// A data port below 1024 (ATTACKS.md 2 and 6).
    PrivilegedPort {
        /// Who announced it.
        side: Side,
    },
    /// A data command before login (ATTACKS.md 10).
    NotLoggedIn,
    /// PORT/PASV/EPRT after EPSV ALL (ATTACKS.md 28).
    EpsvAllInEffect,
    /// LPRT/LPSV (ATTACKS.md 29).
    LongAddressUnsupported,
    /// AUTH and other RFC 2228 commands (ATTACKS.md 27).
    SecurityRefused,
    /// A 227/229 announcing an address other than the control server's,
    /// refused by policy (ATTACKS.md 6 and 7).
    PassiveAddressMismatch,
    /// Data channels are at their cap and all are busy (ATTACKS.md 20).
    TooManyDataChannels,
    /// A server line that is not a reply (ATTACKS.md 18).
    ReplyMalformed,
    /// A multi-line reply over the line cap (ATTACKS.md 17).
    ReplyTooLong,
    /// Client bytes that are not FTP: an HTTP request line, binary, no
    /// command verb on the first line (ATTACKS.md 10).
    NotFtp(Junk),
    /// FTPS pass-through: bytes read past the AUTH exchange before the TLS
    /// handshake (the client did not wait for 234, or the server sent more
    /// after it). They were decoded as Telnet, so they cannot be relayed
    /// as they came.
    TlsPipelined {
        /// Who sent them.
        side: Side,
    },
}

impl Violation {
    /// Which side broke the rules.
    pub fn side(&self) -> Side {
        match *self {
            Self::LineTooLong { side }
            | Self::BadLineEnd { side }
            | Self::PrivilegedPort { side }
            | Self::TlsPipelined { side } => side,
            Self::PassiveAddressMismatch | Self::ReplyMalformed | Self::ReplyTooLong => Side::Server,
            // Too many channels: the client keeps asking for data connections.
            Self::TooManyDataChannels
            | Self::CommandSyntax
            | Self::AddressSyntax
            | Self::AddressFamily
            | Self::PortAddressMismatch { .. }
            | Self::NotLoggedIn
            | Self::EpsvAllInEffect
            | Self::LongAddressUnsupported
            | Self::SecurityRefused
            | Self::NotFtp(_) => Side::Client,
        }
    }

    /// A fixed text for logs (no peer-controlled bytes).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::LineTooLong { .. } => "line too long",
            Self::BadLineEnd { .. } => "NUL or bare CR in line",
            Self::CommandSyntax => "command syntax",
            Self::AddressSyntax => "data address syntax",
            Self::AddressFamily => "data address family",
            Self::PortAddressMismatch { .. } => "data address is not the client's",
            Self::PrivilegedPort { .. } => "privileged data port",
            Self::NotLoggedIn => "data command before login",
            Self::EpsvAllInEffect => "EPSV ALL in effect",
            Self::LongAddressUnsupported => "LPRT/LPSV unsupported",
            Self::SecurityRefused => "AUTH/RFC 2228 refused",
            Self::PassiveAddressMismatch => "passive address is not the server's",
            Self::TooManyDataChannels => "too many data channels",
            Self::ReplyMalformed => "malformed reply",
            Self::ReplyTooLong => "reply too long",
            Self::NotFtp(Junk::Http) => "not FTP: HTTP request",
            Self::NotFtp(Junk::Binary) => "not FTP: binary",
            Self::NotFtp(Junk::NoVerb) => "not FTP: no command verb",
            Self::TlsPipelined { .. } => "bytes before the TLS handshake",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violation_blames_the_right_side() {
        assert_eq!(Violation::ReplyTooLong.side(), Side::Server);
        assert_eq!(Violation::CommandSyntax.side(), Side::Client);
        assert_eq!(Violation::LineTooLong { side: Side::Server }.side(), Side::Server);
    }
}
