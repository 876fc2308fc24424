//! The bot against the fake Discord: handshake, every slash command for a
//! moderator and a member, bad arguments, the cooldown and the audit log.

mod bot_support;

use std::time::Duration;

use bot_support::*;
use krt_migrations::entities::{
    audit_log, bans, frequencies, mutes, rank_roles, revocations, transmissions,
};
use krt_shared::FreqId;
use krt_shared::keyfile;
use krt_tests::fake_discord::{CommandOption, EXPECTED_INTENTS, FakeMember, Origin, VOICE_CHANNEL};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait, PaginatorTrait};

fn freq(value: i64) -> FreqId {
    FreqId::new(value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_uses_fake_and_intents() {
    let harness = Harness::start().await;
    let fake = &harness.fake;

    let identifies = fake.identifies();
    assert_eq!(identifies.len(), 1);
    assert_eq!(identifies[0]["intents"].as_u64(), Some(EXPECTED_INTENTS));
    assert!(
        identifies[0]["token"]
            .as_str()
            .unwrap()
            .contains(TEST_TOKEN)
    );

    let calls = fake.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.method == "GET" && c.path == "/api/v10/gateway"),
        "the fake served the gateway lookup"
    );
    let registered = fake.wait_registered(STEP).await;
    assert_eq!(registered, ["radio", "freq", "rank"]);

    // Heartbeats arrive one interval after IDENTIFY.
    eventually("a heartbeat", Duration::from_secs(5), async || {
        fake.heartbeats() > 0
    })
    .await;
    assert_eq!(fake.connections(), 1, "no reconnect after the heartbeat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_names_link_frequencies() {
    let harness = Harness::start().await;
    let db = harness.db().clone();
    eventually("linked frequencies", STEP, async || {
        frequencies::Entity::find().count(&db).await.unwrap() == 2
    })
    .await;
    let alpha = frequencies::Entity::find_by_id(1050)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alpha.name, "Alpha");
    assert_eq!(alpha.channel_id, Some(ALPHA_VOICE.to_string()));
    assert_eq!(alpha.min_rank, 0);
    let command = frequencies::Entity::find_by_id(2000)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(command.name, "Command");
    assert_eq!(command.min_rank, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_issues_signed_token() {
    let harness = Harness::start().await;
    let reply = harness.run(&member(), "radio connect", vec![]).await;
    assert_eq!(reply.kind, 4);
    assert!(reply.ephemeral, "the token is only shown to its owner");
    assert!(
        reply.content.contains("ws://127.0.0.1:1/voice"),
        "{}",
        reply.content
    );
    assert!(reply.content.contains("Expires: <t:"), "{}", reply.content);

    let token = token_from_reply(&reply.content).expect("token in a code block");
    let verifier = keyfile::load_verifier(harness.dir.path()).unwrap();
    let claims = verifier.verify(&token, krt_bot::cli::unix_now()).unwrap();
    assert_eq!(claims.name, "pilot-paul");
    assert_eq!(claims.guild, GUILD.to_string());
    assert_eq!(claims.rank, 0);
    assert!(claims.allows(freq(1050)), "Alpha has no minimum rank");
    assert!(!claims.allows(freq(2000)), "Command needs rank 3");
    assert!(
        claims.allows(freq(4321)),
        "unconfigured frequencies are open"
    );
    let key = keyfile::load_user_id_key(harness.dir.path()).unwrap();
    assert_eq!(claims.sub, key.pseudonymize(member().id));
    let ttl = claims.exp - claims.iat;
    assert_eq!(ttl, 24 * 3600);

    let stored = krt_migrations::entities::tokens::Entity::find_by_id(claims.jti.clone())
        .one(harness.db())
        .await
        .unwrap();
    assert!(
        stored.is_some(),
        "issued tokens are recorded for revocation"
    );

    let member_calls = harness
        .fake
        .calls()
        .iter()
        .filter(|c| c.path.contains("/members/"))
        .count();
    assert_eq!(member_calls, 0, "the interaction payload is enough");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_frequencies_and_rank() {
    let harness = Harness::start().await;
    let mod_ = moderator();

    let reply = harness
        .run(
            &mod_,
            "rank set",
            vec![
                CommandOption::Role("role", OFFICER_ROLE, "Officer".into()),
                CommandOption::Int("rank", 5),
            ],
        )
        .await;
    assert!(reply.content.contains("rank 5"), "{}", reply.content);
    let row = rank_roles::Entity::find_by_id(OFFICER_ROLE.to_string())
        .one(harness.db())
        .await
        .unwrap();
    assert_eq!(row.map(|r| r.rank), Some(5));

    let created = harness
        .run(
            &mod_,
            "freq create",
            vec![
                CommandOption::Int("id", 1060),
                CommandOption::Str("name", "Officers".into()),
                CommandOption::Role("role", OFFICER_ROLE, "Officer".into()),
            ],
        )
        .await;
    assert!(
        created.content.starts_with("Created **1060** Officers"),
        "{}",
        created.content
    );

    let officer_list = harness.run(&officer(), "radio frequencies", vec![]).await;
    assert!(
        officer_list.content.contains("(rank 5)"),
        "{}",
        officer_list.content
    );
    assert!(
        officer_list.content.contains("**1060** Officers"),
        "{}",
        officer_list.content
    );
    assert!(
        officer_list.content.contains("**2000** Command"),
        "{}",
        officer_list.content
    );

    let member_list = harness.run(&member(), "radio frequencies", vec![]).await;
    assert!(
        !member_list.content.contains("**1060**"),
        "{}",
        member_list.content
    );
    assert!(
        !member_list.content.contains("**2000**"),
        "{}",
        member_list.content
    );
    assert!(
        member_list.content.contains("**1050** Alpha"),
        "{}",
        member_list.content
    );

    let token_reply = harness.run(&officer(), "radio connect", vec![]).await;
    let token = token_from_reply(&token_reply.content).unwrap();
    let claims = keyfile::load_verifier(harness.dir.path())
        .unwrap()
        .verify(&token, krt_bot::cli::unix_now())
        .unwrap();
    assert_eq!(claims.rank, 5);
    assert!(claims.allows(freq(1060)));
    assert!(claims.allows(freq(2000)));

    let bad_rank = harness
        .run(
            &mod_,
            "rank set",
            vec![
                CommandOption::Role("role", OFFICER_ROLE, "Officer".into()),
                CommandOption::Int("rank", 500),
            ],
        )
        .await;
    assert!(
        bad_rank.content.contains("Invalid rank 500"),
        "{}",
        bad_rank.content
    );
    assert!(bad_rank.ephemeral);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freq_commands_change_table() {
    let harness = Harness::start().await;
    let mod_ = moderator();
    let db = harness.db().clone();

    let created = harness
        .run(
            &mod_,
            "freq create",
            vec![
                CommandOption::Int("id", 3000),
                CommandOption::Str("name", "Logistics".into()),
                CommandOption::Channel("channel", LOBBY_VOICE, "Lobby".into(), VOICE_CHANNEL),
                CommandOption::Int("min_rank", 2),
                CommandOption::Bool("half_duplex", false),
            ],
        )
        .await;
    assert!(created.ephemeral);
    assert!(
        created.content.contains("min rank 2"),
        "{}",
        created.content
    );
    let row = frequencies::Entity::find_by_id(3000)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.channel_id, Some(LOBBY_VOICE.to_string()));
    assert!(!row.half_duplex);

    let duplicate = harness
        .run(
            &mod_,
            "freq create",
            vec![
                CommandOption::Int("id", 3000),
                CommandOption::Str("name", "Again".into()),
            ],
        )
        .await;
    assert!(
        duplicate.content.contains("Frequency 3000 already exists"),
        "{}",
        duplicate.content
    );

    let edited = harness
        .run(
            &mod_,
            "freq edit",
            vec![
                CommandOption::Int("id", 3000),
                CommandOption::Str("name", "Supply".into()),
                CommandOption::Bool("unlink_channel", true),
            ],
        )
        .await;
    assert!(
        edited.content.starts_with("Updated **3000** Supply"),
        "{}",
        edited.content
    );
    let row = frequencies::Entity::find_by_id(3000)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.name, "Supply");
    assert_eq!(row.channel_id, None);

    let list = harness.run(&mod_, "freq list", vec![]).await;
    assert!(list.content.contains("**3000** Supply"), "{}", list.content);

    let deleted = harness
        .run(&mod_, "freq delete", vec![CommandOption::Int("id", 3000)])
        .await;
    assert!(
        deleted.content.contains("Deleted frequency 3000"),
        "{}",
        deleted.content
    );
    assert!(
        frequencies::Entity::find_by_id(3000)
            .one(&db)
            .await
            .unwrap()
            .is_none()
    );
    let missing = harness
        .run(&mod_, "freq delete", vec![CommandOption::Int("id", 3000)])
        .await;
    assert!(
        missing.content.contains("Frequency 3000 not found"),
        "{}",
        missing.content
    );

    let actions: Vec<String> = audit_log::Entity::find()
        .all(&db)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.action)
        .collect();
    assert_eq!(actions, ["freq create", "freq edit", "freq delete"]);
    let actor = keyfile::load_user_id_key(harness.dir.path())
        .unwrap()
        .pseudonymize(mod_.id);
    let first = audit_log::Entity::find().one(&db).await.unwrap().unwrap();
    assert_eq!(first.actor, actor.to_string());
    assert_eq!(first.target, "3000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_too_many_ranges_explains() {
    let harness = Harness::start().await;
    // 150 rank-limited frequencies among open ones leave a rank-0 member
    // about 150 ranges, more than a token in a message can carry.
    let now = krt_bot::store::now_ms();
    for id in (3000..4500).step_by(10) {
        frequencies::ActiveModel {
            id: Set(id),
            name: Set(format!("Limited {id}")),
            channel_id: Set(None),
            role_id: Set(None),
            min_rank: Set(5),
            half_duplex: Set(true),
            created_at_ms: Set(now),
            updated_at_ms: Set(now),
        }
        .insert(harness.db())
        .await
        .unwrap();
    }
    let reply = harness.run(&member(), "radio connect", vec![]).await;
    assert!(reply.ephemeral);
    assert!(
        reply.content.contains("too many for a token"),
        "{}",
        reply.content
    );
    assert_eq!(
        krt_migrations::entities::tokens::Entity::find()
            .count(harness.db())
            .await
            .unwrap(),
        0,
        "no token is recorded when none is delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_name_value() {
    let harness = Harness::start().await;
    let mod_ = moderator();
    let cases: Vec<(&str, Vec<CommandOption>, &str)> = vec![
        (
            "freq create",
            vec![
                CommandOption::Int("id", 50),
                CommandOption::Str("name", "Low".into()),
            ],
            "invalid frequency 50: use a number from 1000 to 9999",
        ),
        (
            "freq create",
            vec![
                CommandOption::Int("id", 1200),
                CommandOption::Str("name", "x".repeat(40)),
            ],
            "invalid name",
        ),
        (
            "freq create",
            vec![
                CommandOption::Int("id", 1200),
                CommandOption::Str("name", "y".repeat(2100)),
            ],
            "invalid name of 2100 characters",
        ),
        (
            "freq create",
            vec![
                CommandOption::Int("id", 1200),
                CommandOption::Str("name", "\u{200B}\u{200B}".into()),
            ],
            "invalid name",
        ),
        (
            "freq create",
            vec![
                CommandOption::Int("id", 1200),
                CommandOption::Str("name", "Ok".into()),
                CommandOption::Int("min_rank", 101),
            ],
            "invalid min_rank 101",
        ),
        (
            "freq create",
            vec![
                CommandOption::Int("id", 1200),
                CommandOption::Str("name", "Ok".into()),
                CommandOption::Channel("channel", GENERAL, "general".into(), 0),
            ],
            "invalid channel #general: pick a voice channel",
        ),
        (
            "freq edit",
            vec![CommandOption::Int("id", 1999)],
            "frequency 1999 not found",
        ),
        (
            "freq edit",
            vec![CommandOption::Int("id", 1050)],
            "nothing to change for frequency 1050",
        ),
        (
            "freq edit",
            vec![
                CommandOption::Int("id", 2000),
                CommandOption::Str("name", "HQ".into()),
                CommandOption::Int("min_rank", 0),
            ],
            "from the name of its voice channel 'Command (2000) [3]': rename the channel",
        ),
        (
            "freq edit",
            vec![
                CommandOption::Int("id", 1050),
                CommandOption::Bool("unlink_channel", true),
            ],
            "remove (1050) from the channel's name to unlink it",
        ),
        (
            "freq create",
            vec![
                CommandOption::Int("id", 1200),
                CommandOption::Str("name", "Ok".into()),
                CommandOption::Role("role", GUILD, "@everyone".into()),
            ],
            "invalid role @everyone",
        ),
        (
            "rank set",
            vec![
                CommandOption::Role("role", GUILD, "@everyone".into()),
                CommandOption::Int("rank", 50),
            ],
            "invalid role @everyone",
        ),
        (
            "radio mute",
            vec![
                CommandOption::User("user", member()),
                CommandOption::Int("freq", 99999),
            ],
            "invalid frequency 99999",
        ),
        (
            "radio log",
            vec![CommandOption::Int("limit", 0)],
            "invalid limit 0: use a number from 1 to 25",
        ),
        (
            "radio kick",
            vec![
                CommandOption::User("user", member()),
                CommandOption::Str("reason", "r".repeat(300)),
            ],
            "invalid reason of 300 characters",
        ),
        (
            "radio unban",
            vec![CommandOption::User("user", member())],
            "is not banned",
        ),
    ];
    for (command, options, expected) in cases {
        let reply = harness.run(&mod_, command, options).await;
        assert!(reply.ephemeral, "/{command}");
        assert!(
            reply
                .content
                .to_lowercase()
                .contains(&expected.to_lowercase()),
            "/{command}: {}",
            reply.content
        );
    }
    assert!(
        frequencies::Entity::find_by_id(1200)
            .one(harness.db())
            .await
            .unwrap()
            .is_none(),
        "rejected commands change nothing"
    );
    let command = frequencies::Entity::find_by_id(2000)
        .one(harness.db())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(command.name, "Command", "a rejected edit keeps the name");
    assert_eq!(
        command.min_rank, 3,
        "a rejected edit keeps the minimum rank"
    );
    let alpha = frequencies::Entity::find_by_id(1050)
        .one(harness.db())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        alpha.channel_id,
        Some(ALPHA_VOICE.to_string()),
        "a rejected unlink keeps the link"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderator_commands_reject_members() {
    let harness = Harness::start().await;
    let target = officer();
    let cases: Vec<(&str, Vec<CommandOption>)> = vec![
        (
            "freq create",
            vec![
                CommandOption::Int("id", 1300),
                CommandOption::Str("name", "X".into()),
            ],
        ),
        ("freq edit", vec![CommandOption::Int("id", 1050)]),
        ("freq delete", vec![CommandOption::Int("id", 1050)]),
        ("freq list", vec![]),
        (
            "rank set",
            vec![
                CommandOption::Role("role", OFFICER_ROLE, "Officer".into()),
                CommandOption::Int("rank", 9),
            ],
        ),
        (
            "radio kick",
            vec![CommandOption::User("user", target.clone())],
        ),
        (
            "radio ban",
            vec![CommandOption::User("user", target.clone())],
        ),
        (
            "radio unban",
            vec![CommandOption::User("user", target.clone())],
        ),
        (
            "radio mute",
            vec![
                CommandOption::User("user", target.clone()),
                CommandOption::Int("freq", 1050),
            ],
        ),
        (
            "radio unmute",
            vec![
                CommandOption::User("user", target.clone()),
                CommandOption::Int("freq", 1050),
            ],
        ),
        ("radio log", vec![]),
        ("radio stats", vec![]),
    ];
    for (command, options) in cases {
        let reply = harness.run(&member(), command, options).await;
        assert!(reply.ephemeral, "/{command}");
        assert_eq!(
            reply.content,
            format!("You need the Manage Channels permission to use /{command}."),
            "/{command}"
        );
    }
    assert_eq!(bans::Entity::find().count(harness.db()).await.unwrap(), 0);
    assert_eq!(
        rank_roles::Entity::find()
            .count(harness.db())
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        audit_log::Entity::find().count(harness.db()).await.unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ban_blocks_tokens_until_unban() {
    let harness = Harness::start().await;
    let mod_ = moderator();
    let target = member();
    let db = harness.db().clone();

    let banned = harness
        .run(
            &mod_,
            "radio ban",
            vec![
                CommandOption::User("user", target.clone()),
                CommandOption::Str("reason", "spamming".into()),
            ],
        )
        .await;
    assert!(
        banned.content.starts_with("Banned <@"),
        "{}",
        banned.content
    );
    let ban = bans::Entity::find().one(&db).await.unwrap().unwrap();
    assert_eq!(ban.reason, "spamming");
    assert_eq!(revocations::Entity::find().count(&db).await.unwrap(), 1);

    let refused = harness.run(&target, "radio connect", vec![]).await;
    assert!(
        refused.content.contains("banned from the radio (spamming)"),
        "{}",
        refused.content
    );
    assert!(token_from_reply(&refused.content).is_none());

    let unbanned = harness
        .run(
            &mod_,
            "radio unban",
            vec![CommandOption::User("user", target.clone())],
        )
        .await;
    assert!(
        unbanned.content.starts_with("Unbanned"),
        "{}",
        unbanned.content
    );
    let allowed = harness.run(&target, "radio connect", vec![]).await;
    let token = token_from_reply(&allowed.content).expect("token after unban");
    let claims = keyfile::load_verifier(harness.dir.path())
        .unwrap()
        .verify_signature(&token)
        .unwrap();
    let revocation = revocations::Entity::find().one(&db).await.unwrap().unwrap();
    assert!(
        claims.iat as i64 > revocation.revoked_before.unwrap(),
        "the new token is issued after the revocation cut-off"
    );

    let kicked = harness
        .run(
            &mod_,
            "radio kick",
            vec![CommandOption::User("user", target.clone())],
        )
        .await;
    assert!(
        kicked.content.starts_with("Kicked <@"),
        "{}",
        kicked.content
    );
    assert_eq!(revocations::Entity::find().count(&db).await.unwrap(), 2);

    let actions: Vec<String> = audit_log::Entity::find()
        .all(&db)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.action)
        .collect();
    assert_eq!(actions, ["radio ban", "radio unban", "radio kick"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_and_unmute_store_state() {
    let harness = Harness::start().await;
    let mod_ = moderator();
    let target = member();
    let options = || {
        vec![
            CommandOption::User("user", member()),
            CommandOption::Int("freq", 1050),
        ]
    };

    let muted = harness.run(&mod_, "radio mute", options()).await;
    assert!(muted.content.starts_with("Muted <@"), "{}", muted.content);
    let row = mutes::Entity::find()
        .one(harness.db())
        .await
        .unwrap()
        .unwrap();
    let key = keyfile::load_user_id_key(harness.dir.path()).unwrap();
    assert_eq!(row.user_id, key.pseudonymize(target.id).to_string());
    assert_eq!(row.freq_id, 1050);

    let again = harness.run(&mod_, "radio mute", options()).await;
    assert!(
        again.content.contains("is already muted on 1050"),
        "{}",
        again.content
    );

    let unmuted = harness.run(&mod_, "radio unmute", options()).await;
    assert!(
        unmuted.content.starts_with("Unmuted"),
        "{}",
        unmuted.content
    );
    assert_eq!(mutes::Entity::find().count(harness.db()).await.unwrap(), 0);
    let not_muted = harness.run(&mod_, "radio unmute", options()).await;
    assert!(
        not_muted.content.contains("is not muted on 1050"),
        "{}",
        not_muted.content
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lists_transmissions() {
    let harness = Harness::start().await;
    let mod_ = moderator();
    let key = keyfile::load_user_id_key(harness.dir.path()).unwrap();
    // The member row gives the talker's name.
    harness.run(&member(), "radio connect", vec![]).await;
    let talker = key.pseudonymize(member().id).to_string();
    for (freq_id, started) in [(1050, 1_700_000_000_000i64), (2000, 1_700_000_100_000)] {
        transmissions::ActiveModel {
            freq_id: Set(freq_id),
            user_id: Set(talker.clone()),
            started_at_ms: Set(started),
            ended_at_ms: Set(started + 4_200),
            frames: Set(210),
            frames_dropped: Set(0),
            ..Default::default()
        }
        .insert(harness.db())
        .await
        .unwrap();
    }

    let all = harness.run(&mod_, "radio log", vec![]).await;
    assert!(
        all.content.contains("pilot-paul, 4.2 s (210 frames)"),
        "{}",
        all.content
    );
    let first_line = all.content.lines().nth(1).unwrap();
    assert!(
        first_line.contains("**2000**"),
        "newest first: {}",
        all.content
    );

    let one = harness
        .run(&mod_, "radio log", vec![CommandOption::Int("freq", 1050)])
        .await;
    assert!(one.content.contains("**1050**"), "{}", one.content);
    assert!(!one.content.contains("**2000**"), "{}", one.content);

    let empty = harness
        .run(&mod_, "radio log", vec![CommandOption::Int("freq", 7777)])
        .await;
    assert_eq!(empty.content, "No transmissions recorded on 7777.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_commands_without_relay() {
    let harness = Harness::start().await;
    for (who, command) in [(member(), "radio status"), (moderator(), "radio stats")] {
        let reply = harness.run(&who, command, vec![]).await;
        assert!(reply.ephemeral);
        assert!(
            reply
                .content
                .starts_with("The radio relay is not reachable right now"),
            "/{command}: {}",
            reply.content
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooldown_answers_flood_once() {
    let harness = Harness::start_custom(guild(Vec::new()), None, |raw| {
        // One command back per minute, so no cell returns during the test.
        raw.command_burst = Some(5);
        raw.command_period = Some("60s".into());
    })
    .await;
    let flooder = FakeMember::new(5_000_000_000_000_099, "flooder");
    let ids: Vec<u64> = (0..12)
        .map(|_| harness.fake.invoke(&flooder, "radio frequencies", vec![]))
        .collect();

    // The burst of 5 gets normal replies.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut normal = 0;
    let mut slow_down = 0;
    for call in harness.fake.calls() {
        let answers_flood = ids.iter().any(|id| {
            call.path
                .starts_with(&format!("/api/v10/interactions/{id}/"))
        });
        if !answers_flood {
            continue;
        }
        let content = call.body["data"]["content"].as_str().unwrap_or("");
        if content.starts_with("Slow down") {
            slow_down += 1;
        } else {
            normal += 1;
        }
    }
    assert_eq!(normal, 5, "the burst is served");
    assert_eq!(slow_down, 1, "one slow-down reply for the whole flood");
    let counted = harness
        .bot
        .shared()
        .counters
        .rate_limited
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(counted, 7);

    // Other members are not affected.
    let other = harness.run(&member(), "radio frequencies", vec![]).await;
    assert!(other.content.contains("Alpha"), "{}", other.content);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_member_payload_fetched_once() {
    // A member the bot's cache does not know, so only REST has their data.
    let mut late = FakeMember::new(5_000_000_000_000_050, "late-lena").with_role(OFFICER_ROLE);
    late.nick = Some("Lena".into());
    let mut spec = guild(Vec::new());
    spec.rest_only_members.push(late.clone());
    let harness = Harness::start_with(spec, None).await;
    let id = harness
        .fake
        .invoke_from(Origin::GuildWithoutMember, &late, "radio connect", vec![]);
    let reply = harness.fake.reply_to(id, STEP).await;
    let token = token_from_reply(&reply.content).expect("token");
    let claims = keyfile::load_verifier(harness.dir.path())
        .unwrap()
        .verify_signature(&token)
        .unwrap();
    assert_eq!(claims.name, "Lena");

    let fetches: Vec<_> = harness
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.method == "GET" && c.path.contains("/members/"))
        .collect();
    assert_eq!(fetches.len(), 1, "member data fetched from Discord");
    assert!(fetches[0].path.ends_with(&format!("/members/{}", late.id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_message_rejected() {
    let harness = Harness::start().await;
    let id = harness
        .fake
        .invoke_from(Origin::DirectMessage, &member(), "radio connect", vec![]);
    let reply = harness.fake.reply_to(id, STEP).await;
    assert!(reply.ephemeral);
    assert_eq!(
        reply.content,
        "Use this command in the server, not in a direct message."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_registration_stops_bot() {
    let mut spec = guild(Vec::new());
    spec.reject_registration = true;
    let fake = krt_tests::fake_discord::FakeDiscord::start(spec)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut bot = start_bot(config(dir.path(), &fake, None), &fake).await;
    let result = tokio::time::timeout(STEP, bot.wait())
        .await
        .expect("bot stops");
    let error = result.expect_err("a bot without commands reports an error");
    assert!(
        matches!(
            error,
            krt_bot::app::StartError::Registration { guild: GUILD }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("applications.commands"),
        "{error}"
    );
}

/// Starts a bot against `spec` and returns the error it stops with.
async fn start_error(spec: krt_tests::fake_discord::GuildSpec) -> krt_bot::app::StartError {
    let fake = krt_tests::fake_discord::FakeDiscord::start(spec)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut bot = krt_bot::app::start(
        config(dir.path(), &fake, None),
        krt_bot::app::StartOptions {
            token: TEST_TOKEN.into(),
            http_client: Some(krt_tests::fake_discord::guarded_http_client()),
        },
    )
    .await
    .unwrap();
    let result = tokio::time::timeout(STEP, bot.wait())
        .await
        .expect("bot stops");
    assert_eq!(
        fake.identifies().len(),
        1,
        "no retry after a rejected IDENTIFY"
    );
    result.expect_err("a rejected IDENTIFY stops the bot")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_token_names_variable() {
    let mut spec = guild(Vec::new());
    spec.reject_token = true;
    let error = start_error(spec).await;
    assert!(
        matches!(error, krt_bot::app::StartError::InvalidToken),
        "{error}"
    );
    assert!(error.to_string().contains("KRT_DISCORD_TOKEN"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_intent_off_explained() {
    let mut spec = guild(Vec::new());
    spec.members_intent_enabled = false;
    let error = start_error(spec).await;
    assert!(
        matches!(error, krt_bot::app::StartError::DisallowedIntents),
        "{error}"
    );
    assert!(
        error.to_string().contains("Server Members intent"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outdated_commands_explained() {
    let harness = Harness::start().await;
    // Discord validates option types, so a string for an integer option
    // only arrives when the registered commands are out of date.
    let reply = harness
        .run(
            &moderator(),
            "freq delete",
            vec![CommandOption::Str("id", "abc".into())],
        )
        .await;
    assert!(reply.ephemeral);
    assert!(
        reply.content.starts_with("This command is out of date."),
        "{}",
        reply.content
    );
    let unknown = harness.run(&moderator(), "radio explode", vec![]).await;
    assert!(unknown.ephemeral);
    assert!(
        unknown
            .content
            .starts_with("This command is unknown to the bot."),
        "{}",
        unknown.content
    );
}
