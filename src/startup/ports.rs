//! The ports beside gRPC, each served by a supervised task that drains at
//! shutdown: metrics and HTTP/JSON. Neither starts again when it ends: its
//! listener went with it, and a replica whose port is gone does not serve
//! as configured; it reports NOT_SERVING.

use super::routers::Services;
use super::tasks::{OnEnd, Stop, Supervisor};
use super::{Application, listener};

impl Application {
    /// Serves `/metrics` under `tasks`, when `metrics_listen` is set.
    pub(super) fn serve_metrics(&mut self, tasks: &mut Supervisor) {
        let Some(tcp) = self.metrics_listener.take() else {
            return;
        };
        if let Ok(address) = tcp.local_addr() {
            tracing::info!(%address, "serving metrics");
        }
        let mut listener = Some(listener(tcp, "metrics", &self.settings.connections));
        let index = self.hub.index().clone();
        tasks.spawn("metrics", OnEnd::NotServing, Stop::Drain, move |stop| {
            let listener = listener.take().expect("started once");
            crate::metrics::serve(listener, index.clone(), stop)
        });
    }

    /// Serves the HTTP/JSON port (and the console) under `tasks`, when
    /// `http_listen` is set: a transcoder to `services`.
    pub(super) fn serve_http(&mut self, services: &Services, tasks: &mut Supervisor) {
        let Some(tcp) = self.http_listener.take() else {
            return;
        };
        let gateway = services.gateway(&self.authentication);
        if let Ok(address) = tcp.local_addr() {
            tracing::info!(%address, "serving http");
        }
        let mut listener = Some(listener(tcp, "http", &self.settings.connections));
        tasks.spawn("http", OnEnd::NotServing, Stop::Drain, move |stop| {
            let listener = listener.take().expect("started once");
            gateway.clone().serve(listener, stop)
        });
    }
}
