//! Bounded CRLF line framer for one side of the control connection, with the
//! Telnet layer FTP runs on (RFC 959 §4.1, RFC 854, RFC 1123 §4.1.2.12).
//!
//! Read first: RFC 959 (the control connection is a Telnet NVT stream),
//! RFC 1123 §4.1.2.12 (refuse option negotiation with DONT/WONT),
//! ATTACKS.md 12–14.
//!
//! The framer works on raw bytes as they come off the socket. It strips the
//! Telnet commands (`IAC IP`, `IAC DM`, option negotiation, subnegotiation),
//! turns `IAC IAC` into one literal `0xFF`, and stores the result. A `0xFF`
//! followed by a byte that is no Telnet command (below 240) is kept as data
//! with that byte: many clients send file names in Latin-1 or UTF-8 and
//! never double the `0xFF`. A subnegotiation counts toward the line limit
//! until its `IAC SE`, so an endless one ends like an over-long line. Lines are
//! cut at LF; a CR right before the LF is dropped, so a bare LF is accepted.
//! A CR anywhere else, or a NUL, makes the line refused: a proxy and a server
//! that disagree about where a command ends are what slipstreaming attacks
//! exploit (ATTACKS.md 13). Writers re-escape `0xFF` with [`write_line`].

/// Longest line (without its line end) the framer accepts, in bytes after
/// Telnet decoding.
///
/// RFC 959 sets no limit. The longest legitimate lines are path arguments:
/// Linux' `PATH_MAX` is 4096 bytes, plus a verb and a space, and multi-line
/// replies carry one path per line. 8 KiB leaves room for that and for long
/// `FEAT`/`HELP` lines, while bounding what one hostile peer can make the
/// gateway buffer (ATTACKS.md 12). The buffer only grows that far while such a
/// line is actually arriving and shrinks back when it is empty.
pub const MAX_LINE: usize = 8192;

/// Capacity kept for an empty buffer. Larger buffers are freed when they drain,
/// so an idle session costs a few hundred bytes.
const KEEP_CAPACITY: usize = 256;

/// Telnet "interpret as command".
pub const IAC: u8 = 255;
/// Telnet Interrupt Process.
pub const IP: u8 = 244;
/// Telnet Data Mark: ends a Synch.
pub const DM: u8 = 242;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const SE: u8 = 240;
/// The lowest Telnet command byte (SE); below it, `IAC x` is no command.
const FIRST_COMMAND: u8 = SE;

/// Why a line was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineError {
    /// No line end within [`MAX_LINE`] bytes. The stream can no longer be
    /// framed; the session must close.
    TooLong,
    /// The line contains a NUL byte.
    Nul,
    /// The line contains a CR that is not right before its LF.
    BareCr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Telnet {
    Data,
    Iac,
    /// After `IAC WILL|WONT|DO|DONT`: the next byte is the option.
    Option(u8),
    /// Inside `IAC SB … IAC SE`.
    Sub,
    SubIac,
}

/// The framer of one side.
pub struct LineReader {
    buf: Vec<u8>,
    telnet: Telnet,
    /// Raw bytes of the subnegotiation being skipped; they count toward the
    /// line limit, or an `IAC SB` never closed would stall the side.
    sub_len: usize,
    /// Telnet refusals owed to the peer that sent the negotiation.
    answers: Vec<u8>,
    /// Set once a line overflowed: the stream is unframable from here on.
    broken: bool,
    /// A subnegotiation ran past the line limit: nothing more is decoded,
    /// and `next_line` reports `TooLong` once the lines before it are out.
    sub_overflow: bool,
    /// How much of `buf` is known to hold no LF, so a line trickled in one
    /// byte at a time is scanned once, not once per byte.
    scanned: usize,
}

impl Default for LineReader {
    fn default() -> Self {
        Self::new()
    }
}

impl LineReader {
    /// An empty framer; allocates nothing until bytes arrive.
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            telnet: Telnet::Data,
            sub_len: 0,
            answers: Vec::new(),
            broken: false,
            sub_overflow: false,
            scanned: 0,
        }
    }

    /// How many more raw bytes fit before the current line is too long
    /// (at least 1, so a too-long line is always detected).
    pub fn space(&self) -> usize {
        (MAX_LINE + 2).saturating_sub(self.pending_len()).max(1)
    }

    /// True if no decoded byte is buffered.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// A complete line (or one to refuse) is buffered: `next_line` has
    /// something to hand out.
    pub fn has_line(&self) -> bool {
        !self.broken && self.buf.contains(&b'\n')
    }

    /// The decoded bytes buffered so far: the start of the line being
    /// received (and any complete lines not taken yet).
    pub fn partial(&self) -> &[u8] {
        &self.buf
    }

    /// Nothing buffered and no Telnet command half-read: every byte fed so
    /// far was handed out as a line (or a refusal).
    pub fn is_clear(&self) -> bool {
        self.buf.is_empty()
            && self.telnet == Telnet::Data
            && self.sub_len == 0
            && !self.broken
            && !self.sub_overflow
    }

    /// Decoded bytes buffered (for sizes in logs; never the bytes).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// What the current line costs so far: its decoded bytes and the
    /// subnegotiation being skipped.
    fn pending_len(&self) -> usize {
        self.buf.len() + self.sub_len
    }

    /// Decode `data` (Telnet) into the line buffer.
    pub fn feed(&mut self, data: &[u8]) {
        if self.broken || self.sub_overflow {
            return;
        }
        for &b in data {
            self.telnet = match (self.telnet, b) {
                (Telnet::Data, IAC) => Telnet::Iac,
                (Telnet::Data, _) => {
                    self.buf.push(b);
                    Telnet::Data
                }
                (Telnet::Iac, IAC) => {
                    self.buf.push(IAC);
                    Telnet::Data
                }
                (Telnet::Iac, WILL | WONT | DO | DONT) => Telnet::Option(b),
                (Telnet::Iac, SB) => {
                    // The IAC; the SB itself is counted below.
                    self.sub_len = 1;
                    Telnet::Sub
                }
                // No Telnet command: a raw 0xFF that was never doubled.
                (Telnet::Iac, _) if b < FIRST_COMMAND => {
                    self.buf.extend_from_slice(&[IAC, b]);
                    Telnet::Data
                }
                // IP, DM, NOP, AYT, GA, …: no meaning for FTP, stripped.
                (Telnet::Iac, _) => Telnet::Data,
                (Telnet::Option(verb), option) => {
                    // RFC 1123 §4.1.2.12: refuse every option.
                    match verb {
                        WILL => self.answers.extend_from_slice(&[IAC, DONT, option]),
                        DO => self.answers.extend_from_slice(&[IAC, WONT, option]),
                        _ => {}
                    }
                    Telnet::Data
                }
                (Telnet::Sub, IAC) => Telnet::SubIac,
                (Telnet::Sub, _) => Telnet::Sub,
                (Telnet::SubIac, SE) => {
                    self.sub_len = 0;
                    Telnet::Data
                }
                (Telnet::SubIac, _) => Telnet::Sub,
            };
            if matches!(self.telnet, Telnet::Sub | Telnet::SubIac) {
                self.sub_len += 1;
                if self.pending_len() > MAX_LINE + 1 {
                    // Nothing more of this stream can be framed; `next_line`
                    // reports it like any over-long line.
                    self.sub_overflow = true;
                    return;
                }
            }
        }
    }

    /// Telnet refusals to send back to this side (then cleared).
    pub fn take_answers(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.answers)
    }

    /// The next complete line without its line end, or an error for a line
    /// that must be refused. `None`: no complete line yet.
    pub fn next_line(&mut self) -> Option<Result<Vec<u8>, LineError>> {
        if self.broken {
            return None;
        }
        let from = self.scanned.min(self.buf.len());
        let Some(lf) = self.buf[from..].iter().position(|&b| b == b'\n').map(|i| from + i) else {
            self.scanned = self.buf.len();
            if self.sub_overflow || self.pending_len() > MAX_LINE + 1 {
                self.broken = true;
                self.buf = Vec::new();
                self.sub_len = 0;
                return Some(Err(LineError::TooLong));
            }
            return None;
        };
        let mut end = lf;
        if end > 0 && self.buf[end - 1] == b'\r' {
            end -= 1;
        }
        let result = if end > MAX_LINE {
            Err(LineError::TooLong)
        } else if self.buf[..end].contains(&0) {
            Err(LineError::Nul)
        } else if self.buf[..end].contains(&b'\r') {
            Err(LineError::BareCr)
        } else {
            Ok(self.buf[..end].to_vec())
        };
        self.buf.drain(..=lf);
        self.scanned = 0;
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
        if result == Err(LineError::TooLong) {
            self.broken = true;
        }
        Some(result)
    }
}

impl std::fmt::Debug for LineReader {
    /// Sizes only: the buffer may hold a password being framed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineReader")
            .field("buffered", &self.buf.len())
            .field("telnet", &self.telnet)
            .field("sub_len", &self.sub_len)
            .field("answers", &self.answers.len())
            .field("broken", &self.broken)
            .field("sub_overflow", &self.sub_overflow)
            .finish()
    }
}

/// Append `line` to `out` with `0xFF` escaped as `IAC IAC`, then CRLF.
pub fn write_line(line: &[u8], out: &mut Vec<u8>) {
    for &b in line {
        if b == IAC {
            out.push(IAC);
        }
        out.push(b);
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<Result<Vec<u8>, LineError>> {
        let mut r = LineReader::new();
        r.feed(input);
        std::iter::from_fn(|| r.next_line()).collect()
    }

    #[test]
    fn framer_long_line_trickled_byte_by_byte_framed_once() {
        let mut r = LineReader::new();
        let line = vec![b'a'; MAX_LINE - 10];
        for &b in line.iter().chain(b"\r\nNOOP\r\n") {
            r.feed(&[b]);
            if b == b'\n' {
                break;
            }
            assert_eq!(r.next_line(), None);
        }
        assert_eq!(r.next_line(), Some(Ok(line)));
        r.feed(b"NOOP\r\n");
        assert_eq!(r.next_line(), Some(Ok(b"NOOP".to_vec())));
    }

    #[test]
    fn framer_crlf_and_bare_lf_both_end_lines() {
        assert_eq!(lines(b"USER a\r\nPWD\n"), vec![Ok(b"USER a".to_vec()), Ok(b"PWD".to_vec())]);
    }

    #[test]
    fn framer_bare_cr_inside_line_refused() {
        assert_eq!(lines(b"PWD\rPORT 1,2,3,4,5,6\n"), vec![Err(LineError::BareCr)]);
        assert_eq!(lines(b"PWD\r\r\n"), vec![Err(LineError::BareCr)]);
    }

    #[test]
    fn framer_nul_refused() {
        assert_eq!(lines(b"RETR a\0b\r\nNOOP\r\n"), vec![Err(LineError::Nul), Ok(b"NOOP".to_vec())]);
    }

    #[test]
    fn framer_partial_line_waits() {
        let mut r = LineReader::new();
        r.feed(b"US");
        assert_eq!(r.next_line(), None);
        r.feed(b"ER x\r");
        assert_eq!(r.next_line(), None);
        r.feed(b"\n");
        assert_eq!(r.next_line(), Some(Ok(b"USER x".to_vec())));
        assert!(r.is_empty());
    }

    #[test]
    fn framer_overlong_without_lf_is_too_long_and_stays_broken() {
        let mut r = LineReader::new();
        r.feed(&vec![b'a'; MAX_LINE + 2]);
        assert_eq!(r.next_line(), Some(Err(LineError::TooLong)));
        r.feed(b"\r\nNOOP\r\n");
        assert_eq!(r.next_line(), None);
    }

    #[test]
    fn framer_max_line_exactly_accepted() {
        let mut input = vec![b'a'; MAX_LINE];
        input.extend_from_slice(b"\r\n");
        assert_eq!(lines(&input), vec![Ok(vec![b'a'; MAX_LINE])]);
    }

    #[test]
    fn telnet_iac_iac_is_literal_ff_and_rewritten_escaped() {
        let got = lines(b"RETR a\xff\xffb\r\n");
        assert_eq!(got, vec![Ok(b"RETR a\xffb".to_vec())]);
        let mut out = Vec::new();
        write_line(b"RETR a\xffb", &mut out);
        assert_eq!(out, b"RETR a\xff\xffb\r\n");
    }

    #[test]
    fn telnet_ip_dm_stripped() {
        assert_eq!(lines(b"\xff\xf4\xff\xf2ABOR\r\n"), vec![Ok(b"ABOR".to_vec())]);
    }

    #[test]
    fn telnet_negotiation_refused_and_stripped() {
        let mut r = LineReader::new();
        r.feed(b"\xff\xfb\x01NO\xff\xfd\x03OP\xff\xfa\x18\x01\xff\xf0\r\n");
        assert_eq!(r.next_line(), Some(Ok(b"NOOP".to_vec())));
        assert_eq!(r.take_answers(), b"\xff\xfe\x01\xff\xfc\x03");
        assert!(r.take_answers().is_empty());
    }

    #[test]
    fn telnet_sequence_split_across_feeds() {
        let mut r = LineReader::new();
        r.feed(b"a\xff");
        r.feed(b"\xffb\xff");
        r.feed(b"\xf4\n");
        assert_eq!(r.next_line(), Some(Ok(b"a\xffb".to_vec())));
    }

    #[test]
    fn telnet_raw_ff_not_followed_by_a_command_kept_as_data() {
        // Latin-1 "ÿ" and the UTF-8 lead byte never doubled by the client.
        assert_eq!(lines(b"RETR caf\xff.txt\r\n"), vec![Ok(b"RETR caf\xff.txt".to_vec())]);
        assert_eq!(lines(b"RETR a\xff\r\n"), vec![Ok(b"RETR a\xff".to_vec())]);
        // Split across feeds: the byte after the 0xFF decides.
        let mut r = LineReader::new();
        r.feed(b"CWD x\xff");
        r.feed(b"y\r\n");
        assert_eq!(r.next_line(), Some(Ok(b"CWD x\xffy".to_vec())));
        // Forwarded escaped, so the server reads the same name.
        let mut out = Vec::new();
        write_line(b"RETR caf\xff.txt", &mut out);
        assert_eq!(out, b"RETR caf\xff\xff.txt\r\n");
    }

    #[test]
    fn telnet_unterminated_subnegotiation_ends_like_overlong_line() {
        let mut r = LineReader::new();
        r.feed(b"NO\xff\xfa\x18");
        let mut fed = 5;
        while r.next_line().is_none() {
            assert!(fed <= MAX_LINE + 2, "no end after {fed} bytes");
            let n = r.space().min(1000);
            r.feed(&vec![b'a'; n]);
            fed += n;
        }
        assert!(fed <= MAX_LINE + 2);
        r.feed(b"\xff\xf0OP\r\n");
        assert_eq!(r.next_line(), None, "broken for good, like TooLong");
    }

    #[test]
    fn telnet_unterminated_subnegotiation_same_in_any_segmentation() {
        let mut input = b"PWD\r\n\xff\xfa".to_vec();
        input.extend(vec![b'z'; MAX_LINE + 10]);
        input.extend_from_slice(b"\xff\xf0NOOP\r\n");
        let whole = lines(&input);
        assert_eq!(whole, vec![Ok(b"PWD".to_vec()), Err(LineError::TooLong)]);
        let mut r = LineReader::new();
        for chunk in input.chunks(7) {
            r.feed(chunk);
        }
        assert_eq!(std::iter::from_fn(|| r.next_line()).collect::<Vec<_>>(), whole);
    }

    #[test]
    fn telnet_terminated_subnegotiation_frees_its_count() {
        let mut r = LineReader::new();
        let mut input = b"\xff\xfa".to_vec();
        input.extend(vec![b'z'; MAX_LINE - 100]);
        input.extend_from_slice(b"\xff\xf0NOOP\r\n");
        r.feed(&input);
        assert_eq!(r.next_line(), Some(Ok(b"NOOP".to_vec())));
        assert_eq!(r.space(), MAX_LINE + 2);
    }

    #[test]
    fn framer_debug_shows_no_buffered_bytes() {
        let mut r = LineReader::new();
        r.feed(b"PASS hunter2");
        let shown = format!("{r:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("104, 117"), "{shown}");
    }

    #[test]
    fn framer_shrinks_after_long_line() {
        let mut r = LineReader::new();
        let mut input = vec![b'a'; 4000];
        input.push(b'\n');
        r.feed(&input);
        assert!(r.next_line().is_some());
        assert!(r.buf.capacity() <= KEEP_CAPACITY);
    }
}
