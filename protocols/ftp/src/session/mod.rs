//! The FTP session machine: one intercepted control connection.
//!
//! Read first: RFC 959, RFC 1123 §4.1, RFC 2428, RFC 2577, RFC 1579, and
//! LIFECYCLE.md at the crate root (states, holds, what releases them).
//! `control.rs` pairs commands with replies; `data.rs` runs the data
//! channels; `tests.rs` has one transcript per rule.

mod access;
mod control;
mod convert;
mod data;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::control::{
    Login, Pending, Phase, PortHold, RefusedRun, ServerHold, REPLY_SHUTTING_DOWN, REPLY_UNREACHABLE,
};
use self::data::{Cut, DataChan};
use crate::audit::{AbortCause, AuditEvent, TransferFailure};
use crate::line::LineReader;
use crate::policy::Config;
use crate::reply::{Reply, ReplyAssembler};
use crate::rules::{Decision, PolicySet};

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
    /// Starting the relay (e.g. creating its pipes). A relay that fails
    /// once running is [`Input::RelayFailed`].
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
    /// A control socket reached EOF: the peer closed its sending side in
    /// order (a FIN). From the client this is a half-close: what it sent
    /// before is still forwarded and answered, as over a router, and the
    /// session ends once nothing is owed to it.
    Closed {
        /// Which control socket.
        from: Side,
    },
    /// A control socket was reset, or a read or write on it failed: it is
    /// gone both ways, and the session ends without waiting for replies
    /// (the daemon passes the reset on to the other end).
    Aborted {
        /// Which control socket.
        from: Side,
    },
    /// The control connection to the server could not be made. With
    /// `ConnectionRefused` (a reset, or an ICMP port unreachable) the
    /// client's connection ends with nothing sent and the daemon resets it,
    /// as a router would pass the refusal on; otherwise (no answer, host or
    /// network unreachable) the client gets a 421 first.
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
        /// The address the connection was made from (getsockname()): the
        /// port is the kernel's choice when `Connect` asked for port 0.
        /// The transfer's audit record names it.
        local: SocketAddr,
    },
    /// A connect asked for with `Action::Dial` completed.
    Dialed {
        /// The data channel.
        data: DataId,
        /// Which leg: toward the client or toward the server.
        leg: Side,
        /// The address the connection was made from (getsockname()).
        local: SocketAddr,
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
    /// Running byte counts of a relaying data channel, fed when they grew
    /// (at most once per wakeup is enough). Bytes moving keep the channel
    /// from its idle deadline (`Config::data_idle_timeout`).
    Progress {
        /// The data channel.
        data: DataId,
        /// Bytes written toward the client so far.
        to_client: u64,
        /// Bytes written toward the server so far.
        to_server: u64,
    },
    /// Bytes the relay had already written toward a receiver were
    /// acknowledged by it since the shell last looked: the channel is not
    /// idle, though its counts stand still. The last bytes of a transfer
    /// can sit in a send buffer for long (megabytes, on a slow link), and
    /// a slow receiver draining them must not be cut as idle. Feed it at
    /// the idle deadline (before `Timeout`), not per wakeup.
    Acknowledged {
        /// The data channel.
        data: DataId,
    },
    /// The relay ended abnormally: a read error or reset on `leg`'s data
    /// connection, or a write error toward it. The shell has already ended
    /// the other leg with a reset (never a FIN), so neither end mistakes
    /// the cut for a complete transfer.
    RelayFailed {
        /// The data channel.
        data: DataId,
        /// Whose data connection failed: the client's or the server's.
        leg: Side,
        /// Why. [`WRONG_DIRECTION`]: `leg`'s peer sent data against the
        /// direction of [`Action::DataDirection`].
        error: io::ErrorKind,
        /// Bytes written toward the client before the failure.
        to_client: u64,
        /// Bytes written toward the server before the failure.
        to_server: u64,
    },
    /// `now` has reached `poll_timeout()`.
    Timeout,
    /// The daemon is shutting down: finish running transfers, then close.
    Drain,
    /// The operator reloaded the access rules (SIGHUP). They judge this
    /// session's next commands: its decision is made again from its facts
    /// (client, server, the user in force). A data channel being set up
    /// keeps the mode it started with; a running transfer is never cut. A
    /// session whose addresses the new rules deny outright
    /// ([`PolicySet::admit`](crate::rules::PolicySet::admit)) gets `421` for
    /// its next command and ends once its running transfer has.
    PolicyChanged {
        /// The new rules, validated.
        policy: &'a Arc<PolicySet>,
    },
}

/// The `error` of [`Input::RelayFailed`] when a leg sent data the wrong way
/// ([`Action::DataDirection`]). No OS error maps to `InvalidData`, so it
/// cannot be mistaken for a socket error.
pub const WRONG_DIRECTION: io::ErrorKind = io::ErrorKind::InvalidData;

/// The `error` of [`Input::RelayFailed`] when `leg`'s peer sent TCP urgent
/// data (MSG_OOB) on its data connection. No OS error maps to
/// `UnexpectedEof` either.
pub const URGENT_DATA: io::ErrorKind = io::ErrorKind::UnexpectedEof;

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
    /// Open one leg of a data channel whose two legs the gateway both
    /// connects (`server-data = "passive"` for a client in active mode):
    /// connect from the foreign address `local` to `remote`, toward `leg`'s
    /// side. Report `Dialed` or `Failed { step: Connect }`. The first
    /// `Dial` of a channel opens it in the shell, as `Listen` does for the
    /// others; `Relay` follows once both legs are up.
    Dial {
        /// The data channel.
        data: DataId,
        /// Which side the connection goes to.
        leg: Side,
        /// Source address (foreign, IP_TRANSPARENT); port 0: any port.
        local: SocketAddr,
        /// Destination.
        remote: SocketAddr,
    },
    /// Keep the connection just accepted on this data channel (`Accepted`)
    /// as `leg`'s leg, and close the listener it came through. For a
    /// channel whose two legs the gateway both accepts (`server-data =
    /// "active"` for a client in passive mode: one listener per side, each
    /// asked for with `Listen` and its `peer`); `Relay` follows once both
    /// legs are kept. Nothing to report.
    Keep {
        /// The data channel.
        data: DataId,
        /// Whose connection it is.
        leg: Side,
    },
    /// Both legs are up: relay between them until both directions end, then
    /// report `Relayed`; report `Progress` while bytes move, `RelayFailed`
    /// if a leg fails, `Failed { step: Relay }` if the relay cannot start.
    Relay {
        /// The data channel.
        data: DataId,
    },
    /// Only with `Config::enforce_data_direction` (ATTACKS.md 34): the
    /// transfer that uses this channel is known, and its data may flow only
    /// toward `toward`. It may come before or after `Relay`. With
    /// enforcement on, the relay moves nothing until this arrives (bytes
    /// wait in the kernel); then it moves data toward `toward` only, a FIN
    /// either way passes, and a byte readable from `toward`'s own leg
    /// fails the relay: reset both legs and report `RelayFailed` with
    /// `leg` the sender and `error` [`WRONG_DIRECTION`].
    DataDirection {
        /// The data channel.
        data: DataId,
        /// The only side data may flow toward.
        toward: Side,
    },
    /// End both legs of this data channel with a reset (close with
    /// `SO_LINGER` 0), never a FIN: the transfer failed and neither end may
    /// take it for complete. A `CloseData` for the same channel follows.
    ResetData {
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
    /// FTPS pass-through (`Config::ftps`): the server accepted `AUTH`, so
    /// what follows on the control connection is TLS, which the gateway
    /// never parses. Write `pending` for both sides (the `234` for the
    /// client), then relay the two control sockets byte for byte, both
    /// ways, until both directions end (a FIN passed on as a FIN, a reset
    /// as a reset) or no byte moves for `idle_timeout`. Every data channel
    /// is already closed and none is opened again: the session takes no
    /// more input and [`Session::is_closed`] is true.
    PassThrough {
        /// End the blind relay after this long without a byte either way.
        idle_timeout: Duration,
    },
}

/// Outgoing control bytes above this stop reading from the side that
/// produces them (back-pressure instead of unbounded buffering).
const HIGH_WATER: usize = 64 * 1024;

/// Commands sent to the server and not yet answered, at most. A client that
/// pipelines more is simply not read until replies come back.
const MAX_PENDING: usize = 64;

/// Protocol state of one intercepted FTP control connection.
///
/// The methods come in these kinds, called in this order after every event
/// (see the crate docs for the whole contract):
///
/// 1. **Facts in:** [`handle_input`](Self::handle_input), one [`Input`] at
///    a time, with the current time.
/// 2. **Work out:** [`poll_action`](Self::poll_action) until `None`.
///    Executing an action may produce a new fact; feeding it from inside
///    the drain is allowed.
/// 3. **Bytes out:** per control socket, [`pending`](Self::pending) is what
///    to write; if [`pending_urgent`](Self::pending_urgent) is `Some(n)`,
///    write the first `n` bytes with `MSG_OOB` first (a Telnet Synch).
///    Report what was written with [`consume`](Self::consume).
/// 4. **Getters for interest and timers:** [`read_budget`](Self::read_budget)
///    (how much to read from each side; 0: do not read),
///    [`poll_timeout`](Self::poll_timeout) (when to feed
///    [`Input::Timeout`]), [`is_closed`](Self::is_closed) (drop the session
///    once `pending` is written). After [`Action::PassThrough`],
///    [`end_record`](Self::end_record) is the session's end record for the
///    shell to write when its blind relay ends.
///
/// The getters never change state; only `handle_input` and `consume` do.
/// The session never panics on peer input and never returns an error: bad
/// input becomes a reply to the offending side, an [`AuditEvent`], and
/// possibly a [`Action::Shutdown`].
///
/// Its `Debug` shows state and buffer sizes, never buffered bytes: a `PASS`
/// line in flight must not reach a log.
pub struct Session {
    config: Arc<Config>,
    ends: ControlEnds,
    phase: Phase,
    /// When the control connection counts as idle (while no transfer runs).
    idle_at: Instant,
    /// Framers, indexed by the side the bytes come from.
    readers: [LineReader; 2],
    /// Output buffers, indexed by the side the bytes go to.
    out: [Vec<u8>; 2],
    /// Offsets into `out` (same index) just past each Telnet Synch's urgent
    /// byte, ascending.
    urgent: [VecDeque<usize>; 2],
    actions: VecDeque<Action>,
    replies: ReplyAssembler,
    /// Commands forwarded to the server (or answered locally), FIFO.
    pending: VecDeque<Pending>,
    /// A client line taken from the framer that must wait (a data-setup
    /// command while a transfer is outstanding).
    stash: Option<Vec<u8>>,
    /// A PORT/EPRT held until its listener is up. Boxed: rare, and an idle
    /// session must stay small.
    port_hold: Option<Box<PortHold>>,
    /// A server reply held (227/229 until Listening, final reply until
    /// Relayed); later server replies wait behind it in `backlog`.
    server_hold: Option<ServerHold>,
    /// Complete server replies read while a reply is held, in order. Still
    /// read so that a 421 behind the hold tears the session down at once.
    backlog: VecDeque<Reply>,
    data: BTreeMap<DataId, DataChan>,
    /// The data channel the next transfer command will use.
    current_data: Option<DataId>,
    next_data: u32,
    login: Login,
    /// The offset of a REST just forwarded, for the next transfer's label.
    rest: Option<String>,
    epsv_all: bool,
    server_eof: bool,
    /// The client half-closed its control connection (`Input::Closed`):
    /// nothing more comes from it, and the session ends once what it sent
    /// is answered (`owes_client`).
    client_eof: bool,
    server_spoke: bool,
    draining: bool,
    shutdown: [bool; 2],
    /// The client closed its control connection while the kernel carries a
    /// transfer (`Config::kernel_data_path`): the session stays for that
    /// transfer's end and final reply, at most until this deadline.
    client_gone_until: Option<Instant>,
    /// The client's first line passed as FTP (ATTACKS.md 10): until then
    /// anything else ends the session.
    client_spoke_ftp: bool,
    /// Client lines refused in a row, not yet recorded (one record per run).
    /// Boxed: rare, and an idle session must stay small.
    refused: Option<Box<RefusedRun>>,
    /// The `now` of the input being handled.
    now: Instant,
    /// When the session began, for its end record.
    started_at: Instant,
    /// What its transfer records added up to, for its end record.
    totals: Totals,
    /// The access rules' decision in force (`access.rs`).
    decision: Decision,
    /// The last USER was denied by policy: its PASS is answered here.
    user_denied: bool,
    /// The name of the USER whose decision is in force (`None` before one,
    /// and after REIN): a reload decides again for it.
    policy_user: Option<Box<[u8]>>,
    /// A reload denied this session's addresses: the next command gets
    /// `421` (`access.rs`). The rule that did is found again then (a pure
    /// function of the rules in force): the session stays small.
    revoked: bool,
    /// That `421` is queued: the session ends once it and every reply owed
    /// before it are out and no transfer runs.
    closing_by_policy: bool,
}

/// A session's transfers, summed for its end record.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    transfers: u64,
    to_client: u64,
    to_server: u64,
}

/// `now + d`, saturating far in the future instead of panicking on an
/// absurd configured duration.
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400))).unwrap_or(now)
}

fn idx(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

impl Session {
    /// A session for a control connection just accepted; the shell is
    /// connecting to `ends.server` from `ends.client`.
    pub fn new(config: Arc<Config>, ends: ControlEnds, now: Instant) -> Self {
        let facts = crate::rules::Facts { client: ends.client.ip(), server: ends.server, user: None };
        let decision = config.policy.decide(&facts);
        Self {
            decision,
            user_denied: false,
            policy_user: None,
            revoked: false,
            closing_by_policy: false,
            phase: Phase::ExpectGreeting { expires_at: after(now, config.greeting_timeout) },
            idle_at: after(now, config.idle_timeout),
            readers: [LineReader::new(), LineReader::new()],
            out: [Vec::new(), Vec::new()],
            urgent: [VecDeque::new(), VecDeque::new()],
            actions: VecDeque::new(),
            replies: ReplyAssembler::new(config.max_reply_lines),
            pending: VecDeque::new(),
            stash: None,
            port_hold: None,
            server_hold: None,
            backlog: VecDeque::new(),
            data: BTreeMap::new(),
            current_data: None,
            next_data: 0,
            login: Login::default(),
            rest: None,
            epsv_all: false,
            server_eof: false,
            client_eof: false,
            server_spoke: false,
            draining: false,
            shutdown: [false; 2],
            client_gone_until: None,
            client_spoke_ftp: false,
            refused: None,
            now,
            started_at: now,
            totals: Totals::default(),
            config,
            ends,
        }
    }

    /// Feed one fact. Then drain [`poll_action`](Self::poll_action).
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        if matches!(self.phase, Phase::Closed | Phase::Blind) {
            return;
        }
        self.now = self.now.max(now);
        if !matches!(
            input,
            Input::Timeout | Input::Drain | Input::Received { .. } | Input::PolicyChanged { .. }
        ) {
            // Data-channel activity keeps the control connection alive: a
            // long transfer must not end in an idle 421. Control bytes count
            // only once they complete a line (`line_seen`), so a slowloris
            // trickling one byte a minute still meets the idle deadline
            // (ATTACKS.md 12).
            self.idle_at = after(now, self.config.idle_timeout);
        }
        match input {
            Input::Received { from, data } => {
                let eof = match from {
                    Side::Server => self.server_eof,
                    Side::Client => self.client_eof,
                };
                if self.shutdown[idx(from)] || eof {
                    return;
                }
                if from == Side::Server && !data.is_empty() {
                    self.server_spoke = true;
                }
                let reader = &mut self.readers[idx(from)];
                reader.feed(data);
                let answers = reader.take_answers();
                self.out[idx(from)].extend_from_slice(&answers);
            }
            Input::Closed { from: Side::Client } if self.kernel_carries_a_transfer() => {
                self.client_gone(now, false);
            }
            Input::Aborted { from: Side::Client } if self.kernel_carries_a_transfer() => {
                self.client_gone(now, true);
            }
            Input::Closed { from: Side::Client } => self.client_eof = true,
            Input::Aborted { from: Side::Client } => {
                self.teardown(Side::Server, "client closed");
                return;
            }
            Input::Closed { from: Side::Server } | Input::Aborted { from: Side::Server } => {
                self.server_eof = true
            }
            Input::ServerUnreachable { error: io::ErrorKind::ConnectionRefused } => {
                // The server (or a firewall before it) answered with a
                // reset: the client gets that reset, not a reply in the
                // server's name (the daemon arms it; nothing is sent).
                self.teardown(Side::Client, "server refused the connection");
                return;
            }
            Input::ServerUnreachable { .. } => {
                // Nothing came back to pass on, and the client's connection
                // is already accepted: a 421 says why it ends.
                self.send_client_now(REPLY_UNREACHABLE);
                self.teardown(Side::Client, "server unreachable");
                return;
            }
            Input::Listening { data, local } => self.on_listening(now, data, local),
            Input::Accepted { data, peer } => self.on_accepted(now, data, peer),
            Input::Connected { data, local } => self.on_connected(now, data, local),
            Input::Dialed { data, leg, local } => self.on_dialed(now, data, leg, local),
            Input::Failed { data, step, error } => self.on_failed(now, data, step, error),
            Input::Relayed { data, to_client, to_server } => self.on_relayed(now, data, to_client, to_server),
            Input::Progress { data, to_client, to_server } => {
                self.on_progress(now, data, to_client, to_server)
            }
            Input::Acknowledged { data } => self.on_acknowledged(now, data),
            Input::RelayFailed { data, leg, error, to_client, to_server } => {
                self.on_relay_failed(now, data, leg, error, (to_client, to_server))
            }
            Input::Timeout => self.on_timeout(now),
            Input::Drain => self.draining = true,
            Input::PolicyChanged { policy } => self.policy_changed(policy),
        }
        self.pump(now);
        self.debug_check_holds();
    }

    /// A data connection the kernel forwards is connected: it goes on
    /// without ftpgate, so the control session is what can still tell how
    /// it ended.
    fn kernel_carries_a_transfer(&self) -> bool {
        self.config.kernel_data_path && self.data.values().any(|d| d.is_connecting_or_relaying())
    }

    /// The client closed its control connection while the kernel carries
    /// its transfer. Over routing that connection goes on to its end
    /// (tests/pinhole.rs): ftpgate stops reading the client and stays with
    /// the server, at most one idle timeout, for the end the kernel reports
    /// and the server's final reply, so that the record says how the
    /// transfer ended and not "aborted". Then the close passes on. After a
    /// FIN (a half-close) the client still gets the replies, as over
    /// routing; after a reset there is nobody to deliver them to.
    fn client_gone(&mut self, now: Instant, abortive: bool) {
        self.client_gone_until = Some(after(now, self.config.idle_timeout));
        if abortive {
            self.shut(Side::Client);
        } else {
            self.client_eof = true;
        }
    }

    /// `Shutdown` for `side`, once: the client's side may already be shut
    /// when the session ends (`client_gone`).
    fn shut(&mut self, side: Side) {
        if !std::mem::replace(&mut self.shutdown[idx(side)], true) {
            self.actions.push_back(Action::Shutdown { side });
        }
    }

    /// Every hold must wait for something that can still happen; a hold on
    /// a channel that is gone would stall the session forever.
    fn debug_check_holds(&self) {
        use self::data::DataState;
        let state = |id: &DataId| self.data.get(id).map(|d| d.state);
        let expecting_listening = |id: &DataId| self.data.get(id).is_some_and(|d| d.is_expecting_listening());
        match &self.server_hold {
            Some(
                ServerHold::ExpectListening { data, .. } | ServerHold::ExpectConvertedListening { data, .. },
            ) => {
                debug_assert!(expecting_listening(data), "227 held for {data:?} in {:?}", state(data));
            }
            Some(ServerHold::ExpectRelayEnd { data, .. }) => debug_assert!(
                matches!(
                    state(data),
                    Some(
                        DataState::ExpectAccept { .. }
                            | DataState::ExpectConnect { .. }
                            | DataState::Relaying { .. }
                    )
                ),
                "final reply held for {data:?} in {:?}",
                state(data)
            ),
            None => {}
        }
        if let Some(hold) = &self.port_hold {
            debug_assert!(expecting_listening(&hold.data), "PORT held in {:?}", state(&hold.data));
        }
        if self.stash.is_some() && self.phase == Phase::Relaying {
            debug_assert!(self.data_setup_must_wait(), "data command stashed for nothing");
        }
    }

    /// Process whatever became processable, then check the end conditions.
    fn pump(&mut self, now: Instant) {
        self.process_server(now);
        self.process_client(now);
        if matches!(self.phase, Phase::Closed | Phase::Blind) {
            return;
        }
        if self.server_eof && self.server_hold.is_none() && self.backlog.is_empty() {
            // Every complete server line is processed: nothing more can come.
            if matches!(self.phase, Phase::ExpectGreeting { .. }) && !self.server_spoke {
                self.send_client_now(REPLY_UNREACHABLE);
            }
            // The server went away: a transfer it cut failed, the client
            // did not abort it.
            self.teardown_cutting(Side::Client, "server closed", Cut::Failed(TransferFailure::ServerClosed));
        } else if self.client_eof && self.client_gone_until.is_none() && !self.owes_client() {
            // Everything the client sent before its FIN is answered (and
            // any transfer it started is over): its close passes on.
            self.teardown(Side::Server, "client closed");
        } else if self
            .client_gone_until
            .is_some_and(|by| (!self.transfer_outstanding() && !self.owes_client()) || now >= by)
        {
            // The kernel's transfer is over and its reply in (or the wait
            // is): its record is written, the client's close passes on.
            self.teardown(Side::Server, "client closed");
        } else if self.draining && !self.transfer_running() {
            self.send_client_now(REPLY_SHUTTING_DOWN);
            self.teardown(Side::Client, "gateway shutting down");
        } else if self.closing_by_policy
            && self.pending.is_empty()
            && self.server_hold.is_none()
            && !self.transfer_running()
        {
            // The 421 is out (queued in order); nothing is owed any more.
            self.teardown(Side::Client, "denied by the reloaded policy");
        }
    }

    /// Something the client sent is not answered yet: a line not yet
    /// taken, a command held or forwarded without its final reply (a
    /// transfer command's stays pending until then), or a held server
    /// reply (a final reply held until its relay ends). A data channel
    /// that no transfer command owns is not owed: a client that connected
    /// one and then closed its control connection (ftplib after a refused
    /// STOR) would otherwise hold the session until the data deadline.
    fn owes_client(&self) -> bool {
        // The greeting too: a health check that connects and closes at
        // once (`nc host 21 </dev/null`) gets the banner over a router.
        // The daemon reads nothing from the client before the greeting
        // (`read_budget`), so it never reports that EOF earlier; the core
        // does not rely on it. The greeting deadline bounds the wait.
        matches!(self.phase, Phase::ExpectGreeting { .. })
            || self.readers[idx(Side::Client)].has_line()
            || self.stash.is_some()
            || self.port_hold.is_some()
            || !self.pending.is_empty()
            || self.server_hold.is_some()
            || !self.backlog.is_empty()
    }

    /// The next action, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to feed `Input::Timeout` next: the earliest live deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let control = match self.phase {
            Phase::ExpectGreeting { expires_at } => Some(expires_at),
            Phase::Relaying if !self.transfer_running() => Some(self.idle_at),
            Phase::Relaying | Phase::Closed | Phase::Blind => None,
        };
        let client_gone = self.client_gone_until.filter(|_| self.phase == Phase::Relaying);
        self.data.values().filter_map(DataChan::deadline).chain(control).chain(client_gone).min()
    }

    /// Bytes ready to be written to that control socket.
    pub fn pending(&self, to: Side) -> &[u8] {
        &self.out[idx(to)]
    }

    /// `Some(n)`: the first `n` bytes of [`pending(to)`](Self::pending) end
    /// with a Telnet Synch's urgent byte; write exactly them with `MSG_OOB`
    /// (`send_out_of_band`) before the rest. `None`: write `pending(to)`
    /// normally. Once those `n` bytes are [`consume`](Self::consume)d this
    /// returns `None` again (or the next Synch's count).
    pub fn pending_urgent(&self, to: Side) -> Option<usize> {
        self.urgent[idx(to)].front().copied()
    }

    /// `n` bytes of `pending(to)` were written.
    pub fn consume(&mut self, to: Side, n: usize) {
        let out = &mut self.out[idx(to)];
        let n = n.min(out.len());
        // Urgent marks are offsets into `out`: move them along; a mark whose
        // bytes are all written is done.
        let marks = &mut self.urgent[idx(to)];
        marks.retain_mut(|m| {
            *m = m.saturating_sub(n);
            *m > 0
        });
        out.drain(..n);
        if out.is_empty() && out.capacity() > 1024 {
            *out = Vec::new();
        }
    }

    /// How many bytes the core takes from that side now (0: stop reading).
    pub fn read_budget(&self, from: Side) -> usize {
        if matches!(self.phase, Phase::Closed | Phase::Blind) || self.shutdown[idx(from)] {
            return 0;
        }
        if self.out[idx(from.peer())].len() > HIGH_WATER || self.out[idx(from)].len() > HIGH_WATER {
            return 0;
        }
        let blocked = match from {
            Side::Client => {
                matches!(self.phase, Phase::ExpectGreeting { .. })
                    || self.closing_by_policy
                    || self.port_hold.is_some()
                    || self.stash.is_some()
                    || self.pending.len() >= MAX_PENDING
                    || self.server_eof
                    || self.client_eof
                    || self.auth_pending()
            }
            // Behind a held reply, read on (a 421 must get through) up to
            // a bound, which the reply being assembled counts against.
            Side::Server => self.server_eof || self.backlog_bytes() + self.replies.buffered() > HIGH_WATER,
        };
        if blocked {
            0
        } else {
            self.readers[idx(from)].space()
        }
    }

    /// True when the session is over: both sides got `Shutdown` (or the
    /// control connection went blind, [`Action::PassThrough`]) and every data
    /// channel got `CloseData`. The shell drops the session once `pending` of
    /// both sides is written (or can no longer be), or once the blind relay
    /// ends.
    pub fn is_closed(&self) -> bool {
        (self.shutdown == [true, true] || self.phase == Phase::Blind)
            && self.data.values().all(|d| d.is_closed())
    }

    /// The session's end record ([`AuditEvent::SessionEnded`]) as of `now`.
    /// The core writes it itself when it ends the session; after
    /// [`Action::PassThrough`] it takes no more input, so the shell writes
    /// this one when the blind relay ends, with its own `reason`.
    pub fn end_record(&self, now: Instant, reason: &'static str) -> AuditEvent {
        let Totals { transfers, to_client, to_server } = self.totals;
        AuditEvent::SessionEnded {
            reason,
            user: self.login.user.clone(),
            duration: now.saturating_duration_since(self.started_at),
            transfers,
            to_client,
            to_server,
        }
    }

    /// The policy this session runs with (the shell reads
    /// `enforce_data_direction` from it to hold a relay until
    /// [`Action::DataDirection`]).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A complete control line arrived: the connection is not idle.
    fn line_seen(&mut self) {
        self.idle_at = after(self.now, self.config.idle_timeout);
    }

    fn backlog_bytes(&self) -> usize {
        self.backlog.iter().flat_map(|r| &r.lines).map(|l| l.len() + 2).sum()
    }

    /// Queue bytes for the client now, ahead of anything still owed.
    fn send_client_now(&mut self, text: &str) {
        self.out[idx(Side::Client)].extend_from_slice(text.as_bytes());
    }

    /// End the session: shut both control sockets (`first` first), close
    /// every data channel, log. A transfer not yet logged is aborted.
    fn teardown(&mut self, first: Side, reason: &'static str) {
        self.teardown_cutting(first, reason, Cut::Aborted(AbortCause::SessionEnded));
    }

    /// [`Self::teardown`], logging a transfer not yet logged with `cut`.
    fn teardown_cutting(&mut self, first: Side, reason: &'static str, cut: Cut) {
        if matches!(self.phase, Phase::Closed | Phase::Blind) {
            return;
        }
        self.flush_refused();
        self.phase = Phase::Closed;
        if let Some(ServerHold::ExpectRelayEnd { data, .. }) = &self.server_hold {
            // Dropped with the session: the record must not claim the
            // client got it.
            if let Some(ch) = self.data.get_mut(data) {
                ch.final_dropped = true;
            }
        }
        self.shut(first);
        if first == Side::Client {
            self.shut(Side::Server);
        }
        let ids: Vec<DataId> = self.data.keys().copied().collect();
        for id in ids {
            self.abort_data(id, cut);
        }
        self.shut(Side::Client);
        let end = self.end_record(self.now, reason);
        self.actions.push_back(Action::Audit(end));
        self.port_hold = None;
        self.server_hold = None;
        self.backlog.clear();
        self.stash = None;
        self.pending.clear();
        self.readers = [LineReader::new(), LineReader::new()];
    }
}

impl std::fmt::Debug for Session {
    /// State and sizes only: buffers may hold a password (a `PASS` line
    /// being framed, forwarded, or waiting to be written).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("ends", &self.ends)
            .field("phase", &self.phase)
            .field("login", &self.login)
            .field("epsv_all", &self.epsv_all)
            .field("pending", &self.pending.len())
            .field("stashed", &self.stash.as_ref().map(Vec::len))
            .field("port_hold", &self.port_hold.as_ref().map(|h| h.data))
            .field("server_hold", &self.server_hold.as_ref().map(ServerHold::data))
            .field("backlog", &self.backlog.len())
            .field("buffered_in", &[self.readers[0].buffered(), self.readers[1].buffered()])
            .field("buffered_out", &[self.out[0].len(), self.out[1].len()])
            .field("data", &self.data.values().map(|d| (d.id, d.state)).collect::<Vec<_>>())
            .field("current_data", &self.current_data)
            .field("server_eof", &self.server_eof)
            .field("client_eof", &self.client_eof)
            .field("draining", &self.draining)
            .field("shutdown", &self.shutdown)
            .finish_non_exhaustive()
    }
}

/// Printable, truncated copy of peer bytes for audit records.
fn printable(bytes: &[u8], max: usize) -> String {
    let mut s: String =
        bytes.iter().take(max).map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '?' }).collect();
    if bytes.len() > max {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests;
