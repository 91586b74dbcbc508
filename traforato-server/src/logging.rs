//! Structured JSON logs: one object per line with `time`, `level`, `service`, `msg`, the
//! event's fields and the fields of the spans it happened in (e.g. `request_id`, `trace_id`,
//! `span_id`), written to stdout or to a size-rotated file.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Where and how much to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Most verbose level written.
    pub level: LevelFilter,
    /// A log file (rotated by size) instead of stdout.
    pub file: Option<PathBuf>,
    /// Rotate the file when it would grow past this many MiB.
    pub rotate_size_mib: u64,
    /// Rotated files kept (`<file>.1` is the newest); 0 keeps all.
    pub max_rotations: u32,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: LevelFilter::INFO,
            file: None,
            rotate_size_mib: crate::config::DEFAULT_ROTATE_SIZE_MIB,
            max_rotations: 0,
        }
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The log file could not be opened.
    #[error("open log file {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A global subscriber was installed already.
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Installs the process-wide JSON subscriber; every record carries `service`.
pub fn init(service: &'static str, settings: &LogSettings) -> Result<(), LoggingError> {
    let writer = match &settings.file {
        None => BoxMakeWriter::new(io::stdout),
        Some(path) => {
            let file = RotatingFile::open(
                path,
                settings.rotate_size_mib.saturating_mul(1 << 20),
                settings.max_rotations,
            )
            .map_err(|source| LoggingError::Open {
                path: path.clone(),
                source,
            })?;
            BoxMakeWriter::new(Mutex::new(file))
        }
    };
    // The registry client logs token responses at debug: never more than info of it.
    let mut directives = settings.level.to_string();
    if settings.level > LevelFilter::INFO {
        directives.push_str(",oci_client=info");
    }
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(directives))
        .fmt_fields(JsonFields::new())
        .event_format(JsonLines { service })
        .with_writer(writer)
        .finish();
    tracing::subscriber::set_global_default(subscriber).map_err(|_| LoggingError::AlreadyInstalled)
}

/// The event formatter: one JSON object per line.
#[derive(Debug, Clone, Copy)]
pub struct JsonLines {
    /// The `service` field of every record.
    pub service: &'static str,
}

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
        let meta = event.metadata();
        let mut record = Map::new();
        record.insert(
            "time".into(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        );
        record.insert("level".into(), Value::String(meta.level().to_string()));
        record.insert("service".into(), Value::String(self.service.to_string()));
        // Span fields, outermost first, so inner spans win on a name clash.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields) {
                        record.extend(map);
                    }
                }
            }
        }
        let mut visitor = JsonVisitor(Map::new());
        event.record(&mut visitor);
        let mut fields = visitor.0;
        let message = fields
            .remove("message")
            .unwrap_or_else(|| Value::String(String::new()));
        record.insert("msg".into(), message);
        record.extend(fields);
        record.insert("target".into(), Value::String(meta.target().to_string()));
        writeln!(writer, "{}", Value::Object(record))
    }
}

struct JsonVisitor(Map<String, Value>);

impl Visit for JsonVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(
            field.name().into(),
            Value::from(crate::http::error_chain(value)),
        );
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::from(format!("{value:?}")));
    }
}

/// A log file that is rotated when it would grow past a size: `<file>` is renamed to
/// `<file>.1`, older rotations shift up by one, and at most `max_rotations` are kept
/// (0 keeps all).
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    max_rotations: u32,
    file: File,
    size: u64,
}

impl RotatingFile {
    /// Opens (appending) or creates `path`, creating its directory.
    pub fn open(path: &Path, max_bytes: u64, max_rotations: u32) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1),
            max_rotations,
            file,
            size,
        })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let highest = if self.max_rotations > 0 {
            let oldest = self.rotated(self.max_rotations);
            if oldest.exists() {
                fs::remove_file(&oldest)?;
            }
            self.max_rotations - 1
        } else {
            let mut n = 0;
            while self.rotated(n + 1).exists() {
                n += 1;
            }
            n
        };
        for n in (1..=highest).rev() {
            let from = self.rotated(n);
            if from.exists() {
                fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        fs::rename(&self.path, self.rotated(1))?;
        self.file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.size > 0 && self.size + buf.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn records_are_json_with_service_and_span_fields() {
        let capture = Capture::default();
        let sink = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(LevelFilter::INFO)
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines { service: "worker" })
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", request_id = "R1", trace_id = "T1");
            let _entered = span.enter();
            tracing::info!(sandbox_id = "sbx-1", count = 3u64, "sandbox created");
            tracing::debug!("not written");
        });
        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let record: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(record["service"], "worker");
        assert_eq!(record["level"], "INFO");
        assert_eq!(record["msg"], "sandbox created");
        assert_eq!(record["sandbox_id"], "sbx-1");
        assert_eq!(record["count"], 3);
        assert_eq!(record["request_id"], "R1");
        assert_eq!(record["trace_id"], "T1");
        assert!(record["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn file_rotates_and_keeps_max_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs").join("worker.log");
        let mut file = RotatingFile::open(&path, 10, 2).unwrap();
        for line in ["aaaaaaaa\n", "bbbbbbbb\n", "cccccccc\n", "dddddddd\n"] {
            file.write_all(line.as_bytes()).unwrap();
        }
        file.flush().unwrap();
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(read(path.clone()), "dddddddd\n");
        assert_eq!(read(file.rotated(1)), "cccccccc\n");
        assert_eq!(read(file.rotated(2)), "bbbbbbbb\n");
        assert!(!file.rotated(3).exists());
    }

    #[test]
    fn zero_max_rotations_keeps_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        let mut file = RotatingFile::open(&path, 4, 0).unwrap();
        for line in ["111\n", "222\n", "333\n", "444\n"] {
            file.write_all(line.as_bytes()).unwrap();
        }
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(read(path.clone()), "444\n");
        assert_eq!(read(file.rotated(1)), "333\n");
        assert_eq!(read(file.rotated(3)), "111\n");
    }

    #[test]
    fn reopening_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        RotatingFile::open(&path, 1 << 20, 1)
            .unwrap()
            .write_all(b"one\n")
            .unwrap();
        RotatingFile::open(&path, 1 << 20, 1)
            .unwrap()
            .write_all(b"two\n")
            .unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "one\ntwo\n");
    }
}
