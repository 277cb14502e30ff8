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
    /// A `refused` record (`lines` 1), or a `refused lines` record: a run
    /// of refused lines in a row, named by its first line and its rule.
    Refused {
        side: String,
        rule: String,
        attack: String,
        what: String,
        lines: u64,
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
        "refused" => {
            Kind::Refused { side: s("side"), rule: s("rule"), attack: s("attack"), what: s("what"), lines: 1 }
        }
        "refused lines" => Kind::Refused {
            side: s("side"),
            rule: s("rule"),
            attack: s("attack"),
            what: s("what"),
            lines: num("count"),
        },
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
    fn refused_lines_record_is_a_refusal_with_its_count() {
        let line = r#"{"msg":"refused lines","level":"WARN","ts":"2026-11-27T15:41:54.027Z","server":"198.51.100.10:21","client":"192.0.2.10:52986","session":1,"what":"PORT 203,0,113,5,200,10","reason":"data address is not the client's","attack":"1","rule":"bounce","count":5,"side":"client"}"#;
        let Kind::Refused { rule, attack, lines, .. } = record(line).unwrap().kind else {
            panic!("not a refusal");
        };
        assert_eq!((rule.as_str(), attack.as_str(), lines), ("bounce", "1", 5));
    }

    #[test]
    fn ipv6_endpoints_parse_in_their_bracketed_form() {
        let line = r#"{"msg":"transfer","level":"INFO","ts":"2026-11-27T15:26:36.471086226Z","server":"[2001:db8:2::10]:21","client":"[2001:db8:1::10]:38870","session":1,"result":"ok","reply":"226","server_data_local":"[2001:db8:1::10]:34187","server_data":"[2001:db8:2::10]:30077","client_data_local":"[2001:db8:2::10]:30077","client_data":"[2001:db8:1::10]:40040","command":"RETR","mode":"passive","data":0}"#;
        let r = record(line).unwrap();
        assert_eq!(r.client.unwrap().to_string(), "[2001:db8:1::10]:38870");
        assert_eq!(r.server.unwrap().to_string(), "[2001:db8:2::10]:21");
        let Kind::Transfer { client_data, server_data_local, .. } = r.kind else {
            panic!("not a transfer: {r:?}");
        };
        assert_eq!(client_data.unwrap().to_string(), "[2001:db8:1::10]:40040");
        assert_eq!(server_data_local.unwrap().to_string(), "[2001:db8:1::10]:34187");
    }

    #[test]
    fn other_lines_are_skipped() {
        assert!(record("not json").is_none());
        assert!(record(r#"{"msg":"listening","ts":"2026-01-02T03:04:05Z"}"#).is_none());
    }
}
