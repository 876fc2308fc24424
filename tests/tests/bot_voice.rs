//! Voice states and member changes through the bot's batcher: the guild
//! snapshot, a flood of 600 voice states in one second, members leaving.

mod bot_support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bot_support::*;
use krt_migrations::entities::{members, revocations, voice_states};
use krt_shared::keyfile;
use krt_tests::fake_discord::FakeMember;
use sea_orm::{EntityTrait, PaginatorTrait};

/// First Discord id of the flood's members.
const FLOOD_BASE: u64 = 6_000_000_000_000_000;

fn flood_members(count: u64) -> Vec<FakeMember> {
    (0..count)
        .map(|n| FakeMember::new(FLOOD_BASE + n, &format!("flood-{n:03}")))
        .collect()
}

async fn stored_channels(harness: &Harness) -> HashMap<String, Option<String>> {
    voice_states::Entity::find()
        .all(harness.db())
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.user_id, row.channel_id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_stores_voice_states() {
    let mut spec = guild(Vec::new());
    spec.voice_states = vec![(officer().id, ALPHA_VOICE), (member().id, LOBBY_VOICE)];
    let harness = Harness::start_with(spec, None).await;
    let key = keyfile::load_user_id_key(harness.dir.path()).unwrap();

    let stored = stored_channels(&harness).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(
        stored[&key.pseudonymize(officer().id).to_string()],
        Some(ALPHA_VOICE.to_string())
    );
    assert_eq!(
        stored[&key.pseudonymize(member().id).to_string()],
        Some(LOBBY_VOICE.to_string())
    );
    assert!(
        !stored
            .keys()
            .any(|id| id.contains(&officer().id.to_string())),
        "only pseudonymous ids are stored"
    );
    let names = members::Entity::find().count(harness.db()).await.unwrap();
    assert_eq!(names, 3, "every member of the snapshot is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_becomes_few_transactions() {
    let users = flood_members(500);
    let harness = Harness::start_with(guild(users.clone()), None).await;
    let key = keyfile::load_user_id_key(harness.dir.path()).unwrap();
    let stats = harness.bot.shared().batcher.stats();
    let flushes_before = stats.flushes.load(Ordering::Relaxed);
    let calls_before = harness.fake.call_count();

    // 600 events in one second: every user joins the lobby, and the first
    // 100 then move on to Alpha, so their last state must win.
    let mut events: Vec<(usize, u64)> = (0..500).map(|n| (n, LOBBY_VOICE)).collect();
    events.extend((0..100).map(|n| (n, ALPHA_VOICE)));
    let started = Instant::now();
    let start = tokio::time::Instant::now();
    let mut command = None;
    for (index, chunk) in events.chunks(30).enumerate() {
        // 20 chunks paced by the clock, 50 ms apart, span 950 ms.
        tokio::time::sleep_until(start + Duration::from_millis(50) * index as u32).await;
        for &(user, channel) in chunk {
            harness.fake.voice_state(&users[user], Some(channel));
        }
        if index == 10 {
            command = Some(harness.fake.invoke(&member(), "radio frequencies", vec![]));
        }
    }
    let sent_in = started.elapsed();
    assert!(
        sent_in < Duration::from_millis(1500),
        "flood took {sent_in:?}"
    );

    let command = command.expect("the command was sent mid-flood");
    let reply = harness.fake.reply_to(command, STEP).await;
    assert!(reply.content.contains("Alpha"), "{}", reply.content);

    let expected: HashMap<String, Option<String>> = (0..500usize)
        .map(|n| {
            let channel = if n < 100 { ALPHA_VOICE } else { LOBBY_VOICE };
            (
                key.pseudonymize(users[n].id).to_string(),
                Some(channel.to_string()),
            )
        })
        .collect();
    let deadline = Instant::now() + STEP;
    loop {
        if stored_channels(&harness).await == expected {
            break;
        }
        assert!(Instant::now() < deadline, "final voice states not stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored_in = started.elapsed();

    let transactions = stats.flushes.load(Ordering::Relaxed) - flushes_before;
    eprintln!(
        "flood: {} events sent in {sent_in:?}, {transactions} transactions, all stored after {stored_in:?}",
        events.len()
    );
    assert!(transactions >= 1);
    assert!(
        transactions <= 6,
        "{transactions} transactions for one second of events"
    );

    let calls: Vec<String> = harness.fake.calls()[calls_before..]
        .iter()
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    assert_eq!(
        calls.len(),
        1,
        "only the command reply went to Discord: {calls:?}"
    );
    assert!(calls[0].starts_with(&format!("POST /api/v10/interactions/{command}/")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_leave_clears_channel() {
    let harness = Harness::start().await;
    let key = keyfile::load_user_id_key(harness.dir.path()).unwrap();
    let user = key.pseudonymize(officer().id).to_string();

    harness.fake.voice_state(&officer(), Some(ALPHA_VOICE));
    eventually("join stored", STEP, async || {
        stored_channels(&harness).await.get(&user) == Some(&Some(ALPHA_VOICE.to_string()))
    })
    .await;
    harness.fake.voice_state(&officer(), None);
    eventually("leave stored", STEP, async || {
        stored_channels(&harness).await.get(&user) == Some(&None)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_changes_and_leaving() {
    let harness = Harness::start().await;
    let key = keyfile::load_user_id_key(harness.dir.path()).unwrap();
    let user = key.pseudonymize(member().id).to_string();
    let db = harness.db().clone();

    let mut renamed = member();
    renamed.nick = Some("Paul the Pilot".into());
    harness.fake.member_update(&renamed);
    eventually("nickname stored", STEP, async || {
        members::Entity::find_by_id(user.clone())
            .one(&db)
            .await
            .unwrap()
            .is_some_and(|m| m.display_name == "Paul the Pilot")
    })
    .await;

    harness.fake.member_left(&renamed);
    eventually("member marked as gone", STEP, async || {
        members::Entity::find_by_id(user.clone())
            .one(&db)
            .await
            .unwrap()
            .is_some_and(|m| !m.in_guild)
    })
    .await;
    let revocation = revocations::Entity::find().one(&db).await.unwrap().unwrap();
    assert_eq!(revocation.user_id.as_deref(), Some(user.as_str()));
    assert_eq!(revocation.reason, "left the Discord server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_then_voice_leave_keeps_member_gone() {
    let harness = Harness::start().await;
    let key = keyfile::load_user_id_key(harness.dir.path()).unwrap();
    let user = key.pseudonymize(member().id).to_string();
    let db = harness.db().clone();

    harness.fake.voice_state(&member(), Some(ALPHA_VOICE));
    eventually("join stored", STEP, async || {
        stored_channels(&harness).await.get(&user) == Some(&Some(ALPHA_VOICE.to_string()))
    })
    .await;
    // Discord removes the member and then ends its voice state, with the
    // member in the voice state's payload.
    harness.fake.member_left(&member());
    harness.fake.voice_state(&member(), None);
    eventually("leave stored", STEP, async || {
        stored_channels(&harness).await.get(&user) == Some(&None)
    })
    .await;
    let row = members::Entity::find_by_id(user.clone())
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !row.in_guild,
        "the voice state must not bring the member back"
    );
    let revocation = revocations::Entity::find().one(&db).await.unwrap();
    assert_eq!(
        revocation.and_then(|r| r.user_id).as_deref(),
        Some(user.as_str()),
        "the member's tokens are revoked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_flushes_and_reconciles() {
    let mut spec = guild(Vec::new());
    spec.voice_states = vec![(officer().id, ALPHA_VOICE)];
    let harness = Harness::start_with(spec, None).await;
    let key = keyfile::load_user_id_key(harness.dir.path()).unwrap();
    let officer_id = key.pseudonymize(officer().id).to_string();
    let member_id = key.pseudonymize(member().id).to_string();

    // Shutting down flushes what is still queued.
    harness.fake.voice_state(&member(), Some(LOBBY_VOICE));
    eventually("update queued", STEP, async || {
        harness.bot.shared().batcher.pending() > 0
    })
    .await;
    let db = harness.db().clone();
    let Harness { fake, dir, bot } = harness;
    bot.shutdown().await.expect("bot stops cleanly");
    drop(fake);
    let flushed = voice_states::Entity::find_by_id(member_id.clone())
        .one(&db)
        .await
        .unwrap()
        .expect("the queued update was flushed on shutdown");
    assert_eq!(flushed.channel_id, Some(LOBBY_VOICE.to_string()));

    // While the bot was down, the officer left voice: the next snapshot
    // lacks them, and their stored channel is cleared.
    let fake = krt_tests::fake_discord::FakeDiscord::start(guild(Vec::new()))
        .await
        .unwrap();
    let bot = start_bot(config(dir.path(), &fake, None), &fake).await;
    let harness = Harness { fake, dir, bot };
    eventually("snapshot reconciled", STEP, async || {
        let stored = stored_channels(&harness).await;
        stored.get(&officer_id) == Some(&None)
    })
    .await;
    let stored = stored_channels(&harness).await;
    assert_eq!(
        stored.get(&member_id),
        Some(&None),
        "the member is absent from the new snapshot too"
    );
}
