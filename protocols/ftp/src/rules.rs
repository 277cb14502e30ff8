//! Access rules and command profiles: who may talk FTP to whom, and what
//! they may do there. Pure functions of (rules, session facts, command).
//!
//! Read first: RFC 959 §4.1 (the verbs), RFC 2577 §5 (user names), and
//! README.md's "Policy" section for the operator's view with examples.
//!
//! A [`PolicySet`] is an ordered list of [`Rule`]s; the first rule that
//! matches decides ([`PolicySet::decide`]). A rule matches on the client's
//! network, the server's network, the server's port and, once the client
//! has sent `USER`, the user name. It allows or denies, may name a command
//! [`Profile`], and says how the gateway sets up data connections toward
//! the server ([`ServerData`]). With no rule matching, `default` applies;
//! [`PolicySet::default`] allows everything, so that a gateway installed
//! on a router never breaks FTP that worked before.
//!
//! The user is only known from `USER` on. At connect time a rule that
//! names users cannot match yet, so [`PolicySet::admit`] refuses a
//! connection only when every user would be refused: the first rule
//! without `user` that matches denies, and no `allow` rule with `user`
//! before it matches the addresses.
//!
//! The session asks [`PolicySet::decide`] at its start and at every `USER`,
//! and [`Decision::check`] for every command. The daemon asks
//! [`PolicySet::admit`] before it contacts the server. Deserialized from the
//! `[policy]` table of the configuration file (serde, kebab-case keys);
//! [`PolicySet::validate`] checks what serde cannot (profile names).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::Deserialize;

use crate::addr::canonical_ip;

/// Allow or deny.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// The session goes on (with the rule's profile, if any).
    #[default]
    Allow,
    /// Connection: `421` and closed. User: `530`, another USER may follow.
    Deny,
}

/// How the gateway sets up data connections toward the server, whatever
/// the client asked for. The client always sees replies to what it sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerData {
    /// As the client asked: PORT/EPRT active, PASV/EPSV passive.
    #[default]
    Keep,
    /// Always passive toward the server: a client's PORT/EPRT is answered
    /// `200` by the gateway, which sends PASV/EPSV to the server and
    /// connects both data legs itself (the server's firewall then needs no
    /// inbound data connections).
    Passive,
    /// Always active toward the server (servers behind a firewall that
    /// forbids passive ports): a client's PASV/EPSV is answered `227`/`229`
    /// by the gateway with a port it listens on at the server's address,
    /// while the server gets PORT/EPRT naming a port the gateway listens
    /// on at the client's address; both data legs are accepted.
    Active,
}

/// A network in CIDR notation (`192.0.2.0/24`, `2001:db8::/32`, or a bare
/// address for one host). IPv4-mapped IPv6 addresses match as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

/// Why a network did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetError(String);

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' is not a network: use ADDRESS/PREFIX like 192.0.2.0/24 or 2001:db8::/32", self.0)
    }
}

impl std::error::Error for NetError {}

impl FromStr for Net {
    type Err = NetError;

    fn from_str(text: &str) -> Result<Self, NetError> {
        let bad = || NetError(text.to_string());
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr = canonical_ip(addr.parse::<IpAddr>().map_err(|_| bad())?);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            // Digits only: `+8` or ` 8` would parse as numbers elsewhere.
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }
}

impl<'de> Deserialize<'de> for Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Net {
    /// `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical_ip(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// One entry of `user = [...]`: a name, or the group `anonymous`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserMatch {
    /// `anonymous`: the anonymous logins `anonymous` and `ftp`, in any case
    /// (as FTP servers take them).
    Anonymous,
    /// Any other name: that exact name (case-sensitive, as Unix user
    /// names are).
    Name(String),
}

impl<'de> Deserialize<'de> for UserMatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Ok(if name == "anonymous" { Self::Anonymous } else { Self::Name(name) })
    }
}

impl UserMatch {
    /// The name given with USER (raw bytes, as sent) matches.
    pub fn matches(&self, user: &[u8]) -> bool {
        match self {
            Self::Anonymous => user.eq_ignore_ascii_case(b"anonymous") || user.eq_ignore_ascii_case(b"ftp"),
            Self::Name(name) => name.as_bytes() == user,
        }
    }
}

/// One access rule. Every condition given must hold; an empty list or a
/// condition left out matches anything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Rule {
    /// A name for the audit trail (else the rule is named by its position,
    /// `rule 1` being the first).
    #[serde(default)]
    pub name: Option<String>,
    /// The client's address is in one of these networks.
    #[serde(default)]
    pub client: Vec<Net>,
    /// The server's address is in one of these networks.
    #[serde(default)]
    pub server: Vec<Net>,
    /// The server's port is one of these.
    #[serde(default)]
    pub port: Vec<u16>,
    /// The user name is one of these (`anonymous`: anonymous or ftp). A
    /// rule with users matches only once the client has sent USER.
    #[serde(default)]
    pub user: Vec<UserMatch>,
    /// Allow or deny.
    pub action: Action,
    /// The command profile of allowed sessions (a built-in `read-only` or
    /// `no-site`, or one of `[policy.profile.NAME]`).
    #[serde(default)]
    pub profile: Option<String>,
    /// Data connections toward the server.
    #[serde(default)]
    pub server_data: ServerData,
}

impl Rule {
    /// The addresses match (users aside).
    fn matches_addresses(&self, client: IpAddr, server: SocketAddr) -> bool {
        (self.client.is_empty() || self.client.iter().any(|n| n.contains(client)))
            && (self.server.is_empty() || self.server.iter().any(|n| n.contains(server.ip())))
            && (self.port.is_empty() || self.port.contains(&server.port()))
    }

    /// The rule matches these facts; a rule with users never matches while
    /// the user is unknown.
    fn matches(&self, facts: &Facts<'_>) -> bool {
        self.matches_addresses(facts.client, facts.server)
            && (self.user.is_empty() || facts.user.is_some_and(|u| self.user.iter().any(|m| m.matches(u))))
    }
}

/// Verbs a profile lists, upper case.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Only these verbs (and the [`ALWAYS_ALLOWED`] ones); another verb
    /// gets `502`: the profile does not know it.
    Allow(Vec<String>),
    /// Every verb but these, which get `550`.
    Deny(Vec<String>),
}

/// Verbs no profile can refuse: logging in is the access rules' business,
/// and ending a session or a transfer never hurts.
pub const ALWAYS_ALLOWED: [&str; 4] = ["USER", "PASS", "QUIT", "ABOR"];

/// The built-in `read-only` profile: nothing that writes, renames or
/// removes, no SITE (whose subcommands can: CHMOD, SYMLINK, ...), and none
/// of the verbs that change a file's facts (MFMT, MFCT, MFF:
/// draft-somers-ftp-mfxx; proftpd and pure-ftpd take MFMT). MDTM's
/// setting form (`MDTM YYYYMMDDHHMMSS path`, vsftpd's mdtm_write) is
/// judged as MFMT (session/access.rs).
pub const READ_ONLY: [&str; 14] = [
    "STOR", "STOU", "APPE", "DELE", "RMD", "XRMD", "MKD", "XMKD", "RNFR", "RNTO", "SITE", "MFMT", "MFCT",
    "MFF",
];

/// The built-in `no-site` profile.
pub const NO_SITE: [&str; 1] = ["SITE"];

fn builtin(name: &str) -> Option<&'static [&'static str]> {
    match name {
        "read-only" => Some(&READ_ONLY),
        "no-site" => Some(&NO_SITE),
        _ => None,
    }
}

/// The whole policy: rules in order, the default action, user profiles.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PolicySet {
    /// What happens when no rule matches (out of the box: allow).
    #[serde(default)]
    pub default: Action,
    /// The rules, first match decides (`[[policy.rule]]`).
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
    /// Profiles of the operator's own (`[policy.profile.NAME]`).
    #[serde(default, rename = "profile")]
    pub profiles: BTreeMap<String, Profile>,
}

/// What the policy is asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts<'a> {
    /// The client's address.
    pub client: IpAddr,
    /// The server's address and port (the original destination).
    pub server: SocketAddr,
    /// The name of the last USER, raw; `None` before any.
    pub user: Option<&'a [u8]>,
}

/// Which rule decided, for the audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleRef {
    /// The rule at this position (0-based) and its name, if it has one.
    Rule {
        /// Position in `rules`, 0-based.
        index: usize,
        /// Its `name`.
        name: Option<String>,
    },
    /// No rule matched: `default`.
    Default,
}

impl fmt::Display for RuleRef {
    /// The rule's name, else `rule N` (1-based, as an operator counts), or
    /// `default`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rule { name: Some(name), .. } => f.write_str(name),
            Self::Rule { index, name: None } => write!(f, "rule {}", index + 1),
            Self::Default => f.write_str("default"),
        }
    }
}

/// What the policy decided for a session at one point (start, or a USER).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Allow or deny.
    pub action: Action,
    /// The rule that decided.
    pub rule: RuleRef,
    /// The verbs refused, resolved from the rule's profile.
    pub profile: Option<ProfileRules>,
    /// Data connections toward the server.
    pub server_data: ServerData,
}

/// A profile resolved for checking: its name and verbs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileRules {
    /// The profile's name.
    pub name: String,
    /// `true`: `verbs` are the only ones allowed; `false`: they are refused.
    pub allow_list: bool,
    /// Upper case.
    pub verbs: Vec<String>,
}

/// The answer for one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Goes on to the gateway's protocol rules and then to the server.
    Pass,
    /// Refused by the access rules (the decision is `deny`): `530`.
    NotAllowed,
    /// Listed as refused by the profile: `550`.
    Refused,
    /// Not in the profile's allow list: `502`.
    Unknown,
}

impl Decision {
    /// May `verb` (3 or 4 letters, any case) go to the server?
    ///
    /// Under a `deny` decision only a new USER (to be decided again) and
    /// QUIT pass: a session admitted because a rule for some user might
    /// allow it sends nothing else before such a user is named.
    pub fn check(&self, verb: &[u8]) -> Verdict {
        let is = |list: &[&str]| list.iter().any(|v| v.as_bytes().eq_ignore_ascii_case(verb));
        if self.action == Action::Deny {
            return if is(&["USER", "QUIT"]) { Verdict::Pass } else { Verdict::NotAllowed };
        }
        if is(&ALWAYS_ALLOWED) {
            return Verdict::Pass;
        }
        let Some(p) = &self.profile else { return Verdict::Pass };
        let listed = p.verbs.iter().any(|v| v.as_bytes().eq_ignore_ascii_case(verb));
        match (p.allow_list, listed) {
            (true, true) | (false, false) => Verdict::Pass,
            (true, false) => Verdict::Unknown,
            (false, true) => Verdict::Refused,
        }
    }
}

/// Why a policy is refused when loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyError {
    /// A rule names a profile that is neither built in nor defined.
    UnknownProfile {
        /// The rule.
        rule: RuleRef,
        /// The name it gives.
        profile: String,
    },
    /// A profile of the operator's has a built-in's name.
    BuiltinRedefined {
        /// The name.
        profile: String,
    },
    /// A profile lists something that is not a 3–4 letter verb.
    BadVerb {
        /// The profile.
        profile: String,
        /// What it lists.
        verb: String,
    },
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownProfile { rule, profile } => write!(
                f,
                "{rule}: profile '{profile}' is not defined: use read-only, no-site, or define [policy.profile.{profile}]"
            ),
            Self::BuiltinRedefined { profile } => {
                write!(f, "profile '{profile}' is built in: give yours another name")
            }
            Self::BadVerb { profile, verb } => {
                write!(f, "profile '{profile}': '{verb}' is not an FTP verb (3 or 4 letters, like STOR)")
            }
        }
    }
}

impl std::error::Error for PolicyError {}

impl PolicySet {
    /// Checks what deserializing cannot: every profile a rule names exists,
    /// no built-in is redefined, every listed verb is a verb.
    pub fn validate(&self) -> Result<(), PolicyError> {
        for (name, profile) in &self.profiles {
            if builtin(name).is_some() {
                return Err(PolicyError::BuiltinRedefined { profile: name.clone() });
            }
            let (Profile::Allow(verbs) | Profile::Deny(verbs)) = profile;
            if let Some(bad) = verbs
                .iter()
                .find(|v| !(3..=4).contains(&v.len()) || !v.bytes().all(|b| b.is_ascii_alphabetic()))
            {
                return Err(PolicyError::BadVerb { profile: name.clone(), verb: bad.clone() });
            }
        }
        for (index, rule) in self.rules.iter().enumerate() {
            let at = || RuleRef::Rule { index, name: rule.name.clone() };
            if let Some(profile) = &rule.profile {
                if builtin(profile).is_none() && !self.profiles.contains_key(profile) {
                    return Err(PolicyError::UnknownProfile { rule: at(), profile: profile.clone() });
                }
            }
        }
        Ok(())
    }

    /// The first rule that matches decides; else `default`.
    pub fn decide(&self, facts: &Facts<'_>) -> Decision {
        match self.rules.iter().enumerate().find(|(_, r)| r.matches(facts)) {
            Some((index, rule)) => Decision {
                action: rule.action,
                rule: RuleRef::Rule { index, name: rule.name.clone() },
                profile: rule.profile.as_deref().map(|name| self.resolve(name)),
                server_data: rule.server_data,
            },
            None => Decision {
                action: self.default,
                rule: RuleRef::Default,
                profile: None,
                server_data: ServerData::Keep,
            },
        }
    }

    /// May a connection from `client` to `server` reach the server at all?
    /// `Err(rule)`: no user could be allowed; that rule (or `default`)
    /// refuses it.
    pub fn admit(&self, client: IpAddr, server: SocketAddr) -> Result<(), RuleRef> {
        for (index, rule) in self.rules.iter().enumerate() {
            if !rule.matches_addresses(client, server) {
                continue;
            }
            if rule.user.is_empty() {
                return match rule.action {
                    Action::Allow => Ok(()),
                    Action::Deny => Err(RuleRef::Rule { index, name: rule.name.clone() }),
                };
            }
            if rule.action == Action::Allow {
                // Some user may be allowed: the USER decides.
                return Ok(());
            }
        }
        match self.default {
            Action::Allow => Ok(()),
            Action::Deny => Err(RuleRef::Default),
        }
    }

    /// A profile by name. Unknown names (a policy not validated) refuse
    /// every verb but the always-allowed ones: failing closed.
    fn resolve(&self, name: &str) -> ProfileRules {
        let (allow_list, verbs): (bool, Vec<String>) = match (builtin(name), self.profiles.get(name)) {
            (Some(verbs), _) => (false, verbs.iter().map(|v| v.to_string()).collect()),
            (None, Some(Profile::Deny(verbs))) => (false, verbs.clone()),
            (None, Some(Profile::Allow(verbs))) => (true, verbs.clone()),
            (None, None) => (true, Vec::new()),
        };
        let verbs = verbs.into_iter().map(|v| v.to_ascii_uppercase()).collect();
        ProfileRules { name: name.to_string(), allow_list, verbs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Net {
        s.parse().unwrap()
    }

    fn facts<'a>(client: &str, server: &str, user: Option<&'a str>) -> Facts<'a> {
        Facts {
            client: client.parse().unwrap(),
            server: server.parse().unwrap(),
            user: user.map(str::as_bytes),
        }
    }

    fn rule(action: Action) -> Rule {
        Rule { action, ..Rule::default() }
    }

    #[test]
    fn net_parses_v4_v6_and_hosts() {
        assert!(net("192.0.2.0/24").contains("192.0.2.200".parse().unwrap()));
        assert!(!net("192.0.2.0/24").contains("192.0.3.1".parse().unwrap()));
        assert!(net("2001:db8::/32").contains("2001:db8:1::5".parse().unwrap()));
        assert!(!net("2001:db8::/32").contains("192.0.2.1".parse().unwrap()));
        assert!(net("192.0.2.7").contains("192.0.2.7".parse().unwrap()));
        assert!(!net("192.0.2.7").contains("192.0.2.8".parse().unwrap()));
        assert!(net("0.0.0.0/0").contains("203.0.113.9".parse().unwrap()));
        assert!(net("::/0").contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn net_v4_mapped_v6_matches_as_v4() {
        assert!(net("192.0.2.0/24").contains("::ffff:192.0.2.9".parse().unwrap()));
        assert!(net("::ffff:192.0.2.0/24").contains("192.0.2.9".parse().unwrap()));
    }

    #[test]
    fn net_refuses_bad_text() {
        for bad in ["192.0.2.0/33", "2001:db8::/129", "192.0.2.0/", "192.0.2.0/+8", "x/8", "192.0.2.0/ 8", ""]
        {
            assert!(bad.parse::<Net>().is_err(), "{bad}");
        }
    }

    #[test]
    fn user_anonymous_group_matches_anonymous_and_ftp_any_case() {
        let anon = UserMatch::Anonymous;
        for u in ["anonymous", "ANONYMOUS", "ftp", "Ftp"] {
            assert!(anon.matches(u.as_bytes()), "{u}");
        }
        assert!(!anon.matches(b"anna"));
        let anna = UserMatch::Name("anna".into());
        assert!(anna.matches(b"anna"));
        assert!(!anna.matches(b"Anna"));
        assert!(!anna.matches(b"anna "));
    }

    #[test]
    fn default_policy_allows_everything_with_no_profile() {
        let p = PolicySet::default();
        assert_eq!(p.admit("192.0.2.1".parse().unwrap(), "198.51.100.1:21".parse().unwrap()), Ok(()));
        let d = p.decide(&facts("192.0.2.1", "198.51.100.1:21", Some("root")));
        assert_eq!(d.action, Action::Allow);
        assert_eq!(d.rule, RuleRef::Default);
        for verb in ["STOR", "SITE", "DELE", "XYZ"] {
            assert_eq!(d.check(verb.as_bytes()), Verdict::Pass);
        }
    }

    #[test]
    fn first_matching_rule_decides() {
        let p = PolicySet {
            rules: vec![
                Rule { client: vec![net("192.0.2.0/24")], ..rule(Action::Deny) },
                Rule { client: vec![net("192.0.2.0/16")], name: Some("wide".into()), ..rule(Action::Allow) },
            ],
            default: Action::Deny,
            ..PolicySet::default()
        };
        let d = p.decide(&facts("192.0.2.5", "198.51.100.1:21", None));
        assert_eq!((d.action, d.rule), (Action::Deny, RuleRef::Rule { index: 0, name: None }));
        let d = p.decide(&facts("192.0.3.5", "198.51.100.1:21", None));
        assert_eq!(d.action, Action::Allow);
        assert_eq!(d.rule.to_string(), "wide");
        let d = p.decide(&facts("203.0.113.5", "198.51.100.1:21", None));
        assert_eq!((d.action, d.rule), (Action::Deny, RuleRef::Default));
    }

    #[test]
    fn server_network_and_port_conditions() {
        let p = PolicySet {
            rules: vec![Rule { server: vec![net("198.51.100.0/24")], port: vec![21], ..rule(Action::Deny) }],
            ..PolicySet::default()
        };
        let c = "192.0.2.1".parse().unwrap();
        assert!(p.admit(c, "198.51.100.1:21".parse().unwrap()).is_err());
        assert!(p.admit(c, "198.51.100.1:2121".parse().unwrap()).is_ok());
        assert!(p.admit(c, "203.0.113.1:21".parse().unwrap()).is_ok());
    }

    #[test]
    fn user_rules_match_only_once_user_is_known() {
        let p = PolicySet {
            rules: vec![Rule { user: vec![UserMatch::Name("bob".into())], ..rule(Action::Deny) }],
            ..PolicySet::default()
        };
        assert_eq!(p.decide(&facts("192.0.2.1", "198.51.100.1:21", None)).action, Action::Allow);
        assert_eq!(p.decide(&facts("192.0.2.1", "198.51.100.1:21", Some("bob"))).action, Action::Deny);
        assert_eq!(p.decide(&facts("192.0.2.1", "198.51.100.1:21", Some("bobby"))).action, Action::Allow);
    }

    #[test]
    fn admit_refuses_only_when_every_user_would_be_refused() {
        let c: IpAddr = "192.0.2.1".parse().unwrap();
        let s: SocketAddr = "198.51.100.1:21".parse().unwrap();
        // An allow for some user before the deny: the USER decides.
        let p = PolicySet {
            rules: vec![
                Rule { user: vec![UserMatch::Name("ops".into())], ..rule(Action::Allow) },
                Rule { client: vec![net("192.0.2.0/24")], ..rule(Action::Deny) },
            ],
            ..PolicySet::default()
        };
        assert_eq!(p.admit(c, s), Ok(()));
        assert_eq!(p.decide(&facts("192.0.2.1", "198.51.100.1:21", None)).action, Action::Deny);
        assert_eq!(p.decide(&facts("192.0.2.1", "198.51.100.1:21", Some("ops"))).action, Action::Allow);
        // A deny for some user first changes nothing for the others.
        let p = PolicySet {
            rules: vec![
                Rule { user: vec![UserMatch::Anonymous], ..rule(Action::Deny) },
                Rule { client: vec![net("192.0.2.0/24")], name: Some("lab".into()), ..rule(Action::Deny) },
            ],
            ..PolicySet::default()
        };
        assert_eq!(p.admit(c, s).unwrap_err().to_string(), "lab");
        let p = PolicySet { default: Action::Deny, ..PolicySet::default() };
        assert_eq!(p.admit(c, s), Err(RuleRef::Default));
    }

    #[test]
    fn read_only_refuses_writes_with_550_and_passes_reads() {
        let p = PolicySet {
            rules: vec![Rule { profile: Some("read-only".into()), ..rule(Action::Allow) }],
            ..PolicySet::default()
        };
        let d = p.decide(&facts("192.0.2.1", "198.51.100.1:21", Some("anna")));
        for verb in READ_ONLY {
            assert_eq!(d.check(verb.as_bytes()), Verdict::Refused, "{verb}");
            assert_eq!(d.check(verb.to_ascii_lowercase().as_bytes()), Verdict::Refused, "{verb}");
        }
        for verb in ["RETR", "LIST", "CWD", "PASV", "PORT", "USER", "QUIT", "SIZE"] {
            assert_eq!(d.check(verb.as_bytes()), Verdict::Pass, "{verb}");
        }
    }

    #[test]
    fn allow_list_profile_502_for_verbs_it_does_not_know() {
        let p = PolicySet {
            rules: vec![Rule { profile: Some("fetch".into()), ..rule(Action::Allow) }],
            profiles: BTreeMap::from([("fetch".into(), Profile::Allow(vec!["retr".into(), "PASV".into()]))]),
            ..PolicySet::default()
        };
        p.validate().unwrap();
        let d = p.decide(&facts("192.0.2.1", "198.51.100.1:21", None));
        assert_eq!(d.check(b"RETR"), Verdict::Pass);
        assert_eq!(d.check(b"pasv"), Verdict::Pass);
        assert_eq!(d.check(b"STOR"), Verdict::Unknown);
        assert_eq!(d.check(b"USER"), Verdict::Pass);
        assert_eq!(d.check(b"QUIT"), Verdict::Pass);
    }

    #[test]
    fn deny_decision_passes_only_user_and_quit() {
        let p = PolicySet { default: Action::Deny, ..PolicySet::default() };
        let d = p.decide(&facts("192.0.2.1", "198.51.100.1:21", None));
        assert_eq!(d.check(b"user"), Verdict::Pass);
        assert_eq!(d.check(b"QUIT"), Verdict::Pass);
        for verb in ["PASS", "RETR", "FEAT", "ABOR", "PORT"] {
            assert_eq!(d.check(verb.as_bytes()), Verdict::NotAllowed, "{verb}");
        }
    }

    #[test]
    fn policy_table_from_toml() {
        let text = r#"
            default = "deny"
            [[rule]]
            name = "labs"
            client = ["192.0.2.0/24", "2001:db8:1::/48"]
            server = ["198.51.100.10"]
            port = [21, 2121]
            user = ["anonymous", "anna"]
            action = "allow"
            profile = "fetch-only"
            server-data = "passive"
            [[rule]]
            server = ["203.0.113.0/24"]
            action = "allow"
            server-data = "active"
            [[rule]]
            action = "deny"
            [profile.fetch-only]
            allow = ["RETR", "LIST"]
        "#;
        let p: PolicySet = toml::from_str(text).unwrap();
        p.validate().unwrap();
        assert_eq!(p.default, Action::Deny);
        assert_eq!(p.rules.len(), 3);
        assert_eq!(p.rules[1].server_data, ServerData::Active);
        let r = &p.rules[0];
        assert_eq!(r.user, vec![UserMatch::Anonymous, UserMatch::Name("anna".into())]);
        assert_eq!((r.port.clone(), r.server_data), (vec![21, 2121], ServerData::Passive));
        assert_eq!(p.profiles["fetch-only"], Profile::Allow(vec!["RETR".into(), "LIST".into()]));
        let d = p.decide(&facts("2001:db8:1::9", "[::ffff:198.51.100.10]:2121", Some("ftp")));
        assert_eq!(d.rule.to_string(), "labs");
        assert_eq!(d.check(b"STOR"), Verdict::Unknown);
    }

    #[test]
    fn policy_toml_errors_say_what_is_wrong() {
        let e = toml::from_str::<PolicySet>("[[rule]]\nclient = [\"192.0.2.0/33\"]\naction = \"deny\"")
            .unwrap_err();
        assert!(e.to_string().contains("'192.0.2.0/33' is not a network"), "{e}");
        let e = toml::from_str::<PolicySet>("[[rule]]\naction = \"drop\"").unwrap_err();
        assert!(e.to_string().contains("drop"), "{e}");
        let e = toml::from_str::<PolicySet>("[[rule]]\nclients = []\naction = \"deny\"").unwrap_err();
        assert!(e.to_string().contains("clients"), "{e}");
        assert!(toml::from_str::<PolicySet>("[[rule]]\nclient = []").is_err(), "action is required");
        assert_eq!(toml::from_str::<PolicySet>("").unwrap(), PolicySet::default());
    }

    #[test]
    fn validate_names_the_rule_and_what_to_do() {
        let p = PolicySet {
            rules: vec![Rule { profile: Some("nope".into()), ..rule(Action::Allow) }],
            ..PolicySet::default()
        };
        let e = p.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "rule 1: profile 'nope' is not defined: use read-only, no-site, or define [policy.profile.nope]"
        );
        let p = PolicySet {
            profiles: BTreeMap::from([("read-only".into(), Profile::Deny(vec![]))]),
            ..PolicySet::default()
        };
        assert!(matches!(p.validate(), Err(PolicyError::BuiltinRedefined { .. })));
        let p = PolicySet {
            profiles: BTreeMap::from([("x".into(), Profile::Deny(vec!["ST OR".into()]))]),
            ..PolicySet::default()
        };
        assert!(matches!(p.validate(), Err(PolicyError::BadVerb { .. })));
    }
}
