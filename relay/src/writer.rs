//! The write side of a client connection.
//!
//! tungstenite parses what clients send, but the relay writes its own
//! frames: every server frame is unmasked and final, so framing is a header
//! of two to ten bytes (RFC 6455 section 5.2). Writing to the socket's own
//! write half needs no lock shared with the reader, and it lets the fan-out
//! write an audio frame straight to an idle listener's socket (see
//! [`Outlet`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::session_shared::{Outbound, Outlet, Stamp, opcode, put_frame_header};

/// Messages the writer takes from the queue before it writes, bounding one
/// write.
const WRITE_BATCH: usize = 64;
/// Write buffer capacity kept between writes, bytes; a larger buffer left
/// by a burst is freed, so idle connections stay small.
const KEPT_BUFFER: usize = 8 * 1024;

/// The read half of a client socket, as the stream tungstenite reads from.
///
/// tungstenite answers a ping with a pong and a close frame with a close
/// frame by writing to its stream. Those writes are discarded here, because
/// the session sends its pongs and its close frame through the writer task,
/// the only writer of the socket besides direct audio writes.
pub struct ReadSide(OwnedReadHalf);

impl ReadSide {
    /// Wraps the read half of a client socket.
    pub fn new(read: OwnedReadHalf) -> Self {
        Self(read)
    }
}

impl AsyncRead for ReadSide {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadSide {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Settings of a session's writer task.
#[derive(Clone, Debug)]
pub struct WriterSettings {
    /// Wait after the first queued message before writing; see
    /// `RelayConfig::coalesce_window`.
    pub coalesce_window: Duration,
    /// Audio that waited longer than this is dropped; zero keeps it all.
    pub max_queue_delay: Duration,
    /// Relay-wide count of audio frames dropped as late.
    pub late_frames: Arc<AtomicU64>,
}

/// One write in the making: the bytes of the messages taken from the queue.
struct Batch {
    buffer: Vec<u8>,
    /// When the batch started; audio that waited longer than
    /// `max_queue_delay` by then is late.
    now: Stamp,
    max_queue_delay: Duration,
    /// Audio frames dropped as late in this batch.
    late: u64,
}

impl Batch {
    /// Starts an empty batch now.
    fn start(&mut self) {
        self.buffer.clear();
        self.late = 0;
        self.now = Stamp::now();
    }

    /// Appends `message` as a WebSocket frame, or drops it if it is late
    /// audio.
    fn add(&mut self, message: Outbound) {
        if let Outbound::Audio { received, .. } = &message
            && !self.max_queue_delay.is_zero()
            && received.elapsed_at(self.now) > self.max_queue_delay
        {
            self.late += 1;
            return;
        }
        encode(&mut self.buffer, message);
    }
}

/// Appends one queued message to `buffer` as a WebSocket frame.
fn encode(buffer: &mut Vec<u8>, message: Outbound) {
    match message {
        Outbound::Audio { frame, .. } | Outbound::Rest(frame) => buffer.extend_from_slice(&frame),
        Outbound::Text(text) => encode_text(buffer, &text),
        Outbound::Texts(texts) => {
            for text in &texts {
                encode_text(buffer, text);
            }
        }
        Outbound::Pong(payload) => {
            put_frame_header(buffer, opcode::PONG, payload.len());
            buffer.extend_from_slice(&payload);
        }
    }
}

fn encode_text(buffer: &mut Vec<u8>, text: &Utf8Bytes) {
    put_frame_header(buffer, opcode::TEXT, text.len());
    buffer.extend_from_slice(text.as_bytes());
}

fn encode_close(buffer: &mut Vec<u8>, frame: &CloseFrame) {
    let reason = frame.reason.as_bytes();
    put_frame_header(buffer, opcode::CLOSE, 2 + reason.len());
    buffer.extend_from_slice(&u16::from(frame.code).to_be_bytes());
    buffer.extend_from_slice(reason);
}

/// Writes all of `bytes`, waiting for the socket to become writable when
/// its send buffer is full.
async fn write_all(socket: &OwnedWriteHalf, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match socket.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => bytes = &bytes[written..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => socket.writable().await?,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Writes queued messages until the queue closes or a close frame arrives.
/// Every message already waiting leaves in the same write as the first,
/// except audio older than `settings.max_queue_delay`, which is dropped.
pub async fn write_loop(
    socket: Arc<OwnedWriteHalf>,
    outlet: Arc<Outlet>,
    mut queue: mpsc::Receiver<Outbound>,
    mut close: oneshot::Receiver<CloseFrame>,
    settings: WriterSettings,
    span: tracing::Span,
) {
    let mut batch = Batch {
        buffer: Vec::new(),
        now: Stamp::now(),
        max_queue_delay: settings.max_queue_delay,
        late: 0,
    };
    loop {
        let first = tokio::select! {
            biased;
            frame = &mut close => {
                // Messages queued before the close (such as `auth_error`)
                // go out first.
                outlet.stop_direct_writes();
                let mut buffer = batch.buffer;
                buffer.clear();
                while let Ok(message) = queue.try_recv() {
                    encode(&mut buffer, message);
                }
                if let Ok(frame) = frame {
                    encode_close(&mut buffer, &frame);
                }
                let _ = write_all(&socket, &buffer).await;
                return;
            }
            message = queue.recv() => match message {
                Some(message) => message,
                None => return,
            },
        };
        if !settings.coalesce_window.is_zero() {
            tokio::time::sleep(settings.coalesce_window).await;
        }
        batch.start();
        batch.add(first);
        for _ in 1..WRITE_BATCH {
            match queue.try_recv() {
                Ok(message) => batch.add(message),
                Err(_) => break,
            }
        }
        if batch.late > 0 {
            outlet.count_late(batch.late);
            settings
                .late_frames
                .fetch_add(batch.late, Ordering::Relaxed);
        }
        if let Err(err) = write_all(&socket, &batch.buffer).await {
            tracing::debug!(parent: &span, error = %err, "write failed; writer stops");
            return;
        }
        if batch.buffer.capacity() > KEPT_BUFFER {
            batch.buffer = Vec::new();
        }
        outlet.finish_writing();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CONTROL_HEADROOM;
    use crate::session_shared::binary_frame;
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    /// Returns a loopback client socket and the write half of its server end.
    async fn connected_pair() -> (TcpStream, Arc<tokio::net::tcp::OwnedWriteHalf>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_read, write) = server.into_split();
        (client, Arc::new(write))
    }

    fn settings(max_queue_delay: Duration) -> WriterSettings {
        WriterSettings {
            coalesce_window: Duration::ZERO,
            max_queue_delay,
            late_frames: Arc::new(AtomicU64::new(0)),
        }
    }

    #[tokio::test]
    async fn late_audio_is_dropped_and_counted() {
        let (mut client, write) = connected_pair().await;
        let (queue, queue_rx) = mpsc::channel(8 + CONTROL_HEADROOM);
        let outlet = Arc::new(Outlet::new(queue, None));
        let (close_tx, close_rx) = oneshot::channel();
        let settings = settings(Duration::from_millis(40));
        let late_frames = Arc::clone(&settings.late_frames);

        // Queue everything before the writer starts, so one batch takes all.
        outlet.send_audio(&binary_frame(b"old"), Stamp::now(), false);
        tokio::time::sleep(Duration::from_millis(60)).await;
        outlet.push(Outbound::Text("{}".into())).unwrap();
        outlet.send_audio(&binary_frame(b"new"), Stamp::now(), false);
        outlet
            .push(Outbound::Rest(Bytes::from_static(b"rest")))
            .unwrap();
        let writer = tokio::spawn(write_loop(
            write,
            Arc::clone(&outlet),
            queue_rx,
            close_rx,
            settings,
            tracing::Span::none(),
        ));

        let mut received = vec![0; 2 + 2 + 5 + 4];
        client.read_exact(&mut received).await.unwrap();
        let expected: &[u8] = &[
            0x81, 2, b'{', b'}', 0x82, 3, b'n', b'e', b'w', b'r', b'e', b's', b't',
        ];
        assert_eq!(received, expected);
        assert_eq!(outlet.late_frames(), 1);
        assert_eq!(late_frames.load(Ordering::Relaxed), 1);

        close_tx
            .send(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })
            .unwrap();
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn direct_and_queued_frames_keep_order() {
        let (mut client, write) = connected_pair().await;
        let (queue, queue_rx) = mpsc::channel(8 + CONTROL_HEADROOM);
        let outlet = Arc::new(Outlet::new(queue, Some(Arc::clone(&write))));
        let (close_tx, close_rx) = oneshot::channel();
        let writer = tokio::spawn(write_loop(
            write,
            Arc::clone(&outlet),
            queue_rx,
            close_rx,
            settings(Duration::ZERO),
            tracing::Span::none(),
        ));

        // The first frame may go out directly; once a text message waits,
        // audio queues behind it.
        outlet.send_audio(&binary_frame(b"one"), Stamp::now(), true);
        outlet.push(Outbound::Text("{}".into())).unwrap();
        outlet.send_audio(&binary_frame(b"two"), Stamp::now(), true);
        outlet
            .push(Outbound::Pong(Bytes::from_static(b"p")))
            .unwrap();
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        close_tx.send(close).unwrap();
        writer.await.unwrap();
        drop(outlet);

        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        let expected: &[u8] = &[
            0x82, 3, b'o', b'n', b'e', 0x81, 2, b'{', b'}', 0x82, 3, b't', b'w', b'o', 0x8a, 1,
            b'p', 0x88, 5, 0x03, 0xe8, b'b', b'y', b'e',
        ];
        assert_eq!(received, expected);
    }

    #[tokio::test]
    async fn idle_outlet_writes_directly() {
        let (mut client, write) = connected_pair().await;
        // Readiness is known only once the runtime has seen the socket.
        write.writable().await.unwrap();
        let (queue, _queue_rx) = mpsc::channel(8 + CONTROL_HEADROOM);
        let outlet = Outlet::new(queue, Some(write));
        let frame = binary_frame(b"direct");
        assert_eq!(
            outlet.send_audio(&frame, Stamp::now(), true),
            crate::session_shared::AudioDelivery::Written
        );
        assert_eq!(outlet.queue_len(), 0);
        let mut received = vec![0; frame.len()];
        client.read_exact(&mut received).await.unwrap();
        assert_eq!(received, frame);
    }
}
