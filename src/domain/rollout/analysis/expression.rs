//! The analyses' expressions: a query is a MiniJinja template over the
//! rollout's facts ([`QueryFacts`]), a condition a MiniJinja expression
//! over `result`, each checked before anything is written.

use std::collections::BTreeSet;

use serde::Serialize;

use super::{CONDITION_VARIABLE, QUERY_VARIABLES};
use crate::domain::rollout::{Rollout, StartRolloutCommand};
use crate::domain::{Error, ExpectedActive, Result, VersionSelector};

/// The facts of a rollout at one step, as a query's template sees them.
#[derive(Debug, Clone, Serialize)]
pub struct QueryFacts {
    /// The rollout's namespace.
    pub namespace: String,
    /// The rollout's id.
    pub rollout: String,
    /// The target policies' names, `|`-separated (for `=~`).
    pub policies: String,
    /// The candidate versions, `|`-separated.
    pub candidate: String,
    /// The stable versions the cohort returns to, `|`-separated.
    pub baseline: String,
    /// The step, from 1.
    pub step: usize,
    /// The step's percentage.
    pub percentage: u32,
}

impl QueryFacts {
    /// The facts of `rollout` at `step`.
    pub fn of(rollout: &Rollout, step: usize) -> Self {
        let join = |values: Vec<String>| values.join("|");
        QueryFacts {
            namespace: rollout.namespace.to_string(),
            rollout: rollout.id.clone(),
            policies: join(
                rollout
                    .targets
                    .iter()
                    .map(|target| target.policy.name.to_string())
                    .collect(),
            ),
            candidate: join(
                rollout
                    .targets
                    .iter()
                    .map(|target| target.version.to_string())
                    .collect(),
            ),
            baseline: join(
                rollout
                    .targets
                    .iter()
                    .filter_map(|target| target.stable_version)
                    .map(|version| version.to_string())
                    .collect(),
            ),
            step: step + 1,
            percentage: rollout.steps.get(step).map_or(0, |step| step.percentage),
        }
    }
}

impl QueryFacts {
    /// The facts of a rollout about to start as `id`, from its command
    /// alone: what checks its queries before anything is read or written.
    /// A version named by a label, and a stable version not given as the
    /// expected one, read as 0: they fill label values only, which a
    /// query's syntax does not depend on.
    pub fn provisional(command: &StartRolloutCommand, id: &str, step: usize) -> Self {
        let join = |values: Vec<String>| values.join("|");
        QueryFacts {
            namespace: command.namespace.to_string(),
            rollout: id.to_owned(),
            policies: join(
                command
                    .targets
                    .iter()
                    .map(|(name, _, _)| name.to_string())
                    .collect(),
            ),
            candidate: join(
                command
                    .targets
                    .iter()
                    .map(|(_, selector, _)| match selector {
                        VersionSelector::Number(number) => number.to_string(),
                        _ => "0".to_owned(),
                    })
                    .collect(),
            ),
            baseline: join(
                command
                    .targets
                    .iter()
                    .map(|(_, _, expected)| match expected {
                        ExpectedActive::Version(version) => version.to_string(),
                        _ => "0".to_owned(),
                    })
                    .collect(),
            ),
            step: step + 1,
            percentage: command.steps.get(step).map_or(0, |step| step.percentage),
        }
    }
}

/// A MiniJinja environment without built-in filters, tests or functions,
/// and with undefined variables an error.
fn environment() -> minijinja::Environment<'static> {
    let mut environment = minijinja::Environment::empty();
    environment.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    environment
}

/// The first line of a MiniJinja error, without its debug detail.
fn describe(error: &minijinja::Error) -> String {
    match error.detail() {
        Some(detail) => format!("{detail} (line {})", error.line().unwrap_or(1)),
        None => error.kind().to_string(),
    }
}

/// The query of `analysis` with the facts filled in.
pub fn render_query(field: &str, query: &str, facts: &QueryFacts) -> Result<String> {
    let environment = environment();
    let template = environment.template_from_str(query).map_err(|error| {
        Error::invalid(field, format!("is not a template: {}", describe(&error)))
    })?;
    let known: BTreeSet<&str> = QUERY_VARIABLES.into_iter().collect();
    let mut unknown: Vec<String> = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|name| !known.contains(name.as_str()))
        .collect();
    if !unknown.is_empty() {
        unknown.sort();
        return Err(Error::invalid(
            field,
            format!(
                "names {}, not a fact of the rollout: a query may use {}",
                unknown.join(", "),
                QUERY_VARIABLES.join(", ")
            ),
        ));
    }
    template
        .render(facts)
        .map_err(|error| Error::invalid(field, format!("cannot be rendered: {}", describe(&error))))
}

/// Checks a success condition: an expression over `result` alone.
pub fn check_condition(field: &str, condition: &str) -> Result<()> {
    if condition.trim().is_empty() {
        return Err(Error::invalid(
            field,
            "is empty: say when a measurement passes, such as `result < 0.01`",
        ));
    }
    let environment = environment();
    let expression = environment
        .compile_expression(condition)
        .map_err(|error| Error::invalid(field, format!("does not parse: {}", describe(&error))))?;
    let mut unknown: Vec<String> = expression
        .undeclared_variables(false)
        .into_iter()
        .filter(|name| name != CONDITION_VARIABLE)
        .collect();
    if !unknown.is_empty() {
        unknown.sort();
        return Err(Error::invalid(
            field,
            format!(
                "names {}: a condition may use only `{CONDITION_VARIABLE}`",
                unknown.join(", ")
            ),
        ));
    }
    // Judged once on a number, so a condition that cannot judge one (a
    // call, a filter) is refused now rather than at its first measurement.
    evaluate(condition, 0.0).map_err(|why| Error::invalid(field, why))?;
    Ok(())
}

/// Whether `value` meets `condition`.
pub fn evaluate(condition: &str, value: f64) -> std::result::Result<bool, String> {
    let environment = environment();
    let expression = environment
        .compile_expression(condition)
        .map_err(|error| format!("does not parse: {}", describe(&error)))?;
    expression
        .eval(minijinja::context! { result => value })
        .map(|outcome| outcome.is_true())
        .map_err(|error| format!("cannot be judged: {}", describe(&error)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_compare_and_combine() {
        assert_eq!(evaluate("result < 0.01", 0.001), Ok(true));
        assert_eq!(evaluate("result < 0.01", 0.5), Ok(false));
        assert_eq!(evaluate("result >= 1 and result <= 2", 1.5), Ok(true));
        assert_eq!(evaluate("result < 1 or result > 2", 1.5), Ok(false));
        assert_eq!(evaluate("not (result == 0)", 0.0), Ok(false));
    }
}
