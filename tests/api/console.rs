//! What the console stands on, with curl against the real server: its files
//! served under a strict Content-Security-Policy without a token, and
//! WhoAmI, which tells it the caller's methods so that it shows only the
//! actions the caller may take. The console itself is tested in a browser
//! by `scripts/test-console`.

use serde_json::json;

use crate::cli::{mint_token, policyhub_with};
use crate::helpers::Backend;
use crate::http::{app, curl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_from_the_binary_under_a_strict_policy() {
    let app = app(Backend::Sqlite, false).await;
    let root = curl(&app, "GET", "/", None, &[]);
    assert_eq!(
        (root.status, root.header("location")),
        (302, Some("/console/"))
    );

    let index = curl(&app, "GET", "/console/", None, &[]);
    assert_eq!(index.status, 200, "no token needed for the files");
    assert_eq!(
        index.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let policy = index.header("content-security-policy").unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ] {
        assert!(policy.contains(directive), "{directive} in {policy}");
    }
    assert!(!policy.contains("unsafe"), "{policy}");
    assert_eq!(index.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(index.header("referrer-policy"), Some("no-referrer"));

    let etag = index.header("etag").unwrap().to_owned();
    let again = curl(
        &app,
        "GET",
        "/console/",
        None,
        &[&format!("If-None-Match: {etag}")],
    );
    assert_eq!(again.status, 304);
    let script = curl(&app, "GET", "/console/js/app.js", None, &[]);
    assert_eq!(
        (script.status, script.header("content-type")),
        (200, Some("text/javascript; charset=utf-8"))
    );

    // Anything else is the API's: a JSON 404, and no file outside the
    // console's.
    for path in [
        "/console/nothing.js",
        "/console/../Cargo.toml",
        "/console/%2e%2e/Cargo.toml",
    ] {
        let missing = curl(&app, "GET", path, None, &[]);
        assert_eq!(
            (missing.status, &missing.json["code"]),
            (404, &json!(5)),
            "{path}"
        );
    }
    // Files are read, never written.
    let posted = curl(&app, "POST", "/console/", Some("{}"), &[]);
    assert_eq!(posted.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_names_the_caller_its_grants_and_the_methods_they_allow() {
    let app = app(Backend::Sqlite, false).await;
    let data_dir = app.database.data_dir.path().display().to_string();
    let token = |subject, grant| {
        let token = mint_token(&data_dir, subject, grant)
            .success()
            .trim()
            .to_owned();
        format!("Authorization: Bearer {token}")
    };
    let (operator, approver) = (
        token("olga", "payments:operator"),
        token("avery", "payments:approver"),
    );

    let me = curl(
        &app,
        "GET",
        "/v1/whoami?namespace=payments",
        None,
        &[&operator],
    );
    assert_eq!(me.status, 200, "{me:?}");
    assert_eq!(me.json["subject"], "olga");
    assert_eq!(me.json["grants"], json!(["payments:operator"]));
    let allowed: Vec<&str> = me.json["allowedMethods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|method| method.as_str().unwrap())
        .collect();
    for method in [
        "Draft",
        "Publish",
        "Activate",
        "Rollback",
        "StartRollout",
        "ListEvents",
    ] {
        assert!(allowed.contains(&method), "{method} in {allowed:?}");
    }
    for method in [
        "ApproveRollout",
        "SetSchema",
        "Backup",
        "RotateSigningKey",
        "WhoAmI",
    ] {
        assert!(!allowed.contains(&method), "{method} not in {allowed:?}");
    }

    // Another namespace: nothing allowed there; no namespace: none listed.
    let elsewhere = curl(
        &app,
        "GET",
        "/v1/whoami?namespace=billing",
        None,
        &[&operator],
    );
    assert_eq!(elsewhere.json["allowedMethods"], json!(null));
    let plain = curl(&app, "GET", "/v1/whoami", None, &[&approver]);
    assert_eq!(
        (
            plain.json["subject"].as_str(),
            plain.json["allowedMethods"].as_array()
        ),
        (Some("avery"), None)
    );
    let approving = curl(
        &app,
        "GET",
        "/v1/whoami?namespace=payments",
        None,
        &[&approver],
    );
    assert!(
        approving.json["allowedMethods"]
            .as_array()
            .unwrap()
            .contains(&json!("ApproveRollout"))
    );

    // The CLI asks the same, as `kubectl auth whoami` does.
    let olga = mint_token(&data_dir, "olga", "payments:operator")
        .success()
        .trim()
        .to_owned();
    let server = format!("http://{}", app.address);
    let env = [
        ("POLICYHUB_SERVER", server.as_str()),
        ("POLICYHUB_TOKEN", olga.as_str()),
    ];
    let printed = policyhub_with(&env, &["whoami", "payments"]);
    let printed = printed.success();
    assert!(printed.contains("subject: olga"), "{printed}");
    assert!(printed.contains("grants:  payments:operator"), "{printed}");
    assert!(
        printed.contains("may call in payments: Draft, DiscardDraft, Publish, Activate"),
        "{printed}"
    );
    let json = policyhub_with(&env, &["whoami", "billing", "-o", "json"]).json();
    assert_eq!(
        json,
        json!({"subject": "olga", "grants": ["payments:operator"], "issuer": "policyhub-local",
            "heldGrants": [{"grant": "payments:operator", "grantedBy": "claim \"roles\""}]})
    );
    assert!(
        printed.contains("  payments:operator from claim \"roles\""),
        "{printed}"
    );

    // `auth can-i`, as kubectl's: yes or no, why, and the exit code.
    let yes = policyhub_with(&env, &["auth", "can-i", "Activate", "payments"]);
    let said = yes.success();
    assert!(
        said.starts_with("yes\nolga holds payments:operator (from claim \"roles\")"),
        "{said}"
    );
    let no = policyhub_with(&env, &["auth", "can-i", "ApproveRollout", "payments"]);
    assert_eq!(no.code, 1, "{}", no.stderr);
    assert!(
        no.stdout
            .starts_with("no\nolga may not call ApproveRollout"),
        "{}",
        no.stdout
    );
    let asked = curl(&app, "GET", "/v1/access?method=Backup", None, &[&operator]);
    assert_eq!(asked.status, 200, "{asked:?}");
    assert_eq!(asked.json["allowed"], json!(null), "{asked:?}");
    assert!(
        asked.json["reason"]
            .as_str()
            .unwrap()
            .contains("needs the \"*:admin\" grant"),
        "{asked:?}"
    );
    for (query, field) in [
        ("method=Activate", "namespace"),
        ("method=Backup&namespace=payments", "namespace"),
        ("method=Fly&namespace=payments", "method"),
        ("namespace=payments", "method"),
    ] {
        let bad = curl(
            &app,
            "GET",
            &format!("/v1/access?{query}"),
            None,
            &[&operator],
        );
        assert_eq!(
            (bad.status, &bad.json["code"]),
            (400, &json!(3)),
            "{query}: {bad:?}"
        );
        assert!(bad.json.to_string().contains(field), "{query}: {bad:?}");
    }

    // Bad input: no token, a bad namespace.
    let anonymous = curl(&app, "GET", "/v1/whoami", None, &[]);
    assert_eq!(
        (anonymous.status, &anonymous.json["code"]),
        (401, &json!(16))
    );
    let bad = curl(
        &app,
        "GET",
        "/v1/whoami?namespace=Not%20A%20Name",
        None,
        &[&operator],
    );
    assert_eq!((bad.status, &bad.json["code"]), (400, &json!(3)), "{bad:?}");
}

/// Every literal pattern of the console's inputs compiles as browsers
/// compile the attribute, with the v flag: one that does not is logged as
/// an error in the browser and never checked (`[a-z-]` must be `[a-z\-]`).
/// Node runs the same JavaScript engine's rules, without a browser.
#[test]
fn every_input_pattern_of_the_console_compiles_with_the_v_flag() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let checked = std::process::Command::new("node")
        .arg(root.join("tests/console/patterns.mjs"))
        .arg(root.join("console"))
        .output()
        .expect("run node");
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}
