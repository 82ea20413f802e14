//! Request fields as the flags a user types: the server names the fields
//! of a request, and [`FLAGS`] turns them back into the flags (or
//! arguments) of the command line that set them.

/// Request fields the server may name, with the flag (or argument) of the
/// command line that sets each. Paths are written without their indices:
/// `steps[1].bake` is looked up as `steps.bake`. Only these are translated;
/// anything else is not set from the command line and keeps its name.
const FLAGS: &[(&str, &str)] = &[
    ("allow_draft_fallback", "--allow-draft-fallback"),
    ("as_of_revision", "--as-of-revision"),
    ("as_of_time", "--as-of-time"),
    ("body", "<FILE>"),
    ("change_notes", "--change-notes"),
    ("expected_active_revision", "--expected-active-revision"),
    ("expected_active_version", "--expected-active-version"),
    ("failure_rule.apply_deadline", "--apply-deadline"),
    ("failure_rule.max_rejected", "--max-rejected"),
    (
        "failure_rule.max_rejected_fraction",
        "--max-rejected-fraction",
    ),
    ("id", "<ID>"),
    ("idempotency_key", "--idempotency-key"),
    ("kinds", "--kind"),
    ("label", "--label"),
    ("label_selector", "--label-selector"),
    // ListRuntimes; elsewhere the name comes from NAMESPACE/NAME, which the
    // command line checks before any call.
    ("name", "--name"),
    ("names", "--name"),
    // WatchActive; elsewhere the namespace is checked before any call.
    ("namespace", "--namespace"),
    ("page_size", "--limit"),
    ("reason", "--reason"),
    ("requirements", "--require"),
    ("requirements.name", "--require"),
    ("requirements.range", "--require"),
    ("runtime.id", "--runtime-id"),
    ("runtime.labels", "--label"),
    ("schema", "<FILE>"),
    ("start_at", "--start-at"),
    ("states", "--state"),
    ("steps", "--step"),
    ("steps.bake", "--step"),
    ("steps.label_selector", "--step"),
    ("steps.percentage", "--step"),
    ("targets", "<TARGETS>"),
    (
        "targets.expected_active_version",
        "--expected-active-version",
    ),
    ("targets.name", "<TARGETS>"),
    ("targets.version", "<TARGETS>"),
    ("to_version", "--to-version"),
    ("version", "--version"),
];

/// The flag that sets a request field, such as `--to-version` for
/// `to_version` and "the 2nd --step" for `steps[1].bake`; an unknown field
/// keeps its name.
pub(super) fn flag_of(field: &str) -> String {
    let mut path = String::with_capacity(field.len());
    let mut index = None;
    let mut rest = field;
    while let Some(open) = rest.find('[') {
        path.push_str(&rest[..open]);
        let Some(close) = rest[open..].find(']') else {
            break;
        };
        index = index.or(rest[open + 1..open + close].parse::<usize>().ok());
        rest = &rest[open + close + 1..];
    }
    path.push_str(rest);
    let Some((_, flag)) = FLAGS.iter().find(|(name, _)| *name == path) else {
        return field.to_owned();
    };
    match index {
        Some(index) => format!("the {} {flag}", ordinal(index + 1)),
        None => (*flag).to_owned(),
    }
}

/// `1st`, `2nd`, `3rd`, `4th`, … `11th`, `21st`.
fn ordinal(number: usize) -> String {
    let suffix = match (number % 10, number % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{number}{suffix}")
}

/// Server text with every request field of [`FLAGS`] that has an
/// underscore (so cannot be an ordinary word) replaced by its flag:
/// "pass to_version" reads "pass --to-version".
pub(super) fn with_flags(text: &str) -> String {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        // A full stop ends a sentence, not a field path.
        let field = word.trim_end_matches('.');
        let known = field.contains('_') && FLAGS.iter().any(|(name, _)| *name == field);
        if known {
            out.push_str(&flag_of(field));
            out.push_str(&word[field.len()..]);
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if is_word(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_in_server_text_read_as_flags() {
        assert_eq!(
            with_flags("version 1 is the first version ever active; pass to_version"),
            "version 1 is the first version ever active; pass --to-version"
        );
        assert_eq!(
            with_flags("set allow_draft_fallback to get its open draft"),
            "set --allow-draft-fallback to get its open draft"
        );
        assert_eq!(with_flags("pass to_version."), "pass --to-version.");
        // Ordinary words, unknown fields and values are left alone.
        assert_eq!(
            with_flags("version \"my_label\" of name x"),
            "version \"my_label\" of name x"
        );
        assert_eq!(flag_of("requirements[0].range"), "the 1st --require");
        assert_eq!(flag_of("targets[11].version"), "the 12th <TARGETS>");
        assert_eq!(flag_of("targets[21]"), "the 22nd <TARGETS>");
        assert_eq!(flag_of("request"), "request");
    }
}
