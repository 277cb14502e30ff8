//! Least privilege: once the control listeners are bound, the daemon keeps
//! only the two capabilities its data sockets need, as an ordinary user.
//!
//! - CAP_NET_ADMIN: IP_TRANSPARENT on every data listener and on every
//!   connect from a foreign address (ip(7)).
//! - CAP_NET_BIND_SERVICE: an active-mode data connection goes to the client
//!   from the server's own port, usually 20 (RFC 959 §3.2).
//!
//! Two ways in, both ending in the same state (permitted = effective = those
//! two, inheritable and ambient empty, `no_new_privs` set):
//! - started as root with `--user NAME`: narrow the bounding set, keep the
//!   permitted set across setgroups/setgid/setuid (PR_SET_KEEPCAPS), then
//!   narrow permitted and raise effective again;
//! - started as a user that already holds the two capabilities (systemd's
//!   `AmbientCapabilities=`, or file capabilities from `setcap`): check them
//!   before binding, narrow after.
//!
//! Capabilities are per thread: the drop runs while the daemon has one
//! thread, and refuses otherwise. Reading list: capabilities(7),
//! prctl(2) PR_SET_KEEPCAPS / PR_SET_NO_NEW_PRIVS, setresuid(2), setgroups(2).

use std::fmt;

use caps::errors::CapsError;
use caps::{CapSet, Capability, CapsHashSet};
use nix::errno::Errno;
use nix::unistd::{Gid, Group, Uid, User};
use slog::{info, warn, Logger};

/// The capabilities the daemon keeps, and why each one.
pub(crate) const KEPT: [(Capability, &str); 2] = [
    (Capability::CAP_NET_ADMIN, "IP_TRANSPARENT on data sockets"),
    (Capability::CAP_NET_BIND_SERVICE, "active-mode data from the server's port 20"),
];

fn kept() -> CapsHashSet {
    KEPT.iter().map(|&(cap, _)| cap).collect()
}

/// Capability names in a fixed order, for logs and errors.
fn names(set: &CapsHashSet) -> String {
    let mut v: Vec<String> = set.iter().map(ToString::to_string).collect();
    v.sort();
    v.join(",")
}

/// A step of the privilege drop that failed, with what to check.
#[derive(Debug)]
pub(crate) enum PrivilegeError {
    /// `--user NAME` names no user (`error` None), or the lookup failed.
    LookupUser {
        name: String,
        error: Option<Errno>,
    },
    /// `--group NAME` names no group (`error` None), or the lookup failed.
    LookupGroup {
        name: String,
        error: Option<Errno>,
    },
    /// `--user` asks for a change of user, but only root can make it.
    NotRoot {
        user: String,
        uid: u32,
    },
    /// Started unprivileged without a capability the data sockets need.
    MissingCapability {
        cap: Capability,
        why: &'static str,
        uid: u32,
    },
    /// Capabilities are per thread: with more than one thread, a drop in
    /// this one would leave the others privileged.
    Threads(usize),
    SetGroups {
        gid: u32,
        error: Errno,
    },
    SetGid {
        gid: u32,
        error: Errno,
    },
    SetUid {
        uid: u32,
        error: Errno,
    },
    /// A capability set could not be read or changed (`step` says which).
    Caps {
        step: &'static str,
        error: CapsError,
    },
    NoNewPrivs(Errno),
    /// The kernel reports another state than the one the drop asked for.
    Verify {
        what: &'static str,
        want: String,
        got: String,
    },
}

impl fmt::Display for PrivilegeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LookupUser { name, error: None } => {
                write!(f, "--user {name}: no such user (create it, e.g. useradd --system {name})")
            }
            Self::LookupUser { name, error: Some(e) } => write!(f, "--user {name}: user lookup failed: {e}"),
            Self::LookupGroup { name, error: None } => write!(f, "--group {name}: no such group"),
            Self::LookupGroup { name, error: Some(e) } => {
                write!(f, "--group {name}: group lookup failed: {e}")
            }
            Self::NotRoot { user, uid } => write!(
                f,
                "--user {user}: changing user needs root, but ftpgate runs as uid {uid}; \
                 start it as root, or as {user} with the capabilities granted (no --user)"
            ),
            Self::MissingCapability { cap, why, uid } => write!(
                f,
                "{cap} ({why}) is not in the permitted set of uid {uid}: start as root with \
                 --user NAME, or grant it: AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE \
                 in the systemd unit, or setcap cap_net_admin,cap_net_bind_service=ep on the binary"
            ),
            Self::Threads(0) => write!(
                f,
                "cannot read /proc/self/task to check that one thread runs before the privilege drop (is /proc mounted?)"
            ),
            Self::Threads(n) => write!(
                f,
                "cannot drop privileges with {n} threads running: capabilities are per thread"
            ),
            Self::SetGroups { gid, error } => {
                write!(f, "setgroups([]) before switching to gid {gid} failed: {error} (needs CAP_SETGID)")
            }
            Self::SetGid { gid, error } => write!(f, "setresgid({gid}) failed: {error} (needs CAP_SETGID)"),
            Self::SetUid { uid, error } => write!(f, "setresuid({uid}) failed: {error} (needs CAP_SETUID)"),
            Self::Caps { step, error } => write!(f, "{step}: {error}"),
            Self::NoNewPrivs(e) => write!(f, "prctl(PR_SET_NO_NEW_PRIVS) failed: {e}"),
            Self::Verify { what, want, got } => {
                write!(f, "after the privilege drop, {what} is {got}, not {want}")
            }
        }
    }
}

impl std::error::Error for PrivilegeError {}

fn caps_step(step: &'static str) -> impl FnOnce(CapsError) -> PrivilegeError {
    move |error| PrivilegeError::Caps { step, error }
}

/// Who the daemon becomes with `--user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) user: String,
    pub(crate) uid: Uid,
    pub(crate) group: String,
    pub(crate) gid: Gid,
}

/// What to do after the listeners are bound; decided before, so that every
/// mistake of the operator shows before a socket is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Root without `--user`: nothing is dropped (and the log says so).
    StayRoot,
    /// Root with `--user`: switch to the target, keep the two capabilities.
    Switch(Target),
    /// Not root: the two capabilities are there; drop the rest. The target
    /// is the user we already are, named for the log.
    Narrow(Target),
}

/// What the drop did, for the log.
#[derive(Debug)]
pub(crate) struct Dropped {
    pub(crate) target: Target,
    pub(crate) kept: CapsHashSet,
    pub(crate) bounding: CapsHashSet,
}

/// Looks up `--user`/`--group` and checks the capabilities; call before
/// binding anything. Name lookups happen here, while /etc/passwd, NSS
/// modules and their files are still readable.
pub(crate) fn prepare(user: Option<&str>, group: Option<&str>) -> Result<Plan, PrivilegeError> {
    let target = user.map(|name| lookup(name, group)).transpose()?;
    let euid = Uid::effective();
    match target {
        Some(target) if euid.is_root() => Ok(Plan::Switch(target)),
        None if euid.is_root() => Ok(Plan::StayRoot),
        Some(target) if target.uid != euid => {
            Err(PrivilegeError::NotRoot { user: target.user, uid: euid.as_raw() })
        }
        // `--user` naming the user we already are: nothing to switch.
        target => {
            let effective =
                caps::read(None, CapSet::Effective).map_err(caps_step("reading the effective set"))?;
            let permitted =
                caps::read(None, CapSet::Permitted).map_err(caps_step("reading the permitted set"))?;
            let raise = to_raise(&effective, &permitted)
                .map_err(|(cap, why)| PrivilegeError::MissingCapability { cap, why, uid: euid.as_raw() })?;
            for cap in raise {
                caps::raise(None, CapSet::Effective, cap).map_err(caps_step("raising a capability"))?;
            }
            let target = match target {
                Some(target) => target,
                None => current(euid),
            };
            Ok(Plan::Narrow(target))
        }
    }
}

/// The kept capabilities missing from `effective`, which must then be in
/// `permitted` (file capabilities without the effective bit put them there);
/// or the first one that is in neither.
fn to_raise(
    effective: &CapsHashSet,
    permitted: &CapsHashSet,
) -> Result<Vec<Capability>, (Capability, &'static str)> {
    let mut raise = Vec::new();
    for &(cap, why) in &KEPT {
        if effective.contains(&cap) {
            continue;
        }
        if !permitted.contains(&cap) {
            return Err((cap, why));
        }
        raise.push(cap);
    }
    Ok(raise)
}

/// The user and group we run as, named when the names resolve.
fn current(euid: Uid) -> Target {
    let gid = Gid::effective();
    let user = User::from_uid(euid).ok().flatten().map_or_else(|| euid.to_string(), |u| u.name);
    let group = Group::from_gid(gid).ok().flatten().map_or_else(|| gid.to_string(), |g| g.name);
    Target { user, uid: euid, group, gid }
}

fn lookup(user: &str, group: Option<&str>) -> Result<Target, PrivilegeError> {
    let lookup_user = |error| PrivilegeError::LookupUser { name: user.to_string(), error };
    let found = User::from_name(user).map_err(|e| lookup_user(Some(e)))?.ok_or_else(|| lookup_user(None))?;
    let (group, gid) = match group {
        Some(name) => {
            let lookup_group = |error| PrivilegeError::LookupGroup { name: name.to_string(), error };
            let g = Group::from_name(name)
                .map_err(|e| lookup_group(Some(e)))?
                .ok_or_else(|| lookup_group(None))?;
            (g.name, g.gid)
        }
        // The user's primary group; its name only for the log.
        None => {
            let name =
                Group::from_gid(found.gid).ok().flatten().map_or_else(|| found.gid.to_string(), |g| g.name);
            (name, found.gid)
        }
    };
    Ok(Target { user: found.name, uid: found.uid, group, gid })
}

/// Carries out `plan`; call once the control listeners are bound and before
/// any session exists. `Ok(None)`: nothing to do (root without `--user`).
pub(crate) fn apply(plan: &Plan) -> Result<Option<Dropped>, PrivilegeError> {
    let (target, switch) = match plan {
        Plan::StayRoot => return Ok(None),
        Plan::Switch(target) => (target, true),
        Plan::Narrow(target) => (target, false),
    };
    let threads = thread_count();
    if threads != 1 {
        return Err(PrivilegeError::Threads(threads));
    }
    // The bounding set only shrinks, and only with CAP_SETPCAP: root has
    // it; an unprivileged start normally does not, and then the unit's
    // CapabilityBoundingSet= is what narrows it.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
        .map_err(caps_step("reading the effective set"))?
    {
        for cap in bounding_to_drop(
            &caps::read(None, CapSet::Bounding).map_err(caps_step("reading the bounding set"))?,
        ) {
            caps::drop(None, CapSet::Bounding, cap).map_err(caps_step("narrowing the bounding set"))?;
        }
    }
    if switch {
        switch_user(target)?;
    }
    // Effective first: capset() refuses an effective set wider than the
    // permitted one, and before a narrowing it may hold more.
    let kept = kept();
    caps::set(None, CapSet::Effective, &kept).map_err(caps_step("setting the effective set"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(caps_step("narrowing the permitted set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_step("clearing the inheritable set"))?;
    caps::clear(None, CapSet::Ambient).map_err(caps_step("clearing the ambient set"))?;
    nix::sys::prctl::set_no_new_privs().map_err(PrivilegeError::NoNewPrivs)?;
    verify(target, switch)
}

/// setgroups, setresgid, setresuid, keeping the permitted set across the
/// change of uid; the kernel clears the effective set then, and `apply`
/// raises it again.
fn switch_user(target: &Target) -> Result<(), PrivilegeError> {
    caps::securebits::set_keepcaps(true).map_err(caps_step("PR_SET_KEEPCAPS"))?;
    let (uid, gid) = (target.uid, target.gid);
    // No supplementary group: the daemon opens no file after the start.
    nix::unistd::setgroups(&[]).map_err(|error| PrivilegeError::SetGroups { gid: gid.as_raw(), error })?;
    nix::unistd::setresgid(gid, gid, gid)
        .map_err(|error| PrivilegeError::SetGid { gid: gid.as_raw(), error })?;
    nix::unistd::setresuid(uid, uid, uid)
        .map_err(|error| PrivilegeError::SetUid { uid: uid.as_raw(), error })?;
    // Only this one change of user was meant to keep them.
    caps::securebits::set_keepcaps(false).map_err(caps_step("PR_SET_KEEPCAPS"))
}

/// Every capability the bounding set holds beyond the kept two.
fn bounding_to_drop(bounding: &CapsHashSet) -> Vec<Capability> {
    let kept = kept();
    let mut v: Vec<Capability> = bounding.difference(&kept).copied().collect();
    v.sort_by_key(Capability::index);
    v
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count)
}

/// Reads back what the kernel now says, so that a silent no-op anywhere
/// above is an error and not a false log line.
fn verify(target: &Target, switched: bool) -> Result<Option<Dropped>, PrivilegeError> {
    let mismatch = |what, want: String, got: String| PrivilegeError::Verify { what, want, got };
    let kept = kept();
    for (what, set) in [("the effective set", CapSet::Effective), ("the permitted set", CapSet::Permitted)] {
        let got = caps::read(None, set).map_err(caps_step("reading back the capability sets"))?;
        if got != kept {
            return Err(mismatch(what, names(&kept), names(&got)));
        }
    }
    let unreadable = |what, want: String| move |e: Errno| mismatch(what, want, format!("unreadable ({e})"));
    let res_uid = nix::unistd::getresuid().map_err(unreadable("the uid", target.uid.to_string()))?;
    let res_gid = nix::unistd::getresgid().map_err(unreadable("the gid", target.gid.to_string()))?;
    // An unprivileged start may have run with other real or saved ids
    // (a set-user-ID binary): only the effective ones are ours to check.
    let (uids, gids) = if switched {
        ([res_uid.real, res_uid.effective, res_uid.saved], [res_gid.real, res_gid.effective, res_gid.saved])
    } else {
        ([res_uid.effective; 3], [res_gid.effective; 3])
    };
    if uids.iter().any(|&u| u != target.uid) {
        return Err(mismatch("the uid", target.uid.to_string(), format!("{uids:?}")));
    }
    if gids.iter().any(|&g| g != target.gid) {
        return Err(mismatch("the gid", target.gid.to_string(), format!("{gids:?}")));
    }
    if !nix::sys::prctl::get_no_new_privs().map_err(PrivilegeError::NoNewPrivs)? {
        return Err(mismatch("no_new_privs", "1".into(), "0".into()));
    }
    let bounding = caps::read(None, CapSet::Bounding).map_err(caps_step("reading the bounding set"))?;
    Ok(Some(Dropped { target: target.clone(), kept, bounding }))
}

/// One info record of what was dropped, or a warning that nothing was.
pub(crate) fn log(log: &Logger, dropped: Option<&Dropped>) {
    let Some(d) = dropped else {
        warn!(log, "running as root with every capability; use --user to drop them");
        return;
    };
    let t = &d.target;
    // The bounding set stays as started when it could not be narrowed (no
    // CAP_SETPCAP): say so instead of listing forty names.
    let bounding = if d.bounding == d.kept { names(&d.bounding) } else { "unchanged".to_string() };
    info!(
        log, "privileges dropped";
        "user" => &t.user, "uid" => t.uid.as_raw(), "group" => &t.group, "gid" => t.gid.as_raw(),
        "capabilities" => names(&d.kept), "bounding" => bounding, "no_new_privs" => true
    );
    if d.bounding != d.kept {
        info!(
            log, "bounding set not narrowed: no CAP_SETPCAP; a systemd unit narrows it with CapabilityBoundingSet=";
            "bounding_count" => d.bounding.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Capability]) -> CapsHashSet {
        caps.iter().copied().collect()
    }

    const ADMIN: Capability = Capability::CAP_NET_ADMIN;
    const BIND: Capability = Capability::CAP_NET_BIND_SERVICE;

    #[test]
    fn kept_is_exactly_net_admin_and_net_bind_service_bits_12_and_10() {
        let mask: u64 = kept().iter().map(Capability::bitmask).fold(0, |a, b| a | b);
        assert_eq!(mask, 0x1400);
    }

    #[test]
    fn unprivileged_start_with_both_effective_raises_nothing() {
        assert_eq!(to_raise(&set(&[ADMIN, BIND]), &set(&[ADMIN, BIND])), Ok(vec![]));
    }

    #[test]
    fn unprivileged_start_with_caps_only_permitted_raises_them() {
        // setcap cap_net_admin,cap_net_bind_service=p (no effective bit)
        assert_eq!(to_raise(&set(&[]), &set(&[ADMIN, BIND])), Ok(vec![ADMIN, BIND]));
        assert_eq!(to_raise(&set(&[ADMIN]), &set(&[ADMIN, BIND])), Ok(vec![BIND]));
    }

    #[test]
    fn unprivileged_start_without_a_capability_names_it() {
        let err = to_raise(&set(&[ADMIN]), &set(&[ADMIN])).unwrap_err();
        assert_eq!(err.0, BIND);
        assert_eq!(to_raise(&set(&[]), &set(&[])).unwrap_err().0, ADMIN);
    }

    #[test]
    fn missing_capability_error_names_the_capability_and_both_ways_to_grant_it() {
        let (cap, why) = to_raise(&set(&[]), &set(&[BIND])).unwrap_err();
        let text = PrivilegeError::MissingCapability { cap, why, uid: 65534 }.to_string();
        assert!(text.starts_with("CAP_NET_ADMIN (IP_TRANSPARENT"), "{text}");
        assert!(text.contains("uid 65534"), "{text}");
        assert!(text.contains("AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE"), "{text}");
        assert!(text.contains("setcap cap_net_admin,cap_net_bind_service=ep"), "{text}");
        assert!(text.contains("--user"), "{text}");
    }

    #[test]
    fn bounding_full_set_drops_everything_but_the_two() {
        let drop = bounding_to_drop(&caps::all());
        assert_eq!(drop.len(), caps::all().len() - 2);
        assert!(!drop.contains(&ADMIN) && !drop.contains(&BIND));
        assert!(drop.contains(&Capability::CAP_SETUID) && drop.contains(&Capability::CAP_SYS_ADMIN));
        assert_eq!(bounding_to_drop(&set(&[ADMIN, BIND])), vec![]);
    }

    #[test]
    fn names_are_sorted_and_comma_separated() {
        assert_eq!(names(&set(&[BIND, ADMIN])), "CAP_NET_ADMIN,CAP_NET_BIND_SERVICE");
        assert_eq!(names(&set(&[])), "");
    }

    #[test]
    fn lookup_unknown_user_is_a_typed_error_naming_it() {
        let err = lookup("ftpgate-no-such-user", None).unwrap_err();
        assert!(
            matches!(&err, PrivilegeError::LookupUser { name, error: None } if name == "ftpgate-no-such-user"),
            "{err:?}"
        );
        assert!(err.to_string().contains("no such user"), "{err}");
    }

    #[test]
    fn lookup_unknown_group_is_a_typed_error_naming_it() {
        let err = lookup("root", Some("ftpgate-no-such-group")).unwrap_err();
        assert!(matches!(&err, PrivilegeError::LookupGroup { error: None, .. }), "{err:?}");
        assert!(err.to_string().contains("--group ftpgate-no-such-group"), "{err}");
    }

    #[test]
    fn lookup_user_defaults_to_its_primary_group_and_group_overrides_it() {
        // uid/gid 0 exist everywhere: the test needs no particular distribution.
        let t = lookup("root", None).unwrap();
        assert_eq!((t.uid.as_raw(), t.gid.as_raw(), t.group.as_str()), (0, 0, "root"));
        let any_group = Group::from_gid(Gid::from_raw(0)).unwrap().unwrap().name;
        let t = lookup("root", Some(&any_group)).unwrap();
        assert_eq!(t.gid.as_raw(), 0);
    }

    #[test]
    fn prepare_as_root_with_user_switches_and_without_stays() {
        if !Uid::effective().is_root() {
            // Not root: asking for another user is refused, by type.
            let err = prepare(Some("root"), None).unwrap_err();
            assert!(matches!(err, PrivilegeError::NotRoot { .. }), "{err:?}");
            return;
        }
        assert_eq!(prepare(None, None).unwrap(), Plan::StayRoot);
        let Plan::Switch(t) = prepare(Some("root"), None).unwrap() else { panic!("not a switch") };
        assert_eq!(t.user, "root");
    }

    #[test]
    fn apply_refuses_with_more_than_one_thread() {
        // The test harness runs tests on threads, so there are several; the
        // daemon calls `apply` before it starts any. Nothing is changed.
        // The extra thread lives until told, so the count can never be 1.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || rx.recv());
        let result = apply(&Plan::Narrow(current(Uid::effective())));
        tx.send(()).unwrap();
        other.join().unwrap().unwrap();
        let err = result.unwrap_err();
        assert!(matches!(err, PrivilegeError::Threads(n) if n > 1), "{err:?}");
    }

    #[test]
    fn apply_stay_root_changes_nothing() {
        assert!(apply(&Plan::StayRoot).unwrap().is_none());
    }

    #[test]
    fn each_step_error_says_what_it_needs() {
        let e = PrivilegeError::SetUid { uid: 65534, error: Errno::EPERM };
        assert!(e.to_string().contains("CAP_SETUID"), "{e}");
        let e = PrivilegeError::SetGid { gid: 65534, error: Errno::EPERM };
        assert!(e.to_string().contains("CAP_SETGID"), "{e}");
        let e = PrivilegeError::SetGroups { gid: 65534, error: Errno::EPERM };
        assert!(e.to_string().contains("setgroups"), "{e}");
        let e = PrivilegeError::NotRoot { user: "ftpgate".into(), uid: 1000 };
        assert!(e.to_string().contains("needs root"), "{e}");
    }
}
