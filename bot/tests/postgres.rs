//! The bot's queries on PostgreSQL: upserts, revocations and the relay sync.
//!
//! Runs against the database named by `KRT_TEST_POSTGRES_URL`:
//!
//! ```text
//! KRT_TEST_POSTGRES_URL=postgres://krt:krt@127.0.0.1:5432/krt_ci \
//!     cargo test -p krt-bot --test postgres -- --ignored
//! ```

use krt_bot::store::{self, IssuedToken, MemberRow};
use krt_migrations::entities::{members, revocations, tokens, voice_states};
use krt_shared::UserIdKey;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

#[tokio::test]
#[ignore = "needs PostgreSQL: set KRT_TEST_POSTGRES_URL and run with --ignored"]
async fn store_queries_on_postgres() {
    let url = std::env::var("KRT_TEST_POSTGRES_URL")
        .expect("KRT_TEST_POSTGRES_URL names a PostgreSQL database");
    let db = store::open(&url)
        .await
        .expect("database opens and migrates");

    // Random ids keep this run apart from rows of other runs.
    let key = UserIdKey::from_bytes(rand_bytes());
    let users: Vec<_> = (0..3).map(|n| key.pseudonymize(n)).collect();
    let ids: Vec<String> = users.iter().map(ToString::to_string).collect();

    store::upsert_voice_states(&db, &[(users[0], Some(10)), (users[1], Some(20))])
        .await
        .unwrap();
    store::upsert_voice_states(&db, &[(users[0], None)])
        .await
        .unwrap();
    let rows = voice_states::Entity::find()
        .filter(voice_states::Column::UserId.is_in(ids.clone()))
        .all(&db)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let first = rows.iter().find(|r| r.user_id == ids[0]).unwrap();
    assert_eq!(first.channel_id, None, "the conflict path updates the row");

    let row = |user, name: &str| MemberRow {
        user,
        display_name: name.into(),
        rank: 2,
        present: true,
    };
    store::upsert_members(&db, &[row(users[2], "old")])
        .await
        .unwrap();
    store::upsert_members(&db, &[row(users[2], "new")])
        .await
        .unwrap();
    store::mark_left(&db, &[users[2]]).await.unwrap();
    let member = members::Entity::find_by_id(ids[2].clone())
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(member.display_name, "new");
    assert!(!member.in_guild);

    let token_id = krt_shared::token::new_token_id();
    store::record_token(
        &db,
        &IssuedToken {
            token_id: &token_id,
            user: users[1],
            display_name: "pilot",
            rank: 0,
            issued_at: 1_000,
            expires_at: 4_000_000_000,
        },
    )
    .await
    .unwrap();
    store::revoke_user(&db, users[1], 2_000, "test", 0)
        .await
        .unwrap();
    let now = store::now_ms();
    assert_eq!(
        store::revoked_before(&db, users[1], now).await.unwrap(),
        Some(2_000)
    );
    let state = store::sync_state(&db, now).await.unwrap();
    assert!(
        state
            .revoked_users
            .iter()
            .any(|r| r.user_id == users[1] && r.before == 2_000)
    );

    // Leave the shared database as it was.
    voice_states::Entity::delete_many()
        .filter(voice_states::Column::UserId.is_in(ids.clone()))
        .exec(&db)
        .await
        .unwrap();
    members::Entity::delete_many()
        .filter(members::Column::UserId.is_in(ids.clone()))
        .exec(&db)
        .await
        .unwrap();
    tokens::Entity::delete_by_id(token_id)
        .exec(&db)
        .await
        .unwrap();
    revocations::Entity::delete_many()
        .filter(revocations::Column::UserId.is_in(ids))
        .exec(&db)
        .await
        .unwrap();
}

fn rand_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_le_bytes();
    bytes[..16].copy_from_slice(&nanos);
    bytes[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    bytes
}
