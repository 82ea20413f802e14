//! The layering of ARCHITECTURE.md, checked on the sources: every `use`
//! tree (grouped, nested, `super::super::`, `self::`) and every path in the
//! code is parsed with `syn` and resolved to the module it names; an edge
//! between two top-level modules must be in [`ALLOWED`], the domain names no
//! transport or database crate, and the modules inside one top-level module
//! import each other without a cycle. The runtime library's modules (and
//! those inside each) import each other without a cycle too. Comments and strings are not code, so
//! they count for nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Which top-level modules each one may name: the arrows of
/// ARCHITECTURE.md. The domain decides, storage executes, the hub
/// orchestrates, transport adapts; `startup` wires them together.
const ALLOWED: &[(&str, &[&str])] = &[
    ("domain", &[]),
    ("shutdown", &[]),
    ("connections", &[]),
    ("config", &["domain", "connections"]),
    ("signing", &["domain"]),
    ("watch", &["domain"]),
    ("opa", &["domain", "signing"]),
    ("storage", &["domain", "signing"]),
    ("fleet", &["domain", "config", "storage"]),
    (
        "hub",
        &[
            "domain", "config", "signing", "storage", "watch", "fleet", "opa",
        ],
    ),
    ("controller", &["domain", "hub"]),
    ("prometheus", &["domain", "config"]),
    ("notifications", &["domain", "config", "hub", "metrics"]),
    (
        "witnessing",
        &["domain", "config", "hub", "metrics", "storage"],
    ),
    ("replication", &["config", "hub", "storage", "watch"]),
    (
        "grpc",
        &["domain", "config", "signing", "watch", "fleet", "hub"],
    ),
    (
        "http",
        &["grpc", "telemetry", "metrics", "watch", "connections"],
    ),
    ("metrics", &["grpc", "fleet", "watch", "connections"]),
    ("telemetry", &["config", "grpc"]),
    ("agent", &["domain", "http", "metrics", "connections"]),
    ("witness", &["connections"]),
    (
        "startup",
        &[
            "domain",
            "config",
            "signing",
            "storage",
            "watch",
            "fleet",
            "hub",
            "controller",
            "prometheus",
            "notifications",
            "witnessing",
            "replication",
            "grpc",
            "http",
            "metrics",
            "telemetry",
            "shutdown",
            "connections",
        ],
    ),
    (
        "cli",
        &[
            "domain",
            "config",
            "signing",
            "grpc",
            "startup",
            "shutdown",
            "telemetry",
            "agent",
            "witness",
            "connections",
        ],
    ),
];

/// A file's module path, such as `["storage", "transaction"]`.
type ModulePath = Vec<String>;

/// The module path of `relative` (a path under `src/`).
fn module_of(relative: &Path) -> ModulePath {
    let mut path: ModulePath = relative
        .with_extension("")
        .components()
        .map(|part| part.as_os_str().to_string_lossy().into_owned())
        .collect();
    if path.last().is_some_and(|last| last == "mod") {
        path.pop();
    }
    path
}

/// Every module path a file names, resolved from where it stands.
struct Names<'a> {
    /// The module the visitor is in (the file's, plus inline `mod`s).
    here: ModulePath,
    /// Every module of the crate, to tell a module from an item.
    modules: &'a BTreeSet<ModulePath>,
    named: BTreeSet<ModulePath>,
}

impl Names<'_> {
    /// Resolves `segments` as written in the current module, keeping the
    /// longest prefix that is a module of the crate.
    fn resolve(&mut self, segments: &[String]) {
        let Some(first) = segments.first() else {
            return;
        };
        let mut base = match first.as_str() {
            "crate" => Vec::new(),
            "self" => self.here.clone(),
            "super" => self.here.clone(),
            _ => {
                // A bare path names a child module of this one, or
                // something that is not the crate's.
                let mut child = self.here.clone();
                child.push(first.clone());
                if !self.modules.contains(&child) {
                    return;
                }
                self.here.clone()
            }
        };
        let mut rest = segments;
        if first == "crate" || first == "self" {
            rest = &segments[1..];
        }
        while rest.first().is_some_and(|segment| segment == "super") {
            base.pop();
            rest = &rest[1..];
        }
        let mut longest = base.clone();
        for segment in rest {
            base.push(segment.clone());
            if self.modules.contains(&base) {
                longest = base.clone();
            } else {
                break;
            }
        }
        self.named.insert(longest);
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.use_tree(prefix, &path.tree);
                prefix.pop();
            }
            syn::UseTree::Name(name) => {
                prefix.push(name.ident.to_string());
                self.resolve(&prefix.clone());
                prefix.pop();
            }
            syn::UseTree::Rename(rename) => {
                prefix.push(rename.ident.to_string());
                self.resolve(&prefix.clone());
                prefix.pop();
            }
            syn::UseTree::Glob(_) => self.resolve(&prefix.clone()),
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Names<'_> {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path
            .segments
            .iter()
            .map(|segment| segment.ident.to_string())
            .collect();
        if segments.len() > 1 {
            self.resolve(&segments);
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        self.here.push(item.ident.to_string());
        syn::visit::visit_item_mod(self, item);
        self.here.pop();
    }
}

/// One file's module, its syntax, and the modules it names.
struct Parsed {
    path: PathBuf,
    here: ModulePath,
    file: syn::File,
    named: BTreeSet<ModulePath>,
}

/// Parses every file but the crate root (`lib`, `main`) and this test,
/// resolving the modules each names; a file that does not parse is a
/// violation.
fn parse(files: &BTreeMap<PathBuf, String>, found: &mut Vec<String>) -> Vec<Parsed> {
    let modules: BTreeSet<ModulePath> = files.keys().map(|path| module_of(path)).collect();
    let mut parsed = Vec::new();
    for (path, text) in files {
        let here = module_of(path);
        if here.len() == 1 && matches!(here[0].as_str(), "lib" | "main" | "layers") {
            continue;
        }
        let file = match syn::parse_file(text) {
            Ok(file) => file,
            Err(error) => {
                found.push(format!("{}: does not parse: {error}", path.display()));
                continue;
            }
        };
        let mut names = Names {
            here: here.clone(),
            modules: &modules,
            named: BTreeSet::new(),
        };
        names.visit_file(&file);
        parsed.push(Parsed {
            path: path.clone(),
            here,
            file,
            named: names.named,
        });
    }
    parsed
}

/// Edges between the modules just below each top-level module, from
/// `from`'s file to the module it names.
fn sibling_edge(
    siblings: &mut BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    from: &ModulePath,
    named: &ModulePath,
) {
    if let (Some(top), Some(child), Some(to)) = (from.first(), from.get(1), named.get(1))
        && named.first() == Some(top)
        && child != to
    {
        siblings
            .entry(top.clone())
            .or_default()
            .entry(child.clone())
            .or_default()
            .insert(to.clone());
    }
}

/// The cycles among `siblings`, each under its top-level module's name
/// after `prefix`.
fn sibling_cycles(
    prefix: &str,
    siblings: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    found: &mut Vec<String>,
) {
    for (top, edges) in siblings {
        if let Some(cycle) = cycle(edges) {
            found.push(format!("{prefix}{top}: import cycle {}", cycle.join(" → ")));
        }
    }
}

/// What the check found wrong in a tree of sources.
fn violations(files: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut found = Vec::new();
    let mut siblings = BTreeMap::new();
    for Parsed {
        path,
        here,
        file,
        named,
    } in parse(files, &mut found)
    {
        let top = here[0].clone();
        for named in named {
            let Some(target) = named.first() else {
                continue;
            };
            if target != &top {
                let may = allowed.get(top.as_str()).copied().unwrap_or_default();
                if !may.contains(&target.as_str()) {
                    found.push(format!("{}: {top} may not import {target}", path.display()));
                }
            } else {
                sibling_edge(&mut siblings, &here, &named);
            }
        }
        if top == "domain" {
            for foreign in ["tonic", "prost", "sea_orm", "sqlx"] {
                let mut crates = ForeignCrates(BTreeSet::new());
                crates.visit_file(&file);
                if crates.0.contains(foreign) {
                    found.push(format!("{}: the domain names {foreign}", path.display()));
                }
            }
        }
    }
    sibling_cycles("", &siblings, &mut found);
    found
}

/// What the check found wrong in the runtime library's sources: the
/// library has no table of layers, but its modules, and the modules inside
/// each, import each other without a cycle.
fn runtime_violations(files: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let mut found = Vec::new();
    let mut top_level: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut siblings = BTreeMap::new();
    for Parsed { here, named, .. } in parse(files, &mut found) {
        for named in named {
            match named.first() {
                Some(target) if target != &here[0] => {
                    top_level
                        .entry(here[0].clone())
                        .or_default()
                        .insert(target.clone());
                }
                Some(_) => sibling_edge(&mut siblings, &here, &named),
                None => {}
            }
        }
    }
    if let Some(cycle) = cycle(&top_level) {
        found.push(format!("runtime: import cycle {}", cycle.join(" → ")));
    }
    sibling_cycles("runtime/", &siblings, &mut found);
    found
}

/// The first segments of every path: the crates a file names.
struct ForeignCrates(BTreeSet<String>);

impl<'ast> Visit<'ast> for ForeignCrates {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        if let Some(first) = path.segments.first() {
            self.0.insert(first.ident.to_string());
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut tree = &item.tree;
        loop {
            match tree {
                syn::UseTree::Path(path) => {
                    self.0.insert(path.ident.to_string());
                    break;
                }
                syn::UseTree::Name(name) => {
                    self.0.insert(name.ident.to_string());
                    break;
                }
                syn::UseTree::Group(group) => match group.items.first() {
                    Some(first) => tree = first,
                    None => break,
                },
                _ => break,
            }
        }
    }
}

/// A cycle among `edges`, if there is one.
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn reach(
        edges: &BTreeMap<String, BTreeSet<String>>,
        from: &str,
        target: &str,
        seen: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        for next in edges.get(from).into_iter().flatten() {
            if next == target {
                return Some(vec![from.to_owned(), next.clone()]);
            }
            if seen.insert(next.clone())
                && let Some(mut path) = reach(edges, next, target, seen)
            {
                path.insert(0, from.to_owned());
                return Some(path);
            }
        }
        None
    }
    edges
        .keys()
        .find_map(|start| reach(edges, start, start, &mut BTreeSet::new()))
}

/// Every source file of the crate, by its path under `src/`.
fn sources() -> BTreeMap<PathBuf, String> {
    sources_under("src")
}

/// Every source file of the runtime library, by its path under its `src/`.
fn runtime_sources() -> BTreeMap<PathBuf, String> {
    sources_under("runtime/src")
}

/// Every `.rs` file under `dir` of the workspace, by its path below it.
fn sources_under(dir: &str) -> BTreeMap<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files = BTreeMap::new();
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                let relative = path.strip_prefix(&root).unwrap().to_owned();
                files.insert(relative, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    files
}

#[test]
fn the_sources_keep_the_layering_of_architecture_md() {
    assert_eq!(violations(&sources()), Vec::<String>::new());
}

#[test]
fn the_runtime_library_has_no_import_cycle() {
    assert_eq!(runtime_violations(&runtime_sources()), Vec::<String>::new());
}

#[test]
fn every_top_level_module_has_a_row() {
    let rows: BTreeSet<&str> = ALLOWED.iter().map(|(module, _)| *module).collect();
    for path in sources().keys() {
        let top = module_of(path)[0].clone();
        if !matches!(top.as_str(), "lib" | "main" | "layers") {
            assert!(rows.contains(top.as_str()), "{top} has no row in ALLOWED");
        }
    }
}

/// The check itself fails on what it is there to find: a plain, a grouped
/// and a nested import of storage by the transport, a `super::super::`
/// path, a path in code rather than in a `use`, a cycle between two modules
/// of storage, a cycle between two modules of the runtime library and one
/// between two inside one of its modules, and a domain that names a
/// database crate. A comment that names storage is no import.
#[test]
fn planted_violations_are_found() {
    let plant = |path: &str, text: &str| {
        let mut files = sources();
        files.insert(PathBuf::from(path), text.to_owned());
        violations(&files)
    };
    for text in [
        "use crate::storage::Repository;",
        "use crate::{domain, storage};",
        "use crate::{domain::Result, storage::{self, Repository}};",
        "use super::super::storage::Repository;",
        "fn f() { let _ = crate::storage::redact(\"\"); }",
    ] {
        let found = plant("grpc/planted.rs", text);
        assert!(
            found
                .iter()
                .any(|violation| violation.contains("grpc may not import storage")),
            "{text}: {found:?}"
        );
    }
    assert_eq!(
        plant(
            "grpc/planted.rs",
            "// crate::storage::Repository\nuse crate::domain::Result;"
        ),
        Vec::<String>::new()
    );
    let mut files = sources();
    files.insert(
        "storage/planted_a.rs".into(),
        "use super::planted_b::B;".into(),
    );
    files.insert(
        "storage/planted_b.rs".into(),
        "use super::planted_a::A;".into(),
    );
    let found = violations(&files);
    assert!(
        found
            .iter()
            .any(|violation| violation.contains("storage: import cycle")),
        "{found:?}"
    );
    let mut files = runtime_sources();
    files.insert("planted_a.rs".into(), "use crate::planted_b::B;".into());
    files.insert("planted_b.rs".into(), "use crate::planted_a::A;".into());
    let found = runtime_violations(&files);
    assert!(
        found
            .iter()
            .any(|violation| violation.contains("runtime: import cycle")),
        "{found:?}"
    );
    let mut files = runtime_sources();
    files.insert(
        "session/planted_a.rs".into(),
        "use super::planted_b::B;".into(),
    );
    files.insert(
        "session/planted_b.rs".into(),
        "use super::planted_a::A;".into(),
    );
    let found = runtime_violations(&files);
    assert!(
        found
            .iter()
            .any(|violation| violation.contains("runtime/session: import cycle")),
        "{found:?}"
    );
    let found = plant("domain/planted.rs", "use sea_orm::EntityTrait;");
    assert!(
        found
            .iter()
            .any(|violation| violation.contains("the domain names sea_orm")),
        "{found:?}"
    );
}

/// The workspace's lints are the standard of every crate in it: each member
/// opts in, and the table keeps `unsafe` denied and the 2018 idioms on, so
/// neither can lapse by a crate added without them.
#[test]
fn every_crate_of_the_workspace_keeps_the_workspace_lints() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest =
        |path: &Path| -> toml::Table { std::fs::read_to_string(path).unwrap().parse().unwrap() };
    let workspace = manifest(&root.join("Cargo.toml"));
    let lints = &workspace["workspace"]["lints"];
    assert_eq!(lints["rust"]["unsafe_code"].as_str(), Some("deny"));
    assert_eq!(
        lints["rust"]["rust_2018_idioms"]["level"].as_str(),
        Some("deny")
    );
    assert_eq!(
        lints["clippy"]["undocumented_unsafe_blocks"].as_str(),
        Some("deny")
    );
    let members = workspace["workspace"]["members"].as_array().unwrap();
    for member in members {
        let member = member.as_str().unwrap();
        let lints = &manifest(&root.join(member).join("Cargo.toml"))["lints"];
        assert_eq!(lints["workspace"].as_bool(), Some(true), "{member}");
    }
}
