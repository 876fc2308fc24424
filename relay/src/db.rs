//! Database connection and the state the relay loads at start.

use krt_migrations::entities::{frequencies, mutes, revocations, transmissions, voice_states};
use krt_migrations::{Migrator, MigratorTrait};
use krt_shared::control::FreqConfig;
use krt_shared::{FreqId, UserId};
use sea_orm::{
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, QueryFilter,
};

use crate::config::RelayConfig;
use crate::hub::{Hub, wall_ms};

/// Connects, switches SQLite to WAL mode and applies migrations.
pub async fn connect(config: &RelayConfig) -> Result<DatabaseConnection, DbErr> {
    let url = config.database_url();
    krt_shared::keyfile::create_private_sqlite_file(&url)
        .map_err(|err| DbErr::Custom(err.to_string()))?;
    let mut options = ConnectOptions::new(url);
    options.sqlx_logging(false);
    let db = Database::connect(options).await?;
    if db.get_database_backend() == DbBackend::Sqlite {
        db.execute_unprepared("PRAGMA journal_mode=WAL;").await?;
        db.execute_unprepared("PRAGMA synchronous=NORMAL;").await?;
    }
    Migrator::up(&db, None).await?;
    Ok(db)
}

/// Row counts loaded by [`load_state`].
#[derive(Debug, Default)]
pub struct LoadedState {
    /// Configured frequencies.
    pub frequencies: usize,
    /// Revoked tokens and users still in force.
    pub revocations: usize,
    /// Moderator mutes.
    pub mutes: usize,
    /// Rows skipped because a value was invalid.
    pub skipped: usize,
}

/// Loads frequency settings, revocations and mutes into the hub.
pub async fn load_state(db: &DatabaseConnection, hub: &Hub) -> Result<LoadedState, DbErr> {
    let mut loaded = LoadedState::default();

    let mut configs = Vec::new();
    for row in frequencies::Entity::find().all(db).await? {
        match FreqId::new(i64::from(row.id)) {
            Ok(id) => configs.push(FreqConfig {
                id,
                name: row.name,
                min_rank: row.min_rank.clamp(0, i16::from(u8::MAX)) as u8,
                half_duplex: row.half_duplex,
            }),
            Err(err) => {
                tracing::warn!(error = %err, "skipping frequency row");
                loaded.skipped += 1;
            }
        }
    }
    loaded.frequencies = configs.len();
    hub.replace_settings(&configs);

    let now = wall_ms();
    let mut tokens = Vec::new();
    let mut users = Vec::new();
    let rows = revocations::Entity::find()
        .filter(revocations::Column::ExpiresAtMs.gt(now))
        .all(db)
        .await?;
    for row in rows {
        if let Some(token_id) = row.token_id {
            tokens.push(token_id);
        }
        if let (Some(user), Some(before)) = (row.user_id, row.revoked_before) {
            match user.parse::<UserId>() {
                Ok(user) => users.push((user, before.max(0) as u64)),
                Err(err) => {
                    tracing::warn!(error = %err, "skipping revocation row");
                    loaded.skipped += 1;
                }
            }
        }
    }
    loaded.revocations = tokens.len() + users.len();
    hub.auth.replace_revocations(tokens, users);

    let mut muted = Vec::new();
    for row in mutes::Entity::find().all(db).await? {
        match (
            row.user_id.parse::<UserId>(),
            FreqId::new(i64::from(row.freq_id)),
        ) {
            (Ok(user), Ok(freq)) => muted.push((user, freq)),
            _ => {
                tracing::warn!(user = %row.user_id, freq = row.freq_id, "skipping invalid mute row");
                loaded.skipped += 1;
            }
        }
    }
    loaded.mutes = muted.len();
    hub.replace_mutes(muted);
    Ok(loaded)
}

/// Rows deleted by [`purge_older_than`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Transmission rows.
    pub transmissions: u64,
    /// Voice-state rows.
    pub voice_states: u64,
    /// Revocations whose tokens have all expired.
    pub revocations: u64,
}

impl Purged {
    /// Rows deleted in all tables.
    pub fn total(&self) -> u64 {
        self.transmissions + self.voice_states + self.revocations
    }
}

/// Deletes transmissions older than `cutoff_ms` (Unix milliseconds), the
/// voice states of users who left voice before it, and revocations that no
/// longer cover an unexpired token. A user still in a channel keeps its row
/// however old it is, because it carries the user's current grant.
pub async fn purge_older_than(db: &DatabaseConnection, cutoff_ms: i64) -> Result<Purged, DbErr> {
    let transmissions = transmissions::Entity::delete_many()
        .filter(transmissions::Column::EndedAtMs.lt(cutoff_ms))
        .exec(db)
        .await?
        .rows_affected;
    let voice_states = voice_states::Entity::delete_many()
        .filter(voice_states::Column::UpdatedAtMs.lt(cutoff_ms))
        .filter(voice_states::Column::ChannelId.is_null())
        .exec(db)
        .await?
        .rows_affected;
    let revocations = revocations::Entity::delete_many()
        .filter(revocations::Column::ExpiresAtMs.lt(wall_ms()))
        .exec(db)
        .await?
        .rows_affected;
    Ok(Purged {
        transmissions,
        voice_states,
        revocations,
    })
}
