//! Knobs of the session machine, with safe defaults (mechanism vs policy).

use std::sync::Arc;
use std::time::Duration;

use crate::rules::PolicySet;

/// What to do with a 227/229 whose address is not the control connection's
/// server address (a NAT'd server announcing a private address, or a hostile
/// server trying to make the gateway listen on a third host's address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassiveAddressPolicy {
    /// Listen on the control server address instead and rewrite the reply.
    Rewrite,
    /// Refuse the reply: the client gets an error, nothing is opened.
    Refuse,
}

/// What to do with `AUTH TLS` / `AUTH SSL` (RFC 4217, ATTACKS.md 27).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FtpsPolicy {
    /// Answer `AUTH` with `534` and keep the session in clear text; the
    /// TLS lines of the server's `FEAT` reply (`AUTH`, `PBSZ`, `PROT`,
    /// `CCC`) are removed so clients do not try.
    Refuse,
    /// Forward `AUTH TLS`/`AUTH SSL`; after the server's `234` the control
    /// connection is relayed blind ([`Action::PassThrough`](crate::Action::PassThrough)):
    /// nothing is parsed and no data channel is ever opened again, so the
    /// firewall must allow the data ports itself.
    PassThrough,
}

/// Limits and rules of one session. Shared by all sessions of a daemon.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long a data listener waits for its one connection.
    pub data_accept_timeout: Duration,
    /// How long a foreign-source data connect may take.
    pub data_connect_timeout: Duration,
    /// How long the server may take to connect and send its greeting.
    pub greeting_timeout: Duration,
    /// A control connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Allow PORT/EPRT/227/229 ports below 1024 (off: ATTACKS.md 2 and 6).
    pub allow_privileged_data_ports: bool,
    /// See [`PassiveAddressPolicy`].
    pub passive_address_mismatch: PassiveAddressPolicy,
    /// Cap on the lines of one multi-line reply (ATTACKS.md 17).
    pub max_reply_lines: usize,
    /// Cap on data channels open at once per session (ATTACKS.md 20).
    pub max_data_channels: usize,
    /// A relaying data channel that moves no byte either way for this long
    /// fails: both legs are reset and the client gets 426.
    pub data_idle_timeout: Duration,
    /// Access rules and command profiles (default: allow everything).
    /// Shared: a reload hands one new set to every running session
    /// ([`Input::PolicyChanged`](crate::Input::PolicyChanged)).
    pub policy: Arc<PolicySet>,
    /// See [`FtpsPolicy`].
    pub ftps: FtpsPolicy,
    /// After this many client lines in a row refused by the gateway, the
    /// session is closed with `421` (ATTACKS.md 10). 0: never.
    pub max_refused_lines: usize,
    /// Data of RETR/LIST/NLST/MLSD may flow only toward the client, of
    /// STOR/APPE/STOU only toward the server (ATTACKS.md 34): the core
    /// tells the shell which way ([`Action::DataDirection`]), and a byte
    /// the wrong way fails the transfer.
    ///
    /// [`Action::DataDirection`]: crate::Action::DataDirection
    pub enforce_data_direction: bool,
    /// The kernel forwards the data connections (one-shot pinholes), not
    /// the shell: a transfer's final reply is relayed at once instead of
    /// held for `Relayed` (the client sees the server's own ordering), and
    /// a relaying channel has no idle deadline (the kernel's connection
    /// tracking times it out). The transfer is logged when its channel
    /// ends, with the reply the client got.
    pub kernel_data_path: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_accept_timeout: Duration::from_secs(30),
            data_connect_timeout: Duration::from_secs(10),
            greeting_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(900),
            allow_privileged_data_ports: false,
            passive_address_mismatch: PassiveAddressPolicy::Rewrite,
            max_reply_lines: 1000,
            max_data_channels: 1,
            data_idle_timeout: Duration::from_secs(300),
            policy: Arc::default(),
            ftps: FtpsPolicy::Refuse,
            max_refused_lines: 10,
            enforce_data_direction: false,
            kernel_data_path: false,
        }
    }
}
