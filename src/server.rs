//! Accepting HTTP connections under limits, for every listener mplink opens (the API of `mplink
//! serve` and the worker's health endpoints): a client that connects and sends nothing, sends its
//! headers a byte at a time or never finishes its body is closed, and no single address may hold
//! more than its share of connections. axum's own `serve` has none of these knobs.

use crate::metrics::Metrics;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// The limits' defaults, each defined once (the flags of `mplink run` and `mplink serve`).
pub mod defaults {
    /// Seconds a client has to send a request's headers, from connecting or from its previous
    /// response: hyper starts the same timer while a kept-alive connection waits for its next
    /// request, so this is also the idle keep-alive limit.
    pub const HEADER_TIMEOUT_S: u64 = 10;
    /// Seconds a client has to send a whole request body, from its headers.
    pub const BODY_TIMEOUT_S: u64 = 30;
    /// Open connections per listener.
    pub const MAX_CONNECTIONS: u32 = 1024;
    /// Open connections per client address (0: no cap, e.g. behind a load balancer).
    pub const MAX_CONNECTIONS_PER_CLIENT: u32 = 64;
}

/// One listener's limits. A timeout of `None` is off (tests show what the timeouts prevent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// See [`defaults::HEADER_TIMEOUT_S`].
    pub header_timeout: Option<Duration>,
    /// See [`defaults::BODY_TIMEOUT_S`].
    pub body_timeout: Option<Duration>,
    /// Connections beyond this are answered 503 and closed.
    pub max_connections: usize,
    /// Connections of one address beyond this are answered 503 and closed; 0 is no cap.
    pub max_per_client: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: Some(Duration::from_secs(defaults::HEADER_TIMEOUT_S)),
            body_timeout: Some(Duration::from_secs(defaults::BODY_TIMEOUT_S)),
            max_connections: defaults::MAX_CONNECTIONS as usize,
            max_per_client: defaults::MAX_CONNECTIONS_PER_CLIENT as usize,
        }
    }
}

/// The error a request body's read ends with when the body timeout passes first; the API's
/// extractors turn it into 408 `body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// What a refused connection is told before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: 0\r\n\r\n";

/// Serves `router` on `listener` under `limits` until `shutdown` is cancelled, then lets open
/// requests finish. `name` labels the metrics (`api`, `health`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    name: &'static str,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_client = ClientTable::default();
    let refused = |reason: &str| {
        metrics
            .http_connections_refused
            .with_label_values(&[name, reason])
            .inc()
    };
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for connections to close
                    // rather than spin.
                    refused("accept_failed");
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            refused("max_connections");
            refuse(stream);
            continue;
        };
        let Some(slot) = ClientSlot::take(&per_client, peer.ip(), limits.max_per_client) else {
            refused("max_connections_per_client");
            refuse(stream);
            continue;
        };
        let connection = Connection {
            stream,
            peer,
            router: router.clone(),
            limits,
            metrics: metrics.clone(),
            name,
        };
        tracker.spawn(connection.run(shutdown.clone(), permit, slot));
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

fn refuse(stream: TcpStream) {
    // Best effort and never waiting: a client that does not read is not worth a task.
    let _ = stream.try_write(REFUSAL);
}

/// Open connections per client address.
type ClientTable = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One address's share of the connections, given back when the connection closes.
struct ClientSlot {
    table: Option<(ClientTable, IpAddr)>,
}

impl ClientSlot {
    fn take(table: &ClientTable, ip: IpAddr, cap: usize) -> Option<ClientSlot> {
        if cap == 0 {
            return Some(ClientSlot { table: None });
        }
        let mut counts = table.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            table: Some((table.clone(), ip)),
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Some((table, ip)) = &self.table {
            let mut counts = table.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = counts.get_mut(ip) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(ip);
                }
            }
        }
    }
}

struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    name: &'static str,
}

impl Connection {
    async fn run(
        self,
        shutdown: CancellationToken,
        _permit: OwnedSemaphorePermit,
        _slot: ClientSlot,
    ) {
        let Connection {
            stream,
            peer,
            router,
            limits,
            metrics,
            name,
        } = self;
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let (mut parts, body) = request.into_parts();
            parts.extensions.insert(ConnectInfo(peer));
            let body = match limits.body_timeout {
                Some(limit) => Body::new(DeadlineBody::new(body, limit)),
                None => Body::new(body),
            };
            router
                .clone()
                .oneshot(axum::http::Request::from_parts(parts, body))
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            _ = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = result {
            if e.is_timeout() {
                metrics
                    .http_connections_refused
                    .with_label_values(&[name, "header_timeout"])
                    .inc();
            }
            tracing::debug!(listener = name, error = %e, "connection ended with an error");
        }
    }
}

/// A request body that must end by a deadline set when its headers arrived (tower-http's
/// `TimeoutBody` restarts its timer on every frame, so a byte every few seconds never trips it).
struct DeadlineBody {
    inner: Incoming,
    limit: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, limit: Duration) -> DeadlineBody {
        DeadlineBody {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(self.limit))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `error` (a body read's, through axum's wrappers) is the body timeout.
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<BodyTimeout>() {
            return true;
        }
        next = e.source();
    }
    false
}
