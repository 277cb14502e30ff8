//! The root logger on stderr, filtered by level: slog-term's text forms,
//! or one JSON object per line (slog-json) for machines.

use std::io::{self, Write};
use std::sync::Mutex;

use slog::{o, Drain, Level, Logger};

use crate::cli::{LogFormat, LogLevel};

pub(crate) fn build(level: LogLevel, format: LogFormat) -> Logger {
    to_writer(level, format, io::stderr())
}

/// The root logger writing to `out`. Every format carries the same keys:
/// the message, the level, the time, the logger's own pairs (a session's
/// `session`, `client`, `server`) and the record's.
pub(crate) fn to_writer<W: Write + Send + 'static>(level: LogLevel, format: LogFormat, out: W) -> Logger {
    let level = match level {
        LogLevel::Error => Level::Error,
        LogLevel::Warn => Level::Warning,
        LogLevel::Info => Level::Info,
        LogLevel::Debug => Level::Debug,
        LogLevel::Trace => Level::Trace,
    };
    // Records are written synchronously on the loop thread; the volume is a
    // few lines per session, so an async drain is not worth its thread.
    match format {
        LogFormat::Full => {
            let decorator = slog_term::PlainSyncDecorator::new(out);
            let drain = slog_term::FullFormat::new(decorator).build();
            let drain = Mutex::new(drain).filter_level(level).fuse();
            Logger::root(drain, o!())
        }
        LogFormat::Compact => {
            let decorator = slog_term::PlainSyncDecorator::new(out);
            // CompactFormat keeps per-logger state in a RefCell; the Mutex
            // makes it shareable (one thread takes it, uncontended).
            let drain = slog_term::CompactFormat::new(decorator).build();
            let drain = Mutex::new(drain).filter_level(level).fuse();
            Logger::root(drain, o!())
        }
        LogFormat::Json => {
            // `ts` (RFC 3339, UTC), `level` (INFO, WARN, ...) and `msg`,
            // then every pair. serde_json writes a record in many small
            // pieces: the buffer makes it one write, flushed per record so
            // that a line is complete as soon as it is logged.
            let drain = slog_json::Json::new(io::BufWriter::with_capacity(16 * 1024, out))
                .add_default_keys()
                .set_newlines(true)
                .set_flush(true)
                .build();
            let drain = Mutex::new(drain).filter_level(level).fuse();
            Logger::root(drain, o!())
        }
    }
}
