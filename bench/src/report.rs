//! Results: a table for people, and one JSON object per command, printed
//! as a `JSON {...}` line and, with `--json PATH`, written to a file.

use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Latency {
        let ms = |v: u64| v as f64 / 1000.0;
        Latency {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// A latency histogram in microseconds, 1 µs to 60 s.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Prints `result` as a table of its fields under `title`.
pub(crate) fn print<T: Serialize>(title: &str, result: &T) {
    let value = serde_json::to_value(result).expect("results serialize");
    println!("{title}");
    if let serde_json::Value::Object(map) = &value {
        for (key, v) in map {
            println!("  {key:<30} {v}");
        }
    }
}

/// Prints the `JSON` line and, if asked, writes the same object to `path`
/// (creating its directory).
pub(crate) fn finish(result: &serde_json::Value, path: Option<&Path>) -> anyhow::Result<()> {
    println!("JSON {result}");
    if let Some(path) = path {
        write_json(path, result)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Writes `value` as pretty JSON to `path`, creating its directory.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    create_parent(path)?;
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Creates the directory `path` goes in, if it has one.
pub(crate) fn create_parent(path: &Path) -> anyhow::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
        }
        _ => Ok(()),
    }
}
