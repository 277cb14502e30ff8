//! The one table from the core's audit events to log records. Messages are
//! fixed strings; every number and address is a key-value pair.
//!
//! One record shape per event, whatever the log format: a key whose value
//! is unknown or does not apply is logged as "-", never left out, so that
//! the text and the JSON form have the same keys. docs/audit.md lists them.

use std::net::SocketAddr;
use std::time::Duration;

use ftpgate_proto::{
    AbortCause, AuditEvent, DataLeg, DataMode, DataStep, PolicyStage, Side, TransferFailure, TransferResult,
};
use slog::{info, warn, Logger};

use crate::metrics::{Channel, Metrics, Step};

/// The value of a key that does not apply.
pub(crate) const NONE: &str = "-";

fn mode(m: DataMode) -> &'static str {
    match m {
        DataMode::Passive => "passive",
        DataMode::Active => "active",
    }
}

fn result(r: TransferResult) -> &'static str {
    match r {
        TransferResult::Ok => "ok",
        TransferResult::Failed(_) => "failed",
        TransferResult::Aborted(_) => "aborted",
    }
}

fn stage(s: PolicyStage) -> &'static str {
    match s {
        PolicyStage::Connection => "connection",
        PolicyStage::User => "user",
        PolicyStage::Command => "command",
        PolicyStage::Reload => "reload",
    }
}

/// The refusal counter's rule label of a policy denial.
fn policy_rule(s: PolicyStage) -> &'static str {
    match s {
        PolicyStage::Connection => "policy",
        PolicyStage::User => "policy-user",
        PolicyStage::Command => "policy-command",
        PolicyStage::Reload => "policy-reload",
    }
}

pub(crate) fn side(s: Side) -> &'static str {
    match s {
        Side::Client => "client",
        Side::Server => "server",
    }
}

fn step(s: DataStep) -> &'static str {
    match s {
        DataStep::Bind => "bind",
        DataStep::Listen => "listen",
        DataStep::Accept => "accept",
        DataStep::Connect => "connect",
        DataStep::Relay => "relay start",
    }
}

/// Why a transfer did not end `ok`, as fixed text plus the details that
/// go in their own keys: `(why, leg, step, error)`.
fn why(r: TransferResult) -> (&'static str, &'static str, &'static str, String) {
    let none = String::new;
    match r {
        TransferResult::Ok => ("-", "-", "-", none()),
        TransferResult::Failed(f) => match f {
            TransferFailure::Reset { leg } => ("data connection reset", side(leg), "-", none()),
            TransferFailure::RelayError { leg, error } => {
                ("data connection error", side(leg), "-", format!("{error:?}"))
            }
            TransferFailure::DataIdle => ("data idle timeout", "-", "-", none()),
            TransferFailure::AcceptTimeout => ("no data connection in time", "-", "accept", none()),
            TransferFailure::ConnectTimeout => ("data connect timeout", "-", "connect", none()),
            TransferFailure::SetupFailed { step: s, error } => {
                ("data channel set-up failed", "-", step(s), format!("{error:?}"))
            }
            TransferFailure::Replaced => ("data channel replaced before use", "-", "-", none()),
            TransferFailure::ServerReply { .. } => ("server refused or failed", "-", "-", none()),
            TransferFailure::NoDataConnection => ("no data connection", "-", "-", none()),
            TransferFailure::ServerClosed => ("server closed the control connection", "-", "-", none()),
            TransferFailure::WrongDirection { from } => ("data sent the wrong way", side(from), "-", none()),
            TransferFailure::UrgentData { from } => {
                ("urgent data on a data connection", side(from), "-", none())
            }
        },
        TransferResult::Aborted(AbortCause::ClientAbor) => ("client ABOR", "-", "-", none()),
        TransferResult::Aborted(AbortCause::SessionEnded) => ("session ended", "-", "-", none()),
    }
}

fn code(c: Option<u16>) -> String {
    c.map_or_else(|| NONE.to_string(), |c| c.to_string())
}

fn text(s: Option<&str>) -> &str {
    s.unwrap_or(NONE)
}

/// An ATTACKS.md case number, or "-".
pub(crate) fn attack(case: Option<u8>) -> String {
    case.map_or_else(|| NONE.to_string(), |c| c.to_string())
}

/// (peer, gateway's own end) of a data connection, or "-" twice.
fn leg(l: Option<DataLeg>) -> (String, String) {
    let addr = |a: SocketAddr| a.to_string();
    l.map_or_else(|| (NONE.to_string(), NONE.to_string()), |l| (addr(l.peer), addr(l.local)))
}

/// `rule:count,rule:count`, in the order the run first used each rule.
fn rule_counts(rules: &[(&'static str, usize)]) -> String {
    let parts: Vec<String> = rules.iter().map(|(rule, n)| format!("{rule}:{n}")).collect();
    parts.join(",")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The end record of a session the core did not end (the daemon gave up on
/// it): the keys of `SessionEnded`'s record, with "-" for what only the
/// core knows.
pub(crate) fn session_ended_by_daemon(log: &Logger, reason: &'static str, duration: Duration) {
    crate::metrics::get().session_ended(reason);
    info!(
        log, "session end";
        "reason" => reason, "user" => NONE, "ms" => millis(duration),
        "transfers" => NONE, "to_client" => NONE, "to_server" => NONE
    );
}

pub(crate) fn record(log: &Logger, event: &AuditEvent) {
    count(crate::metrics::get(), event);
    match event {
        AuditEvent::LoggedIn { user } => info!(log, "login"; "user" => user),
        AuditEvent::DataOpened { data, mode: m, local, accept_from } => info!(
            log, "data listen";
            "data" => data.0, "mode" => mode(*m), "local" => %local, "accept_from" => %accept_from
        ),
        // Port theft: a refusal by the data-peer rule (ATTACKS.md 5).
        AuditEvent::DataPeerRefused { data, peer, expected } => warn!(
            log, "data peer refused";
            "data" => data.0, "peer" => %peer, "expected" => %expected,
            "rule" => "port-theft", "attack" => attack(Some(5))
        ),
        AuditEvent::ConversionRefused { data, sent, server_reply, reply } => warn!(
            log, "data conversion refused by server";
            "data" => data.0, "sent" => sent, "server_reply" => server_reply, "reply" => reply
        ),
        AuditEvent::ReplyRewritten { data, announced, local } => info!(
            log, "data address rewritten";
            "data" => data.0, "announced" => %announced, "local" => %local
        ),
        AuditEvent::Refused { side: s, reason, rule, attack: case, what } => warn!(
            log, "refused";
            "side" => side(*s), "rule" => rule, "attack" => attack(*case), "reason" => reason, "what" => what
        ),
        AuditEvent::Transfer {
            data,
            mode: m,
            user,
            command,
            path,
            rest,
            legs,
            to_client,
            to_server,
            duration,
            reply,
            server_reply,
            result: r,
        } => {
            // `reply` is what the client got (426 in place of a cut
            // transfer's 2xx); `server_reply` what the server said.
            // One record shape for every outcome: `why` and its details
            // are "-" for an ok transfer.
            let (why, failed_leg, step, error) = why(*r);
            let (client_data, client_data_local) = leg(legs.client);
            let (server_data, server_data_local) = leg(legs.server);
            info!(
                log, "transfer";
                "data" => data.0, "mode" => mode(*m), "user" => text(user.as_deref()),
                "command" => command, "path" => text(path.as_deref()), "rest" => text(rest.as_deref()),
                "client_data" => client_data, "client_data_local" => client_data_local,
                "server_data" => server_data, "server_data_local" => server_data_local,
                "to_client" => to_client, "to_server" => to_server, "ms" => millis(*duration),
                "reply" => code(*reply), "server_reply" => code(*server_reply),
                "result" => result(*r), "why" => why, "leg" => failed_leg, "step" => step,
                "error" => if error.is_empty() { NONE.to_string() } else { error }
            )
        }
        AuditEvent::PolicyDenied { stage: st, rule, user, verb, profile } => warn!(
            log, "denied by policy";
            // No attack case: the operator's own rule, not protocol abuse.
            "stage" => stage(*st), "rule" => rule, "attack" => NONE, "user" => text(user.as_deref()),
            "verb" => text(verb.as_deref()), "profile" => text(profile.as_deref())
        ),
        AuditEvent::SessionEnded { reason, user, duration, transfers, to_client, to_server } => info!(
            log, "session end";
            "reason" => reason, "user" => text(user.as_deref()), "ms" => millis(*duration),
            "transfers" => transfers, "to_client" => to_client, "to_server" => to_server
        ),
        AuditEvent::RefusedLines { side: s, count, reason, rule, attack: case, what, rules } => warn!(
            log, "refused lines";
            "side" => side(*s), "count" => count, "rule" => rule, "attack" => attack(*case),
            "reason" => reason, "what" => what, "rules" => rule_counts(rules)
        ),
        AuditEvent::LoginFailed { user } => info!(log, "login failed"; "user" => text(user.as_deref())),
        AuditEvent::TlsPassThrough { mechanism, user } => info!(
            log, "FTPS pass-through: control connection no longer parsed";
            "mechanism" => mechanism, "user" => text(user.as_deref())
        ),
        // The core grows; an unknown event is still worth a line.
        other => info!(log, "event"; "event" => ?other),
    }
}

/// The counters of `event`, beside its log record: every decision the
/// core reports is counted by the same names it is logged with (rule,
/// result, reason).
fn count(m: &Metrics, event: &AuditEvent) {
    match event {
        AuditEvent::LoggedIn { .. } => m.login(),
        // Data channels are counted as the daemon admits them
        // (`Metrics::data_channel_opened`), with their address family.
        AuditEvent::DataOpened { .. } => {}
        // The thief is neither of the session's peers.
        AuditEvent::DataPeerRefused { .. } => m.refused(None, "port-theft"),
        // The server's answer, not a gateway refusal nor a failed system
        // call: the record is the count.
        AuditEvent::ConversionRefused { .. } => {}
        AuditEvent::ReplyRewritten { .. } => m.rewrite(),
        AuditEvent::Refused { side: s, rule, .. } => m.refused(Some(*s), rule),
        AuditEvent::Transfer { result: r, .. } => {
            m.transfer(result(*r));
            match r {
                // The global data-channel cap, not a failed system call:
                // the daemon logs it when it is reached.
                TransferResult::Failed(TransferFailure::SetupFailed {
                    error: std::io::ErrorKind::QuotaExceeded,
                    ..
                }) => {}
                TransferResult::Failed(TransferFailure::SetupFailed { step: s, .. }) => {
                    m.error(Channel::Data, Step::from(*s))
                }
                TransferResult::Failed(
                    TransferFailure::Reset { .. } | TransferFailure::RelayError { .. },
                ) => m.error(Channel::Data, Step::Relay),
                _ => {}
            }
        }
        AuditEvent::SessionEnded { reason, .. } => m.session_ended(reason),
        // Each line under the rule that refused it.
        AuditEvent::RefusedLines { side: s, rules, .. } => {
            for (rule, n) in rules {
                m.refused_n(Some(*s), rule, u64::try_from(*n).unwrap_or(u64::MAX))
            }
        }
        AuditEvent::LoginFailed { .. } => m.login_failed(),
        AuditEvent::TlsPassThrough { .. } => m.ftps_pass_through(),
        // By stage, not by the operator's rule names: those are the log's.
        AuditEvent::PolicyDenied { stage: PolicyStage::Connection, .. } => m.session_refused("policy"),
        AuditEvent::PolicyDenied { stage: st, .. } => m.refused(Some(Side::Client), policy_rule(*st)),
        // A kind this table does not know yet is logged by `record`.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use ftpgate_proto::{DataId, DataLegs};
    use slog::o;

    use super::*;
    use crate::cli::{LogFormat, LogLevel};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The record of `event` in `format`, logged through a session's child
    /// logger as the daemon does.
    fn render_as(format: LogFormat, event: &AuditEvent) -> String {
        let buf = Buf::default();
        let root = crate::log::to_writer(LogLevel::Trace, format, buf.clone());
        let log =
            root.new(o!("session" => 7, "client" => "192.0.2.10:40000", "server" => "198.51.100.10:21"));
        record(&log, event);
        drop((log, root));
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn render(event: &AuditEvent) -> String {
        render_as(LogFormat::Full, event)
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// The keys of a slog-term full record: `TIME LEVEL msg, k: v, k: v`.
    fn text_keys(line: &str) -> Vec<String> {
        let mut keys: Vec<String> = line
            .trim_end()
            .split(", ")
            .skip(1)
            .filter_map(|kv| kv.split_once(": ").map(|(k, _)| k.to_string()))
            .collect();
        keys.sort();
        keys
    }

    fn every_event() -> Vec<AuditEvent> {
        vec![
            AuditEvent::LoggedIn { user: "anna".into() },
            AuditEvent::DataOpened {
                data: DataId(1),
                mode: DataMode::Active,
                local: sa("192.0.2.10:40001"),
                accept_from: "198.51.100.10".parse().unwrap(),
            },
            AuditEvent::DataPeerRefused {
                data: DataId(1),
                peer: sa("203.0.113.9:1234"),
                expected: "192.0.2.10".parse().unwrap(),
            },
            AuditEvent::ReplyRewritten {
                data: DataId(1),
                announced: sa("10.0.0.5:50000"),
                local: sa("198.51.100.10:50000"),
            },
            AuditEvent::Refused {
                side: Side::Client,
                reason: "data address is not the client's",
                rule: "bounce",
                attack: Some(1),
                what: "PORT 203,0,113,5,0,80".into(),
            },
            transfer(226, 226, TransferResult::Ok),
            AuditEvent::SessionEnded {
                reason: "client closed",
                user: Some("anna".into()),
                duration: Duration::from_millis(2500),
                transfers: 2,
                to_client: 10,
                to_server: 0,
            },
            AuditEvent::RefusedLines {
                side: Side::Client,
                count: 5,
                reason: "LPRT/LPSV unsupported",
                rule: "lprt-lpsv",
                attack: Some(29),
                what: "LPSV".into(),
                rules: vec![("lprt-lpsv", 4), ("command-syntax", 1)],
            },
            AuditEvent::LoginFailed { user: Some("mallory".into()) },
            AuditEvent::LoginFailed { user: None },
            AuditEvent::TlsPassThrough { mechanism: "TLS".into(), user: None },
            AuditEvent::PolicyDenied {
                stage: PolicyStage::Command,
                rule: "contractors".into(),
                user: Some("anna".into()),
                verb: Some("STOR".into()),
                profile: Some("read-only".into()),
            },
            AuditEvent::PolicyDenied {
                stage: PolicyStage::Connection,
                rule: "rule 2".into(),
                user: None,
                verb: None,
                profile: None,
            },
            AuditEvent::PolicyDenied {
                stage: PolicyStage::User,
                rule: "default".into(),
                user: Some("mallory".into()),
                verb: None,
                profile: None,
            },
            AuditEvent::ConversionRefused { data: DataId(2), sent: "PORT", server_reply: 500, reply: 425 },
        ]
    }

    fn transfer(reply: u16, server_reply: u16, result: TransferResult) -> AuditEvent {
        AuditEvent::Transfer {
            data: DataId(3),
            mode: DataMode::Passive,
            user: Some("anna".into()),
            command: "RETR".into(),
            path: Some("big.bin".into()),
            rest: Some("300000".into()),
            legs: Box::new(DataLegs {
                client: Some(DataLeg { peer: sa("192.0.2.10:40002"), local: sa("198.51.100.10:50000") }),
                server: None,
            }),
            to_client: 524_288,
            to_server: 0,
            duration: Duration::from_millis(1500),
            reply: Some(reply),
            server_reply: Some(server_reply),
            result,
        }
    }

    #[test]
    fn transfer_reset_record_says_failed_why_and_both_replies() {
        let line =
            render(&transfer(426, 226, TransferResult::Failed(TransferFailure::Reset { leg: Side::Server })));
        for kv in [
            "data: 3",
            "mode: passive",
            "user: anna",
            "command: RETR",
            "path: big.bin",
            "rest: 300000",
            "client_data: 192.0.2.10:40002",
            "client_data_local: 198.51.100.10:50000",
            "server_data: -",
            "server_data_local: -",
            "to_client: 524288",
            "to_server: 0",
            "ms: 1500",
            "reply: 426",
            "server_reply: 226",
            "result: failed",
            "why: data connection reset",
            "leg: server",
        ] {
            assert!(line.contains(kv), "{kv:?} missing in {line}");
        }
    }

    #[test]
    fn transfer_ok_record_has_no_reason() {
        let line = render(&transfer(226, 226, TransferResult::Ok));
        assert!(line.contains("result: ok") && line.contains("why: -"), "{line}");
    }

    #[test]
    fn transfer_idle_and_setup_reasons_named() {
        let line = render(&transfer(426, 226, TransferResult::Failed(TransferFailure::DataIdle)));
        assert!(line.contains("why: data idle timeout"), "{line}");
        let f =
            TransferFailure::SetupFailed { step: DataStep::Connect, error: io::ErrorKind::ConnectionRefused };
        let line = render(&transfer(425, 425, TransferResult::Failed(f)));
        assert!(line.contains("step: connect") && line.contains("error: ConnectionRefused"), "{line}");
        let line = render(&transfer(226, 226, TransferResult::Failed(TransferFailure::ServerClosed)));
        assert!(
            line.contains("result: failed") && line.contains("why: server closed the control connection"),
            "{line}"
        );
    }

    #[test]
    fn refused_record_names_rule_and_attack_case() {
        let line = render(&every_event()[4]);
        for kv in ["WARN refused", "side: client", "rule: bounce", "attack: 1", "what: PORT 203,0,113,5,0,80"]
        {
            assert!(line.contains(kv), "{kv:?} missing in {line}");
        }
    }

    #[test]
    fn refused_lines_record_counts_the_run_and_names_its_rule() {
        let line = render(&every_event()[7]);
        for kv in [
            "WARN refused lines",
            "side: client",
            "count: 5",
            "rule: lprt-lpsv",
            "attack: 29",
            "reason: LPRT/LPSV unsupported",
            "what: LPSV",
            "rules: lprt-lpsv:4,command-syntax:1",
        ] {
            assert!(line.contains(kv), "{kv:?} missing in {line}");
        }
    }

    #[test]
    fn login_failed_and_pass_through_records_have_their_keys() {
        let line = render(&every_event()[8]);
        assert!(line.contains("INFO login failed") && line.contains("user: mallory"), "{line}");
        assert!(render(&every_event()[9]).contains("user: -"));
        let line = render(&every_event()[10]);
        assert!(line.contains("FTPS pass-through") && line.contains("mechanism: TLS"), "{line}");
    }

    #[test]
    fn policy_denied_record_names_stage_rule_user_verb_profile() {
        let line = render(&every_event()[11]);
        for kv in [
            "WARN denied by policy",
            "stage: command",
            "rule: contractors",
            "attack: -",
            "user: anna",
            "verb: STOR",
            "profile: read-only",
        ] {
            assert!(line.contains(kv), "{kv:?} missing in {line}");
        }
        let line = render(&every_event()[12]);
        assert!(line.contains("stage: connection") && line.contains("user: -"), "{line}");
    }

    #[test]
    fn every_event_has_a_record_of_its_own() {
        for event in every_event() {
            let line = render(&event);
            assert!(!line.contains(" INFO event, "), "{event:?} fell through to the catch-all: {line}");
        }
    }

    #[test]
    fn json_record_has_the_text_records_keys_plus_ts_level_msg() {
        for event in every_event() {
            let text = render_as(LogFormat::Full, &event);
            let json = render_as(LogFormat::Json, &event);
            assert_eq!(json.lines().count(), 1, "one line per record: {json}");
            let value: serde_json::Value = serde_json::from_str(&json).unwrap();
            let obj = value.as_object().unwrap_or_else(|| panic!("not an object: {json}"));
            let mut keys: Vec<String> =
                obj.keys().filter(|k| !matches!(k.as_str(), "ts" | "level" | "msg")).cloned().collect();
            keys.sort();
            assert_eq!(keys, text_keys(&text), "{json}\n{text}");
            for k in ["session", "client", "server"] {
                assert!(obj.contains_key(k), "{k} missing: {json}");
            }
            let level = obj["level"].as_str().unwrap();
            let msg = obj["msg"].as_str().unwrap();
            assert!(text.contains(&format!(" {level} {msg}")), "{json}\n{text}");
            assert!(obj["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{json}");
        }
    }

    #[test]
    fn every_event_is_counted_by_the_names_it_is_logged_with() {
        let m = Metrics::new();
        for event in every_event() {
            count(&m, &event);
        }
        let reset = TransferFailure::Reset { leg: Side::Server };
        let refused =
            TransferFailure::SetupFailed { step: DataStep::Connect, error: io::ErrorKind::ConnectionRefused };
        let capped =
            TransferFailure::SetupFailed { step: DataStep::Listen, error: io::ErrorKind::QuotaExceeded };
        for failure in [reset, refused, capped] {
            count(&m, &transfer(426, 226, TransferResult::Failed(failure)));
        }
        count(&m, &transfer(426, 226, TransferResult::Aborted(AbortCause::ClientAbor)));
        let text = m.encode();
        for (series, n) in [
            ("ftpgate_logins_total", 1.0),
            (r#"ftpgate_refusals_total{side="third-party",rule="port-theft"}"#, 1.0),
            (r#"ftpgate_refusals_total{side="client",rule="bounce"}"#, 1.0),
            // A run of refused lines is one record and counts each line
            // under the rule that refused it.
            (r#"ftpgate_refusals_total{side="client",rule="lprt-lpsv"}"#, 4.0),
            (r#"ftpgate_refusals_total{side="client",rule="command-syntax"}"#, 1.0),
            ("ftpgate_login_failures_total", 2.0),
            ("ftpgate_ftps_pass_through_total", 1.0),
            // Policy denials by stage, not by the operator's rule names.
            (r#"ftpgate_refusals_total{side="client",rule="policy-command"}"#, 1.0),
            (r#"ftpgate_refusals_total{side="client",rule="policy-user"}"#, 1.0),
            (r#"ftpgate_sessions_refused_total{rule="policy"}"#, 1.0),
            ("ftpgate_data_address_rewrites_total", 1.0),
            (r#"ftpgate_transfers_total{result="ok"}"#, 1.0),
            (r#"ftpgate_transfers_total{result="failed"}"#, 3.0),
            (r#"ftpgate_transfers_total{result="aborted"}"#, 1.0),
            (r#"ftpgate_sessions_ended_total{reason="client closed"}"#, 1.0),
            (r#"ftpgate_errors_total{channel="data",step="relay"}"#, 1.0),
            (r#"ftpgate_errors_total{channel="data",step="connect"}"#, 1.0),
            // The global data-channel cap is no failed system call.
            (r#"ftpgate_errors_total{channel="data",step="listen"}"#, 0.0),
        ] {
            assert_eq!(crate::metrics::value(&text, series), Some(n), "{series}:\n{text}");
        }
    }

    #[test]
    fn json_transfer_numbers_are_numbers() {
        let json = render_as(LogFormat::Json, &transfer(226, 226, TransferResult::Ok));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["to_client"], 524_288);
        assert_eq!(v["ms"], 1500);
        assert_eq!(v["session"], 7);
        assert_eq!(v["path"], "big.bin");
        assert_eq!(v["reply"], "226");
    }
}
