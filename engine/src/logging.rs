//! Logs: tracing, as JSON lines (the default when stdout is not a terminal) or text.
//!
//! The JSON form is a contract that users and tests parse: one object per line with
//! `ts`, `level`, the fields of the enclosing spans (e.g. `check`), the event's fields,
//! and `message`: a sentence for people. A field whose name ends in `_json` holds a JSON document
//! that is inlined under the name without the suffix, so that the status event's
//! `checks_json` becomes `"checks": {"web": true, ...}`.

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

impl LogFormat {
    /// JSON for machines (systemd, pipes), text for a person at a terminal.
    pub fn detect() -> LogFormat {
        if std::io::stdout().is_terminal() {
            LogFormat::Text
        } else {
            LogFormat::Json
        }
    }
}

/// Installs the global subscriber. `level` is a tracing filter (`info`, `debug`,
/// `vigia_engine=debug`); `VIGIA_LOG` overrides it.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_env("VIGIA_LOG")
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // The feed sees info and above whatever the log level, and nothing below: no
    // per-run debug event is built for it.
    let feed = FeedTap.with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    let registry = tracing_subscriber::registry().with(feed);
    let result = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(JsonLines)
                    .with_writer(std::io::stdout)
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::stdout().is_terminal())
                    .with_writer(std::io::stdout)
                    .with_filter(filter),
            )
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

/// The JSON line format.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut obj = header(event);
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>() {
                    if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(fields) {
                        obj.extend(m);
                    }
                }
            }
        }
        event.record(&mut JsonVisitor(&mut obj));
        let line = serde_json::to_string(&Value::Object(obj)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// `ts` and `level`, the first keys of every line.
fn header(event: &Event<'_>) -> Map<String, Value> {
    let mut obj = Map::new();
    obj.insert(
        "ts".into(),
        Value::String(humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()),
    );
    obj.insert(
        "level".into(),
        Value::String(event.metadata().level().as_str().to_ascii_lowercase()),
    );
    obj
}

/// The log's tap for the live feed ([`crate::feed`]): the events it wants, as the
/// same JSON objects the log prints. Built only while someone reads the feed.
pub struct FeedTap;

impl<S: Subscriber> tracing_subscriber::Layer<S> for FeedTap {
    fn on_event(&self, event: &Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        if !crate::feed::has_readers() {
            return;
        }
        let mut kind = EventKind(None);
        event.record(&mut kind);
        let Some(kind) = kind.0.filter(|k| crate::feed::wants(k)) else {
            return;
        };
        let mut obj = header(event);
        event.record(&mut JsonVisitor(&mut obj));
        if let Ok(line) = serde_json::to_string(&Value::Object(obj)) {
            crate::feed::publish(kind, line);
        }
    }
}

/// Finds the `event` field.
struct EventKind(Option<String>);

impl Visit for EventKind {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "event" {
            self.0 = Some(value.to_string());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "event" {
            self.0 = Some(format!("{value:?}").trim_matches('"').to_string());
        }
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl JsonVisitor<'_> {
    fn put(&mut self, field: &Field, v: Value) {
        self.0.insert(field.name().to_string(), v);
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(name) = field.name().strip_suffix("_json") {
            let v = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
            self.0.insert(name.to_string(), v);
            return;
        }
        self.put(field, Value::String(value.to_string()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name().ends_with("_json") {
            return self.record_str(field, &format!("{value:?}"));
        }
        self.put(field, Value::String(format!("{value:?}")));
    }
}
