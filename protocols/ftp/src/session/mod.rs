//! The FTP session machine: one intercepted control connection.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use crate::audit::AuditEvent;
use crate::policy::Config;

/// One end of the control connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The FTP client (the connection TPROXY intercepted).
    Client,
    /// The real FTP server (the original destination).
    Server,
}

impl Side {
    /// The other end.
    pub fn peer(self) -> Self {
        match self {
            Self::Client => Self::Server,
            Self::Server => Self::Client,
        }
    }
}

/// A data channel of one session. Never reused within a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DataId(pub u32);

/// The two addresses of the intercepted control connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlEnds {
    /// The client's address (peer of the accepted socket).
    pub client: SocketAddr,
    /// The server's address (original destination, from getsockname()).
    pub server: SocketAddr,
}

/// Which step of a data channel failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataStep {
    /// bind() of the listener or of the foreign source address.
    Bind,
    /// listen().
    Listen,
    /// accept().
    Accept,
    /// connect() (including the asynchronous result).
    Connect,
    /// The relay (a read or write error, e.g. a reset).
    Relay,
}

/// A fact the shell reports to the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Input<'a> {
    /// Bytes read from a control socket: at most `read_budget(from)` bytes.
    Received {
        /// Which control socket.
        from: Side,
        /// The bytes.
        data: &'a [u8],
    },
    /// A control socket reached EOF or was reset.
    Closed {
        /// Which control socket.
        from: Side,
    },
    /// The control connection to the server could not be made.
    ServerUnreachable {
        /// Why.
        error: io::ErrorKind,
    },
    /// A listener asked for with `Action::Listen` is listening.
    Listening {
        /// The data channel.
        data: DataId,
        /// The address actually bound.
        local: SocketAddr,
    },
    /// A data listener accepted a connection (the core judges the peer).
    Accepted {
        /// The data channel.
        data: DataId,
        /// Who connected.
        peer: SocketAddr,
    },
    /// A connect asked for with `Action::Connect` completed.
    Connected {
        /// The data channel.
        data: DataId,
    },
    /// A data channel step failed. The shell has released what that step held.
    Failed {
        /// The data channel.
        data: DataId,
        /// Which step.
        step: DataStep,
        /// Why.
        error: io::ErrorKind,
    },
    /// Both directions of a relay reached EOF, were drained and shut down.
    Relayed {
        /// The data channel.
        data: DataId,
        /// Bytes written toward the client.
        to_client: u64,
        /// Bytes written toward the server.
        to_server: u64,
    },
    /// `now` has reached `poll_timeout()`.
    Timeout,
    /// The daemon is shutting down: finish running transfers, then close.
    Drain,
}

/// Work the core asks the shell to do.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Open a transparent listener on `local` (a foreign address). Report
    /// `Listening` or `Failed { step: Bind | Listen }`. `peer` is the side
    /// whose connection it waits for.
    Listen {
        /// The data channel.
        data: DataId,
        /// Address to bind (port 0: any port).
        local: SocketAddr,
        /// The only peer address the core will accept.
        accept_from: IpAddr,
        /// Which side connects to this listener.
        peer: Side,
    },
    /// Close the connection accepted last on this data channel's listener;
    /// keep listening.
    Refuse {
        /// The data channel.
        data: DataId,
    },
    /// Keep the accepted connection, close the listener, and connect from the
    /// foreign address `local` to `remote`. Report `Connected` or `Failed`.
    Connect {
        /// The data channel.
        data: DataId,
        /// Source address (foreign, IP_TRANSPARENT); port 0: any port.
        local: SocketAddr,
        /// Destination.
        remote: SocketAddr,
    },
    /// Both legs are up: relay between them until both directions end, then
    /// report `Relayed` (or `Failed { step: Relay }`).
    Relay {
        /// The data channel.
        data: DataId,
    },
    /// Release everything of this data channel (listener, legs, pipes).
    CloseData {
        /// The data channel.
        data: DataId,
    },
    /// Stop reading from this control socket, write out `pending(side)`, then
    /// close it.
    Shutdown {
        /// Which control socket.
        side: Side,
    },
    /// Log this.
    Audit(AuditEvent),
}

/// Protocol state of one intercepted FTP control connection.
#[derive(Debug)]
pub struct Session {
    _config: Arc<Config>,
    _ends: ControlEnds,
}

impl Session {
    /// A session for a control connection just accepted; the shell is
    /// connecting to `ends.server` from `ends.client`.
    pub fn new(config: Arc<Config>, ends: ControlEnds, now: Instant) -> Self {
        let _ = now;
        Self { _config: config, _ends: ends }
    }

    /// Feed one fact.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        let _ = (now, input);
        todo!()
    }

    /// The next action, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        todo!()
    }

    /// When to feed `Input::Timeout` next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        todo!()
    }

    /// Bytes ready to be written to that control socket.
    pub fn pending(&self, to: Side) -> &[u8] {
        let _ = to;
        todo!()
    }

    /// `n` bytes of `pending(to)` were written.
    pub fn consume(&mut self, to: Side, n: usize) {
        let _ = (to, n);
        todo!()
    }

    /// How many bytes the core takes from that side now (0: stop reading).
    pub fn read_budget(&self, from: Side) -> usize {
        let _ = from;
        todo!()
    }

    /// True when the session is over: both sides got `Shutdown` and every data
    /// channel got `CloseData`. The shell drops the session once `pending` of
    /// both sides is written (or can no longer be).
    pub fn is_closed(&self) -> bool {
        todo!()
    }
}
