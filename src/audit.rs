//! The one table from the core's audit events to log records. Messages are
//! fixed strings; every number and address is a key-value pair.

use ftpgate_proto::{AuditEvent, DataMode, TransferResult};
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
        TransferResult::Failed => "failed",
        TransferResult::Aborted => "aborted",
    }
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
            result: r,
        } => info!(
            log, "transfer";
            "data" => data.0, "mode" => mode(*m), "user" => user.as_deref().unwrap_or("-"),
            "command" => command, "to_client" => to_client, "to_server" => to_server,
            "ms" => duration.as_millis() as u64,
            "reply" => reply.map_or_else(|| "-".to_string(), |c| c.to_string()),
            "result" => result(*r)
        ),
        AuditEvent::SessionEnded { reason } => info!(log, "session end"; "reason" => reason),
        // The core grows; an unknown event is still worth a line.
        other => info!(log, "event"; "event" => ?other),
    }
}
