//! The metrics endpoint (`[metrics] listen`): HTTP/1.1 with hyper, serving exactly two
//! things: `GET /metrics` (Prometheus exposition) and `GET /health` (`ok` while the
//! pipeline answers, 503 otherwise). Everything else is 404 (or 405 for other methods).
//!
//! Bounded like any listener facing a network: at most [`MAX_CONNECTIONS`] connections
//! (more are closed at once), request heads of at most [`MAX_HEAD`] bytes read within
//! [`HEAD_TIMEOUT`], request bodies never read, and each connection closed after
//! [`CONNECTION_LIFETIME`] whatever it does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, Metrics};
use crate::status::ViewHandle;

/// Connections served at once; further ones are closed as soon as accepted.
pub const MAX_CONNECTIONS: usize = 16;
/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Time to send a request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of one connection (keep-alive included).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// What the handlers need.
#[derive(Clone)]
pub struct Endpoint {
    pub metrics: Arc<Metrics>,
    pub views: ViewHandle,
    pub watches: Watches,
}

/// The watches of the configuration in force (replaced on a reload), for counting the
/// files in their failed_dir at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Watches(Arc<std::sync::Mutex<Vec<crate::config::WatchConfig>>>);

impl Watches {
    pub fn set(&self, watches: &[crate::config::WatchConfig]) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = watches.to_vec();
    }

    fn get(&self) -> Vec<crate::config::WatchConfig> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The files in each watch's failed_dir, by watch (labelled as the other metrics):
    /// listed now, so a file put back by `accio retry` or removed by hand is gone from the
    /// count. `None` if a failed_dir cannot be listed.
    fn failed_files(&self) -> Option<Vec<(String, u64)>> {
        let watches = self.get();
        let refs: Vec<&crate::config::WatchConfig> = watches.iter().collect();
        let counts = super::retry::count(&refs).ok()?;
        Some(
            counts
                .into_iter()
                .map(|(dir, n)| (dir.to_string_lossy().into_owned(), n))
                .collect(),
        )
    }
}

/// Binds the metrics listener.
///
/// # Errors
/// The address cannot be bound (in use, not local, not permitted).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `listener` until `stop`.
pub async fn serve(listener: TcpListener, ep: Endpoint, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and the like: do not spin.
                tracing::debug!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let ep = ep.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ep = ep.clone();
                async move { Ok::<_, Infallible>(handle(req, &ep).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_LIFETIME, conn) => {}
                _ = stop.cancelled() => {}
            }
            drop(permit);
        });
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

async fn handle(req: Request<Incoming>, ep: &Endpoint) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            let view = ep.views.get().await;
            let watches = ep.watches.clone();
            // Listing directories blocks: not on the runtime's threads.
            let failed = tokio::task::spawn_blocking(move || watches.failed_files())
                .await
                .ok()
                .flatten();
            let om = ep.metrics.encode(view.as_ref(), failed.as_deref());
            // Prometheus asks for OpenMetrics; curl and older tools get the classic format.
            let wants_om = req
                .headers()
                .get_all(ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            if wants_om {
                reply(StatusCode::OK, metrics::OPENMETRICS, om)
            } else {
                reply(StatusCode::OK, metrics::TEXT_004, metrics::to_text_004(&om))
            }
        }
        "/health" => match ep.views.get().await {
            Some(_) => reply(StatusCode::OK, PLAIN, "ok\n"),
            None => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                "the pipeline does not answer (starting, reloading or stopping)\n",
            ),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: this endpoint serves /metrics and /health\n",
        ),
    }
}
