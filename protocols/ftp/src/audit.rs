//! Typed records the shell must log. The core never logs; it emits these.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::{DataId, DataStep, Side};

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
    /// Every byte relayed and the server's final reply was 2xx.
    Ok,
    /// The transfer did not complete. If its data channel was cut, the
    /// client was never given a 2xx for it (it got `426` instead).
    Failed(TransferFailure),
    /// Cut short on purpose before the relay completed.
    Aborted(AbortCause),
}

/// Why a transfer failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferFailure {
    /// `leg`'s data connection was reset mid-transfer; the other leg was
    /// reset too.
    Reset {
        /// Whose data connection: the client's or the server's.
        leg: Side,
    },
    /// Another read or write error on `leg`'s data connection.
    RelayError {
        /// Whose data connection: the client's or the server's.
        leg: Side,
        /// The error.
        error: io::ErrorKind,
    },
    /// No byte moved either way for `Config::data_idle_timeout`.
    DataIdle,
    /// Nobody connected to the data listener within
    /// `Config::data_accept_timeout`.
    AcceptTimeout,
    /// The connect to the far end took longer than
    /// `Config::data_connect_timeout`.
    ConnectTimeout,
    /// A set-up step failed: bind, listen, accept, connect, or starting the
    /// relay.
    SetupFailed {
        /// Which step.
        step: DataStep,
        /// The error.
        error: io::ErrorKind,
    },
    /// A newer PASV/EPSV/PORT/EPRT (or a REIN, or an ABOR with no transfer)
    /// closed the channel before a transfer used it.
    Replaced,
    /// The data channel was fine; the server's final reply was 4xx/5xx.
    ServerReply {
        /// The server's code.
        code: u16,
    },
    /// The server's final reply was 2xx, but no data connection was ever
    /// relayed for the transfer.
    NoDataConnection,
    /// The server closed (or reset) the control connection, or announced
    /// with `421` that it was closing it, before the transfer's final
    /// reply: the server went away, the client did not
    /// give up. (A client close, ABOR or the gateway's shutdown is
    /// [`TransferResult::Aborted`].)
    ServerClosed,
    /// `Config::enforce_data_direction`: `from` sent a data byte the wrong
    /// way for the transfer (ATTACKS.md 34); both legs were reset.
    WrongDirection {
        /// Who sent it.
        from: Side,
    },
    /// `from` sent TCP urgent data (MSG_OOB) on its data connection: not
    /// FTP, and a relay cannot pass the urgent mark in order; both legs
    /// were reset.
    UrgentData {
        /// Who sent it.
        from: Side,
    },
}

/// One data connection of a transfer, as the gateway's socket saw it.
/// The gateway is transparent, so its own end wears a peer's address: on
/// the client's leg of a passive transfer, the server's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataLeg {
    /// The far end: the client's or the server's data address.
    pub peer: SocketAddr,
    /// The gateway's end of that connection.
    pub local: SocketAddr,
}

/// The two data connections of a transfer; `None` for one that never
/// came up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataLegs {
    /// The client's data connection.
    pub client: Option<DataLeg>,
    /// The server's data connection.
    pub server: Option<DataLeg>,
}

/// Who cut a transfer short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortCause {
    /// The client sent ABOR.
    ClientAbor,
    /// The session ended first: the client closed, a 421, a deadline, the
    /// gateway's shutdown. (The server closing its control connection is
    /// [`TransferFailure::ServerClosed`].)
    SessionEnded,
}

/// What the policy refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyStage {
    /// The connection, before the server is contacted.
    Connection,
    /// A USER: the name is not allowed.
    User,
    /// A command the session's profile (or a deny decision) refuses.
    Command,
    /// A running session's next command after a reload whose rules deny
    /// its addresses: `421`, and the session ends.
    Reload,
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
    /// Under a `server-data` conversion the server refused the command the
    /// gateway sent in the client's place (PASV/EPSV for the client's
    /// PORT/EPRT, PORT/EPRT for its PASV/EPSV): the data channel is closed
    /// and the client got `reply` for its own command.
    ConversionRefused {
        /// The data channel.
        data: DataId,
        /// The gateway's command: `PASV`, `EPSV`, `PORT` or `EPRT`.
        sent: &'static str,
        /// The server's reply code to it.
        server_reply: u16,
        /// What the client got for its PORT/EPRT/PASV/EPSV.
        reply: u16,
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
        /// The stable short name of the rule that refused it
        /// ([`Violation::rule`](crate::error::Violation::rule)).
        rule: &'static str,
        /// The case of ATTACKS.md it answers, if any.
        attack: Option<u8>,
        /// The offending line or code, printable and truncated; of a line
        /// that starts with `PASS`, only the verb.
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
        /// The transfer verb, upper case (`RETR`, `STOR`, `LIST`, ...).
        command: String,
        /// Its argument, printable and truncated; `None` without one.
        path: Option<String>,
        /// The argument of the `REST` right before it (printable: it is
        /// relayed whatever it says), which the byte counts start from.
        rest: Option<String>,
        /// Both data connections. Boxed: four socket addresses would make
        /// every queued `Action` twice as large for a rare record.
        legs: Box<DataLegs>,
        /// Bytes relayed toward the client.
        to_client: u64,
        /// Bytes relayed toward the server.
        to_server: u64,
        /// From data channel set-up to its end.
        duration: Duration,
        /// The final reply the client got, if any: the server's, or `426`
        /// in place of a 2xx for a transfer whose data channel was cut.
        reply: Option<u16>,
        /// The server's own final reply code, if one arrived.
        server_reply: Option<u16>,
        /// Outcome.
        result: TransferResult,
    },
    /// The access rules or a command profile refused something: the
    /// connection (`421`, the server never contacted), a user (`530`, the
    /// server never told the name), or a command (`530`/`550`/`502`, never
    /// forwarded).
    PolicyDenied {
        /// What was refused.
        stage: PolicyStage,
        /// The rule that decided: its name, `rule N` (1-based), or `default`.
        rule: String,
        /// The user name (given with USER), printable; `None` before any.
        user: Option<String>,
        /// The refused verb, upper case (stage `Command` only).
        verb: Option<String>,
        /// The profile that refused it (stage `Command`, unless the access
        /// rules denied the session itself).
        profile: Option<String>,
    },
    /// The session ended.
    SessionEnded {
        /// Fixed reason text.
        reason: &'static str,
        /// The logged-in user at the end, if any.
        user: Option<String>,
        /// From the session's start to its end.
        duration: Duration,
        /// Transfer records the session produced.
        transfers: u64,
        /// Bytes relayed toward the client over all its transfers.
        to_client: u64,
        /// Bytes relayed toward the server over all its transfers.
        to_server: u64,
    },
    /// Several client lines in a row were refused by the gateway; one
    /// record for the whole run (a single refused line is a [`Refused`](Self::Refused)).
    /// Recorded when the run ends: a line forwarded, the session closed, or
    /// `Config::max_refused_lines` reached (then the session closes).
    RefusedLines {
        /// Who sent them (the client: the gateway answers only its lines).
        side: Side,
        /// How many lines in a row.
        count: usize,
        /// Fixed reason text of the first one.
        reason: &'static str,
        /// The rule that refused the first one
        /// ([`Violation::rule`](crate::error::Violation::rule)).
        rule: &'static str,
        /// The case of ATTACKS.md the first one answers, if any.
        attack: Option<u8>,
        /// The first offending line, printable and truncated; of a line
        /// that starts with `PASS`, only the verb.
        what: String,
        /// Every rule that refused a line of the run, in the order first
        /// used, with how many lines it refused; the counts add up to
        /// `count`. A run may mix junk, LPSV and a bounce attempt: the
        /// record names each, not only the first.
        rules: Vec<(&'static str, usize)>,
    },
    /// The server answered a USER or PASS with `530` (RFC 2577 §5, ATTACKS.md 33).
    LoginFailed {
        /// The name given with USER, if any (never the password).
        user: Option<String>,
    },
    /// The server accepted `AUTH` with `234` under `FtpsPolicy::PassThrough`:
    /// from here the control connection is relayed blind
    /// ([`Action::PassThrough`](crate::Action::PassThrough)).
    TlsPassThrough {
        /// The mechanism the client asked for (`TLS`, `SSL`, …), printable.
        mechanism: String,
        /// The user logged in before, if any.
        user: Option<String>,
    },
}
