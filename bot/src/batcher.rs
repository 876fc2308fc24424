//! Voice-state and member batching.
//!
//! Gateway events only mark a user as pending, keeping the newest payload
//! (the last state wins). A flush task drains the queue every interval, or
//! earlier when many users are pending, under a governor quota. One flush is
//! one database transaction followed by one `assign` request to the relay,
//! plus one `revoke_user` per member who left the guild.
//!
//! serenity hands each event to its own task, so two events of one user can
//! reach [`Batcher::push`] out of order. Its cache, however, applies events
//! in gateway order, so a flush reads the current state from a [`LiveState`]
//! (the cache) and uses the payload only when the cache lacks the user.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use krt_shared::control::{Assignment, ControlCommand};
use krt_shared::{FreqId, UserId, UserIdKey};
use sea_orm::{DatabaseConnection, DbErr, TransactionTrait};
use tokio::sync::{Notify, watch};

use crate::access;
use crate::control_client::ControlClient;
use crate::store::{self, MemberRow};

/// Reason stored and sent when a member leaves the guild.
const LEFT_REASON: &str = "left the Discord server";

/// Name and roles of a member, as a payload or the cache shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Nickname, global name or user name, in that order.
    pub display_name: String,
    /// Role ids.
    pub roles: Vec<u64>,
}

/// One gateway change of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// The user's voice channel changed (None: left voice).
    Voice(Option<u64>),
    /// The member's nickname or roles changed, or the member joined.
    Member(MemberInfo),
    /// The member as a voice state's payload shows it. Unlike `Member`, it
    /// does not undo a leave, because Discord sends such a voice state
    /// while it removes a member from the guild.
    Seen(MemberInfo),
    /// The member left the guild.
    Left,
}

/// Current guild state, read at flush time.
pub trait LiveState: Send + Sync {
    /// Voice channel of `user`: `Some(None)` when the state is known and the
    /// user is not in voice, None when the state is unknown.
    fn voice_channel(&self, user: u64) -> Option<Option<u64>>;
    /// Current member data, None when unknown or not a member.
    fn member(&self, user: u64) -> Option<MemberInfo>;
}

/// Lookup tables the flush needs, kept current by the commands.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    /// Voice channel to linked frequency.
    pub channels: HashMap<u64, FreqId>,
    /// Role to rank.
    pub rank_roles: HashMap<u64, u8>,
}

/// Settings of the batcher.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Maximum time between flushes.
    pub interval: Duration,
    /// Pending users that trigger an early flush.
    pub early_at: usize,
    /// Maximum flushes per second.
    pub per_second: NonZeroU32,
    /// Lifetime of issued tokens, which bounds how long a revocation must last.
    pub token_ttl: Duration,
}

/// Counters of the batcher.
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Updates pushed.
    pub updates: AtomicU64,
    /// Flushes done, each one database transaction.
    pub flushes: AtomicU64,
    /// Users written, summed over flushes.
    pub users_flushed: AtomicU64,
    /// Flushes that failed and were retried later.
    pub failed_flushes: AtomicU64,
}

#[derive(Debug, Default)]
struct Pending {
    voice: Option<Option<u64>>,
    member: Option<MemberInfo>,
    /// Set by an event that shows the member in the guild.
    present: bool,
    left: bool,
}

#[derive(Debug, Default)]
struct Queue {
    users: HashMap<u64, Pending>,
    /// Users in voice according to a full guild snapshot. Stored voice
    /// states of everyone else are cleared at the next flush.
    snapshot: Option<HashSet<u64>>,
}

/// Queue plus flush task.
pub struct Batcher {
    queue: Mutex<Queue>,
    wake: Notify,
    config: BatchConfig,
    limiter: DefaultDirectRateLimiter,
    stats: BatchStats,
    live: OnceLock<Arc<dyn LiveState>>,
    db: DatabaseConnection,
    control: ControlClient,
    directory: Arc<RwLock<Directory>>,
    user_key: UserIdKey,
}

impl Batcher {
    /// Creates the batcher. Call [`Batcher::run`] to start flushing.
    pub fn new(
        config: BatchConfig,
        db: DatabaseConnection,
        control: ControlClient,
        directory: Arc<RwLock<Directory>>,
        user_key: UserIdKey,
    ) -> Arc<Self> {
        Arc::new(Self {
            limiter: RateLimiter::direct(Quota::per_second(config.per_second)),
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            config,
            stats: BatchStats::default(),
            live: OnceLock::new(),
            db,
            control,
            directory,
            user_key,
        })
    }

    /// Sets the source of current guild state. Only the first call counts.
    pub fn set_live_state(&self, live: Arc<dyn LiveState>) {
        let _ = self.live.set(live);
    }

    /// Counters.
    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }

    /// Number of users waiting for the next flush.
    pub fn pending(&self) -> usize {
        self.lock_queue().users.len()
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves a valid map, so keep going.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a change of `user` (a Discord id). Takes a short lock and
    /// never awaits, so gateway handlers do not wait for the database.
    pub fn push(&self, user: u64, update: Update) {
        self.stats.updates.fetch_add(1, Ordering::Relaxed);
        let pending_count = {
            let mut queue = self.lock_queue();
            let pending = queue.users.entry(user).or_default();
            match update {
                Update::Voice(channel) => pending.voice = Some(channel),
                Update::Member(info) => {
                    pending.member = Some(info);
                    pending.present = true;
                    pending.left = false;
                }
                Update::Seen(info) => {
                    if !pending.left {
                        pending.member = Some(info);
                    }
                }
                Update::Left => {
                    pending.left = true;
                    pending.present = false;
                    pending.member = None;
                    pending.voice = Some(None);
                }
            }
            queue.users.len()
        };
        if pending_count >= self.config.early_at {
            self.wake.notify_one();
        }
    }

    /// Queues a full guild snapshot: everyone in `voice` with their channel
    /// and every listed member. Users missing from `voice` lose their stored
    /// voice state.
    pub fn push_snapshot(&self, voice: Vec<(u64, u64)>, members: Vec<(u64, MemberInfo)>) {
        {
            let mut queue = self.lock_queue();
            let present: HashSet<u64> = voice.iter().map(|(user, _)| *user).collect();
            queue.snapshot = Some(present);
            for (user, channel) in voice {
                queue.users.entry(user).or_default().voice = Some(Some(channel));
            }
            for (user, info) in members {
                let pending = queue.users.entry(user).or_default();
                pending.member = Some(info);
                pending.present = true;
                pending.left = false;
            }
        }
        self.wake.notify_one();
    }

    /// Flushes every interval or when woken, until `shutdown` turns true,
    /// then flushes what is left once more.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = self.wake.notified() => {}
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
            self.limiter.until_ready().await;
            self.flush_logged().await;
            // The interval counts from the last flush, early or not.
            ticker.reset();
        }
        self.flush_logged().await;
    }

    async fn flush_logged(&self) {
        if let Err(error) = self.flush().await {
            self.stats.failed_flushes.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "voice-state flush failed; the users stay queued");
        }
    }

    /// Writes every pending user in one transaction, then sends the changes
    /// to the relay.
    /// On a database error the drained users are queued again.
    pub async fn flush(&self) -> Result<usize, DbErr> {
        let (users, snapshot) = {
            let mut queue = self.lock_queue();
            (std::mem::take(&mut queue.users), queue.snapshot.take())
        };
        if users.is_empty() && snapshot.is_none() {
            return Ok(0);
        }
        let started = Instant::now();
        let plan = self.plan(&users, snapshot.as_ref());

        let cleared = match self.write(&plan).await {
            Ok(cleared) => cleared,
            Err(error) => {
                self.requeue(users, snapshot);
                return Err(error);
            }
        };

        let count = users.len();
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .users_flushed
            .fetch_add(count as u64, Ordering::Relaxed);
        tracing::debug!(
            users = count,
            assignments = plan.assignments.len(),
            left = plan.left.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "flushed voice states"
        );
        self.tell_relay(plan, cleared).await;
        Ok(count)
    }

    /// Puts drained users back after a failed write, behind newer updates.
    fn requeue(&self, users: HashMap<u64, Pending>, snapshot: Option<HashSet<u64>>) {
        let mut queue = self.lock_queue();
        for (user, pending) in users {
            queue.users.entry(user).or_insert(pending);
        }
        if queue.snapshot.is_none() {
            queue.snapshot = snapshot;
        }
    }

    fn plan(&self, users: &HashMap<u64, Pending>, snapshot: Option<&HashSet<u64>>) -> Plan {
        let live = self.live.get();
        let directory = self.directory.read().unwrap_or_else(|p| p.into_inner());
        let mut plan = Plan {
            revoked_before: crate::cli::unix_now(),
            snapshot: snapshot.map(|present| {
                present
                    .iter()
                    .map(|&user| self.user_key.pseudonymize(user))
                    .collect()
            }),
            ..Plan::default()
        };
        for (&discord_id, pending) in users {
            let user = self.user_key.pseudonymize(discord_id);
            // Gateway events arrive in order, so a pending leave stays in
            // effect unless a later join cleared it. The cache cannot decide
            // it, because serenity adds a member back from a voice state's
            // payload.
            let left = pending.left;
            let current_member = live.and_then(|l| l.member(discord_id));
            if let Some(payload_channel) = pending.voice {
                let channel = if left {
                    None
                } else {
                    live.and_then(|l| l.voice_channel(discord_id))
                        .unwrap_or(payload_channel)
                };
                plan.voice.push((user, channel));
                plan.assignments
                    .push(store::assignment(user, channel, &directory.channels));
            }
            if left {
                plan.left.push(user);
            } else if let Some(info) = current_member.or_else(|| pending.member.clone()) {
                plan.members.push(MemberRow {
                    user,
                    rank: access::member_rank(&info.roles, &directory.rank_roles),
                    display_name: info.display_name,
                    present: pending.present,
                });
            }
        }
        plan
    }

    /// Runs the plan's one transaction and returns the users whose voice
    /// state the snapshot cleared.
    async fn write(&self, plan: &Plan) -> Result<Vec<UserId>, DbErr> {
        let txn = self.db.begin().await?;
        store::upsert_voice_states(&txn, &plan.voice).await?;
        store::upsert_members(&txn, &plan.members).await?;
        store::mark_left(&txn, &plan.left).await?;
        let min_expiry = store::now_ms() + self.config.token_ttl.as_millis() as i64;
        for user in &plan.left {
            store::revoke_user(&txn, *user, plan.revoked_before, LEFT_REASON, min_expiry).await?;
        }
        let cleared = match &plan.snapshot {
            Some(present) => store::clear_absent_voice_states(&txn, present).await?,
            None => Vec::new(),
        };
        txn.commit().await?;
        Ok(cleared)
    }

    async fn tell_relay(&self, mut plan: Plan, cleared: Vec<UserId>) {
        plan.assignments
            .extend(cleared.into_iter().map(|user_id| Assignment {
                user_id,
                freqs: krt_shared::FreqSet::default(),
            }));
        if !plan.assignments.is_empty() {
            self.control
                .notify(ControlCommand::Assign {
                    changes: plan.assignments,
                })
                .await;
        }
        for user in plan.left {
            self.control
                .notify(ControlCommand::RevokeUser {
                    user_id: user,
                    before: plan.revoked_before,
                    reason: LEFT_REASON.into(),
                })
                .await;
        }
    }
}

/// Rows one flush writes and changes it sends.
#[derive(Debug, Default)]
struct Plan {
    voice: Vec<(UserId, Option<u64>)>,
    assignments: Vec<Assignment>,
    members: Vec<MemberRow>,
    left: Vec<UserId>,
    revoked_before: u64,
    snapshot: Option<HashSet<UserId>>,
}

#[cfg(test)]
mod tests {
    use krt_migrations::entities::{members, voice_states};
    use sea_orm::EntityTrait;

    use super::*;

    struct FixedState {
        voice: HashMap<u64, Option<u64>>,
    }

    impl LiveState for FixedState {
        fn voice_channel(&self, user: u64) -> Option<Option<u64>> {
            self.voice.get(&user).copied()
        }

        fn member(&self, user: u64) -> Option<MemberInfo> {
            Some(MemberInfo {
                display_name: format!("member-{user}"),
                roles: Vec::new(),
            })
        }
    }

    async fn batcher(dir: &std::path::Path) -> Arc<Batcher> {
        let db = store::open("sqlite::memory:").await.unwrap();
        let (_stop, stopped) = watch::channel(false);
        let sync: crate::control_client::SyncSource = Arc::new(|| Box::pin(async { None }));
        let control = ControlClient::start(dir.join("absent.sock"), sync, stopped);
        Batcher::new(
            BatchConfig {
                interval: Duration::from_secs(1),
                early_at: 200,
                per_second: NonZeroU32::new(4).unwrap(),
                token_ttl: Duration::from_secs(3600),
            },
            db,
            control,
            Arc::new(RwLock::new(Directory::default())),
            UserIdKey::from_bytes([5; 32]),
        )
    }

    #[tokio::test]
    async fn flush_coalesces_per_user() {
        let dir = tempfile::tempdir().unwrap();
        let batcher = batcher(dir.path()).await;
        for round in 0..3u64 {
            for user in 0..200u64 {
                batcher.push(user, Update::Voice(Some(1000 + round)));
            }
        }
        assert_eq!(batcher.pending(), 200);
        assert_eq!(batcher.flush().await.unwrap(), 200);
        assert_eq!(batcher.stats().flushes.load(Ordering::Relaxed), 1);
        assert_eq!(batcher.pending(), 0);

        let rows = voice_states::Entity::find().all(&batcher.db).await.unwrap();
        assert_eq!(rows.len(), 200);
        assert!(rows.iter().all(|r| r.channel_id.as_deref() == Some("1002")));
        assert_eq!(batcher.flush().await.unwrap(), 0, "nothing left to flush");
        assert_eq!(batcher.stats().flushes.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn flush_prefers_live_state() {
        let dir = tempfile::tempdir().unwrap();
        let batcher = batcher(dir.path()).await;
        batcher.set_live_state(Arc::new(FixedState {
            voice: HashMap::from([(7, Some(555))]),
        }));
        // The payload arrived after a newer event was already cached.
        batcher.push(7, Update::Voice(Some(111)));
        batcher.flush().await.unwrap();
        let row = voice_states::Entity::find()
            .one(&batcher.db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.channel_id.as_deref(), Some("555"));
        let member = members::Entity::find()
            .one(&batcher.db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(member.display_name, "member-7");
    }
}
