//! Property tests of the access rules and command profiles through the
//! public API: whatever the commands, their framing and pipelining, a deny
//! is never bypassed and a read-only profile never lets a write through.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use ftpgate_proto::rules::{Action as RuleAction, Net, PolicySet, Rule, ServerData, UserMatch, READ_ONLY};
use ftpgate_proto::{Action, Config, ControlEnds, Input, Session, Side};
use proptest::prelude::*;

const COMMANDS: &[&str] = &[
    "USER anna",
    "USER ftp",
    "user ANONYMOUS",
    "USER ops",
    "PASS x",
    "STOR a",
    "stor b",
    "APPE c",
    "Stou",
    "DELE d",
    "RMD e",
    "XRMD e",
    "MKD f",
    "xmkd f",
    "RNFR g",
    "RNTO h",
    "SITE CHMOD 777 x",
    "MFMT 20260101000000 x",
    "mff modify=20260101000000; x",
    "site x",
    "RETR f",
    "LIST",
    "REIN",
    "NOOP",
    "ABOR",
    "REST 5",
    "QUIT",
    "FEAT",
    "PASV",
    "STOR\tx",
    "STOR a\rb",
    "ACCT x",
    "STORE x",
    " STOR x",
];

fn server_answer(line: &[u8]) -> &'static [u8] {
    let verb: Vec<u8> = line.iter().take(4).map(u8::to_ascii_uppercase).collect();
    match &verb[..] {
        b"USER" | b"PASS" => b"230 ok\r\n",
        b"PORT" | b"EPRT" => b"200 ok\r\n",
        b"REIN" => b"220 again\r\n",
        b"QUIT" => b"221 bye\r\n",
        _ => b"500 no\r\n",
    }
}

/// Drives a session with `script` cut into `cuts`, answering every line the
/// server gets; returns those lines.
fn run(policy: PolicySet, client: IpAddr, script: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    run_reloading(policy, None, client, script, cuts).0
}

/// As [`run`]; with `reload = Some((at, new))`, the rules become `new`
/// once `at` bytes of the script were fed (mid-line, pipelined or not).
/// Returns the lines the server got before the reload and after it.
fn run_reloading(
    policy: PolicySet,
    reload: Option<(usize, PolicySet)>,
    client: IpAddr,
    script: &[u8],
    cuts: &[usize],
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut reload = reload.map(|(at, new)| (at, Arc::new(new)));
    let mut before = None;
    let config = Config { policy: Arc::new(policy), ..Config::default() };
    let ends =
        ControlEnds { client: SocketAddr::new(client, 40000), server: "198.51.100.10:21".parse().unwrap() };
    let now = Instant::now();
    let mut s = Session::new(Arc::new(config), ends, now);
    s.handle_input(now, Input::Received { from: Side::Server, data: b"220 ready\r\n" });
    let mut seen = Vec::new();
    let mut partial = Vec::new();
    let mut rest = script;
    let mut cuts = cuts.iter().cycle();
    let mut port = 40000u16;
    for _ in 0..10_000 {
        // Every listener asked for comes up (on a port of its own when
        // port 0 was asked).
        let mut listens = Vec::new();
        while let Some(action) = s.poll_action() {
            if let Action::Listen { data, mut local, .. } = action {
                if local.port() == 0 {
                    port += 1;
                    local.set_port(port);
                }
                listens.push((data, local));
            }
        }
        if !listens.is_empty() {
            for (data, local) in listens {
                s.handle_input(now, Input::Listening { data, local });
            }
            continue;
        }
        let out = s.pending(Side::Server).to_vec();
        s.consume(Side::Server, out.len());
        let client_out = s.pending(Side::Client).len();
        s.consume(Side::Client, client_out);
        partial.extend_from_slice(&out);
        let mut answers = Vec::new();
        while let Some(end) = partial.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = partial.drain(..end + 2).take(end).collect();
            answers.extend_from_slice(server_answer(&line));
            seen.push(line);
        }
        if !answers.is_empty() {
            s.handle_input(now, Input::Received { from: Side::Server, data: &answers });
            continue;
        }
        if let Some((_, new)) = reload.take_if(|(at, _)| script.len() - rest.len() >= *at) {
            before = Some(seen.len());
            s.handle_input(now, Input::PolicyChanged { policy: &new });
            continue;
        }
        let budget = s.read_budget(Side::Client);
        if rest.is_empty() || budget == 0 || s.is_closed() {
            break;
        }
        let mut n = (*cuts.next().unwrap_or(&1)).clamp(1, budget).min(rest.len());
        if let Some((at, _)) = &reload {
            n = n.min(at - (script.len() - rest.len()));
        }
        s.handle_input(now, Input::Received { from: Side::Client, data: &rest[..n] });
        rest = &rest[n..];
    }
    let after = seen.split_off(before.unwrap_or(seen.len()));
    (seen, after)
}

fn script() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(0..COMMANDS.len(), 0..40).prop_map(|picks| {
        let mut bytes = Vec::new();
        for i in picks {
            bytes.extend_from_slice(COMMANDS[i].as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        bytes
    })
}

/// Data commands and what goes with them, for the conversion to active.
const DATA_COMMANDS: &[&str] = &[
    "USER anna",
    "PASV",
    "pasv",
    "EPSV",
    "EPSV 1",
    "EPSV 2",
    "EPSV ALL",
    "PORT 192,0,2,10,156,64",
    "EPRT |1|192.0.2.10|40001|",
    "RETR f",
    "STOR x",
    "ABOR",
    "REIN",
    "NOOP",
];

fn net(s: &str) -> Net {
    s.parse().unwrap()
}

proptest! {
    /// A deny for the client's network, first in the list: the connection
    /// is refused, and a session started anyway sends the server nothing
    /// but QUIT, whatever user rules follow and whatever the client sends.
    #[test]
    fn deny_for_client_network_is_never_bypassed(
        host in 0u8..=255,
        later_allow_users in any::<bool>(),
        default_allow in any::<bool>(),
        script in script(),
        cuts in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let mut rules = vec![Rule {
            client: vec![net("192.0.2.0/24")],
            action: RuleAction::Deny,
            ..Rule::default()
        }];
        if later_allow_users {
            rules.push(Rule {
                user: vec![UserMatch::Anonymous, UserMatch::Name("ops".into())],
                action: RuleAction::Allow,
                ..Rule::default()
            });
        }
        let default = if default_allow { RuleAction::Allow } else { RuleAction::Deny };
        let policy = PolicySet { default, rules, ..PolicySet::default() };
        let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, host));
        prop_assert!(policy.admit(client, "198.51.100.10:21".parse().unwrap()).is_err());
        for line in run(policy, client, &script, &cuts) {
            prop_assert!(line.eq_ignore_ascii_case(b"QUIT"), "reached the server: {:?}", String::from_utf8_lossy(&line));
        }
    }

    /// A reload that denies the client's network, at any point of any
    /// script (mid-line, pipelined, during a login or a REIN): no command
    /// that comes after it reaches the server, not even QUIT (the session
    /// ends with 421).
    #[test]
    fn reload_denying_the_client_network_no_later_command_reaches_the_server(
        host in 0u8..=255,
        profile in any::<bool>(),
        script in script(),
        at in any::<proptest::sample::Index>(),
        cuts in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let allow = Rule {
            action: RuleAction::Allow,
            profile: profile.then(|| "read-only".to_string()),
            ..Rule::default()
        };
        let before = PolicySet { rules: vec![allow.clone()], ..PolicySet::default() };
        let deny = Rule { client: vec![net("192.0.2.0/24")], action: RuleAction::Deny, ..Rule::default() };
        let after = PolicySet { rules: vec![deny, allow], ..PolicySet::default() };
        let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, host));
        let at = at.index(script.len() + 1);
        let (_, late) = run_reloading(before, Some((at, after)), client, &script, &cuts);
        prop_assert!(late.is_empty(), "reached the server after the reload: {:?}",
            late.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect::<Vec<_>>());
    }

    /// Under `server-data = "active"`, whatever the client sends, the
    /// server never hears PASV or EPSV (nor EPSV ALL, which would forbid
    /// the gateway's EPRT), and every PORT/EPRT it hears names the
    /// client's own address.
    #[test]
    fn to_active_server_never_hears_passive_commands_ports_name_the_client(
        picks in proptest::collection::vec(0..DATA_COMMANDS.len(), 0..30),
        cuts in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let mut script = Vec::new();
        for i in picks {
            script.extend_from_slice(DATA_COMMANDS[i].as_bytes());
            script.extend_from_slice(b"\r\n");
        }
        let rules =
            vec![Rule { action: RuleAction::Allow, server_data: ServerData::Active, ..Rule::default() }];
        let policy = PolicySet { rules, ..PolicySet::default() };
        for line in run(policy, "192.0.2.10".parse().unwrap(), &script, &cuts) {
            let text = String::from_utf8_lossy(&line).to_ascii_uppercase();
            prop_assert!(!text.starts_with("PASV") && !text.starts_with("EPSV"), "reached the server: {text}");
            if text.starts_with("PORT") {
                prop_assert!(text.starts_with("PORT 192,0,2,10,"), "{text}");
            }
            if text.starts_with("EPRT") {
                prop_assert!(text.starts_with("EPRT |1|192.0.2.10|"), "{text}");
            }
        }
    }

    /// Under `read-only`, no write verb reaches the server, in any case,
    /// pipelined or cut anywhere, before or after logins, REIN and new USERs.
    #[test]
    fn read_only_never_lets_a_write_reach_the_server(
        script in script(),
        cuts in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let rules = vec![Rule { action: RuleAction::Allow, profile: Some("read-only".into()), ..Rule::default() }];
        let policy = PolicySet { rules, ..PolicySet::default() };
        for line in run(policy, "203.0.113.7".parse().unwrap(), &script, &cuts) {
            let verb: Vec<u8> = line.iter().take_while(|&&b| b != b' ').map(u8::to_ascii_uppercase).collect();
            prop_assert!(
                !READ_ONLY.iter().any(|w| w.as_bytes() == &verb[..]),
                "reached the server: {:?}", String::from_utf8_lossy(&line)
            );
        }
    }

    /// With no policy at all (the default), commands pass as before: the
    /// same script reaches the server whole (the default allows everything).
    #[test]
    fn default_policy_forwards_every_well_formed_command(
        picks in proptest::collection::vec(0usize..4, 1..10),
    ) {
        let cmds = ["STOR a", "DELE d", "SITE x", "RETR f"];
        let mut script = Vec::new();
        for &i in &picks {
            script.extend_from_slice(cmds[i].as_bytes());
            script.extend_from_slice(b"\r\n");
        }
        let seen = run(PolicySet::default(), "203.0.113.7".parse().unwrap(), &script, &[7]);
        let want: Vec<Vec<u8>> = picks.iter().map(|&i| cmds[i].as_bytes().to_vec()).collect();
        prop_assert_eq!(seen, want);
    }
}
