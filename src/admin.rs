//! Admin HTTP API (placeholder being replaced).
use crate::reload::Control;
use std::sync::Arc;
/// Serves the admin API until the control token is cancelled.
pub async fn serve(listener: tokio::net::TcpListener, control: Arc<Control>) {
    let _ = (listener, control);
}
