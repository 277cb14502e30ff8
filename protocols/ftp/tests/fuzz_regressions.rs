//! Regressions found by the cargo-fuzz targets in `fuzz/`. Each test replays
//! the minimized input (also kept as `fuzz/seeds/<target>/crash-*-regression`)
//! through the public API and checks what the fuzz invariant was about.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ftpgate_proto::{Action, AuditEvent, Config, ControlEnds, DataId, Input, Session, Side};

fn ends() -> ControlEnds {
    ControlEnds { client: "192.0.2.10:40000".parse().unwrap(), server: "198.51.100.10:21".parse().unwrap() }
}

/// Feed one fact, drain the actions, write out both sides.
fn step(s: &mut Session, now: Instant, input: Input<'_>) -> (Vec<Action>, Vec<u8>, Vec<u8>) {
    s.handle_input(now, input);
    let actions: Vec<Action> = std::iter::from_fn(|| s.poll_action()).collect();
    let mut out = |side| {
        let bytes = s.pending(side).to_vec();
        s.consume(side, bytes.len());
        bytes
    };
    (actions, out(Side::Client), out(Side::Server))
}

/// fuzz/seeds/session/crash-abor-held-227-regression: the client pipelines
/// `STOR` and `ABOR` while the 227 for its PASV is still held waiting for
/// the listener. ABOR closed that channel but left the 227 held for it, and
/// nothing could release that hold any more: every later server reply stayed
/// behind it (the `debug_check_holds` assertion; in release the client saw
/// nothing until the idle timeout).
#[test]
fn abor_while_227_waits_for_listener_releases_it_as_425() {
    let now = Instant::now();
    let mut s = Session::new(Arc::new(Config::default()), ends(), now);
    step(&mut s, now, Input::Received { from: Side::Server, data: b"220 ready\r\n" });
    step(&mut s, now, Input::Received { from: Side::Client, data: b"USER anna\r\nPASS x\r\n" });
    step(&mut s, now, Input::Received { from: Side::Server, data: b"331 pw\r\n230 ok\r\n" });
    step(&mut s, now, Input::Received { from: Side::Client, data: b"PASV\r\n" });
    let reply = b"227 Entering Passive Mode (198,51,100,10,195,80).\r\n";
    let (actions, to_client, _) = step(&mut s, now, Input::Received { from: Side::Server, data: reply });
    assert!(matches!(actions[0], Action::Listen { data: DataId(0), .. }));
    assert!(to_client.is_empty(), "227 held until the listener is up");

    // Before Listening: STOR then ABOR.
    let (actions, to_client, to_server) =
        step(&mut s, now, Input::Received { from: Side::Client, data: b"STOR up.bin\r\nABOR\r\n" });
    assert!(actions.contains(&Action::CloseData { data: DataId(0) }), "{actions:?}");
    assert_eq!(to_client, b"425 Can't open data connection.\r\n");
    assert!(to_server.starts_with(b"STOR up.bin\r\n"));
    assert!(to_server.ends_with(b"ABOR\r\n"));

    // The late Listening changes nothing; the server's replies flow.
    let local: SocketAddr = "198.51.100.10:50000".parse().unwrap();
    let (actions, to_client, _) = step(&mut s, now, Input::Listening { data: DataId(0), local });
    assert!(actions.is_empty() && to_client.is_empty());
    let (_, to_client, _) =
        step(&mut s, now, Input::Received { from: Side::Server, data: b"425 no data\r\n226 ABOR ok\r\n" });
    assert_eq!(to_client, b"425 no data\r\n226 ABOR ok\r\n", "server replies stuck behind the hold");

    let (_, _, _) = step(&mut s, now, Input::Closed { from: Side::Client });
    assert!(s.is_closed());
}

/// fuzz/seeds/session/crash-passive-cap-refusals-in-refused-run-regression:
/// a refused client line, then the channel cap refuses two 229s answering
/// PASVs forwarded before it, then the session ends. The core's records
/// were right (the run's one `Refused` comes at the teardown; the two 229
/// refusals answer lines the server saw); the fuzz driver counted the 229
/// refusals as records of the run. This pins what the core does.
#[test]
fn passive_cap_refusals_inside_a_refused_run_are_not_line_records() {
    fn audits(actions: &[Action]) -> Vec<(&'static str, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Audit(AuditEvent::Refused { side: Side::Client, rule, what, .. }) => {
                    Some((*rule, what.clone()))
                }
                Action::Audit(AuditEvent::RefusedLines { .. }) => Some(("lines", String::new())),
                _ => None,
            })
            .collect()
    }
    let now = Instant::now();
    let config = Config { max_data_channels: 1, ..Config::default() };
    let mut s = Session::new(Arc::new(config), ends(), now);
    step(&mut s, now, Input::Received { from: Side::Server, data: b"220 ready\r\n" });
    step(&mut s, now, Input::Received { from: Side::Server, data: b"230 ok\r\n" });
    let (_, _, to_server) =
        step(&mut s, now, Input::Received { from: Side::Client, data: b"PASV\r\nPASV\r\nPASV\r\n" });
    assert_eq!(to_server, b"PASV\r\nPASV\r\nPASV\r\n");
    let epsv = Input::Received { from: Side::Server, data: b"229 (|||50001|)\r\n" };
    step(&mut s, now, epsv);
    let local: SocketAddr = "198.51.100.10:50001".parse().unwrap();
    step(&mut s, now, Input::Listening { data: DataId(0), local });
    let peer: SocketAddr = "192.0.2.10:20000".parse().unwrap();
    let (actions, _, _) = step(&mut s, now, Input::Accepted { data: DataId(0), peer });
    assert!(matches!(actions[..], [Action::Connect { data: DataId(0), .. }]), "{actions:?}");

    // The refused line: its record waits for the end of the run.
    let (actions, _, to_server) =
        step(&mut s, now, Input::Received { from: Side::Client, data: b"R150\r\n" });
    assert!(audits(&actions).is_empty() && to_server.is_empty(), "{actions:?}");

    // Two 229s the cap refuses: one record each, right away.
    let mut to_client = Vec::new();
    for _ in 0..2 {
        let epsv = Input::Received { from: Side::Server, data: b"229 (|||50001|)\r\n" };
        let (actions, out, _) = step(&mut s, now, epsv);
        assert_eq!(audits(&actions), [("data-channel-cap", "229".to_string())]);
        to_client.extend(out);
    }
    assert_eq!(
        to_client,
        b"425 ftpgate: passive reply refused by gateway policy.\r\n\
          425 ftpgate: passive reply refused by gateway policy.\r\n\
          500 Syntax error, command unrecognized.\r\n"
    );

    // The session ends (a reset: a FIN would let the connecting channel
    // run its course first): the run's one record, for R150.
    let (actions, _, _) = step(&mut s, now, Input::Aborted { from: Side::Client });
    assert_eq!(audits(&actions), [("command-syntax", "R150".to_string())]);
    assert!(s.is_closed());
}

/// fuzz/seeds/session/crash-530-split-by-telnet-dm-regression: a 530 whose
/// digits a Telnet command splits ("53", IAC DM, "0"). The core decodes the
/// line as any Telnet peer would and records the failed login; the fuzz
/// driver had counted 530s in the raw bytes, found none, and called the
/// record spurious. This pins the core's side.
#[test]
fn telnet_split_530_is_a_failed_login() {
    let now = Instant::now();
    let mut s = Session::new(Arc::new(Config::default()), ends(), now);
    step(&mut s, now, Input::Received { from: Side::Server, data: b"220 ready\r\n" });
    let (_, _, to_server) = step(&mut s, now, Input::Received { from: Side::Client, data: b"USER anna\r\n" });
    assert_eq!(to_server, b"USER anna\r\n");
    let (actions, to_client, _) =
        step(&mut s, now, Input::Received { from: Side::Server, data: b"53\xff\xf20 Login incorrect.\r\n" });
    assert_eq!(to_client, b"530 Login incorrect.\r\n");
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Audit(AuditEvent::LoginFailed { user: Some(u) }) if u == "anna")),
        "{actions:?}"
    );
}
