//! The kernel-side filter of the conntrack event socket.
//!
//! Joining the NEW and DESTROY groups (not UPDATE: the ends are looked up,
//! see the parent module) subscribes to the start and the end of every
//! connection in the network namespace: the control connections, the
//! placeholder masters, and all other traffic of the router, once per
//! event loop, since each loop has its own socket. Of these a pinhole
//! needs two kinds, both about connections made from an expectation
//! (status IPS_EXPECTED):
//! - the NEW that names the master (`CTA_TUPLE_MASTER`): the pinhole was used;
//! - the DESTROY: its entry is gone (an end not looked up in time).
//!
//! A classic BPF program on the socket drops the rest in the kernel, before
//! it is queued: no wakeup, no copy, no parse (the `SKF_AD_NLATTR`
//! extensions find attributes the way libnetfilter_conntrack's filters do).
//! Measured in lab/bench/profile/README.md.
//!
//! Read: Documentation/networking/filter.rst (SKF_AD_NLATTR,
//! SKF_AD_NLATTR_NEST), net/core/filter.c (bpf_skb_get_nlattr*),
//! net/netfilter/nf_conntrack_netlink.c (ctnetlink_conntrack_event).

use std::io;
use std::os::fd::RawFd;

use libc::{
    BPF_ABS, BPF_H, BPF_IMM, BPF_IND, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_LDX, BPF_MISC, BPF_RET,
    BPF_TAX, BPF_W,
};

use super::{CTA_STATUS, CTA_TUPLE_MASTER, IPCTNL_MSG_CT_DELETE, NFNL_SUBSYS_CTNETLINK};

/// include/uapi/linux/netfilter/nf_conntrack_common.h: made from an expectation.
const IPS_EXPECTED: u32 = 1;
/// Where a ctnetlink message's attributes start: nlmsghdr, then nfgenmsg.
const ATTRS: u32 = 16 + 4;

/// Where a jump goes.
#[derive(Clone, Copy)]
enum To {
    Next,
    Accept,
    Drop,
}

/// One instruction before the jumps are resolved.
enum Op {
    Stmt(u16, u32),
    Jump(u16, u32, To, To),
}

fn code(parts: u32) -> u16 {
    u16::try_from(parts).unwrap_or(u16::MAX)
}

/// `A = offset of the attribute of type X`, searched from offset A
/// (0 when absent): the top level, or inside the nest that starts at A.
fn find_attr(nested: bool) -> Op {
    let ext = if nested { libc::SKF_AD_NLATTR_NEST } else { libc::SKF_AD_NLATTR };
    Op::Stmt(code(BPF_LD | BPF_W | BPF_ABS), (libc::SKF_AD_OFF + ext) as u32)
}

/// The program. An accepted message is queued whole.
fn program() -> Vec<libc::sock_filter> {
    let ld_imm = |k| Op::Stmt(code(BPF_LD | BPF_IMM), k);
    let ldx_imm = |k: u16| Op::Stmt(code(BPF_LDX | BPF_IMM), u32::from(k));
    let if_zero_drop = || Op::Jump(code(BPF_JMP | BPF_JEQ | BPF_K), 0, To::Drop, To::Next);
    // nlmsg_type as a 16-bit load sees it (loads are big-endian).
    let destroy = u16::from_be_bytes(((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE).to_ne_bytes());
    let ops = [
        // Only connections made from an expectation.
        ld_imm(ATTRS),
        ldx_imm(CTA_STATUS),
        find_attr(false),
        if_zero_drop(),
        Op::Stmt(code(BPF_MISC | BPF_TAX), 0),
        Op::Stmt(code(BPF_LD | BPF_W | BPF_IND), 4),
        Op::Jump(code(BPF_JMP | BPF_JSET | BPF_K), IPS_EXPECTED, To::Next, To::Drop),
        // Their DESTROY.
        Op::Stmt(code(BPF_LD | BPF_H | BPF_ABS), 4),
        Op::Jump(code(BPF_JMP | BPF_JEQ | BPF_K), u32::from(destroy), To::Accept, To::Next),
        // Their NEW, the one event that names the master. (An UPDATE would
        // not: none is subscribed to, and none passes.)
        ld_imm(ATTRS),
        ldx_imm(CTA_TUPLE_MASTER),
        find_attr(false),
        Op::Jump(code(BPF_JMP | BPF_JEQ | BPF_K), 0, To::Drop, To::Accept),
    ];
    let drop_at = ops.len();
    let accept_at = drop_at + 1;
    let mut out: Vec<libc::sock_filter> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| match *op {
            Op::Stmt(code, k) => libc::sock_filter { code, jt: 0, jf: 0, k },
            Op::Jump(code, k, jt, jf) => {
                let rel = |to| {
                    let target = match to {
                        To::Next => i + 1,
                        To::Accept => accept_at,
                        To::Drop => drop_at,
                    };
                    u8::try_from(target - (i + 1)).expect("a short program")
                };
                libc::sock_filter { code, jt: rel(jt), jf: rel(jf), k }
            }
        })
        .collect();
    out.push(libc::sock_filter { code: code(BPF_RET | BPF_K), jt: 0, jf: 0, k: 0 });
    out.push(libc::sock_filter { code: code(BPF_RET | BPF_K), jt: 0, jf: 0, k: u32::MAX });
    out
}

/// Attaches the filter to the event socket.
pub(super) fn attach(fd: RawFd) -> io::Result<()> {
    let mut prog = program();
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).expect("a short program"),
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: fprog points at `prog`, alive for the call; the kernel
    // copies and checks the program.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::addr_of!(fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    //! The program runs in the kernel here too: on a datagram socketpair,
    //! whose payload starts where a netlink message does (no root needed).
    use std::net::IpAddr;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;

    use super::super::{
        nest, put, put_tuple, Tuple, CTA_PROTOINFO, CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE,
        CTA_TUPLE_ORIG, IPCTNL_MSG_CT_NEW, NLA_F_NESTED, NLM_F_CREATE, NLM_F_EXCL, TCP_CONNTRACK_CLOSE,
        TCP_CONNTRACK_TIME_WAIT,
    };
    use super::*;

    fn tuple(sport: u16) -> Tuple {
        Tuple {
            src: IpAddr::from([192, 0, 2, 10]),
            dst: IpAddr::from([198, 51, 100, 10]),
            sport,
            dport: 40000,
        }
    }

    /// A conntrack event as ctnetlink_conntrack_event lays it out.
    fn event(msg: u16, flags: u16, status: u32, master: bool, state: Option<u8>) -> Vec<u8> {
        let mut body = vec![libc::AF_INET as u8, 0, 0, 0];
        put_tuple(&mut body, CTA_TUPLE_ORIG, tuple(50000));
        put(&mut body, CTA_STATUS, &status.to_be_bytes());
        if let Some(state) = state {
            let tcp = nest(|b| {
                put(b, CTA_PROTOINFO_TCP_STATE, &[state]);
                put(b, 2, &[0]);
            });
            let info = nest(|b| put(b, CTA_PROTOINFO_TCP | NLA_F_NESTED, &tcp));
            put(&mut body, CTA_PROTOINFO | NLA_F_NESTED, &info);
        }
        if master {
            put_tuple(&mut body, CTA_TUPLE_MASTER, tuple(1234));
        }
        let mut packet = Vec::new();
        packet.extend_from_slice(&u32::try_from(16 + body.len()).unwrap().to_ne_bytes());
        packet.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg).to_ne_bytes());
        packet.extend_from_slice(&flags.to_ne_bytes());
        packet.extend_from_slice(&[0; 8]);
        packet.extend_from_slice(&body);
        packet
    }

    fn passes(message: &[u8]) -> bool {
        let (tx, rx) = UnixDatagram::pair().unwrap();
        attach(rx.as_raw_fd()).unwrap();
        rx.set_nonblocking(true).unwrap();
        tx.send(message).unwrap();
        let mut buf = [0u8; 1024];
        match rx.recv(&mut buf) {
            Ok(n) => {
                assert_eq!(&buf[..n], message, "an accepted message is whole");
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("{e}"),
        }
    }

    const NEW: u16 = IPCTNL_MSG_CT_NEW;
    const CREATED: u16 = NLM_F_CREATE | NLM_F_EXCL;
    const EXPECTED: u32 = IPS_EXPECTED | 0x8;

    #[test]
    fn the_new_related_connection_passes() {
        assert!(passes(&event(NEW, CREATED, EXPECTED, true, Some(1))));
    }

    #[test]
    fn its_updates_do_not_pass_its_end_is_looked_up() {
        for state in 0..=9u8 {
            assert!(!passes(&event(NEW, 0, EXPECTED | 0x6, false, Some(state))), "state {state}");
        }
        assert!(!passes(&event(NEW, 0, EXPECTED, false, None)), "an update without a TCP state");
    }

    #[test]
    fn its_destroy_passes() {
        assert!(passes(&event(IPCTNL_MSG_CT_DELETE, 0, EXPECTED | 0x200, false, Some(7))));
        assert!(passes(&event(IPCTNL_MSG_CT_DELETE, 0, EXPECTED, false, None)));
    }

    #[test]
    fn connections_not_made_from_an_expectation_never_pass() {
        // The control connections, the placeholder masters (status 0x2008).
        for (msg, flags, master, state) in [
            (NEW, CREATED, false, Some(1)),
            (NEW, 0, false, Some(TCP_CONNTRACK_TIME_WAIT)),
            (NEW, 0, false, Some(TCP_CONNTRACK_CLOSE)),
            (IPCTNL_MSG_CT_DELETE, 0, false, Some(7)),
            (NEW, CREATED, true, Some(1)),
        ] {
            assert!(!passes(&event(msg, flags, 0x2008, master, state)));
            assert!(!passes(&event(msg, flags, 0xe, master, state)));
        }
    }

    #[test]
    fn a_message_without_status_or_attributes_does_not_pass() {
        let mut bare = event(NEW, CREATED, EXPECTED, true, Some(1));
        bare.truncate(20);
        bare[..4].copy_from_slice(&20u32.to_ne_bytes());
        assert!(!passes(&bare));
        assert!(!passes(&[0u8; 8]));
    }
}
