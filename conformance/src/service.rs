//! The kit's side of the test-service protocol (see [`crate::protocol`]).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use futures_util::{StreamExt, stream};

use crate::protocol::{Created, RuntimeSettings, RuntimeView, ServiceInfo};

/// A test service.
#[derive(Clone)]
pub struct Service {
    base: String,
    http: reqwest::Client,
    /// The runtimes started and not stopped yet, to stop after a test.
    started: Arc<Mutex<Vec<String>>>,
}

/// One runtime started through the service.
pub struct Runtime {
    service: Service,
    url: String,
}

impl Service {
    /// The service at `base` (`http://host:port`).
    pub fn new(base: &str) -> anyhow::Result<Self> {
        Ok(Service {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            started: Arc::default(),
        })
    }

    /// `GET /`: its name and capabilities, waiting up to 30 s for it to
    /// listen.
    pub async fn info(&self) -> anyhow::Result<ServiceInfo> {
        let mut last = None;
        for _ in 0..300 {
            match self.http.get(format!("{}/", self.base)).send().await {
                Ok(response) => {
                    return response
                        .error_for_status()?
                        .json()
                        .await
                        .context("GET / is not the service's info");
                }
                Err(error) => last = Some(error),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "the test service at {} does not answer: {last:?}",
            self.base
        )
    }

    /// `POST /runtimes`.
    pub async fn start(&self, settings: &RuntimeSettings) -> anyhow::Result<Runtime> {
        let response = self
            .http
            .post(format!("{}/runtimes", self.base))
            .json(settings)
            .send()
            .await?;
        if response.status() != reqwest::StatusCode::CREATED {
            bail!(
                "POST /runtimes answered {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        let created: Created = response.json().await?;
        let url = format!("{}/runtimes/{}", self.base, created.id);
        self.started.lock().unwrap().push(url.clone());
        Ok(Runtime {
            service: self.clone(),
            url,
        })
    }

    /// Stops every runtime a test left running.
    pub async fn stop_all(&self) {
        let started: Vec<String> = std::mem::take(&mut *self.started.lock().unwrap());
        // A fleet of a thousand stops in a moment, not one by one.
        stream::iter(started)
            .for_each_concurrent(32, |url| async move {
                self.http.delete(url).send().await.ok();
            })
            .await;
    }
}

impl Runtime {
    /// `GET /runtimes/{id}`.
    pub async fn view(&self) -> anyhow::Result<RuntimeView> {
        self.service
            .http
            .get(&self.url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
            .context("the runtime's view")
    }

    /// Polls the view until `done` holds, for at most `within`; fails
    /// saying `what` was awaited and what the view was last.
    pub async fn until(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&RuntimeView) -> bool,
    ) -> anyhow::Result<RuntimeView> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let view = self.view().await?;
            if done(&view) {
                return Ok(view);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{what}: not within {within:?}; the runtime's events: {}",
                    serde_json::to_string(&view.events)?
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Until the state in force is at `revision` or past it.
    pub async fn until_revision(&self, revision: u64) -> anyhow::Result<RuntimeView> {
        self.until(
            &format!("revision {revision} in force"),
            Duration::from_secs(20),
            |view| view.revision() >= revision,
        )
        .await
    }

    /// `DELETE /runtimes/{id}`: the runtime stops; its cache stays.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.service
            .started
            .lock()
            .unwrap()
            .retain(|url| *url != self.url);
        self.service
            .http
            .delete(&self.url)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}
