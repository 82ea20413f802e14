//! The embedded engine decides as OPA does (docs/src/guides/impact.md): a
//! policy exercising rules, sets, comprehensions, defaults, negation and
//! string builtins, loaded into a real OPA (v1.22.3) and into the replay's
//! engine, answers a generated corpus of 10,000 inputs at four paths, the
//! same through OPA's `/v1/data` and through the replay; and so does every
//! example policy of the README and the book, at each of its packages.

use std::collections::BTreeMap;

use futures::{StreamExt, stream};
use policyhub::domain::canonical_json;
use policyhub::domain::impact::{Decider, Replayed};
use policyhub::domain::rego::BundleContent;
use serde_json::{Value, json};

use crate::opa::Opa;

const POLICY: &str = r#"package payments.authz

default allow := false

allow if {
	input.amount <= data.payments.limits.max
	input.currency in data.payments.currencies
	not blocked
}

allow if "admin" in input.roles

blocked if input.country in data.payments.blocked_countries

reasons contains msg if {
	input.amount > data.payments.limits.max
	msg := sprintf("amount %v over %v", [input.amount, data.payments.limits.max])
}

reasons contains "currency" if not known_currency

known_currency if input.currency in data.payments.currencies

reasons contains sprintf("blocked country %s", [input.country]) if blocked

fee := input.amount * 2 if input.amount < 900

roles := {prefix: count([role | some role in input.roles; startswith(role, prefix)]) | some prefix in ["a", "c"]}

summary := {"allow": allow, "reasons": reasons, "roles": roles}
"#;

/// Paths queried, as OPA's `/v1/data/{path}` takes them.
const PATHS: [&str; 4] = [
    "payments/authz/allow",
    "payments/authz/reasons",
    "payments/authz/summary",
    "payments/authz",
];

/// Inputs made by a fixed linear congruential generator: the same corpus
/// every run, with fields missing, empty and of other types.
fn corpus(count: usize) -> Vec<Value> {
    let mut state: u64 = 0x5eed;
    let mut next = move |bound: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % bound
    };
    let currencies = ["EUR", "USD", "GBP", "JPY", ""];
    let countries = ["FR", "DE", "KP", "IR", "US"];
    let roles = ["admin", "clerk", "auditor", "contractor"];
    (0..count)
        .map(|_| {
            let mut input = serde_json::Map::new();
            if next(10) > 0 {
                input.insert("amount".into(), json!(next(1000)));
            }
            if next(10) > 0 {
                input.insert("currency".into(), json!(currencies[next(5) as usize]));
            }
            if next(10) > 1 {
                input.insert("country".into(), json!(countries[next(5) as usize]));
            }
            let chosen: Vec<&str> = roles.iter().filter(|_| next(3) == 0).copied().collect();
            input.insert("roles".into(), json!(chosen));
            if next(50) == 0 {
                input.insert("amount".into(), json!("not a number"));
            }
            Value::Object(input)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_engine_decides_as_opa_does_on_ten_thousand_inputs() {
    let data = json!({"payments": {
        "limits": {"max": 500},
        "currencies": ["EUR", "USD"],
        "blocked_countries": ["KP", "IR"],
    }});
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("authz.rego"), POLICY).unwrap();
    std::fs::write(dir.path().join("data.json"), data.to_string()).unwrap();
    let opa = Opa::serving(&[dir.path().join("authz.rego"), dir.path().join("data.json")]).await;

    let mut content = BundleContent::default();
    content
        .modules
        .insert("authz/authz.rego".into(), POLICY.into());
    content.data = data.as_object().unwrap().clone();
    let mut decider = Decider::new(&content).unwrap();

    let inputs = corpus(10_000);
    let answers = agreed(&opa, &mut decider, &inputs, &PATHS).await;
    assert_eq!(answers.len(), 40_000);
    // The corpus reaches every branch: allowed and refused, each reason.
    let allowed = answers
        .iter()
        .filter(|((_, path), result)| *path == PATHS[0] && result.as_deref() == Some("true"))
        .count();
    assert!(
        (1000..9000).contains(&allowed),
        "{allowed} of 10000 allowed"
    );
}

/// What `opa` answers each of `inputs` at each of `paths`, asserting that
/// the replay's `decider` answers every one the same.
async fn agreed<'a>(
    opa: &Opa,
    decider: &mut Decider,
    inputs: &[Value],
    paths: &[&'a str],
) -> BTreeMap<(usize, &'a str), Option<String>> {
    let asked: Vec<(usize, &str)> = (0..inputs.len())
        .flat_map(|index| paths.iter().map(move |path| (index, *path)))
        .collect();
    let answers: BTreeMap<(usize, &str), Option<String>> = stream::iter(asked)
        .map(|(index, path)| {
            let input = &inputs[index];
            async move {
                let answer = opa.query(path, input).await.expect("OPA answers");
                assert!(
                    answer.get("code").is_none(),
                    "OPA refused {input}: {answer}"
                );
                ((index, path), answer.get("result").map(canonical_json))
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut differ = Vec::new();
    for ((index, path), by_opa) in &answers {
        let input = canonical_json(&inputs[*index]);
        let replayed = decider.decide(path, Some(&input));
        if replayed != Replayed::Decided(by_opa.clone()) {
            differ.push(format!(
                "{path} {input}: OPA {by_opa:?}, replay {replayed:?}"
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} answers differ, the first: {:#?}",
        differ.len(),
        answers.len(),
        &differ[..differ.len().min(5)]
    );
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_policy_in_the_guides_decides_as_opa_does() {
    // A Rego policy's body: a JSON block with modules.
    let examples: Vec<(String, BundleContent)> = crate::helpers::documentation_pages()
        .into_iter()
        .flat_map(|page| {
            let text = std::fs::read_to_string(&page).unwrap();
            crate::docs::blocks::blocks(&page, &text)
        })
        .filter(|block| block.language == "json")
        .filter_map(|block| {
            let body: Value = serde_json::from_str(&block.body).ok()?;
            let modules = body.get("modules")?.as_object()?;
            let mut content = BundleContent::default();
            for (path, source) in modules {
                content
                    .modules
                    .insert(path.clone(), source.as_str()?.to_owned());
            }
            content.data = body.get("data")?.as_object()?.clone();
            Some((block.place(), content))
        })
        .collect();
    assert!(
        examples.len() >= 2,
        "the guides' Rego policies: {:?}",
        examples.iter().map(|(place, _)| place).collect::<Vec<_>>()
    );
    let inputs = corpus(1000);
    for (place, content) in &examples {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for (path, source) in &content.modules {
            let file = dir.path().join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, source).unwrap();
            files.push(file);
        }
        let data = dir.path().join("data.json");
        std::fs::write(&data, Value::Object(content.data.clone()).to_string()).unwrap();
        files.push(data);
        let opa = Opa::serving(&files).await;
        let mut decider = Decider::new(content).unwrap_or_else(|error| panic!("{place}: {error}"));
        // Each package's whole document: every rule of it.
        let packages: Vec<String> = content
            .modules
            .values()
            .filter_map(|source| {
                let package = source
                    .lines()
                    .find_map(|line| line.strip_prefix("package "))?;
                Some(package.trim().replace('.', "/"))
            })
            .collect();
        let paths: Vec<&str> = packages.iter().map(String::as_str).collect();
        let answers = agreed(&opa, &mut decider, &inputs, &paths).await;
        assert_eq!(answers.len(), inputs.len() * paths.len(), "{place}");
        // Each package decides something: a policy whose every answer is
        // undefined would agree by accident.
        for path in &paths {
            assert!(
                answers
                    .iter()
                    .any(|((_, at), result)| at == path && result.is_some()),
                "{place}: {path} is undefined for every input"
            );
        }
    }
}
