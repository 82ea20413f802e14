//! Rego policies (docs/src/guides/opa.md). In a namespace served to OPA a
//! policy's body is the content of an OPA bundle in JSON form: its Rego
//! modules by file path and its data document,
//!
//! ```json
//! {"modules": {"authz/allow.rego": "package payments.authz\n..."}, "data": {"limits": {}}}
//! ```
//!
//! so every mechanism a JSON policy has (drafts, signed versions, history,
//! diffs, rollouts, runtimes) holds a Rego policy unchanged. Such a body is
//! checked with an embedded Rego engine (`regorus`) before anything is
//! stored: every module parses and compiles, its package lies under the
//! namespace's bundle roots, and a refusal names the file, the line and the
//! column.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{Error, FieldViolation, PolicyName, Result, quoted};

/// The members a Rego policy's body may have.
const MEMBERS: [&str; 2] = ["modules", "data"];

/// The bundle roots of a namespace served to OPA: the paths of the data
/// document (and so of the packages) its bundle owns, `/`-separated as in
/// OPA's manifest, none inside another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleRoots(Vec<Vec<String>>);

impl BundleRoots {
    /// Parses `roots`, refusing none at all, an empty or malformed root, and
    /// two roots of which one contains the other (OPA refuses such a
    /// manifest).
    pub fn parse(field: &str, roots: &[String]) -> Result<Self> {
        if roots.is_empty() {
            return Err(Error::invalid(field, "names no root: give at least one"));
        }
        let mut parsed: Vec<Vec<String>> = Vec::with_capacity(roots.len());
        for (index, root) in roots.iter().enumerate() {
            let segments: Vec<String> = root.split('/').map(str::to_owned).collect();
            if segments.iter().any(|segment| !is_identifier(segment)) {
                return Err(Error::invalid(
                    format!("{field}[{index}]"),
                    format!(
                        "{} is not a root: `/`-separated names of letters, digits and `_`",
                        quoted(root)
                    ),
                ));
            }
            if let Some(other) = parsed.iter().find(|other| overlap(other, &segments)) {
                return Err(Error::invalid(
                    format!("{field}[{index}]"),
                    format!(
                        "{} overlaps the root {}: one would own the other's data",
                        quoted(root),
                        quoted(&other.join("/"))
                    ),
                ));
            }
            parsed.push(segments);
        }
        Ok(BundleRoots(parsed))
    }

    /// The roots, `/`-separated, as the manifest writes them.
    pub fn paths(&self) -> Vec<String> {
        self.0.iter().map(|root| root.join("/")).collect()
    }

    /// The first root of `self` that overlaps one of `other`'s, as two
    /// paths: two bundles an OPA loads together must not share data.
    pub fn overlapping(&self, other: &BundleRoots) -> Option<(String, String)> {
        self.0.iter().find_map(|mine| {
            other
                .0
                .iter()
                .find(|theirs| overlap(mine, theirs))
                .map(|theirs| (mine.join("/"), theirs.join("/")))
        })
    }

    /// Whether the data path `segments` lies under a root.
    fn contain(&self, segments: &[&str]) -> bool {
        self.0.iter().any(|root| {
            root.len() <= segments.len() && root.iter().zip(segments).all(|(a, b)| a == b)
        })
    }

    /// Whether the data path `segments` lies above a root: the path to it.
    fn lead_to(&self, segments: &[&str]) -> bool {
        self.0.iter().any(|root| {
            root.len() > segments.len() && root.iter().zip(segments).all(|(a, b)| a == b)
        })
    }

    /// The paths of `data` outside the roots, as `a.b`: OPA refuses a
    /// bundle whose data lies outside its manifest's roots.
    fn outside<'a>(&self, data: &'a Map<String, Value>, above: &mut Vec<&'a str>) -> Vec<String> {
        let mut outside = Vec::new();
        for (key, value) in data {
            above.push(key);
            if self.contain(above) {
            } else if let (true, Value::Object(members)) = (self.lead_to(above), value) {
                outside.extend(self.outside(members, above));
            } else {
                outside.push(above.join("."));
            }
            above.pop();
        }
        outside
    }
}

/// Whether one path is a prefix of the other.
fn overlap(a: &[String], b: &[String]) -> bool {
    a.iter().zip(b).all(|(x, y)| x == y)
}

fn is_identifier(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !segment.starts_with(|c: char| c.is_ascii_digit())
}

/// Checks a Rego policy's `body` for a namespace whose bundle owns `roots`:
/// only `modules` (file path to Rego source) and `data` (an object); each
/// path a relative `.rego` file; each module parses and compiles, alone and
/// with the others; each package under a root. Every bad module is named
/// (`body.modules["authz/allow.rego"]`) with its line and column.
pub fn check_policy(body: &Value, roots: &BundleRoots) -> Result<()> {
    let members = body.as_object().expect("a policy body is an object");
    let mut violations = Vec::new();
    for name in members
        .keys()
        .filter(|name| !MEMBERS.contains(&name.as_str()))
    {
        violations.push(FieldViolation {
            field: format!("body.{name}"),
            description: "a Rego policy's body holds only `modules` (file path to Rego source) \
                          and `data`"
                .into(),
        });
    }
    match members.get("data") {
        None => {}
        Some(Value::Object(data)) => {
            for path in roots.outside(data, &mut Vec::new()) {
                violations.push(FieldViolation {
                    field: format!("body.data.{path}"),
                    description: format!(
                        "is not under the namespace's bundle roots ({})",
                        roots.paths().join(", ")
                    ),
                });
            }
        }
        Some(_) => violations.push(FieldViolation {
            field: "body.data".into(),
            description: "must be a JSON object: the policy's data document".into(),
        }),
    }
    let modules = match members.get("modules") {
        None => BTreeMap::new(),
        Some(Value::Object(modules)) => modules.iter().collect(),
        Some(_) => {
            violations.push(FieldViolation {
                field: "body.modules".into(),
                description: "must be an object of Rego sources by file path".into(),
            });
            BTreeMap::new()
        }
    };
    let mut engine = engine();
    for (path, source) in &modules {
        let field = format!("body.modules[{}]", quoted(path));
        let refuse = |description: String| FieldViolation {
            field: field.clone(),
            description,
        };
        if let Err(why) = check_path(path) {
            violations.push(refuse(why));
            continue;
        }
        let Value::String(source) = source else {
            violations.push(refuse("must be the module's Rego source, a string".into()));
            continue;
        };
        match engine.add_policy((*path).clone(), source.clone()) {
            Ok(package) => {
                let segments: Vec<&str> = package.split('.').skip(1).collect();
                if !roots.contain(&segments) {
                    violations.push(refuse(format!(
                        "its package {} is not under the namespace's bundle roots ({})",
                        package.trim_start_matches("data."),
                        roots.paths().join(", ")
                    )));
                }
            }
            Err(error) => violations.push(refuse(located(&error.to_string()))),
        }
    }
    if violations.is_empty() && !modules.is_empty() {
        // Parsing takes each module alone; the analysis that runs before
        // any evaluation compiles them together (unsafe variables,
        // conflicting rules, imports).
        if let Err(error) = engine.eval_query("true".into(), false) {
            violations.push(FieldViolation {
                field: "body.modules".into(),
                description: located(&error.to_string()),
            });
        }
    }
    match violations.is_empty() {
        true => Ok(()),
        false => Err(Error::InvalidArgument(violations)),
    }
}

/// An engine reading OPA's v1 syntax, as OPA 1.x does.
pub(super) fn engine() -> regorus::Engine {
    let mut engine = regorus::Engine::new();
    engine.set_rego_v0(false);
    engine
}

/// Loads `data` as `engine`'s data document.
pub(super) fn load_data(engine: &mut regorus::Engine, data: &Map<String, Value>) -> Result<()> {
    regorus::Value::from_json_str(&Value::Object(data.clone()).to_string())
        .and_then(|data| engine.add_data(data))
        .map_err(|error| Error::Internal(format!("a data document does not load: {error}")))
}

/// What `query` evaluates to in `engine`; `None` when undefined.
pub(super) fn query_value(
    engine: &mut regorus::Engine,
    query: String,
) -> anyhow::Result<Option<regorus::Value>> {
    let results = engine.eval_query(query, false)?;
    Ok(results
        .result
        .into_iter()
        .next()
        .and_then(|result| result.expressions.into_iter().next())
        .map(|expression| expression.value)
        .filter(|value| *value != regorus::Value::Undefined))
}

/// What `opa test` calls a test: a rule whose name starts with this.
const TEST_PREFIX: &str = "test_";

/// Runs the policy's tests as `opa test` runs those of its files: each
/// rule named `test_…` of its modules, evaluated with its modules and
/// data, passes when it is defined and not false. Every test that fails
/// or cannot be evaluated is named with its module and OPA's verdict
/// (`data.payments.authz.test_small: FAIL (undefined)`).
pub fn run_tests(body: &Value) -> Result<()> {
    let mut engine = engine();
    let Some(Value::Object(modules)) = body.get("modules") else {
        return Ok(());
    };
    let mut tests = Vec::new();
    for (path, source) in modules {
        let Value::String(source) = source else {
            continue;
        };
        let package = engine
            .add_policy(path.clone(), source.clone())
            .map_err(|error| {
                Error::Internal(format!("a checked module does not parse: {error}"))
            })?;
        // Words of the source that look like a test's name; the engine
        // says which of them its module declares as rules.
        let mut named: Vec<&str> = source
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with(TEST_PREFIX))
            .collect();
        named.sort_unstable();
        named.dedup();
        for name in named {
            if engine
                .has_declared_rule_rooted_at(path, name)
                .unwrap_or(false)
            {
                tests.push((path.clone(), format!("{package}.{name}")));
            }
        }
    }
    if tests.is_empty() {
        return Ok(());
    }
    if let Some(Value::Object(data)) = body.get("data") {
        load_data(&mut engine, data)?;
    }
    let mut violations = Vec::new();
    for (path, test) in tests {
        let verdict = match query_value(&mut engine, test.clone()) {
            Err(error) => Some(format!("ERROR ({})", located(&error.to_string()))),
            Ok(None) => Some("FAIL (undefined)".to_owned()),
            Ok(Some(regorus::Value::Bool(false))) => Some("FAIL (false)".to_owned()),
            Ok(Some(_)) => None,
        };
        if let Some(verdict) = verdict {
            violations.push(FieldViolation {
                field: format!("body.modules[{}]", quoted(&path)),
                description: format!("{test}: {verdict}"),
            });
        }
    }
    match violations.is_empty() {
        true => Ok(()),
        false => Err(Error::InvalidArgument(violations)),
    }
}

/// What a namespace's OPA bundle holds: the modules of its active policies,
/// each under its policy's name (`authz/allow.rego` of policy `limits` is
/// `limits/authz/allow.rego`), and their data documents merged into one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BundleContent {
    /// Rego source by bundle path.
    pub modules: BTreeMap<String, String>,
    /// The data document.
    pub data: Map<String, Value>,
}

/// The bundle content of `policies` (name and body, in name order). Two
/// policies that give one path of the data document different values
/// cannot be served together: OPA would hold one of them.
pub fn compose<'a>(
    policies: impl IntoIterator<Item = (&'a PolicyName, &'a Value)>,
) -> Result<BundleContent> {
    let mut content = BundleContent::default();
    let mut owners: BTreeMap<String, &PolicyName> = BTreeMap::new();
    for (name, body) in policies {
        if let Some(Value::Object(modules)) = body.get("modules") {
            for (path, source) in modules {
                if let Value::String(source) = source {
                    content
                        .modules
                        .insert(format!("{name}/{path}"), source.clone());
                }
            }
        }
        if let Some(Value::Object(data)) = body.get("data") {
            let mut path = Vec::new();
            merge(&mut content.data, data, &mut path, name, &mut owners)?;
        }
    }
    Ok(content)
}

/// Merges `from`, the data of `policy`, into `into`: objects merge member by
/// member; any other value must be the only one at its path.
fn merge<'a>(
    into: &mut Map<String, Value>,
    from: &Map<String, Value>,
    path: &mut Vec<String>,
    policy: &'a PolicyName,
    owners: &mut BTreeMap<String, &'a PolicyName>,
) -> Result<()> {
    for (key, value) in from {
        path.push(key.clone());
        match (into.get_mut(key), value) {
            (Some(Value::Object(mine)), Value::Object(theirs)) => {
                merge(mine, theirs, path, policy, owners)?;
            }
            (None, value) => {
                into.insert(key.clone(), value.clone());
                owners.insert(path.join("."), policy);
            }
            (Some(_), _) => {
                let at = path.join(".");
                // The value there was set with an object above it, whole,
                // or member by member below it.
                let related = |owned: &str| {
                    owned == at
                        || at.starts_with(&format!("{owned}."))
                        || owned.starts_with(&format!("{at}."))
                };
                let other = owners
                    .iter()
                    .find(|(owned, _)| related(owned))
                    .map(|(_, owner)| owner.to_string())
                    .unwrap_or_default();
                return Err(Error::precondition(format!(
                    "policies {other} and {policy} both give data.{at}: a namespace's bundle holds \
                     one data document, so each path belongs to one policy"
                )));
            }
        }
        path.pop();
    }
    Ok(())
}

/// Refuses a module path OPA would not take: absolute, with an empty, `.`
/// or `..` segment, or not a `.rego` file.
fn check_path(path: &str) -> std::result::Result<(), String> {
    if !path.ends_with(".rego") {
        return Err("a module's path must end in .rego".into());
    }
    if path.starts_with('/')
        || path
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err("a module's path must be relative, without empty, `.` or `..` parts".into());
    }
    Ok(())
}

/// The engine's error as one line: `line 5, column 1: expecting
/// expression`, from its report (`--> path:5:1`, the source line, a caret,
/// `error: expecting expression`).
fn located(report: &str) -> String {
    let place = report.lines().find_map(|line| {
        let (_, at) =
            line.trim()
                .strip_prefix("-->")?
                .rsplit_once(':')
                .and_then(|(rest, column)| {
                    let (path, line) = rest.rsplit_once(':')?;
                    Some((path, (line.to_owned(), column.to_owned())))
                })?;
        Some(at)
    });
    let message = report
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("error:"))
        .map_or_else(
            || report.trim().to_owned(),
            |message| message.trim().to_owned(),
        );
    match place {
        Some((line, column)) => format!("line {line}, column {column}: {message}"),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roots() -> BundleRoots {
        BundleRoots::parse("roots", &["payments".into()]).unwrap()
    }

    fn violations(body: Value) -> Vec<(String, String)> {
        match check_policy(&body, &roots()) {
            Err(Error::InvalidArgument(found)) => found
                .into_iter()
                .map(|violation| (violation.field, violation.description))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_policy_that_compiles_under_its_roots_is_taken() {
        let body = json!({
            "modules": {
                "authz/allow.rego": "package payments.authz\n\ndefault allow := false\n\nallow if input.user == data.payments.admin\n",
            },
            "data": {"payments": {"admin": "alice"}},
        });
        check_policy(&body, &roots()).unwrap();
        check_policy(&json!({"data": {}}), &roots()).unwrap();
    }

    #[test]
    fn a_module_that_does_not_parse_is_named_with_its_line_and_column() {
        let found = violations(json!({"modules": {
            "ok.rego": "package payments.ok\n\nallow := true\n",
            "authz/main.rego": "package payments.authz\n\nallow if {\n  input.user ==\n}\n",
        }}));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "body.modules[\"authz/main.rego\"]");
        assert!(found[0].1.starts_with("line 5, column 1: "), "{found:?}");
    }

    #[test]
    fn a_module_that_does_not_compile_is_refused() {
        let found = violations(json!({"modules": {
            "unsafe.rego": "package payments.unsafe\n\nallow if x > 1\n",
        }}));
        assert_eq!(found[0].0, "body.modules", "{found:?}");
        assert!(found[0].1.contains("line 3"), "{found:?}");
    }

    #[test]
    fn packages_outside_the_roots_paths_and_members_are_refused_each_by_name() {
        let found = violations(json!({
            "modules": {
                "other.rego": "package billing.authz\n\nallow := true\n",
                "../escape.rego": "package payments.x\n",
                "notes.txt": "package payments.y\n",
                "number.rego": 1,
            },
            "data": [],
            "extra": true,
        }));
        let fields: Vec<_> = found.iter().map(|(field, _)| field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "body.extra",
                "body.data",
                "body.modules[\"../escape.rego\"]",
                "body.modules[\"notes.txt\"]",
                "body.modules[\"number.rego\"]",
                "body.modules[\"other.rego\"]",
            ]
        );
        assert!(
            found[5].1.contains("billing.authz is not under"),
            "{found:?}"
        );
    }

    #[test]
    fn data_outside_the_roots_is_refused_by_path() {
        let roots = BundleRoots::parse("roots", &["payments/cards".into()]).unwrap();
        let body = json!({"data": {
            "payments": {"cards": {"max": 1}, "wires": {"max": 2}, "fee": 3},
            "billing": {},
        }});
        let found: Vec<_> = match check_policy(&body, &roots) {
            Err(Error::InvalidArgument(found)) => found.into_iter().map(|v| v.field).collect(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            found,
            [
                "body.data.billing",
                "body.data.payments.fee",
                "body.data.payments.wires"
            ]
        );
    }

    #[test]
    fn policies_compose_into_one_bundle_and_conflicting_data_is_refused() {
        let (limits, fees) = (
            PolicyName::parse("name", "limits").unwrap(),
            PolicyName::parse("name", "fees").unwrap(),
        );
        let limits_body = json!({
            "modules": {"allow.rego": "package payments\n"},
            "data": {"payments": {"limits": {"max": 500}}},
        });
        let fees_body = json!({"data": {"payments": {"fees": [1, 2]}}});
        let content = compose([(&fees, &fees_body), (&limits, &limits_body)]).unwrap();
        assert_eq!(
            content.modules.keys().collect::<Vec<_>>(),
            ["limits/allow.rego"]
        );
        assert_eq!(
            Value::Object(content.data),
            json!({"payments": {"fees": [1, 2], "limits": {"max": 500}}})
        );
        let clashing = json!({"data": {"payments": {"limits": 7}}});
        match compose([(&limits, &limits_body), (&fees, &clashing)]) {
            Err(Error::FailedPrecondition { message, .. }) => {
                assert!(
                    message.contains("limits and fees both give data.payments.limits"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn roots_that_overlap_are_refused() {
        let refused = BundleRoots::parse("roots", &["payments".into(), "payments/cards".into()]);
        match refused {
            Err(Error::InvalidArgument(found)) => {
                assert_eq!(found[0].field, "roots[1]");
                assert!(found[0].description.contains("overlaps"), "{found:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(BundleRoots::parse("roots", &[]).is_err());
        assert!(BundleRoots::parse("roots", &["a//b".into()]).is_err());
        let billing = BundleRoots::parse("roots", &["billing".into()]).unwrap();
        assert_eq!(roots().overlapping(&billing), None);
        let nested = BundleRoots::parse("roots", &["payments/cards".into()]).unwrap();
        assert_eq!(
            roots().overlapping(&nested),
            Some(("payments".into(), "payments/cards".into()))
        );
    }
}
