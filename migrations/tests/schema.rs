//! Applies the schema to a real SQLite file and checks that it round-trips.

use krt_migrations::entities::{mutes, transmissions};
use krt_migrations::{Migrator, MigratorTrait};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, Database, EntityTrait, PaginatorTrait};

#[tokio::test]
async fn migrations_apply_on_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("krt.db").display());
    let db = Database::connect(&url).await.unwrap();
    Migrator::up(&db, None).await.unwrap();

    let row = transmissions::ActiveModel {
        freq_id: Set(1050),
        user_id: Set("00112233445566778899aabbccddeeff".into()),
        started_at_ms: Set(1),
        ended_at_ms: Set(2),
        frames: Set(50),
        frames_dropped: Set(0),
        ..Default::default()
    }
    .insert(&db)
    .await
    .unwrap();
    assert_eq!(row.freq_id, 1050);
    assert_eq!(transmissions::Entity::find().count(&db).await.unwrap(), 1);

    let mute = mutes::ActiveModel {
        user_id: Set("aa".into()),
        freq_id: Set(1000),
        created_at_ms: Set(0),
    };
    mute.clone().insert(&db).await.unwrap();
    assert!(
        mute.insert(&db).await.is_err(),
        "composite primary key must reject duplicates"
    );

    Migrator::down(&db, None).await.unwrap();
    Migrator::up(&db, None).await.unwrap();
    assert_eq!(transmissions::Entity::find().count(&db).await.unwrap(), 0);
}

/// Runs against the server named by `KRT_TEST_POSTGRES_URL`; `.ci/run`
/// starts one and runs this test with `--ignored`.
#[tokio::test]
#[ignore = "needs PostgreSQL: set KRT_TEST_POSTGRES_URL and run with --ignored"]
async fn migrations_apply_on_postgres() {
    let url = std::env::var("KRT_TEST_POSTGRES_URL")
        .expect("KRT_TEST_POSTGRES_URL names a PostgreSQL database, e.g. postgres://krt:krt@127.0.0.1/krt_ci");
    let db = Database::connect(&url).await.unwrap();
    Migrator::fresh(&db).await.unwrap();

    let row = transmissions::ActiveModel {
        freq_id: Set(9999),
        user_id: Set("ffeeddccbbaa99887766554433221100".into()),
        started_at_ms: Set(1_700_000_000_000),
        ended_at_ms: Set(1_700_000_000_500),
        frames: Set(25),
        frames_dropped: Set(1),
        ..Default::default()
    }
    .insert(&db)
    .await
    .unwrap();
    assert!(row.id > 0);
    let mute = mutes::ActiveModel {
        user_id: Set("aa".into()),
        freq_id: Set(1000),
        created_at_ms: Set(0),
    };
    mute.clone().insert(&db).await.unwrap();
    assert!(mute.insert(&db).await.is_err());

    Migrator::down(&db, None).await.unwrap();
    Migrator::up(&db, None).await.unwrap();
    assert_eq!(transmissions::Entity::find().count(&db).await.unwrap(), 0);
}
