//! Sans-IO FTP control-channel core for ftpgate.
//!
//! One [`Session`] is the protocol state of one intercepted FTP control
//! connection. It reads the client's commands and the server's replies,
//! relays them, and decides everything FTP-specific: which data listeners
//! to open and where, whom to accept on them, where to connect from, and
//! when a reply may reach the client. It owns no socket and no clock and
//! never logs: the shell (the mio daemon) feeds it facts and executes what
//! it asks for.
//!
//! Read first: RFC 959 (FTP), RFC 1123 §4.1 (FTP corrections), RFC 2428
//! (EPRT/EPSV), RFC 2577 (FTP security considerations), RFC 1579
//! (firewall-friendly FTP); `LIFECYCLE.md` at the root of this crate
//! (`protocols/ftp/LIFECYCLE.md`) for the state diagrams and which input
//! releases which held reply.
//!
//! # The driving contract
//!
//! 1. Feed exactly one fact with [`Session::handle_input`], with the
//!    current time.
//! 2. Drain [`Session::poll_action`] until `None`. Executing an action may
//!    produce a new fact (a bind failing at once); feeding it from inside
//!    the drain is allowed.
//! 3. Write [`Session::pending`] for both sides as far as the sockets take
//!    it and [`Session::consume`] what was written. If
//!    [`Session::pending_urgent`] is `Some(n)`, the first `n` bytes end with
//!    a Telnet Synch's urgent byte (ABOR, RFC 959 §4.1.3): write exactly
//!    them with `MSG_OOB` first, then the rest normally. After
//!    [`Action::Shutdown`] for a side, write what is pending for it, then
//!    close it.
//! 4. Recompute interest from [`Session::read_budget`] (0: do not read that
//!    side; when it rises again, read without waiting for a new readiness
//!    event) and `pending`; re-arm the timer from [`Session::poll_timeout`].
//! 5. Wait; when the deadline passes, feed [`Input::Timeout`].
//!
//! Set `SO_OOBINLINE` on the client's control socket: a client's ABOR
//! Synch (`IAC IP IAC` as urgent data, then `DM ABOR`) must reach the core
//! inline, where the framer strips the Telnet commands.
//!
//! While a data channel relays, feed [`Input::Progress`] with its running
//! byte counts when they grew (once per wakeup is enough), and at the idle
//! deadline [`Input::Acknowledged`] when a receiver acknowledged bytes written
//! earlier: a channel that moves no byte, and has none acknowledged, for
//! `Config::data_idle_timeout` is cut. A relay ends with
//! [`Input::Relayed`] (both directions ended clean) or
//! [`Input::RelayFailed`] (a reset or error on one leg; the shell has reset
//! the other). [`Action::ResetData`] asks to end both legs with a reset
//! (`SO_LINGER` 0), never a FIN; its [`Action::CloseData`] follows.
//!
//! Never feed more than `read_budget(from)` bytes in one
//! [`Input::Received`]. Bad input never panics and never returns an error:
//! the core answers the offending side (`500`/`501`/`425`/`421`…), emits an
//! [`Action::Audit`], and may shut the session down. Every
//! [`Action::Listen`] is eventually followed by an [`Action::CloseData`] for
//! the same [`DataId`]; [`Session::is_closed`] says when nothing is left.
//!
//! # Example: log in and set up a passive data channel
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//!
//! use ftpgate_proto::{Action, Config, ControlEnds, DataId, Input, Session, Side};
//!
//! let ends = ControlEnds {
//!     client: "192.0.2.10:40000".parse().unwrap(),
//!     server: "198.51.100.10:21".parse().unwrap(),
//! };
//! let now = Instant::now();
//! let mut s = Session::new(Arc::new(Config::default()), ends, now);
//!
//! // A small shell: feed one fact, drain the actions, collect the output.
//! fn step(s: &mut Session, now: Instant, input: Input<'_>) -> (Vec<Action>, Vec<u8>, Vec<u8>) {
//!     s.handle_input(now, input);
//!     let actions: Vec<Action> = std::iter::from_fn(|| s.poll_action()).collect();
//!     let mut out = |side| {
//!         // A real shell sends the first `n` bytes with MSG_OOB.
//!         if let Some(n) = s.pending_urgent(side) {
//!             assert!(n <= s.pending(side).len());
//!         }
//!         let bytes = s.pending(side).to_vec();
//!         s.consume(side, bytes.len());
//!         assert_eq!(s.pending_urgent(side), None);
//!         bytes
//!     };
//!     (actions, out(Side::Client), out(Side::Server))
//! }
//!
//! // Nothing is read from the client before the server's greeting.
//! assert_eq!(s.read_budget(Side::Client), 0);
//! let (_, to_client, _) = step(&mut s, now, Input::Received { from: Side::Server, data: b"220 ready\r\n" });
//! assert_eq!(to_client, b"220 ready\r\n");
//!
//! let login = b"USER anna\r\nPASS secret\r\n";
//! let (_, _, to_server) = step(&mut s, now, Input::Received { from: Side::Client, data: login });
//! assert_eq!(to_server, login);
//! let (actions, _, _) = step(&mut s, now, Input::Received { from: Side::Server, data: b"331 pw\r\n230 ok\r\n" });
//! assert!(matches!(&actions[..], [Action::Audit(_)])); // LoggedIn { user: "anna" }
//!
//! // PASV goes to the server; its 227 makes the core ask for a listener on
//! // the server's address and hold the reply until the listener is up.
//! step(&mut s, now, Input::Received { from: Side::Client, data: b"PASV\r\n" });
//! let reply = b"227 Entering Passive Mode (198,51,100,10,195,80).\r\n";
//! let (actions, to_client, _) = step(&mut s, now, Input::Received { from: Side::Server, data: reply });
//! let local = "198.51.100.10:50000".parse().unwrap();
//! assert_eq!(
//!     actions[0],
//!     Action::Listen { data: DataId(0), local, accept_from: ends.client.ip(), peer: Side::Client }
//! );
//! assert!(to_client.is_empty());
//!
//! // The shell bound the announced address: the 227 is released unchanged.
//! let (_, to_client, _) = step(&mut s, now, Input::Listening { data: DataId(0), local });
//! assert_eq!(to_client, reply);
//!
//! // ABOR goes to the server as a Telnet Synch: `IAC IP IAC` urgent (the
//! // last IAC is the urgent byte), then `DM ABOR`.
//! s.handle_input(now, Input::Received { from: Side::Client, data: b"ABOR\r\n" });
//! assert_eq!(s.pending(Side::Server), b"\xff\xf4\xff\xf2ABOR\r\n");
//! assert_eq!(s.pending_urgent(Side::Server), Some(3));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod addr;
pub mod audit;
pub mod command;
pub mod error;
pub mod line;
pub mod policy;
pub mod reply;
pub mod rules;
mod session;

pub use audit::{
    AbortCause, AuditEvent, DataLeg, DataLegs, DataMode, PolicyStage, TransferFailure, TransferResult,
};
pub use policy::{Config, FtpsPolicy, PassiveAddressPolicy};
pub use rules::PolicySet;
pub use session::{
    Action, ControlEnds, DataId, DataStep, Input, Session, Side, URGENT_DATA, WRONG_DIRECTION,
};
