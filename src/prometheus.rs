//! The Prometheus servers of `rollouts.prometheus`, as the domain's
//! `MetricsSource`: one instant query (`/api/v1/query`) per measurement,
//! its answer sorted into a number, no data, no answer, or a query that
//! Prometheus refuses (`bad_data`). Only configured servers are asked:
//! a request names a server, never an address, and an answer is read up to
//! `MAX_ANSWER_BYTES` only.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::config::RolloutSettings;
use crate::domain::rollout::{MetricsSource, QueryAnswer};

/// The longest answer read from Prometheus. An analysis's query answers
/// one number, a few hundred bytes; a query that matches thousands of
/// series is refused long before its answer takes memory.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// The configured servers and one HTTP client for all.
#[derive(Debug)]
pub struct PrometheusServers {
    /// Each server's query endpoint, by name.
    servers: BTreeMap<String, url::Url>,
    client: reqwest::Client,
    min_interval: Duration,
    /// The client's timeout, named when a query runs past it.
    timeout: Duration,
}

/// Prometheus's answer to a query (its HTTP API's envelope).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    status: String,
    data: Option<QueryData>,
    error_type: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum QueryData {
    Scalar(Sample),
    Vector(Vec<Series>),
    Matrix(serde::de::IgnoredAny),
    String(serde::de::IgnoredAny),
}

/// `[unix time, "value"]`: the value, as Prometheus writes it.
#[derive(Debug, Deserialize)]
struct Sample(serde::de::IgnoredAny, String);

#[derive(Debug, Deserialize)]
struct Series {
    value: Sample,
}

impl PrometheusServers {
    /// The servers of `settings`, or `None` when none is configured.
    pub fn from_settings(settings: &RolloutSettings) -> anyhow::Result<Option<Self>> {
        if settings.prometheus.is_empty() {
            return Ok(None);
        }
        let mut servers = BTreeMap::new();
        for (name, server) in &settings.prometheus {
            let mut base = url::Url::parse(&server.url)
                .with_context(|| format!("rollouts.prometheus.{name}.url {:?}", server.url))?;
            if !matches!(base.scheme(), "http" | "https") {
                anyhow::bail!("rollouts.prometheus.{name}.url must be http:// or https://");
            }
            if !base.path().ends_with('/') {
                let path = format!("{}/", base.path());
                base.set_path(&path);
            }
            let endpoint = base.join("api/v1/query").context("the query endpoint")?;
            servers.insert(name.clone(), endpoint);
        }
        let client = reqwest::Client::builder()
            .timeout(settings.analysis_timeout)
            // An address from the settings, not from a request: but a
            // redirect would send the query on to one nobody configured.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("the Prometheus client")?;
        Ok(Some(PrometheusServers {
            servers,
            client,
            min_interval: settings.min_analysis_interval,
            timeout: settings.analysis_timeout,
        }))
    }
}

/// A sample's value, unless it is NaN (no rate: nothing to judge).
fn number(sample: &Sample) -> QueryAnswer {
    match sample.1.parse::<f64>() {
        Ok(value) if value.is_nan() => {
            QueryAnswer::NoData("the query answered NaN (no samples to divide?)".into())
        }
        Ok(value) => QueryAnswer::Value(value),
        Err(_) => QueryAnswer::NoData(format!("the query answered {:?}, not a number", sample.1)),
    }
}

fn sort(status: reqwest::StatusCode, envelope: Envelope) -> QueryAnswer {
    if envelope.status != "success" {
        let kind = envelope.error_type.unwrap_or_default();
        let error = envelope.error.unwrap_or_default();
        return match kind.as_str() {
            "bad_data" => QueryAnswer::Refused(error),
            _ => QueryAnswer::Unanswered(format!("prometheus answered {status}: {kind}: {error}")),
        };
    }
    match envelope.data {
        Some(QueryData::Scalar(sample)) => number(&sample),
        Some(QueryData::Vector(series)) => match series.as_slice() {
            [] => QueryAnswer::NoData("the query answered no series".into()),
            [one] => number(&one.value),
            several => QueryAnswer::NoData(format!(
                "the query answered {} series, not one: aggregate it (sum, max, …)",
                several.len()
            )),
        },
        Some(QueryData::Matrix(_)) => {
            QueryAnswer::Refused("it answers a range vector: a query must answer one number".into())
        }
        Some(QueryData::String(_)) => {
            QueryAnswer::Refused("it answers a string: a query must answer one number".into())
        }
        None => QueryAnswer::Unanswered("prometheus answered without data".into()),
    }
}

#[async_trait::async_trait]
impl MetricsSource for PrometheusServers {
    fn knows(&self, server: &str) -> bool {
        self.servers.contains_key(server)
    }

    fn min_interval(&self) -> Duration {
        self.min_interval
    }

    async fn query(&self, server: &str, query: &str) -> QueryAnswer {
        let Some(endpoint) = self.servers.get(server) else {
            return QueryAnswer::Unanswered(format!("no Prometheus server named {server}"));
        };
        let unanswered = |error: reqwest::Error| {
            QueryAnswer::Unanswered(match error.is_timeout() {
                true => format!(
                    "prometheus {server} timed out after {}",
                    humantime::format_duration(self.timeout)
                ),
                false => format!("prometheus {server} did not answer: {error}"),
            })
        };
        let mut response = match self
            .client
            .post(endpoint.clone())
            .form(&[("query", query)])
            .send()
            .await
        {
            Ok(response) => response,
            Err(error) => return unanswered(error),
        };
        let status = response.status();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() > MAX_ANSWER_BYTES => {
                    return QueryAnswer::Unanswered(format!(
                        "prometheus {server} answered more than {MAX_ANSWER_BYTES} bytes: a \
                         query must answer one number"
                    ));
                }
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(error) => return unanswered(error),
            }
        }
        match serde_json::from_slice::<Envelope>(&body) {
            Ok(envelope) => sort(status, envelope),
            Err(error) => QueryAnswer::Unanswered(format!(
                "prometheus {server} answered {status} without its JSON: {error}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(status: u16, body: &str) -> QueryAnswer {
        let status = reqwest::StatusCode::from_u16(status).unwrap();
        sort(status, serde_json::from_str(body).unwrap())
    }

    #[test]
    fn answers_sort_into_a_number_no_data_no_answer_or_a_refusal() {
        assert_eq!(
            sorted(
                200,
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.5,"0.25"]}]}}"#
            ),
            QueryAnswer::Value(0.25)
        );
        assert_eq!(
            sorted(
                200,
                r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"2"]}}"#
            ),
            QueryAnswer::Value(2.0)
        );
        assert!(matches!(
            sorted(
                200,
                r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#
            ),
            QueryAnswer::NoData(_)
        ));
        assert!(matches!(
            sorted(
                200,
                r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"NaN"]}}"#
            ),
            QueryAnswer::NoData(_)
        ));
        assert!(matches!(
            sorted(
                400,
                r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#
            ),
            QueryAnswer::Refused(_)
        ));
        assert!(matches!(
            sorted(
                503,
                r#"{"status":"error","errorType":"timeout","error":"query timed out"}"#
            ),
            QueryAnswer::Unanswered(_)
        ));
    }
}
