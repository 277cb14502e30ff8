//! Server reply lines → [`Reply`], including multi-line assembly.
//!
//! Read first: RFC 959 §4.2 (reply format; a multi-line reply starts with
//! `ddd-` and only a line starting `ddd<SP>` with the same code ends it),
//! ATTACKS.md 17 and 31.

use nom::branch::alt;
use nom::bytes::complete::{tag, take_while_m_n};
use nom::combinator::{eof, rest, verify};
use nom::{IResult, Parser};

use crate::line::write_line;

/// A reply code. Any code passes through, so this is a newtype with named
/// constants, not a closed enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(pub u16);

impl Code {
    /// 220 Service ready.
    pub const READY: Self = Self(220);
    /// 227 Entering Passive Mode.
    pub const ENTERING_PASSIVE: Self = Self(227);
    /// 229 Entering Extended Passive Mode.
    pub const ENTERING_EXT_PASSIVE: Self = Self(229);
    /// 230 User logged in.
    pub const LOGGED_IN: Self = Self(230);
    /// 421 Service not available, closing control connection.
    pub const NOT_AVAILABLE: Self = Self(421);

    /// 1xx: more replies follow for the same command.
    pub fn is_preliminary(self) -> bool {
        (100..200).contains(&self.0)
    }

    /// 2xx.
    pub fn is_success(self) -> bool {
        (200..300).contains(&self.0)
    }
}

/// Whether a reply line ends its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sep {
    /// `ddd<SP>text` or a bare `ddd`: last line.
    Last,
    /// `ddd-text`: a multi-line reply starts.
    More,
}

/// The first line of a reply did not start with a code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyError {
    /// Not `ddd<SP|->…` (first digit 1–5).
    Malformed,
    /// A multi-line reply went past the configured line cap.
    TooManyLines,
    /// A multi-line reply went past [`MAX_REPLY_BYTES`].
    TooLarge,
}

/// Cap on the bytes of one reply (its lines without line ends), besides
/// the line cap: 1,000 lines of 8 KiB would otherwise let one server make a
/// session hold 8 MiB (ATTACKS.md 17). The longest real replies (FEAT, HELP,
/// a STAT listing of a big directory) are a few KiB; a server that needs
/// more is refused as broken.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

fn code(line: &[u8]) -> IResult<&[u8], u16> {
    verify(take_while_m_n(3, 3, |b: u8| b.is_ascii_digit()), |d: &[u8]| (b'1'..=b'5').contains(&d[0]))
        .map(|d: &[u8]| d.iter().fold(0u16, |n, &b| n * 10 + u16::from(b - b'0')))
        .parse(line)
}

fn sep(input: &[u8]) -> IResult<&[u8], Sep> {
    alt((tag(&b" "[..]).map(|_| Sep::Last), tag(&b"-"[..]).map(|_| Sep::More), eof.map(|_| Sep::Last)))
        .parse(input)
}

/// Parse the code, separator and text of a reply's first line.
pub fn parse_reply_line(line: &[u8]) -> Result<(Code, Sep, &[u8]), ReplyError> {
    match (code, sep, rest).parse(line) {
        Ok((_, (c, s, text))) => Ok((Code(c), s, text)),
        Err(_) => Err(ReplyError::Malformed),
    }
}

/// One complete reply: its code and its lines (decoded, without line ends).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The code of the first (and last) line.
    pub code: Code,
    /// Every line, first to last.
    pub lines: Vec<Vec<u8>>,
}

impl Reply {
    /// A single-line reply made by the gateway (`text` includes the code).
    pub fn local(code: u16, text: &str) -> Self {
        Self { code: Code(code), lines: vec![text.as_bytes().to_vec()] }
    }

    /// Append the reply as wire bytes (IAC escaped, CRLF line ends).
    pub fn write(&self, out: &mut Vec<u8>) {
        for line in &self.lines {
            write_line(line, out);
        }
    }

    /// The text after `ddd<SP|->` of each line that has a code prefix, and
    /// the whole text of the other lines.
    pub fn texts(&self) -> impl Iterator<Item = &[u8]> {
        self.lines.iter().map(|l| match parse_reply_line(l) {
            Ok((_, _, text)) => text,
            Err(_) => l.as_slice(),
        })
    }
}

/// FEAT lines (RFC 2389) that advertise TLS on the control channel (RFC
/// 4217): removed from the server's FEAT reply while `AUTH` is refused, so
/// clients do not try it.
pub const TLS_FEATURES: [&[u8]; 4] = [b"AUTH", b"PBSZ", b"PROT", b"CCC"];

/// A FEAT reply without the feature lines named in `names` (any case). The
/// first and last lines stay, so the multi-line framing is intact; a reply
/// of fewer than three lines is unchanged. A feature line is
/// ` NAME[ args]` (RFC 2389 §3.2); a continuation line that repeats the
/// code (`211-AUTH TLS`) is judged by its text.
pub fn without_features(mut reply: Reply, names: &[&[u8]]) -> Reply {
    let n = reply.lines.len();
    if n < 3 {
        return reply;
    }
    let last = reply.lines.pop();
    let first = reply.lines.remove(0);
    let code = reply.code;
    reply.lines.retain(|line| !names.iter().any(|f| f.eq_ignore_ascii_case(feature_name(code, line))));
    reply.lines.insert(0, first);
    reply.lines.extend(last);
    reply
}

/// The feature name of a FEAT continuation line.
pub fn feature_name(code: Code, line: &[u8]) -> &[u8] {
    let text = match parse_reply_line(line) {
        Ok((c, _, text)) if c == code => text,
        _ => line,
    };
    text.trim_ascii_start().split(|&b| b == b' ').next().unwrap_or_default()
}

/// Collects the lines of one reply at a time.
#[derive(Debug)]
pub struct ReplyAssembler {
    current: Option<Reply>,
    /// Bytes of `current`'s lines.
    bytes: usize,
    max_lines: usize,
}

impl ReplyAssembler {
    /// An assembler refusing replies longer than `max_lines` lines.
    pub fn new(max_lines: usize) -> Self {
        Self { current: None, bytes: 0, max_lines: max_lines.max(1) }
    }

    /// True while a multi-line reply is open.
    pub fn in_reply(&self) -> bool {
        self.current.is_some()
    }

    /// Bytes held by the reply being assembled (at most
    /// [`MAX_REPLY_BYTES`]).
    pub fn buffered(&self) -> usize {
        self.bytes
    }

    /// Add one line; a complete reply comes out.
    pub fn push(&mut self, line: Vec<u8>) -> Result<Option<Reply>, ReplyError> {
        match self.current.as_mut() {
            None => {
                let (code, sep, _) = parse_reply_line(&line)?;
                let reply = Reply { code, lines: vec![line] };
                match sep {
                    Sep::Last => Ok(Some(reply)),
                    Sep::More => {
                        self.bytes = reply.lines[0].len();
                        self.current = Some(reply);
                        Ok(None)
                    }
                }
            }
            Some(reply) => {
                if reply.lines.len() >= self.max_lines {
                    self.reset();
                    return Err(ReplyError::TooManyLines);
                }
                if self.bytes + line.len() > MAX_REPLY_BYTES {
                    self.reset();
                    return Err(ReplyError::TooLarge);
                }
                self.bytes += line.len();
                // Only `<same code><SP>` (or the bare code) ends it; a
                // continuation line may well start with other digits.
                let ends = matches!(parse_reply_line(&line), Ok((c, Sep::Last, _)) if c == reply.code);
                reply.lines.push(line);
                if ends {
                    self.bytes = 0;
                    Ok(self.current.take())
                } else {
                    Ok(None)
                }
            }
        }
    }
}

impl ReplyAssembler {
    fn reset(&mut self) {
        self.current = None;
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(a: &mut ReplyAssembler, lines: &[&[u8]]) -> Vec<Result<Option<Reply>, ReplyError>> {
        lines.iter().map(|l| a.push(l.to_vec())).collect()
    }

    #[test]
    fn reply_line_forms() {
        assert_eq!(parse_reply_line(b"220 hi"), Ok((Code(220), Sep::Last, &b"hi"[..])));
        assert_eq!(parse_reply_line(b"220-hi"), Ok((Code(220), Sep::More, &b"hi"[..])));
        assert_eq!(parse_reply_line(b"200"), Ok((Code(200), Sep::Last, &b""[..])));
        for bad in [&b"22 x"[..], b"2200 x", b"620 x", b"abc", b"", b"220x"] {
            assert_eq!(parse_reply_line(bad), Err(ReplyError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn multiline_digit_continuations_do_not_end_it() {
        let mut a = ReplyAssembler::new(100);
        let got = feed(&mut a, &[b"226-first", b"123 x", b"226-still", b"226 done"]);
        assert_eq!(got[..3], [Ok(None), Ok(None), Ok(None)]);
        let reply = got[3].clone().unwrap().unwrap();
        assert_eq!(reply.code, Code(226));
        assert_eq!(reply.lines.len(), 4);
        assert!(!a.in_reply());
    }

    #[test]
    fn multiline_other_code_last_line_does_not_end_it() {
        let mut a = ReplyAssembler::new(100);
        let got = feed(&mut a, &[b"230-a", b"250 b"]);
        assert_eq!(got, [Ok(None), Ok(None)]);
        assert!(a.in_reply());
    }

    #[test]
    fn multiline_line_cap_overflows() {
        let mut a = ReplyAssembler::new(3);
        let got = feed(&mut a, &[b"211-a", b"b", b"c", b"d"]);
        assert_eq!(got[3], Err(ReplyError::TooManyLines));
    }

    #[test]
    fn multiline_byte_cap_overflows_before_line_cap() {
        let mut a = ReplyAssembler::new(1000);
        let line = vec![b'x'; 8000];
        assert_eq!(a.push(b"211-start".to_vec()), Ok(None));
        for _ in 0..8 {
            assert_eq!(a.push(line.clone()), Ok(None));
        }
        assert!(a.buffered() <= MAX_REPLY_BYTES);
        assert_eq!(a.push(line), Err(ReplyError::TooLarge));
        assert_eq!(a.buffered(), 0);
        assert!(!a.in_reply());
    }

    #[test]
    fn multiline_end_frees_the_byte_count() {
        let mut a = ReplyAssembler::new(1000);
        let _ = feed(&mut a, &[b"211-a", b"bbbb"]);
        assert_eq!(a.buffered(), 9);
        let _ = feed(&mut a, &[b"211 end"]);
        assert_eq!(a.buffered(), 0);
    }

    #[test]
    fn reply_write_escapes_and_texts_strip_code() {
        let r = Reply { code: Code(257), lines: vec![b"257 \"/a\xffb\"".to_vec()] };
        let mut out = Vec::new();
        r.write(&mut out);
        assert_eq!(out, b"257 \"/a\xff\xffb\"\r\n");
        assert_eq!(r.texts().next(), Some(&b"\"/a\xffb\""[..]));
    }
}
