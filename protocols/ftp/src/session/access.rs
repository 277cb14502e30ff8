//! The access rules and command profiles inside a session: which USER the
//! server may hear of, and which commands may reach it at all.
//!
//! Read first: `crate::rules` (the pure decisions), RFC 959 §5.4 (the
//! replies a refused command may get), LIFECYCLE.md "Policy".
//!
//! The session holds the [`Decision`] in force: the one made for its
//! addresses at its start, replaced at every USER the rules allow, and
//! back to the start's after a REIN. Every command goes through
//! [`Session::policy_admits`] before the gateway's own protocol rules,
//! which apply whatever a profile allows.
//!
//! A reload ([`Input::PolicyChanged`](super::Input::PolicyChanged)) makes
//! the decision again from the same facts (addresses, the USER in force),
//! between two commands: the next command is judged by the new rules. A
//! data channel already being set up keeps its mode (its state carries it);
//! the next PORT/PASV gets the new `server-data`. When the new rules deny
//! the session's addresses outright (as [`rules::PolicySet::admit`] would
//! at connect time), the next command gets `421` and the session ends once
//! every reply owed before it is out and no transfer runs: a running
//! transfer is never cut, and the session ends as a connection refused at
//! connect time would have, with one audit record naming the rule.

use std::sync::Arc;

use super::{printable, Action, Session};
use crate::audit::{AuditEvent, PolicyStage};
use crate::command::Command;
use crate::rules::{self, Decision, Facts, PolicySet, RuleRef, Verdict};

const REPLY_USER_DENIED: &str = "530 ftpgate: user denied by policy.\r\n";
const REPLY_RELOAD_DENIED: &str = "421 ftpgate: session denied by the reloaded policy; closing.\r\n";
const REPLY_SESSION_DENIED: &str = "530 ftpgate: denied by policy; send USER.\r\n";
const REPLY_USER_FIRST: &str = "503 Login with USER first.\r\n";

impl Session {
    /// The decision for this session's addresses and `user`.
    pub(super) fn policy_decision(&self, user: Option<&[u8]>) -> Decision {
        let facts = Facts { client: self.ends.client.ip(), server: self.ends.server, user };
        self.config.policy.decide(&facts)
    }

    /// May this command go on to the protocol rules and the server? If
    /// not, it is answered here and audited. A USER the rules allow makes
    /// its decision the one in force.
    pub(super) fn policy_admits(&mut self, line: &[u8], cmd: &Command<'_>) -> bool {
        let verb = verb_of(line);
        if std::mem::take(&mut self.revoked) {
            self.end_by_policy(verb);
            return false;
        }
        match *cmd {
            Command::User(name) => {
                let decision = self.policy_decision(Some(name));
                if decision.action == rules::Action::Deny {
                    // The server never hears the name; the PASS that
                    // follows is answered here too, so neither is the
                    // password.
                    self.user_denied = true;
                    self.policy_denied(PolicyStage::User, &decision, Some(name), None);
                    self.reply_local(REPLY_USER_DENIED);
                    return false;
                }
                self.user_denied = false;
                self.decision = decision;
                self.policy_user = Some(name.into());
                true
            }
            Command::Pass if self.user_denied => {
                self.reply_local(REPLY_USER_FIRST);
                false
            }
            _ => {
                // `MDTM YYYYMMDDHHMMSS path` sets the time where a server
                // allows it (vsftpd's mdtm_write): judged as MFMT is.
                let judged: &[u8] = if sets_time(line) { b"MFMT" } else { verb };
                let reply = match self.decision.check(judged) {
                    Verdict::Pass => return true,
                    Verdict::NotAllowed => REPLY_SESSION_DENIED.to_string(),
                    Verdict::Refused => format!("550 ftpgate: {} denied by policy.\r\n", upper(verb)),
                    Verdict::Unknown => format!("502 ftpgate: {} not allowed by policy.\r\n", upper(verb)),
                };
                let decision = self.decision.clone();
                self.policy_denied(PolicyStage::Command, &decision, None, Some(verb));
                self.reply_local(&reply);
                false
            }
        }
    }

    /// New rules from a reload: decide again for this session's facts.
    /// Only the next command sees the change; nothing running is touched.
    pub(super) fn policy_changed(&mut self, policy: &Arc<PolicySet>) {
        Arc::make_mut(&mut self.config).policy = Arc::clone(policy);
        if self.closing_by_policy {
            // Already ending: a later reload does not take the 421 back.
            return;
        }
        self.revoked = policy.admit(self.ends.client.ip(), self.ends.server).is_err();
        let user = self.policy_user.clone();
        self.decision = self.policy_decision(user.as_deref());
    }

    /// The first command after a reload that denies the session's
    /// addresses: `421`, in order behind the replies still owed, one audit
    /// record, and no more client lines; `pump` ends the session once
    /// nothing is owed and no transfer runs.
    fn end_by_policy(&mut self, verb: &[u8]) {
        let rule = match self.config.policy.admit(self.ends.client.ip(), self.ends.server) {
            Err(rule) => rule,
            // Cannot happen: `revoked` is set with these rules in force.
            Ok(()) => RuleRef::Default,
        };
        let user = self.login.user.clone();
        self.actions.push_back(Action::Audit(AuditEvent::PolicyDenied {
            stage: PolicyStage::Reload,
            rule: rule.to_string(),
            user,
            verb: Some(upper(verb)),
            profile: None,
        }));
        self.reply_local(REPLY_RELOAD_DENIED);
        self.closing_by_policy = true;
    }

    /// FTPS pass-through hides every later command: allowed only while
    /// nothing the policy says depends on reading them (no profile or
    /// conversion in force, and no rule a later USER could select).
    pub(super) fn policy_allows_blind(&self) -> bool {
        self.decision.profile.is_none()
            && self.decision.server_data == rules::ServerData::Keep
            && self.config.policy.rules.iter().all(|r| r.user.is_empty())
    }

    fn policy_denied(&mut self, stage: PolicyStage, d: &Decision, user: Option<&[u8]>, verb: Option<&[u8]>) {
        let user = user.map(|u| printable(u, 64)).or_else(|| self.login.user.clone());
        self.actions.push_back(Action::Audit(AuditEvent::PolicyDenied {
            stage,
            rule: d.rule.to_string(),
            user,
            verb: verb.map(upper),
            profile: d.profile.as_ref().filter(|_| d.action == rules::Action::Allow).map(|p| p.name.clone()),
        }));
    }
}

/// The verb of a line that parsed as a command: 3 or 4 letters up to the
/// first space.
fn verb_of(line: &[u8]) -> &[u8] {
    let end = line.iter().position(|&b| b == b' ').unwrap_or(line.len()).min(4);
    &line[..end]
}

/// Whether `line` is MDTM's setting form: a 14-digit time (with optional
/// fraction) and then a path.
fn sets_time(line: &[u8]) -> bool {
    let Some(arg) = line.get(5..).filter(|_| line.len() > 5 && line[..5].eq_ignore_ascii_case(b"MDTM "))
    else {
        return false;
    };
    let digits = arg.iter().take_while(|b| b.is_ascii_digit()).count();
    let mut rest = &arg[digits..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        rest = &fraction[fraction.iter().take_while(|b| b.is_ascii_digit()).count()..];
    }
    digits == 14 && rest.first() == Some(&b' ')
}

fn upper(verb: &[u8]) -> String {
    printable(verb, 4).to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::super::{Action, ControlEnds, DataId, Input, Session, Side};
    use crate::audit::{AuditEvent, PolicyStage};
    use crate::policy::Config;
    use crate::rules::PolicySet;

    fn session(policy: &str) -> Session {
        session_with(policy, Config::default())
    }

    fn session_with(policy: &str, config: Config) -> Session {
        let policy: PolicySet = toml::from_str(policy).unwrap();
        policy.validate().unwrap();
        let config = Config { policy: Arc::new(policy), ..config };
        let ends = ControlEnds {
            client: "192.0.2.10:40000".parse().unwrap(),
            server: "198.51.100.10:21".parse().unwrap(),
        };
        let mut s = Session::new(Arc::new(config), ends, Instant::now());
        feed(&mut s, Side::Server, b"220 ready\r\n");
        take(&mut s, Side::Client);
        s
    }

    fn feed(s: &mut Session, from: Side, data: &[u8]) -> Vec<AuditEvent> {
        s.handle_input(Instant::now(), Input::Received { from, data });
        std::iter::from_fn(|| s.poll_action())
            .filter_map(|a| match a {
                Action::Audit(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    fn take(s: &mut Session, side: Side) -> String {
        let out = String::from_utf8_lossy(s.pending(side)).into_owned();
        s.consume(side, out.len());
        out
    }

    const BOB_DENIED: &str = "[[rule]]\nname = \"no-bob\"\nuser = [\"bob\"]\naction = \"deny\"\n";

    #[test]
    fn relaying_denied_user_530_server_never_hears_name_or_password() {
        let mut s = session(BOB_DENIED);
        let audits = feed(&mut s, Side::Client, b"USER bob\r\nPASS secret\r\n");
        assert_eq!(
            take(&mut s, Side::Client),
            "530 ftpgate: user denied by policy.\r\n503 Login with USER first.\r\n"
        );
        assert_eq!(take(&mut s, Side::Server), "");
        assert_eq!(
            audits,
            vec![AuditEvent::PolicyDenied {
                stage: PolicyStage::User,
                rule: "no-bob".into(),
                user: Some("bob".into()),
                verb: None,
                profile: None,
            }]
        );
        // The session stays open for another USER.
        feed(&mut s, Side::Client, b"USER anna\r\nPASS pw\r\n");
        assert_eq!(take(&mut s, Side::Server), "USER anna\r\nPASS pw\r\n");
        let audits = feed(&mut s, Side::Server, b"331 pw\r\n230 ok\r\n");
        assert_eq!(take(&mut s, Side::Client), "331 pw\r\n230 ok\r\n");
        assert_eq!(audits, vec![AuditEvent::LoggedIn { user: "anna".into() }]);
        assert!(!s.is_closed());
    }

    /// Logged in as anonymous (`ftp`) under the read-only profile, both
    /// sides' output taken.
    fn read_only_logged_in() -> Session {
        let mut s =
            session("[[rule]]\nuser = [\"anonymous\"]\naction = \"allow\"\nprofile = \"read-only\"\n");
        feed(&mut s, Side::Client, b"USER ftp\r\n");
        feed(&mut s, Side::Server, b"230 ok\r\n");
        take(&mut s, Side::Server);
        take(&mut s, Side::Client);
        s
    }

    #[test]
    fn relaying_read_only_stor_550_never_forwarded_retr_passes() {
        let mut s = read_only_logged_in();
        let audits = feed(&mut s, Side::Client, b"STOR x\r\nDELE y\r\nsite chmod 777 z\r\nRETR f\r\n");
        assert_eq!(take(&mut s, Side::Server), "RETR f\r\n");
        assert_eq!(take(&mut s, Side::Client), "550 ftpgate: STOR denied by policy.\r\n550 ftpgate: DELE denied by policy.\r\n550 ftpgate: SITE denied by policy.\r\n");
        assert_eq!(audits.len(), 3);
        assert!(matches!(
            &audits[0],
            AuditEvent::PolicyDenied { stage: PolicyStage::Command, rule, user: Some(u), verb: Some(v), profile: Some(p) }
                if rule == "rule 1" && u == "ftp" && v == "STOR" && p == "read-only"
        ));
    }

    #[test]
    fn relaying_read_only_refuses_mdtm_that_sets_a_time_passes_mdtm_that_reads_one() {
        let mut s = read_only_logged_in();
        feed(
            &mut s,
            Side::Client,
            b"MDTM 20260101000000 f\r\nmdtm 20260101000000.123 g\r\nMFMT 20260101000000 f\r\nMDTM 20260101000000\r\nMDTM f\r\nMDTM 2026 f\r\n",
        );
        assert_eq!(take(&mut s, Side::Server), "MDTM 20260101000000\r\nMDTM f\r\nMDTM 2026 f\r\n");
        assert_eq!(
            take(&mut s, Side::Client),
            "550 ftpgate: MDTM denied by policy.\r\n550 ftpgate: MDTM denied by policy.\r\n550 ftpgate: MFMT denied by policy.\r\n"
        );
    }

    #[test]
    fn relaying_local_policy_replies_keep_command_order() {
        let mut s = session("[[rule]]\naction = \"allow\"\nprofile = \"no-site\"\n");
        feed(&mut s, Side::Client, b"PWD\r\nSITE x\r\nSYST\r\n");
        assert_eq!(take(&mut s, Side::Server), "PWD\r\nSYST\r\n");
        assert_eq!(take(&mut s, Side::Client), "");
        feed(&mut s, Side::Server, b"257 \"/\"\r\n215 UNIX\r\n");
        assert_eq!(
            take(&mut s, Side::Client),
            "257 \"/\"\r\n550 ftpgate: SITE denied by policy.\r\n215 UNIX\r\n"
        );
    }

    #[test]
    fn relaying_user_allowed_by_its_rule_after_a_deny_for_the_network() {
        let policy = "[[rule]]\nuser = [\"ops\"]\naction = \"allow\"\n[[rule]]\nclient = [\"192.0.2.0/24\"]\naction = \"deny\"\n";
        let mut s = session(policy);
        // Before USER nothing but USER and QUIT passes.
        feed(&mut s, Side::Client, b"FEAT\r\nUSER anna\r\nPASS x\r\n");
        assert_eq!(take(&mut s, Side::Server), "");
        assert_eq!(
            take(&mut s, Side::Client),
            "530 ftpgate: denied by policy; send USER.\r\n530 ftpgate: user denied by policy.\r\n503 Login with USER first.\r\n"
        );
        feed(&mut s, Side::Client, b"USER ops\r\nPASS x\r\n");
        assert_eq!(take(&mut s, Side::Server), "USER ops\r\nPASS x\r\n");
    }

    #[test]
    fn logged_in_rein_returns_to_the_decision_before_user() {
        let policy = "[[rule]]\nuser = [\"ops\"]\naction = \"allow\"\n[[rule]]\naction = \"deny\"\n";
        let mut s = session(policy);
        feed(&mut s, Side::Client, b"USER ops\r\n");
        feed(&mut s, Side::Server, b"230 ok\r\n");
        feed(&mut s, Side::Client, b"REIN\r\n");
        feed(&mut s, Side::Server, b"220 again\r\n");
        take(&mut s, Side::Server);
        take(&mut s, Side::Client);
        feed(&mut s, Side::Client, b"LIST\r\n");
        assert_eq!(take(&mut s, Side::Server), "");
        assert_eq!(take(&mut s, Side::Client), "530 ftpgate: denied by policy; send USER.\r\n");
    }

    #[test]
    fn relaying_profile_allows_port_gateway_rules_still_refuse_bounce() {
        let mut s = session("[[rule]]\naction = \"allow\"\nprofile = \"no-site\"\n");
        feed(&mut s, Side::Client, b"USER anna\r\n");
        feed(&mut s, Side::Server, b"230 ok\r\n");
        take(&mut s, Side::Server);
        take(&mut s, Side::Client);
        feed(&mut s, Side::Client, b"PORT 203,0,113,5,156,64\r\n");
        assert_eq!(take(&mut s, Side::Server), "");
        assert!(take(&mut s, Side::Client).starts_with("501 "));
    }

    #[test]
    fn relaying_policy_denials_neither_count_nor_end_a_refused_run() {
        let config = Config { max_refused_lines: 3, ..Config::default() };
        let mut s = session_with("[[rule]]\naction = \"allow\"\nprofile = \"no-site\"\n", config);
        // Five denied commands: no 421, the session goes on.
        let audits = feed(&mut s, Side::Client, b"SITE a\r\nSITE b\r\nSITE c\r\nSITE d\r\nSITE e\r\n");
        assert_eq!(audits.len(), 5);
        assert!(!s.is_closed());
        // A refused line, a denial, a refused line: one run of two.
        let audits = feed(&mut s, Side::Client, b"LPSV\r\nSITE f\r\nLPSV\r\nNOOP\r\n");
        assert!(matches!(&audits[0], AuditEvent::PolicyDenied { .. }), "{audits:?}");
        assert!(matches!(&audits[1], AuditEvent::RefusedLines { count: 2, .. }), "{audits:?}");
        assert_eq!(take(&mut s, Side::Server), "NOOP\r\n");
        // Interleaved denials do not dodge the cap on refused lines.
        feed(&mut s, Side::Client, b"LPSV\r\nSITE g\r\nLPSV\r\nSITE h\r\nLPSV\r\n");
        assert!(take(&mut s, Side::Client).ends_with("421 ftpgate: too many refused commands; closing.\r\n"));
    }

    #[test]
    fn relaying_ftps_pass_through_refused_while_the_policy_judges_commands() {
        let ftps = || Config { ftps: crate::policy::FtpsPolicy::PassThrough, ..Config::default() };
        for policy in [
            "[[rule]]\naction = \"allow\"\nprofile = \"no-site\"\n",
            "[[rule]]\naction = \"allow\"\nserver-data = \"passive\"\n",
            "[[rule]]\nuser = [\"root\"]\naction = \"deny\"\n",
        ] {
            let mut s = session_with(policy, ftps());
            feed(&mut s, Side::Client, b"AUTH TLS\r\n");
            assert_eq!(take(&mut s, Side::Server), "", "{policy}");
            assert!(take(&mut s, Side::Client).starts_with("534 "), "{policy}");
        }
        let mut s = session_with("[[rule]]\nclient = [\"203.0.113.0/24\"]\naction = \"deny\"\n", ftps());
        feed(&mut s, Side::Client, b"AUTH TLS\r\n");
        assert_eq!(take(&mut s, Side::Server), "AUTH TLS\r\n");
    }

    fn reload(s: &mut Session, policy: &str) -> Vec<AuditEvent> {
        let policy: PolicySet = toml::from_str(policy).unwrap();
        policy.validate().unwrap();
        s.handle_input(Instant::now(), Input::PolicyChanged { policy: &Arc::new(policy) });
        std::iter::from_fn(|| s.poll_action())
            .filter_map(|a| match a {
                Action::Audit(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    fn step(s: &mut Session, input: Input<'_>) -> Vec<Action> {
        s.handle_input(Instant::now(), input);
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    fn logged_in(policy: &str) -> Session {
        let mut s = session(policy);
        feed(&mut s, Side::Client, b"USER anna\r\n");
        feed(&mut s, Side::Server, b"230 ok\r\n");
        take(&mut s, Side::Server);
        take(&mut s, Side::Client);
        s
    }

    /// A RETR through a passive channel, relaying, its 226 held.
    fn relaying_retr(s: &mut Session) -> DataId {
        let d = DataId(0);
        feed(s, Side::Client, b"PASV\r\nRETR big\r\n");
        feed(s, Side::Server, b"227 Entering Passive Mode (198,51,100,10,117,48).\r\n");
        step(s, Input::Listening { data: d, local: "198.51.100.10:30000".parse().unwrap() });
        step(s, Input::Accepted { data: d, peer: "192.0.2.10:50000".parse().unwrap() });
        step(s, Input::Connected { data: d, local: "192.0.2.10:50001".parse().unwrap() });
        feed(s, Side::Server, b"150 here\r\n226 done\r\n");
        assert_eq!(take(s, Side::Server), "PASV\r\nRETR big\r\n");
        take(s, Side::Client);
        d
    }

    const ACTIVE: &str = "[[rule]]\naction = \"allow\"\nserver-data = \"active\"\n";
    const NO_TEST_NET: &str =
        "[[rule]]\nname = \"no-test-net\"\nclient = [\"192.0.2.0/24\"]\naction = \"deny\"\n";

    #[test]
    fn relaying_reload_read_only_next_stor_550_retr_passes() {
        let mut s = logged_in("");
        feed(&mut s, Side::Client, b"DELE a\r\n");
        assert_eq!(take(&mut s, Side::Server), "DELE a\r\n");
        feed(&mut s, Side::Server, b"250 gone\r\n");
        take(&mut s, Side::Client);
        assert_eq!(reload(&mut s, "[[rule]]\naction = \"allow\"\nprofile = \"read-only\"\n"), []);
        let audits = feed(&mut s, Side::Client, b"STOR x\r\nRETR f\r\n");
        assert_eq!(take(&mut s, Side::Server), "RETR f\r\n");
        assert_eq!(take(&mut s, Side::Client), "550 ftpgate: STOR denied by policy.\r\n");
        assert!(matches!(&audits[..], [AuditEvent::PolicyDenied { stage: PolicyStage::Command, .. }]));
    }

    #[test]
    fn relaying_reload_denying_the_network_running_transfer_ends_ok_then_421_and_close() {
        let mut s = logged_in("");
        let d = relaying_retr(&mut s);
        // The reload itself touches nothing running.
        assert_eq!(reload(&mut s, NO_TEST_NET), []);
        assert_eq!(step(&mut s, Input::Progress { data: d, to_client: 10, to_server: 0 }), []);
        // The next command: refused, judged now, answered in order.
        let audits = feed(&mut s, Side::Client, b"NOOP\r\nLIST\r\n");
        assert_eq!(take(&mut s, Side::Server), "");
        assert_eq!(take(&mut s, Side::Client), "", "the 226 is owed first");
        assert_eq!(
            audits,
            vec![AuditEvent::PolicyDenied {
                stage: PolicyStage::Reload,
                rule: "no-test-net".into(),
                user: Some("anna".into()),
                verb: Some("NOOP".into()),
                profile: None,
            }]
        );
        assert!(!s.is_closed());
        assert_eq!(s.read_budget(Side::Client), 0, "no client line is read any more");
        let actions = step(&mut s, Input::Relayed { data: d, to_client: 1000, to_server: 0 });
        assert_eq!(
            take(&mut s, Side::Client),
            "226 done\r\n421 ftpgate: session denied by the reloaded policy; closing.\r\n"
        );
        let transfer = actions.iter().find_map(|a| match a {
            Action::Audit(AuditEvent::Transfer { result, .. }) => Some(*result),
            _ => None,
        });
        assert_eq!(transfer, Some(crate::audit::TransferResult::Ok));
        assert!(actions.contains(&Action::Shutdown { side: Side::Client }));
        assert!(actions.iter().any(|a| matches!(
            a,
            Action::Audit(AuditEvent::SessionEnded { reason: "denied by the reloaded policy", .. })
        )));
        assert!(s.is_closed());
    }

    #[test]
    fn relaying_reload_denying_the_network_idle_session_next_command_421_and_close() {
        let mut s = logged_in("");
        reload(&mut s, NO_TEST_NET);
        let actions = step(&mut s, Input::Received { from: Side::Client, data: b"QUIT\r\n" });
        assert_eq!(take(&mut s, Side::Server), "");
        assert_eq!(
            take(&mut s, Side::Client),
            "421 ftpgate: session denied by the reloaded policy; closing.\r\n"
        );
        assert_eq!(
            actions.iter().filter(|a| matches!(a, Action::Audit(AuditEvent::PolicyDenied { .. }))).count(),
            1
        );
        assert!(s.is_closed());
    }

    #[test]
    fn relaying_reload_denying_then_allowing_before_a_command_changes_nothing() {
        let mut s = logged_in("");
        reload(&mut s, NO_TEST_NET);
        reload(&mut s, "");
        assert_eq!(feed(&mut s, Side::Client, b"NOOP\r\n"), []);
        assert_eq!(take(&mut s, Side::Server), "NOOP\r\n");
    }

    #[test]
    fn relaying_reload_denying_the_user_530_another_user_may_follow() {
        let mut s = logged_in("");
        let audits = reload(&mut s, "[[rule]]\nname = \"no-anna\"\nuser = [\"anna\"]\naction = \"deny\"\n");
        assert_eq!(audits, []);
        let audits = feed(&mut s, Side::Client, b"LIST\r\nUSER bob\r\n");
        assert_eq!(take(&mut s, Side::Client), "530 ftpgate: denied by policy; send USER.\r\n");
        assert_eq!(take(&mut s, Side::Server), "USER bob\r\n");
        assert!(matches!(
            &audits[..],
            [AuditEvent::PolicyDenied { stage: PolicyStage::Command, rule, .. }] if rule == "no-anna"
        ));
        assert!(!s.is_closed());
    }

    #[test]
    fn relaying_reload_decides_again_for_the_user_in_force() {
        // ops may write, everyone else is read-only; a reload that keeps
        // the rules keeps ops's decision, one that drops ops's rule does not.
        let both = "[[rule]]\nuser = [\"ops\"]\naction = \"allow\"\n[[rule]]\naction = \"allow\"\nprofile = \"read-only\"\n";
        let mut s = session(both);
        feed(&mut s, Side::Client, b"USER ops\r\n");
        feed(&mut s, Side::Server, b"230 ok\r\n");
        take(&mut s, Side::Server);
        take(&mut s, Side::Client);
        reload(&mut s, both);
        feed(&mut s, Side::Client, b"DELE a\r\n");
        assert_eq!(take(&mut s, Side::Server), "DELE a\r\n");
        feed(&mut s, Side::Server, b"250 ok\r\n");
        take(&mut s, Side::Client);
        reload(&mut s, "[[rule]]\naction = \"allow\"\nprofile = \"read-only\"\n");
        feed(&mut s, Side::Client, b"DELE a\r\n");
        assert_eq!(take(&mut s, Side::Server), "");
        assert_eq!(take(&mut s, Side::Client), "550 ftpgate: DELE denied by policy.\r\n");
    }

    #[test]
    fn converting_reload_to_keep_mid_setup_finishes_converted_next_port_listens() {
        let mut s = logged_in("[[rule]]\naction = \"allow\"\nserver-data = \"passive\"\n");
        feed(&mut s, Side::Client, b"PORT 192,0,2,10,156,64\r\n");
        assert_eq!(take(&mut s, Side::Server), "PASV\r\n");
        reload(&mut s, "");
        let actions = step(
            &mut s,
            Input::Received {
                from: Side::Server,
                data: b"227 Entering Passive Mode (198,51,100,10,117,48).\r\n",
            },
        );
        assert!(actions.iter().any(|a| matches!(a, Action::Dial { leg: Side::Server, .. })), "{actions:?}");
        assert_eq!(take(&mut s, Side::Client), "200 PORT command successful.\r\n");
        // The next PORT is the new rule's: a listener on the client's address.
        let actions =
            step(&mut s, Input::Received { from: Side::Client, data: b"PORT 192,0,2,10,156,65\r\n" });
        assert!(
            actions.iter().any(|a| matches!(a, Action::Listen { peer: Side::Server, .. })),
            "{actions:?}"
        );
    }

    /// Found by the `session` fuzz target (seed
    /// `crash-reload-deny-held-conversion-regression`): a PORT held until
    /// its listener is up, or a converted PASV whose PORT to the server
    /// waits for its listener, must not reach the server once a reload
    /// denied the session's network. The client gets 425 for it, then 421.
    #[test]
    fn relaying_reload_denying_the_network_held_port_never_reaches_the_server() {
        for (policy, command) in [("", "PORT 192,0,2,10,156,64\r\n"), (ACTIVE, "PASV\r\n")] {
            let mut s = logged_in(policy);
            let actions = step(&mut s, Input::Received { from: Side::Client, data: command.as_bytes() });
            let local = actions
                .iter()
                .find_map(|a| match a {
                    Action::Listen { local, .. } => Some(*local),
                    _ => None,
                })
                .expect("a listener first");
            reload(&mut s, NO_TEST_NET);
            let local = if local.port() == 0 { "192.0.2.10:40100".parse().unwrap() } else { local };
            let actions = step(&mut s, Input::Listening { data: DataId(0), local });
            assert!(actions.contains(&Action::CloseData { data: DataId(0) }), "{command}: {actions:?}");
            assert_eq!(take(&mut s, Side::Server), "", "{command}");
            assert!(take(&mut s, Side::Client).starts_with("425 "), "{command}");
            feed(&mut s, Side::Client, b"NOOP\r\n");
            assert_eq!(take(&mut s, Side::Server), "", "{command}");
            assert!(take(&mut s, Side::Client).starts_with("421 "), "{command}");
        }
    }

    #[test]
    fn passive_reload_to_active_mid_setup_finishes_as_asked_next_pasv_converted() {
        let mut s = logged_in("");
        feed(&mut s, Side::Client, b"PASV\r\n");
        assert_eq!(take(&mut s, Side::Server), "PASV\r\n");
        reload(&mut s, "[[rule]]\naction = \"allow\"\nserver-data = \"active\"\n");
        // The PASV already out is the server's: its 227 opens the usual listener.
        let actions = step(
            &mut s,
            Input::Received {
                from: Side::Server,
                data: b"227 Entering Passive Mode (198,51,100,10,117,48).\r\n",
            },
        );
        assert!(
            actions.iter().any(
                |a| matches!(a, Action::Listen { peer: Side::Client, local, .. } if local.port() == 30000)
            ),
            "{actions:?}"
        );
        step(&mut s, Input::Listening { data: DataId(0), local: "198.51.100.10:30000".parse().unwrap() });
        assert!(take(&mut s, Side::Client).starts_with("227 "));
        // The next PASV is converted: a listener on the client's address first.
        let actions = step(&mut s, Input::Received { from: Side::Client, data: b"PASV\r\n" });
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Listen { peer: Side::Server, local, .. } if local.port() == 0)),
            "{actions:?}"
        );
        assert_eq!(take(&mut s, Side::Server), "");
    }
}
