//! Where one connection's reports of APPLIED and REJECTED go.

use tokio::sync::mpsc;
use tonic::{Code, Status};

use super::connection::Client;
use crate::proto::{ReportStatusRequest, ReportStatusResponse};

/// Where one connection's reports go: a `ReportStatusStream` opened on it
/// at the first report, each report answered before the next is sent; or
/// one `ReportStatus` call per report where the server does not serve the
/// stream (an older server) or will not hold another one (its quota).
pub(super) struct Reporter {
    client: Client,
    route: Route,
}

/// How the next report travels.
enum Route {
    /// On a stream, opened at the next report.
    Unopened,
    Stream(Box<ReportStream>),
    /// One `ReportStatus` call each.
    Calls,
}

/// An open `ReportStatusStream`: where requests go, and the answers.
struct ReportStream {
    requests: mpsc::Sender<ReportStatusRequest>,
    replies: tonic::Streaming<ReportStatusResponse>,
}

impl Reporter {
    pub(super) fn new(client: Client) -> Self {
        Reporter {
            client,
            route: Route::Unopened,
        }
    }

    /// Sends one report and waits for the server's answer.
    pub(super) async fn send(&mut self, request: ReportStatusRequest) -> Result<(), Status> {
        if matches!(self.route, Route::Unopened) {
            self.route = self.open().await?;
        }
        let Route::Stream(stream) = &mut self.route else {
            return self.client.report_status(request).await.map(drop);
        };
        let answer = match stream.requests.send(request).await {
            Ok(()) => stream.replies.message().await,
            Err(_) => Err(Status::unavailable("the report stream closed")),
        };
        match answer {
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                self.route = Route::Unopened;
                Err(Status::unavailable("the report stream ended"))
            }
            Err(status) => {
                self.route = Route::Unopened;
                Err(status)
            }
        }
    }

    /// Opens the report stream, or settles on calls where the server will
    /// not hold one.
    async fn open(&mut self) -> Result<Route, Status> {
        let (requests, receiver) = mpsc::channel(1);
        let outbound = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|request| (request, receiver))
        });
        match self.client.report_status_stream(outbound).await {
            Ok(response) => Ok(Route::Stream(Box::new(ReportStream {
                requests,
                replies: response.into_inner(),
            }))),
            Err(status)
                if matches!(status.code(), Code::Unimplemented | Code::ResourceExhausted) =>
            {
                tracing::debug!(
                    code = ?status.code(),
                    "no report stream; reporting with one call each"
                );
                Ok(Route::Calls)
            }
            Err(status) => Err(status),
        }
    }
}
