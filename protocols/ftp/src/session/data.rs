//! Data channels: one per `DataId`, from `Listen` to `CloseData`.
//!
//! Read first: RFC 959 §3.2–3.3 (data connections), RFC 2577 §3 (bounce),
//! ATTACKS.md 5, 6, 19–25, LIFECYCLE.md at the crate root.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::control::{Binding, Pending, ServerHold, TransferCommand, REPLY_CANT_OPEN, REPLY_TRANSFER_CUT};
use super::{after, Action, DataId, DataStep, Session, Side};
use crate::addr::canonical_ip;
use crate::audit::{AbortCause, AuditEvent, DataLeg, DataLegs, DataMode, TransferFailure, TransferResult};
use crate::error::Violation;
use crate::reply::Reply;

/// What a data channel waits for, with the deadline of that wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DataState {
    /// `Listen` asked; waiting for `Listening` (or a bind failure).
    ExpectListening { expires_at: Instant },
    /// Listening; waiting for the expected peer.
    ExpectAccept { expires_at: Instant },
    /// Converted to passive toward the server (`convert.rs`): waiting for
    /// the server's 227/229 to the gateway's PASV/EPSV.
    ExpectPassiveReply { expires_at: Instant },
    /// Converted to active toward the server (`convert.rs`): the listener
    /// for the server's connection is up, the gateway's PORT/EPRT is out;
    /// waiting for its 200.
    ExpectPortReply { expires_at: Instant },
    /// Converted: the server's leg is dialed; waiting for the transfer
    /// command's first reply to dial the client's.
    ExpectTransfer { expires_at: Instant },
    /// Accepted (converted: the client's leg dialed); waiting for the
    /// foreign-source connect.
    ExpectConnect { expires_at: Instant },
    /// Both legs up; waiting for `Relayed`. `idle_at`: last byte moved plus
    /// `data_idle_timeout`.
    Relaying { idle_at: Instant },
    /// `CloseData` sent.
    Done,
}

/// Why a data channel ended before its relay completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cut {
    Failed(TransferFailure),
    Aborted(AbortCause),
}

impl From<Cut> for TransferResult {
    fn from(cut: Cut) -> Self {
        match cut {
            Cut::Failed(why) => Self::Failed(why),
            Cut::Aborted(cause) => Self::Aborted(cause),
        }
    }
}

/// One data channel.
#[derive(Debug)]
pub(super) struct DataChan {
    pub(super) id: DataId,
    pub(super) mode: DataMode,
    pub(super) state: DataState,
    pub(super) opened_at: Instant,
    pub(super) ended_at: Option<Instant>,
    /// Where the listener was asked for.
    pub(super) listen_local: SocketAddr,
    /// Where it listens (`Listening`): the gateway's end of the leg it
    /// accepts.
    pub(super) listening: Option<SocketAddr>,
    /// The connection the core kept from the listener (`Accepted`).
    pub(super) accepted_leg: Option<DataLeg>,
    /// Where `Connect` went, until `Connected` names the source.
    pub(super) connect_to: Option<SocketAddr>,
    /// The connection the gateway made (`Connected`).
    pub(super) outbound_leg: Option<DataLeg>,
    pub(super) accept_from: IpAddr,
    /// The port the far end announced: passive, the server's data port;
    /// active, the client's.
    pub(super) remote_port: u16,
    /// The port-0 fallback was used.
    pub(super) retried: bool,
    /// Set when the channel ended before its relay completed: the
    /// transfer using it never gets a 2xx through to the client.
    pub(super) cut: Option<Cut>,
    /// `Relayed` arrived: every byte went through and both legs ended clean.
    pub(super) relayed: bool,
    /// The last byte counts the shell reported.
    pub(super) to_client: u64,
    pub(super) to_server: u64,
    /// Set for a channel the gateway connects both legs of (`convert.rs`).
    pub(super) conversion: Option<super::convert::Conversion>,
    /// Set for a channel the gateway accepts both legs of (`convert.rs`).
    pub(super) to_active: Option<super::convert::ToActive>,
    /// The transfer command using this channel, once bound.
    pub(super) command: Option<TransferCommand>,
    /// The server's final reply to that command.
    pub(super) final_code: Option<u16>,
    /// That reply was still held when the session ended: the client never
    /// got it.
    pub(super) final_dropped: bool,
    /// The reply the client got while the data was still moving
    /// (`Config::kernel_data_path`: final replies are not held).
    pub(super) final_sent: Option<u16>,
    /// The daemon was asked for this channel (a `Listen` or a `Dial`):
    /// before that it has no channel to apply a `DataDirection` to. A
    /// PORT converted to PASV (`server-data = "passive"`) waits for the
    /// server's 227 before its first `Dial`.
    pub(super) announced: bool,
}

impl DataChan {
    /// The live deadline, if any (a finished channel has none).
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self.state {
            DataState::ExpectListening { expires_at }
            | DataState::ExpectAccept { expires_at }
            | DataState::ExpectPassiveReply { expires_at }
            | DataState::ExpectPortReply { expires_at }
            | DataState::ExpectTransfer { expires_at }
            | DataState::ExpectConnect { expires_at } => Some(expires_at),
            DataState::Relaying { idle_at } => Some(idle_at),
            DataState::Done => None,
        }
    }

    /// `CloseData` was sent.
    pub(super) fn is_closed(&self) -> bool {
        self.state == DataState::Done
    }

    pub(super) fn is_expecting_listening(&self) -> bool {
        matches!(self.state, DataState::ExpectListening { .. })
    }

    /// Not connected to anyone yet: a new data command may replace it.
    pub(super) fn is_unused(&self) -> bool {
        matches!(
            self.state,
            DataState::ExpectListening { .. }
                | DataState::ExpectAccept { .. }
                | DataState::ExpectPassiveReply { .. }
                | DataState::ExpectPortReply { .. }
                | DataState::ExpectTransfer { .. }
        ) && !self.to_active.is_some_and(|c| c.has_leg())
    }

    /// A live connection exists: a cut resets it. Beside the states of
    /// [`is_connecting_or_relaying`](Self::is_connecting_or_relaying), a
    /// converted channel's server leg dialed before the transfer starts.
    pub(super) fn has_live_leg(&self) -> bool {
        self.is_connecting_or_relaying()
            || matches!(self.state, DataState::ExpectTransfer { .. })
            || self.to_active.is_some_and(|c| c.has_leg())
    }

    /// Active mode, listening for the server's connection, which has not
    /// been accepted yet. (In passive mode the server cannot have had a data
    /// connection before the gateway accepted the client's.)
    pub(super) fn is_awaiting_server(&self) -> bool {
        // Converted to active toward the server: the server connects to the
        // gateway as in active mode, whatever the client asked for.
        (self.mode == DataMode::Active || self.to_active.is_some())
            && matches!(self.state, DataState::ExpectAccept { .. })
    }

    /// At least one leg is a live connection (the accepted one, or both).
    pub(super) fn is_connecting_or_relaying(&self) -> bool {
        matches!(self.state, DataState::ExpectConnect { .. } | DataState::Relaying { .. })
    }

    /// What the client gets for the server's final reply `code`: a cut
    /// transfer never shows a 2xx (ATTACKS.md 24 and 25).
    pub(super) fn client_code(&self, code: u16) -> u16 {
        if self.cut.is_some() && (200..300).contains(&code) {
            426
        } else {
            code
        }
    }

    /// The accepted leg is the listener's peer's.
    fn legs(&self) -> DataLegs {
        let (client, server) = match self.mode {
            DataMode::Passive => (self.accepted_leg, self.outbound_leg),
            DataMode::Active => (self.outbound_leg, self.accepted_leg),
        };
        DataLegs { client, server }
    }

    fn peer_side(&self) -> Side {
        match self.mode {
            DataMode::Passive => Side::Client,
            DataMode::Active => Side::Server,
        }
    }
}

impl Session {
    /// Ask for a listener. Channels that have not started relaying are
    /// closed first (a new data command replaces them); `None` if the cap is
    /// still reached.
    pub(super) fn open_data(
        &mut self,
        now: Instant,
        mode: DataMode,
        local: SocketAddr,
        accept_from: IpAddr,
        remote_port: u16,
    ) -> Option<DataId> {
        let id = self.new_data(now, mode, local, accept_from, remote_port)?;
        let peer = self.data.get(&id).map_or(Side::Client, DataChan::peer_side);
        self.actions.push_back(Action::Listen { data: id, local, accept_from, peer });
        self.announce(id);
        self.actions.push_back(Action::Audit(AuditEvent::DataOpened { data: id, mode, local, accept_from }));
        Some(id)
    }

    /// A new data channel, current from now on, in `ExpectListening`.
    /// Channels that have not started relaying are closed first; `None` if
    /// the cap is still reached.
    pub(super) fn new_data(
        &mut self,
        now: Instant,
        mode: DataMode,
        local: SocketAddr,
        accept_from: IpAddr,
        remote_port: u16,
    ) -> Option<DataId> {
        self.retire_idle_data(now);
        if self.data.values().filter(|d| !d.is_closed()).count() >= self.config.max_data_channels {
            return None;
        }
        let id = DataId(self.next_data);
        // Ids are never reused; a session that used them all gets no more.
        self.next_data = self.next_data.checked_add(1)?;
        let chan = DataChan {
            id,
            mode,
            state: DataState::ExpectListening { expires_at: after(now, self.config.data_accept_timeout) },
            opened_at: now,
            ended_at: None,
            listen_local: local,
            listening: None,
            accepted_leg: None,
            connect_to: None,
            outbound_leg: None,
            accept_from,
            remote_port,
            retried: false,
            cut: None,
            relayed: false,
            to_client: 0,
            to_server: 0,
            conversion: None,
            to_active: None,
            command: None,
            final_code: None,
            final_dropped: false,
            final_sent: None,
            announced: false,
        };
        self.data.insert(id, chan);
        self.set_current_data(Some(id));
        Some(id)
    }

    /// The channel the next transfer command will use. A closed channel
    /// that was only kept for such a command is forgotten once replaced.
    pub(super) fn set_current_data(&mut self, data: Option<DataId>) {
        if let Some(old) = std::mem::replace(&mut self.current_data, data) {
            if data != Some(old) {
                self.finish(old, None);
            }
        }
    }

    /// A new data command replaces the channels that have not started
    /// connecting (ATTACKS.md 20). Whatever waited for them is released
    /// (as a 425), so nothing stalls behind a channel that is gone.
    pub(super) fn retire_idle_data(&mut self, now: Instant) {
        let idle: Vec<DataId> = self.data.values().filter(|d| d.is_unused()).map(|d| d.id).collect();
        for id in idle {
            self.cut_data(now, id, Cut::Failed(TransferFailure::Replaced));
        }
    }

    /// A transfer command got its first reply: it uses this channel.
    pub(super) fn bind_transfer(&mut self, data: Option<DataId>, label: TransferCommand) {
        let Some(ch) = data.and_then(|id| self.data.get_mut(&id)) else { return };
        ch.command = Some(label);
        if ch.announced {
            let id = ch.id;
            self.direct(id);
        }
    }

    /// The daemon is asked for `data` from now on; a direction its
    /// transfer command set before that is sent now.
    pub(super) fn announce(&mut self, data: DataId) {
        let Some(ch) = self.data.get_mut(&data) else { return };
        if !std::mem::replace(&mut ch.announced, true) && ch.command.is_some() {
            self.direct(data);
        }
    }

    /// `DataDirection` for the channel's transfer command, when enforced.
    fn direct(&mut self, data: DataId) {
        let Some(ch) = self.data.get(&data) else { return };
        let toward = ch.command.as_ref().and_then(|label| data_direction(&label.verb));
        if self.config.enforce_data_direction && !ch.is_closed() {
            if let Some(toward) = toward {
                self.actions.push_back(Action::DataDirection { data, toward });
            }
        }
    }

    pub(super) fn on_listening(&mut self, now: Instant, data: DataId, local: SocketAddr) {
        let Some(ch) = self.data.get_mut(&data) else { return };
        if !ch.is_expecting_listening() {
            return;
        }
        if ch.to_active.is_some() {
            return self.converted_listening(now, data, local);
        }
        ch.state = DataState::ExpectAccept { expires_at: after(now, self.config.data_accept_timeout) };
        ch.listening = Some(local);
        self.listener_up(data, local);
    }

    pub(super) fn on_accepted(&mut self, now: Instant, data: DataId, peer: SocketAddr) {
        let Some(ch) = self.data.get_mut(&data) else { return };
        if ch.to_active.is_some() {
            return self.converted_accepted(now, data, peer);
        }
        if !matches!(ch.state, DataState::ExpectAccept { .. }) {
            return;
        }
        if canonical_ip(peer.ip()) != canonical_ip(ch.accept_from) {
            // Port theft (ATTACKS.md 5): drop the intruder, keep waiting.
            let expected = ch.accept_from;
            self.actions.push_back(Action::Refuse { data });
            self.actions.push_back(Action::Audit(AuditEvent::DataPeerRefused { data, peer, expected }));
            return;
        }
        let (client_ip, server_ip) = (self.ends.client.ip(), self.ends.server.ip());
        let (local, remote) = match ch.mode {
            // The client connected to us as if to the server: connect to the
            // server from the client's address.
            DataMode::Passive => (SocketAddr::new(client_ip, 0), SocketAddr::new(server_ip, ch.remote_port)),
            // The server connected to us as if to the client: connect to the
            // client from the server's address and port (often 20).
            DataMode::Active => {
                (SocketAddr::new(server_ip, peer.port()), SocketAddr::new(client_ip, ch.remote_port))
            }
        };
        ch.accepted_leg = Some(DataLeg { peer, local: ch.listening.unwrap_or(ch.listen_local) });
        ch.connect_to = Some(remote);
        ch.state = DataState::ExpectConnect { expires_at: after(now, self.config.data_connect_timeout) };
        self.actions.push_back(Action::Connect { data, local, remote });
    }

    pub(super) fn on_connected(&mut self, now: Instant, data: DataId, local: SocketAddr) {
        let Some(ch) = self.data.get_mut(&data) else { return };
        // A converted channel's legs report `Dialed`, both of them.
        if !matches!(ch.state, DataState::ExpectConnect { .. }) || ch.conversion.is_some() {
            return;
        }
        ch.outbound_leg = ch.connect_to.map(|peer| DataLeg { peer, local });
        // The kernel's connection tracking times out a kernel-forwarded
        // connection; the shell sees no bytes to restart a deadline with.
        let idle = if self.config.kernel_data_path { Duration::MAX } else { self.config.data_idle_timeout };
        ch.state = DataState::Relaying { idle_at: after(now, idle) };
        self.actions.push_back(Action::Relay { data });
    }

    pub(super) fn on_failed(&mut self, now: Instant, data: DataId, step: DataStep, error: io::ErrorKind) {
        let Some(ch) = self.data.get_mut(&data) else { return };
        if ch.is_closed() {
            return;
        }
        let in_use = matches!(error, io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable);
        // A listener asked for at port 0 (a converted channel's, an active
        // one's in relay mode) has nothing to retry.
        if step == DataStep::Bind
            && in_use
            && ch.is_expecting_listening()
            && ch.listen_local.port() != 0
            && !ch.retried
        {
            // The announced port is taken here (another session, ATTACKS.md
            // 21): listen on any port and rewrite what the peer is told.
            ch.retried = true;
            let local = SocketAddr::new(ch.listen_local.ip(), 0);
            let (accept_from, peer) = (ch.accept_from, ch.peer_side());
            self.actions.push_back(Action::Listen { data, local, accept_from, peer });
            return;
        }
        self.cut_data(now, data, Cut::Failed(TransferFailure::SetupFailed { step, error }));
    }

    /// Running byte counts: bytes that moved push the idle deadline out.
    pub(super) fn on_progress(&mut self, now: Instant, data: DataId, to_client: u64, to_server: u64) {
        let Some(ch) = self.data.get_mut(&data) else { return };
        let DataState::Relaying { idle_at } = &mut ch.state else { return };
        // Only growth is activity: a shell repeating the same counts must
        // not keep a silent channel alive.
        if to_client > ch.to_client || to_server > ch.to_server {
            *idle_at = after(now, self.config.data_idle_timeout);
        }
        ch.to_client = ch.to_client.max(to_client);
        ch.to_server = ch.to_server.max(to_server);
    }

    /// Bytes written earlier reached their receiver: activity, as a count
    /// that grew is.
    pub(super) fn on_acknowledged(&mut self, now: Instant, data: DataId) {
        let Some(ch) = self.data.get_mut(&data) else { return };
        if let DataState::Relaying { idle_at } = &mut ch.state {
            *idle_at = after(now, self.config.data_idle_timeout);
        }
    }

    pub(super) fn on_relayed(&mut self, now: Instant, data: DataId, to_client: u64, to_server: u64) {
        let Some(ch) = self.data.get_mut(&data) else { return };
        if !matches!(ch.state, DataState::Relaying { .. }) {
            // Only a relay that was started can end.
            return;
        }
        ch.relayed = true;
        ch.to_client = to_client;
        ch.to_server = to_server;
        self.release_transfer_hold(data);
        self.close_data(now, data);
    }

    /// The shell's relay ended abnormally; it has reset the other leg.
    pub(super) fn on_relay_failed(
        &mut self,
        now: Instant,
        data: DataId,
        leg: Side,
        error: io::ErrorKind,
        counts: (u64, u64),
    ) {
        let Some(ch) = self.data.get_mut(&data) else { return };
        if !matches!(ch.state, DataState::Relaying { .. }) {
            return;
        }
        ch.to_client = counts.0;
        ch.to_server = counts.1;
        if error == super::WRONG_DIRECTION {
            let verb = ch.command.as_ref().map(|c| c.verb.clone()).unwrap_or_default();
            self.refuse(Violation::WrongDirection { side: leg }, verb.as_bytes());
        }
        let why = match error {
            super::WRONG_DIRECTION => TransferFailure::WrongDirection { from: leg },
            super::URGENT_DATA => TransferFailure::UrgentData { from: leg },
            io::ErrorKind::ConnectionReset => TransferFailure::Reset { leg },
            error => TransferFailure::RelayError { leg, error },
        };
        self.cut_data(now, data, Cut::Failed(why));
    }

    /// Deadlines: greeting, idle, and each data channel's. Data channels go
    /// first: an expiring channel may release a held reply, and with it the
    /// transfer that kept the idle deadline from applying.
    pub(super) fn on_timeout(&mut self, now: Instant) {
        use super::control::{Phase, REPLY_IDLE, REPLY_NO_GREETING, REPLY_UNREACHABLE};
        let expired: Vec<(DataId, TransferFailure)> = self
            .data
            .values()
            .filter(|d| d.deadline().is_some_and(|t| t <= now))
            .filter_map(|d| {
                let why = match d.state {
                    DataState::ExpectListening { .. }
                    | DataState::ExpectAccept { .. }
                    | DataState::ExpectPassiveReply { .. }
                    | DataState::ExpectPortReply { .. }
                    | DataState::ExpectTransfer { .. } => TransferFailure::AcceptTimeout,
                    DataState::ExpectConnect { .. } => TransferFailure::ConnectTimeout,
                    DataState::Relaying { .. } => TransferFailure::DataIdle,
                    DataState::Done => return None,
                };
                Some((d.id, why))
            })
            .collect();
        for (id, why) in expired {
            self.cut_data(now, id, Cut::Failed(why));
        }
        match self.phase {
            Phase::ExpectGreeting { expires_at } if now >= expires_at => {
                let text = if self.server_spoke { REPLY_NO_GREETING } else { REPLY_UNREACHABLE };
                self.send_client_now(text);
                self.teardown(Side::Client, "greeting timeout");
            }
            Phase::Relaying if !self.transfer_running() && now >= self.idle_at => {
                self.send_client_now(REPLY_IDLE);
                self.teardown(Side::Client, "idle timeout");
            }
            _ => {}
        }
    }

    /// A data channel cannot go on: reset its legs if any are up, close it,
    /// and release whatever waited for it. The transfer using it is logged
    /// with `cut` and never gets a 2xx through to the client.
    pub(super) fn cut_data(&mut self, now: Instant, data: DataId, cut: Cut) {
        if let Some(ch) = self.data.get_mut(&data) {
            if !ch.is_closed() {
                ch.cut = Some(cut);
                if ch.has_live_leg() {
                    // A FIN would tell the peer its data was complete.
                    self.actions.push_back(Action::ResetData { data });
                }
            }
        }
        // Held replies first: the channel is forgotten once closed and
        // logged, and a held 2xx must still learn that it was cut.
        match self.server_hold.take() {
            Some(
                ServerHold::ExpectListening { data: held, .. }
                | ServerHold::ExpectConvertedListening { data: held, .. },
            ) if held == data => {
                self.send_client_now(REPLY_CANT_OPEN);
            }
            other => self.server_hold = other,
        }
        self.release_transfer_hold(data);
        match self.port_hold.take() {
            // Queued, not sent: this may run while a server reply that
            // comes first is being handled; the next flush sends it in order.
            Some(hold) if hold.data == data => {
                self.pending.push_back(Pending::Local(REPLY_CANT_OPEN.as_bytes().to_vec()))
            }
            other => self.port_hold = other,
        }
        self.close_data(now, data);
    }

    /// The relay of a held final reply is over (or cut): send the reply.
    pub(super) fn release_transfer_hold(&mut self, data: DataId) {
        match self.server_hold.take() {
            Some(ServerHold::ExpectRelayEnd { data: held, reply }) if held == data => {
                self.send_final_reply(data, &reply)
            }
            other => self.server_hold = other,
        }
    }

    /// Send a transfer's final reply as the client may see it: a 2xx of a
    /// cut transfer becomes `426`; 4xx/5xx pass unchanged.
    pub(super) fn send_final_reply(&mut self, data: DataId, reply: &Reply) {
        let client_code = self.data.get(&data).map_or(reply.code.0, |ch| ch.client_code(reply.code.0));
        if client_code == reply.code.0 {
            self.send_reply(reply);
        } else {
            self.send_client_now(REPLY_TRANSFER_CUT);
        }
    }

    /// Send `CloseData` once; log the transfer when its reply is known.
    pub(super) fn close_data(&mut self, now: Instant, data: DataId) {
        let Some(ch) = self.data.get_mut(&data) else { return };
        if !ch.is_closed() {
            ch.state = DataState::Done;
            ch.ended_at.get_or_insert(now);
            // A converted channel exists in the shell from its first Dial
            // on (`Action::Dial`); before it there is nothing to close.
            let in_shell = ch.conversion.is_none() || ch.connect_to.is_some();
            if in_shell {
                self.actions.push_back(Action::CloseData { data });
            }
        }
        self.finish(data, None);
    }

    /// Session end: close the channel (a running relay with a reset); a
    /// transfer not yet logged ends with `cut` (aborted, or failed when the
    /// server went away).
    pub(super) fn abort_data(&mut self, data: DataId, cut: Cut) {
        if let Some(ch) = self.data.get_mut(&data) {
            if !ch.is_closed() {
                ch.cut = Some(cut);
                if ch.has_live_leg() {
                    self.actions.push_back(Action::ResetData { data });
                }
            }
        }
        self.close_data(self.now, data);
        self.finish(data, Some(cut));
    }

    /// Log the transfer once both its relay and its final reply are over,
    /// then forget the channel. `ended`: the session ends, log what is left
    /// with this result.
    pub(super) fn finish(&mut self, data: DataId, ended: Option<Cut>) {
        let Some(ch) = self.data.get(&data) else { return };
        if !ch.is_closed() {
            return;
        }
        let Some(command) = ch.command.clone() else {
            // A cut channel stays known while it is current: the transfer
            // command that binds it later must not get a 2xx through.
            if ended.is_some() || ch.cut.is_none() || self.current_data != Some(data) {
                self.data.remove(&data);
            }
            return;
        };
        let result = match (ch.cut, ch.final_code, ended) {
            (Some(cut), Some(_), _) | (Some(cut), None, Some(_)) => cut.into(),
            (None, None, Some(ended)) => ended.into(),
            (_, None, None) => return, // the reply is still to come
            (None, Some(code), _) if !(200..300).contains(&code) => {
                TransferResult::Failed(TransferFailure::ServerReply { code })
            }
            (None, Some(_), _) if ch.relayed => TransferResult::Ok,
            (None, Some(_), _) => TransferResult::Failed(TransferFailure::NoDataConnection),
        };
        self.totals.transfers += 1;
        self.totals.to_client = self.totals.to_client.saturating_add(ch.to_client);
        self.totals.to_server = self.totals.to_server.saturating_add(ch.to_server);
        let event = AuditEvent::Transfer {
            data,
            mode: ch.mode,
            user: self.login.user.clone(),
            command: command.verb,
            path: command.path,
            rest: command.rest,
            legs: Box::new(ch.legs()),
            to_client: ch.to_client,
            to_server: ch.to_server,
            duration: ch.ended_at.unwrap_or(ch.opened_at).saturating_duration_since(ch.opened_at),
            reply: ch
                .final_sent
                .or_else(|| ch.final_code.filter(|_| !ch.final_dropped).map(|c| ch.client_code(c))),
            server_reply: ch.final_code,
            result,
        };
        self.actions.push_back(Action::Audit(event));
        self.data.remove(&data);
    }

    /// A transfer's data is moving (or its final reply is held for it).
    pub(super) fn transfer_running(&self) -> bool {
        matches!(self.server_hold, Some(ServerHold::ExpectRelayEnd { .. }))
            || self.data.values().any(|d| d.is_connecting_or_relaying())
    }

    /// The first unanswered transfer command has no channel bound yet:
    /// bind it to the current one.
    pub(super) fn bind_front_transfer(&mut self) {
        if let Some(Pending::Transfer { label, binding: binding @ Binding::Unanswered }) =
            self.pending.front_mut()
        {
            let data = self.current_data.take();
            *binding = data.map_or(Binding::NoChannel, Binding::Bound);
            let label = label.clone();
            self.bind_transfer(data, label);
        }
    }
}

/// The only side a transfer's data may flow toward (ATTACKS.md 34), for
/// the verbs `Command::Transfer` knows.
fn data_direction(verb: &str) -> Option<Side> {
    match verb {
        "RETR" | "LIST" | "NLST" | "MLSD" => Some(Side::Client),
        "STOR" | "APPE" | "STOU" => Some(Side::Server),
        _ => None,
    }
}
