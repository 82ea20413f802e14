//! The layering the crate doc describes, checked on the sources: the domain
//! imports no transport or database crate and no other module, `watch` and
//! `storage` never reach up into `grpc`, and no two top-level modules
//! import each other, directly or around a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules it names as `crate::…`, and
/// the text of its files.
fn modules() -> BTreeMap<String, (BTreeSet<String>, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules: BTreeMap<String, (BTreeSet<String>, String)> = BTreeMap::new();
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path.strip_prefix(&root).unwrap();
            let top = relative.components().next().unwrap().as_os_str();
            let top = top.to_str().unwrap().trim_end_matches(".rs").to_owned();
            if matches!(top.as_str(), "lib" | "main" | "layers") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let (imports, all) = modules.entry(top.clone()).or_default();
            for used in text.split("crate::").skip(1) {
                let name: String = used
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    imports.insert(name);
                }
            }
            all.push_str(&text);
        }
    }
    modules
}

#[test]
fn the_domain_stands_alone() {
    let modules = modules();
    let (imports, text) = &modules["domain"];
    assert!(imports.is_empty(), "domain imports {imports:?}");
    for foreign in ["tonic", "prost", "sea_orm", "sqlx"] {
        assert!(
            !text.contains(&format!("{foreign}::")),
            "domain names {foreign}"
        );
    }
}

#[test]
fn watch_and_storage_do_not_reach_into_the_transport() {
    let modules = modules();
    for lower in ["watch", "storage", "domain", "signing", "config"] {
        assert!(!modules[lower].0.contains("grpc"), "{lower} imports grpc");
    }
}

#[test]
fn no_two_modules_import_each_other() {
    let modules = modules();
    // Depth-first search for a path back to where it started.
    fn reaches(
        modules: &BTreeMap<String, (BTreeSet<String>, String)>,
        from: &str,
        target: &str,
        seen: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        for next in modules
            .get(from)
            .map(|(imports, _)| imports)
            .into_iter()
            .flatten()
        {
            if next == target {
                return Some(vec![from.to_owned(), next.clone()]);
            }
            if seen.insert(next.clone())
                && let Some(mut path) = reaches(modules, next, target, seen)
            {
                path.insert(0, from.to_owned());
                return Some(path);
            }
        }
        None
    }
    for name in modules.keys() {
        if let Some(cycle) = reaches(&modules, name, name, &mut BTreeSet::new()) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
}
