//! The README's map of the book leads straight to the answers readers come
//! for: each question below has a link in the README to the heading of the
//! page that answers it, so an edit of the map or of a page cannot lose one
//! silently.

use std::path::Path;

use super::{anchors, markdown_links};

/// What readers come to do, and the heading that answers it, as the
/// README links it.
const ANSWERS: [(&str, &str); 6] = [
    (
        "connect a Python service",
        "docs/src/guides/agent.md#connecting-a-python-service",
    ),
    ("roll back", "docs/src/guides/publishing.md#rolling-back"),
    (
        "give a team its own namespace",
        "docs/src/guides/auth.md#a-namespace-per-team",
    ),
    (
        "restore from a backup",
        "docs/src/guides/backup.md#restoring-from-a-backup",
    ),
    (
        "find what a metric means",
        "docs/src/reference/metrics.md#metrics",
    ),
    (
        "what FAILED_PRECONDITION on Activate means",
        "docs/src/guides/refusals.md#failed_precondition-on-activate",
    ),
];

#[test]
fn the_readme_links_each_question_to_its_answer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let links = markdown_links()(&readme);
    let mut missing = Vec::new();
    for (question, target) in ANSWERS {
        if !links.iter().any(|link| link == target) {
            missing.push(format!("{question}: the README has no link to {target}"));
            continue;
        }
        let (file, anchor) = target.split_once('#').unwrap();
        let page = std::fs::read_to_string(root.join(file)).unwrap_or_default();
        if !anchors(&page).iter().any(|heading| heading == anchor) {
            missing.push(format!("{question}: {file} has no heading #{anchor}"));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}
