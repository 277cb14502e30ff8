//! Typed records the shell must log. The core never logs; it emits these.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::{DataId, Side};

/// Which way a data channel is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataMode {
    /// PASV/EPSV: the client connects toward the server.
    Passive,
    /// PORT/EPRT: the server connects toward the client.
    Active,
}

/// How a transfer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferResult {
    /// Data relayed and the server's final reply was 2xx.
    Ok,
    /// The server's final reply was 4xx/5xx, or the data channel failed.
    Failed,
    /// The session ended before the transfer finished.
    Aborted,
}

/// One event worth a log record. `#[non_exhaustive]`: the core grows.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditEvent {
    /// The server accepted a login (230).
    LoggedIn {
        /// The name given with USER (never the password).
        user: String,
    },
    /// A data listener was asked for.
    DataOpened {
        /// The data channel.
        data: DataId,
        /// Passive or active.
        mode: DataMode,
        /// Where the gateway listens.
        local: SocketAddr,
        /// The only peer address it will accept.
        accept_from: IpAddr,
    },
    /// A connection to a data listener came from the wrong address (port theft).
    DataPeerRefused {
        /// The data channel.
        data: DataId,
        /// Who connected.
        peer: SocketAddr,
        /// Who was expected.
        expected: IpAddr,
    },
    /// A reply was rewritten because the announced port could not be bound,
    /// or the announced address was not the control server's.
    ReplyRewritten {
        /// The data channel.
        data: DataId,
        /// What the server announced.
        announced: SocketAddr,
        /// What the client was told.
        local: SocketAddr,
    },
    /// A command or reply was refused by the gateway.
    Refused {
        /// Which side broke the rules.
        side: Side,
        /// Fixed reason text (no peer-controlled bytes).
        reason: &'static str,
        /// The offending verb or code, printable and truncated.
        what: String,
    },
    /// One data transfer ended.
    Transfer {
        /// The data channel.
        data: DataId,
        /// Passive or active.
        mode: DataMode,
        /// The logged-in user, if any.
        user: Option<String>,
        /// The transfer command line (verb and argument, printable, truncated).
        command: String,
        /// Bytes relayed toward the client.
        to_client: u64,
        /// Bytes relayed toward the server.
        to_server: u64,
        /// From data channel set-up to its end.
        duration: Duration,
        /// The final reply code, if one arrived.
        reply: Option<u16>,
        /// Outcome.
        result: TransferResult,
    },
    /// The session ended.
    SessionEnded {
        /// Fixed reason text.
        reason: &'static str,
    },
}
