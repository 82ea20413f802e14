//! Role bindings: what a verified token or client certificate says (a
//! group, a subject, an email, a Kubernetes ServiceAccount, a SPIFFE ID),
//! mapped to grants. Each binding is scoped to one issuer, and may match
//! only a claim that issuer is configured to sign, so no binding grants a
//! role from something an issuer does not vouch for.

use std::{collections::BTreeSet, path::Path};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::Grant;

/// Values a matched claim may hold (a token listing more groups is
/// refused: providers cap theirs at a few hundred).
pub const MAX_CLAIM_VALUES: usize = 1000;

/// The bindings file: `[[bindings]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    bindings: Vec<Entry>,
}

/// One `[[bindings]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    issuer: Option<String>,
    claim: Option<String>,
    value: Option<String>,
    subject: Option<String>,
    email: Option<String>,
    service_account: Option<String>,
    spiffe_id: Option<String>,
    grants: Vec<String>,
}

/// What a binding matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// A claim holding `value`, or an array of strings holding it.
    Claim { claim: String, value: String },
    /// The token's `sub`.
    Subject(String),
    /// A verified `email` (`email_verified` not false).
    Email(String),
    /// A Kubernetes ServiceAccount: `sub` is
    /// `system:serviceaccount:NAMESPACE:NAME`.
    ServiceAccount { namespace: String, name: String },
    /// A client certificate's SPIFFE ID: exact, or every ID below a prefix
    /// written with a trailing `/*`.
    Spiffe(String),
}

/// One binding: a name, what it matches, and the grants it gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Named in `WhoAmI` as where a grant came from.
    pub name: String,
    /// The issuer whose tokens it matches; `None` for a SPIFFE ID.
    pub issuer: Option<String>,
    pub matcher: Matcher,
    pub grants: Vec<Grant>,
}

/// What the issuers a binding may name sign: the issuer and the claims
/// bindings may match in its tokens.
pub struct Signed<'a> {
    pub issuer: &'a str,
    pub claims: &'a [String],
}

/// Every binding in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bindings {
    bindings: Vec<Binding>,
}

impl Bindings {
    /// Reads and checks the bindings file against the trusted issuers and
    /// whether client certificates are verified.
    pub fn load(path: &Path, issuers: &[Signed<'_>], certificates: bool) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| anyhow::anyhow!("reading {}: {error}", path.display()))?;
        Self::parse(&text, issuers, certificates)
            .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))
    }

    fn parse(text: &str, issuers: &[Signed<'_>], certificates: bool) -> anyhow::Result<Self> {
        let file: File = toml::from_str(text)?;
        let mut names = BTreeSet::new();
        let bindings = file
            .bindings
            .into_iter()
            .map(|entry| {
                let name = entry.name.clone();
                anyhow::ensure!(
                    !name.is_empty() && names.insert(name.clone()),
                    "binding {name:?}: every binding needs a name of its own"
                );
                binding(entry, issuers, certificates)
                    .map_err(|error| anyhow::anyhow!("binding {name:?}: {error}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Bindings { bindings })
    }

    /// Their names, in the file's order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.bindings.iter().map(|binding| binding.name.as_str())
    }

    /// The bindings that match a token of `issuer` with `claims`, or why
    /// the token cannot be matched (a matched claim of the wrong type or
    /// size).
    pub fn matching_token(
        &self,
        issuer: &str,
        claims: &Map<String, Value>,
    ) -> Result<Vec<&Binding>, String> {
        let mut matched = Vec::new();
        for binding in &self.bindings {
            if binding.issuer.as_deref() == Some(issuer) && binding.matcher.matches(claims)? {
                matched.push(binding);
            }
        }
        Ok(matched)
    }

    /// The bindings that match a client certificate's SPIFFE ID.
    pub fn matching_spiffe_id(&self, id: &str) -> Vec<&Binding> {
        self.bindings
            .iter()
            .filter(|binding| match &binding.matcher {
                Matcher::Spiffe(pattern) => spiffe_matches(pattern, id),
                _ => false,
            })
            .collect()
    }
}

fn binding(entry: Entry, issuers: &[Signed<'_>], certificates: bool) -> anyhow::Result<Binding> {
    let grants = entry
        .grants
        .iter()
        .map(|grant| grant.parse::<Grant>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!grants.is_empty(), "it grants nothing: list its grants");
    let matchers = [
        entry.claim.is_some(),
        entry.subject.is_some(),
        entry.email.is_some(),
        entry.service_account.is_some(),
        entry.spiffe_id.is_some(),
    ];
    anyhow::ensure!(
        matchers.iter().filter(|set| **set).count() == 1,
        "it needs exactly one of claim (with value), subject, email, service_account or spiffe_id"
    );
    anyhow::ensure!(
        entry.value.is_some() == entry.claim.is_some(),
        "claim and value go together"
    );
    if let Some(id) = entry.spiffe_id {
        anyhow::ensure!(
            entry.issuer.is_none(),
            "a SPIFFE ID comes from a client certificate, not an issuer: drop issuer"
        );
        anyhow::ensure!(
            certificates,
            "a SPIFFE ID binding needs client certificates: set tls.client_ca_file"
        );
        spiffe_pattern(&id)?;
        return Ok(Binding {
            name: entry.name,
            issuer: None,
            matcher: Matcher::Spiffe(id),
            grants,
        });
    }
    let issuer = entry.issuer.ok_or_else(|| {
        anyhow::anyhow!("it names no issuer: a binding matches the tokens of one issuer")
    })?;
    let signed = issuers
        .iter()
        .find(|signed| signed.issuer == issuer)
        .ok_or_else(|| anyhow::anyhow!("issuer {issuer:?} is not a trusted issuer"))?;
    let needs_claim = |claim: &str| {
        anyhow::ensure!(
            signed.claims.iter().any(|signed| signed == claim),
            "issuer {issuer:?} is not configured to sign the {claim:?} claim: list it in the issuer's claims"
        );
        Ok(())
    };
    let matcher = if let (Some(claim), Some(value)) = (entry.claim, entry.value) {
        anyhow::ensure!(
            claim != "sub",
            "match the subject with subject = \"…\", not a claim"
        );
        needs_claim(&claim)?;
        Matcher::Claim { claim, value }
    } else if let Some(subject) = entry.subject {
        Matcher::Subject(subject)
    } else if let Some(email) = entry.email {
        needs_claim("email")?;
        Matcher::Email(email)
    } else if let Some(account) = entry.service_account {
        let (namespace, name) = account
            .split_once(':')
            .filter(|(namespace, name)| !namespace.is_empty() && !name.is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!("service_account {account:?} is not \"NAMESPACE:NAME\"")
            })?;
        Matcher::ServiceAccount {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    } else {
        unreachable!("exactly one matcher is set")
    };
    Ok(Binding {
        name: entry.name,
        issuer: Some(issuer),
        matcher,
        grants,
    })
}

/// Checks a SPIFFE ID or `…/*` prefix: `spiffe://TRUST-DOMAIN/PATH`.
fn spiffe_pattern(pattern: &str) -> anyhow::Result<()> {
    let rest = pattern
        .strip_prefix("spiffe://")
        .ok_or_else(|| anyhow::anyhow!("spiffe_id {pattern:?} does not start with spiffe://"))?;
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    anyhow::ensure!(
        !domain.is_empty() && !domain.contains('*'),
        "spiffe_id {pattern:?} names no trust domain"
    );
    let wildcard = path.find('*');
    anyhow::ensure!(
        wildcard.is_none() || (path.ends_with("/*") && wildcard == Some(path.len() - 1)),
        "spiffe_id {pattern:?}: a `*` may only end the pattern, as `/*`"
    );
    Ok(())
}

fn spiffe_matches(pattern: &str, id: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => id.len() > prefix.len() && id.starts_with(prefix),
        None => pattern == id,
    }
}

impl Matcher {
    fn matches(&self, claims: &Map<String, Value>) -> Result<bool, String> {
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        Ok(match self {
            Matcher::Claim { claim, value } => match claims.get(claim) {
                None => false,
                Some(Value::String(held)) => held == value,
                Some(Value::Array(items)) => {
                    if items.len() > MAX_CLAIM_VALUES {
                        return Err(format!(
                            "claim {claim:?} holds {} values, more than {MAX_CLAIM_VALUES}",
                            items.len()
                        ));
                    }
                    let mut found = false;
                    for item in items {
                        let held = item.as_str().ok_or_else(|| {
                            format!("claim {claim:?} must be a string or an array of strings")
                        })?;
                        found |= held == value;
                    }
                    found
                }
                Some(_) => {
                    return Err(format!(
                        "claim {claim:?} must be a string or an array of strings"
                    ));
                }
            },
            Matcher::Subject(subject) => text("sub") == Some(subject),
            Matcher::Email(email) => {
                text("email") == Some(email)
                    && claims.get("email_verified").and_then(Value::as_bool) != Some(false)
            }
            Matcher::ServiceAccount { namespace, name } => {
                text("sub") == Some(&format!("system:serviceaccount:{namespace}:{name}"))
            }
            Matcher::Spiffe(_) => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const IDP: &str = "https://idp.example.com";
    const CLUSTER: &str = "https://kubernetes.default.svc";

    fn parse(text: &str) -> anyhow::Result<Bindings> {
        let claims = ["groups".to_owned(), "email".to_owned()];
        let issuers = [
            Signed {
                issuer: IDP,
                claims: &claims,
            },
            Signed {
                issuer: CLUSTER,
                claims: &[],
            },
        ];
        Bindings::parse(text, &issuers, true)
    }

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn each_matcher_matches_what_it_names_and_only_for_its_issuer() {
        let bindings = parse(&format!(
            r#"
            [[bindings]]
            name = "payments-operators"
            issuer = "{IDP}"
            claim = "groups"
            value = "payments-ops"
            grants = ["payments:operator"]

            [[bindings]]
            name = "alice"
            issuer = "{IDP}"
            email = "alice@example.com"
            grants = ["*:reader"]

            [[bindings]]
            name = "agents"
            issuer = "{CLUSTER}"
            service_account = "payments:policyhub-agent"
            grants = ["payments:reader"]

            [[bindings]]
            name = "mesh"
            spiffe_id = "spiffe://example.org/ns/payments/*"
            grants = ["payments:reader"]
            "#
        ))
        .unwrap();
        let names = |matched: Vec<&Binding>| -> Vec<String> {
            matched.into_iter().map(|b| b.name.clone()).collect()
        };
        let person = claims(json!({"sub": "u1", "groups": ["x", "payments-ops"],
            "email": "alice@example.com", "email_verified": true}));
        assert_eq!(
            names(bindings.matching_token(IDP, &person).unwrap()),
            ["payments-operators", "alice"]
        );
        assert!(
            bindings
                .matching_token(CLUSTER, &person)
                .unwrap()
                .is_empty(),
            "another issuer's token matches none of them"
        );
        let unverified = claims(json!({"sub": "u1", "email": "alice@example.com",
            "email_verified": false}));
        assert!(
            bindings
                .matching_token(IDP, &unverified)
                .unwrap()
                .is_empty()
        );
        let pod = claims(json!({"sub": "system:serviceaccount:payments:policyhub-agent"}));
        assert_eq!(
            names(bindings.matching_token(CLUSTER, &pod).unwrap()),
            ["agents"]
        );
        assert_eq!(
            names(bindings.matching_spiffe_id("spiffe://example.org/ns/payments/sa/api")),
            ["mesh"]
        );
        assert!(
            bindings
                .matching_spiffe_id("spiffe://example.org/ns/search/sa/api")
                .is_empty()
        );
        assert!(
            bindings
                .matching_spiffe_id("spiffe://example.org/ns/payments/")
                .is_empty()
        );
    }

    #[test]
    fn a_matched_claim_of_the_wrong_type_or_size_refuses_the_token() {
        let bindings = parse(&format!(
            "[[bindings]]\nname = \"ops\"\nissuer = \"{IDP}\"\nclaim = \"groups\"\n\
             value = \"ops\"\ngrants = [\"*:admin\"]\n"
        ))
        .unwrap();
        for groups in [json!(7), json!({"ops": true}), json!(["ops", 3])] {
            let token = claims(json!({"sub": "u", "groups": groups}));
            assert!(bindings.matching_token(IDP, &token).is_err(), "{groups}");
        }
        let many: Vec<String> = (0..10_000).map(|i| format!("g{i}")).collect();
        let token = claims(json!({"sub": "u", "groups": many}));
        let error = bindings.matching_token(IDP, &token).unwrap_err();
        assert!(error.contains("10000 values"), "{error}");
    }

    #[test]
    fn bindings_that_would_grant_from_what_no_issuer_signs_are_refused() {
        let cases = [
            (
                format!("issuer = \"{CLUSTER}\"\nclaim = \"groups\"\nvalue = \"ops\""),
                "not configured to sign the \"groups\" claim",
            ),
            (
                "issuer = \"https://evil.example\"\nsubject = \"root\"".to_owned(),
                "not a trusted issuer",
            ),
            ("subject = \"root\"".to_owned(), "names no issuer"),
            (
                format!("issuer = \"{IDP}\"\nspiffe_id = \"spiffe://x/y\""),
                "drop issuer",
            ),
            (
                format!("issuer = \"{IDP}\"\nsubject = \"x\"\nemail = \"x@example.com\""),
                "exactly one of",
            ),
            (
                format!("issuer = \"{IDP}\"\nclaim = \"groups\""),
                "claim and value go together",
            ),
            (
                "spiffe_id = \"spiffe://example.org/*/x\"".to_owned(),
                "may only end",
            ),
            (
                format!("issuer = \"{IDP}\"\nservice_account = \"payments\""),
                "NAMESPACE:NAME",
            ),
        ];
        for (matcher, expected) in cases {
            let text = format!("[[bindings]]\nname = \"b\"\n{matcher}\ngrants = [\"*:admin\"]\n");
            let error = parse(&text).unwrap_err().to_string();
            assert!(error.contains(expected), "{matcher}: {error}");
        }
        let duplicate = format!(
            "[[bindings]]\nname = \"b\"\nissuer = \"{IDP}\"\nsubject = \"x\"\ngrants = [\"a:reader\"]\n"
        )
        .repeat(2);
        assert!(
            parse(&duplicate)
                .unwrap_err()
                .to_string()
                .contains("name of its own")
        );
        let bad_grant = format!(
            "[[bindings]]\nname = \"b\"\nissuer = \"{IDP}\"\nsubject = \"x\"\ngrants = [\"a:owner\"]\n"
        );
        assert!(
            parse(&bad_grant)
                .unwrap_err()
                .to_string()
                .contains("unknown role")
        );
        let claims: [String; 0] = [];
        let no_certificates = Bindings::parse(
            "[[bindings]]\nname = \"m\"\nspiffe_id = \"spiffe://x/y\"\ngrants = [\"a:reader\"]\n",
            &[Signed {
                issuer: IDP,
                claims: &claims,
            }],
            false,
        );
        assert!(
            no_certificates
                .unwrap_err()
                .to_string()
                .contains("tls.client_ca_file")
        );
    }
}
