//! How a process learns it must stop: SIGTERM (what an orchestrator sends) or Ctrl-C. The
//! future resolves once; callers cancel their token with it and drain.

/// Resolves when the process receives SIGTERM (ECS stopping the task) or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received: stopping"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C received: stopping"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the worker");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
