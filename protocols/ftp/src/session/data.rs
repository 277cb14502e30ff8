//! Data channels: one per `DataId`, from `Listen` to `CloseData`.
//!
//! Read first: RFC 959 §3.2–3.3 (data connections), RFC 2577 §3 (bounce),
//! ATTACKS.md 5, 6, 19–25, LIFECYCLE.md beside this crate.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::control::{Pending, ServerHold, REPLY_CANT_OPEN};
use super::{after, Action, DataId, DataStep, Session, Side};
use crate::addr::canonical_ip;
use crate::audit::{AuditEvent, DataMode, TransferResult};

/// What a data channel waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DataState {
    /// `Listen` asked; waiting for `Listening` (or a bind failure).
    ExpectListening,
    /// Listening; waiting for the expected peer.
    ExpectAccept,
    /// Accepted; waiting for the foreign-source connect.
    ExpectConnect,
    /// Both legs up; waiting for `Relayed`.
    Relaying,
    /// `CloseData` sent.
    Done,
}

/// One data channel.
#[derive(Debug)]
pub(super) struct DataChan {
    pub(super) id: DataId,
    pub(super) mode: DataMode,
    pub(super) state: DataState,
    /// Deadline of the current state (listen + accept, or connect).
    pub(super) expires_at: Option<Instant>,
    pub(super) opened_at: Instant,
    pub(super) ended_at: Option<Instant>,
    /// Where the listener was asked for.
    pub(super) listen_local: SocketAddr,
    pub(super) accept_from: IpAddr,
    /// The port the far end announced: passive, the server's data port;
    /// active, the client's.
    pub(super) remote_port: u16,
    /// The port-0 fallback was used.
    pub(super) retried: bool,
    /// `CloseData` was sent.
    pub(super) closed: bool,
    pub(super) failed: bool,
    /// The client's ABOR closed it: its transfer is logged as `Aborted`.
    pub(super) aborted: bool,
    /// The transfer command using this channel, once bound.
    pub(super) command: Option<String>,
    pub(super) final_code: Option<u16>,
    pub(super) relayed: Option<(u64, u64)>,
}

impl DataChan {
    /// The live deadline, if any (a finished channel has none).
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self.state {
            DataState::ExpectListening | DataState::ExpectAccept | DataState::ExpectConnect => {
                self.expires_at
            }
            DataState::Relaying | DataState::Done => None,
        }
    }

    /// Active mode, listening for the server's connection, which has not
    /// been accepted yet. (In passive mode the server cannot have had a data
    /// connection before the gateway accepted the client's.)
    pub(super) fn is_awaiting_server(&self) -> bool {
        self.mode == DataMode::Active && self.state == DataState::ExpectAccept
    }

    pub(super) fn is_connecting_or_relaying(&self) -> bool {
        matches!(self.state, DataState::ExpectConnect | DataState::Relaying)
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
        self.retire_idle_data(now);
        if self.data.values().filter(|d| !d.closed).count() >= self.config.max_data_channels {
            return None;
        }
        let id = DataId(self.next_data);
        // Ids are never reused; a session that used them all gets no more.
        self.next_data = self.next_data.checked_add(1)?;
        let chan = DataChan {
            id,
            mode,
            state: DataState::ExpectListening,
            expires_at: Some(after(now, self.config.data_accept_timeout)),
            opened_at: now,
            ended_at: None,
            listen_local: local,
            accept_from,
            remote_port,
            retried: false,
            closed: false,
            failed: false,
            aborted: false,
            command: None,
            final_code: None,
            relayed: None,
        };
        let peer = chan.peer_side();
        self.data.insert(id, chan);
        self.current_data = Some(id);
        self.actions.push_back(Action::Listen { data: id, local, accept_from, peer });
        self.actions.push_back(Action::Audit(AuditEvent::DataOpened { data: id, mode, local, accept_from }));
        Some(id)
    }

    /// A new data command replaces the channels that have not started
    /// connecting (ATTACKS.md 20). Whatever waited for them is released
    /// (as a 425), so nothing stalls behind a channel that is gone.
    pub(super) fn retire_idle_data(&mut self, now: Instant) {
        let idle: Vec<DataId> = self
            .data
            .values()
            .filter(|d| matches!(d.state, DataState::ExpectListening | DataState::ExpectAccept))
            .map(|d| d.id)
            .collect();
        for id in idle {
            self.data_failed(now, id);
        }
    }

    /// A transfer command got its first reply: it uses this channel.
    pub(super) fn bind_transfer(&mut self, data: Option<DataId>, label: String) {
        if let Some(ch) = data.and_then(|id| self.data.get_mut(&id)) {
            ch.command = Some(label);
        }
    }

    pub(super) fn on_listening(&mut self, now: Instant, data: DataId, local: SocketAddr) {
        let Some(ch) = self.data.get_mut(&data) else { return };
        if ch.state != DataState::ExpectListening {
            return;
        }
        ch.state = DataState::ExpectAccept;
        ch.expires_at = Some(after(now, self.config.data_accept_timeout));
        self.listener_up(data, local);
    }

    pub(super) fn on_accepted(&mut self, now: Instant, data: DataId, peer: SocketAddr) {
        let Some(ch) = self.data.get_mut(&data) else { return };
        if ch.state != DataState::ExpectAccept {
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
        ch.state = DataState::ExpectConnect;
        ch.expires_at = Some(after(now, self.config.data_connect_timeout));
        self.actions.push_back(Action::Connect { data, local, remote });
    }

    pub(super) fn on_connected(&mut self, data: DataId) {
        let Some(ch) = self.data.get_mut(&data) else { return };
        if ch.state != DataState::ExpectConnect {
            return;
        }
        ch.state = DataState::Relaying;
        ch.expires_at = None;
        self.actions.push_back(Action::Relay { data });
    }

    pub(super) fn on_failed(&mut self, now: Instant, data: DataId, step: DataStep, error: io::ErrorKind) {
        let Some(ch) = self.data.get_mut(&data) else { return };
        if ch.closed {
            return;
        }
        let in_use = matches!(error, io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable);
        if step == DataStep::Bind && in_use && ch.state == DataState::ExpectListening && !ch.retried {
            // The announced port is taken here (another session, ATTACKS.md
            // 21): listen on any port and rewrite what the peer is told.
            ch.retried = true;
            let local = SocketAddr::new(ch.listen_local.ip(), 0);
            let (accept_from, peer) = (ch.accept_from, ch.peer_side());
            self.actions.push_back(Action::Listen { data, local, accept_from, peer });
            return;
        }
        self.data_failed(now, data);
    }

    pub(super) fn on_relayed(&mut self, now: Instant, data: DataId, to_client: u64, to_server: u64) {
        let Some(ch) = self.data.get_mut(&data) else { return };
        if ch.state != DataState::Relaying {
            // Only a relay that was started can end.
            return;
        }
        ch.relayed = Some((to_client, to_server));
        self.close_data(now, data);
        self.release_transfer_hold(data);
    }

    /// Deadlines: greeting, idle, and each data channel's. Data channels go
    /// first: an expiring channel may release a held reply, and with it the
    /// transfer that kept the idle deadline from applying.
    pub(super) fn on_timeout(&mut self, now: Instant) {
        use super::control::{Phase, REPLY_IDLE, REPLY_NO_GREETING, REPLY_UNREACHABLE};
        let expired: Vec<DataId> =
            self.data.values().filter(|d| d.deadline().is_some_and(|t| t <= now)).map(|d| d.id).collect();
        for id in expired {
            self.data_failed(now, id);
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

    /// A data channel cannot go on: close it and release whatever waited
    /// for it.
    pub(super) fn data_failed(&mut self, now: Instant, data: DataId) {
        if let Some(ch) = self.data.get_mut(&data) {
            ch.failed = true;
        }
        self.close_data(now, data);
        match self.server_hold.take() {
            Some(ServerHold::Listener { data: held, .. }) if held == data => {
                self.send_client_now(REPLY_CANT_OPEN);
            }
            other => self.server_hold = other,
        }
        self.release_transfer_hold(data);
        match self.client_hold.take() {
            // Queued, not sent: this may run while a server reply that
            // comes first is being handled; the next flush sends it in order.
            Some(hold) if hold.data == data => {
                self.pending.push_back(Pending::Local(REPLY_CANT_OPEN.as_bytes().to_vec()))
            }
            other => self.client_hold = other,
        }
    }

    pub(super) fn release_transfer_hold(&mut self, data: DataId) {
        match self.server_hold.take() {
            Some(ServerHold::Transfer { data: held, reply }) if held == data => self.send_reply(&reply),
            other => self.server_hold = other,
        }
    }

    /// Send `CloseData` once; log the transfer when its reply is known.
    pub(super) fn close_data(&mut self, now: Instant, data: DataId) {
        let Some(ch) = self.data.get_mut(&data) else { return };
        if !ch.closed {
            ch.closed = true;
            ch.state = DataState::Done;
            ch.expires_at = None;
            ch.ended_at.get_or_insert(now);
            self.actions.push_back(Action::CloseData { data });
        }
        if self.current_data == Some(data) {
            self.current_data = None;
        }
        self.finish(data, None);
    }

    /// Session end: close the channel; a transfer not yet logged is aborted.
    pub(super) fn abort_data(&mut self, data: DataId) {
        self.close_data(self.now, data);
        self.finish(data, Some(TransferResult::Aborted));
    }

    /// Log the transfer once both its relay and its final reply are over,
    /// then forget the channel.
    fn finish(&mut self, data: DataId, force: Option<TransferResult>) {
        let Some(ch) = self.data.get(&data) else { return };
        if !ch.closed {
            return;
        }
        let Some(command) = ch.command.clone() else {
            self.data.remove(&data);
            return;
        };
        let result = match (force, ch.final_code, ch.relayed) {
            (Some(r), _, _) => r,
            (None, None, _) => return, // the reply is still to come
            (None, Some(_), _) if ch.aborted => TransferResult::Aborted,
            (None, Some(code), Some(_)) if !ch.failed && (200..300).contains(&code) => TransferResult::Ok,
            (None, Some(_), _) => TransferResult::Failed,
        };
        let (to_client, to_server) = ch.relayed.unwrap_or((0, 0));
        let event = AuditEvent::Transfer {
            data,
            mode: ch.mode,
            user: self.login.user.clone(),
            command,
            to_client,
            to_server,
            duration: ch.ended_at.unwrap_or(ch.opened_at).saturating_duration_since(ch.opened_at),
            reply: ch.final_code,
            result,
        };
        self.actions.push_back(Action::Audit(event));
        self.data.remove(&data);
    }

    /// A transfer's data is moving (or its final reply is held for it).
    pub(super) fn transfer_running(&self) -> bool {
        matches!(self.server_hold, Some(ServerHold::Transfer { .. }))
            || self.data.values().any(|d| !d.closed && d.is_connecting_or_relaying())
    }
}
