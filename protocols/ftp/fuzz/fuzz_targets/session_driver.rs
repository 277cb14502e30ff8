//! Drives one `Session` from fuzz input and checks its invariants.
//!
//! # Input format
//!
//! Optional header `#` + flags byte + cap byte (otherwise `Config::default()`):
//! flags bits 0–1: `max_data_channels - 1`; bit 2: allow privileged data
//! ports; bit 3: `PassiveAddressPolicy::Refuse`; bit 4: all timeouts zero
//! (data idle included); bit 5: all timeouts `Duration::MAX`; bit 6: IPv6 control ends; bit 7:
//! IPv4-mapped IPv6 control ends. Cap byte: `max_reply_lines` (0: 1000).
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
//! | `A` id who p1     | `Accepted`: who 0 = the expected peer, 1 = a stranger, 2 = expected as IPv4-mapped / unmapped |
//! | `K` id            | `Connected`                                                       |
//! | `F` id step err   | `Failed` (step % 5, err: AddrInUse, AddrNotAvailable, ConnectionRefused, TimedOut, ConnectionReset) |
//! | `R` id a b        | `Relayed { to_client: a, to_server: b }` (KiB)                    |
//! | `G` id a b        | `Progress { to_client: a, to_server: b }` (KiB)                   |
//! | `E` id leg err    | `RelayFailed` (leg even: client, odd: server; err as for `F`), counts 1 KiB / 0 |
//! | `X` side          | `Closed { from }` (even: client, odd: server)                     |
//! | `U`               | `ServerUnreachable`                                               |
//! | `D`               | `Drain`                                                           |
//! | `T` d             | advance the clock by d (≤199: seconds, else hours) and feed `Timeout` |
//! | `+` d             | advance the clock only                                            |
//! | `W` side n        | the socket takes n*64 bytes of `pending(side)` (0: all)            |
//! | `B` side          | toggle "socket full" for that side (not written after each step)  |
//! | `P` k             | the next drain stops after k actions (the rest stays queued)      |
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
//! - `Shutdown` at most once per side; `SessionEnded` at most once, and the
//!   session reports `is_closed()` exactly once it ended; nothing after that.
//! - The harness never feeds more than `read_budget(side)` bytes.
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

use ftpgate_proto::{
    Action, AuditEvent, Config, ControlEnds, DataId, DataStep, Input, PassiveAddressPolicy, Session, Side,
    TransferFailure, TransferResult,
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
    /// Ids fed `Relayed` (a clean end allows a plain `CloseData`).
    relayed: BTreeSet<DataId>,
    /// Ids that got `ResetData`.
    reset: BTreeSet<DataId>,
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
            relayed: BTreeSet::new(),
            reset: BTreeSet::new(),
            replaced_2xx: 0,
            to_client: Vec::new(),
            queued: false,
            full: [false; 2],
            partial: None,
            log: Vec::new(),
        }
    }

    /// Feed one fact, drain, write out, check.
    pub fn feed(&mut self, input: Input<'_>) {
        let was_closed = self.session.is_closed() && !self.queued;
        if let Input::Received { from, data } = input {
            assert!(data.len() <= self.session.read_budget(from), "harness fed over budget");
        }
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
        let chans = &mut self.chans;
        match &action {
            Action::Listen { data, .. } => {
                if chans.closed.contains(data) {
                    self.fail("Listen after CloseData");
                }
                if let Some(entry) = chans.open.get_mut(data) {
                    if !self.bind_failed.contains(data) || !chans.retried.insert(*data) {
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
            Action::ResetData { data } => {
                match chans.open.get(data) {
                    Some((Chan::Connecting | Chan::Relaying, _)) => {}
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
                    Some((Chan::Connecting | Chan::Relaying, _))
                        if !self.reset.contains(data) && !self.relayed.contains(data) =>
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
                if !self.connected.contains(data) {
                    self.fail("Relay not in answer to Connected");
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
                let cut = match result {
                    TransferResult::Ok => false,
                    TransferResult::Failed(
                        TransferFailure::ServerReply { .. } | TransferFailure::NoDataConnection,
                    ) => false,
                    _ => true,
                };
                if cut && client_2xx {
                    self.fail("a cut transfer gave the client a 2xx");
                }
                if client_2xx
                    && !matches!(
                        result,
                        TransferResult::Ok | TransferResult::Failed(TransferFailure::NoDataConnection)
                    )
                {
                    self.fail("the client got a 2xx for a transfer that is not ok");
                }
                if *result == TransferResult::Ok && !self.relayed.contains(data) {
                    self.fail("transfer ok without Relayed");
                }
                if *reply == Some(426) && server_reply.is_some_and(|c| (200..300).contains(&c)) {
                    self.replaced_2xx += 1;
                }
            }
            Action::Audit(_) => {}
            _ => {}
        }
    }

    /// What holds after every step, once the actions are drained.
    fn check(&self) {
        if self.queued {
            return;
        }
        let closed = self.session.is_closed();
        if closed != self.ended {
            self.fail(&format!("is_closed() = {closed} but SessionEnded seen = {}", self.ended));
        }
        if let Some(id) = self.reset.iter().find(|id| self.chans.open.contains_key(id)) {
            self.fail(&format!("ResetData for {id:?} without its CloseData"));
        }
        if closed {
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
                let ip = match who % 3 {
                    0 => expected,
                    1 => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 66)),
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
                let error = ERRORS[usize::from(err) % ERRORS.len()];
                self.feed(Input::RelayFailed { data: id, leg, error, to_client: 1024, to_server: 0 });
            }
            b'X' => {
                let side = if arg() % 2 == 0 { Side::Client } else { Side::Server };
                self.feed(Input::Closed { from: side });
            }
            b'U' => self.feed(Input::ServerUnreachable { error: ErrorKind::ConnectionRefused }),
            b'D' => self.feed(Input::Drain),
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

pub fn config_from(header: &[u8]) -> (Config, ControlEnds) {
    let flags = header.first().copied().unwrap_or(0);
    let cap = header.get(1).copied().unwrap_or(0);
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

pub fn run(data: &[u8]) {
    let (header, mut rest) = match data {
        [b'#', a, b, rest @ ..] => (&[*a, *b][..], rest),
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
