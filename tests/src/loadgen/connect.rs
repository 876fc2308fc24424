//! Setting up one user's session: TCP and WebSocket, `auth`, then `join`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use krt_shared::FreqId;
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

/// A client WebSocket over TCP.
pub type Socket = WebSocketStream<TcpStream>;

/// WebSocket buffers sized for frames of about 100 bytes instead of the
/// library's 128 KiB defaults, so that thousands of connections stay cheap.
/// Writes go out at once (`write_buffer_size` 0) because every frame is due
/// immediately.
pub fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(2048)
        .write_buffer_size(0)
        .max_message_size(Some(64 << 10))
        .max_frame_size(Some(64 << 10))
}

/// Errors setting up one user's session.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connection failed.
    #[error("TCP connection to {addr} failed: {error}")]
    Tcp {
        /// Relay address.
        addr: SocketAddr,
        /// Error from the operating system.
        error: std::io::Error,
    },
    /// The WebSocket upgrade failed.
    #[error("WebSocket handshake with {url} failed: {error}")]
    Handshake {
        /// URL requested.
        url: String,
        /// Error from tungstenite.
        error: tungstenite::Error,
    },
    /// The relay replied with `auth_error`.
    #[error("authentication rejected: {reason}")]
    AuthRejected {
        /// Reason sent by the relay.
        reason: String,
    },
    /// The relay replied to a join with `join_error` or `error`.
    #[error("join of frequency {freq} rejected: {reason}")]
    JoinRejected {
        /// Frequency requested.
        freq: FreqId,
        /// Reason sent by the relay.
        reason: String,
    },
    /// The connection ended or failed while waiting for a reply.
    #[error("connection lost while waiting for {stage}: {detail}")]
    Lost {
        /// Reply that was expected.
        stage: &'static str,
        /// Close frame or socket error.
        detail: String,
    },
    /// One attempt took too long.
    #[error("no answer within {} s", timeout.as_secs_f64())]
    TimedOut {
        /// Time allowed for one attempt.
        timeout: Duration,
    },
}

impl ConnectError {
    /// Returns true when another attempt may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            ConnectError::AuthRejected { .. } | ConnectError::JoinRejected { .. }
        )
    }
}

/// The fields of relay text messages the load generator reads. Unknown
/// types and fields are ignored, as a v1 client must.
#[derive(Deserialize)]
pub(super) struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    pub(super) kind: Cow<'a, str>,
    #[serde(rename = "freqId")]
    pub(super) freq_id: Option<i64>,
    #[serde(borrow)]
    pub(super) reason: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) action: Option<Cow<'a, str>>,
}

pub(super) fn describe_close(message: Option<tungstenite::protocol::CloseFrame>) -> String {
    match message {
        Some(frame) => format!("close code {} ({})", u16::from(frame.code), frame.reason),
        None => "close frame without code".to_owned(),
    }
}

/// Reads until a text message of one of `kinds` arrives and returns its
/// type, frequency and reason. Audio and other messages are skipped.
async fn await_reply(
    ws: &mut Socket,
    stage: &'static str,
    kinds: &[&str],
) -> Result<(String, Option<i64>, String), ConnectError> {
    loop {
        let message = match ws.next().await {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                return Err(ConnectError::Lost {
                    stage,
                    detail: error.to_string(),
                });
            }
            None => {
                return Err(ConnectError::Lost {
                    stage,
                    detail: "connection ended".to_owned(),
                });
            }
        };
        match message {
            Message::Text(text) => {
                let Ok(reply) = serde_json::from_str::<Incoming>(&text) else {
                    continue;
                };
                if kinds.contains(&reply.kind.as_ref()) {
                    let reason = reply.reason.map(Cow::into_owned).unwrap_or_default();
                    return Ok((reply.kind.into_owned(), reply.freq_id, reason));
                }
            }
            Message::Close(frame) => {
                return Err(ConnectError::Lost {
                    stage,
                    detail: describe_close(frame),
                });
            }
            _ => {}
        }
    }
}

async fn send_text(ws: &mut Socket, text: String, stage: &'static str) -> Result<(), ConnectError> {
    ws.send(Message::text(text))
        .await
        .map_err(|error| ConnectError::Lost {
            stage,
            detail: error.to_string(),
        })
}

/// Opens a session: TCP and WebSocket, `auth`, then one `join` per
/// frequency in `joins`, sent together, each of which must get `join_ok`.
/// `recv_buffer` sets the socket's receive buffer in bytes before
/// connecting; `None` keeps the kernel's autotuning.
pub async fn connect_user(
    addr: SocketAddr,
    url: &str,
    token: &str,
    joins: &[FreqId],
    recv_buffer: Option<u32>,
) -> Result<Socket, ConnectError> {
    let tcp_error = |error| ConnectError::Tcp { addr, error };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(tcp_error)?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).map_err(tcp_error)?;
    }
    let tcp = socket.connect(addr).await.map_err(tcp_error)?;
    // Frames are small and due at once; Nagle's algorithm would hold them.
    tcp.set_nodelay(true)
        .map_err(|error| ConnectError::Tcp { addr, error })?;
    let (mut ws, _response) = client_async_with_config(url, tcp, Some(socket_config()))
        .await
        .map_err(|error| ConnectError::Handshake {
            url: url.to_owned(),
            error,
        })?;

    let auth = serde_json::json!({ "type": "auth", "authToken": token }).to_string();
    send_text(&mut ws, auth, "auth_ok").await?;
    let (kind, _, reason) = await_reply(&mut ws, "auth_ok", &["auth_ok", "auth_error"]).await?;
    if kind != "auth_ok" {
        return Err(ConnectError::AuthRejected { reason });
    }

    for freq in joins {
        let join = serde_json::json!({ "type": "join", "freqId": freq.get() }).to_string();
        send_text(&mut ws, join, "join_ok").await?;
    }
    for _ in joins {
        let (kind, freq_id, reason) =
            await_reply(&mut ws, "join_ok", &["join_ok", "join_error", "error"]).await?;
        if kind != "join_ok" {
            let freq = freq_id
                .and_then(|id| joins.iter().copied().find(|f| i64::from(f.get()) == id))
                .unwrap_or(joins[0]);
            return Err(ConnectError::JoinRejected { freq, reason });
        }
    }
    Ok(ws)
}
