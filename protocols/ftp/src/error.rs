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

    /// A stable short name of the rule that refused it, for audit records
    /// and whatever filters them: it never changes once released, while
    /// [`reason`](Self::reason) is prose and may be reworded.
    pub fn rule(&self) -> &'static str {
        match self {
            Self::LineTooLong { .. } => "line-too-long",
            Self::BadLineEnd { .. } => "bad-line-end",
            Self::CommandSyntax => "command-syntax",
            Self::AddressSyntax => "address-syntax",
            Self::AddressFamily => "address-family",
            Self::PortAddressMismatch { .. } => "bounce",
            Self::PrivilegedPort { .. } => "privileged-port",
            Self::NotLoggedIn => "login-first",
            Self::EpsvAllInEffect => "epsv-all",
            Self::LongAddressUnsupported => "lprt-lpsv",
            Self::SecurityRefused => "auth-tls",
            Self::PassiveAddressMismatch => "passive-address",
            Self::TooManyDataChannels => "data-channel-cap",
            Self::ReplyMalformed => "reply-malformed",
            Self::ReplyTooLong => "reply-too-long",
            // One rule for every kind of junk; `reason` says which.
            Self::NotFtp(_) => "not-ftp",
            Self::TlsPipelined { .. } => "tls-pipelined",
        }
    }

    /// The case of ATTACKS.md this refusal answers, where there is one.
    pub fn attack(&self) -> Option<u8> {
        Some(match *self {
            Self::PortAddressMismatch { .. } => 1,
            // A client's privileged port is case 2; a server announcing one
            // in a 227/229 aims at the listener hijack of case 6.
            Self::PrivilegedPort { side: Side::Client } => 2,
            Self::PrivilegedPort { side: Side::Server } => 6,
            Self::AddressSyntax => 3,
            Self::AddressFamily => 4,
            Self::PassiveAddressMismatch => 7,
            // A data command before login, or a line that is no command:
            // the slipstreaming defences of case 10.
            // A first line that is no FTP at all closes the session (case 10).
            Self::NotLoggedIn | Self::CommandSyntax | Self::NotFtp(_) => 10,
            Self::LineTooLong { .. } => 12,
            Self::BadLineEnd { .. } => 13,
            Self::ReplyTooLong => 17,
            Self::ReplyMalformed => 18,
            Self::TooManyDataChannels => 20,
            // AUTH refused, or a TLS pass-through that cannot start clean.
            Self::SecurityRefused | Self::TlsPipelined { .. } => 27,
            Self::EpsvAllInEffect => 28,
            Self::LongAddressUnsupported => 29,
        })
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
    fn rule_names_are_stable_and_distinct() {
        let all = [
            Violation::LineTooLong { side: Side::Client },
            Violation::BadLineEnd { side: Side::Server },
            Violation::CommandSyntax,
            Violation::AddressSyntax,
            Violation::AddressFamily,
            Violation::PortAddressMismatch {
                announced: IpAddr::from([203, 0, 113, 5]),
                control_peer: IpAddr::from([192, 0, 2, 10]),
            },
            Violation::PrivilegedPort { side: Side::Client },
            Violation::NotLoggedIn,
            Violation::EpsvAllInEffect,
            Violation::LongAddressUnsupported,
            Violation::SecurityRefused,
            Violation::PassiveAddressMismatch,
            Violation::TooManyDataChannels,
            Violation::ReplyMalformed,
            Violation::ReplyTooLong,
            Violation::NotFtp(Junk::Http),
            Violation::TlsPipelined { side: Side::Client },
        ];
        let mut names: Vec<&str> = all.iter().map(Violation::rule).collect();
        assert!(names.iter().all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')), "{names:?}");
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len(), "two violations share a rule name");
        assert_eq!(all[5].rule(), "bounce");
        assert_eq!(all[5].attack(), Some(1));
    }

    #[test]
    fn privileged_port_case_depends_on_who_announced_it() {
        assert_eq!(Violation::PrivilegedPort { side: Side::Client }.attack(), Some(2));
        assert_eq!(Violation::PrivilegedPort { side: Side::Server }.attack(), Some(6));
    }

    #[test]
    fn violation_blames_the_right_side() {
        assert_eq!(Violation::ReplyTooLong.side(), Side::Server);
        assert_eq!(Violation::CommandSyntax.side(), Side::Client);
        assert_eq!(Violation::LineTooLong { side: Side::Server }.side(), Side::Server);
    }
}
