//! Drives one `Session` from fuzz input and checks its invariants.
//!
//! # Input format
//!
//! Optional header `#` + flags byte + cap byte (otherwise `Config::default()`):
//! flags bits 0–1: `max_data_channels - 1`; bit 2: allow privileged data
//! ports; bit 3: `PassiveAddressPolicy::Refuse`; bit 4: all timeouts zero
//! (data idle included); bit 5: all timeouts `Duration::MAX`; bit 6: IPv6 control ends; bit 7:
//! IPv4-mapped IPv6 control ends. Cap byte: `max_reply_lines` (0: 1000).
//! Header `&` + flags + cap + policy + mode byte: as `%`, and mode bit 0:
//! `kernel_data_path` (`--data-path pinhole`: final replies are not held,
//! the gateway cannot cut a data connection; see the invariants).
//! Header `%` + flags + cap + policy byte: as `#`, and policy bit 0:
//! `FtpsPolicy::PassThrough`; bits 1–3: `max_refused_lines` (0: off);
//! bit 4: one access rule allowing all with `server-data = "passive"` (the
//! core dials both data legs of a PORT/EPRT); bit 6 (without bit 4): that
//! rule says `server-data = "active"` (the core listens for both legs of a
//! PASV/EPSV); bit 5: that rule (or one of its own) names the `read-only`
//! profile; bit 7: `enforce_data_direction` (ATTACKS.md 34).
//!
//! Then records; missing argument bytes read as 0, which always means the
//! ordinary case (the newest data channel, the address the core asked for).
//!
//! | record            | fact fed                                                          |
//! |-------------------|-------------------------------------------------------------------|
//! | `C`…`\n`          | client bytes up to and including the next LF (or the end)        |
//! | `S`…`\n`          | server bytes, likewise                                            |
//! | `c` n bytes[n]    | client bytes, raw (any bytes, no LF needed)                       |
//! | `s` n bytes[n]    | server bytes, raw                                                 |
//! | `L` id how p1 p2  | `Listening`: how 0 = the asked address (port 0 → p1p2 or 50000), 1 = asked IP + port p1p2, 2 = another IP |
//! | `A` id who p1     | `Accepted`: who 0 = the expected peer (of the channel's last `Listen`), 1 = a stranger, 2 = expected as IPv4-mapped / unmapped, 3 = the other control end |
//! | `K` id            | `Connected`                                                       |
//! | `N` id leg        | `Dialed` (leg even: client, odd: server) from the asked address (port 0 → 45000) |
//! | `F` id step err   | `Failed` (step % 5, err: AddrInUse, AddrNotAvailable, ConnectionRefused, TimedOut, ConnectionReset) |
//! | `R` id a b        | `Relayed { to_client: a, to_server: b }` (KiB)                    |
//! | `G` id a b        | `Progress { to_client: a, to_server: b }` (KiB)                   |
//! | `E` id leg err    | `RelayFailed` (leg even: client, odd: server; err as for `F`, 5 = `WRONG_DIRECTION` under enforcement, 6 = `URGENT_DATA`), counts 1 KiB / 0 |
//! | `V` id            | `Acknowledged`                                                    |
//! | `X` side          | `Closed { from }` (even: client, odd: server)                     |
//! | `U` n             | `ServerUnreachable`: n even `ConnectionRefused`, odd `TimedOut`   |
//! | `D`               | `Drain`                                                           |
//! | `T` d             | advance the clock by d (≤199: seconds, else hours) and feed `Timeout` |
//! | `+` d             | advance the clock only                                            |
//! | `W` side n        | the socket takes n*64 bytes of `pending(side)` (0: all)            |
//! | `B` side          | toggle "socket full" for that side (not written after each step)  |
//! | `P` k             | the next drain stops after k actions (the rest stays queued)      |
//! | `Y` k             | `PolicyChanged` (a reload): k bit 0 denies every client network; bit 1 `read-only`; bit 2 `server-data = "passive"`, else bit 3 `"active"` |
//!
//! `id`: < 0x80 picks among the ids the core has used (0 = newest); ≥ 0x80
//! is the raw id `id & 0x7f`. Other bytes are skipped.
//!
//! # Invariants
//!
//! - At most `max_data_channels` channels between `Listen` and `CloseData`.
//! - `CloseData` exactly once per `Listen`ed id; no `Listen` after it; a
//!   second `Listen` for an open id only right after `Failed { Bind }` fed
//!   for it, and only once; `Refuse`/`Connect`/`Relay` only for open ids,
//!   `Connect` only as the answer to `Accepted`, `Relay` to `Connected`.
//! - `Listen` for an open id with the other `peer` than its first: once
//!   (a channel whose two legs are both accepted, `server-data = "active"`).
//!   `Keep` only in answer to `Accepted` for an open id, once per leg;
//!   a kept leg is up (ResetData allowed; a plain `CloseData` too, as for
//!   dialed legs: the transfer's error reply came); `Relay` once both legs
//!   are kept.
//! - `Dial` (server-data conversion): the first opens the channel (it
//!   counts toward `max_data_channels`), at most one per leg, never for a
//!   closed id; `Relay` only once both legs were fed `Dialed`; from then
//!   on the channel has legs up (ResetData or Relayed before CloseData).
//! - `DataDirection` only under `enforce_data_direction`, only for an open
//!   channel, at most once per channel; a transfer record that failed
//!   with `WrongDirection` only under `enforce_data_direction`.
//! - `ResetData` only for an open channel whose legs are up (after
//!   `Connect`), at most once, and its `CloseData` follows in the same
//!   drain. A channel with legs up never gets a plain `CloseData` (a FIN)
//!   unless `Relayed` was fed for it.
//! - A transfer record (`Audit(Transfer)`) whose data channel was cut
//!   (`Failed` for a reason other than the server's reply, or aborted)
//!   never says the client got a 2xx; a record that says the client got a
//!   2xx is `Ok` (or `NoDataConnection`), and `Ok` only after `Relayed` was
//!   fed for that channel. Every record with `reply: 426` in place of a
//!   server 2xx has its `426 Connection closed; transfer aborted.` in the
//!   bytes written to the client.
//! - Under `kernel_data_path` the kernel carries the data: the final reply
//!   passes as the server sent it, before the connection's end is known,
//!   and the gateway can close a channel without a reset (it cannot cut
//!   the kernel's connection). The two 2xx rules above and the FIN rule
//!   do not apply there; every other one does.
//! - `Shutdown` at most once per side; `SessionEnded` at most once, and the
//!   session reports `is_closed()` exactly once it ended; nothing after that.
//! - The harness never feeds more than `read_budget(side)` bytes.
//! - FTPS: `PassThrough` only under `FtpsPolicy::PassThrough`, at most once,
//!   after every data channel got its `CloseData`; after it nothing: no
//!   action, `is_closed()`, both read budgets 0, no timeout, no byte more
//!   toward the server, and only the drain's bytes toward the client.
//! - Refused lines: between two lines forwarded to the server, at most two
//!   client refusal records (the run's `Refused`/`RefusedLines`, then one
//!   that ends the session: not FTP, line too long); a `RefusedLines` has
//!   2..=`max_refused_lines` lines, and one of `max_refused_lines` closes
//!   the session. Client-side `Refused` records that refuse no client line
//!   are not counted (`refuses_a_client_line`).
//! - `LoginFailed` never outnumbers the `530` replies the server sent.
//! - Reload: while the last `PolicyChanged` fed denies every client
//!   network, no byte more goes toward the server (a running session's
//!   next command gets `421`).
//! - The end: ticking far into the future (feeding `Timeout` while
//!   `poll_timeout()` is due) closes every session, running relays
//!   included (they meet the data idle deadline); then `Closed` from both
//!   sides closes every session. Closed
//!   means: `is_closed()`, both sides shut down, no channel left open.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ftpgate_proto::line::LineReader;
use ftpgate_proto::rules::{Action as RuleAction, Net, PolicySet, Rule, ServerData};
use ftpgate_proto::{
    Action, AuditEvent, Config, ControlEnds, DataId, DataStep, FtpsPolicy, Input, PassiveAddressPolicy,
    Session, Side, TransferFailure, TransferResult, URGENT_DATA, WRONG_DIRECTION,
};

const ERRORS: [ErrorKind; 5] = [
    ErrorKind::AddrInUse,
    ErrorKind::AddrNotAvailable,
    ErrorKind::ConnectionRefused,
    ErrorKind::TimedOut,
    ErrorKind::ConnectionReset,
];
const STEPS: [DataStep; 5] =
    [DataStep::Bind, DataStep::Listen, DataStep::Accept, DataStep::Connect, DataStep::Relay];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chan {
    /// `Listen` emitted, no `Listening` fed yet.
    Asked,
    Listening,
    Connecting,
    Relaying,
    /// Opened by `Dial`: some leg is still being dialed.
    Dialing,
}

#[derive(Debug)]
struct Chans {
    open: BTreeMap<DataId, (Chan, Action)>,
    closed: BTreeSet<DataId>,
    retried: BTreeSet<DataId>,
    /// Ids in the order the core used them.
    order: Vec<DataId>,
}

/// The shell: a session plus what it has seen.
pub struct Driver {
    pub session: Session,
    config: Arc<Config>,
    ends: ControlEnds,
    pub now: Instant,
    chans: Chans,
    shut: [bool; 2],
    ended: bool,
    /// Ids fed `Failed { Bind }` (permits one retry `Listen`), `Accepted`
    /// (permits `Connect`), `Connected` (permits `Relay`).
    bind_failed: BTreeSet<DataId>,
    accepted: BTreeSet<DataId>,
    connected: BTreeSet<DataId>,
    /// Legs asked for with `Dial`, and legs fed `Dialed`, per id.
    dial_asked: BTreeSet<(DataId, u8)>,
    dialed: BTreeSet<(DataId, u8)>,
    /// Ids fed `Relayed` (a clean end allows a plain `CloseData`).
    relayed: BTreeSet<DataId>,
    /// Ids that got `ResetData`.
    reset: BTreeSet<DataId>,
    /// Channels that were told their direction (`DataDirection`).
    directed: BTreeSet<DataId>,
    /// Transfer records that put a 426 in place of the server's 2xx.
    replaced_2xx: usize,
    /// Every byte written to the client.
    to_client: Vec<u8>,
    /// The last drain stopped early: actions may still be queued.
    queued: bool,
    full: [bool; 2],
    partial: Option<usize>,
    /// Every action seen, for failure messages.
    pub log: Vec<String>,
    /// `PassThrough` seen: the control connection went blind.
    blind: bool,
    /// Client refusal records since a line last went to the server.
    refusals: usize,
    /// Lines sent toward the server while actions were still queued.
    forwarded: usize,
    /// `530` reply lines the server sent, framed and Telnet-decoded as the
    /// core frames them (`server_lines`); `LoginFailed` records seen.
    server_530: usize,
    server_lines: LineReader,
    login_failed: usize,
    /// The last reload denied every client network.
    denied_by_reload: bool,
    /// Ids that listen for both sides; legs kept (`Keep`) per id.
    dual: BTreeSet<DataId>,
    kept: BTreeSet<(DataId, u8)>,
}

fn i(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

impl Driver {
    pub fn new(config: Config, ends: ControlEnds) -> Self {
        let config = Arc::new(config);
        let now = Instant::now();
        Self {
            session: Session::new(config.clone(), ends, now),
            config,
            ends,
            now,
            chans: Chans {
                open: BTreeMap::new(),
                closed: BTreeSet::new(),
                retried: BTreeSet::new(),
                order: Vec::new(),
            },
            shut: [false; 2],
            ended: false,
            bind_failed: BTreeSet::new(),
            accepted: BTreeSet::new(),
            connected: BTreeSet::new(),
            dial_asked: BTreeSet::new(),
            dialed: BTreeSet::new(),
            relayed: BTreeSet::new(),
            reset: BTreeSet::new(),
            directed: BTreeSet::new(),
            replaced_2xx: 0,
            to_client: Vec::new(),
            queued: false,
            full: [false; 2],
            partial: None,
            log: Vec::new(),
            blind: false,
            refusals: 0,
            forwarded: 0,
            server_530: 0,
            server_lines: LineReader::new(),
            login_failed: 0,
            denied_by_reload: false,
            dual: BTreeSet::new(),
            kept: BTreeSet::new(),
        }
    }

    /// Feed one fact, drain, write out, check.
    pub fn feed(&mut self, input: Input<'_>) {
        let was_closed = self.session.is_closed() && !self.queued;
        if let Input::Received { from, data } = input {
            assert!(data.len() <= self.session.read_budget(from), "harness fed over budget");
            if from == Side::Server {
                // Lines starting 530, an upper bound on 530 replies. Raw
                // bytes would miss one that Telnet commands split ("53",
                // IAC DM, "0") or that two reads split.
                self.server_lines.feed(data);
                self.server_lines.take_answers();
                while let Some(line) = self.server_lines.next_line() {
                    if line.is_ok_and(|l| l.starts_with(b"530")) {
                        self.server_530 += 1;
                    }
                }
            }
        }
        let pending_before =
            [self.session.pending(Side::Client).len(), self.session.pending(Side::Server).len()];
        let blind_before = self.blind;
        match input {
            Input::Failed { data, step: DataStep::Bind, .. } => {
                self.bind_failed.insert(data);
            }
            Input::Accepted { data, .. } => {
                self.accepted.insert(data);
            }
            Input::Connected { data, .. } => {
                self.connected.insert(data);
            }
            // The core ignores a Dialed it did not ask for.
            Input::Dialed { data, leg, .. } if self.dial_asked.contains(&(data, i(leg) as u8)) => {
                self.dialed.insert((data, i(leg) as u8));
                let both = [0, 1].iter().all(|l| self.dialed.contains(&(data, *l)));
                if let Some((state @ Chan::Dialing, _)) = self.chans.open.get_mut(&data) {
                    if both {
                        *state = Chan::Connecting;
                    }
                }
            }
            Input::Relayed { data, .. } => {
                self.relayed.insert(data);
            }
            _ => {}
        }
        self.log.push(format!("in  {input:?}"));
        self.session.handle_input(self.now, input);
        let mut budget = self.partial.take().unwrap_or(usize::MAX);
        self.queued = false;
        loop {
            if budget == 0 {
                self.queued = true;
                break;
            }
            let Some(action) = self.session.poll_action() else { break };
            budget -= 1;
            if was_closed {
                self.fail(&format!("action after the session closed: {action:?}"));
            }
            self.action(action);
        }
        let pending_now =
            [self.session.pending(Side::Client).len(), self.session.pending(Side::Server).len()];
        if blind_before && pending_now != pending_before {
            self.fail("control bytes after PassThrough");
        }
        // Lines that reached the server in this step: each ends a run of
        // refused lines, whose one record may come with it.
        let pending = self.session.pending(Side::Server);
        // The core ends every line it sends with CRLF; a telnet answer
        // (IAC WONT 10, say) has no CR before its 10.
        let lines =
            pending.get(pending_before[1]..).map_or(0, |new| new.windows(2).filter(|w| w == b"\r\n").count());
        // Telnet answers (no line end) may still go to the server.
        if self.denied_by_reload && lines > 0 {
            self.fail("a command reached the server after a reload denied the client's network");
        }
        self.forwarded += lines;
        if !self.queued {
            if self.refusals > 2 + self.forwarded {
                self.fail("more than one record for a run of refused lines");
            }
            if self.forwarded > 0 {
                self.refusals = 0;
                self.forwarded = 0;
            }
        }
        for side in [Side::Client, Side::Server] {
            if !self.full[i(side)] {
                self.write(side, usize::MAX);
            }
        }
        self.check();
    }

    pub fn write(&mut self, side: Side, n: usize) {
        let n = n.min(self.session.pending(side).len());
        if side == Side::Client {
            self.to_client.extend_from_slice(&self.session.pending(side)[..n]);
        }
        self.session.consume(side, n);
    }

    fn fail(&self, what: &str) -> ! {
        panic!("{what}\n{}", self.log.join("\n"));
    }

    fn action(&mut self, action: Action) {
        self.log.push(format!("out {action:?}"));
        if self.blind {
            self.fail("an action after PassThrough");
        }
        let chans = &mut self.chans;
        match &action {
            Action::Listen { data, .. } => {
                if chans.closed.contains(data) {
                    self.fail("Listen after CloseData");
                }
                if let Some(entry) = chans.open.get_mut(data) {
                    let other_side = matches!(
                        (&entry.1, &action),
                        (Action::Listen { peer: first, .. }, Action::Listen { peer, .. }) if first != peer
                    );
                    if other_side {
                        if !self.dual.insert(*data) {
                            self.fail("a third Listen side for one channel");
                        }
                    } else if !self.bind_failed.contains(data) || !chans.retried.insert(*data) {
                        self.fail("second Listen for an open channel without a bind failure");
                    }
                    *entry = (Chan::Asked, action.clone());
                } else {
                    chans.order.push(*data);
                    chans.open.insert(*data, (Chan::Asked, action.clone()));
                    if chans.open.len() > self.config.max_data_channels {
                        self.fail("more data channels open than max_data_channels");
                    }
                }
            }
            Action::Dial { data, leg, .. } => {
                if chans.closed.contains(data) {
                    self.fail("Dial after CloseData");
                }
                if !self.dial_asked.insert((*data, i(*leg) as u8)) {
                    self.fail("second Dial for one leg");
                }
                match chans.open.get(data) {
                    Some((Chan::Dialing, _)) => {}
                    Some(_) => self.fail("Dial for a channel opened by Listen"),
                    None => {
                        chans.order.push(*data);
                        chans.open.insert(*data, (Chan::Dialing, action.clone()));
                        if chans.open.len() > self.config.max_data_channels {
                            self.fail("more data channels open than max_data_channels");
                        }
                    }
                }
            }
            Action::Keep { data, leg } => {
                if !self.accepted.contains(data) {
                    self.fail("Keep not in answer to Accepted");
                }
                if !chans.open.contains_key(data) {
                    self.fail("Keep for a channel that is not open");
                }
                if !self.kept.insert((*data, i(*leg) as u8)) {
                    self.fail("second Keep for one leg");
                }
                if [0, 1].iter().all(|l| self.kept.contains(&(*data, *l))) {
                    if let Some(entry) = chans.open.get_mut(data) {
                        entry.0 = Chan::Connecting;
                    }
                }
            }
            Action::DataDirection { data, .. } => {
                if !self.config.enforce_data_direction {
                    self.fail("DataDirection without enforce_data_direction");
                }
                if !chans.open.contains_key(data) {
                    self.fail("DataDirection for a channel that is not open");
                }
                if !self.directed.insert(*data) {
                    self.fail("second DataDirection for one channel");
                }
            }
            Action::ResetData { data } => {
                let kept = [0, 1].iter().any(|l| self.kept.contains(&(*data, *l)));
                match chans.open.get(data) {
                    Some((Chan::Connecting | Chan::Relaying | Chan::Dialing, _)) => {}
                    Some(_) if kept => {}
                    Some(_) => self.fail("ResetData for a channel with no leg up"),
                    None => self.fail("ResetData for a channel that is not open"),
                }
                if !self.reset.insert(*data) {
                    self.fail("second ResetData for one channel");
                }
            }
            Action::CloseData { data } => {
                match chans.open.remove(data) {
                    None => self.fail("CloseData for a channel that is not open"),
                    // A plain close of legs that are up is a FIN: only after a
                    // clean end, or before a dual channel's relay started.
                    Some((state @ (Chan::Connecting | Chan::Relaying), _))
                        if !(self.config.kernel_data_path
                            || self.reset.contains(data)
                            || self.relayed.contains(data)
                            || self.dual.contains(data) && state == Chan::Connecting) =>
                    {
                        self.fail("a channel with legs up closed without ResetData or Relayed")
                    }
                    Some(_) => {}
                }
                chans.closed.insert(*data);
            }
            Action::Refuse { data } if !chans.open.contains_key(data) => {
                self.fail("Refuse for a channel that is not open");
            }
            Action::Connect { data, .. } => {
                if !self.accepted.contains(data) {
                    self.fail("Connect not in answer to Accepted");
                }
                match chans.open.get_mut(data) {
                    Some((state @ Chan::Listening, _)) => *state = Chan::Connecting,
                    _ => self.fail("Connect for a channel that is not listening"),
                }
            }
            Action::Relay { data } => {
                let dialed = [0, 1].iter().all(|l| self.dialed.contains(&(*data, *l)));
                let kept = [0, 1].iter().all(|l| self.kept.contains(&(*data, *l)));
                if !self.connected.contains(data) && !dialed && !kept {
                    self.fail("Relay not in answer to Connected or both legs Dialed");
                }
                match chans.open.get_mut(data) {
                    Some((state @ Chan::Connecting, _)) => *state = Chan::Relaying,
                    _ => self.fail("Relay for a channel that is not connecting"),
                }
            }
            Action::Shutdown { side } if std::mem::replace(&mut self.shut[i(*side)], true) => {
                self.fail("second Shutdown for one side");
            }
            Action::Audit(AuditEvent::SessionEnded { .. }) if std::mem::replace(&mut self.ended, true) => {
                self.fail("second SessionEnded");
            }
            Action::Audit(AuditEvent::Transfer { data, reply, server_reply, result, .. }) => {
                let client_2xx = reply.is_some_and(|c| (200..300).contains(&c));
                let cut = !matches!(
                    result,
                    TransferResult::Ok
                        | TransferResult::Failed(
                            TransferFailure::ServerReply { .. } | TransferFailure::NoDataConnection,
                        )
                );
                let kernel = self.config.kernel_data_path;
                if cut && client_2xx && !kernel {
                    self.fail("a cut transfer gave the client a 2xx");
                }
                if client_2xx
                    && !kernel
                    && !matches!(
                        result,
                        TransferResult::Ok | TransferResult::Failed(TransferFailure::NoDataConnection)
                    )
                {
                    self.fail("the client got a 2xx for a transfer that is not ok");
                }
                if matches!(result, TransferResult::Failed(TransferFailure::WrongDirection { .. }))
                    && !self.config.enforce_data_direction
                {
                    self.fail("a transfer failed the wrong way without enforce_data_direction");
                }
                if *result == TransferResult::Ok && !self.relayed.contains(data) {
                    self.fail("transfer ok without Relayed");
                }
                if *reply == Some(426) && server_reply.is_some_and(|c| (200..300).contains(&c)) {
                    self.replaced_2xx += 1;
                }
            }
            Action::PassThrough { .. } => {
                if self.config.ftps != FtpsPolicy::PassThrough {
                    self.fail("PassThrough while FTPS is refused");
                }
                if !chans.open.is_empty() {
                    self.fail("PassThrough with data channels open");
                }
                self.blind = true;
            }
            Action::Audit(AuditEvent::Refused { side: Side::Client, rule, what, .. })
                if refuses_a_client_line(rule, what) =>
            {
                self.refused(None)
            }
            Action::Audit(AuditEvent::RefusedLines { count, .. }) => self.refused(Some(*count)),
            Action::Audit(AuditEvent::LoginFailed { .. }) => {
                self.login_failed += 1;
                if self.login_failed > self.server_530 {
                    self.fail("more LoginFailed than 530 replies");
                }
            }
            Action::Audit(AuditEvent::TlsPassThrough { .. })
                if self.config.ftps != FtpsPolicy::PassThrough =>
            {
                self.fail("TlsPassThrough while FTPS is refused");
            }
            Action::Audit(_) => {}
            _ => {}
        }
    }

    /// A client refusal record: at most two per run of lines the server
    /// never saw (the run's own, and one that ends the session), checked
    /// in `feed`.
    fn refused(&mut self, count: Option<usize>) {
        self.refusals += 1;
        if let Some(count) = count {
            let max = self.config.max_refused_lines;
            if count < 2 || (max > 0 && count > max) {
                self.fail(&format!("RefusedLines with count {count} (max {max})"));
            }
        }
    }

    /// What holds after every step, once the actions are drained.
    fn check(&self) {
        if self.queued {
            return;
        }
        let closed = self.session.is_closed();
        if closed != self.ended && !self.blind {
            self.fail(&format!("is_closed() = {closed} but SessionEnded seen = {}", self.ended));
        }
        if let Some(id) = self.reset.iter().find(|id| self.chans.open.contains_key(id)) {
            self.fail(&format!("ResetData for {id:?} without its CloseData"));
        }
        if self.blind {
            if !closed {
                self.fail("not closed after PassThrough");
            }
            if self.session.read_budget(Side::Client) + self.session.read_budget(Side::Server) > 0 {
                self.fail("reads after PassThrough");
            }
            if self.session.poll_timeout().is_some() {
                self.fail("a timeout after PassThrough");
            }
        } else if closed {
            if self.shut != [true, true] {
                self.fail("closed without Shutdown for both sides");
            }
            if !self.chans.open.is_empty() {
                self.fail("closed with data channels open");
            }
        }
    }

    /// `Listening` fed: the mirror follows the core (which ignores it in
    /// other states).
    fn listening(&mut self, data: DataId) {
        if let Some((state @ Chan::Asked, _)) = self.chans.open.get_mut(&data) {
            *state = Chan::Listening;
        }
    }

    fn pick(&self, sel: u8) -> DataId {
        let order = &self.chans.order;
        if sel >= 0x80 || order.is_empty() {
            DataId(u32::from(sel & 0x7f))
        } else {
            order[order.len() - 1 - usize::from(sel) % order.len()]
        }
    }

    /// The long tick, then both sides closing: everything must be over.
    pub fn finish(&mut self) {
        self.partial = None;
        self.drain_rest();
        let far = Duration::from_secs(1000 * 365 * 86_400);
        let later = self.now.checked_add(far).unwrap_or(self.now);
        for _ in 0..16 {
            match self.session.poll_timeout() {
                Some(t) if t <= later => {
                    self.now = later;
                    self.feed(Input::Timeout);
                }
                _ => break,
            }
        }
        self.drain_rest();
        if !self.session.is_closed() {
            self.fail(&format!(
                "still open after a long tick (poll_timeout {:?})",
                self.session.poll_timeout().map(|t| t.saturating_duration_since(self.now))
            ));
        }
        self.feed(Input::Closed { from: Side::Server });
        self.feed(Input::Closed { from: Side::Client });
        self.drain_rest();
        if !self.session.is_closed() {
            self.fail("not closed after Closed from both sides");
        }
        if !self.chans.open.is_empty() {
            self.fail("data channels left open at the end");
        }
        for side in [Side::Client, Side::Server] {
            self.write(side, usize::MAX);
        }
        let text = b"426 Connection closed; transfer aborted.\r\n";
        let sent = self.to_client.windows(text.len()).filter(|w| w == text).count();
        if sent < self.replaced_2xx {
            self.fail(&format!("{} records say 426 replaced a 2xx, {sent} sent", self.replaced_2xx));
        }
    }

    fn drain_rest(&mut self) {
        while let Some(action) = self.session.poll_action() {
            self.action(action);
        }
        self.queued = false;
        self.check();
    }

    /// One record of the input; returns the rest.
    pub fn step<'a>(&mut self, input: &'a [u8]) -> &'a [u8] {
        let Some((&op, mut rest)) = input.split_first() else { return input };
        let mut arg = || {
            let (&b, r) = rest.split_first().unwrap_or((&0, &[]));
            rest = r;
            b
        };
        match op {
            b'C' | b'S' | b'c' | b's' => {
                let side = if op.eq_ignore_ascii_case(&b'C') { Side::Client } else { Side::Server };
                let (chunk, after) = if op.is_ascii_uppercase() {
                    let end = rest.iter().position(|&b| b == b'\n').map_or(rest.len(), |p| p + 1);
                    rest.split_at(end)
                } else {
                    let n = usize::from(arg()).min(rest.len());
                    rest.split_at(n)
                };
                self.received(side, chunk);
                return after;
            }
            b'L' => {
                let (id, how, p1, p2) = (self.pick(arg()), arg(), arg(), arg());
                let port = u16::from_be_bytes([p1, p2]);
                let Some((_, Action::Listen { local, .. })) = self.chans.open.get(&id) else {
                    self.feed(Input::Listening {
                        data: id,
                        local: SocketAddr::new(self.ends.server.ip(), port),
                    });
                    return rest;
                };
                let mut local = *local;
                match how % 3 {
                    0 if local.port() == 0 => local.set_port(if port == 0 { 50000 } else { port }),
                    0 => {}
                    1 => local.set_port(port),
                    _ => local = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), port),
                }
                self.listening(id);
                self.feed(Input::Listening { data: id, local });
            }
            b'A' => {
                let (id, who, p) = (self.pick(arg()), arg(), arg());
                let expected = match self.chans.open.get(&id) {
                    Some((_, Action::Listen { accept_from, .. })) => *accept_from,
                    _ => self.ends.client.ip(),
                };
                let other = if canonical(expected) == canonical(self.ends.client.ip()) {
                    self.ends.server.ip()
                } else {
                    self.ends.client.ip()
                };
                let ip = match who % 4 {
                    0 => expected,
                    1 => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 66)),
                    3 => other,
                    _ => match expected {
                        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
                        IpAddr::V6(v6) => {
                            v6.to_ipv4_mapped().map_or(IpAddr::V6(Ipv6Addr::LOCALHOST), IpAddr::V4)
                        }
                    },
                };
                let peer = SocketAddr::new(ip, 20000 + u16::from(p));
                self.feed(Input::Accepted { data: id, peer });
            }
            b'K' => {
                let id = self.pick(arg());
                let local = SocketAddr::new(self.ends.client.ip(), 41000);
                self.feed(Input::Connected { data: id, local });
            }
            b'N' => {
                let (id, leg) = (self.pick(arg()), arg());
                let leg = if leg % 2 == 0 { Side::Client } else { Side::Server };
                let mut local = match self.chans.open.get(&id) {
                    Some((_, Action::Dial { local, leg: first, .. })) if *first == leg => *local,
                    // The other leg: its asked address is not kept; the
                    // core only checks the IP.
                    _ if leg == Side::Client => self.ends.server,
                    _ => SocketAddr::new(self.ends.client.ip(), 0),
                };
                if local.port() == 0 {
                    local.set_port(45000);
                }
                self.feed(Input::Dialed { data: id, leg, local });
            }
            b'F' => {
                let (id, step, err) = (self.pick(arg()), arg(), arg());
                let step = STEPS[usize::from(step) % STEPS.len()];
                let error = ERRORS[usize::from(err) % ERRORS.len()];
                self.feed(Input::Failed { data: id, step, error });
            }
            b'R' => {
                let (id, a, b) = (self.pick(arg()), arg(), arg());
                self.feed(Input::Relayed {
                    data: id,
                    to_client: u64::from(a) << 10,
                    to_server: u64::from(b) << 10,
                });
            }
            b'G' => {
                let (id, a, b) = (self.pick(arg()), arg(), arg());
                self.feed(Input::Progress {
                    data: id,
                    to_client: u64::from(a) << 10,
                    to_server: u64::from(b) << 10,
                });
            }
            b'E' => {
                let (id, leg, err) = (self.pick(arg()), arg(), arg());
                let leg = if leg % 2 == 0 { Side::Client } else { Side::Server };
                // The daemon reports WRONG_DIRECTION only while it
                // enforces a direction.
                let error = match usize::from(err) % (ERRORS.len() + 2) {
                    5 if self.config.enforce_data_direction => WRONG_DIRECTION,
                    5 => ErrorKind::ConnectionReset,
                    6 => URGENT_DATA,
                    e => ERRORS[e],
                };
                self.feed(Input::RelayFailed { data: id, leg, error, to_client: 1024, to_server: 0 });
            }
            b'X' => {
                let side = if arg() % 2 == 0 { Side::Client } else { Side::Server };
                self.feed(Input::Closed { from: side });
            }
            b'U' => {
                let error = if arg() % 2 == 0 { ErrorKind::ConnectionRefused } else { ErrorKind::TimedOut };
                self.feed(Input::ServerUnreachable { error });
            }
            b'D' => self.feed(Input::Drain),
            b'V' => {
                let id = self.pick(arg());
                self.feed(Input::Acknowledged { data: id });
            }
            b'Y' => {
                let k = arg();
                let policy = Arc::new(reload_policy(k));
                self.denied_by_reload = k & 1 != 0;
                self.feed(Input::PolicyChanged { policy: &policy });
            }
            b'T' | b'+' => {
                let d = arg();
                let d = if d < 200 {
                    Duration::from_secs(d.into())
                } else {
                    Duration::from_secs(3600 * u64::from(d - 199))
                };
                self.now = self.now.checked_add(d).unwrap_or(self.now);
                if op == b'T' {
                    self.feed(Input::Timeout);
                }
            }
            b'W' => {
                let side = if arg() % 2 == 0 { Side::Client } else { Side::Server };
                let n = match arg() {
                    0 => usize::MAX,
                    n => usize::from(n) * 64,
                };
                self.write(side, n);
            }
            b'B' => {
                let side = if arg() % 2 == 0 { Side::Client } else { Side::Server };
                self.full[i(side)] = !self.full[i(side)];
            }
            b'P' => self.partial = Some(usize::from(arg())),
            _ => {}
        }
        rest
    }

    /// Bytes from a socket, in reads of at most `read_budget` bytes; what
    /// the budget does not take now is dropped (the shell would read it
    /// later; the fuzzer can send it again).
    fn received(&mut self, side: Side, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            let n = self.session.read_budget(side).min(chunk.len());
            if n == 0 {
                return;
            }
            self.feed(Input::Received { from: side, data: &chunk[..n] });
            chunk = &chunk[n..];
        }
    }
}

/// The rules a `Y` record reloads.
fn reload_policy(k: u8) -> PolicySet {
    let mut rules = Vec::new();
    if k & 1 != 0 {
        let all: [Net; 2] = ["0.0.0.0/0".parse().expect("a net"), "::/0".parse().expect("a net")];
        rules.push(Rule { client: all.to_vec(), action: RuleAction::Deny, ..Rule::default() });
    }
    rules.push(Rule {
        action: RuleAction::Allow,
        server_data: match (k & 4 != 0, k & 8 != 0) {
            (true, _) => ServerData::Passive,
            (false, true) => ServerData::Active,
            (false, false) => ServerData::Keep,
        },
        profile: (k & 2 != 0).then(|| "read-only".to_string()),
        ..Rule::default()
    });
    let policy = PolicySet { rules, ..PolicySet::default() };
    policy.validate().expect("the fuzz policy is valid");
    policy
}

pub fn config_from(header: &[u8]) -> (Config, ControlEnds) {
    let flags = header.first().copied().unwrap_or(0);
    let cap = header.get(1).copied().unwrap_or(0);
    let policy = header.get(2).copied();
    let mut config = Config {
        max_data_channels: usize::from(flags & 3) + 1,
        allow_privileged_data_ports: flags & 4 != 0,
        passive_address_mismatch: if flags & 8 != 0 {
            PassiveAddressPolicy::Refuse
        } else {
            PassiveAddressPolicy::Rewrite
        },
        max_reply_lines: if cap == 0 { 1000 } else { usize::from(cap) },
        ..Config::default()
    };
    if let Some(p) = policy {
        config.ftps = if p & 1 != 0 { FtpsPolicy::PassThrough } else { FtpsPolicy::Refuse };
        config.max_refused_lines = usize::from((p >> 1) & 7);
        config.enforce_data_direction = p & 0x80 != 0;
        if p & 0x70 != 0 {
            let rule = Rule {
                action: RuleAction::Allow,
                server_data: match (p & 0x10 != 0, p & 0x40 != 0) {
                    (true, _) => ServerData::Passive,
                    (false, true) => ServerData::Active,
                    (false, false) => ServerData::Keep,
                },
                profile: (p & 0x20 != 0).then(|| "read-only".to_string()),
                ..Rule::default()
            };
            let policy = PolicySet { rules: vec![rule], ..PolicySet::default() };
            policy.validate().expect("the fuzz policy is valid");
            config.policy = Arc::new(policy);
        }
    }
    // The daemon refuses at start what pinholes cannot do (main.rs,
    // pinhole_conflicts): enforcement, FTPS pass-through, conversions.
    if header.get(3).is_some_and(|m| m & 1 != 0) {
        config.kernel_data_path = true;
        config.enforce_data_direction = false;
        config.ftps = FtpsPolicy::Refuse;
        config.policy = Arc::new(PolicySet::default());
    }
    let t = if flags & 16 != 0 {
        Some(Duration::ZERO)
    } else if flags & 32 != 0 {
        Some(Duration::MAX)
    } else {
        None
    };
    if let Some(t) = t {
        config.data_accept_timeout = t;
        config.data_connect_timeout = t;
        config.greeting_timeout = t;
        config.idle_timeout = t;
        config.data_idle_timeout = t;
    }
    let ends = if flags & 64 != 0 {
        ControlEnds {
            client: "[2001:db8::10]:40000".parse().unwrap(),
            server: "[2001:db8:1::10]:21".parse().unwrap(),
        }
    } else if flags & 128 != 0 {
        ControlEnds {
            client: "[::ffff:192.0.2.10]:40000".parse().unwrap(),
            server: "[::ffff:198.51.100.10]:21".parse().unwrap(),
        }
    } else {
        ControlEnds {
            client: "192.0.2.10:40000".parse().unwrap(),
            server: "198.51.100.10:21".parse().unwrap(),
        }
    };
    (config, ends)
}

/// Whether a client-side `Refused` record is about a client line (and so
/// belongs to a run of refused lines, or ends the session). Two are not:
/// the channel cap refusing a server's 227/229 (`what` is the reply code;
/// the PASV/EPSV it answers reached the server, so it neither starts nor
/// ends a run, and any number of them may fall inside one run), and a data
/// byte the wrong way (`data-direction`, from the relay). A PORT/EPRT the
/// cap refuses is a refused line: its `what` is the command line.
fn refuses_a_client_line(rule: &str, what: &str) -> bool {
    let passive_reply = rule == "data-channel-cap" && matches!(what, "227" | "229");
    !(passive_reply || rule == "data-direction")
}

pub fn run(data: &[u8]) {
    let (header, mut rest) = match data {
        [b'#', a, b, rest @ ..] => (&[*a, *b][..], rest),
        [b'%', a, b, c, rest @ ..] => (&[*a, *b, *c][..], rest),
        [b'&', a, b, c, d, rest @ ..] => (&[*a, *b, *c, *d][..], rest),
        _ => (&[][..], data),
    };
    let (config, ends) = config_from(header);
    let mut driver = Driver::new(config, ends);
    let mut steps = 0;
    while !rest.is_empty() && steps < 4096 {
        rest = driver.step(rest);
        steps += 1;
    }
    driver.finish();
}

/// IPv4-mapped IPv6 addresses as IPv4, as the core compares them.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
