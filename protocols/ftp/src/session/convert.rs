//! Data-mode conversion toward the server (`server-data = "passive"`): a
//! client in active mode (PORT/EPRT) is served by a server in passive mode.
//!
//! Read first: RFC 959 §3.2 (the default data port L-1) and §4.1.2 (PASV),
//! RFC 2428 (EPSV), RFC 1579 (firewall-friendly FTP: why a server's
//! firewall wants no inbound data connections), LIFECYCLE.md "Data-mode
//! conversion".
//!
//! The client's PORT/EPRT passes the gateway's checks as ever (bounce,
//! privileged port, login, EPSV ALL); then instead of listening on the
//! client's address, the gateway sends PASV (for PORT) or EPSV (for EPRT)
//! to the server. Its 227/229 is answered to the client as the `200` its
//! PORT/EPRT expects, and the gateway dials the server's passive port from
//! the client's address. When the transfer command's first reply arrives
//! (the server has accepted the command, as an active server would then
//! connect), the gateway dials the client's PORT address from the server's
//! address and data port (L-1, 20 for 21). Both legs are outbound: no
//! listener anywhere. The server sees the client's address on every
//! connection; the client sees a connection from the server's.

use std::net::SocketAddr;
use std::time::Instant;

use super::control::{Pending, REPLY_CANT_OPEN};
use super::data::{Cut, DataState};
use super::{after, Action, DataId, Session, Side};
use crate::addr::{canonical_ip, ExtAddr, HostPort};
use crate::audit::{DataLeg, DataMode, TransferFailure};
use crate::error::Violation;
use crate::policy::PassiveAddressPolicy;
use crate::reply::{Code, Reply};

const REPLY_PORT_OK: &str = "200 PORT command successful.\r\n";
const REPLY_EPRT_OK: &str = "200 EPRT command successful.\r\n";
const REPLY_PASSIVE_REFUSED: &str = "425 ftpgate: passive reply refused by gateway policy.\r\n";

/// What a converted channel knows beyond a plain one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Conversion {
    /// The client's PORT/EPRT port: where its leg is dialed.
    client_port: u16,
    /// EPRT (answered `200 EPRT`), so EPSV went to the server.
    extended: bool,
    server_up: bool,
    client_up: bool,
}

impl Session {
    /// A checked PORT/EPRT under `server-data = "passive"`: ask the server
    /// for a passive port instead of listening on the client's address.
    /// `false`: the data-channel cap is reached (the caller refuses).
    pub(super) fn convert_to_passive(&mut self, now: Instant, port: u16, extended: bool) -> bool {
        let (client, server) = (self.ends.client.ip(), self.ends.server.ip());
        let Some(data) = self.new_data(now, DataMode::Active, SocketAddr::new(client, port), server, port)
        else {
            return false;
        };
        if let Some(ch) = self.data.get_mut(&data) {
            ch.state =
                DataState::ExpectPassiveReply { expires_at: after(now, self.config.data_accept_timeout) };
            ch.conversion =
                Some(Conversion { client_port: port, extended, server_up: false, client_up: false });
        }
        let line: &[u8] = if extended { b"EPSV" } else { b"PASV" };
        self.forward(line, Pending::PassiveFor { data });
        true
    }

    /// The server's reply to the gateway's PASV/EPSV: a usable 227/229
    /// dials the server's leg and tells the client `200`; anything else
    /// ends the channel and tells the client why.
    pub(super) fn converted_passive_reply(&mut self, now: Instant, data: DataId, reply: Reply) {
        let server_ip = self.ends.server.ip();
        let announced = match reply.code {
            Code::ENTERING_PASSIVE => reply
                .texts()
                .find_map(HostPort::parse_227)
                .map(|hp| SocketAddr::new(std::net::IpAddr::V4(hp.ip), hp.port)),
            Code::ENTERING_EXT_PASSIVE => {
                reply.texts().find_map(ExtAddr::parse_229).map(|port| SocketAddr::new(server_ip, port))
            }
            _ => None,
        };
        let waiting =
            self.data.get(&data).is_some_and(|ch| matches!(ch.state, DataState::ExpectPassiveReply { .. }));
        let Some(announced) = announced.filter(|_| waiting) else {
            // The server refused PASV (its error is the client's answer),
            // or the channel was replaced meanwhile.
            if reply.code.is_success() || reply.code.is_preliminary() {
                self.send_client_now(REPLY_CANT_OPEN);
            } else {
                self.send_reply(&reply);
            }
            let why = TransferFailure::ServerReply { code: reply.code.0 };
            return self.cut_data(now, data, Cut::Failed(why));
        };
        let same_ip = canonical_ip(announced.ip()) == canonical_ip(server_ip);
        let refused = if !same_ip && self.config.passive_address_mismatch == PassiveAddressPolicy::Refuse {
            Some(Violation::PassiveAddressMismatch)
        } else if announced.port() < 1024 && !self.config.allow_privileged_data_ports {
            Some(Violation::PrivilegedPort { side: Side::Server })
        } else {
            None
        };
        if let Some(v) = refused {
            self.refuse(v, format!("{}", reply.code.0).as_bytes());
            self.send_client_now(REPLY_PASSIVE_REFUSED);
            let why = TransferFailure::ServerReply { code: reply.code.0 };
            return self.cut_data(now, data, Cut::Failed(why));
        }
        let Some(ch) = self.data.get_mut(&data) else { return };
        let Some(conv) = ch.conversion else { return };
        // Always the control connection's server address (ATTACKS.md 7):
        // a hostile 227 cannot point the gateway at a third host.
        let remote = SocketAddr::new(server_ip, announced.port());
        ch.remote_port = announced.port();
        ch.connect_to = Some(remote);
        ch.state = DataState::ExpectTransfer { expires_at: after(now, self.config.data_accept_timeout) };
        let local = SocketAddr::new(self.ends.client.ip(), 0);
        self.actions.push_back(Action::Dial { data, leg: Side::Server, local, remote });
        self.send_client_now(if conv.extended { REPLY_EPRT_OK } else { REPLY_PORT_OK });
    }

    /// The transfer using `data` has started at the server (its first
    /// reply, or a 2xx with none before): dial the client's leg, from the
    /// server's address and its default data port (L-1), as an active
    /// server would.
    pub(super) fn dial_client_leg(&mut self, now: Instant, data: DataId) {
        let Some(ch) = self.data.get_mut(&data) else { return };
        let (Some(conv), DataState::ExpectTransfer { .. }) = (ch.conversion, ch.state) else { return };
        ch.state = DataState::ExpectConnect { expires_at: after(now, self.config.data_connect_timeout) };
        let local = SocketAddr::new(self.ends.server.ip(), self.ends.server.port().saturating_sub(1));
        let remote = SocketAddr::new(self.ends.client.ip(), conv.client_port);
        self.actions.push_back(Action::Dial { data, leg: Side::Client, local, remote });
    }

    /// The front transfer command got its first reply and is bound: if its
    /// channel is converted, the client's leg is due.
    pub(super) fn front_transfer_started(&mut self, now: Instant) {
        if let Some(Pending::Transfer { binding: super::control::Binding::Bound(data), .. }) =
            self.pending.front()
        {
            let data = *data;
            self.dial_client_leg(now, data);
        }
    }

    /// One leg of a converted channel is up; with both, the relay starts.
    pub(super) fn on_dialed(&mut self, now: Instant, data: DataId, leg: Side, local: SocketAddr) {
        let (client_ip, server_ip) = (self.ends.client.ip(), self.ends.server.ip());
        let Some(ch) = self.data.get_mut(&data).filter(|ch| !ch.is_closed()) else { return };
        let Some(mut conv) = ch.conversion else { return };
        // As the audit names legs by mode (active: the accepted leg is the
        // server's), the server's dialed leg goes where an accepted one would.
        match leg {
            // A leg counts only once its Dial was asked for.
            Side::Server if !conv.server_up && ch.connect_to.is_some() => {
                conv.server_up = true;
                ch.accepted_leg = Some(DataLeg { peer: SocketAddr::new(server_ip, ch.remote_port), local });
            }
            Side::Client if !conv.client_up && matches!(ch.state, DataState::ExpectConnect { .. }) => {
                conv.client_up = true;
                ch.outbound_leg = Some(DataLeg { peer: SocketAddr::new(client_ip, conv.client_port), local });
            }
            _ => return,
        }
        ch.conversion = Some(conv);
        if conv.server_up && conv.client_up && matches!(ch.state, DataState::ExpectConnect { .. }) {
            ch.state = DataState::Relaying { idle_at: after(now, self.config.data_idle_timeout) };
            self.actions.push_back(Action::Relay { data });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Instant;

    use super::super::{Action, ControlEnds, DataId, Input, Session, Side};
    use crate::audit::{AuditEvent, DataLeg, DataMode, TransferResult};
    use crate::policy::Config;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Logged in as anna under `server-data = "passive"`.
    fn converted() -> Session {
        let policy = toml::from_str("[[rule]]\naction = \"allow\"\nserver-data = \"passive\"\n").unwrap();
        let config = Config { policy: Arc::new(policy), ..Config::default() };
        let ends = ControlEnds { client: sa("192.0.2.10:40000"), server: sa("198.51.100.10:21") };
        let mut s = Session::new(Arc::new(config), ends, Instant::now());
        step(&mut s, Input::Received { from: Side::Server, data: b"220 ready\r\n" });
        step(&mut s, Input::Received { from: Side::Client, data: b"USER anna\r\n" });
        step(&mut s, Input::Received { from: Side::Server, data: b"230 ok\r\n" });
        take(&mut s, Side::Client);
        take(&mut s, Side::Server);
        s
    }

    fn step(s: &mut Session, input: Input<'_>) -> Vec<Action> {
        s.handle_input(Instant::now(), input);
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    fn take(s: &mut Session, side: Side) -> String {
        let out = String::from_utf8_lossy(s.pending(side)).into_owned();
        s.consume(side, out.len());
        out
    }

    fn work(actions: &[Action]) -> Vec<&Action> {
        actions.iter().filter(|a| !matches!(a, Action::Audit(_))).collect()
    }

    #[test]
    fn converted_port_retr_both_legs_dialed_client_sees_200_and_226() {
        let mut s = converted();
        let d = DataId(0);
        let a = step(
            &mut s,
            Input::Received { from: Side::Client, data: b"PORT 192,0,2,10,156,64\r\nRETR f\r\n" },
        );
        assert!(work(&a).is_empty(), "no listener anywhere: {a:?}");
        assert_eq!(take(&mut s, Side::Server), "PASV\r\nRETR f\r\n");
        let a = step(
            &mut s,
            Input::Received {
                from: Side::Server,
                data: b"227 Entering Passive Mode (198,51,100,10,117,48).\r\n",
            },
        );
        assert_eq!(
            work(&a),
            [&Action::Dial {
                data: d,
                leg: Side::Server,
                local: sa("192.0.2.10:0"),
                remote: sa("198.51.100.10:30000")
            }]
        );
        assert_eq!(take(&mut s, Side::Client), "200 PORT command successful.\r\n");
        step(&mut s, Input::Dialed { data: d, leg: Side::Server, local: sa("192.0.2.10:45000") });
        // The server took RETR: now the client's leg, from the server's port 20.
        let a = step(&mut s, Input::Received { from: Side::Server, data: b"150 here\r\n226 done\r\n" });
        assert_eq!(
            work(&a),
            [&Action::Dial {
                data: d,
                leg: Side::Client,
                local: sa("198.51.100.10:20"),
                remote: sa("192.0.2.10:40000")
            }]
        );
        assert_eq!(take(&mut s, Side::Client), "150 here\r\n", "226 held until the relay ends");
        let a = step(&mut s, Input::Dialed { data: d, leg: Side::Client, local: sa("198.51.100.10:20") });
        assert_eq!(work(&a), [&Action::Relay { data: d }]);
        let a = step(&mut s, Input::Relayed { data: d, to_client: 10, to_server: 0 });
        assert_eq!(take(&mut s, Side::Client), "226 done\r\n");
        let rec = a.iter().find_map(|a| match a {
            Action::Audit(AuditEvent::Transfer { mode, legs, result, .. }) => Some((*mode, **legs, *result)),
            _ => None,
        });
        let (mode, legs, result) = rec.expect("transfer record");
        assert_eq!((mode, result), (DataMode::Active, TransferResult::Ok));
        assert_eq!(
            legs.client,
            Some(DataLeg { peer: sa("192.0.2.10:40000"), local: sa("198.51.100.10:20") })
        );
        assert_eq!(
            legs.server,
            Some(DataLeg { peer: sa("198.51.100.10:30000"), local: sa("192.0.2.10:45000") })
        );
        assert!(a.contains(&Action::CloseData { data: d }));
    }

    #[test]
    fn converted_eprt_sends_epsv_and_answers_200_eprt() {
        let mut s = converted();
        step(&mut s, Input::Received { from: Side::Client, data: b"EPRT |1|192.0.2.10|40001|\r\n" });
        assert_eq!(take(&mut s, Side::Server), "EPSV\r\n");
        let a = step(
            &mut s,
            Input::Received {
                from: Side::Server,
                data: b"229 Entering Extended Passive Mode (|||30001|)\r\n",
            },
        );
        assert_eq!(
            work(&a),
            [&Action::Dial {
                data: DataId(0),
                leg: Side::Server,
                local: sa("192.0.2.10:0"),
                remote: sa("198.51.100.10:30001")
            }]
        );
        assert_eq!(take(&mut s, Side::Client), "200 EPRT command successful.\r\n");
    }

    #[test]
    fn converted_pasv_refused_by_server_client_gets_its_error_nothing_dialed() {
        let mut s = converted();
        step(&mut s, Input::Received { from: Side::Client, data: b"PORT 192,0,2,10,156,64\r\n" });
        let a = step(&mut s, Input::Received { from: Side::Server, data: b"500 no passive here\r\n" });
        // Never dialed, so never opened in the shell: nothing to close.
        assert_eq!(work(&a), [] as [&Action; 0]);
        assert_eq!(take(&mut s, Side::Client), "500 no passive here\r\n");
    }

    #[test]
    fn converted_privileged_passive_port_refused_425() {
        let mut s = converted();
        step(&mut s, Input::Received { from: Side::Client, data: b"PORT 192,0,2,10,156,64\r\n" });
        let a = step(
            &mut s,
            Input::Received {
                from: Side::Server,
                data: b"227 Entering Passive Mode (198,51,100,10,0,22).\r\n",
            },
        );
        assert_eq!(work(&a), [] as [&Action; 0]);
        assert!(take(&mut s, Side::Client).starts_with("425 "));
    }

    #[test]
    fn converted_transfer_refused_server_leg_closed_client_never_dialed() {
        let mut s = converted();
        step(
            &mut s,
            Input::Received { from: Side::Client, data: b"PORT 192,0,2,10,156,64\r\nRETR nope\r\n" },
        );
        step(
            &mut s,
            Input::Received {
                from: Side::Server,
                data: b"227 Entering Passive Mode (198,51,100,10,117,48).\r\n",
            },
        );
        step(&mut s, Input::Dialed { data: DataId(0), leg: Side::Server, local: sa("192.0.2.10:45000") });
        let a = step(&mut s, Input::Received { from: Side::Server, data: b"550 no such file\r\n" });
        assert_eq!(work(&a), [&Action::CloseData { data: DataId(0) }]);
        assert_eq!(take(&mut s, Side::Client), "200 PORT command successful.\r\n550 no such file\r\n");
    }

    #[test]
    fn converted_bounce_still_refused_before_anything_is_sent() {
        let mut s = converted();
        step(&mut s, Input::Received { from: Side::Client, data: b"PORT 203,0,113,5,156,64\r\n" });
        assert_eq!(take(&mut s, Side::Server), "");
        assert!(take(&mut s, Side::Client).starts_with("501 "));
    }
}
