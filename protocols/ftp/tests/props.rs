//! Property tests through the public API: address round trips, segmentation
//! independence, and hostile input (no panic, nothing leaks).

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ftpgate_proto::addr::{ExtAddr, HostPort};
use ftpgate_proto::{
    Action, AuditEvent, Config, ControlEnds, DataId, DataStep, Input, Session, Side, TransferResult,
};
use proptest::prelude::*;

fn ends() -> ControlEnds {
    ControlEnds { client: "192.0.2.10:40000".parse().unwrap(), server: "198.51.100.10:21".parse().unwrap() }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

proptest! {
    #[test]
    fn host_port_write_parse_round_trip(ip in any::<u32>(), port in 1u16..) {
        let hp = HostPort { ip: Ipv4Addr::from(ip), port };
        let mut out = Vec::new();
        hp.write(&mut out);
        prop_assert_eq!(HostPort::parse(&out), Ok(hp));
        let mut reply = b"Entering Passive Mode (".to_vec();
        reply.extend_from_slice(&out);
        reply.extend_from_slice(b").");
        prop_assert_eq!(HostPort::parse_227(&reply), Some(hp));
    }

    #[test]
    fn ext_addr_write_parse_round_trip(
        kind in 0u8..3,
        v4 in any::<u32>(),
        v6 in any::<u128>(),
        port in 1u16..,
    ) {
        let ip = match kind {
            0 => None,
            1 => Some(IpAddr::V4(Ipv4Addr::from(v4))),
            _ => Some(IpAddr::V6(Ipv6Addr::from(v6))),
        };
        let ext = ExtAddr { ip, port };
        let mut out = Vec::new();
        ext.write(&mut out);
        prop_assert_eq!(ExtAddr::parse(&out), Ok(ext));
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = HostPort::parse(&bytes);
        let _ = HostPort::parse_227(&bytes);
        let _ = ExtAddr::parse(&bytes);
        let _ = ExtAddr::parse_229(&bytes);
        let _ = ftpgate_proto::command::parse_command(&bytes);
        let _ = ftpgate_proto::reply::parse_reply_line(&bytes);
    }
}

/// One step of a scripted session.
#[derive(Clone, Debug)]
enum Step {
    Client(&'static [u8]),
    Server(&'static [u8]),
    Fact(Input<'static>),
}

fn script() -> Vec<Step> {
    use Step::*;
    let d0 = DataId(0);
    let d1 = DataId(1);
    vec![
        Server(b"220-hi\r\n220 ready\r\n"),
        Client(b"USER anna\r\nPASS x\r\n"),
        Server(b"331 pw\r\n230 ok\r\n"),
        Client(b"PASV\r\nLIST\r\n"),
        Server(b"227 Entering Passive Mode (198,51,100,10,195,80).\r\n150 go\r\n226 done\r\n"),
        Fact(Input::Listening { data: d0, local: sa("198.51.100.10:50000") }),
        Fact(Input::Accepted { data: d0, peer: sa("203.0.113.9:1234") }),
        Fact(Input::Accepted { data: d0, peer: sa("192.0.2.10:40001") }),
        Fact(Input::Connected { data: d0, local: sa("192.0.2.10:41000") }),
        Fact(Input::Relayed { data: d0, to_client: 100, to_server: 0 }),
        Client(b"PORT 192,0,2,10,156,65\r\nRETR a\xff\xffb\r\nNOOP\r\n"),
        Fact(Input::Listening { data: d1, local: sa("192.0.2.10:50002") }),
        Server(b"200 ok\r\n150 go\r\n"),
        Fact(Input::Accepted { data: d1, peer: sa("198.51.100.10:20") }),
        Fact(Input::Connected { data: d1, local: sa("198.51.100.10:20") }),
        Server(b"226-x\r\n123 y\r\n226 done\r\n200 noop\r\n"),
        Fact(Input::Relayed { data: d1, to_client: 5, to_server: 0 }),
        // ABOR in the BSD Synch form, then one mid-transfer.
        Client(b"\xff\xf4\xff\xf2ABOR\r\nEPSV\r\nLIST\r\n"),
        Server(b"225 none\r\n229 (|||50003|)\r\n150 go\r\n"),
        Fact(Input::Listening { data: DataId(2), local: sa("198.51.100.10:50003") }),
        Fact(Input::Accepted { data: DataId(2), peer: sa("192.0.2.10:40002") }),
        Fact(Input::Connected { data: DataId(2), local: sa("192.0.2.10:41001") }),
        Client(b"ABOR\r\n"),
        Server(b"426 aborted\r\n226 ABOR ok\r\n"),
        Client(b"\xff\xfd\x01QUIT\r\n"),
        Server(b"221 bye\r\n"),
        Fact(Input::Closed { from: Side::Server }),
    ]
}

/// Everything a run produced: actions and the bytes toward each side.
#[derive(Debug, Default, PartialEq, Eq)]
struct Output {
    actions: Vec<Action>,
    to_client: Vec<u8>,
    to_server: Vec<u8>,
    /// Offsets into `to_server` just past each urgent byte.
    urgent: Vec<usize>,
}

fn collect(s: &mut Session, out: &mut Output) {
    out.actions.extend(std::iter::from_fn(|| s.poll_action()));
    assert_eq!(s.pending_urgent(Side::Client), None);
    // Write the server side as a shell would: up to each urgent byte, then on.
    while let Some(n) = s.pending_urgent(Side::Server) {
        out.to_server.extend_from_slice(&s.pending(Side::Server)[..n]);
        out.urgent.push(out.to_server.len());
        s.consume(Side::Server, n);
    }
    for (side, buf) in [(Side::Client, &mut out.to_client), (Side::Server, &mut out.to_server)] {
        let bytes = s.pending(side).to_vec();
        s.consume(side, bytes.len());
        buf.extend_from_slice(&bytes);
    }
}

/// Run the script, cutting each byte step at `cuts` (positions are taken
/// modulo the step's length).
fn run(cuts: &[usize]) -> Output {
    let now = Instant::now();
    let mut s = Session::new(Arc::new(Config::default()), ends(), now);
    let mut out = Output::default();
    let mut cuts = cuts.iter().copied();
    for step in script() {
        let (from, bytes) = match step {
            Step::Fact(input) => {
                s.handle_input(now, input);
                collect(&mut s, &mut out);
                continue;
            }
            Step::Client(b) => (Side::Client, b),
            Step::Server(b) => (Side::Server, b),
        };
        let mut points: Vec<usize> =
            (0..3).filter_map(|_| cuts.next()).map(|c| c % (bytes.len() + 1)).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        for w in points.windows(2) {
            s.handle_input(now, Input::Received { from, data: &bytes[w[0]..w[1]] });
            collect(&mut s, &mut out);
        }
    }
    out
}

#[test]
fn script_unsplit_runs_to_the_end() {
    let out = run(&[]);
    assert!(out.to_client.ends_with(
        b"226 done\r\n200 noop\r\n225 none\r\n229 (|||50003|)\r\n150 go\r\n426 aborted\r\n226 ABOR ok\r\n\xff\xfc\x01221 bye\r\n"
    ));
    let synch = b"\xff\xf4\xff\xf2ABOR\r\n";
    let tail = [
        &b"PORT 192,0,2,10,195,82\r\nRETR a\xff\xffb\r\nNOOP\r\n"[..],
        synch,
        b"EPSV\r\nLIST\r\n",
        synch,
        b"QUIT\r\n",
    ]
    .concat();
    assert!(out.to_server.ends_with(&tail));
    // Each urgent byte is the second IAC of a Synch.
    assert_eq!(out.urgent.len(), 2);
    for &u in &out.urgent {
        assert_eq!(&out.to_server[u - 3..u + 1], b"\xff\xf4\xff\xf2");
    }
    let closes = out.actions.iter().filter(|a| matches!(a, Action::CloseData { .. })).count();
    assert_eq!(closes, 3);
    assert!(out.actions.iter().any(|a| matches!(
        a,
        Action::Audit(AuditEvent::Transfer { result: TransferResult::Aborted(_), reply: Some(426), .. })
    )));
}

proptest! {
    #[test]
    fn script_split_anywhere_gives_identical_output(cuts in proptest::collection::vec(any::<usize>(), 0..60)) {
        prop_assert_eq!(run(&cuts), run(&[]));
    }
}

/// Chunks a hostile or confused peer might send: mostly plausible lines for
/// its side (so sessions get deep enough to open data channels), sometimes
/// the other side's lines, Telnet, line-end games, raw bytes, long lines.
fn chunk(client: bool) -> impl Strategy<Value = Vec<u8>> {
    let client_words: Vec<&'static [u8]> = vec![
        b"USER a\r\n",
        b"PASS b\r\n",
        b"PASV\r\n",
        b"EPSV\r\n",
        b"PORT 192,0,2,10,156,65\r\n",
        b"EPRT |1|192.0.2.10|5000|\r\n",
        b"PORT 1,2,3,4,5,6\r\n",
        b"RETR x\r\n",
        b"LIST\r\n",
        b"REIN\r\n",
        b"EPSV ALL\r\n",
        b"ABOR\r\n",
        b"NOOP\r\n",
        b"QUIT\r\n",
        b"LPSV\r\n",
    ];
    let server_words: Vec<&'static [u8]> = vec![
        b"220 ok\r\n",
        b"230 ok\r\n",
        b"227 (198,51,100,10,195,80)\r\n",
        b"227 (10,0,0,1,0,22)\r\n",
        b"229 (|||5000|)\r\n",
        b"150 go\r\n",
        b"226 ok\r\n",
        b"425 no\r\n",
        b"211-a\r\n",
        b"211 b\r\n",
        b"200 ok\r\n",
        b"227 Logout.\r\n",
        b"500 no\r\n",
        b"421 bye\r\n",
    ];
    let odd: Vec<&'static [u8]> = vec![b"\xff\xfb\x01", b"\xff\xff", b"\xff\xf4", b"\r", b"\n", b"\0", b"x"];
    let words = if client { client_words } else { server_words };
    prop_oneof![
        20 => proptest::sample::select(words).prop_map(<[u8]>::to_vec),
        2 => proptest::sample::select(odd).prop_map(<[u8]>::to_vec),
        1 => proptest::collection::vec(any::<u8>(), 0..40),
        1 => Just(vec![b'x'; 9000]),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Bytes(bool, Vec<u8>),
    Listening(usize, u16),
    Fail(usize, u8),
    Accept(usize, bool),
    Connected(usize),
    Relayed(usize),
    Progress(usize, u16),
    RelayFailed(usize, bool),
    Wait(u64),
    Drain,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => chunk(true).prop_map(|b| Op::Bytes(true, b)),
        4 => chunk(false).prop_map(|b| Op::Bytes(false, b)),
        2 => (any::<usize>(), any::<u16>()).prop_map(|(i, p)| Op::Listening(i, p)),
        1 => (any::<usize>(), 0u8..6).prop_map(|(i, s)| Op::Fail(i, s)),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(i, ok)| Op::Accept(i, ok)),
        1 => any::<usize>().prop_map(Op::Connected),
        1 => any::<usize>().prop_map(Op::Relayed),
        1 => (any::<usize>(), any::<u16>()).prop_map(|(i, n)| Op::Progress(i, n)),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(i, c)| Op::RelayFailed(i, c)),
        1 => (0u64..60).prop_map(Op::Wait),
        1 => Just(Op::Drain),
    ]
}

/// A model shell: records what was asked and checks the core's promises.
struct Shell {
    s: Session,
    now: Instant,
    listened: BTreeSet<DataId>,
    closed: BTreeSet<DataId>,
    relaying: BTreeSet<DataId>,
    reset: BTreeSet<DataId>,
}

impl Shell {
    fn feed(&mut self, input: Input<'_>) {
        self.s.handle_input(self.now, input);
        while let Some(a) = self.s.poll_action() {
            match a {
                Action::Listen { data, .. } => {
                    assert!(!self.closed.contains(&data), "Listen after CloseData for {data:?}");
                    self.listened.insert(data);
                }
                Action::ResetData { data } => {
                    assert!(self.listened.contains(&data), "ResetData without Listen");
                    assert!(!self.closed.contains(&data), "ResetData after CloseData for {data:?}");
                    assert!(self.reset.insert(data), "ResetData twice for {data:?}");
                }
                Action::CloseData { data } => {
                    assert!(self.listened.contains(&data), "CloseData without Listen");
                    assert!(self.closed.insert(data), "CloseData twice for {data:?}");
                    self.relaying.remove(&data);
                }
                Action::Relay { data } => {
                    self.relaying.insert(data);
                }
                _ => {}
            }
        }
        for side in [Side::Client, Side::Server] {
            if let Some(n) = self.s.pending_urgent(side) {
                assert!(side == Side::Server && n >= 3 && n <= self.s.pending(side).len());
                assert_eq!(&self.s.pending(side)[n - 3..n], b"\xff\xf4\xff");
            }
            let n = self.s.pending(side).len();
            self.s.consume(side, n);
            assert_eq!(self.s.pending_urgent(side), None);
        }
    }

    fn open(&self, i: usize) -> Option<DataId> {
        let open: Vec<DataId> = self.listened.difference(&self.closed).copied().collect();
        (!open.is_empty()).then(|| open[i % open.len()])
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn hostile_input_never_panics_and_nothing_leaks(
        login in any::<bool>(),
        kernel in any::<bool>(),
        ops in proptest::collection::vec(op(), 0..80),
    ) {
        let now = Instant::now();
        // Half the cases with the kernel data path: final replies not held.
        let config = Config { kernel_data_path: kernel, ..Config::default() };
        let mut sh = Shell {
            s: Session::new(Arc::new(config), ends(), now),
            now,
            listened: BTreeSet::new(),
            closed: BTreeSet::new(),
            relaying: BTreeSet::new(),
            reset: BTreeSet::new(),
        };
        if login {
            // Half the cases start logged in, so data channels get exercised.
            sh.feed(Input::Received { from: Side::Server, data: b"220 ok\r\n" });
            sh.feed(Input::Received { from: Side::Client, data: b"USER a\r\n" });
            sh.feed(Input::Received { from: Side::Server, data: b"230 ok\r\n" });
        }
        for op in ops {
            match op {
                Op::Bytes(client, bytes) => {
                    let from = if client { Side::Client } else { Side::Server };
                    let n = sh.s.read_budget(from).min(bytes.len());
                    if n > 0 {
                        sh.feed(Input::Received { from, data: &bytes[..n] });
                    }
                }
                Op::Listening(i, port) => {
                    if let Some(data) = sh.open(i) {
                        sh.feed(Input::Listening { data, local: SocketAddr::new([198, 51, 100, 10].into(), port) });
                    }
                }
                Op::Fail(i, step) => {
                    if let Some(data) = sh.open(i) {
                        let step = [DataStep::Bind, DataStep::Listen, DataStep::Accept, DataStep::Connect, DataStep::Relay, DataStep::Bind][usize::from(step)];
                        sh.feed(Input::Failed { data, step, error: ErrorKind::AddrInUse });
                    }
                }
                Op::Accept(i, good) => {
                    if let Some(data) = sh.open(i) {
                        let peer = if good { "192.0.2.10:40001" } else { "203.0.113.9:20" };
                        sh.feed(Input::Accepted { data, peer: sa(peer) });
                        if good {
                            sh.feed(Input::Accepted { data, peer: sa("198.51.100.10:20") });
                        }
                    }
                }
                Op::Connected(i) => {
                    if let Some(data) = sh.open(i) {
                        sh.feed(Input::Connected { data, local: sa("192.0.2.10:41000") });
                    }
                }
                Op::Relayed(i) => {
                    if let Some(data) = sh.open(i) {
                        sh.feed(Input::Relayed { data, to_client: 1, to_server: 2 });
                    }
                }
                Op::Progress(i, n) => {
                    if let Some(data) = sh.open(i) {
                        sh.feed(Input::Progress { data, to_client: u64::from(n), to_server: 0 });
                    }
                }
                Op::RelayFailed(i, client) => {
                    if let Some(data) = sh.open(i) {
                        let leg = if client { Side::Client } else { Side::Server };
                        let error = ErrorKind::ConnectionReset;
                        sh.feed(Input::RelayFailed { data, leg, error, to_client: 1, to_server: 0 });
                    }
                }
                Op::Wait(secs) => {
                    sh.now += Duration::from_secs(secs);
                    if sh.s.poll_timeout().is_some_and(|t| t <= sh.now) {
                        sh.feed(Input::Timeout);
                    }
                }
                Op::Drain => sh.feed(Input::Drain),
            }
        }
        // Relays end in the real shell (EOF, reset or Failed); then a long
        // wait must leave nothing open.
        for data in sh.relaying.clone() {
            sh.feed(Input::Relayed { data, to_client: 0, to_server: 0 });
        }
        for _ in 0..3 {
            sh.now += Duration::from_secs(86_400);
            sh.feed(Input::Timeout);
        }
        prop_assert_eq!(&sh.listened, &sh.closed);
        prop_assert!(sh.s.is_closed());
        prop_assert_eq!(sh.s.poll_timeout(), None);
    }
}
