//! Data-mode conversion toward the server: `server-data = "passive"` serves
//! a client in active mode (PORT/EPRT) by a server in passive mode, and
//! `server-data = "active"` a client in passive mode (PASV/EPSV) by a
//! server in active mode.
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
//!
//! To active: the client's PASV/EPSV passes the gateway's checks as ever
//! (login, EPSV ALL); the gateway listens on the client's address (a port
//! of the kernel's choice; the server's connection reaches it through the
//! socket-match divert, as in active mode) and sends the server PORT (for
//! PASV) or EPRT (for EPSV) naming that listener. On the server's 200 it
//! listens on the server's address and answers the client `227`/`229`
//! naming that one. The client connects to the server's address, the
//! server to the client's; the gateway accepts each (only from that peer:
//! a third party is refused and the wait goes on, ATTACKS.md 5) and relays
//! between them. A refusal of the PORT/EPRT gives the client `425`: it
//! never sees a reply to a command it did not send. EPSV ALL is answered
//! by the gateway and enforced there, as the server must still take
//! PORT/EPRT.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::control::{Pending, PortHold, ServerHold, REPLY_CANT_OPEN, REPLY_TOO_MANY};
use super::data::{Cut, DataState};
use super::{after, Action, DataId, Session, Side};
use crate::addr::{canonical_ip, ExtAddr, HostPort};
use crate::audit::{AuditEvent, DataLeg, DataMode, TransferFailure};
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

/// What a channel converted to active toward the server knows beyond a
/// plain one: its two listeners, and which legs are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct ToActive {
    /// The client sent EPSV: it gets `229`, the server EPRT.
    extended: bool,
    /// Where the server connects (an address of the client's), once up.
    server_listener: Option<SocketAddr>,
    /// Where the client connects (an address of the server's), once up.
    client_listener: Option<SocketAddr>,
    server_up: bool,
    client_up: bool,
}

impl ToActive {
    /// A leg is kept: a cut resets it.
    pub(super) fn has_leg(&self) -> bool {
        self.server_up || self.client_up
    }
}

impl Session {
    /// A checked PASV/EPSV under `server-data = "active"`: listen for the
    /// server's connection on the client's address first; its `Listening`
    /// sends the server PORT/EPRT (the hold keeps later client lines back).
    pub(super) fn convert_to_active(&mut self, now: Instant, line: &[u8], extended: bool) {
        let (client, server) = (self.ends.client.ip(), self.ends.server.ip());
        if !extended && !matches!(canonical_ip(server), IpAddr::V4(_)) {
            // No 227 can name an IPv6 address: such a client uses EPSV.
            return self.reply_local(REPLY_CANT_OPEN);
        }
        let local = SocketAddr::new(client, 0);
        let Some(data) = self.new_data(now, DataMode::Passive, local, server, 0) else {
            return self.refuse_local(Violation::TooManyDataChannels, line, REPLY_TOO_MANY);
        };
        if let Some(ch) = self.data.get_mut(&data) {
            ch.to_active = Some(ToActive { extended, ..ToActive::default() });
        }
        self.listen_for(data, local, server, Side::Server, DataMode::Active);
        let hold = PortHold { data, line: Vec::new(), ip: client, port: 0, extended, converted: true };
        self.port_hold = Some(Box::new(hold));
    }

    fn listen_for(
        &mut self,
        data: DataId,
        local: SocketAddr,
        accept_from: IpAddr,
        peer: Side,
        mode: DataMode,
    ) {
        self.actions.push_back(Action::Listen { data, local, accept_from, peer });
        self.announce(data);
        self.actions.push_back(Action::Audit(AuditEvent::DataOpened { data, mode, local, accept_from }));
    }

    /// One of a converted channel's listeners is up: the server's first
    /// (send PORT/EPRT naming it), then the client's (answer 227/229).
    pub(super) fn converted_listening(&mut self, now: Instant, data: DataId, local: SocketAddr) {
        let deadline = after(now, self.config.data_accept_timeout);
        let Some(ch) = self.data.get_mut(&data) else { return };
        let Some(mut conv) = ch.to_active else { return };
        if conv.server_listener.is_none() {
            conv.server_listener = Some(local);
            ch.to_active = Some(conv);
            ch.state = DataState::ExpectPortReply { expires_at: deadline };
            return self.listener_up(data, local);
        }
        conv.client_listener = Some(local);
        ch.to_active = Some(conv);
        ch.state = DataState::ExpectAccept { expires_at: deadline };
        match self.server_hold.take() {
            Some(ServerHold::ExpectConvertedListening { data: held, extended }) if held == data => {
                match self.passive_rewrite(local, extended) {
                    Some(reply) => self.send_reply(&reply),
                    None => {
                        self.send_client_now(REPLY_CANT_OPEN);
                        let why = TransferFailure::SetupFailed {
                            step: super::DataStep::Listen,
                            error: std::io::ErrorKind::AddrNotAvailable,
                        };
                        self.cut_data(now, data, Cut::Failed(why));
                    }
                }
            }
            other => self.server_hold = other,
        }
    }

    /// The listener for the server's connection is up: the gateway's
    /// PORT (for a PASV) or EPRT (for an EPSV, or on IPv6) names it.
    pub(super) fn send_converted_port(&mut self, data: DataId, local: SocketAddr) {
        let extended = self.data.get(&data).and_then(|ch| ch.to_active).is_some_and(|c| c.extended);
        let mut line = Vec::new();
        match (extended, canonical_ip(local.ip())) {
            (false, IpAddr::V4(ip)) => {
                line.extend_from_slice(b"PORT ");
                HostPort { ip, port: local.port() }.write(&mut line);
            }
            (_, ip) => {
                line.extend_from_slice(b"EPRT ");
                ExtAddr { ip: Some(ip), port: local.port() }.write(&mut line);
            }
        }
        self.forward(&line, Pending::ActiveFor { data });
    }

    /// The server's reply to the gateway's PORT/EPRT: a 2xx opens the
    /// listener for the client's connection, held behind which the
    /// client's 227/229 waits; anything else ends the channel with `425`
    /// (the server's words answer a command the client never sent).
    pub(super) fn converted_port_reply(&mut self, now: Instant, data: DataId, reply: Reply) {
        let waiting =
            self.data.get(&data).is_some_and(|ch| matches!(ch.state, DataState::ExpectPortReply { .. }));
        let conv = self.data.get(&data).and_then(|ch| ch.to_active);
        let (Some(conv), true, true) = (conv, waiting, reply.code.is_success()) else {
            self.send_client_now(REPLY_CANT_OPEN);
            if let Some(conv) = conv.filter(|_| waiting) {
                let sent = match conv.server_listener.map(|l| canonical_ip(l.ip())) {
                    Some(IpAddr::V4(_)) if !conv.extended => "PORT",
                    _ => "EPRT",
                };
                self.conversion_refused(data, sent, reply.code.0, 425);
            }
            let why = TransferFailure::ServerReply { code: reply.code.0 };
            return self.cut_data(now, data, Cut::Failed(why));
        };
        let (client, server) = (self.ends.client.ip(), self.ends.server.ip());
        if let Some(ch) = self.data.get_mut(&data) {
            ch.state = DataState::ExpectListening { expires_at: after(now, self.config.data_accept_timeout) };
        }
        self.listen_for(data, SocketAddr::new(server, 0), client, Side::Client, DataMode::Passive);
        self.server_hold = Some(ServerHold::ExpectConvertedListening { data, extended: conv.extended });
    }

    /// A connection on one of a converted channel's listeners: kept if it
    /// comes from the peer that listener waits for, else refused (port
    /// theft, ATTACKS.md 5) while the wait goes on. With both legs kept the
    /// relay starts.
    pub(super) fn converted_accepted(&mut self, now: Instant, data: DataId, peer: SocketAddr) {
        let (client_ip, server_ip) =
            (canonical_ip(self.ends.client.ip()), canonical_ip(self.ends.server.ip()));
        let idle_at = after(now, self.config.data_idle_timeout);
        let Some(ch) = self.data.get_mut(&data).filter(|ch| !ch.is_closed()) else { return };
        let Some(mut conv) = ch.to_active else { return };
        let from = canonical_ip(peer.ip());
        let leg = match (conv.server_listener, conv.client_listener) {
            (Some(local), _) if from == server_ip && !conv.server_up => {
                conv.server_up = true;
                ch.outbound_leg = Some(DataLeg { peer, local });
                Side::Server
            }
            (_, Some(local)) if from == client_ip && !conv.client_up => {
                conv.client_up = true;
                ch.accepted_leg = Some(DataLeg { peer, local });
                Side::Client
            }
            _ => {
                let expected = if conv.client_listener.is_some() && !conv.client_up {
                    self.ends.client.ip()
                } else {
                    self.ends.server.ip()
                };
                self.actions.push_back(Action::Refuse { data });
                self.actions.push_back(Action::Audit(AuditEvent::DataPeerRefused { data, peer, expected }));
                return;
            }
        };
        ch.to_active = Some(conv);
        self.actions.push_back(Action::Keep { data, leg });
        if conv.server_up && conv.client_up {
            ch.state = DataState::Relaying { idle_at };
            self.actions.push_back(Action::Relay { data });
        }
    }

    /// The server refused the gateway's PASV/EPSV or PORT/EPRT: one record,
    /// since the client's own command never reached the server.
    fn conversion_refused(&mut self, data: DataId, sent: &'static str, server_reply: u16, reply: u16) {
        self.actions.push_back(Action::Audit(AuditEvent::ConversionRefused {
            data,
            sent,
            server_reply,
            reply,
        }));
    }

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
                .map(|hp| SocketAddr::new(IpAddr::V4(hp.ip), hp.port)),
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
            let client_code = if reply.code.is_success() || reply.code.is_preliminary() {
                self.send_client_now(REPLY_CANT_OPEN);
                425
            } else {
                self.send_reply(&reply);
                reply.code.0
            };
            if waiting {
                let extended = self.data.get(&data).and_then(|ch| ch.conversion).is_some_and(|c| c.extended);
                let sent = if extended { "EPSV" } else { "PASV" };
                self.conversion_refused(data, sent, reply.code.0, client_code);
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
        self.announce(data);
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

    /// The transfer record among `actions`: ok, in `mode`, with the
    /// client's and the server's data legs as (peer, local).
    fn assert_ok_record(actions: &[Action], mode: DataMode, client: (&str, &str), server: (&str, &str)) {
        let rec = actions.iter().find_map(|a| match a {
            Action::Audit(AuditEvent::Transfer { mode, legs, result, .. }) => Some((*mode, **legs, *result)),
            _ => None,
        });
        let (got_mode, legs, result) = rec.expect("transfer record");
        assert_eq!((got_mode, result), (mode, TransferResult::Ok));
        assert_eq!(legs.client, Some(DataLeg { peer: sa(client.0), local: sa(client.1) }));
        assert_eq!(legs.server, Some(DataLeg { peer: sa(server.0), local: sa(server.1) }));
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
        assert_ok_record(
            &a,
            DataMode::Active,
            ("192.0.2.10:40000", "198.51.100.10:20"),
            ("198.51.100.10:30000", "192.0.2.10:45000"),
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
        assert!(a.contains(&Action::Audit(AuditEvent::ConversionRefused {
            data: DataId(0),
            sent: "PASV",
            server_reply: 500,
            reply: 500,
        })));
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

    /// Logged in as anna under `server-data = "active"`, with these ends.
    fn to_active_with(client: &str, server: &str) -> Session {
        let policy = toml::from_str("[[rule]]\naction = \"allow\"\nserver-data = \"active\"\n").unwrap();
        let config = Config { policy: Arc::new(policy), ..Config::default() };
        let ends = ControlEnds { client: sa(client), server: sa(server) };
        let mut s = Session::new(Arc::new(config), ends, Instant::now());
        step(&mut s, Input::Received { from: Side::Server, data: b"220 ready\r\n" });
        step(&mut s, Input::Received { from: Side::Client, data: b"USER anna\r\n" });
        step(&mut s, Input::Received { from: Side::Server, data: b"230 ok\r\n" });
        take(&mut s, Side::Client);
        take(&mut s, Side::Server);
        s
    }

    fn to_active() -> Session {
        to_active_with("192.0.2.10:40000", "198.51.100.10:21")
    }

    fn listen(local: &str, accept_from: &str, peer: Side) -> Action {
        Action::Listen { data: DataId(0), local: sa(local), accept_from: accept_from.parse().unwrap(), peer }
    }

    /// PASV (or `cmd`) up to the client's 227/229: both listeners up.
    fn to_active_announced(s: &mut Session, cmd: &[u8]) -> String {
        step(s, Input::Received { from: Side::Client, data: cmd });
        step(s, Input::Listening { data: DataId(0), local: sa("192.0.2.10:40100") });
        step(s, Input::Received { from: Side::Server, data: b"200 PORT command successful.\r\n" });
        step(s, Input::Listening { data: DataId(0), local: sa("198.51.100.10:30000") });
        take(s, Side::Client)
    }

    #[test]
    fn to_active_pasv_retr_port_to_server_227_to_client_both_legs_accepted() {
        let mut s = to_active();
        let d = DataId(0);
        let a = step(&mut s, Input::Received { from: Side::Client, data: b"PASV\r\nRETR f\r\n" });
        assert_eq!(work(&a), [&listen("192.0.2.10:0", "198.51.100.10", Side::Server)]);
        assert_eq!(take(&mut s, Side::Server), "", "nothing before the listener is up");
        step(&mut s, Input::Listening { data: d, local: sa("192.0.2.10:40100") });
        assert_eq!(take(&mut s, Side::Server), "PORT 192,0,2,10,156,164\r\nRETR f\r\n");
        let a =
            step(&mut s, Input::Received { from: Side::Server, data: b"200 PORT command successful.\r\n" });
        assert_eq!(work(&a), [&listen("198.51.100.10:0", "192.0.2.10", Side::Client)]);
        assert_eq!(take(&mut s, Side::Client), "", "never a 200 to a PASV");
        step(&mut s, Input::Listening { data: d, local: sa("198.51.100.10:30000") });
        assert_eq!(take(&mut s, Side::Client), "227 Entering Passive Mode (198,51,100,10,117,48).\r\n");
        let a = step(&mut s, Input::Accepted { data: d, peer: sa("198.51.100.10:20") });
        assert_eq!(work(&a), [&Action::Keep { data: d, leg: Side::Server }]);
        step(&mut s, Input::Received { from: Side::Server, data: b"150 here\r\n" });
        assert_eq!(take(&mut s, Side::Client), "150 here\r\n");
        let a = step(&mut s, Input::Accepted { data: d, peer: sa("192.0.2.10:50000") });
        assert_eq!(work(&a), [&Action::Keep { data: d, leg: Side::Client }, &Action::Relay { data: d }]);
        step(&mut s, Input::Received { from: Side::Server, data: b"226 done\r\n" });
        assert_eq!(take(&mut s, Side::Client), "", "226 held until the relay ends");
        let a = step(&mut s, Input::Relayed { data: d, to_client: 10, to_server: 0 });
        assert_eq!(take(&mut s, Side::Client), "226 done\r\n");
        assert_ok_record(
            &a,
            DataMode::Passive,
            ("192.0.2.10:50000", "198.51.100.10:30000"),
            ("198.51.100.10:20", "192.0.2.10:40100"),
        );
        assert!(a.contains(&Action::CloseData { data: d }));
    }

    #[test]
    fn to_active_epsv_sends_eprt_answers_229() {
        let mut s = to_active();
        step(&mut s, Input::Received { from: Side::Client, data: b"EPSV\r\n" });
        step(&mut s, Input::Listening { data: DataId(0), local: sa("192.0.2.10:40100") });
        assert_eq!(take(&mut s, Side::Server), "EPRT |1|192.0.2.10|40100|\r\n");
        step(&mut s, Input::Received { from: Side::Server, data: b"200 EPRT command successful.\r\n" });
        step(&mut s, Input::Listening { data: DataId(0), local: sa("198.51.100.10:30000") });
        assert_eq!(take(&mut s, Side::Client), "229 Entering Extended Passive Mode (|||30000|)\r\n");
    }

    #[test]
    fn to_active_ipv6_epsv_sends_eprt_2_pasv_gets_425() {
        let mut s = to_active_with("[2001:db8:1::10]:40000", "[2001:db8:2::10]:21");
        let a = step(&mut s, Input::Received { from: Side::Client, data: b"PASV\r\n" });
        assert_eq!(work(&a), [] as [&Action; 0]);
        assert_eq!(take(&mut s, Side::Client), "425 Can't open data connection.\r\n");
        let a = step(&mut s, Input::Received { from: Side::Client, data: b"EPSV\r\n" });
        assert_eq!(work(&a), [&listen("[2001:db8:1::10]:0", "2001:db8:2::10", Side::Server)]);
        step(&mut s, Input::Listening { data: DataId(0), local: sa("[2001:db8:1::10]:40100") });
        assert_eq!(take(&mut s, Side::Server), "EPRT |2|2001:db8:1::10|40100|\r\n");
        let a = step(&mut s, Input::Received { from: Side::Server, data: b"200 ok\r\n" });
        assert_eq!(work(&a), [&listen("[2001:db8:2::10]:0", "2001:db8:1::10", Side::Client)]);
        step(&mut s, Input::Listening { data: DataId(0), local: sa("[2001:db8:2::10]:30000") });
        assert_eq!(take(&mut s, Side::Client), "229 Entering Extended Passive Mode (|||30000|)\r\n");
    }

    #[test]
    fn to_active_port_refused_by_server_client_gets_425_channel_closed() {
        let mut s = to_active();
        step(&mut s, Input::Received { from: Side::Client, data: b"PASV\r\n" });
        step(&mut s, Input::Listening { data: DataId(0), local: sa("192.0.2.10:40100") });
        let a = step(&mut s, Input::Received { from: Side::Server, data: b"500 Illegal PORT command.\r\n" });
        assert_eq!(work(&a), [&Action::CloseData { data: DataId(0) }]);
        assert_eq!(take(&mut s, Side::Client), "425 Can't open data connection.\r\n");
        assert!(a.contains(&Action::Audit(AuditEvent::ConversionRefused {
            data: DataId(0),
            sent: "PORT",
            server_reply: 500,
            reply: 425,
        })));
    }

    #[test]
    fn attack_05_to_active_thief_refused_wait_goes_on() {
        let mut s = to_active();
        assert!(to_active_announced(&mut s, b"PASV\r\n").starts_with("227 "));
        let d = DataId(0);
        for thief in ["203.0.113.5:4000", "192.0.2.99:4000"] {
            let a = step(&mut s, Input::Accepted { data: d, peer: sa(thief) });
            assert_eq!(work(&a), [&Action::Refuse { data: d }], "{thief}");
            assert!(a.iter().any(|a| matches!(a, Action::Audit(AuditEvent::DataPeerRefused { .. }))));
        }
        // A second connection from the server is a thief too.
        step(&mut s, Input::Accepted { data: d, peer: sa("198.51.100.10:20") });
        let a = step(&mut s, Input::Accepted { data: d, peer: sa("198.51.100.10:21") });
        assert_eq!(work(&a), [&Action::Refuse { data: d }]);
        let a = step(&mut s, Input::Accepted { data: d, peer: sa("192.0.2.10:50000") });
        assert_eq!(work(&a), [&Action::Keep { data: d, leg: Side::Client }, &Action::Relay { data: d }]);
    }

    #[test]
    fn to_active_epsv_all_answered_by_the_gateway_and_enforced_there() {
        let mut s = to_active();
        step(
            &mut s,
            Input::Received { from: Side::Client, data: b"EPSV ALL\r\nPASV\r\nPORT 192,0,2,10,156,64\r\n" },
        );
        assert_eq!(take(&mut s, Side::Server), "", "the server must still take EPRT");
        let out = take(&mut s, Side::Client);
        assert!(out.starts_with("200 EPSV ALL command successful.\r\n503 "), "{out}");
        assert_eq!(out.matches("503 ").count(), 2, "{out}");
        let a = step(&mut s, Input::Received { from: Side::Client, data: b"EPSV\r\n" });
        assert_eq!(work(&a), [&listen("192.0.2.10:0", "198.51.100.10", Side::Server)]);
    }

    #[test]
    fn to_active_server_connects_before_its_200_is_read() {
        let mut s = to_active();
        let d = DataId(0);
        step(&mut s, Input::Received { from: Side::Client, data: b"PASV\r\nRETR f\r\n" });
        step(&mut s, Input::Listening { data: d, local: sa("192.0.2.10:40100") });
        let a = step(&mut s, Input::Accepted { data: d, peer: sa("198.51.100.10:20") });
        assert_eq!(work(&a), [&Action::Keep { data: d, leg: Side::Server }]);
        // 200, 150 and 226 in one read; the client's leg is still to come.
        let a = step(
            &mut s,
            Input::Received { from: Side::Server, data: b"200 PORT ok\r\n150 here\r\n226 done\r\n" },
        );
        assert_eq!(work(&a), [&listen("198.51.100.10:0", "192.0.2.10", Side::Client)]);
        assert_eq!(take(&mut s, Side::Client), "");
        step(&mut s, Input::Listening { data: d, local: sa("198.51.100.10:30000") });
        assert_eq!(
            take(&mut s, Side::Client),
            "227 Entering Passive Mode (198,51,100,10,117,48).\r\n150 here\r\n",
            "226 held: the client has not had its data"
        );
        step(&mut s, Input::Accepted { data: d, peer: sa("192.0.2.10:50000") });
        step(&mut s, Input::Relayed { data: d, to_client: 10, to_server: 0 });
        assert_eq!(take(&mut s, Side::Client), "226 done\r\n");
    }

    #[test]
    fn to_active_client_never_connects_226_becomes_426_server_leg_reset() {
        let mut s = to_active();
        let d = DataId(0);
        to_active_announced(&mut s, b"PASV\r\nRETR f\r\n");
        step(&mut s, Input::Accepted { data: d, peer: sa("198.51.100.10:20") });
        step(&mut s, Input::Received { from: Side::Server, data: b"150 here\r\n226 done\r\n" });
        assert_eq!(take(&mut s, Side::Client), "150 here\r\n");
        s.handle_input(Instant::now() + std::time::Duration::from_secs(31), Input::Timeout);
        let a: Vec<Action> = std::iter::from_fn(|| s.poll_action()).collect();
        assert!(a.contains(&Action::ResetData { data: d }), "{a:?}");
        assert_eq!(take(&mut s, Side::Client), "426 Connection closed; transfer aborted.\r\n");
    }

    /// fuzz seed crash-direction-before-announce-regression (minimized):
    /// under `--enforce-data-direction`, a RETR and an ABOR's Telnet Synch
    /// pipelined behind a converted PORT, before the server answered the
    /// gateway's PASV. The daemon has not been asked for that channel, so
    /// no `DataDirection` may name it; one did, and the daemon dropped it.
    #[test]
    fn converted_port_not_yet_dialed_gets_no_direction() {
        let policy = toml::from_str("[[rule]]\naction = \"allow\"\nserver-data = \"passive\"\n").unwrap();
        let config = Config { policy: Arc::new(policy), enforce_data_direction: true, ..Config::default() };
        let ends = ControlEnds { client: sa("192.0.2.10:40000"), server: sa("198.51.100.10:21") };
        let mut s = Session::new(Arc::new(config), ends, Instant::now());
        step(&mut s, Input::Received { from: Side::Server, data: b"220 ready\r\n" });
        step(&mut s, Input::Received { from: Side::Client, data: b"USER anna\r\n" });
        step(&mut s, Input::Received { from: Side::Server, data: b"230 ok\r\n" });
        let mut all =
            step(&mut s, Input::Received { from: Side::Client, data: b"PORT 192,0,2,10,156,64\r\n" });
        all.extend(step(&mut s, Input::Received { from: Side::Client, data: b"RETR f\r\n\xff\xf2ABOR\r\n" }));
        assert!(!all.iter().any(|a| matches!(a, Action::Dial { .. } | Action::Listen { .. })), "{all:?}");
        assert!(
            !all.iter().any(|a| matches!(a, Action::DataDirection { .. })),
            "a direction for a channel the daemon was never asked for: {all:?}"
        );
    }
}
