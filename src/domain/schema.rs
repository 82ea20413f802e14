//! The JSON Schema a policy's versions must satisfy.

use serde_json::Value;

use super::body::{canonical_json, json_type_name};
use super::{Error, PolicyBody, Precondition, Result, SchemaViolation};

/// A JSON Schema that compiles; stored as canonical JSON.
#[derive(Debug, Clone)]
pub struct PolicySchema {
    value: Value,
    validator: std::sync::Arc<jsonschema::Validator>,
}

impl PolicySchema {
    /// Parses and compiles a schema given in a request.
    pub fn parse(field: &str, value: Value) -> Result<Self> {
        if !value.is_object() {
            return Err(Error::invalid(
                field,
                format!(
                    "must be a JSON Schema object, got {}",
                    json_type_name(&value)
                ),
            ));
        }
        super::body::check_depth(field, &value)?;
        let validator = jsonschema::validator_for(&value).map_err(|error| {
            Error::invalid(field, format!("is not a valid JSON Schema: {error}"))
        })?;
        Ok(PolicySchema {
            value,
            validator: std::sync::Arc::new(validator),
        })
    }

    /// Reads back a schema stored as canonical JSON.
    pub fn from_stored(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|error| Error::Internal(format!("stored schema is not json: {error}")))?;
        Self::parse("schema", value)
            .map_err(|error| Error::Internal(format!("stored schema no longer compiles: {error}")))
    }

    /// The schema document.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// Its canonical JSON, as stored.
    pub fn canonical(&self) -> String {
        canonical_json(&self.value)
    }

    /// Every place where `body` breaks the schema; empty when it conforms.
    pub fn violations(&self, body: &PolicyBody) -> Vec<SchemaViolation> {
        self.validator
            .iter_errors(body.value())
            .map(|error| SchemaViolation {
                instance_path: error.instance_path().to_string(),
                message: error.to_string(),
            })
            .collect()
    }

    /// Refuses a body that breaks the schema, with every violation.
    pub fn check(&self, what: &str, body: &PolicyBody) -> Result<()> {
        let violations = self.violations(body);
        if violations.is_empty() {
            return Ok(());
        }
        let listed: Vec<String> = violations.iter().map(ToString::to_string).collect();
        Err(Error::FailedPrecondition {
            message: format!(
                "{what} does not satisfy the policy's schema: {}",
                listed.join("; ")
            ),
            kind: Precondition::Schema,
            violations,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn violations_carry_the_path_into_the_body() {
        let schema = PolicySchema::parse(
            "schema",
            json!({"type": "object", "properties": {"limits": {"type": "object",
                "properties": {"daily": {"type": "integer", "maximum": 100}}}}}),
        )
        .unwrap();
        let body = PolicyBody::parse("body", json!({"limits": {"daily": 500}}), 1024).unwrap();
        let violations = schema.violations(&body);
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].instance_path, "/limits/daily");
        let ok = PolicyBody::parse("body", json!({"limits": {"daily": 5}}), 1024).unwrap();
        assert!(schema.check("version 1", &ok).is_ok());
    }

    #[test]
    fn a_schema_that_does_not_compile_is_invalid_argument() {
        let error = PolicySchema::parse("schema", json!({"type": 12})).unwrap_err();
        assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");
    }
}
