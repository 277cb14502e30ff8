//! The control channel: client commands in, server replies in, pairing them
//! FIFO, and the holds that keep replies in order with the data channels.
//!
//! Read first: RFC 959 §5.4 (command-reply sequences), RFC 2428, RFC 2577
//! (FTP security considerations), RFC 1579 (firewall-friendly FTP),
//! LIFECYCLE.md at the crate root.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::data::Cut;
use super::{idx, printable, Action, DataId, DataStep, Session, Side, MAX_PENDING};
use crate::addr::{canonical_ip, AddrError, ExtAddr, HostPort};
use crate::audit::{AbortCause, AuditEvent, DataMode, TransferFailure};
use crate::command::{self, parse_command, Command, CommandError, EpsvArg, Junk};
use crate::error::Violation;
use crate::line::{write_line, LineError, LineReader, DM, IAC, IP};
use crate::policy::{FtpsPolicy, PassiveAddressPolicy};
use crate::reply::{without_features, Code, Reply, ReplyError, TLS_FEATURES};
use crate::rules::ServerData;

pub(super) const REPLY_UNREACHABLE: &str =
    "421 Service not available: ftpgate could not reach the server.\r\n";
pub(super) const REPLY_NO_GREETING: &str = "421 Service not available: the server sent no greeting.\r\n";
pub(super) const REPLY_SHUTTING_DOWN: &str = "421 ftpgate is shutting down.\r\n";
pub(super) const REPLY_IDLE: &str = "421 Control connection idle for too long, closing.\r\n";
pub(super) const REPLY_SERVER_BROKEN: &str = "421 ftpgate: the server broke the protocol, closing.\r\n";
pub(super) const REPLY_CANT_OPEN: &str = "425 Can't open data connection.\r\n";
/// In place of a 2xx for a transfer whose data channel was cut (ATTACKS.md 24).
pub(super) const REPLY_TRANSFER_CUT: &str = "426 Connection closed; transfer aborted.\r\n";
const REPLY_LINE_TOO_LONG: &str = "500 Line too long.\r\n";
const REPLY_BAD_LINE: &str = "500 Line refused: NUL or bare CR.\r\n";
const REPLY_SYNTAX: &str = "500 Syntax error, command unrecognized.\r\n";
const REPLY_BAD_ADDRESS: &str = "501 Syntax error in data address.\r\n";
const REPLY_FOREIGN_ADDRESS: &str = "501 ftpgate: the data address must be the client's own.\r\n";
const REPLY_PRIVILEGED: &str = "501 ftpgate: privileged data port refused.\r\n";
const REPLY_FAMILY: &str = "522 Network protocol not supported, use (1,2)\r\n";
const REPLY_LONG_ADDRESS: &str = "502 ftpgate: LPRT/LPSV not supported, use EPRT/EPSV.\r\n";
const REPLY_SECURITY: &str = "534 ftpgate: AUTH/TLS on the control channel refused by policy.\r\n";
const REPLY_LOGIN_FIRST: &str = "530 Please login first.\r\n";
const REPLY_EPSV_ALL: &str = "503 ftpgate: EPSV ALL in effect, use EPSV.\r\n";
const REPLY_EPSV_ALL_OK: &str = "200 EPSV ALL command successful.\r\n";
const REPLY_PASSIVE_REFUSED: &str = "425 ftpgate: passive reply refused by gateway policy.\r\n";
pub(super) const REPLY_TOO_MANY: &str = "425 ftpgate: too many data connections.\r\n";
const REPLY_NOT_FTP: &str = "421 ftpgate: this is an FTP service; closing.\r\n";
const REPLY_TOO_MANY_REFUSED: &str = "421 ftpgate: too many refused commands; closing.\r\n";
const REPLY_TLS_PIPELINED: &str = "421 ftpgate: bytes before the TLS handshake; closing.\r\n";

/// `AUTH` mechanisms that mean TLS (RFC 4217 §6, and the older drafts'
/// `SSL`, `TLS-C`, `TLS-P`): the only ones passed through. Others (GSSAPI,
/// Kerberos) would protect commands with MIC/ENC on a channel still
/// framed as lines, which the gateway cannot inspect: refused.
const TLS_MECHANISMS: [&[u8]; 4] = [b"TLS", b"SSL", b"TLS-C", b"TLS-P"];

/// A refused line as its audit record shows it: printable and truncated.
/// A refused line may be a mangled PASS (`PASS\tsecret` is a syntax
/// error): a password is never logged, so only the verb is kept.
fn audit_text(line: &[u8]) -> String {
    match line.get(..4) {
        Some(verb) if verb.eq_ignore_ascii_case(b"PASS") => printable(verb, 4),
        _ => printable(line, 64),
    }
}

/// What the control channel waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// The server's 220 (a 120 may come first). Client lines wait.
    ExpectGreeting { expires_at: Instant },
    /// Lines pass through, commands paired with replies FIFO.
    Relaying,
    /// FTPS pass-through: the server said 234 to AUTH; the shell relays the
    /// control connection byte for byte and the core takes no more input.
    Blind,
    /// Both sides shut down.
    Closed,
}

/// Who is logged in. The password is never stored.
#[derive(Debug, Default)]
pub(super) struct Login {
    pub(super) user: Option<String>,
    pub(super) pending_user: Option<String>,
    pub(super) logged_in: bool,
}

/// One entry of the command FIFO: what the reply to that command decides.
#[derive(Debug)]
pub(super) enum Pending {
    /// A reply the gateway made, owed after the replies before it.
    Local(Vec<u8>),
    /// PASV/EPSV forwarded: its 227/229 sets up a data channel.
    Passive,
    /// PASV/EPSV the gateway sent in place of the client's PORT/EPRT
    /// (`convert.rs`): its 227/229 becomes the client's `200`.
    PassiveFor { data: DataId },
    /// PORT/EPRT the gateway sent in place of the client's PASV/EPSV
    /// (`convert.rs`): its 200 lets the client's 227/229 be made.
    ActiveFor { data: DataId },
    /// PORT/EPRT forwarded with its listener up.
    Active { data: DataId },
    /// A transfer command and the data channel it uses.
    Transfer { label: TransferCommand, binding: Binding },
    /// USER: its reply says whether `name` is logged in, or must send PASS.
    User { name: String },
    /// PASS: a 230 logs in the user of the USER before it.
    Pass,
    /// REIN: takes effect on the server's 220 (vsftpd answers 502).
    Rein,
    /// EPSV ALL: takes effect on the server's 2xx.
    EpsvAll,
    /// FEAT: its multi-line reply loses the TLS lines when AUTH is refused.
    Feat,
    /// AUTH forwarded (FTPS pass-through): a 234 makes the channel blind.
    /// Client lines wait for this reply.
    Auth { mechanism: String },
    /// Anything else.
    Other,
}

impl Pending {
    /// Its reply changes what data commands are allowed: a data-setup
    /// command behind it waits for that reply.
    fn changes_data_rules(&self) -> bool {
        matches!(self, Self::User { .. } | Self::Pass | Self::Rein | Self::EpsvAll)
    }
}

/// A transfer command as its audit record names it. Peer bytes, kept
/// printable and truncated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct TransferCommand {
    /// The verb, upper case.
    pub(super) verb: String,
    /// The argument, if there is one.
    pub(super) path: Option<String>,
    /// The offset of the REST right before it (ATTACKS.md 26): the byte
    /// counts of a restarted transfer start there.
    pub(super) rest: Option<String>,
}

/// Which data channel a transfer command uses. Decided at its first reply:
/// by then every PASV/PORT before it has been answered (pipelining).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Binding {
    /// No reply yet.
    Unanswered,
    /// The channel that was current at its first reply.
    Bound(DataId),
    /// No channel was current: the server will refuse or fail it.
    NoChannel,
}

/// Client lines refused in a row by the gateway, recorded once when the run
/// ends (ATTACKS.md 10): a flood of junk makes one record, not one each.
#[derive(Debug)]
pub(crate) struct RefusedRun {
    count: usize,
    /// The first refused line's violation, as its record names it.
    side: Side,
    reason: &'static str,
    rule: &'static str,
    attack: Option<u8>,
    what: String,
    /// Each rule of the run with its count, in the order first used; few
    /// entries at most, as there are few rules.
    rules: Vec<(&'static str, usize)>,
}

/// A PORT/EPRT waiting for its listener before it is forwarded.
#[derive(Debug)]
pub(super) struct PortHold {
    pub(super) data: DataId,
    pub(super) line: Vec<u8>,
    pub(super) ip: IpAddr,
    pub(super) port: u16,
    pub(super) extended: bool,
    /// The gateway's own PORT/EPRT for a client's PASV/EPSV (`convert.rs`):
    /// made from the listener's address, not the client's line.
    pub(super) converted: bool,
}

/// A server reply the client may not see yet, named after what it waits for.
#[derive(Debug)]
// Named after what each waits for (STYLE.md), so all start with Expect.
#[allow(clippy::enum_variant_names)]
pub(super) enum ServerHold {
    /// A 227/229 until its listener is up (`Listening`).
    ExpectListening { data: DataId, reply: Reply, announced: SocketAddr, extended: bool, plain: bool },
    /// The 227/229 the gateway makes for a client's PASV/EPSV under
    /// `server-data = "active"` (`convert.rs`), until the listener for the
    /// client's connection is up; it names that listener.
    ExpectConvertedListening { data: DataId, extended: bool },
    /// The final reply of a transfer until its relay ends (`Relayed`, or a
    /// cut).
    ExpectRelayEnd { data: DataId, reply: Reply },
}

impl ServerHold {
    /// The data channel it waits for.
    pub(super) fn data(&self) -> DataId {
        match *self {
            Self::ExpectListening { data, .. }
            | Self::ExpectConvertedListening { data, .. }
            | Self::ExpectRelayEnd { data, .. } => data,
        }
    }
}

impl Session {
    /// Take client lines while nothing holds them back.
    pub(super) fn process_client(&mut self, now: Instant) {
        loop {
            if self.phase != Phase::Relaying
                || self.closing_by_policy
                || self.port_hold.is_some()
                || self.server_eof
                || self.pending.len() >= MAX_PENDING
                || self.auth_pending()
            {
                return;
            }
            let line = match self.stash.take() {
                Some(line) => line,
                None => match self.readers[idx(Side::Client)].next_line() {
                    None => {
                        // A TLS ClientHello or a binary protocol has no line
                        // end to wait for: judge the first line's start.
                        let partial = self.readers[idx(Side::Client)].partial();
                        if let Some(junk) = command::junk_prefix(partial).filter(|_| !self.client_spoke_ftp) {
                            let what = partial.to_vec();
                            self.not_ftp(junk, &what);
                        }
                        return;
                    }
                    Some(Ok(line)) => {
                        self.line_seen();
                        let junk = match self.client_spoke_ftp {
                            false => command::junk(&line),
                            true => command::is_http_request_line(&line).then_some(Junk::Http),
                        };
                        if let Some(junk) = junk {
                            return self.not_ftp(junk, &line);
                        }
                        self.client_spoke_ftp = true;
                        line
                    }
                    Some(Err(LineError::TooLong)) => {
                        self.refuse(Violation::LineTooLong { side: Side::Client }, b"");
                        self.send_client_now(REPLY_LINE_TOO_LONG);
                        self.teardown(Side::Client, "client line too long");
                        return;
                    }
                    Some(Err(LineError::Nul | LineError::BareCr)) if !self.client_spoke_ftp => {
                        return self.not_ftp(Junk::Binary, b"");
                    }
                    Some(Err(LineError::Nul | LineError::BareCr)) => {
                        self.refuse_local(Violation::BadLineEnd { side: Side::Client }, b"", REPLY_BAD_LINE);
                        continue;
                    }
                },
            };
            let cmd = parse_command(&line);
            let data_setup = matches!(
                cmd,
                Ok(Command::Port(_)
                    | Command::Eprt(_)
                    | Command::Pasv
                    | Command::Epsv(EpsvArg::Any | EpsvArg::Proto(_)))
            );
            if data_setup && self.data_setup_must_wait() {
                // The previous transfer's data channel must not be replaced
                // before that transfer ends; and whether a data command is
                // allowed at all is the server's call on the login (or REIN,
                // EPSV ALL) still unanswered before it.
                self.stash = Some(line);
                return;
            }
            self.handle_command(now, &line, cmd);
        }
    }

    /// An AUTH is forwarded and unanswered: no client byte is taken until
    /// its reply says whether the channel stays clear text.
    pub(super) fn auth_pending(&self) -> bool {
        self.pending.iter().any(|p| matches!(p, Pending::Auth { .. }))
    }

    /// The client's bytes are not FTP (ATTACKS.md 10): nothing of them
    /// reaches the server; 421 and close.
    fn not_ftp(&mut self, junk: Junk, what: &[u8]) {
        self.flush_refused();
        self.refuse(Violation::NotFtp(junk), what);
        self.send_client_now(REPLY_NOT_FTP);
        self.teardown(Side::Client, "client is not speaking FTP");
    }

    pub(super) fn transfer_outstanding(&self) -> bool {
        self.pending.iter().any(|p| matches!(p, Pending::Transfer { .. })) || self.transfer_running()
    }

    pub(super) fn data_setup_must_wait(&self) -> bool {
        self.transfer_outstanding() || self.pending.iter().any(Pending::changes_data_rules)
    }

    fn handle_command(&mut self, now: Instant, line: &[u8], cmd: Result<Command<'_>, CommandError>) {
        let cmd = match cmd {
            Ok(cmd) => cmd,
            Err(CommandError::Syntax) => {
                return self.refuse_local(Violation::CommandSyntax, line, REPLY_SYNTAX)
            }
            Err(CommandError::Address(AddrError::Family)) => {
                return self.refuse_local(Violation::AddressFamily, line, REPLY_FAMILY)
            }
            Err(CommandError::Address(_)) => {
                return self.refuse_local(Violation::AddressSyntax, line, REPLY_BAD_ADDRESS)
            }
        };
        // REST applies to the command right after it only (RFC 959 §4.1.3).
        let rest = self.rest.take();
        if !self.policy_admits(line, &cmd) {
            return;
        }
        match cmd {
            Command::User(name) => self.forward(line, Pending::User { name: printable(name, 64) }),
            Command::Port(hp) => self.active(now, line, IpAddr::V4(hp.ip), hp.port, false),
            Command::Eprt(ExtAddr { ip: Some(ip), port }) => self.active(now, line, ip, port, true),
            Command::Eprt(ExtAddr { ip: None, .. }) => {
                self.refuse_local(Violation::AddressSyntax, line, REPLY_BAD_ADDRESS)
            }
            Command::Pasv | Command::Epsv(_) if !self.login.logged_in => {
                self.refuse_local(Violation::NotLoggedIn, line, REPLY_LOGIN_FIRST)
            }
            Command::Pasv if self.epsv_all => {
                self.refuse_local(Violation::EpsvAllInEffect, line, REPLY_EPSV_ALL)
            }
            // The gateway sends the server PORT/EPRT: the server must not
            // be in EPSV ALL. The gateway enforces it for the client.
            Command::Epsv(EpsvArg::All) if self.decision.server_data == ServerData::Active => {
                self.epsv_all = true;
                self.reply_local(REPLY_EPSV_ALL_OK);
            }
            Command::Epsv(EpsvArg::All) => self.forward(line, Pending::EpsvAll),
            Command::Pasv | Command::Epsv(_) if self.decision.server_data == ServerData::Active => {
                self.convert_to_active(now, line, matches!(cmd, Command::Epsv(_)))
            }
            Command::Pasv | Command::Epsv(_) => {
                self.retire_idle_data(now);
                self.forward(line, Pending::Passive);
            }
            Command::LongPassive => {
                self.refuse_local(Violation::LongAddressUnsupported, line, REPLY_LONG_ADDRESS)
            }
            Command::Auth(mechanism)
                if self.config.ftps == FtpsPolicy::PassThrough
                    && self.policy_allows_blind()
                    && TLS_MECHANISMS.iter().any(|m| m.eq_ignore_ascii_case(mechanism)) =>
            {
                let mechanism = printable(mechanism, 8).to_ascii_uppercase();
                self.forward(line, Pending::Auth { mechanism });
            }
            Command::Auth(_) | Command::Security => {
                self.refuse_local(Violation::SecurityRefused, line, REPLY_SECURITY)
            }
            Command::Rein => self.forward(line, Pending::Rein),
            Command::Abor => self.abort(now, line),
            Command::Transfer { verb, arg } => {
                let label = TransferCommand {
                    verb: printable(verb, 4).to_ascii_uppercase(),
                    path: (!arg.is_empty()).then(|| printable(arg, 120)),
                    rest,
                };
                self.forward(line, Pending::Transfer { label, binding: Binding::Unanswered });
            }
            Command::Other { verb, arg } if verb.eq_ignore_ascii_case(b"REST") => {
                // Relayed whatever the offset; only a printable copy is kept.
                self.rest = Some(printable(arg, 24));
                self.forward(line, Pending::Other);
            }
            Command::Other { verb, .. } if verb.eq_ignore_ascii_case(b"FEAT") => {
                self.forward(line, Pending::Feat)
            }
            Command::Pass => self.forward(line, Pending::Pass),
            Command::Other { .. } => self.forward(line, Pending::Other),
        }
    }

    /// PORT/EPRT: check it, ask for a listener on the client's address and
    /// hold the command until the listener is up.
    fn active(&mut self, now: Instant, line: &[u8], ip: IpAddr, port: u16, extended: bool) {
        let client_ip = self.ends.client.ip();
        if !self.login.logged_in {
            return self.refuse_local(Violation::NotLoggedIn, line, REPLY_LOGIN_FIRST);
        }
        if self.epsv_all {
            return self.refuse_local(Violation::EpsvAllInEffect, line, REPLY_EPSV_ALL);
        }
        if canonical_ip(ip) != canonical_ip(client_ip) {
            let v = Violation::PortAddressMismatch { announced: ip, control_peer: client_ip };
            return self.refuse_local(v, line, REPLY_FOREIGN_ADDRESS);
        }
        if port < 1024 && !self.config.allow_privileged_data_ports {
            let v = Violation::PrivilegedPort { side: Side::Client };
            return self.refuse_local(v, line, REPLY_PRIVILEGED);
        }
        if self.decision.server_data == ServerData::Passive {
            if !self.convert_to_passive(now, port, extended) {
                self.refuse_local(Violation::TooManyDataChannels, line, REPLY_TOO_MANY);
            }
            return;
        }
        // The server is told a port of the gateway's choosing on the
        // client's address, not the client's own: its connection and the
        // gateway's to the client must not share one 4-tuple (server:20 to
        // client:port). On one tuple, the gateway's own connection tracking
        // folds both into one entry, whose window tracking finds the second
        // connection's segments out of window and marks them invalid; a
        // router's `ct state invalid drop` then drops them.
        // Passive mode has the same rule (the leg to the server leaves from
        // a port the kernel chose). The kernel data path forwards the
        // server's connection itself, to the port the client announced.
        let listen_port = if self.config.kernel_data_path { port } else { 0 };
        let local = SocketAddr::new(client_ip, listen_port);
        let Some(data) = self.open_data(now, DataMode::Active, local, self.ends.server.ip(), port) else {
            return self.refuse_local(Violation::TooManyDataChannels, line, REPLY_TOO_MANY);
        };
        self.port_hold =
            Some(Box::new(PortHold { data, line: line.to_vec(), ip, port, extended, converted: false }));
    }

    /// ABOR (RFC 959 §4.1.3, ATTACKS.md 15): cut the data channel of the
    /// outstanding transfer at once (reset if its legs are up), release its
    /// held final reply (a 2xx as 426 unless the relay had completed), and
    /// send ABOR to the server as a Telnet Synch. The server's 426/226 for
    /// the transfer and then its reply to ABOR pair FIFO. With no transfer,
    /// ABOR ends the data set-up: unused listeners close, REST is dropped.
    fn abort(&mut self, now: Instant, line: &[u8]) {
        let held = match &self.server_hold {
            Some(ServerHold::ExpectRelayEnd { data, .. }) => Some(*data),
            _ => None,
        };
        match held.or_else(|| self.abort_target()) {
            // The kernel forwards this connection (`kernel_data_path`):
            // the gateway cannot cut it, so it does not pretend to. The
            // server ends it on ABOR, its replies pass as they are, and
            // the kernel reports the end.
            Some(data)
                if self.config.kernel_data_path
                    && self.data.get(&data).is_some_and(|ch| ch.is_connecting_or_relaying()) => {}
            // Not just close_data: a 227/229 still held for this listener
            // must be released too (as 425), or every later server reply
            // waits behind it for good.
            Some(data) => self.cut_data(now, data, Cut::Aborted(AbortCause::ClientAbor)),
            None if !self.transfer_outstanding() => self.reset_data_setup(now),
            None => {}
        }
        self.forward_synch(line);
    }

    /// The channel of the first unanswered transfer command. One not
    /// answered yet would have used the current channel: bind it now, so
    /// its audit record says it was aborted.
    fn abort_target(&mut self) -> Option<DataId> {
        let (label, binding) = self.pending.iter_mut().find_map(|p| match p {
            Pending::Transfer { label, binding } => Some((label, binding)),
            _ => None,
        })?;
        match *binding {
            Binding::Bound(data) => Some(data),
            Binding::NoChannel => None,
            Binding::Unanswered => {
                let data = self.current_data.take()?;
                *binding = Binding::Bound(data);
                let label = label.clone();
                self.bind_transfer(Some(data), label);
                Some(data)
            }
        }
    }

    /// Forget the data set-up no transfer uses (REIN, ABOR with no
    /// transfer): close unused listeners, no current channel, no REST.
    fn reset_data_setup(&mut self, now: Instant) {
        self.retire_idle_data(now);
        self.set_current_data(None);
        self.rest = None;
    }

    /// `IAC IP IAC` (the last IAC urgent), then `DM` and the command: the
    /// Telnet Synch RFC 959 §4.1.3 asks for ahead of ABOR.
    fn forward_synch(&mut self, line: &[u8]) {
        let out = &mut self.out[idx(Side::Server)];
        out.extend_from_slice(&[IAC, IP, IAC]);
        self.urgent[idx(Side::Server)].push_back(out.len());
        out.push(DM);
        self.forward(line, Pending::Other);
    }

    /// Send a command line to the server and remember what answers it.
    pub(super) fn forward(&mut self, line: &[u8], kind: Pending) {
        // A line that passes ends a run of refused ones.
        self.flush_refused();
        write_line(line, &mut self.out[idx(Side::Server)]);
        self.pending.push_back(kind);
    }

    /// A local reply to a client command, kept in order behind the replies
    /// the server still owes.
    pub(super) fn reply_local(&mut self, text: &str) {
        if self.pending.is_empty() && self.server_hold.is_none() {
            self.send_client_now(text);
        } else {
            self.pending.push_back(Pending::Local(text.as_bytes().to_vec()));
        }
    }

    /// A client line the gateway answers itself. Refused lines in a row
    /// make one record when the run ends; at `max_refused_lines` the
    /// session closes instead of answering.
    pub(super) fn refuse_local(&mut self, v: Violation, line: &[u8], text: &str) {
        let run = self.refused.get_or_insert_with(|| {
            Box::new(RefusedRun {
                count: 0,
                side: v.side(),
                reason: v.reason(),
                rule: v.rule(),
                attack: v.attack(),
                what: audit_text(line),
                rules: Vec::new(),
            })
        });
        run.count += 1;
        match run.rules.iter_mut().find(|(rule, _)| *rule == v.rule()) {
            Some((_, n)) => *n += 1,
            None => run.rules.push((v.rule(), 1)),
        }
        let max = self.config.max_refused_lines;
        if max > 0 && run.count >= max {
            self.flush_refused();
            self.send_client_now(REPLY_TOO_MANY_REFUSED);
            return self.teardown(Side::Client, "too many refused lines");
        }
        self.reply_local(text);
    }

    /// Record the run of refused lines, if any: `Refused` for one line,
    /// `RefusedLines` for more.
    pub(super) fn flush_refused(&mut self) {
        let Some(run) = self.refused.take() else { return };
        let RefusedRun { count, side, reason, rule, attack, what, rules } = *run;
        let event = match count {
            1 => AuditEvent::Refused { side, reason, rule, attack, what },
            count => AuditEvent::RefusedLines { side, count, reason, rule, attack, what, rules },
        };
        self.actions.push_back(Action::Audit(event));
    }

    pub(super) fn refuse(&mut self, v: Violation, what: &[u8]) {
        self.actions.push_back(Action::Audit(AuditEvent::Refused {
            side: v.side(),
            reason: v.reason(),
            rule: v.rule(),
            attack: v.attack(),
            what: audit_text(what),
        }));
    }

    /// Send the local replies that reached the front of the FIFO.
    pub(super) fn flush_local(&mut self) {
        while self.server_hold.is_none() {
            let Some(Pending::Local(_)) = self.pending.front() else { return };
            if let Some(Pending::Local(bytes)) = self.pending.pop_front() {
                self.out[idx(Side::Client)].extend_from_slice(&bytes);
            }
        }
    }

    pub(super) fn send_reply(&mut self, reply: &Reply) {
        reply.write(&mut self.out[idx(Side::Client)]);
    }

    /// Take server replies in order; behind a held reply, queue them in
    /// the backlog, except that a 421 acts at once.
    pub(super) fn process_server(&mut self, now: Instant) {
        loop {
            self.flush_local();
            if matches!(self.phase, Phase::Closed | Phase::Blind) {
                return;
            }
            if self.server_hold.is_none() {
                if let Some(reply) = self.backlog.pop_front() {
                    self.handle_reply(now, reply);
                    continue;
                }
            }
            let line = match self.readers[idx(Side::Server)].next_line() {
                None => return,
                Some(Ok(line)) => {
                    self.line_seen();
                    line
                }
                Some(Err(LineError::TooLong)) => {
                    return self.server_broke(Violation::LineTooLong { side: Side::Server })
                }
                Some(Err(_)) => return self.server_broke(Violation::BadLineEnd { side: Side::Server }),
            };
            match self.replies.push(line) {
                Ok(None) => {}
                Ok(Some(reply)) if self.server_hold.is_none() => self.handle_reply(now, reply),
                Ok(Some(reply)) if reply.code == Code::NOT_AVAILABLE && self.phase == Phase::Relaying => {
                    return self.server_closing(now, reply);
                }
                Ok(Some(reply)) => self.backlog.push_back(reply),
                Err(ReplyError::Malformed) => return self.server_broke(Violation::ReplyMalformed),
                Err(ReplyError::TooManyLines | ReplyError::TooLarge) => {
                    return self.server_broke(Violation::ReplyTooLong)
                }
            }
        }
    }

    /// A 421 arrived behind a held reply (ATTACKS.md 18): close every data
    /// channel, which releases the held reply; deliver what the server said
    /// before the 421, in order; then the 421 and the teardown. The server
    /// is going away, as when it just closes: a transfer it cuts this way
    /// failed, it was not aborted by anyone on purpose.
    fn server_closing(&mut self, now: Instant, reply: Reply) {
        let ids: Vec<DataId> = self.data.keys().copied().collect();
        for id in ids {
            self.cut_data(now, id, Cut::Failed(TransferFailure::ServerClosed));
        }
        while let Some(earlier) = self.backlog.pop_front() {
            self.flush_local();
            if !earlier.code.is_preliminary() {
                self.pending.pop_front();
            }
            self.send_reply(&earlier);
        }
        self.flush_local();
        self.send_reply(&reply);
        self.teardown(Side::Client, "server closing (421)");
    }

    fn server_broke(&mut self, v: Violation) {
        self.refuse(v, b"");
        self.send_client_now(REPLY_SERVER_BROKEN);
        self.teardown(Side::Client, v.reason());
    }

    fn handle_reply(&mut self, now: Instant, reply: Reply) {
        let code = reply.code;
        if let Phase::ExpectGreeting { .. } = self.phase {
            self.send_reply(&reply);
            if code.is_success() {
                self.phase = Phase::Relaying;
            } else if !code.is_preliminary() {
                self.teardown(Side::Client, "server refused the session");
            }
            return;
        }
        if code == Code::NOT_AVAILABLE {
            self.send_reply(&reply);
            // The server is going away: a transfer it cuts failed.
            let cut = Cut::Failed(TransferFailure::ServerClosed);
            return self.teardown_cutting(Side::Client, "server closing (421)", cut);
        }
        if code.is_preliminary() {
            self.bind_front_transfer();
            self.front_transfer_started(now);
            return self.send_reply(&reply);
        }
        match self.pending.pop_front() {
            Some(Pending::Passive) => self.passive_reply(now, reply),
            Some(Pending::PassiveFor { data }) => self.converted_passive_reply(now, data, reply),
            Some(Pending::ActiveFor { data }) => self.converted_port_reply(now, data, reply),
            Some(Pending::Active { data }) => {
                if !code.is_success() {
                    // The server will not use the channel. A hostile one
                    // may have connected anyway: a cut resets that leg.
                    let why = TransferFailure::ServerReply { code: code.0 };
                    self.cut_data(now, data, Cut::Failed(why));
                }
                self.send_reply(&reply);
            }
            Some(Pending::Transfer { label, binding }) => {
                let data = match binding {
                    Binding::Bound(data) => Some(data),
                    Binding::NoChannel => None,
                    Binding::Unanswered => {
                        let data = self.current_data.take();
                        self.bind_transfer(data, label);
                        data
                    }
                };
                self.transfer_reply(now, reply, data);
            }
            Some(Pending::User { name }) => {
                match code.0 {
                    230 => {
                        self.login.pending_user = Some(name);
                        self.logged_in();
                    }
                    // The server wants PASS (or ACCT) for `name`: whoever
                    // was logged in is not any more.
                    331 | 332 => {
                        self.login.pending_user = Some(name);
                        self.logged_out();
                    }
                    530 => {
                        self.logged_out();
                        self.login_failed(Some(name));
                    }
                    // A syntax or sequence error changed nothing.
                    _ => {}
                }
                self.send_reply(&reply);
            }
            Some(Pending::Pass) => {
                match code.0 {
                    230 => self.logged_in(),
                    332 => self.logged_out(),
                    530 => {
                        self.logged_out();
                        self.login_failed(self.login.pending_user.clone());
                    }
                    // 202 (superfluous), 503 (already logged in), …
                    _ => {}
                }
                self.send_reply(&reply);
            }
            Some(Pending::Rein) => {
                if code == Code::READY {
                    self.login = Login::default();
                    self.policy_user = None;
                    self.decision = self.policy_decision(None);
                    self.epsv_all = false;
                    self.reset_data_setup(now);
                }
                self.send_reply(&reply);
            }
            Some(Pending::EpsvAll) => {
                if code.is_success() {
                    self.epsv_all = true;
                }
                self.send_reply(&reply);
            }
            Some(Pending::Feat) => match self.config.ftps {
                FtpsPolicy::Refuse => self.send_reply(&without_features(reply, &TLS_FEATURES)),
                FtpsPolicy::PassThrough => self.send_reply(&reply),
            },
            Some(Pending::Auth { mechanism }) if code.0 == 234 => self.pass_through(reply, mechanism),
            Some(Pending::Auth { .. }) => self.send_reply(&reply),
            Some(Pending::Local(bytes)) => {
                // Cannot happen (locals are flushed first); keep order anyway.
                self.out[idx(Side::Client)].extend_from_slice(&bytes);
                self.send_reply(&reply);
            }
            Some(Pending::Other) | None => {
                if code == Code::LOGGED_IN {
                    self.logged_in();
                }
                self.send_reply(&reply);
            }
        }
    }

    /// RFC 2577 §5: the shell counts these per client address.
    fn login_failed(&mut self, user: Option<String>) {
        self.actions.push_back(Action::Audit(AuditEvent::LoginFailed { user }));
    }

    /// The server accepted AUTH (234) under FTPS pass-through: the control
    /// connection is TLS from the next byte. Nothing may be left that was
    /// read past the AUTH exchange: such bytes were decoded as Telnet and
    /// cannot be passed on as they came, so the session ends instead.
    fn pass_through(&mut self, reply: Reply, mechanism: String) {
        let client = &self.readers[idx(Side::Client)];
        let server = &self.readers[idx(Side::Server)];
        let early = if !client.is_clear() || self.stash.is_some() || !self.pending.is_empty() {
            Some(Side::Client)
        } else if !server.is_clear() || self.replies.buffered() > 0 || !self.backlog.is_empty() {
            Some(Side::Server)
        } else {
            None
        };
        if let Some(side) = early {
            self.refuse(Violation::TlsPipelined { side }, mechanism.as_bytes());
            self.send_client_now(REPLY_TLS_PIPELINED);
            return self.teardown(Side::Client, "bytes before the TLS handshake");
        }
        self.send_reply(&reply);
        let ids: Vec<DataId> = self.data.keys().copied().collect();
        for id in ids {
            self.abort_data(id, Cut::Aborted(AbortCause::SessionEnded));
        }
        self.set_current_data(None);
        let user = self.login.user.clone();
        self.actions.push_back(Action::Audit(AuditEvent::TlsPassThrough { mechanism, user }));
        self.actions.push_back(Action::PassThrough { idle_timeout: self.config.idle_timeout });
        self.phase = Phase::Blind;
        self.readers = [LineReader::new(), LineReader::new()];
    }

    fn logged_out(&mut self) {
        self.login.logged_in = false;
        self.login.user = None;
    }

    fn logged_in(&mut self) {
        // vsftpd answers an anonymous USER with 230 and the PASS after it
        // with "230 Already logged in.": one login, one record.
        if self.login.logged_in && self.login.user == self.login.pending_user {
            return;
        }
        self.login.logged_in = true;
        self.login.user = self.login.pending_user.clone();
        let user = self.login.user.clone().unwrap_or_default();
        self.actions.push_back(Action::Audit(AuditEvent::LoggedIn { user }));
    }

    /// The final reply of a transfer command: release it now, or hold it
    /// until the data relay ends (ATTACKS.md 25).
    fn transfer_reply(&mut self, now: Instant, reply: Reply, data: Option<DataId>) {
        if let Some(id) = data.filter(|_| reply.code.is_success()) {
            // A converted channel whose transfer had no 1xx: its client leg
            // is dialed now and the reply held for the relay.
            self.dial_client_leg(now, id);
        }
        let Some(ch) = data.and_then(|id| self.data.get_mut(&id)) else {
            return self.send_reply(&reply);
        };
        ch.final_code = Some(reply.code.0);
        let id = ch.id;
        // A success while the listener still waits means the peer's
        // connection is in flight: in active mode the server connects, sends
        // 150 and, for a short file, 226 before the gateway has even accepted.
        // The accept deadline bounds the wait.
        let in_flight = reply.code.is_success() && ch.is_awaiting_server();
        if (ch.is_connecting_or_relaying() || in_flight) && self.config.kernel_data_path {
            // The kernel forwards the data and passes a reset on end to
            // end: the reply goes out now, in the server's own order; the
            // transfer is logged when the channel ends.
            ch.final_sent = Some(ch.client_code(reply.code.0));
            self.send_final_reply(id, &reply);
        } else if ch.is_connecting_or_relaying() || in_flight {
            self.server_hold = Some(ServerHold::ExpectRelayEnd { data: id, reply });
        } else {
            // Never connected (e.g. 425), already over, or cut (a 2xx then
            // goes out as 426).
            self.send_final_reply(id, &reply);
            self.close_data(now, id);
        }
    }

    /// A 227/229 answering our PASV/EPSV: check it, ask for the listener and
    /// hold the reply until it is up.
    fn passive_reply(&mut self, now: Instant, reply: Reply) {
        let server_ip = self.ends.server.ip();
        let code = format!("{}", reply.code.0);
        // Passed on as written only when a single line says it plainly
        // (`is_plain_227`); else rewritten, so that the client reads the
        // address the gateway checked, not another line's or another
        // parse's (ATTACKS.md 7).
        let single = reply.lines.len() == 1;
        let (announced, extended, plain) = match reply.code {
            Code::ENTERING_PASSIVE => (
                reply
                    .texts()
                    .find_map(HostPort::parse_227)
                    .map(|hp| SocketAddr::new(IpAddr::V4(hp.ip), hp.port)),
                false,
                single && reply.texts().all(HostPort::is_plain_227),
            ),
            Code::ENTERING_EXT_PASSIVE => (
                reply.texts().find_map(ExtAddr::parse_229).map(|port| SocketAddr::new(server_ip, port)),
                true,
                single,
            ),
            // A refusal (425, 500...): the client hears it as it is.
            _ => return self.send_reply(&reply),
        };
        let Some(announced) = announced else {
            // A 227/229 whose address cannot be read cannot be checked, and
            // no listener could be opened for it: relayed, it would send
            // the client wherever its own parse points (a third host).
            return self.refuse_passive(Violation::ReplyMalformed, &code);
        };
        let same_ip = canonical_ip(announced.ip()) == canonical_ip(server_ip);
        if !same_ip && self.config.passive_address_mismatch == PassiveAddressPolicy::Refuse
            || !extended && !matches!(canonical_ip(server_ip), IpAddr::V4(_))
        {
            return self.refuse_passive(Violation::PassiveAddressMismatch, &code);
        }
        if announced.port() < 1024 && !self.config.allow_privileged_data_ports {
            return self.refuse_passive(Violation::PrivilegedPort { side: Side::Server }, &code);
        }
        let local = SocketAddr::new(server_ip, announced.port());
        let accept_from = self.ends.client.ip();
        let Some(data) = self.open_data(now, DataMode::Passive, local, accept_from, announced.port()) else {
            return self.refuse_passive(Violation::TooManyDataChannels, &code);
        };
        self.server_hold = Some(ServerHold::ExpectListening { data, reply, announced, extended, plain });
    }

    fn refuse_passive(&mut self, v: Violation, code: &str) {
        self.refuse(v, code.as_bytes());
        self.send_client_now(REPLY_PASSIVE_REFUSED);
    }

    /// The listener of a held PASV reply or PORT command is up: release it,
    /// rewritten if the bound address differs from the announced one, or
    /// if the reply did not say it plainly (then in the plain form).
    pub(super) fn listener_up(&mut self, data: DataId, local: SocketAddr) {
        match self.server_hold.take() {
            Some(ServerHold::ExpectListening { data: held, reply, announced, extended, plain })
                if held == data =>
            {
                let same = canonical_ip(local.ip()) == canonical_ip(announced.ip())
                    && local.port() == announced.port();
                if same && plain {
                    self.send_reply(&reply);
                } else if let Some(rewritten) = self.passive_rewrite(local, extended) {
                    self.send_reply(&rewritten);
                    if !same {
                        self.audit_rewrite(data, announced, local);
                    }
                } else {
                    // No 227 can name this address (an IPv6 listener).
                    self.send_client_now(REPLY_CANT_OPEN);
                    let why = TransferFailure::SetupFailed {
                        step: DataStep::Listen,
                        error: io::ErrorKind::AddrNotAvailable,
                    };
                    self.cut_data(self.now, data, Cut::Failed(why));
                }
            }
            other => self.server_hold = other,
        }
        if self.port_hold.as_ref().is_some_and(|h| h.data == data) && (self.revoked || self.closing_by_policy)
        {
            // A PORT/EPRT (or a conversion) taken before a reload that
            // denies this session: the server hears nothing more from it.
            // The client gets 425 for it, then its 421.
            return self.cut_data(self.now, data, Cut::Aborted(AbortCause::SessionEnded));
        }
        match self.port_hold.take() {
            Some(hold) if hold.data == data && hold.converted => self.send_converted_port(data, local),
            Some(hold) if hold.data == data => {
                if local.port() == hold.port {
                    self.forward(&hold.line, Pending::Active { data });
                } else {
                    let mut line = Vec::new();
                    match (hold.extended, canonical_ip(hold.ip)) {
                        (false, IpAddr::V4(ip)) => {
                            line.extend_from_slice(b"PORT ");
                            HostPort { ip, port: local.port() }.write(&mut line);
                        }
                        _ => {
                            line.extend_from_slice(b"EPRT ");
                            ExtAddr { ip: Some(hold.ip), port: local.port() }.write(&mut line);
                        }
                    }
                    self.forward(&line, Pending::Active { data });
                    // A fresh port is the rule (see `active`), not news.
                    if self.config.kernel_data_path {
                        self.audit_rewrite(data, SocketAddr::new(hold.ip, hold.port), local);
                    }
                }
            }
            other => self.port_hold = other,
        }
    }

    fn audit_rewrite(&mut self, data: DataId, announced: SocketAddr, local: SocketAddr) {
        self.actions.push_back(Action::Audit(AuditEvent::ReplyRewritten { data, announced, local }));
    }

    /// A canonical 227/229 naming `local`.
    pub(super) fn passive_rewrite(&self, local: SocketAddr, extended: bool) -> Option<Reply> {
        if extended {
            let text = format!("229 Entering Extended Passive Mode (|||{}|)", local.port());
            return Some(Reply::local(229, &text));
        }
        let pair = (canonical_ip(local.ip()), canonical_ip(self.ends.server.ip()));
        let ((IpAddr::V4(ip), _) | (_, IpAddr::V4(ip))) = pair else {
            return None;
        };
        let mut text = b"227 Entering Passive Mode (".to_vec();
        HostPort { ip, port: local.port() }.write(&mut text);
        text.extend_from_slice(b").");
        Some(Reply { code: Code::ENTERING_PASSIVE, lines: vec![text] })
    }
}
