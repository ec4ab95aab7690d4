//! Logs through `tracing`, on stderr (never stdout), one line per event. Levels come from
//! `RUST_LOG` (default `info`). Two formats:
//!
//! - `text` (default): logfmt, `ts=<unix seconds> level=info msg=ready routes=3`, the format
//!   the agent has always written, so operators' greps and parsers keep working;
//! - `json`: tracing-subscriber's JSON lines (`timestamp`, `level`, `fields.message`, the
//!   event's other fields), for log shippers.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("RUST_LOG: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    #[error("a logger is already installed")]
    AlreadySet,
}

/// Installs the process-wide subscriber.
pub fn init(format: LogFormat) -> Result<(), LogError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives)?,
        _ => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let installed = match format {
        LogFormat::Text => builder.event_format(Logfmt).try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    installed.map_err(|_| LogError::AlreadySet)
}

/// One logfmt line per event: `ts`, `level`, `msg`, then the event's fields in order.
struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        let mut fields = Fields::default();
        event.record(&mut fields);
        writeln!(
            writer,
            "ts={ts:.3} level={level} msg={}{}",
            quote(&fields.message),
            fields.rest
        )
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields arrive here wrapped so that Debug prints their Display.
        self.put(field, format!("{value:?}"));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            use fmt::Write as _;
            let _ = write!(self.rest, " {}={}", field.name(), quote(&value));
        }
    }
}

fn quote(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=')
    {
        v.to_string()
    } else {
        format!("{v:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn quoting() {
        assert_eq!(quote("abc"), "abc");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote(""), "\"\"");
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn logfmt_line_keeps_the_old_fields() {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .event_format(Logfmt)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(routes = 3, node = %"h 1", "ready");
        });
        let bytes = buffer.0.lock().map(|b| b.clone()).unwrap_or_default();
        let line = String::from_utf8_lossy(&bytes);
        assert!(line.starts_with("ts="), "{line}");
        assert!(
            line.ends_with(" level=info msg=ready routes=3 node=\"h 1\"\n"),
            "{line}"
        );
    }
}
