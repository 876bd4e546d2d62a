// SPDX-License-Identifier: Apache-2.0
//! A minimal `tracing` subscriber writing one line per event to stderr
//! (STYLE §1: no `tracing-subscriber` in the plugin). stdout carries only the
//! result, so logs must never go there. Level from `WEAVE_CNI_LOG`
//! (`error`, `warn`, `info`, `debug`, `trace`; `info` by default).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Environment variable selecting the log level.
pub const LOG_ENV: &str = "WEAVE_CNI_LOG";

struct StderrLog {
    max: Level,
    program: &'static str,
    next_span: AtomicU64,
}

/// Installs the subscriber for `program` (the binary's name).
pub fn init(program: &'static str) {
    let max = match std::env::var(LOG_ENV).as_deref() {
        Ok("error") => Level::ERROR,
        Ok("warn") => Level::WARN,
        Ok("debug") => Level::DEBUG,
        Ok("trace") => Level::TRACE,
        _ => Level::INFO,
    };
    let _ = tracing::subscriber::set_global_default(StderrLog {
        max,
        program,
        next_span: AtomicU64::new(1),
    });
}

/// Collects an event's fields as `msg key=value …`.
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

impl Subscriber for StderrLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= &self.max
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line {
            message: String::new(),
            fields: String::new(),
        };
        event.record(&mut line);
        let level = event.metadata().level();
        let _ = writeln!(
            std::io::stderr().lock(),
            "{} {level} {}{}",
            self.program,
            line.message,
            line.fields
        );
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}
