//! From segments and audit records to a ladder: the TCP connections with
//! their real endpoints and the socket that handled each at the gateway,
//! and the events (opens, FTP commands and replies, closes, ftpgate's own
//! decisions) in time order.
//!
//! Lifelines: 0 is the client side, 1..=n the gateways, n+1 the server side.
//!
//! Which socket handled a connection follows from who opened it, on which
//! interface, and whether the gateway answered:
//!
//! | seen on           | SYN from          | gateway's socket                              |
//! |-------------------|-------------------|-----------------------------------------------|
//! | client side, :21  | client            | TPROXY redirect to the listener (:2121)       |
//! | client side       | client            | foreign listener, via the socket-match divert |
//! | server side       | server (active)   | foreign listener, via the socket-match divert |
//! | either side       | gateway           | foreign connect (IP_TRANSPARENT source)       |
//! | both sides, same ISN | —              | none: the kernel forwarded it                 |
//!
//! A terminated connection has a fresh initial sequence number on each
//! side (two TCP stacks); a forwarded one keeps its ISN across the gateway.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::capture::Segment;
use crate::gatelog::{Kind, Record};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// Between the client side and the gateway.
    ClientSide,
    /// Between the gateway and the server side.
    ServerSide,
    /// Through the gateway, not terminated: seen on both interfaces alike.
    Forwarded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Control,
    Data,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Accepted,
    Reset,
    Unanswered,
    /// The capture never saw the SYN.
    NotSeen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    TproxyRedirect,
    ForeignListener,
    ForeignConnect,
    KernelForwarded,
    NoSocket,
    Stray,
    Unknown,
}

impl SocketKind {
    pub fn key(self) -> &'static str {
        match self {
            Self::TproxyRedirect => "tproxy-redirect",
            Self::ForeignListener => "foreign-listener",
            Self::ForeignConnect => "foreign-connect",
            Self::KernelForwarded => "kernel-forwarded",
            Self::NoSocket => "no-socket",
            Self::Stray => "stray",
            Self::Unknown => "unknown",
        }
    }
}

/// One TCP connection as one gateway saw it.
#[derive(Debug, Clone)]
pub struct Conn {
    /// Counted from 1 in order of the first segment.
    pub id: usize,
    pub gateway: usize,
    pub leg: Leg,
    pub role: Role,
    pub initiator: SocketAddr,
    pub responder: SocketAddr,
    /// The gateway's own interface sent the SYN.
    pub opened_by_gateway: bool,
    pub isn: Option<u32>,
    pub answer: Answer,
    pub syn_sent: usize,
    pub socket: SocketKind,
    /// What the socket is, in words, for the legend.
    pub socket_text: String,
    /// What the gateway's log says about it.
    pub notes: Vec<String>,
    pub session: Option<u64>,
    pub data: Option<u64>,
    /// Bytes from initiator to responder, and back.
    pub bytes: [u64; 2],
    pub first_t: f64,
    segments: Vec<Segment>,
}

impl Conn {
    pub fn role_text(&self) -> &'static str {
        match self.role {
            Role::Control => "control",
            Role::Data => "data",
        }
    }
    pub fn leg_text(&self) -> &'static str {
        match self.leg {
            Leg::ClientSide => "client side",
            Leg::ServerSide => "server side",
            Leg::Forwarded => "forwarded",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Event {
    pub t: f64,
    pub conn: Option<usize>,
    pub from: usize,
    pub to: usize,
    /// A forwarded connection crosses this gateway lifeline.
    pub via: Option<usize>,
    /// Short text on the arrow.
    pub label: String,
}

#[derive(Debug, Clone)]
pub struct Ladder {
    pub title: String,
    pub lifelines: Vec<String>,
    pub conns: Vec<Conn>,
    pub events: Vec<Event>,
    pub t0: f64,
}

/// What the ladder is made from: per gateway, the two interface captures
/// and the audit records.
pub struct GatewayInput {
    pub name: String,
    pub client_side: Vec<Segment>,
    pub server_side: Vec<Segment>,
    pub log: Vec<Record>,
}

pub struct Options {
    pub control_port: u16,
    pub tproxy_port: u16,
    pub client_label: String,
    pub server_label: String,
    pub title: String,
}

pub fn build(gateways: Vec<GatewayInput>, opts: &Options) -> Ladder {
    let n = gateways.len();
    let mut lifelines = vec![opts.client_label.clone()];
    lifelines.extend(gateways.iter().map(|g| g.name.clone()));
    lifelines.push(opts.server_label.clone());

    // audit records outside the captures' time span belong to other runs
    // of the same gateway (a scenario with phases): leave them out
    let times = gateways.iter().flat_map(|g| g.client_side.iter().chain(&g.server_side)).map(|s| s.t);
    let (start, end) = times.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), t| (a.min(t), b.max(t)));
    let captured = |t: f64| t >= start - 0.5 && t <= end + 0.5;
    let mut conns: Vec<Conn> = Vec::new();
    let mut notes: Vec<Event> = Vec::new();
    for (gi, gw) in gateways.iter().enumerate() {
        let mut client = split(&gw.client_side, gi, Leg::ClientSide, opts.control_port);
        let mut server = split(&gw.server_side, gi, Leg::ServerSide, opts.control_port);
        // a connection with the same endpoints and ISN on both interfaces
        // went through the kernel untouched: keep the client side's copy
        server.retain(|s| {
            let twin = client.iter_mut().find(|c| {
                c.isn.is_some() && c.isn == s.isn && c.initiator == s.initiator && c.responder == s.responder
            });
            match twin {
                Some(c) => {
                    c.leg = Leg::Forwarded;
                    false
                }
                None => true,
            }
        });
        let mut these: Vec<Conn> = client.into_iter().chain(server).collect();
        for c in &mut these {
            classify(c, &gw.name, opts);
        }
        let log: Vec<Record> = gw.log.iter().filter(|r| captured(r.t)).cloned().collect();
        annotate(&mut these, &log);
        notes.extend(gw.log.iter().filter(|r| captured(r.t)).filter_map(|r| log_event(r, gi + 1)));
        conns.extend(these);
    }
    conns.sort_by(|a, b| a.first_t.total_cmp(&b.first_t));
    for (i, c) in conns.iter_mut().enumerate() {
        c.id = i + 1;
    }
    let mut events: Vec<Event> = conns.iter_mut().flat_map(|c| conn_events(c, n)).collect();
    events.extend(notes);
    events.sort_by(|a, b| a.t.total_cmp(&b.t));
    let t0 = events.first().map_or(0.0, |e| e.t);
    Ladder { title: opts.title.clone(), lifelines, conns, events, t0 }
}

/// The connections of one interface's capture.
fn split(segs: &[Segment], gateway: usize, leg: Leg, control_port: u16) -> Vec<Conn> {
    let mut conns: Vec<Conn> = Vec::new();
    let mut current: HashMap<(SocketAddr, SocketAddr), usize> = HashMap::new();
    let pair = |a: SocketAddr, b: SocketAddr| if a <= b { (a, b) } else { (b, a) };
    for s in segs {
        let key = pair(s.src, s.dst);
        let fresh_syn = s.syn && !s.ack;
        let existing = current.get(&key).copied();
        let reuse = match existing {
            Some(i) if fresh_syn => conns[i].isn == Some(s.seq) && conns[i].initiator == s.src,
            Some(_) => true,
            None => false,
        };
        let i = if let (true, Some(i)) = (reuse, existing) {
            i
        } else {
            // a new connection; without its SYN, the one that answers a
            // SYN-ACK is the initiator, otherwise the lower port is a guess
            let (initiator, responder) = if fresh_syn || (!s.syn && s.dst.port() < s.src.port()) {
                (s.src, s.dst)
            } else {
                (s.dst, s.src)
            };
            let role = if responder.port() == control_port { Role::Control } else { Role::Data };
            conns.push(Conn {
                id: 0,
                gateway,
                leg,
                role,
                initiator,
                responder,
                opened_by_gateway: fresh_syn && s.from_gateway,
                isn: fresh_syn.then_some(s.seq),
                answer: if fresh_syn { Answer::Unanswered } else { Answer::NotSeen },
                syn_sent: 0,
                socket: SocketKind::Unknown,
                socket_text: String::new(),
                notes: Vec::new(),
                session: None,
                data: None,
                bytes: [0, 0],
                first_t: s.t,
                segments: Vec::new(),
            });
            current.insert(key, conns.len() - 1);
            conns.len() - 1
        };
        let c = &mut conns[i];
        if fresh_syn {
            c.syn_sent += 1;
        } else if c.isn.is_some() && c.answer == Answer::Unanswered && s.src == c.responder {
            if s.syn && s.ack {
                c.answer = Answer::Accepted;
            } else if s.rst {
                c.answer = Answer::Reset;
            }
        }
        c.segments.push(s.clone());
    }
    conns
}

fn classify(c: &mut Conn, gateway: &str, opts: &Options) {
    let (kind, text) = match (c.leg, c.answer) {
        (Leg::Forwarded, _) => (
            SocketKind::KernelForwarded,
            match c.role {
                Role::Control => {
                    format!("no socket: {gateway} forwarded it (conntrack; the ftp helper reads it)")
                }
                Role::Data => {
                    format!("no socket: {gateway} forwarded it (RELATED: nf_conntrack_ftp's expectation)")
                }
            },
        ),
        (_, Answer::Unanswered) => (
            SocketKind::NoSocket,
            format!("no socket on {gateway}: SYN dropped, sent {} time(s), never answered", c.syn_sent),
        ),
        (_, Answer::Reset) => {
            (SocketKind::NoSocket, format!("no socket on {gateway}: SYN answered with a reset"))
        }
        (_, Answer::NotSeen) => {
            let mut said = c.segments.iter().filter(|s| s.from_gateway).peekable();
            if said.peek().is_some() && said.all(|s| s.rst) {
                (
                    SocketKind::NoSocket,
                    format!("no socket on {gateway} for this connection: it answered with a reset"),
                )
            } else if c.segments.iter().any(|s| s.from_gateway) {
                (SocketKind::Unknown, "the capture began after this connection opened".to_owned())
            } else {
                (
                    SocketKind::Stray,
                    format!(
                        "stray: {gateway} never saw this connection open, holds no socket for it (dropped)"
                    ),
                )
            }
        }
        (_, Answer::Accepted) if c.opened_by_gateway => (
            SocketKind::ForeignConnect,
            format!(
                "ftpgate's foreign connect from {} (IP_TRANSPARENT: the {}'s address)",
                c.initiator,
                if c.leg == Leg::ServerSide { "client" } else { "server" }
            ),
        ),
        (Leg::ClientSide, Answer::Accepted) if c.role == Role::Control => (
            SocketKind::TproxyRedirect,
            format!(
                "TPROXY: port {} diverted to ftpgate's listener :{}, which accepts as {}",
                opts.control_port, opts.tproxy_port, c.responder
            ),
        ),
        (_, Answer::Accepted) => (
            SocketKind::ForeignListener,
            format!(
                "ftpgate's foreign listener on {} (socket-match divert: mark 1, local delivery)",
                c.responder
            ),
        ),
    };
    c.socket = kind;
    c.socket_text = text;
}

/// Session and data-channel numbers, and refusals, from the audit records.
fn annotate(conns: &mut [Conn], log: &[Record]) {
    let find =
        |conns: &mut [Conn], leg: Leg, a: Option<SocketAddr>, b: Option<SocketAddr>| -> Option<usize> {
            let (a, b) = (a?, b?);
            conns.iter().position(|c| {
                c.leg == leg
                    && ((c.initiator == a && c.responder == b) || (c.initiator == b && c.responder == a))
            })
        };
    for r in log {
        match &r.kind {
            Kind::SessionStart => {
                if let Some(i) = find(conns, Leg::ClientSide, r.client, r.server) {
                    conns[i].session = Some(r.session);
                    conns[i].notes.push(format!("session {} (client leg)", r.session));
                }
                // ftpgate's own control connection to the server: the next
                // one from the client's address to the same server
                let server_leg = conns.iter().position(|c| {
                    c.leg == Leg::ServerSide
                        && c.role == Role::Control
                        && c.opened_by_gateway
                        && c.session.is_none()
                        && Some(c.responder) == r.server
                        && r.client.is_some_and(|cl| cl.ip() == c.initiator.ip())
                        && c.first_t >= r.t - 0.5
                });
                if let Some(i) = server_leg {
                    conns[i].session = Some(r.session);
                    conns[i].notes.push(format!("session {} (server leg)", r.session));
                }
            }
            Kind::Transfer {
                data,
                command,
                client_data,
                client_data_local,
                server_data,
                server_data_local,
                result,
                ..
            } => {
                for (leg, a, b, which) in [
                    (Leg::ClientSide, *client_data, *client_data_local, "client"),
                    (Leg::ServerSide, *server_data, *server_data_local, "server"),
                ] {
                    if let Some(i) = find(conns, leg, a, b) {
                        conns[i].session = Some(r.session);
                        conns[i].data = Some(*data);
                        conns[i].notes.push(format!(
                            "session {} data {} {which} leg: {command}, {result}",
                            r.session, data
                        ));
                    }
                }
            }
            Kind::PeerRefused { peer, expected, .. } => {
                if let Some(i) = conns.iter().position(|c| Some(c.initiator) == *peer) {
                    conns[i].notes.push(format!(
                        "ftpgate closed it: only {expected} may connect here (port theft, ATTACKS.md 5)"
                    ));
                }
            }
            _ => {}
        }
    }
}

fn log_event(r: &Record, lifeline: usize) -> Option<Event> {
    let label = match &r.kind {
        Kind::DataListen { data, local, accept_from, mode } => format!(
            "ftpgate: data {data} listens on {} ({mode}; takes only {accept_from})",
            local.map_or_else(|| "-".to_owned(), |a| a.to_string())
        ),
        Kind::AddressRewritten { announced, local } => format!("ftpgate rewrote {announced} to {local}"),
        Kind::Refused { side, rule, attack, what, lines: 1 } => {
            format!("ftpgate refused {side}'s {what:?}: rule {rule}, attack {attack}")
        }
        Kind::Refused { side, rule, attack, what, lines } => format!(
            "ftpgate refused {lines} of {side}'s lines in a row, the first {what:?}: rule {rule}, attack {attack}"
        ),
        Kind::PeerRefused { data, peer, expected } => format!(
            "ftpgate: data {data} closed {} (not {expected})",
            peer.map_or_else(|| "-".to_owned(), |a| a.to_string())
        ),
        Kind::Transfer { command, result, reply, .. } => {
            format!("ftpgate: transfer {command} {result}, reply {reply}")
        }
        Kind::SessionEnd { reason } => format!("ftpgate: session {} ended ({reason})", r.session),
        Kind::SessionStart => return None,
    };
    Some(Event { t: r.t, conn: None, from: lifeline, to: lifeline, via: None, label })
}

/// Opens, control lines and closes of one connection.
fn conn_events(c: &mut Conn, gateways: usize) -> Vec<Event> {
    let server = gateways + 1;
    let gw = c.gateway + 1;
    let (near, far) = match c.leg {
        Leg::ClientSide => (0, gw),
        Leg::ServerSide => (gw, server),
        Leg::Forwarded => (0, server),
    };
    let via = (c.leg == Leg::Forwarded).then_some(gw);
    // the lifeline that sent a segment
    let sender = |s: &Segment| match c.leg {
        Leg::ClientSide => {
            if s.from_gateway {
                gw
            } else {
                0
            }
        }
        Leg::ServerSide => {
            if s.from_gateway {
                gw
            } else {
                server
            }
        }
        Leg::Forwarded => {
            if s.from_gateway {
                server
            } else {
                0
            }
        }
    };
    let other = |from: usize| if from == near { far } else { near };
    let mut out = Vec::new();
    let mut ev = |t: f64, from: usize, label: String| {
        out.push(Event { t, conn: Some(c.id), from, to: other(from), via, label });
    };
    let id = c.id;
    // per direction (0: initiator to responder): next relative sequence
    // number, bytes, the partial line, FIN/RST seen
    let mut base: [Option<u32>; 2] = [None, None];
    let mut next = [0u64; 2];
    let mut line: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut fin = [false; 2];
    let mut rst = [false; 2];
    let mut syn_shown = false;
    let mut stray_shown = false;
    for s in &c.segments {
        let dir = usize::from(s.src != c.initiator);
        let from = sender(s);
        if s.syn && !s.ack {
            if !syn_shown {
                syn_shown = true;
                ev(s.t, from, format!("#{id} SYN {} > {}", c.initiator, c.responder));
            }
            continue;
        }
        if c.socket == SocketKind::Stray && !stray_shown {
            stray_shown = true;
            ev(s.t, from, format!("#{id} stray segment {} > {}: no socket here", s.src, s.dst));
        }
        if s.syn {
            base[dir] = Some(s.seq.wrapping_add(1));
            continue;
        }
        let b = *base[dir].get_or_insert(s.seq);
        let rel = u64::from(s.seq.wrapping_sub(b));
        let end = rel + u64::from(s.len);
        if end > next[dir] {
            let skip = usize::try_from(next[dir].saturating_sub(rel)).unwrap_or(usize::MAX);
            c.bytes[dir] += end - next[dir].max(rel);
            next[dir] = end;
            if c.role == Role::Control && c.socket != SocketKind::Stray {
                let kept = s.payload.get(skip..).unwrap_or(&[]);
                line[dir].extend_from_slice(kept);
                if kept.len() + skip < s.payload.len().max(s.len as usize) {
                    line[dir].extend_from_slice(b" [cut by the capture]\r\n");
                }
                while let Some(pos) = line[dir].iter().position(|&x| x == b'\n') {
                    let raw: Vec<u8> = line[dir].drain(..=pos).collect();
                    ev(s.t, from, format!("#{id} {}", printable(&raw)));
                }
            }
        }
        if s.fin && !fin[dir] {
            fin[dir] = true;
            let label = match c.role {
                Role::Data if c.bytes[dir] > 0 => format!("#{id} FIN after {} bytes", c.bytes[dir]),
                Role::Data => format!("#{id} FIN"),
                Role::Control => format!("#{id} FIN"),
            };
            ev(s.t, from, label);
        }
        if s.rst && !rst[dir] {
            rst[dir] = true;
            ev(s.t, from, format!("#{id} RST"));
        }
    }
    out
}

/// A control line for the picture: printable, without its line end, and
/// never a password.
fn printable(raw: &[u8]) -> String {
    let text: String = raw
        .iter()
        .filter(|&&b| b != b'\r' && b != b'\n')
        .map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '?' })
        .collect();
    if text.len() >= 5 && text[..5].eq_ignore_ascii_case("PASS ") {
        return "PASS ****".to_owned();
    }
    text.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(
        t: f64,
        from_gateway: bool,
        src: &str,
        dst: &str,
        seq: u32,
        flags: &str,
        payload: &[u8],
    ) -> Segment {
        Segment {
            t,
            from_gateway,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            seq,
            syn: flags.contains('S'),
            ack: flags.contains('A'),
            fin: flags.contains('F'),
            rst: flags.contains('R'),
            payload: payload.to_vec(),
            len: payload.len() as u32,
        }
    }

    fn opts() -> Options {
        Options {
            control_port: 21,
            tproxy_port: 2121,
            client_label: "client".into(),
            server_label: "server".into(),
            title: "t".into(),
        }
    }

    const C: &str = "192.0.2.10:40000";
    const S: &str = "198.51.100.10:21";

    #[test]
    fn terminated_control_connection_is_two_legs_with_their_sockets() {
        let client_side = vec![
            seg(1.0, false, C, S, 100, "S", b""),
            seg(1.001, true, S, C, 900, "SA", b""),
            seg(1.1, true, S, C, 901, "A", b"220 hi\r\n"),
            seg(1.2, false, C, S, 101, "A", b"USER anonymous\r\nPASS secret\r\n"),
        ];
        let server_side = vec![
            seg(1.01, true, "192.0.2.10:50000", S, 300, "S", b""),
            seg(1.02, false, S, "192.0.2.10:50000", 700, "SA", b""),
            seg(1.09, false, S, "192.0.2.10:50000", 701, "A", b"220 hi\r\n"),
        ];
        let l =
            build(vec![GatewayInput { name: "gw".into(), client_side, server_side, log: vec![] }], &opts());
        assert_eq!(l.conns.len(), 2);
        assert_eq!(l.conns[0].socket, SocketKind::TproxyRedirect);
        assert_eq!(l.conns[1].socket, SocketKind::ForeignConnect);
        assert_eq!(l.conns[1].initiator.to_string(), "192.0.2.10:50000");
        let labels: Vec<_> = l.events.iter().map(|e| (e.from, e.to, e.label.as_str())).collect();
        assert_eq!(
            labels,
            [
                (0, 1, "#1 SYN 192.0.2.10:40000 > 198.51.100.10:21"),
                (1, 2, "#2 SYN 192.0.2.10:50000 > 198.51.100.10:21"),
                (2, 1, "#2 220 hi"),
                (1, 0, "#1 220 hi"),
                (0, 1, "#1 USER anonymous"),
                (0, 1, "#1 PASS ****"),
            ]
        );
    }

    #[test]
    fn same_isn_on_both_sides_is_forwarded_and_shown_once() {
        let both = vec![seg(1.0, false, C, S, 100, "S", b""), seg(1.01, true, S, C, 900, "SA", b"")];
        let mut server_side = both.clone();
        for s in &mut server_side {
            s.from_gateway = !s.from_gateway;
        }
        let l = build(
            vec![GatewayInput { name: "gw".into(), client_side: both, server_side, log: vec![] }],
            &opts(),
        );
        assert_eq!(l.conns.len(), 1);
        assert_eq!(l.conns[0].socket, SocketKind::KernelForwarded);
        assert_eq!(l.events.len(), 1);
        assert_eq!((l.events[0].from, l.events[0].to, l.events[0].via), (0, 2, Some(1)));
    }

    #[test]
    fn ipv6_active_data_meets_a_foreign_listener_and_leaves_from_port_20() {
        let (c6, s6) = ("[2001:db8:1::10]:35281", "[2001:db8:2::10]:20");
        let server_side = vec![
            seg(2.0, false, s6, c6, 10, "S", b""),
            seg(2.001, true, c6, s6, 90, "SA", b""),
            seg(2.002, false, s6, c6, 11, "AF", &[1; 64]),
        ];
        let client_side = vec![
            seg(2.0005, true, s6, c6, 500, "S", b""),
            seg(2.0006, false, c6, s6, 800, "SA", b""),
            seg(2.003, true, s6, c6, 501, "AF", &[1; 64]),
        ];
        let log = vec![Record {
            t: 2.004,
            session: 1,
            client: "[2001:db8:1::10]:46540".parse().ok(),
            server: "[2001:db8:2::10]:21".parse().ok(),
            kind: Kind::Transfer {
                data: 0,
                command: "RETR".into(),
                client_data: c6.parse().ok(),
                client_data_local: s6.parse().ok(),
                server_data: s6.parse().ok(),
                server_data_local: c6.parse().ok(),
                result: "ok".into(),
                reply: "226".into(),
            },
        }];
        let l = build(vec![GatewayInput { name: "gw".into(), client_side, server_side, log }], &opts());
        assert_eq!(l.conns.len(), 2);
        let (listener, connect) = (&l.conns[0], &l.conns[1]);
        assert_eq!((listener.leg, listener.socket), (Leg::ServerSide, SocketKind::ForeignListener));
        assert_eq!(listener.initiator.to_string(), s6);
        assert_eq!((connect.leg, connect.socket), (Leg::ClientSide, SocketKind::ForeignConnect));
        assert!(connect.socket_text.contains("from [2001:db8:2::10]:20"), "{}", connect.socket_text);
        assert!(l.conns.iter().all(|c| c.data == Some(0) && c.bytes == [64, 0]));
    }

    #[test]
    fn unanswered_syn_is_no_socket_and_retransmissions_count() {
        let d = "198.51.100.10:30001";
        let client_side = vec![seg(1.0, false, C, d, 5, "S", b""), seg(2.0, false, C, d, 5, "S", b"")];
        let l = build(
            vec![GatewayInput { name: "g2".into(), client_side, server_side: vec![], log: vec![] }],
            &opts(),
        );
        assert_eq!(l.conns.len(), 1);
        assert_eq!(l.conns[0].socket, SocketKind::NoSocket);
        assert_eq!(l.conns[0].syn_sent, 2);
    }

    #[test]
    fn data_bytes_count_retransmissions_once() {
        let d = "198.51.100.10:30001";
        let client_side = vec![
            seg(1.0, false, C, d, 10, "S", b""),
            seg(1.0, true, d, C, 50, "SA", b""),
            seg(1.1, true, d, C, 51, "A", &[7; 100]),
            seg(1.2, true, d, C, 51, "A", &[7; 100]),
            seg(1.3, true, d, C, 151, "AF", &[7; 20]),
        ];
        let l = build(
            vec![GatewayInput { name: "gw".into(), client_side, server_side: vec![], log: vec![] }],
            &opts(),
        );
        assert_eq!(l.conns[0].socket, SocketKind::ForeignListener);
        assert_eq!(l.conns[0].bytes, [0, 120]);
        assert_eq!(l.events.last().unwrap().label, "#1 FIN after 120 bytes");
    }
}
