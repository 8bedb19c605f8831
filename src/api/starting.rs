//! The API while idplane starts: the listener is bound first, so that
//! `/healthz` answers 200 (the process is alive, and a liveness probe must
//! not restart it) while `/readyz` and every other call answer 503 with
//! the reason, for as long as the database cannot be reached. Once the
//! modules have started, [`Swap::serve`] hands every request to the full
//! router.

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::http::ApiError;

/// Why idplane cannot serve yet, as `/readyz` says it.
#[derive(Clone, Debug)]
pub struct Waiting {
    /// `store_unavailable` or `not_ready`.
    pub code: &'static str,
    pub message: String,
}

/// Switches the served router from the starting one to the full one.
pub struct Swap {
    router: watch::Sender<Router>,
    waiting: watch::Sender<Waiting>,
}

/// The router to serve from the start, and its switch: the starting
/// answers, or `full` at once when it is already built.
pub fn router(full: Option<Router>) -> (Router, Swap) {
    let (waiting, waiting_rx) = watch::channel(Waiting {
        code: "not_ready",
        message: "idplane is starting".into(),
    });
    let (router, router_rx) = watch::channel(full.unwrap_or_else(|| starting(waiting_rx)));
    let served = Router::new().fallback_service(tower::service_fn(move |request: Request| {
        let current = router_rx.borrow().clone();
        current.oneshot(request)
    }));
    (served, Swap { router, waiting })
}

impl Swap {
    /// Says why idplane is not ready yet.
    pub fn waiting(&self, code: &'static str, message: impl Into<String>) {
        self.waiting.send_replace(Waiting {
            code,
            message: message.into(),
        });
    }

    /// Serves `full` from now on.
    pub fn serve(&self, full: Router) {
        let _starting = self.router.send_replace(full);
    }
}

fn starting(waiting: watch::Receiver<Waiting>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .fallback(move || {
            let now = waiting.borrow().clone();
            async move {
                let mut error =
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, now.code, now.message);
                error.retry_after = Some(1);
                error
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    async fn call(router: &Router, path: &str) -> (StatusCode, String) {
        let response = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn alive_but_not_ready_until_the_full_router_is_served() {
        let (served, swap) = router(None);
        assert_eq!(call(&served, "/healthz").await.0, StatusCode::OK);
        swap.waiting(
            "store_unavailable",
            "cannot reach the database: connection refused",
        );
        let (status, body) = call(&served, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.contains("store_unavailable") && body.contains("connection refused"),
            "{body}"
        );
        let (status, _) = call(&served, "/v1/orgs/acme/config").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        swap.serve(Router::new().route("/readyz", get(|| async { "ready" })));
        assert_eq!(
            call(&served, "/readyz").await,
            (StatusCode::OK, "ready".into())
        );
    }
}
