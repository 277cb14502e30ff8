//! Replays of real FTP conversations (vsftpd, proftpd, pure-ftpd) recorded
//! in the lab by `lab/record-transcripts` (fixtures in `tests/fixtures/`,
//! format in `lab/transcript_client.py`).
//!
//! Each fixture drives one `Session` the way the daemon would: the bytes
//! each side sent, in the recorded order (once as recorded, once byte by
//! byte), every `Listen` answered with `Listening` on the requested
//! address, `Accepted` from the peer the recording saw, `Connected`, and
//! `Relayed` with the recorded byte counts. The checks:
//!
//! - every client line reaches the server byte for byte, and every server
//!   reply reaches the client byte for byte and in order, except the lines
//!   the core documents as answered locally (LIFECYCLE.md, "Refused
//!   locally"): those are asserted to be answered by the gateway and never
//!   forwarded, and the real server's answer to them is not replayed;
//! - before each client command, the client has everything the server said
//!   so far (the real client saw it before it went on);
//! - each 227/229/PORT/EPRT opens exactly one data channel, at the announced
//!   address, waiting for the right peer; `Accepted` leads to the `Connect`
//!   of LIFECYCLE.md's table, `Connected` to `Relay`;
//! - each transfer gives one `Audit(Transfer)` with the command (and REST
//!   offset), the byte counts, the final reply and the result;
//! - after QUIT/221 and the server's EOF the session is closed, every data
//!   channel closed.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ftpgate_proto::{
    Action, AuditEvent, Config, ControlEnds, DataId, DataMode, Input, Session, Side, TransferFailure,
    TransferResult,
};

/// One recorded event.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    /// Bytes the client sent.
    Client(Vec<u8>),
    /// Bytes the server sent (one line each).
    Server(Vec<u8>),
    /// Passive: the client's data socket `local` connected to `remote`.
    Connect { local: SocketAddr, remote: SocketAddr },
    /// Active: the server connected from `peer` to the client's `local`.
    Accept { peer: SocketAddr, local: SocketAddr },
    /// The data connection ended; bytes each way.
    Done { to_client: u64, to_server: u64 },
    /// The server closed the control connection.
    ServerEof,
}

#[derive(Debug)]
struct Fixture {
    name: &'static str,
    ends: ControlEnds,
    events: Vec<Ev>,
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'\\') => out.push(b'\\'),
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'x') => {
                let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            other => panic!("bad escape {other:?} in {s:?}"),
        }
        i += 2;
    }
    out
}

fn parse(name: &'static str, text: &str) -> Fixture {
    let mut ends = None;
    let mut events = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (tag, rest) = line.split_once(": ").unwrap_or_else(|| panic!("{name}: bad line {line:?}"));
        match tag {
            "E" => {
                let mut client = None;
                let mut server = None;
                for kv in rest.split(' ') {
                    match kv.split_once('=') {
                        Some(("client", a)) => client = Some(a.parse().unwrap()),
                        Some(("server", a)) => server = Some(a.parse().unwrap()),
                        _ => panic!("{name}: bad E line {line:?}"),
                    }
                }
                ends = Some(ControlEnds { client: client.unwrap(), server: server.unwrap() });
            }
            "C" => events.push(Ev::Client(unescape(rest))),
            "S" => events.push(Ev::Server(unescape(rest))),
            "EOF" => {
                assert_eq!(rest, "server");
                events.push(Ev::ServerEof);
            }
            "D" => {
                let words: Vec<&str> = rest.split(' ').collect();
                events.push(match words[..] {
                    ["connect", local, "->", remote] => {
                        Ev::Connect { local: local.parse().unwrap(), remote: remote.parse().unwrap() }
                    }
                    ["accept", peer, "->", local] => {
                        Ev::Accept { peer: peer.parse().unwrap(), local: local.parse().unwrap() }
                    }
                    ["done", c, s] => Ev::Done {
                        to_client: c.strip_prefix("to_client=").unwrap().parse().unwrap(),
                        to_server: s.strip_prefix("to_server=").unwrap().parse().unwrap(),
                    },
                    _ => panic!("{name}: bad D line {line:?}"),
                });
            }
            _ => panic!("{name}: unknown tag in {line:?}"),
        }
    }
    Fixture { name, ends: ends.unwrap_or_else(|| panic!("{name}: no E line")), events }
}

/// The documented local answers (LIFECYCLE.md, "Refused locally") for the
/// kinds of lines these recordings contain: a verb that is not 3-4 letters
/// never reaches the server.
fn answered_locally(line: &[u8]) -> Option<&'static [u8]> {
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    let verb = line.split(|&b| b == b' ').next().unwrap_or_default();
    let ok = (3..=4).contains(&verb.len()) && verb.iter().all(u8::is_ascii_alphabetic);
    (!ok).then_some(b"500 Syntax error, command unrecognized.\r\n")
}

fn verb(line: &[u8]) -> String {
    let v = line.split(|&b| b == b' ' || b == b'\r').next().unwrap_or_default();
    String::from_utf8_lossy(v).to_ascii_uppercase()
}

fn arg(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\r\n").unwrap();
    match line.iter().position(|&b| b == b' ') {
        Some(i) => String::from_utf8_lossy(&line[i + 1..]).into_owned(),
        None => String::new(),
    }
}

/// `(h1,h2,h3,h4,p1,p2)` anywhere in a 227 line (independent of the core's
/// parser).
fn parse_227(line: &[u8]) -> SocketAddr {
    let text = String::from_utf8_lossy(line);
    let inner = text.split('(').nth(1).and_then(|t| t.split(')').next()).expect("227 without (...)");
    let n: Vec<u8> = inner.split(',').map(|x| x.trim().parse().unwrap()).collect();
    assert_eq!(n.len(), 6, "227 numbers in {text:?}");
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(n[0], n[1], n[2], n[3])), u16::from(n[4]) << 8 | u16::from(n[5]))
}

/// `(|||port|)` in a 229 line.
fn parse_229(line: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(line);
    let inner = text.split("(|||").nth(1).and_then(|t| t.split("|)").next()).expect("229 without (|||p|)");
    inner.parse().unwrap()
}

/// The client's own data address in PORT/EPRT.
/// The PORT/EPRT line the gateway sends for a listener at `local`.
fn active_line(verb: &str, local: SocketAddr) -> Vec<u8> {
    match (verb, local.ip()) {
        ("PORT", IpAddr::V4(ip)) => {
            let [a, b, c, d] = ip.octets();
            format!("PORT {a},{b},{c},{d},{},{}\r\n", local.port() >> 8, local.port() & 255).into_bytes()
        }
        (_, ip) => {
            let family = if ip.is_ipv4() { 1 } else { 2 };
            format!("EPRT |{family}|{ip}|{}|\r\n", local.port()).into_bytes()
        }
    }
}

fn parse_active(line: &[u8]) -> SocketAddr {
    let a = arg(line);
    if verb(line) == "PORT" {
        let n: Vec<u8> = a.split(',').map(|x| x.parse().unwrap()).collect();
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(n[0], n[1], n[2], n[3])),
            u16::from(n[4]) << 8 | u16::from(n[5]),
        )
    } else {
        let f: Vec<&str> = a.split('|').collect();
        assert_eq!(f[1], "1", "EPRT family");
        SocketAddr::new(f[2].parse().unwrap(), f[3].parse().unwrap())
    }
}

/// A transfer as the recording says it went.
#[derive(Debug, PartialEq, Eq)]
struct ExpectedTransfer {
    mode: DataMode,
    command: String,
    to_client: u64,
    to_server: u64,
    reply: u16,
    result: TransferResult,
}

/// A transfer command awaiting its final reply: mode, audit label, and the
/// bytes of its data connection once it is over.
type OpenTransfer = (DataMode, String, Option<(u64, u64)>);

/// The model shell: executes the core's actions like the daemon would and
/// records everything.
struct Shell {
    s: Session,
    now: Instant,
    byte_by_byte: bool,
    to_client: Vec<u8>,
    to_server: Vec<u8>,
    actions: Vec<Action>,
    /// Every Listen, in order: (data, local, accept_from, peer side).
    listens: Vec<(DataId, SocketAddr, IpAddr, Side)>,
    closed: BTreeSet<DataId>,
}

impl Shell {
    fn new(ends: ControlEnds, byte_by_byte: bool) -> Self {
        let now = Instant::now();
        Self {
            s: Session::new(Arc::new(Config::default()), ends, now),
            now,
            byte_by_byte,
            to_client: Vec::new(),
            to_server: Vec::new(),
            actions: Vec::new(),
            listens: Vec::new(),
            closed: BTreeSet::new(),
        }
    }

    /// Feed one fact, execute what the core asks (answer every Listen with
    /// Listening on the requested address), write out what is pending.
    fn feed(&mut self, input: Input<'_>) -> Vec<Action> {
        self.s.handle_input(self.now, input);
        let mut new = Vec::new();
        for _ in 0..1000 {
            let Some(a) = self.s.poll_action() else { break };
            match a {
                Action::Listen { data, local, accept_from, peer } => {
                    assert!(!self.closed.contains(&data), "Listen after CloseData");
                    // Port 0: the kernel picks one (here, one per channel).
                    let local = match local.port() {
                        0 => SocketAddr::new(local.ip(), 50_000 + data.0 as u16),
                        _ => local,
                    };
                    self.listens.push((data, local, accept_from, peer));
                    // Allowed from inside the drain (crate docs, step 2).
                    self.s.handle_input(self.now, Input::Listening { data, local });
                }
                Action::CloseData { data } => {
                    assert!(self.listens.iter().any(|l| l.0 == data), "CloseData without Listen");
                    assert!(self.closed.insert(data), "CloseData twice for {data:?}");
                }
                _ => {}
            }
            new.push(a);
        }
        assert_eq!(self.s.poll_action(), None, "action drain did not end");
        for side in [Side::Client, Side::Server] {
            assert_eq!(self.s.pending_urgent(side), None, "no ABOR in these recordings");
            let bytes = self.s.pending(side).to_vec();
            self.s.consume(side, bytes.len());
            match side {
                Side::Client => self.to_client.extend_from_slice(&bytes),
                Side::Server => self.to_server.extend_from_slice(&bytes),
            }
        }
        self.actions.extend(new.iter().cloned());
        new
    }

    /// Bytes read from a control socket, never more than `read_budget`.
    fn received(&mut self, from: Side, bytes: &[u8]) -> Vec<Action> {
        let mut rest = bytes;
        let mut new = Vec::new();
        while !rest.is_empty() {
            let budget = self.s.read_budget(from);
            assert!(
                budget > 0,
                "the core stopped reading {from:?} with {:?} unread",
                String::from_utf8_lossy(rest)
            );
            let n = if self.byte_by_byte { 1 } else { budget.min(rest.len()) };
            new.extend(self.feed(Input::Received { from, data: &rest[..n] }));
            rest = &rest[n..];
        }
        new
    }

    fn current(&self) -> (DataId, SocketAddr, IpAddr, Side) {
        let open: Vec<_> = self.listens.iter().filter(|l| !self.closed.contains(&l.0)).collect();
        assert_eq!(open.len(), 1, "expected exactly one open data channel, listens {:?}", self.listens);
        *open[0]
    }
}

/// Everything observable of one run, to compare the two segmentations.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    to_client: Vec<u8>,
    to_server: Vec<u8>,
    actions: Vec<Action>,
}

fn replay(fx: &Fixture, byte_by_byte: bool) -> Outcome {
    let name = fx.name;
    let client_ip = fx.ends.client.ip();
    let server_ip = fx.ends.server.ip();
    let mut sh = Shell::new(fx.ends, byte_by_byte);

    // What each side must end up with.
    let mut want_client: Vec<u8> = Vec::new();
    let mut want_server: Vec<u8> = Vec::new();
    let mut want_transfers: Vec<ExpectedTransfer> = Vec::new();
    let mut data_commands = 0usize;
    let mut local_answers = 0usize;
    let mut unrecorded_refusals = 0usize;

    // Conversation state as the recording shows it.
    let mut last_cmd: Vec<u8> = Vec::new();
    // Inside the server's answer to a line the gateway answered itself.
    let mut skipping_reply = false;
    // Inside a multi-line reply with this code.
    let mut in_multiline: Option<Vec<u8>> = None;
    let mut rest_offset: Option<String> = None;
    // The transfer command awaiting its final reply: (mode, label, bytes).
    let mut transfer: Option<OpenTransfer> = None;
    let mut mode: Option<DataMode> = None;
    let mut relaying: Option<DataId> = None;

    for (i, ev) in fx.events.iter().enumerate() {
        let at = format!("{name} event {i} {ev:?}");
        // Time moves per recorded event (not per read, so both segmentations
        // see the same clock).
        sh.now += Duration::from_millis(1);
        match ev {
            Ev::Client(line) => {
                // The real client saw every reply so far before sending this.
                assert_eq!(
                    String::from_utf8_lossy(&sh.to_client),
                    String::from_utf8_lossy(&want_client),
                    "{at}: the client is missing replies"
                );
                let before = sh.listens.len();
                let new = sh.received(Side::Client, line);
                if let Some(answer) = answered_locally(line) {
                    want_client.extend_from_slice(answer);
                    local_answers += 1;
                    skipping_reply = true;
                    // A run of refused lines is recorded once, when it ends.
                    unrecorded_refusals += 1;
                    let _ = new;
                    assert_eq!(sh.to_client, want_client, "{at}: answered by the gateway at once");
                    assert_eq!(sh.to_server, want_server, "{at}: never forwarded");
                    continue;
                }
                let v = verb(line);
                if v == "PORT" || v == "EPRT" {
                    // The server is told the gateway's port on the client's
                    // address (`active` in the core), in the same form.
                    data_commands += 1;
                    assert_eq!(sh.listens.len(), before + 1, "{at}: one listener per {v}");
                    let (_, local, accept_from, peer) = *sh.listens.last().unwrap();
                    let announced = parse_active(line);
                    assert_eq!(local.ip(), announced.ip(), "{at}: listen on the client's address");
                    assert_ne!(local.port(), announced.port(), "{at}: at a port of the gateway's");
                    assert_eq!((accept_from, peer), (server_ip, Side::Server), "{at}");
                    want_server.extend_from_slice(&active_line(&v, local));
                    mode = Some(DataMode::Active);
                } else {
                    want_server.extend_from_slice(line);
                }
                if unrecorded_refusals > 0 {
                    let count = std::mem::take(&mut unrecorded_refusals);
                    assert!(
                        new.iter().any(|a| match a {
                            Action::Audit(AuditEvent::Refused { side: Side::Client, .. }) => count == 1,
                            Action::Audit(AuditEvent::RefusedLines { count: n, .. }) => *n == count,
                            _ => false,
                        }),
                        "{at}: the {count} refused line(s) before it are audited once it passes"
                    );
                }
                assert_eq!(
                    String::from_utf8_lossy(&sh.to_server),
                    String::from_utf8_lossy(&want_server),
                    "{at}: the line reaches the server at once, unchanged but for an active port"
                );
                match v.as_str() {
                    "PASV" | "EPSV" => mode = Some(DataMode::Passive),
                    "REST" => rest_offset = Some(arg(line)),
                    "RETR" | "STOR" | "STOU" | "APPE" | "LIST" | "NLST" | "MLSD" => {
                        let mut label = v.clone();
                        let a = arg(line);
                        if !a.is_empty() {
                            label = format!("{label} {a}");
                        }
                        if let Some(off) = rest_offset.take() {
                            label = format!("{label} (REST {off})");
                        }
                        transfer = Some((mode.expect("transfer without a data command"), label, None));
                    }
                    _ => {}
                }
                if v != "REST" {
                    rest_offset = None;
                }
                assert_eq!(sh.listens.len(), before + usize::from(v == "PORT" || v == "EPRT"), "{at}");
                last_cmd = line.clone();
            }
            Ev::Server(line) => {
                let code = line.get(..3).unwrap_or_default();
                let sep = line.get(3).copied();
                let last_line_of_reply = match &in_multiline {
                    Some(c) => c == code && sep == Some(b' '),
                    None => sep == Some(b' '),
                };
                if in_multiline.is_none() && sep == Some(b'-') {
                    in_multiline = Some(code.to_vec());
                } else if last_line_of_reply {
                    in_multiline = None;
                }
                if skipping_reply {
                    // The real server's answer to a line the gateway kept:
                    // with the gateway in the path it is never sent.
                    skipping_reply = !last_line_of_reply;
                    continue;
                }
                let before = sh.listens.len();
                sh.received(Side::Server, line);
                // FTPS is refused (the default), so FEAT no longer
                // advertises it (RFC 4217 features).
                let tls_feature = verb(&last_cmd) == "FEAT"
                    && in_multiline.is_some()
                    && ["AUTH", "PBSZ", "PROT", "CCC"].contains(&verb(line.trim_ascii_start()).as_str());
                if !tls_feature {
                    want_client.extend_from_slice(line);
                }
                let c = std::str::from_utf8(code).unwrap();
                if !last_line_of_reply {
                    continue;
                }
                let last = verb(&last_cmd);
                match (c, last.as_str()) {
                    ("227", "PASV") | ("229", "EPSV") => {
                        data_commands += 1;
                        assert_eq!(sh.listens.len(), before + 1, "{at}: one listener per {c}");
                        let (_, local, accept_from, peer) = *sh.listens.last().unwrap();
                        let announced = if c == "227" {
                            parse_227(line)
                        } else {
                            SocketAddr::new(server_ip, parse_229(line))
                        };
                        assert_eq!(local, announced, "{at}: listen where the server announced");
                        assert_eq!((accept_from, peer), (client_ip, Side::Client), "{at}");
                        // Released unchanged once listening.
                        assert!(sh.to_client.ends_with(line), "{at}: the {c} goes out unchanged");
                    }
                    _ => assert_eq!(sh.listens.len(), before, "{at}: no listener"),
                }
                if !c.starts_with('1') {
                    if let Some((mode, label, bytes)) = transfer.take() {
                        let reply: u16 = c.parse().unwrap();
                        let ok = (200..300).contains(&reply) && bytes.is_some();
                        let (to_client, to_server) = bytes.unwrap_or((0, 0));
                        let result = match (ok, reply) {
                            (true, _) => TransferResult::Ok,
                            (false, 200..=299) => TransferResult::Failed(TransferFailure::NoDataConnection),
                            (false, code) => TransferResult::Failed(TransferFailure::ServerReply { code }),
                        };
                        want_transfers.push(ExpectedTransfer {
                            mode,
                            command: label,
                            to_client,
                            to_server,
                            reply,
                            result,
                        });
                    }
                }
            }
            Ev::Connect { local, remote } => {
                let (data, listen, _, peer) = sh.current();
                assert_eq!(
                    (listen, peer),
                    (*remote, Side::Client),
                    "{at}: the client connects to our listener"
                );
                let new = sh.feed(Input::Accepted { data, peer: *local });
                let want = Action::Connect { data, local: SocketAddr::new(client_ip, 0), remote: *remote };
                assert_eq!(new.iter().find(|a| matches!(a, Action::Connect { .. })), Some(&want), "{at}");
                // The recording does not show the kernel's source port.
                let new = sh.feed(Input::Connected { data, local: SocketAddr::new(client_ip, 0) });
                assert!(new.contains(&Action::Relay { data }), "{at}: relay after Connected");
                relaying = Some(data);
            }
            Ev::Accept { peer, local } => {
                let (data, listen, _, side) = sh.current();
                assert_eq!(
                    (listen.ip(), side),
                    (local.ip(), Side::Server),
                    "{at}: the server connects to our listener"
                );
                let new = sh.feed(Input::Accepted { data, peer: *peer });
                let want = Action::Connect { data, local: *peer, remote: *local };
                assert_eq!(new.iter().find(|a| matches!(a, Action::Connect { .. })), Some(&want), "{at}");
                let new = sh.feed(Input::Connected { data, local: *peer });
                assert!(new.contains(&Action::Relay { data }), "{at}: relay after Connected");
                relaying = Some(data);
            }
            Ev::Done { to_client, to_server } => {
                let data = relaying.take().expect("done without a connected data channel");
                let new = sh.feed(Input::Relayed { data, to_client: *to_client, to_server: *to_server });
                assert!(new.contains(&Action::CloseData { data }), "{at}: the channel closes after Relayed");
                if let Some((_, _, bytes)) = transfer.as_mut() {
                    *bytes = Some((*to_client, *to_server));
                }
            }
            Ev::ServerEof => {
                sh.feed(Input::Closed { from: Side::Server });
            }
        }
        // Never anything the recording does not show, never out of order.
        assert!(want_client.starts_with(&sh.to_client), "{at}: the client got something unexpected");
        assert!(want_server.starts_with(&sh.to_server), "{at}: the server got something unexpected");
    }

    assert_eq!(fx.events.last(), Some(&Ev::ServerEof), "{name}: ends with the server's EOF");
    assert_eq!(String::from_utf8_lossy(&sh.to_client), String::from_utf8_lossy(&want_client), "{name}");
    assert_eq!(String::from_utf8_lossy(&sh.to_server), String::from_utf8_lossy(&want_server), "{name}");
    assert!(want_client.ends_with(b"\r\n") && verb(&last_cmd) == "QUIT", "{name}: QUIT last");
    assert!(sh.s.is_closed(), "{name}: closed after QUIT/221 and EOF");
    assert_eq!(sh.s.poll_timeout(), None, "{name}: no timer left");
    let listened: BTreeSet<DataId> = sh.listens.iter().map(|l| l.0).collect();
    assert_eq!(listened, sh.closed, "{name}: every data channel closed");
    assert_eq!(sh.listens.len(), data_commands, "{name}: one listener per data command");
    for side in [Side::Client, Side::Server] {
        assert!(sh.actions.contains(&Action::Shutdown { side }), "{name}: {side:?} shut down");
    }

    // Audit records.
    let logins: Vec<_> =
        sh.actions.iter().filter(|a| matches!(a, Action::Audit(AuditEvent::LoggedIn { .. }))).collect();
    assert_eq!(logins, [&Action::Audit(AuditEvent::LoggedIn { user: "anonymous".into() })], "{name}");
    let refused =
        sh.actions.iter().filter(|a| matches!(a, Action::Audit(AuditEvent::Refused { .. }))).count();
    assert_eq!(refused, local_answers, "{name}: refusals");
    assert!(
        !sh.actions.iter().any(|a| matches!(a, Action::Audit(AuditEvent::ReplyRewritten { .. }))),
        "{name}: nothing rewritten"
    );
    let transfers: Vec<ExpectedTransfer> = sh
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Audit(AuditEvent::Transfer {
                mode,
                user,
                command,
                path,
                rest,
                to_client,
                to_server,
                reply,
                result,
                ..
            }) => {
                assert_eq!(user.as_deref(), Some("anonymous"), "{name}");
                let mut label = command.clone();
                if let Some(path) = path {
                    label = format!("{label} {path}");
                }
                if let Some(off) = rest {
                    label = format!("{label} (REST {off})");
                }
                Some(ExpectedTransfer {
                    mode: *mode,
                    command: label,
                    to_client: *to_client,
                    to_server: *to_server,
                    reply: reply.expect("final reply known"),
                    result: *result,
                })
            }
            _ => None,
        })
        .collect();
    assert_eq!(transfers, want_transfers, "{name}: one Transfer record per transfer");
    assert!(!want_transfers.is_empty());
    assert!(matches!(sh.actions.last(), Some(Action::Audit(AuditEvent::SessionEnded { .. }))), "{name}");

    Outcome { to_client: sh.to_client, to_server: sh.to_server, actions: sh.actions }
}

fn check(fx: &Fixture) {
    let whole = replay(fx, false);
    let split = replay(fx, true);
    assert_eq!(whole, split, "{}: byte-by-byte replay differs", fx.name);
}

macro_rules! replay_tests {
    ($($test:ident => $file:literal,)*) => {
        $(
            #[test]
            fn $test() {
                check(&parse($file, include_str!(concat!("fixtures/", $file))));
            }
        )*

        /// Every fixture in tests/fixtures has a test.
        #[test]
        fn every_fixture_is_replayed() {
            let listed: BTreeSet<&str> = [$($file),*].into_iter().collect();
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
            let found: BTreeSet<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".txt"))
                .collect();
            let found: BTreeSet<&str> = found.iter().map(String::as_str).collect();
            assert_eq!(found, listed);
        }
    };
}

replay_tests! {
    vsftpd_basic => "vsftpd-basic.txt",
    vsftpd_passive => "vsftpd-passive.txt",
    vsftpd_active => "vsftpd-active.txt",
    proftpd_basic => "proftpd-basic.txt",
    proftpd_passive => "proftpd-passive.txt",
    proftpd_active => "proftpd-active.txt",
    pure_ftpd_basic => "pure-ftpd-basic.txt",
    pure_ftpd_passive => "pure-ftpd-passive.txt",
    pure_ftpd_active => "pure-ftpd-active.txt",
}

#[test]
fn unescape_round_trips_the_recorder_escapes() {
    assert_eq!(unescape(r"a\\b\r\n\t\xff\x00"), b"a\\b\r\n\t\xff\x00");
}
