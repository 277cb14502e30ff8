//! Netlink framing, by hand: the route look-up of every new session
//! (`tproxy::is_local_address`) and ctnetlink's pinholes (`pinhole`) both
//! speak it. A message is a `struct nlmsghdr` (16 bytes: length, type,
//! flags, sequence number, port) and its payload, padded to 4 bytes.
//!
//! Read: include/uapi/linux/netlink.h.

/// A request (nlmsghdr flags).
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
/// An error, or an acknowledgement (errno 0).
pub(crate) const NLMSG_ERROR: u16 = 2;
/// The end of a multipart answer.
pub(crate) const NLMSG_DONE: u16 = 3;

/// One request message: the header (`NLM_F_REQUEST | flags`, `seq`, port
/// 0: the kernel) and the payload, given in parts.
pub(crate) fn request(kind: u16, flags: u16, seq: u32, payload: &[&[u8]]) -> Vec<u8> {
    let len = 16 + payload.iter().map(|p| p.len()).sum::<usize>();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    for part in payload {
        m.extend_from_slice(part);
    }
    m
}

/// The errno an NLMSG_ERROR payload carries, positive; 0 for an
/// acknowledgement (or a payload too short to say).
pub(crate) fn error_code(payload: &[u8]) -> i32 {
    payload.get(..4).map_or(0, |b| -i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// Netlink messages in a datagram: (type, flags, sequence number, payload).
pub(crate) fn messages(mut buf: &[u8]) -> impl Iterator<Item = (u16, u16, u32, &[u8])> {
    std::iter::from_fn(move || {
        let len = u32::from_ne_bytes(buf.get(..4)?.try_into().ok()?) as usize;
        if len < 16 || len > buf.len() {
            return None;
        }
        let kind = u16::from_ne_bytes(buf[4..6].try_into().ok()?);
        let flags = u16::from_ne_bytes(buf[6..8].try_into().ok()?);
        let seq = u32::from_ne_bytes(buf[8..12].try_into().ok()?);
        let payload = &buf[16..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((kind, flags, seq, payload))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_a_datagram_with_their_sequence_numbers() {
        let mut buf = Vec::new();
        for (seq, body) in [(7u32, &[1u8, 2, 3][..]), (8, &[][..])] {
            let len = 16 + body.len();
            buf.extend_from_slice(&(len as u32).to_ne_bytes());
            buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            buf.extend_from_slice(&0u16.to_ne_bytes());
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(body);
            buf.resize(buf.len() + (4 - len % 4) % 4, 0);
        }
        let got: Vec<(u16, u32, usize)> = messages(&buf).map(|(k, _, seq, p)| (k, seq, p.len())).collect();
        assert_eq!(got, [(NLMSG_ERROR, 7, 3), (NLMSG_ERROR, 8, 0)]);
        assert_eq!(messages(&buf[..10]).count(), 0);
    }

    #[test]
    fn a_request_reads_back_as_one_message() {
        let m = request(26, 0x4, 9, &[&[1, 2], &[3, 4, 5, 6]]);
        let got: Vec<_> = messages(&m).collect();
        assert_eq!(got, [(26, NLM_F_REQUEST | 0x4, 9, &[1u8, 2, 3, 4, 5, 6][..])]);
        assert_eq!(error_code(&(-22i32).to_ne_bytes()), 22);
        assert_eq!(error_code(&0i32.to_ne_bytes()), 0);
    }
}
