//! Server reply lines: the framer, `reply::parse_reply_line`,
//! `reply::ReplyAssembler` (multi-line replies, line cap) and the 227/229
//! address parsers (`addr::HostPort::parse_227`, `addr::ExtAddr::parse_229`).
//!
//! Input: byte 0 picks the assembler's line cap (1–8, or 1000 for bytes ≥ 8),
//! the rest is the server stream. Checked beyond "no panic":
//! - a complete reply has 1..=cap lines and at most `MAX_REPLY_BYTES`
//!   bytes, and the assembler never holds more; its first line carries its code
//!   (`ddd ` alone, or `ddd-` when there are more lines) and only its last
//!   line is `<same code><SP>`;
//! - the assembler is idle after a complete reply or an error, and a
//!   malformed line is reported only for the first line of a reply;
//! - `Reply::write` framed again gives the same lines;
//! - a parsed 227/229 address has a non-zero port and writes back unchanged;
//! - the FEAT filter (`reply::without_features` with `TLS_FEATURES`) keeps
//!   the first and last lines, keeps every other line in order except the
//!   TLS feature lines, leaves none of those, and its output framed and
//!   assembled again is the same reply (the multi-line framing is intact).
#![no_main]

use ftpgate_proto::addr::{ExtAddr, HostPort};
use ftpgate_proto::line::LineReader;
use ftpgate_proto::reply::{
    feature_name, parse_reply_line, without_features, Reply, ReplyAssembler, ReplyError, Sep,
    MAX_REPLY_BYTES, TLS_FEATURES,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cap, stream)) = data.split_first() else { return };
    let cap = if cap < 8 { usize::from(cap) + 1 } else { 1000 };
    let _ = parse_reply_line(stream);

    let mut reader = LineReader::new();
    let mut asm = ReplyAssembler::new(cap);
    let mut rest = stream;
    while !rest.is_empty() {
        let n = reader.space().min(rest.len());
        reader.feed(&rest[..n]);
        rest = &rest[n..];
        while let Some(line) = reader.next_line() {
            let Ok(line) = line else { continue };
            let was_in_reply = asm.in_reply();
            let result = asm.push(line.clone());
            assert!(asm.buffered() <= MAX_REPLY_BYTES, "assembler holds {} bytes", asm.buffered());
            match result {
                Ok(None) => assert!(asm.in_reply(), "incomplete reply but assembler idle"),
                Ok(Some(reply)) => {
                    assert!(!asm.in_reply());
                    assert!((1..=cap).contains(&reply.lines.len()), "{} lines, cap {cap}", reply.lines.len());
                    let bytes: usize = reply.lines.iter().map(Vec::len).sum();
                    assert!(reply.lines.len() == 1 || bytes <= MAX_REPLY_BYTES, "{bytes} bytes");
                    assert_eq!(reply.lines.last(), Some(&line));
                    let (code, sep, _) = parse_reply_line(&reply.lines[0]).expect("first line has a code");
                    assert_eq!(code, reply.code);
                    assert_eq!(sep == Sep::More, reply.lines.len() > 1);
                    if reply.lines.len() > 1 {
                        let ends =
                            |l: &[u8]| matches!(parse_reply_line(l), Ok((c, Sep::Last, _)) if c == code);
                        assert!(ends(&line), "multi-line reply ended by {line:?}");
                        assert!(!reply.lines[1..reply.lines.len() - 1].iter().any(|l| ends(l)));
                    }
                    assert_eq!(reply.texts().count(), reply.lines.len());
                    check_feat_filter(&reply, cap);

                    let mut wire = Vec::new();
                    reply.write(&mut wire);
                    let mut again = LineReader::new();
                    again.feed(&wire);
                    for l in &reply.lines {
                        assert_eq!(
                            again.next_line().as_ref(),
                            Some(&Ok(l.clone())),
                            "Reply::write does not round-trip"
                        );
                    }
                    assert_eq!(again.next_line(), None);

                    for text in reply.texts() {
                        if let Some(hp) = HostPort::parse_227(text) {
                            assert_ne!(hp.port, 0);
                            let mut out = Vec::new();
                            hp.write(&mut out);
                            assert_eq!(HostPort::parse(&out), Ok(hp));
                        }
                        if let Some(port) = ExtAddr::parse_229(text) {
                            assert_ne!(port, 0);
                            let mut out = Vec::new();
                            ExtAddr { ip: None, port }.write(&mut out);
                            assert_eq!(ExtAddr::parse(&out), Ok(ExtAddr { ip: None, port }));
                        }
                    }
                }
                Err(ReplyError::Malformed) => {
                    assert!(!was_in_reply, "continuation line refused as malformed");
                    assert!(!asm.in_reply());
                }
                Err(ReplyError::TooManyLines | ReplyError::TooLarge) => {
                    assert!(was_in_reply);
                    assert!(!asm.in_reply());
                    assert_eq!(asm.buffered(), 0);
                }
            }
        }
    }
});

fn is_tls(reply: &Reply, line: &[u8]) -> bool {
    TLS_FEATURES.iter().any(|f| f.eq_ignore_ascii_case(feature_name(reply.code, line)))
}

fn check_feat_filter(reply: &Reply, cap: usize) {
    let out = without_features(reply.clone(), &TLS_FEATURES);
    let n = reply.lines.len();
    if n < 3 {
        assert_eq!(&out, reply, "a reply of {n} lines changed");
        return;
    }
    assert_eq!(out.code, reply.code);
    assert_eq!(out.lines.first(), reply.lines.first(), "first line changed");
    assert_eq!(out.lines.last(), reply.lines.last(), "last line changed");
    let kept: Vec<&Vec<u8>> = reply.lines[1..n - 1].iter().filter(|l| !is_tls(reply, l)).collect();
    let middle: Vec<&Vec<u8>> = out.lines[1..out.lines.len() - 1].iter().collect();
    assert_eq!(middle, kept, "lines other than TLS features removed or reordered");
    let mut wire = Vec::new();
    out.write(&mut wire);
    let mut reader = LineReader::new();
    reader.feed(&wire);
    let mut asm = ReplyAssembler::new(cap);
    let mut again = None;
    while let Some(Ok(line)) = reader.next_line() {
        assert!(again.is_none(), "filtered reply ends before its last line");
        again = asm.push(line).expect("filtered reply frames");
    }
    assert_eq!(again.as_ref(), Some(&out), "filtered reply does not re-assemble to itself");
}
