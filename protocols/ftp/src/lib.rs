//! Sans-IO FTP control-channel core for ftpgate.
//!
//! (Crate docs: the driving contract. The core helper expands this with a
//! runnable example.)
//!
//! 1. Feed exactly one fact with [`Session::handle_input`].
//! 2. Drain [`Session::poll_action`] until `None`; executing an action may
//!    produce a new fact, which may be fed from inside the drain.
//! 3. Write [`Session::pending`] for both sides as far as the sockets take it
//!    and [`Session::consume`] what was written.
//! 4. Recompute interest from [`Session::read_budget`] and `pending`; re-arm
//!    the timer from [`Session::poll_timeout`].
//! 5. Wait; when the deadline passes, feed [`Input::Timeout`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod addr;
pub mod audit;
pub mod command;
pub mod error;
pub mod line;
pub mod policy;
pub mod reply;
mod session;

pub use audit::{AuditEvent, DataMode, TransferResult};
pub use policy::{Config, PassiveAddressPolicy};
pub use session::{Action, ControlEnds, DataId, DataStep, Input, Session, Side};
