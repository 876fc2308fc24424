//! The TCP accept loop, HTTP routes and the WebSocket upgrade of `/voice`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tower_service::Service;

use crate::hub::Hub;
use crate::session;
use crate::writer::ReadSide;

/// Everything a request handler needs.
#[derive(Clone)]
struct AppState {
    hub: Arc<Hub>,
    shutdown: watch::Receiver<bool>,
    /// Held by every WebSocket session task; shutdown waits until all are
    /// dropped.
    done: mpsc::Sender<()>,
}

/// Buffers of tungstenite, sized for ~100-byte frames rather than the library
/// defaults of 128 KiB, so that idle connections stay small: the read buffer
/// of 512 bytes grows for a larger message when one arrives. tungstenite only
/// reads here: the writer task frames and writes everything the relay sends,
/// so its write buffer contains nothing but the pongs and close replies it
/// queues by itself, which are discarded.
fn websocket_config(hub: &Hub) -> WebSocketConfig {
    let max_message = hub.config.max_text_bytes.max(hub.config.max_frame_bytes);
    WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(0)
        .max_write_buffer_size(4096)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Time an HTTP request in progress at shutdown gets to finish.
const HTTP_SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Accepts connections until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    hub: Arc<Hub>,
    mut shutdown: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    let state = AppState {
        hub: Arc::clone(&hub),
        shutdown: shutdown.clone(),
        done,
    };
    let router = routes(state.clone());
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and ECONNABORTED are transient; back off briefly.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %err, "failed to set TCP_NODELAY");
        }
        if let Err(err) = set_send_buffer(&tcp, hub.config.send_buffer_bytes) {
            tracing::debug!(%peer, error = %err, "failed to set SO_SNDBUF");
        }
        let router = router.clone();
        let handshake_timeout = hub.config.handshake_timeout;
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(peer);
                    let mut router = router.clone();
                    async move {
                        let response = router.call(request.map(Body::new)).await;
                        Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
                    }
                });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(handshake_timeout)
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = async { stop.wait_for(|stopping| *stopping).await.map(drop) } => {
                    // A request still in progress gets a moment to finish.
                    // One whose headers are still arriving would otherwise
                    // hold shutdown for the whole handshake timeout.
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(HTTP_SHUTDOWN_GRACE, connection.as_mut()).await {
                        Ok(result) => result,
                        Err(_) => {
                            tracing::debug!(%peer, "HTTP request unfinished at shutdown; dropped");
                            return;
                        }
                    }
                }
            };
            if let Err(err) = result {
                tracing::debug!(%peer, error = %err, "HTTP connection ended with an error");
            }
        });
    }
}

/// Caps the kernel send buffer of a client socket. Without a cap, Linux
/// grows it up to `net.ipv4.tcp_wmem` (4 MiB by default) for a client that
/// stops reading, so its frames would wait there, late, instead of being
/// dropped and counted by the relay's own queue. Zero keeps the kernel's
/// autotuning.
fn set_send_buffer(tcp: &tokio::net::TcpStream, bytes: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if bytes == 0 {
        return Ok(());
    }
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor belongs to `tcp`, which outlives the call, and
    // the option value is a c_int as SO_SNDBUF requires.
    let result = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn routes(state: AppState) -> Router {
    Router::new()
        .route("/voice", get(voice))
        .route("/health", get(health))
        .route("/server-status", get(server_status))
        .route("/freq/names", get(freq_names))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found(request: Request) -> Response {
    let message = format!(
        "no route for {}: use /voice, /health, /server-status or /freq/names",
        request.uri().path()
    );
    (StatusCode::NOT_FOUND, Json(json!({ "error": message }))).into_response()
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn server_status(State(state): State<AppState>) -> Json<serde_json::Value> {
    let stats = state.hub.stats();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeSecs": stats.uptime_secs,
        "sessions": stats.sessions,
        "frequencies": stats.frequencies,
        "framesIn": stats.frames_in,
        "framesOut": stats.frames_out,
        "framesDropped": stats.frames_dropped,
        "framesLate": stats.frames_late,
        "framesDenied": stats.frames_denied,
        "signatureChecks": state.hub.auth.signature_checks(),
        "tokenCacheHits": state.hub.auth.cache_hits(),
    }))
}

/// Returns the configured frequency names as `{"1050": "Alpha", ...}`.
async fn freq_names(State(state): State<AppState>) -> Json<serde_json::Value> {
    let names: serde_json::Map<String, serde_json::Value> = state
        .hub
        .names()
        .into_iter()
        .map(|(freq, name)| (freq.to_string(), serde_json::Value::String(name)))
        .collect();
    Json(serde_json::Value::Object(names))
}

fn bad_upgrade(detail: &str) -> Response {
    let message = format!("WebSocket upgrade failed: {detail}");
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

/// Upgrades `GET /voice` to a WebSocket and hands it to a session task.
async fn voice(
    State(state): State<AppState>,
    Extension(peer): Extension<SocketAddr>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    if !header_has_token(headers, header::CONNECTION, "upgrade")
        || !header_has_token(headers, header::UPGRADE, "websocket")
    {
        return bad_upgrade("send Connection: Upgrade and Upgrade: websocket");
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13")) {
        return bad_upgrade("only Sec-WebSocket-Version 13 is supported");
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return bad_upgrade("missing Sec-WebSocket-Key");
    };
    let accept = derive_accept_key(key.as_bytes());
    let client = state.hub.guard.client_ip(peer, headers);
    let permit = match state.hub.guard.admit(client) {
        Ok(permit) => permit,
        Err(rejection) => {
            tracing::warn!(%peer, %client, reason = %rejection, "connection rejected");
            let body = Json(json!({ "error": rejection.to_string() }));
            return (StatusCode::TOO_MANY_REQUESTS, body).into_response();
        }
    };
    let Some(on_upgrade) = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        return bad_upgrade("connection cannot be upgraded");
    };

    let hub = Arc::clone(&state.hub);
    let shutdown = state.shutdown.clone();
    let done = state.done.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                // The accept loop serves every connection over a TcpStream,
                // so taking it back out of hyper's wrapper succeeds.
                match upgraded.downcast::<TokioIo<TcpStream>>() {
                    Ok(parts) => {
                        // Bytes the client sent right after its request,
                        // which hyper has already read, come first. The
                        // buffer is a view of hyper's whole read buffer, so
                        // it is copied and dropped rather than kept for the
                        // life of the connection.
                        let early = (!parts.read_buf.is_empty()).then(|| parts.read_buf.to_vec());
                        drop(parts.read_buf);
                        let (read, write) = parts.io.into_inner().into_split();
                        let read = ReadSide::new(read);
                        let config = Some(websocket_config(&hub));
                        let socket = match early {
                            None => {
                                WebSocketStream::from_raw_socket(read, Role::Server, config).await
                            }
                            Some(early) => {
                                WebSocketStream::from_partially_read(
                                    read,
                                    early,
                                    Role::Server,
                                    config,
                                )
                                .await
                            }
                        };
                        session::run(hub, socket, Arc::new(write), peer, client, shutdown).await;
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "upgraded connection is not a TCP stream; closed")
                    }
                }
                drop(permit);
            }
            Err(err) => tracing::debug!(%peer, error = %err, "WebSocket upgrade failed"),
        }
        drop(done);
    });

    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .expect("static response headers are valid")
}
