//! `mplink healthcheck`: asks a running worker's `/readyz` (or `/healthz`) and turns the answer
//! into an exit code, so a container health check needs no curl or shell in the image.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use thiserror::Error;

/// Which endpoint to ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/readyz`: the database and the queue answer.
    Ready,
    /// `/healthz`: the process answers.
    Live,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Ready => "/readyz",
            Endpoint::Live => "/healthz",
        }
    }
}

/// Why the check failed.
#[derive(Debug, Error)]
pub enum HealthcheckError {
    /// No answer: nothing listening, a refused connection, or no answer within the timeout.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// What went wrong, with its causes.
        reason: String,
    },
    /// An answer other than 200.
    #[error("{url} answered {status}: {body}")]
    NotHealthy {
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The first line(s) of the answer, which name the failing part.
        body: String,
    },
}

/// The address to ask: a worker listening on every interface (`0.0.0.0:9090` in the container)
/// is asked on loopback of the same family.
pub fn target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Asks `endpoint` of the worker listening on `listen`; the answer's body on 200.
pub async fn check(
    listen: SocketAddr,
    endpoint: Endpoint,
    timeout: Duration,
) -> Result<String, HealthcheckError> {
    let url = format!("http://{}{}", target(listen), endpoint.path());
    let unreachable = |e: reqwest::Error| HealthcheckError::Unreachable {
        url: url.clone(),
        reason: error_chain(&e),
    };
    // No proxy (an HTTP_PROXY in the task's environment must not carry a loopback probe
    // elsewhere) and no redirects: the answer of this address is the answer.
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(unreachable)?;
    let response = client.get(&url).send().await.map_err(unreachable)?;
    let status = response.status();
    let body = response.text().await.map_err(unreachable)?;
    // The endpoints answer a few short lines; anything longer is not ours and is cut.
    let body: String = body.trim().chars().take(512).collect();
    if status == reqwest::StatusCode::OK {
        Ok(body)
    } else {
        Err(HealthcheckError::NotHealthy {
            url,
            status: status.as_u16(),
            body: body.replace('\n', "; "),
        })
    }
}

/// reqwest's top-level message alone ("error sending request") hides the cause.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_asked_on_loopback() {
        let cases = [
            ("0.0.0.0:9090", "127.0.0.1:9090"),
            ("[::]:9090", "[::1]:9090"),
            ("10.0.0.5:8080", "10.0.0.5:8080"),
            ("127.0.0.1:1", "127.0.0.1:1"),
        ];
        for (listen, want) in cases {
            assert_eq!(
                target(listen.parse().unwrap()).to_string(),
                want,
                "{listen}"
            );
        }
    }
}
