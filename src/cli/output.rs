//! How client commands print: aligned columns and sentences for people,
//! one JSON document for scripts, colour only on a terminal.

use std::{fmt, io::IsTerminal, sync::LazyLock};

use anstyle::{AnsiColor, Style};
use chrono::SecondsFormat;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage};
use prost_types::Timestamp;
use serde_json::Value;

use crate::grpc::{convert::from_timestamp, proto};

/// How a client command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns and sentences, for people.
    Table,
    /// One JSON document on standard output, for scripts.
    Json,
}

/// Prints a reply as grpcurl does: the protobuf JSON mapping (lowerCamelCase
/// names, enum value names, 64-bit integers as strings, RFC 3339 times,
/// fields at their default value left out), so one jq filter reads both.
pub fn print_message<M: prost::Message + prost::Name>(message: &M) {
    print_json(&message_json(message));
}

/// The descriptors of the API's messages, for the protobuf JSON mapping.
pub fn descriptors() -> &'static DescriptorPool {
    static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
        DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET)
            .expect("the build wrote a valid descriptor set")
    });
    &POOL
}

/// A message in the protobuf JSON mapping.
pub fn message_json<M: prost::Message + prost::Name>(message: &M) -> Value {
    let descriptor = descriptors()
        .get_message_by_name(&M::full_name())
        .expect("every generated message is in the descriptor set");
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .expect("a message decodes with its own descriptor");
    let mut json = serde_json::to_value(&dynamic).expect("a message always serializes");
    crate::grpc::convert::integral_numbers(&mut json);
    json
}

/// A message read from the protobuf JSON mapping, refusing a field the
/// message does not have (a misspelt one would otherwise be dropped).
pub fn message_from_json<M: prost::Message + prost::Name + Default>(
    json: Value,
) -> Result<M, serde_json::Error> {
    let descriptor = descriptors()
        .get_message_by_name(&M::full_name())
        .expect("every generated message is in the descriptor set");
    let dynamic = DynamicMessage::deserialize_with_options(
        descriptor,
        json,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )?;
    Ok(dynamic
        .transcode_to()
        .expect("a message transcodes to its own generated type"))
}

/// Writes command output to standard output (the `out!` and `outln!`
/// macros). A reader that went away (`policyhub list-events | head`) ends
/// the process as it ends `cat`: killed by SIGPIPE, quietly, where
/// `println!` would panic. Only here: Rust ignores SIGPIPE in every program,
/// and sockets keep it ignored, so a client whose server resets the
/// connection reports it, and `watch-active` reconnects.
pub fn write_stdout(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(error) = std::io::stdout().lock().write_fmt(text) {
        stdout_failed(error)
    }
}

/// [`write_stdout`] for bytes.
pub fn write_stdout_bytes(bytes: &[u8]) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        stdout_failed(error)
    }
}

/// Ends the process after a write to standard output failed.
pub fn stdout_failed(error: std::io::Error) -> ! {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        // SAFETY: restores SIGPIPE's default action and raises it, which
        // ends the process; no handler of ours runs.
        #[allow(unsafe_code)]
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::raise(libc::SIGPIPE);
        }
    }
    eprintln!("error: cannot write to standard output: {error}");
    std::process::exit(1)
}

/// Prints a JSON document, indented.
pub fn print_json(value: &Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(value).expect("a JSON value always serializes")
    );
}

/// Columns aligned on their widest cell.
#[derive(Debug)]
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&'static str]) -> Self {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row, one cell per column.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len(), "one cell per column");
        self.rows.push(cells);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header: Vec<String> = self.header.iter().map(|title| title.to_string()).collect();
        let lines = std::iter::once(&header).chain(&self.rows);
        let mut widths = vec![0; self.header.len()];
        for line in lines.clone() {
            for (width, cell) in widths.iter_mut().zip(line) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for line in lines {
            let mut text = String::new();
            for (cell, width) in line.iter().zip(&widths) {
                text.push_str(&format!("{cell:<width$}  "));
            }
            writeln!(f, "{}", text.trim_end())?;
        }
        Ok(())
    }
}

/// Paints text for standard output: only on a terminal, and never when
/// `NO_COLOR` is set (<https://no-color.org>).
#[derive(Debug, Clone, Copy)]
pub struct Painter {
    enabled: bool,
}

impl Painter {
    /// Colours when standard output is a terminal and NO_COLOR is unset.
    pub fn for_stdout() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
        Painter {
            enabled: std::io::stdout().is_terminal() && !no_color,
        }
    }

    fn paint(self, style: Style, text: &str) -> String {
        if self.enabled {
            format!("{style}{text}{style:#}")
        } else {
            text.to_owned()
        }
    }

    /// Something removed.
    pub fn removed(self, text: &str) -> String {
        self.paint(AnsiColor::Red.on_default(), text)
    }

    /// Something added.
    pub fn added(self, text: &str) -> String {
        self.paint(AnsiColor::Green.on_default(), text)
    }

    /// A heading.
    pub fn heading(self, text: &str) -> String {
        self.paint(Style::new().bold(), text)
    }
}

/// A timestamp as RFC 3339, to the second; empty when unset.
pub fn time_text(at: Option<Timestamp>) -> String {
    at.and_then(|at| from_timestamp("at", at).ok())
        .map(|at| at.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// A digest shortened for a table column: `sha256:` and 12 hex digits.
pub fn short_digest(digest: &str) -> String {
    digest.chars().take("sha256:".len() + 12).collect()
}

/// `text`, or `-` when it is empty, for table cells.
/// Requirements, given as `(name, range)`, as `name range, …`, such as
/// `discovery ^2, ledger *`.
pub fn requirements_text<'a>(requirements: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    requirements
        .into_iter()
        .map(|(name, range)| format!("{name} {range}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `(name, range)` pairs of protobuf requirements.
pub fn requirement_pairs(
    requirements: &[proto::Requirement],
) -> impl Iterator<Item = (&str, &str)> {
    requirements
        .iter()
        .map(|requirement| (requirement.name.as_str(), requirement.range.as_str()))
}

pub fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// A version number, or `-` for 0 ("none").
pub fn version_or_dash(version: u32) -> String {
    if version == 0 {
        "-".to_owned()
    } else {
        version.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_on_the_widest_cell() {
        let mut table = Table::new(&["POLICY", "VERSION"]);
        table.row(vec!["payments/card-limits".into(), "2".into()]);
        table.row(vec!["a/b".into(), "10".into()]);
        assert_eq!(
            table.to_string(),
            "POLICY                VERSION\n\
             payments/card-limits  2\n\
             a/b                   10\n"
        );
    }

    #[test]
    fn painting_is_off_unless_enabled() {
        let painter = Painter { enabled: false };
        assert_eq!(painter.added("+ x"), "+ x");
        let painter = Painter { enabled: true };
        assert!(painter.added("+ x").starts_with('\u{1b}'));
    }
}
