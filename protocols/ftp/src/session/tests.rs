//! Transcript tests: fixture state, bytes in, actions and bytes out, time
//! advanced by hand. Names say `<state>_<event>_<outcome>`.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::audit::{AbortCause, DataLeg, DataLegs, DataMode, TransferFailure, TransferResult};
use crate::policy::{FtpsPolicy, PassiveAddressPolicy};

const CLIENT: &str = "192.0.2.10:40000";
const SERVER: &str = "198.51.100.10:21";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct T {
    s: Session,
    now: Instant,
}

impl T {
    fn with(config: Config) -> Self {
        let now = Instant::now();
        let ends = ControlEnds { client: sa(CLIENT), server: sa(SERVER) };
        Self { s: Session::new(Arc::new(config), ends, now), now }
    }

    fn new() -> Self {
        Self::with(Config::default())
    }

    /// Greeted and logged in as `anna`; outputs drained.
    fn logged_in() -> Self {
        Self::logged_in_with(Config::default())
    }

    fn logged_in_with(config: Config) -> Self {
        let mut t = Self::with(config);
        t.input(Input::Received { from: Side::Server, data: b"220 ready\r\n" });
        t.input(Input::Received { from: Side::Client, data: b"USER anna\r\nPASS secret\r\n" });
        t.input(Input::Received { from: Side::Server, data: b"331 pw\r\n230 ok\r\n" });
        t.take(Side::Client);
        t.take(Side::Server);
        t.actions();
        t
    }

    fn input(&mut self, input: Input<'_>) {
        self.s.handle_input(self.now, input);
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    fn take(&mut self, side: Side) -> Vec<u8> {
        let out = self.s.pending(side).to_vec();
        self.s.consume(side, out.len());
        out
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.s.poll_action()).collect()
    }

    /// Actions without audit records.
    fn work(&mut self) -> Vec<Action> {
        self.actions().into_iter().filter(|a| !matches!(a, Action::Audit(_))).collect()
    }

    fn audits(&mut self) -> Vec<AuditEvent> {
        self.actions()
            .into_iter()
            .filter_map(|a| match a {
                Action::Audit(e) => Some(e),
                _ => None,
            })
            .collect()
    }
}

macro_rules! client {
    ($t:expr, $bytes:expr) => {
        $t.input(Input::Received { from: Side::Client, data: $bytes })
    };
}

macro_rules! server {
    ($t:expr, $bytes:expr) => {
        $t.input(Input::Received { from: Side::Server, data: $bytes })
    };
}

/// `expect!(t, to_client: b"..")`, `expect!(t, to_server: b"..")`: the
/// pending bytes toward that side, which are then consumed.
macro_rules! expect {
    ($t:expr, to_client: $bytes:expr) => {
        assert_eq!(
            String::from_utf8_lossy(&$t.take(Side::Client)),
            String::from_utf8_lossy($bytes),
            "bytes to the client"
        )
    };
    ($t:expr, to_server: $bytes:expr) => {
        assert_eq!(
            String::from_utf8_lossy(&$t.take(Side::Server)),
            String::from_utf8_lossy($bytes),
            "bytes to the server"
        )
    };
    ($t:expr, work: $actions:expr) => {
        assert_eq!($t.work(), $actions, "actions")
    };
}

fn listen(data: u32, local: &str, from: &str, peer: Side) -> Action {
    Action::Listen { data: DataId(data), local: sa(local), accept_from: ip(from), peer }
}

fn shutdown_all(data: &[u32]) -> Vec<Action> {
    let mut v = vec![Action::Shutdown { side: Side::Client }, Action::Shutdown { side: Side::Server }];
    v.extend(data.iter().map(|&d| Action::CloseData { data: DataId(d) }));
    v
}

/// Logged in, PASV answered, listener up, 227 released.
fn passive_listening() -> T {
    passive_listening_with(Config::default())
}

fn passive_listening_with(config: Config) -> T {
    let mut t = T::logged_in_with(config);
    client!(t, b"PASV\r\n");
    expect!(t, to_server: b"PASV\r\n");
    server!(t, b"227 Entering Passive Mode (198,51,100,10,195,80).\r\n");
    expect!(t, work: vec![listen(0, "198.51.100.10:50000", "192.0.2.10", Side::Client)]);
    expect!(t, to_client: b"");
    t.input(Input::Listening { data: DataId(0), local: sa("198.51.100.10:50000") });
    expect!(t, to_client: b"227 Entering Passive Mode (198,51,100,10,195,80).\r\n");
    t
}

/// Passive channel relaying, RETR forwarded and 150 relayed.
fn passive_relaying_retr() -> T {
    passive_relaying_retr_with(Config::default())
}

fn passive_relaying_retr_with(config: Config) -> T {
    let mut t = passive_listening_with(config);
    client!(t, b"RETR file.bin\r\n");
    expect!(t, to_server: b"RETR file.bin\r\n");
    t.input(Input::Accepted { data: DataId(0), peer: sa("192.0.2.10:40001") });
    t.input(Input::Connected { data: DataId(0), local: sa("192.0.2.10:41000") });
    t.work();
    server!(t, b"150 Opening\r\n");
    expect!(t, to_client: b"150 Opening\r\n");
    t
}

/// Logged in, PORT accepted and forwarded, 200 relayed.
fn active_listening() -> T {
    let mut t = T::logged_in();
    client!(t, b"PORT 192,0,2,10,156,65\r\n");
    expect!(t, work: vec![listen(0, "192.0.2.10:0", "198.51.100.10", Side::Server)]);
    expect!(t, to_server: b"");
    t.input(Input::Listening { data: DataId(0), local: sa("192.0.2.10:40001") });
    expect!(t, to_server: b"PORT 192,0,2,10,156,65\r\n");
    server!(t, b"200 PORT ok\r\n");
    expect!(t, to_client: b"200 PORT ok\r\n");
    t
}

// ---- 1. control relay -------------------------------------------------------

#[test]
fn relaying_command_forwarded_canonical_and_reply_relayed() {
    let mut t = T::logged_in();
    client!(t, b"cwd /pub\n");
    expect!(t, to_server: b"cwd /pub\r\n");
    server!(t, b"250 ok\r\n");
    expect!(t, to_client: b"250 ok\r\n");
    assert!(t.s.read_budget(Side::Client) > 0);
    assert!(t.s.read_budget(Side::Server) > 0);
}

#[test]
fn relaying_output_above_high_water_stops_reading() {
    let mut t = T::logged_in();
    // Unsolicited single-line replies: each goes out at once.
    let big = format!("211 {}\r\n", "x".repeat(1000));
    for _ in 0..70 {
        server!(t, big.as_bytes());
    }
    assert_eq!(t.s.read_budget(Side::Server), 0);
    t.take(Side::Client);
    assert!(t.s.read_budget(Side::Server) > 0);
}

#[test]
fn relaying_partial_line_waits_for_rest() {
    let mut t = T::logged_in();
    client!(t, b"NO");
    expect!(t, to_server: b"");
    client!(t, b"OP\r");
    client!(t, b"\n");
    expect!(t, to_server: b"NOOP\r\n");
}

// ---- 2. greeting ------------------------------------------------------------

#[test]
fn expect_greeting_server_unreachable_421_and_close() {
    for error in [ErrorKind::TimedOut, ErrorKind::HostUnreachable, ErrorKind::NetworkUnreachable] {
        let mut t = T::new();
        t.input(Input::ServerUnreachable { error });
        expect!(t, to_client: b"421 Service not available: ftpgate could not reach the server.\r\n");
        assert_eq!(t.actions(), unreachable_end("server unreachable"), "{error:?}");
        assert!(t.s.is_closed());
    }
}

/// A refused connect is a reset from the server's side: passed on as one
/// (the daemon resets the client's connection), with no reply in the
/// server's name that the server never sent.
#[test]
fn expect_greeting_server_refused_no_reply_and_close() {
    let mut t = T::new();
    t.input(Input::ServerUnreachable { error: ErrorKind::ConnectionRefused });
    assert_eq!(t.actions(), unreachable_end("server refused the connection"));
    assert!(t.s.is_closed());
    expect!(t, to_client: b"");
}

fn unreachable_end(reason: &'static str) -> Vec<Action> {
    vec![
        Action::Shutdown { side: Side::Client },
        Action::Shutdown { side: Side::Server },
        Action::Audit(AuditEvent::SessionEnded {
            reason,
            user: None,
            duration: Duration::ZERO,
            transfers: 0,
            to_client: 0,
            to_server: 0,
        }),
    ]
}

#[test]
fn expect_greeting_deadline_passes_421_and_close() {
    let mut t = T::new();
    let deadline = t.s.poll_timeout().unwrap();
    assert_eq!(deadline, t.now + Config::default().greeting_timeout);
    t.now = deadline;
    t.input(Input::Timeout);
    expect!(t, to_client: b"421 Service not available: ftpgate could not reach the server.\r\n");
    expect!(t, work: shutdown_all(&[]));
    assert!(t.s.is_closed());
    assert_eq!(t.s.poll_timeout(), None);
}

#[test]
fn expect_greeting_server_closed_silently_421_and_close() {
    let mut t = T::new();
    t.input(Input::Closed { from: Side::Server });
    expect!(t, to_client: b"421 Service not available: ftpgate could not reach the server.\r\n");
    expect!(t, work: shutdown_all(&[]));
}

#[test]
fn attack_18_expect_greeting_120_then_220_client_lines_wait() {
    let mut t = T::new();
    assert_eq!(t.s.read_budget(Side::Client), 0);
    client!(t, b"USER anna\r\n");
    expect!(t, to_server: b"");
    server!(t, b"120 wait\r\n");
    expect!(t, to_client: b"120 wait\r\n");
    expect!(t, to_server: b"");
    assert_eq!(t.s.read_budget(Side::Client), 0);
    server!(t, b"220 ready\r\n");
    expect!(t, to_client: b"220 ready\r\n");
    expect!(t, to_server: b"USER anna\r\n");
    assert!(t.s.read_budget(Side::Client) > 0);
}

#[test]
fn expect_greeting_multiline_220_forwarded_whole() {
    let mut t = T::new();
    server!(t, b"220-Welcome\r\n220-");
    expect!(t, to_client: b"");
    server!(t, b"more\r\n220 go\r\n");
    expect!(t, to_client: b"220-Welcome\r\n220-more\r\n220 go\r\n");
}

// ---- 3. pipelining and multi-line replies --------------------------------------

#[test]
fn relaying_pipelined_commands_pair_replies_fifo() {
    let mut t = T::logged_in();
    client!(t, b"PASV\r\nLIST\r\n");
    expect!(t, to_server: b"PASV\r\nLIST\r\n");
    server!(t, b"227 Entering Passive Mode (198,51,100,10,195,80)\r\n150 here\r\n226 done\r\n");
    expect!(t, work: vec![listen(0, "198.51.100.10:50000", "192.0.2.10", Side::Client)]);
    expect!(t, to_client: b"");
    t.input(Input::Listening { data: DataId(0), local: sa("198.51.100.10:50000") });
    // 150 passes; 226 is the final reply of LIST and waits for the data
    // channel, which never connected: released at once and closed.
    expect!(t, to_client: b"227 Entering Passive Mode (198,51,100,10,195,80)\r\n150 here\r\n226 done\r\n");
    expect!(t, work: vec![Action::CloseData { data: DataId(0) }]);
}

#[test]
fn attack_16_relaying_pipelined_pasv_list_transfer_completes_in_order() {
    let mut t = T::logged_in();
    client!(t, b"PASV\r\nLIST\r\n");
    server!(t, b"227 (198,51,100,10,195,80)\r\n");
    t.input(Input::Listening { data: DataId(0), local: sa("198.51.100.10:50000") });
    t.input(Input::Accepted { data: DataId(0), peer: sa("192.0.2.10:40001") });
    t.input(Input::Connected { data: DataId(0), local: sa("192.0.2.10:41000") });
    server!(t, b"150 here\r\n226 done\r\n221 bye\r\n");
    expect!(t, to_client: b"227 (198,51,100,10,195,80)\r\n150 here\r\n");
    t.input(Input::Relayed { data: DataId(0), to_client: 10, to_server: 0 });
    expect!(t, to_client: b"226 done\r\n221 bye\r\n");
}

#[test]
fn attack_16_relaying_port_and_retr_before_200_work() {
    let mut t = T::logged_in();
    client!(t, b"PORT 192,0,2,10,156,65\r\nRETR f\r\n");
    expect!(t, to_server: b"");
    t.work();
    t.input(Input::Listening { data: DataId(0), local: sa("192.0.2.10:40001") });
    expect!(t, to_server: b"PORT 192,0,2,10,156,65\r\nRETR f\r\n");
    server!(t, b"200 ok\r\n150 go\r\n");
    t.input(Input::Accepted { data: DataId(0), peer: sa("198.51.100.10:20") });
    t.input(Input::Connected { data: DataId(0), local: sa("198.51.100.10:20") });
    server!(t, b"226 done\r\n");
    expect!(t, to_client: b"200 ok\r\n150 go\r\n");
    t.input(Input::Relayed { data: DataId(0), to_client: 5, to_server: 0 });
    expect!(t, to_client: b"226 done\r\n");
}

#[test]
fn attack_17_relaying_multiline_with_digit_continuations_forwarded_whole() {
    let mut t = T::logged_in();
    client!(t, b"HELP\r\n");
    server!(t, b"214-help\r\n123 not the end\r\n214-still\r\n");
    expect!(t, to_client: b"");
    server!(t, b"214 end\r\n");
    expect!(t, to_client: b"214-help\r\n123 not the end\r\n214-still\r\n214 end\r\n");
}

#[test]
fn attack_17_relaying_multiline_over_cap_421_and_close() {
    let config = Config { max_reply_lines: 3, ..Config::default() };
    let mut t = T::logged_in_with(config);
    client!(t, b"HELP\r\n");
    server!(t, b"214-a\r\nb\r\nc\r\nd\r\n");
    expect!(t, to_client: b"421 ftpgate: the server broke the protocol, closing.\r\n");
    expect!(t, work: shutdown_all(&[]));
    assert!(t.s.is_closed());
}

// ---- 4. login ---------------------------------------------------------------

#[test]
fn relaying_230_logs_in_user_without_password() {
    let mut t = T::new();
    server!(t, b"220 ready\r\n");
    client!(t, b"USER anna\r\nPASS s3cret\r\n");
    expect!(t, to_server: b"USER anna\r\nPASS s3cret\r\n");
    server!(t, b"331 pw\r\n230 ok\r\n");
    assert_eq!(t.audits(), vec![AuditEvent::LoggedIn { user: "anna".into() }]);
    assert!(!format!("{:?}", t.s).contains("s3cret"));
}

#[test]
fn not_logged_in_data_commands_530_locally() {
    let mut t = T::new();
    server!(t, b"220 ready\r\n");
    t.take(Side::Client);
    client!(t, b"PASV\r\nEPSV\r\nPORT 192,0,2,10,156,65\r\nEPRT |1|192.0.2.10|40001|\r\n");
    expect!(t, to_server: b"");
    expect!(t, to_client: &b"530 Please login first.\r\n".repeat(4));
    expect!(t, work: vec![]);
}

#[test]
fn attack_30_logged_in_rein_resets_login() {
    let mut t = T::logged_in();
    client!(t, b"REIN\r\n");
    expect!(t, to_server: b"REIN\r\n");
    server!(t, b"220 again\r\n");
    t.take(Side::Client);
    client!(t, b"PASV\r\n");
    expect!(t, to_server: b"");
    expect!(t, to_client: b"530 Please login first.\r\n");
}

// ---- 5. passive -------------------------------------------------------------

#[test]
fn expect_passive_reply_227_listen_then_released_unchanged() {
    let mut t = passive_listening();
    assert_eq!(t.s.read_budget(Side::Server), t.s.readers[1].space());
    t.input(Input::Accepted { data: DataId(0), peer: sa("192.0.2.10:40001") });
    expect!(t, work: vec![Action::Connect {
        data: DataId(0),
        local: sa("192.0.2.10:0"),
        remote: sa("198.51.100.10:50000"),
    }]);
    t.input(Input::Connected { data: DataId(0), local: sa("192.0.2.10:41000") });
    expect!(t, work: vec![Action::Relay { data: DataId(0) }]);
}

#[test]
fn expect_listener_server_output_held_behind_227() {
    let mut t = T::logged_in();
    client!(t, b"PASV\r\nNOOP\r\n");
    server!(t, b"227 (198,51,100,10,195,80)\r\n200 noop\r\n");
    // Still read behind the hold (a 421 must get through), but not relayed.
    assert!(t.s.read_budget(Side::Server) > 0);
    expect!(t, to_client: b"");
    t.input(Input::Listening { data: DataId(0), local: sa("198.51.100.10:50000") });
    expect!(t, to_client: b"227 (198,51,100,10,195,80)\r\n200 noop\r\n");
}

#[test]
fn attack_21_expect_listening_addr_in_use_retries_port_zero_and_rewrites() {
    let mut t = T::logged_in();
    client!(t, b"PASV\r\n");
    server!(t, b"227 Entering Passive Mode (198,51,100,10,195,80).\r\n");
    t.work();
    t.input(Input::Failed { data: DataId(0), step: DataStep::Bind, error: ErrorKind::AddrInUse });
    expect!(t, work: vec![listen(0, "198.51.100.10:0", "192.0.2.10", Side::Client)]);
    t.input(Input::Listening { data: DataId(0), local: sa("198.51.100.10:50001") });
    expect!(t, to_client: b"227 Entering Passive Mode (198,51,100,10,195,81).\r\n");
    assert_eq!(
        t.audits(),
        vec![AuditEvent::ReplyRewritten {
            data: DataId(0),
            announced: sa("198.51.100.10:50000"),
            local: sa("198.51.100.10:50001"),
        }]
    );
    // The client connects to the new port; the gateway still connects to the
    // server's announced one.
    t.input(Input::Accepted { data: DataId(0), peer: sa("192.0.2.10:40001") });
    expect!(t, work: vec![Action::Connect {
        data: DataId(0),
        local: sa("192.0.2.10:0"),
        remote: sa("198.51.100.10:50000"),
    }]);
}

#[test]
fn expect_listening_second_addr_in_use_425() {
    let mut t = T::logged_in();
    client!(t, b"PASV\r\n");
    server!(t, b"227 (198,51,100,10,195,80)\r\n");
    t.work();
    let failed = Input::Failed { data: DataId(0), step: DataStep::Bind, error: ErrorKind::AddrInUse };
    t.input(failed);
    t.work();
    t.input(failed);
    expect!(t, work: vec![Action::CloseData { data: DataId(0) }]);
    expect!(t, to_client: b"425 Can't open data connection.\r\n");
}

#[test]
fn expect_listening_listen_failure_425_instead_of_227() {
    let mut t = T::logged_in();
    client!(t, b"PASV\r\nNOOP\r\n");
    server!(t, b"227 (198,51,100,10,195,80)\r\n200 ok\r\n");
    t.work();
    let err = ErrorKind::PermissionDenied;
    t.input(Input::Failed { data: DataId(0), step: DataStep::Listen, error: err });
    expect!(t, work: vec![Action::CloseData { data: DataId(0) }]);
    expect!(t, to_client: b"425 Can't open data connection.\r\n200 ok\r\n");
}

#[test]
fn attack_07_expect_passive_reply_foreign_address_rewritten_to_server() {
    let mut t = T::logged_in();
    client!(t, b"PASV\r\n");
    server!(t, b"227 Entering Passive Mode (10,0,0,5,195,80)\r\n");
    expect!(t, work: vec![listen(0, "198.51.100.10:50000", "192.0.2.10", Side::Client)]);
    t.input(Input::Listening { data: DataId(0), local: sa("198.51.100.10:50000") });
    expect!(t, to_client: b"227 Entering Passive Mode (198,51,100,10,195,80).\r\n");
}

#[test]
fn attack_07_expect_passive_reply_foreign_address_refused_by_policy() {
    let config = Config { passive_address_mismatch: PassiveAddressPolicy::Refuse, ..Config::default() };
    let mut t = T::logged_in_with(config);
    client!(t, b"PASV\r\n");
    server!(t, b"227 Entering Passive Mode (10,0,0,5,195,80)\r\n");
    expect!(t, to_client: b"425 ftpgate: passive reply refused by gateway policy.\r\n");
    let actions = t.actions();
    assert!(matches!(actions[..], [Action::Audit(AuditEvent::Refused { side: Side::Server, .. })]));
}

#[test]
fn attack_06_expect_passive_reply_privileged_port_refused() {
    let mut t = T::logged_in();
    client!(t, b"PASV\r\n");
    server!(t, b"227 Entering Passive Mode (198,51,100,10,0,22)\r\n");
    expect!(t, to_client: b"425 ftpgate: passive reply refused by gateway policy.\r\n");
    expect!(t, work: vec![]);
}

#[test]
fn expect_passive_reply_229_listen_on_server_ip() {
    let mut t = T::logged_in();
    client!(t, b"EPSV\r\n");
    expect!(t, to_server: b"EPSV\r\n");
    server!(t, b"229 Entering Extended Passive Mode (|||50000|)\r\n");
    expect!(t, work: vec![listen(0, "198.51.100.10:50000", "192.0.2.10", Side::Client)]);
    t.input(Input::Listening { data: DataId(0), local: sa("198.51.100.10:50000") });
    expect!(t, to_client: b"229 Entering Extended Passive Mode (|||50000|)\r\n");
}

#[test]
fn expect_listening_229_addr_in_use_rewritten() {
    let mut t = T::logged_in();
    client!(t, b"EPSV\r\n");
    server!(t, b"229 Entering Extended Passive Mode (!!!50000!)\r\n");
    t.work();
    t.input(Input::Failed { data: DataId(0), step: DataStep::Bind, error: ErrorKind::AddrNotAvailable });
    expect!(t, work: vec![listen(0, "198.51.100.10:0", "192.0.2.10", Side::Client)]);
    t.input(Input::Listening { data: DataId(0), local: sa("198.51.100.10:50001") });
    expect!(t, to_client: b"229 Entering Extended Passive Mode (|||50001|)\r\n");
}

#[test]
fn expect_accept_accept_failure_closes_channel() {
    let mut t = passive_listening();
    let err = ErrorKind::Other;
    t.input(Input::Failed { data: DataId(0), step: DataStep::Accept, error: err });
    expect!(t, work: vec![Action::CloseData { data: DataId(0) }]);
    client!(t, b"LIST\r\n");
    server!(t, b"425 no data\r\n");
    expect!(t, to_client: b"425 no data\r\n");
}

#[test]
fn attack_05_expect_accept_port_theft_refused_and_keeps_waiting() {
    let mut t = passive_listening();
    t.input(Input::Accepted { data: DataId(0), peer: sa("203.0.113.66:5555") });
    assert_eq!(
        t.actions(),
        vec![
            Action::Refuse { data: DataId(0) },
            Action::Audit(AuditEvent::DataPeerRefused {
                data: DataId(0),
                peer: sa("203.0.113.66:5555"),
                expected: ip("192.0.2.10"),
            }),
        ]
    );
    t.input(Input::Accepted { data: DataId(0), peer: sa("192.0.2.10:40001") });
    assert!(matches!(t.work()[..], [Action::Connect { .. }]));
}

// ---- 6. active --------------------------------------------------------------

#[test]
fn expect_listening_port_forwarded_after_listener_up() {
    let mut t = active_listening();
    client!(t, b"RETR f\r\n");
    expect!(t, to_server: b"RETR f\r\n");
    t.input(Input::Accepted { data: DataId(0), peer: sa("198.51.100.10:20") });
    expect!(t, work: vec![Action::Connect {
        data: DataId(0),
        local: sa("198.51.100.10:20"),
        remote: sa("192.0.2.10:40001"),
    }]);
    t.input(Input::Connected { data: DataId(0), local: sa("198.51.100.10:20") });
    expect!(t, work: vec![Action::Relay { data: DataId(0) }]);
}

#[test]
fn expect_listening_port_held_and_later_lines_wait() {
    let mut t = T::logged_in();
    client!(t, b"PORT 192,0,2,10,156,65\r\nNOOP\r\n");
    assert_eq!(t.s.read_budget(Side::Client), 0);
    expect!(t, to_server: b"");
    t.input(Input::Listening { data: DataId(0), local: sa("192.0.2.10:40001") });
    expect!(t, to_server: b"PORT 192,0,2,10,156,65\r\nNOOP\r\n");
}

/// Relay mode: the server is told a port of the gateway's choosing on the
/// client's address, so that its data connection and the gateway's to the
/// client are two 4-tuples to the gateway's own connection tracking. Not a
/// rewrite worth a record: it is the rule.
#[test]
fn expect_listening_port_server_told_the_gateways_port_client_connected_at_its_own() {
    let mut t = T::logged_in();
    client!(t, b"PORT 192,0,2,10,156,65\r\n");
    expect!(t, work: vec![listen(0, "192.0.2.10:0", "198.51.100.10", Side::Server)]);
    t.input(Input::Listening { data: DataId(0), local: sa("192.0.2.10:50002") });
    expect!(t, to_server: b"PORT 192,0,2,10,195,82\r\n");
    let audits = t.audits();
    assert!(!audits.iter().any(|a| matches!(a, AuditEvent::ReplyRewritten { .. })), "{audits:?}");
    server!(t, b"200 PORT ok\r\n");
    expect!(t, to_client: b"200 PORT ok\r\n");
    client!(t, b"RETR f\r\n");
    expect!(t, to_server: b"RETR f\r\n");
    t.input(Input::Accepted { data: DataId(0), peer: sa("198.51.100.10:20") });
    expect!(t, work: vec![Action::Connect {
        data: DataId(0),
        local: sa("198.51.100.10:20"),
        remote: sa("192.0.2.10:40001"),
    }]);
}

#[test]
fn expect_listening_eprt_server_told_the_gateways_port() {
    let mut t = T::logged_in();
    client!(t, b"EPRT |1|192.0.2.10|40001|\r\n");
    expect!(t, work: vec![listen(0, "192.0.2.10:0", "198.51.100.10", Side::Server)]);
    t.input(Input::Listening { data: DataId(0), local: sa("192.0.2.10:50002") });
    expect!(t, to_server: b"EPRT |1|192.0.2.10|50002|\r\n");
}

/// A port of the kernel's own that cannot be had is not retried: the
/// PORT fails as any set-up failure does.
#[test]
fn expect_listening_port_no_port_left_425_not_retried() {
    let mut t = T::logged_in();
    client!(t, b"PORT 192,0,2,10,156,65\r\n");
    t.work();
    t.input(Input::Failed { data: DataId(0), step: DataStep::Bind, error: ErrorKind::AddrInUse });
    expect!(t, to_server: b"");
    expect!(t, to_client: b"425 Can't open data connection.\r\n");
    assert!(!t.actions().iter().any(|a| matches!(a, Action::Listen { .. })));
}

/// The kernel data path forwards the server's connection to the port the
/// client announced: the PORT passes unchanged. If that port is taken here,
/// any port is asked for, and the rewrite is logged.
#[test]
fn kernel_data_path_expect_listening_port_unchanged_or_rewritten_when_in_use() {
    let mut t = T::logged_in_with(kernel());
    client!(t, b"PORT 192,0,2,10,156,65\r\n");
    expect!(t, work: vec![listen(0, "192.0.2.10:40001", "198.51.100.10", Side::Server)]);
    t.input(Input::Listening { data: DataId(0), local: sa("192.0.2.10:40001") });
    expect!(t, to_server: b"PORT 192,0,2,10,156,65\r\n");
    server!(t, b"200 PORT ok\r\n");
    expect!(t, to_client: b"200 PORT ok\r\n");

    client!(t, b"EPRT |1|192.0.2.10|40002|\r\n");
    t.work();
    t.input(Input::Failed { data: DataId(1), step: DataStep::Bind, error: ErrorKind::AddrInUse });
    expect!(t, work: vec![listen(1, "192.0.2.10:0", "198.51.100.10", Side::Server)]);
    t.input(Input::Listening { data: DataId(1), local: sa("192.0.2.10:50002") });
    expect!(t, to_server: b"EPRT |1|192.0.2.10|50002|\r\n");
    assert!(t.audits().contains(&AuditEvent::ReplyRewritten {
        data: DataId(1),
        announced: sa("192.0.2.10:40002"),
        local: sa("192.0.2.10:50002"),
    }));
}

#[test]
fn attack_01_relaying_port_eprt_third_host_refused_501() {
    let mut t = T::logged_in();
    client!(t, b"PORT 203,0,113,5,0,80\r\n");
    expect!(t, to_client: b"501 ftpgate: the data address must be the client's own.\r\n");
    expect!(t, to_server: b"");
    // Recorded when the run of refused lines ends.
    assert_eq!(t.actions(), vec![]);
    client!(t, b"NOOP\r\n");
    expect!(t, to_server: b"NOOP\r\n");
    server!(t, b"200 ok\r\n");
    expect!(t, to_client: b"200 ok\r\n");
    assert_eq!(
        t.audits(),
        vec![AuditEvent::Refused {
            side: Side::Client,
            reason: "data address is not the client's",
            rule: "bounce",
            attack: Some(1),
            what: "PORT 203,0,113,5,0,80".into(),
        }]
    );
    client!(t, b"EPRT |1|203.0.113.5|4000|\r\n");
    expect!(t, to_client: b"501 ftpgate: the data address must be the client's own.\r\n");
    expect!(t, work: vec![]);
}

#[test]
fn relaying_mangled_pass_refused_without_the_password() {
    let mut t = T::logged_in();
    client!(t, b"pass\tsecret\r\n");
    expect!(t, to_client: b"500 Syntax error, command unrecognized.\r\n");
    // Recorded when the run of refused lines ends.
    client!(t, b"NOOP\r\n");
    expect!(t, to_server: b"NOOP\r\n");
    assert!(matches!(
        &t.audits()[..],
        [AuditEvent::Refused { rule: "command-syntax", what, .. }] if what == "pass"
    ));
}

#[test]
fn attack_02_relaying_port_privileged_refused_501() {
    let mut t = T::logged_in();
    client!(t, b"PORT 192,0,2,10,0,22\r\n");
    expect!(t, to_client: b"501 ftpgate: privileged data port refused.\r\n");
    expect!(t, work: vec![]);
}

#[test]
fn attack_03_relaying_port_malformed_501_and_eprt_family_522() {
    let mut t = T::logged_in();
    client!(t, b"PORT 192,0,2,10,156\r\nPORT 192,0,2,10,70000,1\r\nEPRT |3|x|4000|\r\n");
    expect!(
        t,
        to_client: b"501 Syntax error in data address.\r\n501 Syntax error in data address.\r\n522 Network protocol not supported, use (1,2)\r\n"
    );
    expect!(t, to_server: b"");
    expect!(t, work: vec![]);
}

#[test]
fn attack_04_relaying_eprt_v4_mapped_client_address_accepted() {
    let mut t = T::logged_in();
    client!(t, b"EPRT |2|::ffff:192.0.2.10|40001|\r\n");
    expect!(t, work: vec![listen(0, "192.0.2.10:0", "198.51.100.10", Side::Server)]);
}

#[test]
fn attack_19_expect_accept_active_wrong_server_ip_refused() {
    let mut t = active_listening();
    t.input(Input::Accepted { data: DataId(0), peer: sa("203.0.113.66:20") });
    expect!(t, work: vec![Action::Refuse { data: DataId(0) }]);
}

#[test]
fn relaying_local_reply_waits_behind_owed_replies() {
    let mut t = T::logged_in();
    client!(t, b"NOOP\r\nPORT 1,2,3,4,5,6\r\n");
    expect!(t, to_client: b"");
    server!(t, b"200 noop\r\n");
    expect!(t, to_client: b"200 noop\r\n501 ftpgate: the data address must be the client's own.\r\n");
}

// ---- 7. data channel lifetime ---------------------------------------------------

#[test]
fn attack_23_expect_accept_deadline_closes_listener() {
    let mut t = passive_listening();
    let deadline = t.s.poll_timeout().unwrap();
    assert_eq!(deadline, t.now + Config::default().data_accept_timeout);
    t.now = deadline;
    t.input(Input::Timeout);
    expect!(t, work: vec![Action::CloseData { data: DataId(0) }]);
    assert_eq!(t.s.poll_timeout(), Some(t.s.idle_at));
}

#[test]
fn expect_connect_deadline_closes_and_releases_reply() {
    let mut t = passive_listening();
    client!(t, b"RETR f\r\n");
    t.input(Input::Accepted { data: DataId(0), peer: sa("192.0.2.10:40001") });
    t.work();
    server!(t, b"150 go\r\n426 broken\r\n");
    expect!(t, to_client: b"150 go\r\n");
    t.advance(Config::default().data_connect_timeout);
    assert_eq!(t.s.poll_timeout(), Some(t.now));
    t.input(Input::Timeout);
    // The client's data connection is up: it gets a reset, not a clean end.
    expect!(t, work: vec![Action::ResetData { data: DataId(0) }, Action::CloseData { data: DataId(0) }]);
    expect!(t, to_client: b"426 broken\r\n");
}

#[test]
fn attack_20_expect_accept_new_pasv_closes_previous_listener() {
    let mut t = passive_listening();
    client!(t, b"PASV\r\n");
    expect!(t, work: vec![Action::CloseData { data: DataId(0) }]);
    server!(t, b"227 (198,51,100,10,195,90)\r\n");
    expect!(t, work: vec![listen(1, "198.51.100.10:50010", "192.0.2.10", Side::Client)]);
}

#[test]
fn expect_listening_pipelined_pasv_pasv_first_becomes_425() {
    let mut t = T::logged_in();
    client!(t, b"PASV\r\n");
    server!(t, b"227 (198,51,100,10,195,80)\r\n");
    t.work();
    client!(t, b"PASV\r\n");
    expect!(t, work: vec![Action::CloseData { data: DataId(0) }]);
    expect!(t, to_client: b"425 Can't open data connection.\r\n");
    server!(t, b"227 (198,51,100,10,195,90)\r\n");
    expect!(t, work: vec![listen(1, "198.51.100.10:50010", "192.0.2.10", Side::Client)]);
    t.input(Input::Listening { data: DataId(0), local: sa("198.51.100.10:50000") });
    expect!(t, to_client: b"");
    t.input(Input::Listening { data: DataId(1), local: sa("198.51.100.10:50010") });
    expect!(t, to_client: b"227 (198,51,100,10,195,90)\r\n");
}

#[test]
fn expect_listening_pasv_reply_replaces_held_port_with_425() {
    let mut t = T::logged_in();
    client!(t, b"PASV\r\nPORT 192,0,2,10,156,65\r\n");
    expect!(t, to_server: b"PASV\r\n");
    expect!(t, work: vec![listen(0, "192.0.2.10:0", "198.51.100.10", Side::Server)]);
    server!(t, b"227 (198,51,100,10,195,80)\r\n");
    expect!(t, work: vec![
        Action::CloseData { data: DataId(0) },
        listen(1, "198.51.100.10:50000", "192.0.2.10", Side::Client),
    ]);
    t.input(Input::Listening { data: DataId(1), local: sa("198.51.100.10:50000") });
    expect!(t, to_client: b"227 (198,51,100,10,195,80)\r\n425 Can't open data connection.\r\n");
    expect!(t, to_server: b"");
    assert!(t.s.read_budget(Side::Client) > 0);
}

#[test]
fn attack_20_expect_accept_new_port_closes_previous_listener() {
    let mut t = active_listening();
    client!(t, b"PORT 192,0,2,10,156,70\r\n");
    expect!(t, work: vec![
        Action::CloseData { data: DataId(0) },
        listen(1, "192.0.2.10:0", "198.51.100.10", Side::Server),
    ]);
}

#[test]
fn attack_08_relaying_unsolicited_227_relayed_opens_nothing() {
    let mut t = T::logged_in();
    server!(t, b"227 Entering Passive Mode (198,51,100,10,195,80)\r\n");
    expect!(t, to_client: b"227 Entering Passive Mode (198,51,100,10,195,80)\r\n");
    client!(t, b"NOOP\r\n");
    server!(t, b"227 (198,51,100,10,195,80)\r\n");
    expect!(t, to_client: b"227 (198,51,100,10,195,80)\r\n");
    expect!(t, work: vec![]);
}

#[test]
fn attack_09_expect_passive_reply_unparseable_227_refused_no_stall() {
    // A 227 whose address cannot be read cannot be checked: relayed, the
    // client would go wherever its own parse points.
    let mut t = T::logged_in();
    client!(t, b"PASV\r\nNOOP\r\n");
    server!(t, b"227 Logout.\r\n200 ok\r\n");
    expect!(t, to_client: b"425 ftpgate: passive reply refused by gateway policy.\r\n200 ok\r\n");
    expect!(t, work: vec![]);
    client!(t, b"EPSV\r\n");
    server!(t, b"229 Entering Extended Passive Mode (|||x|)\r\n");
    expect!(t, to_client: b"425 ftpgate: passive reply refused by gateway policy.\r\n");
    // A refusal is the client's to hear as it is.
    client!(t, b"PASV\r\n");
    server!(t, b"425 Cannot open passive connection.\r\n");
    expect!(t, to_client: b"425 Cannot open passive connection.\r\n");
}

#[test]
fn attack_07_expect_passive_reply_blanks_and_zeros_are_read_as_a_lenient_client_would() {
    // A client that reads "(203, 0, 113, 5, 0, 25)" with sscanf would go
    // to 203.0.113.5:25: the gateway reads the same address, finds it is
    // not the server's, and rewrites it (the default policy).
    let mut t = T::logged_in();
    client!(t, b"PASV\r\n");
    server!(t, b"227 Entering Passive Mode (203, 0, 113, 005, 0195, 80).\r\n");
    expect!(t, work: vec![listen(0, "198.51.100.10:50000", "192.0.2.10", Side::Client)]);
    t.input(Input::Listening { data: DataId(0), local: sa("198.51.100.10:50000") });
    expect!(t, to_client: b"227 Entering Passive Mode (198,51,100,10,195,80).\r\n");
    // The server's own address with blanks: the same address, said plainly.
    let mut t = T::logged_in();
    client!(t, b"PASV\r\n");
    server!(t, b"227 (198, 51, 100, 10, 195, 80)\r\n");
    expect!(t, work: vec![listen(0, "198.51.100.10:50000", "192.0.2.10", Side::Client)]);
    t.input(Input::Listening { data: DataId(0), local: sa("198.51.100.10:50000") });
    expect!(t, to_client: b"227 Entering Passive Mode (198,51,100,10,195,80).\r\n");
    assert!(!t.actions().iter().any(|a| matches!(a, Action::Audit(AuditEvent::ReplyRewritten { .. }))));
}

#[test]
fn attack_31_relaying_verb_in_argument_is_not_a_command() {
    let mut t = T::logged_in();
    client!(t, b"RETR PORT 1,2,3,4,5,6\r\n");
    expect!(t, to_server: b"RETR PORT 1,2,3,4,5,6\r\n");
    server!(t, b"200 227 Entering Passive Mode (1,2,3,4,5,6)\r\n");
    expect!(t, work: vec![]);
}

// ---- 8. transfer-complete ordering -------------------------------------------

#[test]
fn attack_25_relaying_226_held_until_relayed() {
    let mut t = passive_relaying_retr();
    server!(t, b"226 Transfer complete\r\n");
    expect!(t, to_client: b"");
    t.advance(Duration::from_secs(2));
    t.input(Input::Relayed { data: DataId(0), to_client: 1234, to_server: 0 });
    assert_eq!(
        t.actions(),
        vec![
            Action::CloseData { data: DataId(0) },
            Action::Audit(AuditEvent::Transfer {
                data: DataId(0),
                mode: DataMode::Passive,
                user: Some("anna".into()),
                command: "RETR".into(),
                path: Some("file.bin".into()),
                rest: None,
                legs: Box::new(DataLegs {
                    client: Some(DataLeg { peer: sa("192.0.2.10:40001"), local: sa("198.51.100.10:50000") }),
                    server: Some(DataLeg { peer: sa("198.51.100.10:50000"), local: sa("192.0.2.10:41000") }),
                }),
                to_client: 1234,
                to_server: 0,
                duration: Duration::from_secs(2),
                reply: Some(226),
                server_reply: Some(226),
                result: TransferResult::Ok,
            }),
        ]
    );
    expect!(t, to_client: b"226 Transfer complete\r\n");
}

fn kernel() -> Config {
    Config { kernel_data_path: true, ..Config::default() }
}

/// `kernel_data_path`: the kernel forwards the data, so the 226 goes out
/// as the server sent it, before the end of the data connection is known;
/// the record waits for that end.
#[test]
fn kernel_data_path_relaying_226_relayed_at_once_logged_at_relayed() {
    let mut t = passive_relaying_retr_with(kernel());
    server!(t, b"226 Transfer complete\r\n");
    expect!(t, to_client: b"226 Transfer complete\r\n");
    expect!(t, work: vec![]);
    t.advance(Duration::from_secs(2));
    t.input(Input::Relayed { data: DataId(0), to_client: 1234, to_server: 0 });
    assert!(matches!(
        t.actions()[..],
        [
            Action::CloseData { data: DataId(0) },
            Action::Audit(AuditEvent::Transfer {
                to_client: 1234,
                reply: Some(226),
                server_reply: Some(226),
                result: TransferResult::Ok,
                ..
            })
        ]
    ));
}

/// `kernel_data_path`: ABOR during a transfer the kernel forwards is the
/// server's to act on. The gateway cannot cut the connection, so it asks
/// for no reset and does not turn the server's reply into its own 426.
#[test]
fn kernel_data_path_relaying_abor_forwarded_no_cut_server_replies_pass() {
    let mut t = passive_relaying_retr_with(kernel());
    client!(t, b"ABOR\r\n");
    let actions = t.actions();
    assert!(
        !actions.iter().any(|a| matches!(a, Action::ResetData { .. } | Action::CloseData { .. })),
        "{actions:?}"
    );
    assert!(t.take(Side::Server).ends_with(b"ABOR\r\n"));
    server!(t, b"426 Connection closed; transfer aborted by server.\r\n226 ABOR ok\r\n");
    expect!(t, to_client: b"426 Connection closed; transfer aborted by server.\r\n226 ABOR ok\r\n");
    t.input(Input::RelayFailed {
        data: DataId(0),
        leg: Side::Server,
        error: ErrorKind::ConnectionReset,
        to_client: 4096,
        to_server: 0,
    });
    assert!(matches!(
        transfer_record(&mut t),
        AuditEvent::Transfer {
            reply: Some(426),
            server_reply: Some(426),
            result: TransferResult::Failed(_),
            ..
        }
    ));
}

/// A reset after the 226 went out: the record says what the client got
/// (226) and that the data connection was reset.
#[test]
fn kernel_data_path_relaying_reset_after_226_logged_failed_with_226() {
    let mut t = passive_relaying_retr_with(kernel());
    server!(t, b"226 Transfer complete\r\n");
    expect!(t, to_client: b"226 Transfer complete\r\n");
    t.input(Input::RelayFailed {
        data: DataId(0),
        leg: Side::Server,
        error: ErrorKind::ConnectionReset,
        to_client: 10,
        to_server: 0,
    });
    expect!(t, to_client: b"");
    let audits = t.audits();
    assert!(
        matches!(
            audits[..],
            [AuditEvent::Transfer {
                reply: Some(226),
                result: TransferResult::Failed(TransferFailure::Reset { leg: Side::Server }),
                ..
            }]
        ),
        "{audits:?}"
    );
}

/// The client closes its control connection while the kernel carries its
/// download: over routing the data connection goes on, so ftpgate neither
/// cuts it nor ends the session at once. It stops reading the client and
/// waits for the kernel's end and the server's reply, in either order;
/// then the record is whole and the close passes on to the server. After
/// a FIN the client still gets the reply; after a reset its side is shut
/// at once.
#[test]
fn kernel_data_path_client_close_mid_transfer_waits_for_the_end_then_closes() {
    for (reply_first, abortive) in [(true, false), (false, false), (true, true), (false, true)] {
        let mut t = passive_relaying_retr_with(kernel());
        let ctx = format!("reply_first {reply_first}, abortive {abortive}");
        if abortive {
            t.input(Input::Aborted { from: Side::Client });
            assert_eq!(t.actions(), vec![Action::Shutdown { side: Side::Client }], "{ctx}");
        } else {
            t.input(Input::Closed { from: Side::Client });
            assert_eq!(t.actions(), vec![], "{ctx}");
        }
        assert!(!t.s.is_closed());
        client!(t, b"DELE file.bin\r\n");
        expect!(t, to_server: b"");
        let relayed = Input::Relayed { data: DataId(0), to_client: 1234, to_server: 0 };
        if reply_first {
            server!(t, b"226 Transfer complete\r\n");
            assert!(t.audits().is_empty(), "logged before the kernel's end");
            t.input(relayed);
        } else {
            t.input(relayed);
            assert!(t.audits().is_empty(), "logged before the final reply");
            server!(t, b"226 Transfer complete\r\n");
        }
        let actions = t.actions();
        assert!(actions.contains(&Action::Shutdown { side: Side::Server }), "{actions:?}");
        assert_eq!(
            actions.contains(&Action::Shutdown { side: Side::Client }),
            !abortive,
            "{ctx}: {actions:?}"
        );
        assert!(!actions.iter().any(|a| matches!(a, Action::ResetData { .. })), "{actions:?}");
        if !abortive {
            expect!(t, to_client: b"226 Transfer complete\r\n");
        }
        let audits: Vec<&AuditEvent> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Audit(e) => Some(e),
                _ => None,
            })
            .collect();
        assert!(
            matches!(
                audits[..],
                [
                    AuditEvent::Transfer { result: TransferResult::Ok, server_reply: Some(226), .. },
                    AuditEvent::SessionEnded { reason: "client closed", .. },
                ]
            ),
            "{audits:?}"
        );
        assert!(t.s.is_closed());
    }
}

/// The session ends for another reason while it waits after the client
/// left (here a malformed server reply): the client's side, shut when it
/// left, is not shut again (fuzz: crash-kernel-client-gone-then-server-
/// broke-regression).
#[test]
fn kernel_data_path_teardown_after_client_left_shuts_each_side_once() {
    let mut t = passive_relaying_retr_with(kernel());
    t.input(Input::Aborted { from: Side::Client });
    assert_eq!(t.actions(), vec![Action::Shutdown { side: Side::Client }]);
    server!(t, b"\r\n");
    let actions = t.actions();
    let shut = |side| actions.iter().filter(|a| **a == Action::Shutdown { side }).count();
    assert_eq!((shut(Side::Client), shut(Side::Server)), (0, 1), "{actions:?}");
    assert!(t.s.is_closed());
}

/// The wait for a kernel-carried transfer after the client left is
/// bounded by the idle timeout: then the session ends and the transfer,
/// whose end nobody saw, is logged aborted.
#[test]
fn kernel_data_path_client_close_wait_bounded_by_idle_timeout() {
    let mut t = passive_relaying_retr_with(kernel());
    t.input(Input::Closed { from: Side::Client });
    t.actions();
    let by = t.s.poll_timeout().expect("a deadline for the wait");
    assert_eq!(by, t.now + Config::default().idle_timeout);
    t.advance(Config::default().idle_timeout);
    t.input(Input::Timeout);
    let actions = t.actions();
    assert!(actions.contains(&Action::Shutdown { side: Side::Server }), "{actions:?}");
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Audit(AuditEvent::Transfer {
                result: TransferResult::Aborted(AbortCause::SessionEnded),
                ..
            })
        )),
        "{actions:?}"
    );
    assert!(t.s.is_closed());
}

/// Without a transfer the kernel carries, a client's close ends the
/// session at once, as on the relay path.
#[test]
fn kernel_data_path_client_close_without_transfer_ends_at_once() {
    let mut t = passive_listening_with(kernel());
    t.input(Input::Closed { from: Side::Client });
    assert!(t.actions().contains(&Action::Shutdown { side: Side::Server }));
    assert!(t.s.is_closed());
}

/// No idle deadline for a kernel-forwarded connection: the shell sees
/// no bytes move, the kernel's connection tracking times it out.
#[test]
fn kernel_data_path_relaying_no_idle_deadline() {
    let mut relay = passive_relaying_retr();
    let mut kernel = passive_relaying_retr_with(kernel());
    relay.advance(Duration::from_secs(301));
    kernel.advance(Duration::from_secs(301));
    relay.input(Input::Timeout);
    kernel.input(Input::Timeout);
    assert!(relay.actions().contains(&Action::ResetData { data: DataId(0) }));
    assert!(!kernel.actions().contains(&Action::ResetData { data: DataId(0) }));
}

/// Seen in the lab with vsftpd and an empty file in active mode: the
/// server connects, sends 150 and 226 at once, and the gateway reads the
/// control channel before it accepts the data connection. The 226 must wait
/// for that connection, not close the listener under it.
#[test]
fn expect_accept_active_226_before_accept_held_until_relayed() {
    let mut t = active_listening();
    client!(t, b"RETR empty.bin\r\n");
    server!(t, b"150 Opening BINARY mode data connection\r\n226 Transfer complete.\r\n");
    expect!(t, to_client: b"150 Opening BINARY mode data connection\r\n");
    expect!(t, work: vec![]);
    t.input(Input::Accepted { data: DataId(0), peer: sa("198.51.100.10:20") });
    expect!(t, work: vec![Action::Connect {
        data: DataId(0),
        local: sa("198.51.100.10:20"),
        remote: sa("192.0.2.10:40001"),
    }]);
    t.input(Input::Connected { data: DataId(0), local: sa("198.51.100.10:20") });
    expect!(t, work: vec![Action::Relay { data: DataId(0) }]);
    expect!(t, to_client: b"");
    t.input(Input::Relayed { data: DataId(0), to_client: 0, to_server: 0 });
    expect!(t, to_client: b"226 Transfer complete.\r\n");
    assert!(matches!(
        t.audits()[..],
        [AuditEvent::Transfer { reply: Some(226), result: TransferResult::Ok, .. }]
    ));
}

/// The same early 226 with a connection that never comes: the accept
/// deadline closes the listener and releases the reply as 426, since the
/// client got no data at all.
#[test]
fn expect_accept_active_226_then_no_connection_released_as_426_at_deadline() {
    let mut t = active_listening();
    client!(t, b"RETR empty.bin\r\n");
    server!(t, b"150 Opening\r\n226 Transfer complete.\r\n");
    expect!(t, to_client: b"150 Opening\r\n");
    t.advance(Duration::from_secs(31));
    t.input(Input::Timeout);
    expect!(t, to_client: b"426 Connection closed; transfer aborted.\r\n");
    // Nothing was connected: no reset, just the close.
    assert!(matches!(
        t.actions()[..],
        [
            Action::CloseData { data: DataId(0) },
            Action::Audit(AuditEvent::Transfer {
                reply: Some(426),
                server_reply: Some(226),
                result: TransferResult::Failed(TransferFailure::AcceptTimeout),
                ..
            })
        ]
    ));
}

/// Found by the `session` fuzz target (seed
/// `crash-early-226-long-tick-regression`): one tick far past both the accept
/// deadline and the idle deadline must end the session; the held 226 used to
/// hide the idle deadline until a second tick.
#[test]
fn expect_accept_active_226_held_one_long_tick_closes_session() {
    let mut t = active_listening();
    client!(t, b"RETR empty.bin\r\n");
    server!(t, b"150 Opening\r\n226 Transfer complete.\r\n");
    expect!(t, to_client: b"150 Opening\r\n");
    t.advance(Duration::from_secs(3600));
    t.input(Input::Timeout);
    let out = t.take(Side::Client);
    assert!(
        out.starts_with(b"426 Connection closed; transfer aborted.\r\n421 "),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    let actions = t.actions();
    assert!(actions.contains(&Action::CloseData { data: DataId(0) }));
    assert!(actions.contains(&Action::Shutdown { side: Side::Client }));
    assert!(actions.contains(&Action::Shutdown { side: Side::Server }));
}

#[test]
fn expect_login_230_audited_once() {
    let mut t = T::new();
    server!(t, b"220 (vsFTPd 3.0.3)\r\n");
    client!(t, b"USER anonymous\r\n");
    server!(t, b"230 Login successful.\r\n");
    client!(t, b"PASS lab@\r\n");
    server!(t, b"230 Already logged in.\r\n");
    client!(t, b"PASV\r\n");
    let logins = t.audits().into_iter().filter(|e| matches!(e, AuditEvent::LoggedIn { .. })).count();
    assert_eq!(logins, 1);
}

#[test]
fn relaying_relayed_before_226_logged_at_reply() {
    let mut t = passive_relaying_retr();
    t.input(Input::Relayed { data: DataId(0), to_client: 7, to_server: 0 });
    expect!(t, work: vec![Action::CloseData { data: DataId(0) }]);
    server!(t, b"226 ok\r\n");
    expect!(t, to_client: b"226 ok\r\n");
    let audits = t.audits();
    assert!(matches!(
        audits[..],
        [AuditEvent::Transfer { reply: Some(226), result: TransferResult::Ok, to_client: 7, .. }]
    ));
}

#[test]
fn expect_accept_425_released_at_once_and_closed() {
    let mut t = passive_listening();
    client!(t, b"RETR f\r\n");
    server!(t, b"425 no data\r\n");
    expect!(t, to_client: b"425 no data\r\n");
    let actions = t.actions();
    assert_eq!(actions[0], Action::CloseData { data: DataId(0) });
    assert!(matches!(
        actions[1],
        Action::Audit(AuditEvent::Transfer {
            result: TransferResult::Failed(TransferFailure::ServerReply { code: 425 }),
            reply: Some(425),
            ..
        })
    ));
}

#[test]
fn relaying_relay_start_failure_resets_and_226_becomes_426() {
    let mut t = passive_relaying_retr();
    server!(t, b"226 ok\r\n");
    t.input(Input::Failed { data: DataId(0), step: DataStep::Relay, error: ErrorKind::OutOfMemory });
    expect!(t, to_client: b"426 Connection closed; transfer aborted.\r\n");
    let actions = t.actions();
    assert_eq!(actions[..2], [Action::ResetData { data: DataId(0) }, Action::CloseData { data: DataId(0) }]);
    let why = TransferFailure::SetupFailed { step: DataStep::Relay, error: ErrorKind::OutOfMemory };
    assert!(matches!(
        actions[2],
        Action::Audit(AuditEvent::Transfer { result: TransferResult::Failed(w), reply: Some(426), server_reply: Some(226), .. })
            if w == why
    ));
}

#[test]
fn expect_connect_failure_before_reply_server_error_follows() {
    let mut t = passive_listening();
    client!(t, b"RETR f\r\n");
    t.input(Input::Accepted { data: DataId(0), peer: sa("192.0.2.10:40001") });
    t.work();
    t.input(Input::Failed { data: DataId(0), step: DataStep::Connect, error: ErrorKind::ConnectionRefused });
    expect!(t, work: vec![Action::ResetData { data: DataId(0) }, Action::CloseData { data: DataId(0) }]);
    server!(t, b"425 cannot\r\n");
    expect!(t, to_client: b"425 cannot\r\n");
}

#[test]
fn relaying_next_pasv_waits_for_running_transfer() {
    let mut t = passive_relaying_retr();
    client!(t, b"PASV\r\n");
    expect!(t, to_server: b"");
    server!(t, b"226 ok\r\n");
    expect!(t, to_server: b"");
    t.input(Input::Relayed { data: DataId(0), to_client: 1, to_server: 0 });
    expect!(t, to_server: b"PASV\r\n");
}

// ---- 9. closes ----------------------------------------------------------------

/// A reset (or a failed read or write) ends the session at once: nothing
/// owed to the client can reach it any more.
#[test]
fn relaying_client_aborted_shuts_everything() {
    let mut t = passive_relaying_retr();
    t.input(Input::Aborted { from: Side::Client });
    let actions = t.actions();
    assert_eq!(
        actions[..3],
        [
            Action::Shutdown { side: Side::Server },
            Action::ResetData { data: DataId(0) },
            Action::CloseData { data: DataId(0) }
        ]
    );
    assert!(matches!(
        actions[3],
        Action::Audit(AuditEvent::Transfer { result: TransferResult::Aborted(AbortCause::SessionEnded), .. })
    ));
    assert_eq!(actions[4], Action::Shutdown { side: Side::Client });
    assert!(matches!(actions[5], Action::Audit(AuditEvent::SessionEnded { .. })));
    assert!(t.s.is_closed());
    t.input(Input::Received { from: Side::Server, data: b"226 x\r\n" });
    assert_eq!(t.actions(), vec![]);
}

/// A client's FIN on the control connection is a half-close, as over a
/// router: the transfer it started runs to its end, its final reply is
/// delivered, and only then does the close pass on to the server.
#[test]
fn relaying_client_half_close_lets_the_transfer_finish() {
    let mut t = passive_relaying_retr();
    t.input(Input::Closed { from: Side::Client });
    expect!(t, work: vec![]);
    assert!(!t.s.is_closed());
    server!(t, b"226 Transfer complete.\r\n");
    expect!(t, work: vec![]);
    t.input(Input::Relayed { data: DataId(0), to_client: 3, to_server: 0 });
    expect!(t, to_client: b"226 Transfer complete.\r\n");
    let actions = t.actions();
    let work: Vec<&Action> = actions.iter().filter(|a| !matches!(a, Action::Audit(_))).collect();
    assert_eq!(
        work,
        [
            &Action::CloseData { data: DataId(0) },
            &Action::Shutdown { side: Side::Server },
            &Action::Shutdown { side: Side::Client }
        ]
    );
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Audit(AuditEvent::Transfer { result: TransferResult::Ok, reply: Some(226), .. })
    )));
    assert!(t.s.is_closed());
}

/// Commands the client sent before its FIN are forwarded and answered in
/// order, even those the core had to hold; then the session ends.
#[test]
fn client_half_close_after_commands_gets_their_replies() {
    let mut t = T::logged_in();
    client!(t, b"SYST\r\nPWD\r\n");
    t.input(Input::Closed { from: Side::Client });
    expect!(t, to_server: b"SYST\r\nPWD\r\n");
    expect!(t, work: vec![]);
    server!(t, b"215 UNIX Type: L8\r\n");
    expect!(t, to_client: b"215 UNIX Type: L8\r\n");
    expect!(t, work: vec![]);
    server!(t, b"257 \"/\"\r\n");
    expect!(t, to_client: b"257 \"/\"\r\n");
    expect!(t, work: vec![Action::Shutdown { side: Side::Server }, Action::Shutdown { side: Side::Client }]);
    assert!(t.s.is_closed());
}

/// A data channel that no transfer command owns is not owed: ftplib, on
/// a refused STOR, has connected the channel and then closes the control
/// connection. The session ends at once, not at the data deadline.
#[test]
fn client_half_close_with_an_unused_channel_ends_the_session() {
    let mut t = passive_listening();
    t.input(Input::Accepted { data: DataId(0), peer: sa("192.0.2.10:40001") });
    t.input(Input::Connected { data: DataId(0), local: sa("192.0.2.10:41000") });
    t.work();
    t.input(Input::Closed { from: Side::Client });
    t.actions();
    assert!(t.s.is_closed());
}

/// A client that closes before the greeting (a health check) still gets
/// it, then the session ends; a line it sent first is answered too.
#[test]
fn client_half_close_before_the_greeting_gets_it() {
    for line in [&b""[..], b"QUIT\r\n"] {
        let mut t = T::with(Config::default());
        client!(t, line);
        t.input(Input::Closed { from: Side::Client });
        expect!(t, work: vec![]);
        server!(t, b"220 ready\r\n");
        expect!(t, to_client: b"220 ready\r\n");
        if line.is_empty() {
            expect!(t, work: vec![Action::Shutdown { side: Side::Server }, Action::Shutdown { side: Side::Client }]);
        } else {
            expect!(t, to_server: b"QUIT\r\n");
            expect!(t, work: vec![]);
            server!(t, b"221 bye\r\n");
            expect!(t, to_client: b"221 bye\r\n");
            expect!(t, work: vec![Action::Shutdown { side: Side::Server }, Action::Shutdown { side: Side::Client }]);
        }
        assert!(t.s.is_closed());
    }
}

/// A half-close with nothing owed ends the session at once, as before.
#[test]
fn client_half_close_at_rest_ends_the_session() {
    let mut t = T::logged_in();
    t.input(Input::Closed { from: Side::Client });
    expect!(t, work: vec![Action::Shutdown { side: Side::Server }, Action::Shutdown { side: Side::Client }]);
    assert!(t.s.is_closed());
}

/// A half-closed client whose server never answers: the idle timeout still
/// ends the session (it must not wait forever for a reply).
#[test]
fn client_half_close_unanswered_ends_at_idle_timeout() {
    let mut t = T::logged_in();
    client!(t, b"SYST\r\n");
    t.input(Input::Closed { from: Side::Client });
    expect!(t, to_server: b"SYST\r\n");
    expect!(t, work: vec![]);
    let when = t.s.poll_timeout().expect("a deadline while a reply is owed");
    t.now = when;
    t.input(Input::Timeout);
    t.actions();
    assert!(t.s.is_closed());
}

#[test]
fn relaying_server_closed_delivers_held_226_after_relay() {
    let mut t = passive_relaying_retr();
    server!(t, b"226 ok\r\n221 bye\r\n");
    t.input(Input::Closed { from: Side::Server });
    expect!(t, work: vec![]);
    assert!(!t.s.is_closed());
    t.input(Input::Relayed { data: DataId(0), to_client: 3, to_server: 0 });
    expect!(t, to_client: b"226 ok\r\n221 bye\r\n");
    let work = t.work();
    assert_eq!(
        work,
        vec![
            Action::CloseData { data: DataId(0) },
            Action::Shutdown { side: Side::Client },
            Action::Shutdown { side: Side::Server },
        ]
    );
    assert!(t.s.is_closed());
}

#[test]
fn relaying_server_closed_processes_buffered_lines_then_closes() {
    let mut t = T::logged_in();
    client!(t, b"QUIT\r\n");
    server!(t, b"221 bye\r\n");
    t.input(Input::Closed { from: Side::Server });
    expect!(t, to_client: b"221 bye\r\n");
    expect!(t, work: shutdown_all(&[]));
    assert!(t.s.is_closed());
}

/// The server's whole session died mid-transfer (kill -9 of vsftpd): its
/// control connection ends with no final reply. The server went away, the
/// client did not give up: the transfer failed, and both legs are reset.
#[test]
fn relaying_server_closed_without_final_reply_records_failed_server_closed() {
    let mut t = passive_relaying_retr();
    t.input(Input::Closed { from: Side::Server });
    let actions = t.actions();
    assert!(actions.contains(&Action::ResetData { data: DataId(0) }), "{actions:?}");
    let record = actions.iter().find(|a| matches!(a, Action::Audit(AuditEvent::Transfer { .. })));
    assert!(
        matches!(
            record,
            Some(Action::Audit(AuditEvent::Transfer {
                reply: None,
                server_reply: None,
                result: TransferResult::Failed(TransferFailure::ServerClosed),
                ..
            }))
        ),
        "{actions:?}"
    );
    assert!(t.s.is_closed());
}

/// A server that says `421` mid-transfer is going away just as one that
/// closes: the client gets the 421 (never a 2xx), both legs are reset and
/// the transfer failed; nobody aborted it.
#[test]
fn relaying_server_421_mid_transfer_records_failed_server_closed() {
    let mut t = passive_relaying_retr();
    t.input(Input::Progress { data: DataId(0), to_client: 4096, to_server: 0 });
    server!(t, b"421 Service going down.\r\n");
    expect!(t, to_client: b"421 Service going down.\r\n");
    let actions = t.actions();
    assert!(actions.contains(&Action::ResetData { data: DataId(0) }), "{actions:?}");
    let record = actions.iter().find(|a| matches!(a, Action::Audit(AuditEvent::Transfer { .. })));
    assert!(
        matches!(
            record,
            Some(Action::Audit(AuditEvent::Transfer {
                result: TransferResult::Failed(TransferFailure::ServerClosed),
                ..
            }))
        ),
        "{actions:?}"
    );
    assert!(t.s.is_closed());
}

/// The same behind a held 226 (ATTACKS.md 18): the relay is still running,
/// so the 226 becomes a 426, then the 421; the transfer failed.
#[test]
fn relaying_held_226_then_421_records_failed_server_closed() {
    let mut t = passive_relaying_retr();
    server!(t, b"226 Transfer complete.\r\n421 Service going down.\r\n");
    expect!(t, to_client: b"426 Connection closed; transfer aborted.\r\n421 Service going down.\r\n");
    assert!(matches!(
        transfer_record(&mut t),
        AuditEvent::Transfer {
            reply: Some(426),
            result: TransferResult::Failed(TransferFailure::ServerClosed),
            ..
        }
    ));
    assert!(t.s.is_closed());
}

#[test]
fn relayed_then_server_closed_before_226_records_failed_server_closed() {
    let mut t = passive_relaying_retr();
    t.input(Input::Relayed { data: DataId(0), to_client: 3, to_server: 0 });
    t.input(Input::Closed { from: Side::Server });
    assert!(matches!(
        transfer_record(&mut t),
        AuditEvent::Transfer {
            reply: None,
            result: TransferResult::Failed(TransferFailure::ServerClosed),
            ..
        }
    ));
}

#[test]
fn attack_18_expect_accept_421_relayed_then_teardown_closes_listener() {
    let mut t = passive_listening();
    server!(t, b"421 Timeout.\r\n");
    expect!(t, to_client: b"421 Timeout.\r\n");
    expect!(t, work: shutdown_all(&[0]));
    assert!(t.s.is_closed());
}

#[test]
fn relaying_drain_without_transfer_closes_with_421() {
    let mut t = T::logged_in();
    t.input(Input::Drain);
    expect!(t, to_client: b"421 ftpgate is shutting down.\r\n");
    expect!(t, work: shutdown_all(&[]));
}

#[test]
fn relaying_drain_during_transfer_waits_for_it() {
    let mut t = passive_relaying_retr();
    t.input(Input::Drain);
    expect!(t, work: vec![]);
    server!(t, b"226 ok\r\n");
    t.input(Input::Relayed { data: DataId(0), to_client: 3, to_server: 0 });
    expect!(t, to_client: b"226 ok\r\n421 ftpgate is shutting down.\r\n");
    assert!(t.s.is_closed());
}

#[test]
fn relaying_idle_timeout_421_and_close() {
    let mut t = T::logged_in();
    let at = t.s.poll_timeout().unwrap();
    assert_eq!(at, t.now + Config::default().idle_timeout);
    t.now = at;
    t.input(Input::Timeout);
    expect!(t, to_client: b"421 Control connection idle for too long, closing.\r\n");
    assert!(t.s.is_closed());
}

#[test]
fn relaying_long_transfer_end_restarts_idle_deadline() {
    let mut t = passive_relaying_retr();
    t.advance(Duration::from_secs(5000));
    server!(t, b"226 ok\r\n");
    t.input(Input::Relayed { data: DataId(0), to_client: 3, to_server: 0 });
    assert_eq!(t.s.poll_timeout(), Some(t.now + Config::default().idle_timeout));
}

#[test]
fn relaying_no_control_idle_timeout_while_transfer_runs_only_data_idle() {
    let data_idle = Config::default().idle_timeout * 3;
    let t = passive_relaying_retr_with(Config { data_idle_timeout: data_idle, ..Config::default() });
    assert_eq!(t.s.poll_timeout(), Some(t.now + data_idle));
}

// ---- 10. hostile input --------------------------------------------------------

#[test]
fn attack_12_relaying_overlong_client_line_500_and_close() {
    let mut t = T::logged_in();
    let mut sent = 0;
    while t.s.read_budget(Side::Client) > 0 && sent < 100_000 {
        let n = t.s.read_budget(Side::Client).min(1000);
        client!(t, &vec![b'a'; n]);
        sent += n;
    }
    expect!(t, to_client: b"500 Line too long.\r\n");
    expect!(t, to_server: b"");
    assert!(t.s.is_closed());
}

#[test]
fn attack_12_relaying_overlong_server_line_421_and_close() {
    let mut t = T::logged_in();
    server!(t, &vec![b'2'; crate::line::MAX_LINE + 10]);
    expect!(t, to_client: b"421 ftpgate: the server broke the protocol, closing.\r\n");
    assert!(t.s.is_closed());
}

#[test]
fn attack_13_relaying_nul_and_bare_cr_refused_500_session_goes_on() {
    let mut t = T::logged_in();
    client!(t, b"RETR a\0b\r\nPWD\rPORT 1,2,3,4,5,6\r\nNOOP\n");
    expect!(t, to_client: &b"500 Line refused: NUL or bare CR.\r\n".repeat(2));
    expect!(t, to_server: b"NOOP\r\n");
}

#[test]
fn attack_29_relaying_lprt_lpsv_502_never_relayed() {
    let mut t = T::logged_in();
    client!(t, b"LPSV\r\nLPRT 4,4,192,0,2,10,2,156,65\r\n");
    expect!(t, to_server: b"");
    expect!(t, to_client: &b"502 ftpgate: LPRT/LPSV not supported, use EPRT/EPSV.\r\n".repeat(2));
}

#[test]
fn attack_14_relaying_telnet_iac_iac_survives_both_directions() {
    let mut t = T::logged_in();
    client!(t, b"RETR a\xff\xffb\r\n");
    expect!(t, to_server: b"RETR a\xff\xffb\r\n");
    server!(t, b"550 a\xff\xffb: no\r\n");
    assert_eq!(t.take(Side::Client), b"550 a\xff\xffb: no\r\n");
}

#[test]
fn attack_14_relaying_telnet_negotiation_answered_ip_dm_stripped() {
    let mut t = T::logged_in();
    client!(t, b"\xff\xfd\x01\xff\xf4\xff\xf2NOOP\r\n");
    expect!(t, to_server: b"NOOP\r\n");
    assert_eq!(t.take(Side::Client), b"\xff\xfc\x01");
}

#[test]
fn attack_28_relaying_epsv_all_then_port_pasv_eprt_refused() {
    let mut t = T::logged_in();
    client!(t, b"EPSV ALL\r\n");
    expect!(t, to_server: b"EPSV ALL\r\n");
    server!(t, b"200 ok\r\n");
    t.take(Side::Client);
    client!(t, b"PASV\r\nPORT 192,0,2,10,156,65\r\nEPRT |1|192.0.2.10|40001|\r\nEPSV\r\n");
    expect!(t, to_client: &b"503 ftpgate: EPSV ALL in effect, use EPSV.\r\n".repeat(3));
    expect!(t, to_server: b"EPSV\r\n");
}

#[test]
fn attack_27_relaying_auth_tls_refused_locally() {
    let mut t = T::new();
    server!(t, b"220 ready\r\n");
    t.take(Side::Client);
    client!(t, b"AUTH TLS\r\n");
    expect!(t, to_server: b"");
    expect!(t, to_client: b"534 ftpgate: AUTH/TLS on the control channel refused by policy.\r\n");
}

#[test]
fn attack_10_relaying_junk_line_500_not_forwarded() {
    let mut t = T::logged_in();
    client!(t, b"\r\nPOST/x\r\nNOOP\r\n");
    expect!(t, to_client: b"500 Syntax error, command unrecognized.\r\n500 Syntax error, command unrecognized.\r\n");
    expect!(t, to_server: b"NOOP\r\n");
    assert_eq!(
        t.audits(),
        vec![AuditEvent::RefusedLines {
            side: Side::Client,
            count: 2,
            reason: "command syntax",
            rule: "command-syntax",
            attack: Some(10),
            what: "".into(),
            rules: vec![("command-syntax", 2)],
        }]
    );
}

#[test]
fn attack_10_relaying_http_request_line_421_never_forwarded() {
    let mut t = T::logged_in();
    client!(t, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    expect!(t, to_server: b"");
    expect!(t, to_client: b"421 ftpgate: this is an FTP service; closing.\r\n");
    let actions = t.actions();
    assert_eq!(
        actions[0],
        Action::Audit(AuditEvent::Refused {
            side: Side::Client,
            reason: "not FTP: HTTP request",
            rule: "not-ftp",
            attack: Some(10),
            what: "GET / HTTP/1.1".into()
        })
    );
    assert!(t.s.is_closed());
}

fn greeted() -> T {
    let mut t = T::new();
    server!(t, b"220 ready\r\n");
    t.take(Side::Client);
    t
}

#[test]
fn attack_10_first_line_not_ftp_421_nothing_reaches_server() {
    for (first, reason) in [
        (&b"GET / HTTP/1.1\r\n"[..], "not FTP: HTTP request"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "not FTP: no command verb"),
        (b"12345\r\n", "not FTP: no command verb"),
        (b"USER a\x01b\r\n", "not FTP: binary"),
        (b"USER a\0b\r\n", "not FTP: binary"),
        // a TLS ClientHello: judged on its first bytes, no line end needed
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", "not FTP: binary"),
    ] {
        let mut t = greeted();
        client!(t, first);
        expect!(t, to_server: b"");
        expect!(t, to_client: b"421 ftpgate: this is an FTP service; closing.\r\n");
        let audits = t.audits();
        assert!(
            matches!(&audits[0], AuditEvent::Refused { side: Side::Client, reason: r, .. } if *r == reason),
            "{first:?}: {audits:?}"
        );
        assert!(matches!(audits.last(), Some(AuditEvent::SessionEnded { .. })), "{audits:?}");
        assert!(t.s.is_closed(), "{first:?}");
    }
}

#[test]
fn attack_10_first_line_ftp_then_later_syntax_errors_only_500() {
    let mut t = greeted();
    client!(t, b"USER caf\xc3\xa9\r\n");
    expect!(t, to_server: b"USER caf\xc3\xa9\r\n");
    client!(t, b"12345\r\n");
    server!(t, b"331 pw\r\n");
    expect!(t, to_client: b"331 pw\r\n500 Syntax error, command unrecognized.\r\n");
    assert!(!t.s.is_closed());
}

#[test]
fn attack_10_relaying_ten_refused_lines_close_with_one_record() {
    let mut t = T::logged_in();
    let flood = b"LPSV\r\n".repeat(9);
    client!(t, &flood);
    assert_eq!(
        t.take(Side::Client).len(),
        9 * b"502 ftpgate: LPRT/LPSV not supported, use EPRT/EPSV.\r\n".len()
    );
    assert_eq!(t.actions(), vec![]);
    client!(t, b"X\r\nLPSV\r\nNOOP\r\n");
    expect!(t, to_server: b"");
    expect!(t, to_client: b"421 ftpgate: too many refused commands; closing.\r\n");
    let audits = t.audits();
    assert_eq!(
        audits,
        vec![
            AuditEvent::RefusedLines {
                side: Side::Client,
                count: 10,
                reason: "LPRT/LPSV unsupported",
                rule: "lprt-lpsv",
                attack: Some(29),
                what: "LPSV".into(),
                rules: vec![("lprt-lpsv", 9), ("command-syntax", 1)],
            },
            AuditEvent::SessionEnded {
                reason: "too many refused lines",
                user: Some("anna".into()),
                duration: Duration::ZERO,
                transfers: 0,
                to_client: 0,
                to_server: 0,
            },
        ]
    );
    assert!(t.s.is_closed());
}

#[test]
fn attack_10_relaying_refused_run_ends_at_a_forwarded_line() {
    let config = Config { max_refused_lines: 3, ..Config::default() };
    let mut t = T::logged_in_with(config);
    client!(t, b"LPSV\r\nLPSV\r\nNOOP\r\nLPSV\r\nLPSV\r\nNOOP\r\n");
    expect!(t, to_server: b"NOOP\r\nNOOP\r\n");
    let audits = t.audits();
    assert_eq!(audits.len(), 2, "{audits:?}");
    assert!(audits.iter().all(|a| matches!(a, AuditEvent::RefusedLines { count: 2, .. })), "{audits:?}");
    assert!(!t.s.is_closed());
}

#[test]
fn attack_10_relaying_refused_run_recorded_at_session_end() {
    let mut t = T::logged_in();
    client!(t, b"LPSV\r\n");
    t.input(Input::Closed { from: Side::Client });
    let audits = t.audits();
    assert!(matches!(audits[0], AuditEvent::Refused { reason: "LPRT/LPSV unsupported", .. }), "{audits:?}");
    assert!(matches!(audits[1], AuditEvent::SessionEnded { .. }), "{audits:?}");
}

// ---- FEAT filtering, FTPS pass-through (ATTACKS.md 27) ----------------------

const FEAT: &[u8] =
    b"211-Features:\r\n AUTH TLS\r\n EPRT\r\n PBSZ\r\n pRoT\r\n CCC\r\n211-AUTH SSL\r\n SIZE\r\n211 End\r\n";

#[test]
fn relaying_feat_refuse_policy_drops_tls_lines_keeps_framing() {
    let mut t = T::logged_in();
    client!(t, b"FEAT\r\n");
    expect!(t, to_server: b"FEAT\r\n");
    server!(t, FEAT);
    expect!(t, to_client: b"211-Features:\r\n EPRT\r\n SIZE\r\n211 End\r\n");
}

#[test]
fn relaying_feat_tls_lines_only_then_framing_stays() {
    let mut t = T::logged_in();
    client!(t, b"FEAT\r\n");
    server!(t, b"211-Features:\r\n AUTH TLS\r\n211 End\r\n");
    expect!(t, to_client: b"211-Features:\r\n211 End\r\n");
    client!(t, b"FEAT\r\n");
    server!(t, b"211 no features\r\n");
    expect!(t, to_client: b"211 no features\r\n");
}

#[test]
fn relaying_feat_filter_only_for_the_feat_reply() {
    let mut t = T::logged_in();
    // HELP's reply and a FEAT pipelined behind it pair FIFO.
    client!(t, b"HELP\r\nFEAT\r\n");
    let help = b"214-Commands:\r\n AUTH PBSZ PROT\r\n AUTH TLS\r\n214 ok\r\n";
    server!(t, help);
    expect!(t, to_client: help);
    server!(t, FEAT);
    expect!(t, to_client: b"211-Features:\r\n EPRT\r\n SIZE\r\n211 End\r\n");
}

#[test]
fn relaying_feat_pass_through_policy_unchanged() {
    let mut t = T::logged_in_with(Config { ftps: FtpsPolicy::PassThrough, ..Config::default() });
    client!(t, b"FEAT\r\n");
    server!(t, FEAT);
    expect!(t, to_client: FEAT);
}

fn pass_through() -> T {
    let mut t = T::with(Config { ftps: FtpsPolicy::PassThrough, ..Config::default() });
    server!(t, b"220 ready\r\n");
    t.take(Side::Client);
    t
}

#[test]
fn relaying_auth_tls_pass_through_234_goes_blind() {
    let mut t = pass_through();
    client!(t, b"AUTH TLS\r\n");
    expect!(t, to_server: b"AUTH TLS\r\n");
    // Nothing more is read from the client until the reply.
    assert_eq!(t.s.read_budget(Side::Client), 0);
    server!(t, b"234 Proceed with negotiation.\r\n");
    expect!(t, to_client: b"234 Proceed with negotiation.\r\n");
    assert_eq!(
        t.actions(),
        vec![
            Action::Audit(AuditEvent::TlsPassThrough { mechanism: "TLS".into(), user: None }),
            Action::PassThrough { idle_timeout: Config::default().idle_timeout },
        ]
    );
    assert!(t.s.is_closed());
    assert_eq!(t.s.read_budget(Side::Client), 0);
    assert_eq!(t.s.read_budget(Side::Server), 0);
    assert_eq!(t.s.poll_timeout(), None);
    // Nothing is parsed any more: TLS records, a fake PASV reply.
    t.input(Input::Timeout);
    server!(t, b"227 (198,51,100,10,195,80)\r\n");
    assert_eq!(t.actions(), vec![]);
    expect!(t, to_client: b"");
    // The shell writes the end record when the blind relay ends.
    assert_eq!(
        t.s.end_record(t.now + Duration::from_secs(5), "pass-through ended"),
        AuditEvent::SessionEnded {
            reason: "pass-through ended",
            user: None,
            duration: Duration::from_secs(5),
            transfers: 0,
            to_client: 0,
            to_server: 0,
        }
    );
}

#[test]
fn relaying_auth_tls_refused_by_server_stays_clear_text() {
    let mut t = pass_through();
    client!(t, b"AUTH SSL\r\n");
    expect!(t, to_server: b"AUTH SSL\r\n");
    server!(t, b"504 not configured\r\n");
    expect!(t, to_client: b"504 not configured\r\n");
    client!(t, b"USER anna\r\n");
    expect!(t, to_server: b"USER anna\r\n");
    assert!(!t.s.is_closed());
}

#[test]
fn relaying_auth_other_mechanism_refused_even_in_pass_through() {
    let mut t = pass_through();
    client!(t, b"AUTH GSSAPI\r\n");
    expect!(t, to_server: b"");
    expect!(t, to_client: b"534 ftpgate: AUTH/TLS on the control channel refused by policy.\r\n");
}

#[test]
fn relaying_auth_pipelined_client_hello_ends_session() {
    let mut t = pass_through();
    client!(t, b"AUTH TLS\r\n\x16\x03\x01\x00\x05hello");
    expect!(t, to_server: b"AUTH TLS\r\n");
    server!(t, b"234 go\r\n");
    expect!(t, to_client: b"421 ftpgate: bytes before the TLS handshake; closing.\r\n");
    let actions = t.actions();
    assert!(!actions.iter().any(|a| matches!(a, Action::PassThrough { .. })), "{actions:?}");
    assert!(actions.contains(&Action::Audit(AuditEvent::Refused {
        side: Side::Client,
        reason: "bytes before the TLS handshake",
        rule: "tls-pipelined",
        attack: Some(27),
        what: "TLS".into()
    })));
    assert!(t.s.is_closed());
}

#[test]
fn relaying_auth_after_pasv_closes_listener_then_blind() {
    let mut t = passive_listening_with(Config { ftps: FtpsPolicy::PassThrough, ..Config::default() });
    client!(t, b"AUTH TLS\r\n");
    server!(t, b"234 go\r\n");
    expect!(t, to_client: b"234 go\r\n");
    let actions = t.actions();
    assert_eq!(actions[0], Action::CloseData { data: DataId(0) });
    assert!(matches!(actions.last(), Some(Action::PassThrough { .. })), "{actions:?}");
    assert!(t.s.is_closed());
}

// ---- failed logins (RFC 2577 §5, ATTACKS.md 33) -------------------------------

#[test]
fn relaying_530_to_user_or_pass_audited_as_login_failed() {
    let mut t = greeted();
    client!(t, b"USER foo\r\n");
    server!(t, b"530 This FTP server is anonymous only.\r\n");
    assert_eq!(t.audits(), vec![AuditEvent::LoginFailed { user: Some("foo".into()) }]);
    client!(t, b"USER anna\r\nPASS wrong\r\n");
    server!(t, b"331 pw\r\n530 Login incorrect.\r\n");
    assert_eq!(t.audits(), vec![AuditEvent::LoginFailed { user: Some("anna".into()) }]);
    // other codes are no failure
    client!(t, b"PASS x\r\n");
    server!(t, b"503 Login with USER first.\r\n");
    assert_eq!(t.audits(), vec![]);
}

#[test]
fn attack_18_expect_greeting_junk_before_220_421_and_close() {
    let mut t = T::new();
    server!(t, b"SSH-2.0-OpenSSH\r\n");
    expect!(t, to_client: b"421 ftpgate: the server broke the protocol, closing.\r\n");
    assert!(t.s.is_closed());
}

// ---- 11. timeouts -------------------------------------------------------------

#[test]
fn relaying_poll_timeout_is_min_of_deadlines() {
    let mut t = passive_listening();
    let accept_at = t.now + Config::default().data_accept_timeout;
    assert_eq!(t.s.poll_timeout(), Some(accept_at));
    t.advance(Duration::from_secs(5));
    t.input(Input::Accepted { data: DataId(0), peer: sa("192.0.2.10:40001") });
    assert_eq!(t.s.poll_timeout(), Some(t.now + Config::default().data_connect_timeout));
}

#[test]
fn closed_every_listen_gets_close_data() {
    let mut t = T::logged_in();
    let mut listens = 0;
    let mut closes = 0;
    client!(t, b"PASV\r\n");
    server!(t, b"227 (198,51,100,10,195,80)\r\n");
    t.input(Input::Listening { data: DataId(0), local: sa("198.51.100.10:50000") });
    client!(t, b"PORT 192,0,2,10,156,65\r\n");
    t.advance(Duration::from_secs(86_400));
    t.input(Input::Timeout);
    for a in t.actions() {
        match a {
            Action::Listen { .. } => listens += 1,
            Action::CloseData { .. } => closes += 1,
            _ => {}
        }
    }
    assert_eq!((listens, closes), (2, 2));
    assert!(t.s.is_closed());
}

#[test]
fn attack_09_expect_passive_reply_multiline_227_parsed() {
    let mut t = T::logged_in();
    client!(t, b"PASV\r\n");
    server!(t, b"227-Entering Passive Mode\r\n227 =198,51,100,10,195,80\r\n");
    expect!(t, work: vec![listen(0, "198.51.100.10:50000", "192.0.2.10", Side::Client)]);
    t.input(Input::Listening { data: DataId(0), local: sa("198.51.100.10:50000") });
    // Passed on in one plain line: a client reading another line of a
    // multi-line 227 could find another address.
    expect!(t, to_client: b"227 Entering Passive Mode (198,51,100,10,195,80).\r\n");
    let mut t = T::logged_in();
    client!(t, b"PASV\r\n");
    server!(t, b"227-(198,51,100,10,195,80)\r\n227 (203,0,113,5,0,25)\r\n");
    expect!(t, work: vec![listen(0, "198.51.100.10:50000", "192.0.2.10", Side::Client)]);
    t.input(Input::Listening { data: DataId(0), local: sa("198.51.100.10:50000") });
    expect!(t, to_client: b"227 Entering Passive Mode (198,51,100,10,195,80).\r\n");
}

#[test]
fn relaying_idle_session_stays_small() {
    let t = T::logged_in();
    // The benchmark counts 10,000 idle sessions: no buffer may stay large.
    assert!(size_of::<Session>() < 1024, "{}", size_of::<Session>());
    assert!(t.s.readers.iter().all(|r| r.is_empty()));
    assert!(t.s.out.iter().all(|o| o.capacity() <= 1024));
}

// ---- ABOR and the Telnet Synch (ATTACKS.md 15) ------------------------------

/// What the core sends the server for ABOR: `IAC IP IAC` urgent, `DM ABOR`.
const SYNCH_ABOR: &[u8] = b"\xff\xf4\xff\xf2ABOR\r\n";

/// The server-bound bytes, checking that the first 3 are the urgent part.
fn take_synch(t: &mut T) -> Vec<u8> {
    assert_eq!(t.s.pending_urgent(Side::Server), Some(3), "urgent bytes");
    assert_eq!(t.s.pending_urgent(Side::Client), None);
    t.take(Side::Server)
}

#[test]
fn attack_15_abor_during_retr_closes_data_then_426_and_226_in_order() {
    // python ftplib: the whole `ABOR\r\n` sent with MSG_OOB, arriving inline.
    let mut t = passive_relaying_retr();
    t.advance(Duration::from_secs(1));
    client!(t, b"ABOR\r\n");
    expect!(t, work: vec![Action::ResetData { data: DataId(0) }, Action::CloseData { data: DataId(0) }]);
    assert_eq!(take_synch(&mut t), SYNCH_ABOR);
    assert_eq!(t.s.pending_urgent(Side::Server), None);
    server!(t, b"426 Failure writing network stream.\r\n226 ABOR successful.\r\n");
    expect!(t, to_client: b"426 Failure writing network stream.\r\n226 ABOR successful.\r\n");
    assert!(matches!(
        t.audits()[..],
        [AuditEvent::Transfer { reply: Some(426), result: TransferResult::Aborted(_), .. }]
    ));
    // A stale relay end for the closed channel changes nothing.
    t.input(Input::Relayed { data: DataId(0), to_client: 5, to_server: 0 });
    assert_eq!(t.actions(), vec![]);
}

#[test]
fn attack_15_abor_bsd_synch_form_stripped_and_reissued_as_synch() {
    // lftp/BSD ftp: `IAC IP IAC` as urgent data, then `DM ABOR\r\n`;
    // SO_OOBINLINE puts it all inline, split wherever the segments fell.
    let mut t = passive_relaying_retr();
    client!(t, b"\xff\xf4\xff");
    client!(t, b"\xf2ABOR\r\n");
    expect!(t, work: vec![Action::ResetData { data: DataId(0) }, Action::CloseData { data: DataId(0) }]);
    assert_eq!(take_synch(&mut t), SYNCH_ABOR);
}

#[test]
fn relaying_abor_with_held_226_releases_it_as_426_before_abor_reply() {
    let mut t = passive_relaying_retr();
    server!(t, b"226 Transfer complete\r\n");
    expect!(t, to_client: b"");
    client!(t, b"ABOR\r\n");
    assert!(matches!(
        t.actions()[..],
        [
            Action::ResetData { data: DataId(0) },
            Action::CloseData { data: DataId(0) },
            Action::Audit(AuditEvent::Transfer {
                reply: Some(426),
                server_reply: Some(226),
                result: TransferResult::Aborted(AbortCause::ClientAbor),
                ..
            }),
        ]
    ));
    // The relay had not completed: the client must not take it for whole.
    expect!(t, to_client: b"426 Connection closed; transfer aborted.\r\n");
    assert_eq!(take_synch(&mut t), SYNCH_ABOR);
    server!(t, b"225 No transfer to ABOR.\r\n");
    expect!(t, to_client: b"225 No transfer to ABOR.\r\n");
}

#[test]
fn relaying_abor_before_first_reply_binds_and_aborts_transfer() {
    let mut t = passive_listening();
    client!(t, b"RETR big\r\n");
    expect!(t, to_server: b"RETR big\r\n");
    client!(t, b"ABOR\r\n");
    expect!(t, work: vec![Action::CloseData { data: DataId(0) }]);
    assert_eq!(take_synch(&mut t), SYNCH_ABOR);
    server!(t, b"150 Opening\r\n426 Aborted\r\n226 ABOR ok\r\n");
    expect!(t, to_client: b"150 Opening\r\n426 Aborted\r\n226 ABOR ok\r\n");
    assert!(matches!(
        t.audits()[..],
        [AuditEvent::Transfer { ref command, ref path, reply: Some(426), result: TransferResult::Aborted(_), .. }]
            if command == "RETR" && path.as_deref() == Some("big")
    ));
}

#[test]
fn relaying_abor_without_transfer_forwarded_with_synch_reply_fifo() {
    let mut t = T::logged_in();
    client!(t, b"NOOP\r\nABOR\r\nPWD\r\n");
    expect!(t, work: vec![]);
    assert_eq!(t.s.pending_urgent(Side::Server), Some(b"NOOP\r\n".len() + 3));
    assert_eq!(t.take(Side::Server), b"NOOP\r\n\xff\xf4\xff\xf2ABOR\r\nPWD\r\n");
    server!(t, b"200 ok\r\n225 nothing\r\n257 \"/\"\r\n");
    expect!(t, to_client: b"200 ok\r\n225 nothing\r\n257 \"/\"\r\n");
}

#[test]
fn relaying_pending_urgent_counts_down_as_consumed() {
    let mut t = T::logged_in();
    client!(t, b"ABOR\r\nABOR\r\n");
    assert_eq!(t.s.pending_urgent(Side::Server), Some(3));
    t.s.consume(Side::Server, 2);
    assert_eq!(t.s.pending_urgent(Side::Server), Some(1));
    t.s.consume(Side::Server, 1);
    // The second Synch's urgent byte is next.
    assert_eq!(t.s.pending_urgent(Side::Server), Some(SYNCH_ABOR.len()));
    t.s.consume(Side::Server, SYNCH_ABOR.len() + 2);
    assert_eq!(t.s.pending_urgent(Side::Server), None);
    assert_eq!(t.take(Side::Server), b"BOR\r\n");
}

// ---- 421 at any time (ATTACKS.md 18) ------------------------------------------

#[test]
fn attack_18_421_behind_held_226_tears_down_at_once() {
    let mut t = passive_relaying_retr();
    server!(t, b"226 Transfer complete\r\n");
    expect!(t, to_client: b"");
    server!(t, b"421 Timeout.\r\n");
    expect!(t, work: vec![
        Action::ResetData { data: DataId(0) },
        Action::CloseData { data: DataId(0) },
        Action::Shutdown { side: Side::Client },
        Action::Shutdown { side: Side::Server },
    ]);
    // The relay was cut before it ended: no 226 reaches the client.
    expect!(t, to_client: b"426 Connection closed; transfer aborted.\r\n421 Timeout.\r\n");
    assert!(t.s.is_closed());
}

#[test]
fn attack_18_421_behind_held_227_closes_listener_425_then_421() {
    let mut t = T::logged_in();
    client!(t, b"PASV\r\nNOOP\r\n");
    server!(t, b"227 (198,51,100,10,195,80)\r\n200 noop\r\n421 Bye.\r\n");
    expect!(t, work: vec![
        listen(0, "198.51.100.10:50000", "192.0.2.10", Side::Client),
        Action::CloseData { data: DataId(0) },
        Action::Shutdown { side: Side::Client },
        Action::Shutdown { side: Side::Server },
    ]);
    expect!(t, to_client: b"425 Can't open data connection.\r\n200 noop\r\n421 Bye.\r\n");
    assert!(t.s.is_closed());
}

// ---- ATTACKS.md sweep: cases not covered above ---------------------------------

/// Every line the client got starts with `code`, and nothing else happened.
fn assert_all_refused(t: &mut T, lines: usize, code: &str) {
    let to_client = String::from_utf8(t.take(Side::Client)).unwrap();
    assert_eq!(to_client.lines().count(), lines, "{to_client}");
    assert!(to_client.lines().all(|l| l.starts_with(code)), "{to_client}");
    expect!(t, to_server: b"");
    expect!(t, work: vec![]);
}

#[test]
fn attack_03_relaying_port_malformed_numbers_501_nothing_opened() {
    // More than the default run of refused lines: no cap here.
    let mut t = T::logged_in_with(Config { max_refused_lines: 0, ..Config::default() });
    let bad: &[&[u8]] = &[
        b"PORT 256,0,2,10,156,65",
        b"PORT -1,0,2,10,156,65",
        b"PORT 192,0,2,10,156,65,1",
        b"PORT 192,0,2,10,156",
        b"PORT +192,0,2,10,156,65",
        b"PORT 192, 0,2,10,156,65",
        b"PORT 192,0,2,10,70000,65",
        b"PORT 192,0,2,10,99999999999999999999,1",
        b"PORT 192,0,2,10,0,0",
        b"PORT 0,0,0,0,156,65",
        b"PORT",
    ];
    for line in bad {
        client!(t, &[*line, b"\r\n"].concat());
    }
    assert_all_refused(&mut t, bad.len(), "501 ");
}

#[test]
fn attack_04_relaying_eprt_edge_cases_refused() {
    let mut t = T::logged_in();
    client!(t, b"EPRT |3|192.0.2.10|40001|\r\n");
    expect!(t, to_client: b"522 Network protocol not supported, use (1,2)\r\n");
    let bad: &[&[u8]] = &[
        b"EPRT |2|2001:db8::10|40001|",           // IPv6 on an IPv4 control connection
        b"EPRT |1|::ffff:192.0.2.10|40001|",      // family 1 with an IPv6 address
        b"EPRT |2|fe80::1%eth0|40001|",           // scoped
        b"EPRT 1192.0.2.10140001",                // digit delimiter
        b"EPRT \x7f1\x7f192.0.2.10\x7f40001\x7f", // non-printable delimiter
        b"EPRT |1|192.0.2.10|40001",              // missing trailing delimiter
        b"EPRT |1|192.0.2.10|40001|x",
        b"EPRT |1|192.0.2.10|70000|",
    ];
    for line in bad {
        client!(t, &[*line, b"\r\n"].concat());
    }
    assert_all_refused(&mut t, bad.len(), "501 ");
}

#[test]
fn attack_04_relaying_eprt_any_printable_delimiter_accepted() {
    for d in [b'!', b'#', b'/', b':', b'~'] {
        let mut t = T::logged_in();
        let line = format!("EPRT {0}1{0}192.0.2.10{0}40001{0}\r\n", d as char);
        client!(t, line.as_bytes());
        expect!(t, work: vec![listen(0, "192.0.2.10:0", "198.51.100.10", Side::Server)]);
        t.input(Input::Listening { data: DataId(0), local: sa("192.0.2.10:40001") });
        expect!(t, to_server: line.as_bytes());
    }
}

#[test]
fn attack_06_expect_passive_reply_foreign_ssh_port_never_bound() {
    // A malicious server tries to make the gateway swallow 10.0.0.5:22.
    let mut t = T::logged_in();
    client!(t, b"PASV\r\n");
    server!(t, b"227 Entering Passive Mode (10,0,0,5,0,22)\r\n");
    expect!(t, work: vec![]);
    expect!(t, to_client: b"425 ftpgate: passive reply refused by gateway policy.\r\n");
    // A foreign address with a high port: the listener is on the control
    // server's address, never on the announced one.
    client!(t, b"EPSV\r\n");
    server!(t, b"229 (|||50000|)\r\n");
    expect!(t, work: vec![listen(0, "198.51.100.10:50000", "192.0.2.10", Side::Client)]);
}

#[test]
fn attack_08_expect_accept_duplicate_227_and_229_open_nothing() {
    let mut t = passive_listening();
    server!(t, b"227 Entering Passive Mode (198,51,100,10,195,90).\r\n229 (|||50020|)\r\n");
    expect!(t, to_client: b"227 Entering Passive Mode (198,51,100,10,195,90).\r\n229 (|||50020|)\r\n");
    expect!(t, work: vec![]);
}

#[test]
fn attack_09_expect_passive_reply_irregular_227_forms_parsed() {
    for reply in [
        &b"227 Entering Passive Mode 198,51,100,10,195,80\r\n"[..],
        b"227 =198,51,100,10,195,80\r\n",
        b"227 Entering Passive Mode (198,51,100,10,195,80).\r\n",
        b"227 ok 198,51,100,10,195,80.\r\n",
    ] {
        let mut t = T::logged_in();
        client!(t, b"PASV\r\n");
        server!(t, reply);
        expect!(t, work: vec![listen(0, "198.51.100.10:50000", "192.0.2.10", Side::Client)]);
        t.input(Input::Listening { data: DataId(0), local: sa("198.51.100.10:50000") });
        expect!(t, to_client: reply);
    }
}

#[test]
fn attack_10_expect_greeting_http_slipstream_opens_nothing() {
    // A browser tricked into POSTing to port 21, a PORT on a line of the
    // body: before the 220 nothing is read; after it, the PORT is refused
    // (no login), the HTTP lines get 500, nothing is opened.
    let mut t = T::new();
    client!(t, b"POST / HTTP/1.1\r\nHost: x\r\n\r\nPORT 192,0,2,10,0,22\r\nPORT 203,0,113,5,0,25\r\n");
    expect!(t, to_server: b"");
    server!(t, b"220 ready\r\n");
    // The first line is an HTTP request: 421, nothing reaches the server.
    expect!(t, to_client: b"220 ready\r\n421 ftpgate: this is an FTP service; closing.\r\n");
    expect!(t, to_server: b"");
    assert_eq!(t.work(), shutdown_all(&[]));
}

#[test]
fn attack_11_relaying_one_byte_segments_same_outcome() {
    let exchange = |one_byte: bool| {
        let mut t = T::logged_in();
        let feed = |t: &mut T, side: Side, bytes: &[u8]| {
            if one_byte {
                for b in bytes {
                    t.input(Input::Received { from: side, data: std::slice::from_ref(b) });
                }
            } else {
                t.input(Input::Received { from: side, data: bytes });
            }
        };
        feed(&mut t, Side::Client, b"PASV\r\nRETR a\xff\xffb\r\n");
        feed(&mut t, Side::Server, b"227-x\r\n227 (198,51,100,10,195,80)\r\n");
        t.input(Input::Listening { data: DataId(0), local: sa("198.51.100.10:50000") });
        feed(&mut t, Side::Server, b"150 go\r\n226 done\r\n");
        (t.actions(), t.take(Side::Client), t.take(Side::Server))
    };
    let whole = exchange(false);
    assert_eq!(exchange(true), whole);
    assert_eq!(whole.1, b"227 Entering Passive Mode (198,51,100,10,195,80).\r\n150 go\r\n226 done\r\n");
    assert_eq!(whole.2, b"PASV\r\nRETR a\xff\xffb\r\n");
}

#[test]
fn attack_12_relaying_slowloris_meets_idle_deadline() {
    let mut t = T::logged_in();
    let idle = Config::default().idle_timeout;
    let mut closed_after = None;
    for minute in 1..=30u64 {
        t.advance(Duration::from_secs(60));
        client!(t, b"N");
        if t.s.poll_timeout().is_some_and(|at| at <= t.now) {
            t.input(Input::Timeout);
            closed_after = Some(minute);
            break;
        }
    }
    assert_eq!(closed_after, Some(idle.as_secs() / 60));
    expect!(t, to_client: b"421 Control connection idle for too long, closing.\r\n");
    assert!(t.s.is_closed());
}

#[test]
fn attack_12_relaying_complete_lines_restart_idle_deadline() {
    let mut t = T::logged_in();
    t.advance(Duration::from_secs(600));
    client!(t, b"NO");
    assert_eq!(t.s.poll_timeout(), Some(t.now - Duration::from_secs(600) + Config::default().idle_timeout));
    client!(t, b"OP\r\n");
    assert_eq!(t.s.poll_timeout(), Some(t.now + Config::default().idle_timeout));
}

#[test]
fn attack_13_relaying_line_end_games_canonical_or_refused() {
    let mut t = T::logged_in();
    // Bare LF: canonicalised. CR CR LF and a bare CR inside: refused, so
    // `PWD\rQUIT` can never be two commands to one side and one to the other.
    client!(t, b"NOOP\nPWD\r\r\nPWD\rQUIT\nSYST\r\n");
    expect!(t, to_server: b"NOOP\r\nSYST\r\n");
    server!(t, b"200 ok\n215 UNIX\r\n");
    expect!(
        t,
        to_client: b"200 ok\r\n500 Line refused: NUL or bare CR.\r\n500 Line refused: NUL or bare CR.\r\n215 UNIX\r\n"
    );
}

#[test]
fn attack_13_relaying_server_bare_cr_421_and_close() {
    let mut t = T::logged_in();
    client!(t, b"NOOP\r\n");
    server!(t, b"200 ok\r227 (1,2,3,4,5,6)\r\n");
    expect!(t, to_client: b"421 ftpgate: the server broke the protocol, closing.\r\n");
    assert!(t.s.is_closed());
}

#[test]
fn attack_14_relaying_server_telnet_will_refused_iac_iac_in_257() {
    let mut t = T::logged_in();
    client!(t, b"PWD\r\n");
    expect!(t, to_server: b"PWD\r\n");
    server!(t, b"\xff\xfb\x01257 \"/a\xff\xffb\"\r\n");
    expect!(t, to_server: b"\xff\xfe\x01");
    expect!(t, to_client: b"257 \"/a\xff\xffb\"\r\n");
}

#[test]
fn attack_17_relaying_multiline_other_code_last_line_does_not_end_it() {
    let mut t = T::logged_in();
    client!(t, b"STAT\r\n");
    server!(t, b"211-status\r\n213 not the end\r\n211-nor this\r\n");
    expect!(t, to_client: b"");
    server!(t, b"211 end\r\n");
    expect!(t, to_client: b"211-status\r\n213 not the end\r\n211-nor this\r\n211 end\r\n");
}

#[test]
fn attack_18_relaying_421_tears_down_at_any_time() {
    let mut t = active_listening();
    client!(t, b"NOOP\r\n");
    server!(t, b"421 Service not available.\r\n");
    expect!(t, to_client: b"421 Service not available.\r\n");
    expect!(t, work: shutdown_all(&[0]));
    assert!(t.s.is_closed());
}

#[test]
fn attack_19_expect_accept_active_any_server_port_accepted() {
    let mut t = active_listening();
    t.input(Input::Accepted { data: DataId(0), peer: sa("198.51.100.10:33333") });
    expect!(t, work: vec![Action::Connect {
        data: DataId(0),
        local: sa("198.51.100.10:33333"),
        remote: sa("192.0.2.10:40001"),
    }]);
}

#[test]
fn attack_20_relaying_many_pasv_keep_one_listener() {
    let mut t = T::logged_in();
    let mut open = BTreeSet::new();
    for i in 0..20u32 {
        client!(t, b"PASV\r\n");
        server!(t, format!("227 (198,51,100,10,195,{})\r\n", 80 + i).as_bytes());
        t.input(Input::Listening { data: DataId(i), local: sa(&format!("198.51.100.10:{}", 50000 + i)) });
        for a in t.work() {
            match a {
                Action::Listen { data, .. } => assert!(open.insert(data)),
                Action::CloseData { data } => assert!(open.remove(&data)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(open.len(), 1);
    }
}

#[test]
fn attack_23_expect_accept_deadline_then_server_425_reaches_client() {
    let mut t = passive_listening();
    client!(t, b"RETR f\r\n");
    t.advance(Config::default().data_accept_timeout);
    t.input(Input::Timeout);
    expect!(t, work: vec![Action::CloseData { data: DataId(0) }]);
    server!(t, b"425 Failed to establish connection.\r\n");
    expect!(t, to_client: b"425 Failed to establish connection.\r\n");
    // Nothing is left open and the session waits only for its idle deadline.
    assert_eq!(t.s.poll_timeout(), Some(t.s.idle_at));
}

#[test]
fn attack_26_relaying_rest_relayed_offset_in_transfer_log() {
    let mut t = passive_listening();
    client!(t, b"REST 18446744073709551616999\r\nRETR big.iso\r\n");
    expect!(t, to_server: b"REST 18446744073709551616999\r\nRETR big.iso\r\n");
    server!(t, b"350 Restarting\r\n425 no\r\n");
    expect!(t, to_client: b"350 Restarting\r\n425 no\r\n");
    assert!(matches!(
        t.audits()[..],
        [AuditEvent::Transfer { ref command, ref path, ref rest, .. }]
            if command == "RETR" && path.as_deref() == Some("big.iso")
                && rest.as_deref() == Some("18446744073709551616999")
    ));
    // REST applies to the next command only.
    client!(t, b"REST -5\r\nNOOP\r\n");
    expect!(t, to_server: b"REST -5\r\nNOOP\r\n");
    assert!(t.s.rest.is_none());
}

#[test]
fn attack_27_relaying_auth_ssl_refused_ccc_relayed_by_name() {
    let mut t = T::logged_in();
    client!(t, b"AUTH SSL\r\nADAT x\r\nCCC\r\nPBSZ 0\r\n");
    expect!(t, to_server: b"CCC\r\nPBSZ 0\r\n");
    server!(t, b"533 no\r\n503 no\r\n");
    expect!(
        t,
        to_client: b"534 ftpgate: AUTH/TLS on the control channel refused by policy.\r\n534 ftpgate: AUTH/TLS on the control channel refused by policy.\r\n533 no\r\n503 no\r\n"
    );
}

#[test]
fn attack_30_expect_login_after_rein_data_commands_honoured_again() {
    let mut t = T::logged_in();
    client!(t, b"REIN\r\nPORT 192,0,2,10,156,65\r\nUSER bob\r\nPASS pw\r\n");
    // The PORT waits for the server's answer to REIN, and the lines behind it.
    expect!(t, to_server: b"REIN\r\n");
    server!(t, b"220 again\r\n");
    expect!(t, to_client: b"220 again\r\n530 Please login first.\r\n");
    expect!(t, to_server: b"USER bob\r\nPASS pw\r\n");
    server!(t, b"331 pw\r\n230 ok\r\n");
    expect!(t, to_client: b"331 pw\r\n230 ok\r\n");
    assert!(matches!(
        &t.audits()[..],
        [AuditEvent::Refused { side: Side::Client, .. }, AuditEvent::LoggedIn { user }] if user == "bob"
    ));
    client!(t, b"PASV\r\n");
    expect!(t, to_server: b"PASV\r\n");
}

#[test]
fn attack_31_relaying_200_containing_227_is_a_200() {
    let mut t = T::logged_in();
    client!(t, b"PASV\r\n");
    server!(t, b"200 227 Entering Passive Mode (198,51,100,10,195,80)\r\n");
    expect!(t, to_client: b"200 227 Entering Passive Mode (198,51,100,10,195,80)\r\n");
    expect!(t, work: vec![]);
}

#[test]
fn relaying_epsv_forms_forwarded_and_paired() {
    let mut t = T::logged_in();
    client!(t, b"EPSV 1\r\n");
    expect!(t, to_server: b"EPSV 1\r\n");
    server!(t, b"229 (|||50000|)\r\n");
    expect!(t, work: vec![listen(0, "198.51.100.10:50000", "192.0.2.10", Side::Client)]);
    t.input(Input::Listening { data: DataId(0), local: sa("198.51.100.10:50000") });
    client!(t, b"EPSV 2\r\n");
    expect!(t, to_server: b"EPSV 2\r\n");
    server!(t, b"522 Network protocol not supported, use (1)\r\n");
    expect!(t, to_client: b"229 (|||50000|)\r\n522 Network protocol not supported, use (1)\r\n");
}

// ---- relay integrity: resets, idle deadline, 426 (ATTACKS.md 24, 25) --------

const REPLY_426: &[u8] = b"426 Connection closed; transfer aborted.\r\n";

fn reset_close(data: u32) -> Vec<Action> {
    vec![Action::ResetData { data: DataId(data) }, Action::CloseData { data: DataId(data) }]
}

/// The one transfer record among the audits.
fn transfer_record(t: &mut T) -> AuditEvent {
    let mut records: Vec<AuditEvent> =
        t.audits().into_iter().filter(|e| matches!(e, AuditEvent::Transfer { .. })).collect();
    assert_eq!(records.len(), 1, "{records:?}");
    records.remove(0)
}

/// Active channel relaying for `STOR up.bin`, 150 relayed.
fn active_relaying_stor() -> T {
    let mut t = active_listening();
    client!(t, b"STOR up.bin\r\n");
    expect!(t, to_server: b"STOR up.bin\r\n");
    server!(t, b"150 Ok to send data.\r\n");
    expect!(t, to_client: b"150 Ok to send data.\r\n");
    t.input(Input::Accepted { data: DataId(0), peer: sa("198.51.100.10:20") });
    t.input(Input::Connected { data: DataId(0), local: sa("198.51.100.10:20") });
    expect!(t, work: vec![
        Action::Connect { data: DataId(0), local: sa("198.51.100.10:20"), remote: sa("192.0.2.10:40001") },
        Action::Relay { data: DataId(0) },
    ]);
    t
}

/// After a failed transfer the session goes on: a second passive RETR
/// completes with its 226.
fn second_transfer_works(t: &mut T, data: u32) {
    client!(t, b"PASV\r\n");
    expect!(t, to_server: b"PASV\r\n");
    server!(t, b"227 Entering Passive Mode (198,51,100,10,195,81).\r\n");
    expect!(t, work: vec![listen(data, "198.51.100.10:50001", "192.0.2.10", Side::Client)]);
    t.input(Input::Listening { data: DataId(data), local: sa("198.51.100.10:50001") });
    expect!(t, to_client: b"227 Entering Passive Mode (198,51,100,10,195,81).\r\n");
    client!(t, b"RETR small.txt\r\n");
    t.input(Input::Accepted { data: DataId(data), peer: sa("192.0.2.10:40002") });
    t.input(Input::Connected { data: DataId(data), local: sa("192.0.2.10:41000") });
    server!(t, b"150 go\r\n226 done\r\n");
    t.input(Input::Relayed { data: DataId(data), to_client: 10, to_server: 0 });
    expect!(t, to_client: b"150 go\r\n226 done\r\n");
    assert!(matches!(
        transfer_record(t),
        AuditEvent::Transfer { result: TransferResult::Ok, reply: Some(226), to_client: 10, .. }
    ));
}

#[test]
fn attack_24_relaying_server_reset_before_226_resets_and_426_replaces_it() {
    let mut t = passive_relaying_retr();
    t.input(Input::Progress { data: DataId(0), to_client: 300_000, to_server: 0 });
    t.advance(Duration::from_secs(2));
    let failed = Input::RelayFailed {
        data: DataId(0),
        leg: Side::Server,
        error: ErrorKind::ConnectionReset,
        to_client: 524_288,
        to_server: 0,
    };
    t.input(failed);
    expect!(t, work: reset_close(0));
    expect!(t, to_client: b"");
    // The server does not know the relay failed: it says 226.
    server!(t, b"226 Transfer complete.\r\n");
    expect!(t, to_client: REPLY_426);
    assert_eq!(
        transfer_record(&mut t),
        AuditEvent::Transfer {
            data: DataId(0),
            mode: DataMode::Passive,
            user: Some("anna".into()),
            command: "RETR".into(),
            path: Some("file.bin".into()),
            rest: None,
            legs: Box::new(DataLegs {
                client: Some(DataLeg { peer: sa("192.0.2.10:40001"), local: sa("198.51.100.10:50000") }),
                server: Some(DataLeg { peer: sa("198.51.100.10:50000"), local: sa("192.0.2.10:41000") }),
            }),
            to_client: 524_288,
            to_server: 0,
            duration: Duration::from_secs(2),
            reply: Some(426),
            server_reply: Some(226),
            result: TransferResult::Failed(TransferFailure::Reset { leg: Side::Server }),
        }
    );
    second_transfer_works(&mut t, 1);
}

#[test]
fn attack_25_relaying_reset_after_held_226_releases_426() {
    let mut t = passive_relaying_retr();
    server!(t, b"226 Transfer complete.\r\n");
    expect!(t, to_client: b"");
    let failed = Input::RelayFailed {
        data: DataId(0),
        leg: Side::Client,
        error: ErrorKind::ConnectionReset,
        to_client: 1000,
        to_server: 0,
    };
    t.input(failed);
    assert!(matches!(
        &t.actions()[..],
        [
            Action::ResetData { data: DataId(0) },
            Action::CloseData { data: DataId(0) },
            Action::Audit(AuditEvent::Transfer {
                reply: Some(426),
                server_reply: Some(226),
                to_client: 1000,
                result: TransferResult::Failed(TransferFailure::Reset { leg: Side::Client }),
                ..
            }),
        ]
    ));
    expect!(t, to_client: REPLY_426);
    second_transfer_works(&mut t, 1);
}

#[test]
fn attack_24_active_stor_client_reset_before_226_gets_426() {
    let mut t = active_relaying_stor();
    let failed = Input::RelayFailed {
        data: DataId(0),
        leg: Side::Client,
        error: ErrorKind::ConnectionReset,
        to_client: 0,
        to_server: 262_144,
    };
    t.input(failed);
    expect!(t, work: reset_close(0));
    server!(t, b"226 Transfer complete.\r\n");
    expect!(t, to_client: REPLY_426);
    assert!(matches!(
        transfer_record(&mut t),
        AuditEvent::Transfer {
            mode: DataMode::Active,
            to_server: 262_144,
            reply: Some(426),
            server_reply: Some(226),
            result: TransferResult::Failed(TransferFailure::Reset { leg: Side::Client }),
            ..
        }
    ));
    second_transfer_works(&mut t, 1);
}

#[test]
fn attack_25_active_write_error_after_held_226_gets_426() {
    let mut t = active_relaying_stor();
    server!(t, b"226 Transfer complete.\r\n");
    expect!(t, to_client: b"");
    let failed = Input::RelayFailed {
        data: DataId(0),
        leg: Side::Server,
        error: ErrorKind::BrokenPipe,
        to_client: 0,
        to_server: 4096,
    };
    t.input(failed);
    expect!(t, to_client: REPLY_426);
    let why = TransferFailure::RelayError { leg: Side::Server, error: ErrorKind::BrokenPipe };
    assert!(matches!(
        &t.actions()[..],
        [
            Action::ResetData { data: DataId(0) },
            Action::CloseData { data: DataId(0) },
            Action::Audit(AuditEvent::Transfer { result: TransferResult::Failed(w), .. }),
        ] if *w == why
    ));
}

#[test]
fn attack_24_relaying_reset_then_4xx_passes_unchanged() {
    let mut t = passive_relaying_retr();
    let failed = Input::RelayFailed {
        data: DataId(0),
        leg: Side::Server,
        error: ErrorKind::ConnectionReset,
        to_client: 7,
        to_server: 0,
    };
    t.input(failed);
    expect!(t, work: reset_close(0));
    server!(t, b"451 Local error.\r\n");
    expect!(t, to_client: b"451 Local error.\r\n");
    assert!(matches!(
        transfer_record(&mut t),
        AuditEvent::Transfer {
            reply: Some(451),
            server_reply: Some(451),
            result: TransferResult::Failed(TransferFailure::Reset { leg: Side::Server }),
            ..
        }
    ));
}

#[test]
fn relaying_data_idle_deadline_resets_and_426() {
    let mut t = passive_relaying_retr();
    let idle = Config::default().data_idle_timeout;
    assert_eq!(t.s.poll_timeout(), Some(t.now + idle));
    // Bytes moving push the deadline out.
    t.advance(idle - Duration::from_secs(1));
    t.input(Input::Progress { data: DataId(0), to_client: 100, to_server: 0 });
    assert_eq!(t.s.poll_timeout(), Some(t.now + idle));
    t.advance(idle - Duration::from_secs(1));
    t.input(Input::Timeout);
    expect!(t, work: vec![]);
    // Then silence: the deadline passes.
    t.advance(Duration::from_secs(1));
    assert_eq!(t.s.poll_timeout(), Some(t.now));
    t.input(Input::Timeout);
    expect!(t, work: reset_close(0));
    server!(t, b"226 Transfer complete.\r\n");
    expect!(t, to_client: REPLY_426);
    assert!(matches!(
        transfer_record(&mut t),
        AuditEvent::Transfer {
            to_client: 100,
            reply: Some(426),
            result: TransferResult::Failed(TransferFailure::DataIdle),
            ..
        }
    ));
    // The session goes on: no control idle 421.
    assert!(!t.s.is_closed());
    second_transfer_works(&mut t, 1);
}

#[test]
fn relaying_data_idle_with_held_226_releases_426() {
    let mut t = active_relaying_stor();
    server!(t, b"226 Transfer complete.\r\n");
    t.advance(Config::default().data_idle_timeout);
    t.input(Input::Timeout);
    expect!(t, work: reset_close(0));
    expect!(t, to_client: REPLY_426);
}

#[test]
fn relaying_acknowledged_bytes_keep_the_channel_from_its_idle_deadline() {
    let mut t = passive_relaying_retr();
    let idle = Config::default().data_idle_timeout;
    t.input(Input::Progress { data: DataId(0), to_client: 4 << 20, to_server: 0 });
    // Every byte is written; the receiver drains the send buffer slowly.
    t.advance(idle);
    t.input(Input::Acknowledged { data: DataId(0) });
    t.input(Input::Timeout);
    expect!(t, work: vec![]);
    assert_eq!(t.s.poll_timeout(), Some(t.now + idle));
    // Nothing delivered at the next deadline: idle.
    t.advance(idle);
    t.input(Input::Timeout);
    expect!(t, work: reset_close(0));
    // Not a relaying channel: ignored.
    t.input(Input::Acknowledged { data: DataId(0) });
    t.input(Input::Acknowledged { data: DataId(7) });
}

#[test]
fn relaying_progress_without_growth_does_not_keep_channel_alive() {
    let mut t = passive_relaying_retr();
    let idle = Config::default().data_idle_timeout;
    t.input(Input::Progress { data: DataId(0), to_client: 50, to_server: 0 });
    let deadline = t.s.poll_timeout();
    t.advance(Duration::from_secs(10));
    t.input(Input::Progress { data: DataId(0), to_client: 50, to_server: 0 });
    assert_eq!(t.s.poll_timeout(), deadline);
    t.input(Input::Progress { data: DataId(0), to_client: 50, to_server: 1 });
    assert_eq!(t.s.poll_timeout(), Some(t.now + idle));
}

#[test]
fn relaying_relay_failed_before_first_reply_150_passes_226_becomes_426() {
    // curl connects the data channel before it sends RETR's reply arrives.
    let mut t = passive_listening();
    client!(t, b"RETR f\r\n");
    t.input(Input::Accepted { data: DataId(0), peer: sa("192.0.2.10:40001") });
    t.input(Input::Connected { data: DataId(0), local: sa("192.0.2.10:41000") });
    t.work();
    let failed = Input::RelayFailed {
        data: DataId(0),
        leg: Side::Server,
        error: ErrorKind::ConnectionReset,
        to_client: 9,
        to_server: 0,
    };
    t.input(failed);
    expect!(t, work: reset_close(0));
    server!(t, b"150 go\r\n226 done\r\n");
    expect!(t, to_client: b"150 go\r\n426 Connection closed; transfer aborted.\r\n");
    assert!(matches!(
        transfer_record(&mut t),
        AuditEvent::Transfer { ref command, ref path, to_client: 9, reply: Some(426), result: TransferResult::Failed(_), .. }
            if command == "RETR" && path.as_deref() == Some("f")
    ));
}

#[test]
fn relaying_relayed_then_abor_226_passes() {
    // The relay completed before ABOR: the transfer is whole.
    let mut t = passive_relaying_retr();
    t.input(Input::Relayed { data: DataId(0), to_client: 5, to_server: 0 });
    expect!(t, work: vec![Action::CloseData { data: DataId(0) }]);
    client!(t, b"ABOR\r\n");
    expect!(t, work: vec![]);
    server!(t, b"226 Transfer complete.\r\n225 No transfer to ABOR.\r\n");
    expect!(t, to_client: b"226 Transfer complete.\r\n225 No transfer to ABOR.\r\n");
    assert!(matches!(transfer_record(&mut t), AuditEvent::Transfer { result: TransferResult::Ok, .. }));
}

#[test]
fn relaying_abor_running_relay_then_2xx_for_transfer_becomes_426() {
    // Some servers answer the aborted transfer with 226 and ABOR with 225.
    let mut t = passive_relaying_retr();
    client!(t, b"ABOR\r\n");
    expect!(t, work: reset_close(0));
    server!(t, b"226 Transfer complete.\r\n225 ABOR ok.\r\n");
    expect!(t, to_client: b"426 Connection closed; transfer aborted.\r\n225 ABOR ok.\r\n");
    assert!(matches!(
        transfer_record(&mut t),
        AuditEvent::Transfer {
            reply: Some(426),
            server_reply: Some(226),
            result: TransferResult::Aborted(AbortCause::ClientAbor),
            ..
        }
    ));
}

#[test]
fn relaying_stale_progress_and_relay_failed_after_close_ignored() {
    let mut t = passive_relaying_retr();
    t.input(Input::Relayed { data: DataId(0), to_client: 5, to_server: 0 });
    t.actions();
    t.input(Input::Progress { data: DataId(0), to_client: 9, to_server: 0 });
    let failed = Input::RelayFailed {
        data: DataId(0),
        leg: Side::Server,
        error: ErrorKind::ConnectionReset,
        to_client: 9,
        to_server: 0,
    };
    t.input(failed);
    expect!(t, work: vec![]);
    server!(t, b"226 ok\r\n");
    expect!(t, to_client: b"226 ok\r\n");
    assert!(matches!(
        transfer_record(&mut t),
        AuditEvent::Transfer { result: TransferResult::Ok, to_client: 5, .. }
    ));
}

// ---- protocol state follows the server's replies ---------------------------

#[test]
fn expect_login_pipelined_user_pass_pasv_in_one_segment_works() {
    let mut t = T::new();
    server!(t, b"220 ready\r\n");
    t.take(Side::Client);
    client!(t, b"USER anna\r\nPASS secret\r\nPASV\r\n");
    // PASV waits for the login's replies instead of a local 530.
    expect!(t, to_server: b"USER anna\r\nPASS secret\r\n");
    expect!(t, to_client: b"");
    server!(t, b"331 pw\r\n230 ok\r\n");
    expect!(t, to_client: b"331 pw\r\n230 ok\r\n");
    expect!(t, to_server: b"PASV\r\n");
    assert_eq!(t.audits(), vec![AuditEvent::LoggedIn { user: "anna".into() }]);
    server!(t, b"227 Entering Passive Mode (198,51,100,10,195,80).\r\n");
    expect!(t, work: vec![listen(0, "198.51.100.10:50000", "192.0.2.10", Side::Client)]);
}

#[test]
fn expect_login_pipelined_pass_refused_530_then_pasv_refused_locally() {
    let mut t = T::new();
    server!(t, b"220 ready\r\n");
    t.take(Side::Client);
    client!(t, b"USER anna\r\nPASS wrong\r\nPASV\r\n");
    server!(t, b"331 pw\r\n530 Login incorrect.\r\n");
    expect!(t, to_client: b"331 pw\r\n530 Login incorrect.\r\n530 Please login first.\r\n");
    expect!(t, to_server: b"USER anna\r\nPASS wrong\r\n");
    assert!(t.audits().iter().all(|e| !matches!(e, AuditEvent::LoggedIn { .. })));
}

#[test]
fn relaying_user_answered_230_logs_in_that_user() {
    let mut t = T::logged_in();
    client!(t, b"USER bob\r\n");
    server!(t, b"230 ok\r\n");
    assert_eq!(t.audits(), vec![AuditEvent::LoggedIn { user: "bob".into() }]);
}

#[test]
fn relaying_new_user_331_logs_out_until_pass_230() {
    let mut t = T::logged_in();
    client!(t, b"USER bob\r\n");
    server!(t, b"331 pw\r\n");
    t.take(Side::Client);
    expect!(t, to_server: b"USER bob\r\n");
    client!(t, b"PASV\r\n");
    expect!(t, to_client: b"530 Please login first.\r\n");
    client!(t, b"PASS pw\r\n");
    server!(t, b"230 ok\r\n");
    t.take(Side::Client);
    client!(t, b"PASV\r\n");
    expect!(t, to_server: b"PASS pw\r\nPASV\r\n");
}

#[test]
fn relaying_pass_503_when_logged_in_changes_nothing() {
    // proftpd: a second PASS is "503 You are already logged in".
    let mut t = T::logged_in();
    client!(t, b"PASS again\r\nPASV\r\n");
    server!(t, b"503 You are already logged in\r\n");
    expect!(t, to_server: b"PASS again\r\nPASV\r\n");
}

#[test]
fn attack_30_rein_answered_502_stays_logged_in() {
    // vsftpd does not implement REIN.
    let mut t = T::logged_in();
    client!(t, b"REIN\r\nPASV\r\n");
    expect!(t, to_server: b"REIN\r\n");
    server!(t, b"502 REIN not implemented.\r\n");
    expect!(t, to_client: b"502 REIN not implemented.\r\n");
    expect!(t, to_server: b"PASV\r\n");
}

#[test]
fn attack_30_rein_220_closes_orphaned_listener_and_drops_rest() {
    let mut t = passive_listening();
    client!(t, b"REST 100\r\nREIN\r\n");
    server!(t, b"350 Restarting at 100.\r\n220 again\r\n");
    expect!(t, work: vec![Action::CloseData { data: DataId(0) }]);
    expect!(t, to_client: b"350 Restarting at 100.\r\n220 again\r\n");
    assert!(t.s.current_data.is_none() && t.s.rest.is_none());
    // Logged out: data commands need a new login.
    client!(t, b"EPSV\r\n");
    expect!(t, to_client: b"530 Please login first.\r\n");
}

#[test]
fn attack_28_epsv_all_takes_effect_on_2xx_only() {
    let mut t = T::logged_in();
    client!(t, b"EPSV ALL\r\nPASV\r\n");
    expect!(t, to_server: b"EPSV ALL\r\n");
    server!(t, b"500 Unknown command.\r\n");
    // Refused by the server: PASV is still allowed.
    expect!(t, to_server: b"PASV\r\n");
    server!(t, b"227 Entering Passive Mode (198,51,100,10,195,80).\r\n");
    t.input(Input::Listening { data: DataId(0), local: sa("198.51.100.10:50000") });
    t.take(Side::Client);
    client!(t, b"EPSV ALL\r\nPORT 192,0,2,10,156,65\r\n");
    server!(t, b"200 EPSV ALL ok.\r\n");
    expect!(t, to_client: b"200 EPSV ALL ok.\r\n503 ftpgate: EPSV ALL in effect, use EPSV.\r\n");
}

#[test]
fn relaying_abor_without_transfer_closes_listener_and_drops_rest() {
    let mut t = passive_listening();
    client!(t, b"REST 10\r\n");
    server!(t, b"350 ok\r\n");
    t.take(Side::Client);
    expect!(t, to_server: b"REST 10\r\n");
    client!(t, b"ABOR\r\n");
    expect!(t, work: vec![Action::CloseData { data: DataId(0) }]);
    assert_eq!(take_synch(&mut t), SYNCH_ABOR);
    assert!(t.s.current_data.is_none() && t.s.rest.is_none());
    server!(t, b"225 No transfer to ABOR.\r\n");
    expect!(t, to_client: b"225 No transfer to ABOR.\r\n");
    // A RETR now has no channel: the server's 425 passes.
    client!(t, b"RETR f\r\n");
    server!(t, b"425 Use PORT or PASV first.\r\n");
    expect!(t, to_client: b"425 Use PORT or PASV first.\r\n");
}

// ---- Debug never shows buffered bytes ---------------------------------------

#[test]
fn session_debug_with_pass_in_flight_shows_no_password() {
    let mut t = T::new();
    server!(t, b"220 ready\r\n");
    // One PASS forwarded and unwritten, one half-framed, one stashed behind it.
    client!(t, b"USER anna\r\nPASS hunter2\r\nPASV\r\nPASS hunter3");
    assert!(t.s.pending(Side::Server).windows(7).any(|w| w == b"hunter2"));
    let shown = format!("{:?}", t.s);
    for secret in ["hunter", "104, 117, 110"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(shown.contains("buffered_out"), "{shown}");
}

// ---- bounded replies (ATTACKS.md 17) --------------------------------------

#[test]
fn attack_17_relaying_multiline_over_byte_cap_421_and_close() {
    let mut t = T::logged_in();
    client!(t, b"HELP\r\n");
    let line = format!("{}\r\n", "x".repeat(8000));
    server!(t, b"214-help\r\n");
    for _ in 0..8 {
        server!(t, line.as_bytes());
    }
    assert!(!t.s.is_closed());
    server!(t, line.as_bytes());
    expect!(t, to_client: b"421 ftpgate: the server broke the protocol, closing.\r\n");
    assert!(t.s.is_closed());
}

#[test]
fn relaying_reply_being_assembled_counts_against_server_budget() {
    let mut t = passive_relaying_retr();
    // A held 226 makes later replies queue in the backlog.
    server!(t, b"226 ok\r\n");
    let line = format!("{}\r\n", "y".repeat(8000));
    for _ in 0..4 {
        server!(t, format!("211 {line}").as_bytes());
    }
    let backlog = t.s.backlog_bytes();
    assert!(backlog > 30_000);
    server!(t, b"211-start\r\n");
    let mut fed = 0;
    while t.s.read_budget(Side::Server) > 0 {
        server!(t, line.as_bytes());
        fed += 1;
        assert!(fed < 10, "budget never reached 0");
    }
    assert!(t.s.backlog_bytes() + t.s.replies.buffered() > HIGH_WATER);
    assert!(!t.s.is_closed());
}

/// Found by the `session` fuzz target (seed
/// `crash-port-refused-after-connect-regression`): the server connected to
/// the PORT listener and then refused the PORT. The accepted leg was closed
/// with a plain close (a FIN) instead of a reset.
#[test]
fn expect_connect_port_refused_after_server_connected_resets() {
    let mut t = T::logged_in();
    client!(t, b"PORT 192,0,2,10,156,65\r\n");
    t.input(Input::Listening { data: DataId(0), local: sa("192.0.2.10:40001") });
    t.input(Input::Accepted { data: DataId(0), peer: sa("198.51.100.10:20") });
    t.work();
    server!(t, b"500 PORT refused\r\n");
    expect!(t, work: vec![Action::ResetData { data: DataId(0) }, Action::CloseData { data: DataId(0) }]);
    expect!(t, to_client: b"500 PORT refused\r\n");
}

#[test]
fn relaying_client_aborts_with_226_held_record_says_client_got_no_reply() {
    let mut t = passive_relaying_retr();
    server!(t, b"226 Transfer complete.\r\n");
    t.input(Input::Aborted { from: Side::Client });
    assert!(matches!(
        transfer_record(&mut t),
        AuditEvent::Transfer {
            reply: None,
            server_reply: Some(226),
            result: TransferResult::Aborted(AbortCause::SessionEnded),
            ..
        }
    ));
}

// ---- audit records: data legs, REST, session totals --------------------------

#[test]
fn relaying_active_stor_record_names_both_legs_and_rest() {
    let mut t = active_listening();
    client!(t, b"REST 300000\r\n");
    server!(t, b"350 Restarting\r\n");
    client!(t, b"STOR up.bin\r\n");
    server!(t, b"150 Ok to send data.\r\n");
    t.input(Input::Accepted { data: DataId(0), peer: sa("198.51.100.10:20") });
    t.input(Input::Connected { data: DataId(0), local: sa("198.51.100.10:20") });
    t.input(Input::Relayed { data: DataId(0), to_client: 0, to_server: 77 });
    server!(t, b"226 done\r\n");
    let AuditEvent::Transfer { command, path, rest, legs, .. } = transfer_record(&mut t) else {
        unreachable!()
    };
    assert_eq!(
        (command.as_str(), path.as_deref(), rest.as_deref()),
        ("STOR", Some("up.bin"), Some("300000"))
    );
    // Active: the gateway connected to the client from the server's port
    // 20, and accepted the server's connection on the client's address.
    assert_eq!(legs.client, Some(DataLeg { peer: sa("192.0.2.10:40001"), local: sa("198.51.100.10:20") }));
    assert_eq!(legs.server, Some(DataLeg { peer: sa("198.51.100.10:20"), local: sa("192.0.2.10:40001") }));
}

#[test]
fn expect_connect_failed_record_has_the_accepted_leg_only() {
    let mut t = passive_listening();
    client!(t, b"LIST\r\n");
    t.input(Input::Accepted { data: DataId(0), peer: sa("192.0.2.10:40001") });
    t.input(Input::Failed { data: DataId(0), step: DataStep::Connect, error: ErrorKind::ConnectionRefused });
    server!(t, b"425 no\r\n");
    let AuditEvent::Transfer { command, path, rest, legs, .. } = transfer_record(&mut t) else {
        unreachable!()
    };
    assert_eq!((command.as_str(), path, rest), ("LIST", None, None));
    assert_eq!(legs.client, Some(DataLeg { peer: sa("192.0.2.10:40001"), local: sa("198.51.100.10:50000") }));
    assert_eq!(legs.server, None);
}

#[test]
fn relaying_session_end_record_sums_transfers() {
    let mut t = passive_relaying_retr();
    t.input(Input::Relayed { data: DataId(0), to_client: 1000, to_server: 0 });
    server!(t, b"226 done\r\n");
    expect!(t, to_client: b"226 done\r\n");
    assert!(matches!(transfer_record(&mut t), AuditEvent::Transfer { to_client: 1000, .. }));
    second_transfer_works(&mut t, 1);
    t.advance(Duration::from_secs(3));
    t.input(Input::Closed { from: Side::Client });
    let ended: Vec<AuditEvent> =
        t.audits().into_iter().filter(|e| matches!(e, AuditEvent::SessionEnded { .. })).collect();
    assert_eq!(
        ended,
        vec![AuditEvent::SessionEnded {
            reason: "client closed",
            user: Some("anna".into()),
            duration: Duration::from_secs(3),
            transfers: 2,
            to_client: 1010,
            to_server: 0,
        }]
    );
}

// ---- ATTACKS.md 34: data direction ---------------------------------------------

fn enforcing() -> Config {
    Config { enforce_data_direction: true, ..Config::default() }
}

#[test]
fn attack_34_retr_is_bound_toward_the_client_at_its_150() {
    let mut t = passive_listening_with(enforcing());
    client!(t, b"RETR file.bin\r\n");
    t.input(Input::Accepted { data: DataId(0), peer: sa("192.0.2.10:40001") });
    t.input(Input::Connected { data: DataId(0), local: sa("192.0.2.10:41000") });
    // Both legs up, the verb's channel not yet known: no direction yet.
    assert!(!t.work().iter().any(|a| matches!(a, Action::DataDirection { .. })));
    server!(t, b"150 Opening\r\n");
    expect!(t, work: vec![Action::DataDirection { data: DataId(0), toward: Side::Client }]);
}

#[test]
fn attack_34_stor_and_list_directions() {
    for (line, toward) in [
        (&b"STOR up.bin\r\n"[..], Side::Server),
        (b"APPE up.bin\r\n", Side::Server),
        (b"STOU\r\n", Side::Server),
        (b"LIST\r\n", Side::Client),
        (b"NLST\r\n", Side::Client),
        (b"MLSD\r\n", Side::Client),
    ] {
        let mut t = passive_listening_with(enforcing());
        client!(t, line);
        server!(t, b"150 Here\r\n");
        expect!(t, work: vec![Action::DataDirection { data: DataId(0), toward }]);
    }
}

#[test]
fn attack_34_direction_is_not_told_when_not_enforcing() {
    let mut t = passive_listening();
    client!(t, b"RETR file.bin\r\n");
    server!(t, b"150 Opening\r\n");
    expect!(t, work: vec![]);
}

#[test]
fn urgent_data_from_the_server_fails_the_retr_with_426_and_its_own_why() {
    let mut t = passive_relaying_retr_with(Config::default());
    t.actions();
    let failed = Input::RelayFailed {
        data: DataId(0),
        leg: Side::Server,
        error: URGENT_DATA,
        to_client: 8192,
        to_server: 0,
    };
    t.input(failed);
    let actions = t.actions();
    assert_eq!(
        actions.iter().filter(|a| !matches!(a, Action::Audit(_))).cloned().collect::<Vec<_>>(),
        reset_close(0)
    );
    server!(t, b"226 Transfer complete.\r\n");
    expect!(t, to_client: REPLY_426);
    assert!(matches!(
        transfer_record(&mut t),
        AuditEvent::Transfer {
            reply: Some(426),
            server_reply: Some(226),
            result: TransferResult::Failed(TransferFailure::UrgentData { from: Side::Server }),
            ..
        }
    ));
}

#[test]
fn attack_34_client_bytes_into_retr_reset_426_refusal_and_record() {
    let mut t = passive_relaying_retr_with(enforcing());
    t.actions();
    let failed = Input::RelayFailed {
        data: DataId(0),
        leg: Side::Client,
        error: WRONG_DIRECTION,
        to_client: 4096,
        to_server: 0,
    };
    t.input(failed);
    let actions = t.actions();
    assert_eq!(
        actions.iter().filter(|a| !matches!(a, Action::Audit(_))).cloned().collect::<Vec<_>>(),
        reset_close(0)
    );
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Audit(AuditEvent::Refused {
                side: Side::Client,
                rule: "data-direction",
                attack: Some(34),
                ..
            })
        )),
        "{actions:?}"
    );
    server!(t, b"226 Transfer complete.\r\n");
    expect!(t, to_client: REPLY_426);
    assert!(matches!(
        transfer_record(&mut t),
        AuditEvent::Transfer {
            reply: Some(426),
            server_reply: Some(226),
            to_client: 4096,
            result: TransferResult::Failed(TransferFailure::WrongDirection { from: Side::Client }),
            ..
        }
    ));
    // The session goes on.
    client!(t, b"NOOP\r\n");
    expect!(t, to_server: b"NOOP\r\n");
}
