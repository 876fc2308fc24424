//! Database access of the bot: the tables of `krt-migrations`, read and
//! written through sea-orm.

use std::collections::{HashMap, HashSet};

use krt_migrations::entities::{
    audit_log, bans, frequencies, members, mutes, rank_roles, revocations, tokens, transmissions,
    voice_states,
};
use krt_migrations::{Migrator, MigratorTrait};
use krt_shared::control::{Assignment, FreqConfig, MuteEntry, RevokedUser, SyncState};
use krt_shared::{FreqId, FreqSet, UserId};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectOptions, ConnectionTrait, Database,
    DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};

use crate::access::FreqRule;

/// Rows per INSERT statement, well below SQLite's limit of bound variables.
const INSERT_CHUNK: usize = 300;

/// Errors of database access.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or migrated.
    #[error("failed to open database {url}: {source}")]
    Open {
        /// Database URL with any password removed.
        url: String,
        /// Underlying error.
        #[source]
        source: DbErr,
    },
    /// A query failed.
    #[error("database query failed: {0}")]
    Query(#[from] DbErr),
}

/// Current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Opens the database, switches SQLite to WAL and applies the migrations.
pub async fn open(url: &str) -> Result<DatabaseConnection, StoreError> {
    let shown_url = redact_url(url);
    let open_error = |source| StoreError::Open {
        url: shown_url.clone(),
        source,
    };
    krt_shared::keyfile::create_private_sqlite_file(url)
        .map_err(|err| open_error(sea_orm::DbErr::Custom(err.to_string())))?;
    let mut options = ConnectOptions::new(url.to_owned());
    options.sqlx_logging(false);
    let db = Database::connect(options).await.map_err(open_error)?;
    if db.get_database_backend() == DbBackend::Sqlite {
        db.execute_unprepared("PRAGMA journal_mode=WAL")
            .await
            .map_err(open_error)?;
    }
    Migrator::up(&db, None).await.map_err(open_error)?;
    Ok(db)
}

/// Removes the password from a database URL, for messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Converts a stored frequency number, which the schema keeps in range.
fn stored_freq(value: i32) -> Option<FreqId> {
    FreqId::new(i64::from(value)).ok()
}

/// Parses a stored Discord snowflake.
fn stored_snowflake(value: Option<&str>) -> Option<u64> {
    value.and_then(|text| text.parse().ok())
}

/// Converts a stored rank to the token range.
fn stored_rank(value: i16) -> u8 {
    value.clamp(0, i16::from(krt_shared::token::MAX_RANK)) as u8
}

/// Relay settings of a stored frequency.
pub fn freq_config(row: &frequencies::Model) -> Option<FreqConfig> {
    Some(FreqConfig {
        id: stored_freq(row.id)?,
        name: row.name.clone(),
        min_rank: stored_rank(row.min_rank),
        half_duplex: row.half_duplex,
    })
}

/// Access rule of a stored frequency.
pub fn freq_rule(row: &frequencies::Model) -> Option<FreqRule> {
    Some(FreqRule {
        id: stored_freq(row.id)?,
        name: row.name.clone(),
        role_id: stored_snowflake(row.role_id.as_deref()),
        min_rank: stored_rank(row.min_rank),
    })
}

/// Loads every configured frequency, ordered by number.
pub async fn frequencies(db: &impl ConnectionTrait) -> Result<Vec<frequencies::Model>, DbErr> {
    frequencies::Entity::find()
        .order_by_asc(frequencies::Column::Id)
        .all(db)
        .await
}

/// Map from linked voice channel to frequency.
pub fn channel_map(rows: &[frequencies::Model]) -> HashMap<u64, FreqId> {
    rows.iter()
        .filter_map(|row| {
            let channel = stored_snowflake(row.channel_id.as_deref())?;
            Some((channel, stored_freq(row.id)?))
        })
        .collect()
}

/// Rank of each role with one.
pub async fn rank_roles(db: &impl ConnectionTrait) -> Result<HashMap<u64, u8>, DbErr> {
    let rows = rank_roles::Entity::find().all(db).await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| Some((row.role_id.parse().ok()?, stored_rank(row.rank))))
        .collect())
}

/// Appends one moderator action to the audit log.
pub async fn audit(
    db: &impl ConnectionTrait,
    actor: UserId,
    action: &str,
    target: &str,
    detail: &str,
) -> Result<(), DbErr> {
    audit_log::ActiveModel {
        actor: Set(actor.to_string()),
        action: Set(action.to_owned()),
        target: Set(target.to_owned()),
        detail: Set(detail.to_owned()),
        created_at_ms: Set(now_ms()),
        ..Default::default()
    }
    .insert(db)
    .await
    .map(|_| ())
}

/// Loads the ban of a user, if any.
pub async fn ban(db: &impl ConnectionTrait, user: UserId) -> Result<Option<bans::Model>, DbErr> {
    bans::Entity::find_by_id(user.to_string()).one(db).await
}

/// Latest user-wide revocation cut-off in force for `user`, Unix seconds.
pub async fn revoked_before(
    db: &impl ConnectionTrait,
    user: UserId,
    now_ms: i64,
) -> Result<Option<u64>, DbErr> {
    let rows = revocations::Entity::find()
        .filter(revocations::Column::UserId.eq(user.to_string()))
        .filter(revocations::Column::ExpiresAtMs.gt(now_ms))
        .all(db)
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| row.revoked_before)
        .max()
        .map(|before| before.max(0) as u64))
}

/// A newly issued token and the member it was issued to.
pub struct IssuedToken<'a> {
    /// Token id.
    pub token_id: &'a str,
    /// Owner.
    pub user: UserId,
    /// Display name in the token.
    pub display_name: &'a str,
    /// Rank in the token.
    pub rank: u8,
    /// Issue time, Unix seconds.
    pub issued_at: u64,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
}

/// Records an issued token and refreshes its member row, in one transaction.
pub async fn record_token(db: &DatabaseConnection, token: &IssuedToken<'_>) -> Result<(), DbErr> {
    let txn = db.begin().await?;
    tokens::ActiveModel {
        token_id: Set(token.token_id.to_owned()),
        user_id: Set(token.user.to_string()),
        issued_at_ms: Set(secs_to_ms(token.issued_at)),
        expires_at_ms: Set(secs_to_ms(token.expires_at)),
    }
    .insert(&txn)
    .await?;
    upsert_members(
        &txn,
        &[MemberRow {
            user: token.user,
            display_name: token.display_name.to_owned(),
            rank: token.rank,
            present: true,
        }],
    )
    .await?;
    txn.commit().await
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// Stores a user-wide revocation of tokens issued at or before `before`
/// (Unix seconds). It stays in force until every stored token of the user
/// has expired, and at least until `min_expiry_ms`.
pub async fn revoke_user(
    db: &impl ConnectionTrait,
    user: UserId,
    before: u64,
    reason: &str,
    min_expiry_ms: i64,
) -> Result<(), DbErr> {
    let latest_expiry = tokens::Entity::find()
        .filter(tokens::Column::UserId.eq(user.to_string()))
        .all(db)
        .await?
        .iter()
        .map(|row| row.expires_at_ms)
        .max()
        .unwrap_or(0);
    let now = now_ms();
    revocations::ActiveModel {
        token_id: Set(None),
        user_id: Set(Some(user.to_string())),
        revoked_before: Set(Some(i64::try_from(before).unwrap_or(i64::MAX))),
        reason: Set(reason.to_owned()),
        created_at_ms: Set(now),
        expires_at_ms: Set(latest_expiry.max(now).max(min_expiry_ms)),
        ..Default::default()
    }
    .insert(db)
    .await
    .map(|_| ())
}

/// One member row to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRow {
    /// Member.
    pub user: UserId,
    /// Nickname or user name.
    pub display_name: String,
    /// Rank from roles.
    pub rank: u8,
    /// True when the event shows the member in the guild now (a join, a
    /// member update, a snapshot or a command), which also marks a member
    /// who had left as back. False for the member payload of a voice state,
    /// which Discord also sends while it removes a member, so a stored
    /// `in_guild` then stays as it is.
    pub present: bool,
}

/// Inserts or updates member rows. New rows are marked as in the guild.
pub async fn upsert_members(db: &impl ConnectionTrait, rows: &[MemberRow]) -> Result<(), DbErr> {
    let (present, seen): (Vec<&MemberRow>, Vec<&MemberRow>) = rows.iter().partition(|r| r.present);
    upsert_member_rows(db, &present, true).await?;
    upsert_member_rows(db, &seen, false).await
}

async fn upsert_member_rows(
    db: &impl ConnectionTrait,
    rows: &[&MemberRow],
    mark_present: bool,
) -> Result<(), DbErr> {
    let now = now_ms();
    let mut columns = vec![
        members::Column::DisplayName,
        members::Column::Rank,
        members::Column::UpdatedAtMs,
    ];
    if mark_present {
        columns.push(members::Column::InGuild);
    }
    for chunk in rows.chunks(INSERT_CHUNK) {
        let models = chunk.iter().map(|row| members::ActiveModel {
            user_id: Set(row.user.to_string()),
            display_name: Set(row.display_name.clone()),
            rank: Set(i16::from(row.rank)),
            in_guild: Set(true),
            updated_at_ms: Set(now),
        });
        members::Entity::insert_many(models)
            .on_conflict(
                OnConflict::column(members::Column::UserId)
                    .update_columns(columns.iter().copied())
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
}

/// Marks members as gone from the guild, keeping their last name and rank.
pub async fn mark_left(db: &impl ConnectionTrait, users: &[UserId]) -> Result<(), DbErr> {
    for chunk in users.chunks(INSERT_CHUNK) {
        members::Entity::update_many()
            .col_expr(members::Column::InGuild, Expr::value(false))
            .col_expr(members::Column::UpdatedAtMs, Expr::value(now_ms()))
            .filter(members::Column::UserId.is_in(chunk.iter().map(UserId::to_string)))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// Stores the voice channel of each user (None: not in voice).
pub async fn upsert_voice_states(
    db: &impl ConnectionTrait,
    states: &[(UserId, Option<u64>)],
) -> Result<(), DbErr> {
    let now = now_ms();
    for chunk in states.chunks(INSERT_CHUNK) {
        let models = chunk
            .iter()
            .map(|(user, channel)| voice_states::ActiveModel {
                user_id: Set(user.to_string()),
                channel_id: Set(channel.map(|c| c.to_string())),
                updated_at_ms: Set(now),
            });
        voice_states::Entity::insert_many(models)
            .on_conflict(
                OnConflict::column(voice_states::Column::UserId)
                    .update_columns([
                        voice_states::Column::ChannelId,
                        voice_states::Column::UpdatedAtMs,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
}

/// Clears the voice channel of every stored user not in `present`, and
/// returns those users. Used after a full guild snapshot.
pub async fn clear_absent_voice_states(
    db: &impl ConnectionTrait,
    present: &HashSet<UserId>,
) -> Result<Vec<UserId>, DbErr> {
    let in_voice = voice_states::Entity::find()
        .filter(voice_states::Column::ChannelId.is_not_null())
        .all(db)
        .await?;
    let absent: Vec<UserId> = in_voice
        .iter()
        .filter_map(|row| row.user_id.parse::<UserId>().ok())
        .filter(|user| !present.contains(user))
        .collect();
    let cleared: Vec<(UserId, Option<u64>)> = absent.iter().map(|user| (*user, None)).collect();
    upsert_voice_states(db, &cleared).await?;
    Ok(absent)
}

/// Users whose stored voice channel is `channel`.
pub async fn users_in_channel(
    db: &impl ConnectionTrait,
    channel: u64,
) -> Result<Vec<UserId>, DbErr> {
    let rows = voice_states::Entity::find()
        .filter(voice_states::Column::ChannelId.eq(channel.to_string()))
        .all(db)
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| row.user_id.parse().ok())
        .collect())
}

/// Voice-channel grant of a user in `channel`, through `channels`.
pub fn assignment(
    user: UserId,
    channel: Option<u64>,
    channels: &HashMap<u64, FreqId>,
) -> Assignment {
    let freqs = channel
        .and_then(|c| channels.get(&c))
        .map(|&freq| FreqSet::from_freqs([freq]))
        .unwrap_or_default();
    Assignment {
        user_id: user,
        freqs,
    }
}

/// Everything the relay mirrors, read from the database at `now_ms`.
pub async fn sync_state(db: &impl ConnectionTrait, now_ms: i64) -> Result<SyncState, DbErr> {
    let freq_rows = frequencies(db).await?;
    let channels = channel_map(&freq_rows);
    let voice_rows = voice_states::Entity::find()
        .filter(voice_states::Column::ChannelId.is_not_null())
        .all(db)
        .await?;
    let assignments = voice_rows
        .iter()
        .filter_map(|row| {
            let user = row.user_id.parse().ok()?;
            let channel = stored_snowflake(row.channel_id.as_deref())?;
            channels
                .contains_key(&channel)
                .then(|| assignment(user, Some(channel), &channels))
        })
        .collect();
    let mutes = mutes::Entity::find()
        .all(db)
        .await?
        .iter()
        .filter_map(|row| {
            Some(MuteEntry {
                user_id: row.user_id.parse().ok()?,
                freq_id: stored_freq(row.freq_id)?,
            })
        })
        .collect();
    let revocation_rows = revocations::Entity::find()
        .filter(revocations::Column::ExpiresAtMs.gt(now_ms))
        .all(db)
        .await?;
    let mut latest: HashMap<UserId, u64> = HashMap::new();
    let mut revoked_tokens = Vec::new();
    for row in &revocation_rows {
        if let Some(token_id) = &row.token_id {
            revoked_tokens.push(token_id.clone());
        }
        let user = row
            .user_id
            .as_deref()
            .and_then(|u| u.parse::<UserId>().ok());
        if let (Some(user), Some(before)) = (user, row.revoked_before) {
            let before = before.max(0) as u64;
            let entry = latest.entry(user).or_insert(before);
            *entry = (*entry).max(before);
        }
    }
    let mut revoked_users: Vec<RevokedUser> = latest
        .into_iter()
        .map(|(user_id, before)| RevokedUser { user_id, before })
        .collect();
    revoked_users.sort_by_key(|r| r.user_id);

    Ok(SyncState {
        freqs: freq_rows.iter().filter_map(freq_config).collect(),
        assignments,
        mutes,
        revoked_users,
        revoked_tokens,
    })
}

/// Recent transmissions, newest first, with the talker's display name.
pub async fn recent_transmissions(
    db: &impl ConnectionTrait,
    freq: Option<FreqId>,
    limit: u64,
) -> Result<Vec<(transmissions::Model, Option<String>)>, DbErr> {
    let mut query = transmissions::Entity::find()
        .order_by_desc(transmissions::Column::StartedAtMs)
        .limit(limit);
    if let Some(freq) = freq {
        query = query.filter(transmissions::Column::FreqId.eq(i32::from(freq)));
    }
    let rows = query.all(db).await?;
    let ids: Vec<String> = rows.iter().map(|row| row.user_id.clone()).collect();
    let names: HashMap<String, String> = members::Entity::find()
        .filter(members::Column::UserId.is_in(ids))
        .all(db)
        .await?
        .into_iter()
        .map(|m| (m.user_id, m.display_name))
        .collect();
    Ok(rows
        .into_iter()
        .map(|row| {
            let name = names.get(&row.user_id).cloned();
            (row, name)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use krt_shared::UserIdKey;

    use super::*;

    async fn memory_db() -> DatabaseConnection {
        open("sqlite::memory:").await.unwrap()
    }

    fn user(n: u64) -> UserId {
        UserIdKey::from_bytes([1; 32]).pseudonymize(n)
    }

    #[test]
    fn redact_url_hides_password() {
        assert_eq!(
            redact_url("postgres://krt:secret@db:5432/krt"),
            "postgres://krt:***@db:5432/krt"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }

    #[tokio::test]
    async fn voice_states_upsert_keeps_last() {
        let db = memory_db().await;
        upsert_voice_states(&db, &[(user(1), Some(10)), (user(2), Some(20))])
            .await
            .unwrap();
        upsert_voice_states(&db, &[(user(1), None)]).await.unwrap();
        let rows = voice_states::Entity::find().all(&db).await.unwrap();
        assert_eq!(rows.len(), 2);
        let first = rows
            .iter()
            .find(|r| r.user_id == user(1).to_string())
            .unwrap();
        assert_eq!(first.channel_id, None);
        let present = HashSet::from([user(1)]);
        assert_eq!(
            clear_absent_voice_states(&db, &present).await.unwrap(),
            [user(2)]
        );
        assert!(users_in_channel(&db, 20).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn sync_state_collects_everything() {
        let db = memory_db().await;
        frequencies::ActiveModel {
            id: Set(1050),
            name: Set("Alpha".into()),
            channel_id: Set(Some("10".into())),
            role_id: Set(None),
            min_rank: Set(2),
            half_duplex: Set(true),
            created_at_ms: Set(0),
            updated_at_ms: Set(0),
        }
        .insert(&db)
        .await
        .unwrap();
        upsert_voice_states(&db, &[(user(1), Some(10)), (user(2), Some(99))])
            .await
            .unwrap();
        revoke_user(&db, user(3), 500, "spam", now_ms() + 60_000)
            .await
            .unwrap();
        mutes::ActiveModel {
            user_id: Set(user(4).to_string()),
            freq_id: Set(1050),
            created_at_ms: Set(0),
        }
        .insert(&db)
        .await
        .unwrap();

        let state = sync_state(&db, now_ms() - 1).await.unwrap();
        assert_eq!(state.freqs.len(), 1);
        assert_eq!(state.freqs[0].min_rank, 2);
        assert_eq!(state.assignments.len(), 1, "channel 99 links no frequency");
        assert_eq!(state.assignments[0].user_id, user(1));
        assert!(
            state.assignments[0]
                .freqs
                .contains(FreqId::new(1050).unwrap())
        );
        assert_eq!(
            state.revoked_users,
            [RevokedUser {
                user_id: user(3),
                before: 500
            }]
        );
        assert_eq!(state.mutes.len(), 1);
        assert_eq!(
            revoked_before(&db, user(3), now_ms() - 1).await.unwrap(),
            Some(500)
        );
    }
}
