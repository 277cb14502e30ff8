//! Client command lines: the framer (`line::LineReader`, Telnet decoding,
//! line-end rules) and the command parser (`command::parse_command`, with
//! `addr::HostPort`/`ExtAddr` for PORT/EPRT).
//!
//! Input: byte 0 picks the chunk size the stream is fed in (respecting
//! `LineReader::space`, as the session does); the rest is the client stream.
//! Checked beyond "no panic":
//! - framing does not depend on segmentation (two chunk sizes agree);
//! - an accepted line has no CR, LF or NUL and is at most `MAX_LINE` long;
//! - `write_line` then framing again gives the same line and no Telnet answers;
//! - a parsed PORT/EPRT address writes back to the same address;
//! - the verb is case-insensitive;
//! - junk (ATTACKS.md 10): a line start that `junk_prefix` refuses belongs
//!   to a line `junk` refuses (the early verdict on a first line still
//!   arriving never refuses what the complete line would accept), and an
//!   HTTP request line is always junk.
#![no_main]

use ftpgate_proto::addr::{ExtAddr, HostPort};
use ftpgate_proto::command::{is_http_request_line, junk, junk_prefix, parse_command, Command, Junk};
use ftpgate_proto::line::{write_line, LineError, LineReader, MAX_LINE};
use libfuzzer_sys::fuzz_target;

fn frame(stream: &[u8], chunk: usize) -> Vec<Result<Vec<u8>, LineError>> {
    let mut reader = LineReader::new();
    let mut lines = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = chunk.min(reader.space()).min(rest.len());
        reader.feed(&rest[..n]);
        rest = &rest[n..];
        while let Some(line) = reader.next_line() {
            lines.push(line);
        }
    }
    lines
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else { return };
    // The raw input as one line, framer or not: the parser must never panic.
    let _ = parse_command(stream);

    // The framer rescans its buffer per feed: tiny chunks of a long stream
    // are quadratic, so long inputs get proportionally larger chunks.
    let floor = stream.len() / 256;
    let lines = frame(stream, usize::from(chunk).max(1).max(floor));
    assert_eq!(lines, frame(stream, 7usize.max(floor) + 1), "framing depends on segmentation");
    if let Some(pos) = lines.iter().position(|l| *l == Err(LineError::TooLong)) {
        assert_eq!(pos + 1, lines.len(), "lines framed after an over-long line");
    }

    for line in lines.into_iter().flatten() {
        let verdict = junk(&line);
        for k in 0..=line.len().min(16) {
            if let Some(early) = junk_prefix(&line[..k]) {
                assert!(verdict.is_some(), "prefix {k} refused ({early:?}), whole line accepted: {line:?}");
            }
        }
        if is_http_request_line(&line) {
            assert_eq!(verdict, Some(Junk::Http));
        }
        assert!(line.len() <= MAX_LINE);
        assert!(!line.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)), "{line:?}");

        let mut wire = Vec::new();
        write_line(&line, &mut wire);
        let mut again = LineReader::new();
        again.feed(&wire);
        assert_eq!(again.next_line(), Some(Ok(line.clone())), "write_line does not round-trip");
        assert_eq!(again.next_line(), None);
        assert!(again.take_answers().is_empty());

        let parsed = parse_command(&line);
        match &parsed {
            Ok(Command::Port(hp)) => {
                let mut out = Vec::new();
                hp.write(&mut out);
                assert_eq!(HostPort::parse(&out), Ok(*hp));
                assert_ne!(hp.port, 0);
            }
            Ok(Command::Eprt(ext)) => {
                assert!(ext.ip.is_some());
                let mut out = Vec::new();
                ext.write(&mut out);
                assert_eq!(ExtAddr::parse(&out), Ok(*ext));
                assert_ne!(ext.port, 0);
            }
            _ => {}
        }
        // Only the verb's case changes: same kind of command (or same error).
        let verb_len = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
        let mut upper = line.clone();
        upper[..verb_len].make_ascii_uppercase();
        let other = parse_command(&upper);
        match (&parsed, &other) {
            (Ok(a), Ok(b)) => assert_eq!(std::mem::discriminant(a), std::mem::discriminant(b)),
            (Err(a), Err(b)) => assert_eq!(a, b),
            _ => panic!("verb case changes the outcome: {parsed:?} vs {other:?}"),
        }
    }
});
