//! Names that are valid by construction.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Error, Result};

/// A tenant boundary: a lowercase DNS label,
/// `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Namespace(String);

/// A policy name inside a namespace: like a namespace, but up to 253
/// characters and may also contain `.` and `_`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PolicyName(String);

/// A schedule's name inside a namespace, with the rules of a policy name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ScheduleName(String);

/// A webhook subscription's name inside its scope, with the rules of a
/// policy name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SubscriptionName(String);

/// The name of one entry of a schedule, with the rules of a namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EntryName(String);

/// A policy's identity, `(namespace, name)`, written `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyRef {
    /// Tenant boundary.
    pub namespace: Namespace,
    /// Name inside the namespace.
    pub name: PolicyName,
}

/// Checks a DNS-label-like name: lowercase alphanumerics at both ends,
/// `inner` characters allowed in between.
fn check_label(value: &str, max_len: usize, inner: &[char], what: &str) -> Result<(), String> {
    let is_edge = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if value.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if value.len() > max_len {
        return Err(format!(
            "{what} {} is {} characters long, at most {max_len} are allowed",
            super::quoted(value),
            value.len()
        ));
    }
    let starts_and_ends_well = value.starts_with(is_edge) && value.ends_with(is_edge);
    let all_allowed = value.chars().all(|c| is_edge(c) || inner.contains(&c));
    if !starts_and_ends_well || !all_allowed {
        let allowed: String = inner.iter().map(|c| format!(" '{c}'")).collect();
        return Err(format!(
            "{what} {} is not valid: use lowercase letters, digits and{allowed}, \
             starting and ending with a letter or digit",
            super::quoted(value)
        ));
    }
    Ok(())
}

impl Namespace {
    /// Parses a namespace, naming `field` in the error.
    pub fn parse(field: &str, value: &str) -> Result<Self> {
        check_label(value, 63, &['-'], "namespace")
            .map_err(|description| Error::invalid(field, description))?;
        Ok(Namespace(value.to_owned()))
    }

    /// The namespace as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PolicyName {
    /// Parses a policy name, naming `field` in the error.
    pub fn parse(field: &str, value: &str) -> Result<Self> {
        check_label(value, 253, &['-', '.', '_'], "policy name")
            .map_err(|description| Error::invalid(field, description))?;
        Ok(PolicyName(value.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl ScheduleName {
    /// Parses a schedule name, naming `field` in the error.
    pub fn parse(field: &str, value: &str) -> Result<Self> {
        check_label(value, 253, &['-', '.', '_'], "schedule name")
            .map_err(|description| Error::invalid(field, description))?;
        Ok(ScheduleName(value.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl SubscriptionName {
    /// Parses a subscription name, naming `field` in the error.
    pub fn parse(field: &str, value: &str) -> Result<Self> {
        check_label(value, 253, &['-', '.', '_'], "subscription name")
            .map_err(|description| Error::invalid(field, description))?;
        Ok(SubscriptionName(value.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl EntryName {
    /// Parses an entry name, naming `field` in the error.
    pub fn parse(field: &str, value: &str) -> Result<Self> {
        check_label(value, 63, &['-'], "entry name")
            .map_err(|description| Error::invalid(field, description))?;
        Ok(EntryName(value.to_owned()))
    }
}

impl PolicyRef {
    /// Parses both parts, reporting every invalid one.
    pub fn parse(namespace: &str, name: &str) -> Result<Self> {
        match (
            Namespace::parse("namespace", namespace),
            PolicyName::parse("name", name),
        ) {
            (Ok(namespace), Ok(name)) => Ok(PolicyRef { namespace, name }),
            (Err(Error::InvalidArgument(mut a)), Err(Error::InvalidArgument(b))) => {
                a.extend(b);
                Err(Error::InvalidArgument(a))
            }
            (Err(error), _) | (_, Err(error)) => Err(error),
        }
    }
}

macro_rules! string_newtype_conversions {
    ($type:ident, $field:literal) => {
        impl TryFrom<String> for $type {
            type Error = Error;
            fn try_from(value: String) -> Result<Self> {
                $type::parse($field, &value)
            }
        }
        impl From<$type> for String {
            fn from(value: $type) -> String {
                value.0
            }
        }
        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
string_newtype_conversions!(Namespace, "namespace");
string_newtype_conversions!(PolicyName, "name");
string_newtype_conversions!(ScheduleName, "name");
string_newtype_conversions!(EntryName, "name");
string_newtype_conversions!(SubscriptionName, "name");

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_follow_dns_label_rules() {
        for good in ["a", "payments", "team-42", &"a".repeat(63)] {
            assert!(Namespace::parse("namespace", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Payments",
            "a.b",
            "a_b",
            "ä",
            &"a".repeat(64),
        ] {
            assert!(Namespace::parse("namespace", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn policy_names_also_allow_dots_and_underscores() {
        for good in ["limits", "limits.card_v2", "a-b.c_d", &"a".repeat(253)] {
            assert!(PolicyName::parse("name", good).is_ok(), "{good}");
        }
        for bad in ["", ".a", "a_", "A", "a/b", "a b", &"a".repeat(254)] {
            assert!(PolicyName::parse("name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn policy_ref_reports_both_bad_parts() {
        let Err(Error::InvalidArgument(violations)) = PolicyRef::parse("Bad", "") else {
            panic!("expected invalid argument");
        };
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["namespace", "name"]);
    }
}
