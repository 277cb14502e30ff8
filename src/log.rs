//! The root logger: slog-term on stderr, filtered by level.

use std::sync::Mutex;

use slog::{o, Drain, Level, Logger};

use crate::cli::{LogFormat, LogLevel};

pub(crate) fn build(level: LogLevel, format: LogFormat) -> Logger {
    let level = match level {
        LogLevel::Error => Level::Error,
        LogLevel::Warn => Level::Warning,
        LogLevel::Info => Level::Info,
        LogLevel::Debug => Level::Debug,
        LogLevel::Trace => Level::Trace,
    };
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    // Records are written synchronously on the loop thread; the volume is a
    // few lines per session, so an async drain is not worth its thread.
    match format {
        LogFormat::Full => {
            let drain = slog_term::FullFormat::new(decorator).build();
            let drain = Mutex::new(drain).filter_level(level).fuse();
            Logger::root(drain, o!())
        }
        LogFormat::Compact => {
            // CompactFormat keeps per-logger state in a RefCell; the Mutex
            // makes it shareable (one thread takes it, uncontended).
            let drain = slog_term::CompactFormat::new(decorator).build();
            let drain = Mutex::new(drain).filter_level(level).fuse();
            Logger::root(drain, o!())
        }
    }
}
