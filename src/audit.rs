//! The one table from the core's audit events to log records. Messages are
//! fixed strings; every number and address is a key-value pair.

use ftpgate_proto::{AbortCause, AuditEvent, DataMode, DataStep, Side, TransferFailure, TransferResult};
use slog::{info, warn, Logger};

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

fn side(s: Side) -> &'static str {
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
        },
        TransferResult::Aborted(AbortCause::ClientAbor) => ("client ABOR", "-", "-", none()),
        TransferResult::Aborted(AbortCause::SessionEnded) => ("session ended", "-", "-", none()),
    }
}

fn code(c: Option<u16>) -> String {
    c.map_or_else(|| "-".to_string(), |c| c.to_string())
}

pub(crate) fn record(log: &Logger, event: &AuditEvent) {
    match event {
        AuditEvent::LoggedIn { user } => info!(log, "login"; "user" => user),
        AuditEvent::DataOpened { data, mode: m, local, accept_from } => info!(
            log, "data listen";
            "data" => data.0, "mode" => mode(*m), "local" => %local, "accept_from" => %accept_from
        ),
        AuditEvent::DataPeerRefused { data, peer, expected } => warn!(
            log, "data peer refused";
            "data" => data.0, "peer" => %peer, "expected" => %expected
        ),
        AuditEvent::ReplyRewritten { data, announced, local } => info!(
            log, "data address rewritten";
            "data" => data.0, "announced" => %announced, "local" => %local
        ),
        AuditEvent::Refused { side, reason, what } => warn!(
            log, "refused";
            "side" => ?side, "reason" => reason, "what" => what
        ),
        AuditEvent::Transfer {
            data,
            mode: m,
            user,
            command,
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
            let (why, leg, step, error) = why(*r);
            info!(
                log, "transfer";
                "data" => data.0, "mode" => mode(*m), "user" => user.as_deref().unwrap_or("-"),
                "command" => command, "to_client" => to_client, "to_server" => to_server,
                "ms" => duration.as_millis() as u64,
                "reply" => code(*reply), "server_reply" => code(*server_reply),
                "result" => result(*r), "why" => why, "leg" => leg, "step" => step,
                "error" => if error.is_empty() { "-".to_string() } else { error }
            )
        }
        AuditEvent::SessionEnded { reason } => info!(log, "session end"; "reason" => reason),
        AuditEvent::RefusedLines { count, reason, what } => warn!(
            log, "refused lines";
            "side" => "client", "count" => count, "reason" => reason, "what" => what
        ),
        AuditEvent::LoginFailed { user } => {
            info!(log, "login failed"; "user" => user.as_deref().unwrap_or("-"))
        }
        AuditEvent::TlsPassThrough { mechanism, user } => info!(
            log, "FTPS pass-through: control connection no longer parsed";
            "mechanism" => mechanism, "user" => user.as_deref().unwrap_or("-")
        ),
        // The core grows; an unknown event is still worth a line.
        other => info!(log, "event"; "event" => ?other),
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use ftpgate_proto::DataId;
    use slog::{o, Drain};

    use super::*;

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

    fn render(event: &AuditEvent) -> String {
        let buf = Buf::default();
        let drain = slog_term::FullFormat::new(slog_term::PlainSyncDecorator::new(buf.clone())).build();
        let log = Logger::root(Mutex::new(drain).fuse(), o!());
        record(&log, event);
        drop(log);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn transfer(reply: u16, server_reply: u16, result: TransferResult) -> AuditEvent {
        AuditEvent::Transfer {
            data: DataId(3),
            mode: DataMode::Passive,
            user: Some("anna".into()),
            command: "RETR big.bin".into(),
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
            "command: RETR big.bin",
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
    }
}
