//! The transmission log: one database row per transmission, written off the
//! audio path.
//!
//! Sessions hand finished transmissions to a bounded queue with a
//! non-blocking send. One writer task drains the queue and inserts the rows
//! in batches, one transaction per batch. When the database fails, rows wait
//! in memory (up to the queue size again) and the batch is retried with
//! backoff. Rows that find no room are counted and logged as lost.
//! [`TxLogWriter::finish`] closes the queue, so the writer flushes everything
//! pending and stops.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use krt_migrations::entities::transmissions;
use krt_shared::{FreqId, UserId};
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait, TransactionTrait};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// One finished transmission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxRecord {
    /// Frequency.
    pub freq: FreqId,
    /// Talker.
    pub user: UserId,
    /// First frame, Unix milliseconds.
    pub started_ms: i64,
    /// Last frame, Unix milliseconds.
    pub ended_ms: i64,
    /// Frames received from the talker.
    pub frames: u64,
    /// Copies of those frames dropped for slow listeners.
    pub dropped: u64,
}

/// Counters of the transmission log.
#[derive(Debug, Default)]
pub struct TxLogStats {
    /// Rows committed to the database.
    pub written: AtomicU64,
    /// Rows that could not be queued or written and are lost.
    pub lost: AtomicU64,
    /// Failed write attempts.
    pub failures: AtomicU64,
}

/// The sending side of the transmission log, cheap to clone.
#[derive(Clone)]
pub struct TxLog {
    queue: mpsc::Sender<TxRecord>,
    stats: Arc<TxLogStats>,
}

/// The writer task, for stopping it.
pub struct TxLogWriter {
    join: JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

impl TxLogWriter {
    /// Closes the queue, waits until every queued row is written (or counted
    /// as lost after repeated failures) and the writer has stopped.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        if let Err(err) = self.join.await {
            tracing::error!(error = %err, "transmission log writer failed");
        }
    }
}

impl TxLog {
    /// Starts the writer task.
    pub fn spawn(db: DatabaseConnection, capacity: usize, batch: usize) -> (TxLog, TxLogWriter) {
        let (queue, receiver) = mpsc::channel(capacity);
        let (stop_tx, stop) = oneshot::channel();
        let stats = Arc::new(TxLogStats::default());
        let writer = Writer {
            db,
            receiver,
            stop,
            stopping: false,
            pending: VecDeque::new(),
            max_pending: capacity,
            batch,
            stats: Arc::clone(&stats),
        };
        let join = tokio::spawn(writer.run());
        (
            TxLog { queue, stats },
            TxLogWriter {
                join,
                stop: stop_tx,
            },
        )
    }

    /// Queues a row without waiting; a full queue counts the row as lost.
    pub fn record(&self, record: TxRecord) {
        if let Err(err) = self.queue.try_send(record) {
            let lost = self.stats.lost.fetch_add(1, Ordering::Relaxed) + 1;
            let record = match &err {
                mpsc::error::TrySendError::Full(record)
                | mpsc::error::TrySendError::Closed(record) => record,
            };
            tracing::error!(
                freq = %record.freq,
                user = %record.user,
                lost_total = lost,
                "transmission log queue is full or closed; row lost"
            );
        }
    }

    /// Counters shared with the writer.
    pub fn stats(&self) -> Arc<TxLogStats> {
        Arc::clone(&self.stats)
    }
}

struct Writer {
    db: DatabaseConnection,
    receiver: mpsc::Receiver<TxRecord>,
    stop: oneshot::Receiver<()>,
    stopping: bool,
    pending: VecDeque<TxRecord>,
    max_pending: usize,
    batch: usize,
    stats: Arc<TxLogStats>,
}

/// Time the writer waits for more rows to fill a batch.
const BATCH_WINDOW: Duration = Duration::from_millis(100);
/// First and last retry delays after a failed write.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Attempts of the final flush at shutdown before pending rows count as lost.
const SHUTDOWN_ATTEMPTS: u32 = 5;

impl Writer {
    async fn run(mut self) {
        let mut retry = RETRY_MIN;
        let mut open = true;
        let mut failures_after_close = 0;
        while open || !self.pending.is_empty() {
            if self.pending.is_empty() {
                match self.next_record().await {
                    Some(record) => self.pending.push_back(record),
                    None => break,
                }
                open = self.collect_batch().await;
            } else if open {
                open = self.take_queued();
            }

            match self.write_batch().await {
                Ok(()) => retry = RETRY_MIN,
                Err(err) => {
                    let failures = self.stats.failures.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(
                        error = %err,
                        pending = self.pending.len(),
                        failures,
                        retry_in_ms = retry.as_millis() as u64,
                        "writing transmission rows failed; will retry"
                    );
                    if !open {
                        failures_after_close += 1;
                        if failures_after_close >= SHUTDOWN_ATTEMPTS {
                            break;
                        }
                    }
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
        if !self.pending.is_empty() {
            let lost = self.pending.len() as u64;
            self.stats.lost.fetch_add(lost, Ordering::Relaxed);
            tracing::error!(
                lost,
                "transmission rows could not be written before shutdown"
            );
        }
    }

    /// Receives the next row. After the stop signal the queue is closed, so
    /// this returns the rows still queued and then `None`.
    async fn next_record(&mut self) -> Option<TxRecord> {
        if !self.stopping {
            tokio::select! {
                biased;
                record = self.receiver.recv() => return record,
                _ = &mut self.stop => {
                    self.stopping = true;
                    self.receiver.close();
                }
            }
        }
        self.receiver.recv().await
    }

    /// Waits up to [`BATCH_WINDOW`] for more rows; false once the queue closed.
    async fn collect_batch(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        while self.pending.len() < self.batch {
            match tokio::time::timeout_at(deadline, self.next_record()).await {
                Ok(Some(record)) => self.pending.push_back(record),
                Ok(None) => return false,
                Err(_elapsed) => break,
            }
        }
        true
    }

    /// Moves rows already queued into `pending`, up to its limit; rows beyond
    /// it stay in the queue, whose senders then count new rows as lost.
    fn take_queued(&mut self) -> bool {
        while self.pending.len() < self.max_pending {
            match self.receiver.try_recv() {
                Ok(record) => self.pending.push_back(record),
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        true
    }

    async fn write_batch(&mut self) -> Result<(), sea_orm::DbErr> {
        while !self.pending.is_empty() {
            let count = self.pending.len().min(self.batch);
            let rows: Vec<transmissions::ActiveModel> =
                self.pending.iter().take(count).map(to_row).collect();
            let txn = self.db.begin().await?;
            transmissions::Entity::insert_many(rows).exec(&txn).await?;
            txn.commit().await?;
            self.pending.drain(..count);
            self.stats
                .written
                .fetch_add(count as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn to_row(record: &TxRecord) -> transmissions::ActiveModel {
    transmissions::ActiveModel {
        freq_id: Set(i32::from(record.freq)),
        user_id: Set(record.user.to_string()),
        started_at_ms: Set(record.started_ms),
        ended_at_ms: Set(record.ended_ms),
        frames: Set(record.frames as i64),
        frames_dropped: Set(record.dropped as i64),
        ..Default::default()
    }
}
