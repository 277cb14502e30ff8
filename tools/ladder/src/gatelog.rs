//! The records of ftpgate's `--log-format json` audit trail that name
//! sockets (docs/audit.md): which session a control connection is, which
//! data channel a data connection is, and what ftpgate refused.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;

/// One audit record the diagram uses.
#[derive(Debug, Clone)]
pub struct Record {
    /// Seconds since the epoch.
    pub t: f64,
    pub session: u64,
    pub client: Option<SocketAddr>,
    pub server: Option<SocketAddr>,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub enum Kind {
    SessionStart,
    SessionEnd {
        reason: String,
    },
    DataListen {
        data: u64,
        mode: String,
        local: Option<SocketAddr>,
        accept_from: String,
    },
    AddressRewritten {
        announced: String,
        local: String,
    },
    Transfer {
        data: u64,
        command: String,
        client_data: Option<SocketAddr>,
        client_data_local: Option<SocketAddr>,
        server_data: Option<SocketAddr>,
        server_data_local: Option<SocketAddr>,
        result: String,
        reply: String,
    },
    Refused {
        side: String,
        rule: String,
        attack: String,
        what: String,
    },
    PeerRefused {
        data: u64,
        peer: Option<SocketAddr>,
        expected: String,
    },
}

/// The records of the JSON log at `path` that the diagram uses, in order.
/// Lines that are not JSON (a panic message, text-form records) are skipped.
pub fn read(path: &Path) -> std::io::Result<Vec<Record>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().filter_map(record).collect())
}

fn record(line: &str) -> Option<Record> {
    let v: Value = serde_json::from_str(line).ok()?;
    let s = |k: &str| -> String {
        match v.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => "-".to_owned(),
        }
    };
    let addr = |k: &str| s(k).parse::<SocketAddr>().ok();
    let num = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let kind = match v.get("msg")?.as_str()? {
        "session start" => Kind::SessionStart,
        "session end" => Kind::SessionEnd { reason: s("reason") },
        "data listen" => Kind::DataListen {
            data: num("data"),
            mode: s("mode"),
            local: addr("local"),
            accept_from: s("accept_from"),
        },
        "data address rewritten" => Kind::AddressRewritten { announced: s("announced"), local: s("local") },
        "transfer" => Kind::Transfer {
            data: num("data"),
            command: s("command"),
            client_data: addr("client_data"),
            client_data_local: addr("client_data_local"),
            server_data: addr("server_data"),
            server_data_local: addr("server_data_local"),
            result: s("result"),
            reply: s("reply"),
        },
        "refused" => Kind::Refused { side: s("side"), rule: s("rule"), attack: s("attack"), what: s("what") },
        "data peer refused" => {
            Kind::PeerRefused { data: num("data"), peer: addr("peer"), expected: s("expected") }
        }
        _ => return None,
    };
    let t = humantime::parse_rfc3339_weak(v.get("ts")?.as_str()?)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    Some(Record { t, session: num("session"), client: addr("client"), server: addr("server"), kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_record_names_both_legs() {
        let line = r#"{"msg":"transfer","level":"INFO","ts":"2026-01-02T03:04:05.250Z","session":3,"client":"192.0.2.10:40000","server":"198.51.100.10:21","data":1,"mode":"passive","command":"RETR","client_data":"192.0.2.10:40002","client_data_local":"198.51.100.10:30001","server_data":"198.51.100.10:30001","server_data_local":"192.0.2.10:51000","result":"ok","reply":"226"}"#;
        let r = record(line).unwrap();
        assert_eq!(r.session, 3);
        let Kind::Transfer { client_data_local, server_data_local, .. } = r.kind else {
            panic!("not a transfer: {r:?}");
        };
        assert_eq!(client_data_local.unwrap().to_string(), "198.51.100.10:30001");
        assert_eq!(server_data_local.unwrap().to_string(), "192.0.2.10:51000");
        assert!((r.t - 1_767_323_045.25).abs() < 1e-3);
    }

    #[test]
    fn other_lines_are_skipped() {
        assert!(record("not json").is_none());
        assert!(record(r#"{"msg":"listening","ts":"2026-01-02T03:04:05Z"}"#).is_none());
    }
}
