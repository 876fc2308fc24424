//! Property tests of the protocol types: text, JSON and binary round trips,
//! and parsers that return an error instead of panicking on any input.

use krt_shared::frame::{
    DEFAULT_MAX_FRAME_LEN, FrameError, FrameHeader, HEADER_LEN, MIN_FRAME_LEN,
};
use krt_shared::protocol::{
    AssignAction, ClientMessage, ProtocolError, RxAction, ServerMessage, TxDeniedReason,
};
use krt_shared::token::{
    CLOCK_SKEW_SECS, Claims, MAX_RANK, MAX_TOKEN_LEN, TokenError, TokenSigner,
};
use krt_shared::{FreqId, FreqSet, UserId};
use proptest::prelude::*;

/// Cases per property for the cheap properties.
const CASES: u32 = 256;

/// Cases per property for the token properties. Each case signs and verifies
/// Ed25519 signatures, which is slow in an unoptimized test build.
const TOKEN_CASES: u32 = 64;

/// Regex of JSON objects made of client message keys and values of every
/// JSON type, with trailing commas and out-of-range numbers mixed in.
const JSON_LIKE_MESSAGE: &str = concat!(
    r#"\{("(type|freqId|authToken|discordUserId|guildId)":"#,
    r#"(-?[0-9]{1,20}(\.[0-9])?|"(join|leave|mute|unmute|tx_stop|ping|auth|x)"|null|true|\[\]|\{\}),?"#,
    r#"){0,4}\}"#,
);

fn freq_id() -> impl Strategy<Value = FreqId> {
    (FreqId::MIN..=FreqId::MAX).prop_map(|value| FreqId::new(i64::from(value)).unwrap())
}

/// Frequencies from a window of 40 numbers, so that generated ranges often
/// overlap, touch or repeat.
fn crowded_freq_id() -> impl Strategy<Value = FreqId> {
    (1000u16..1040).prop_map(|value| FreqId::new(i64::from(value)).unwrap())
}

/// Unsorted `(first, last)` pairs in either order, as `FreqSet::from_ranges`
/// accepts them.
fn raw_ranges() -> impl Strategy<Value = Vec<(FreqId, FreqId)>> {
    let pair = prop_oneof![
        (freq_id(), freq_id()),
        (crowded_freq_id(), crowded_freq_id()),
    ];
    prop::collection::vec(pair, 0..8)
}

fn freq_set() -> impl Strategy<Value = FreqSet> {
    raw_ranges().prop_map(FreqSet::from_ranges)
}

fn user_id() -> impl Strategy<Value = UserId> {
    any::<[u8; 16]>().prop_map(UserId::from_bytes)
}

fn freq_below(freq: FreqId) -> Option<FreqId> {
    FreqId::new(i64::from(freq.get()) - 1).ok()
}

fn freq_above(freq: FreqId) -> Option<FreqId> {
    FreqId::new(i64::from(freq.get()) + 1).ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn freq_set_ranges_are_normalized(raw in raw_ranges()) {
        let set = FreqSet::from_ranges(raw);
        for &(first, last) in set.ranges() {
            prop_assert!(first <= last, "range {first}-{last} is reversed");
        }
        // Ranges must be sorted, disjoint and separated by at least one
        // number outside the set.
        for window in set.ranges().windows(2) {
            let (_, last) = window[0];
            let (next_first, _) = window[1];
            prop_assert!(
                next_first.get() > last.get() + 1,
                "ranges {:?} and {:?} should have been merged",
                window[0],
                window[1]
            );
        }
    }

    #[test]
    fn freq_set_display_parse_round_trip(set in freq_set()) {
        let text = set.to_string();
        let parsed: FreqSet = text.parse().unwrap();
        prop_assert_eq!(parsed, set, "text {:?}", text);
    }

    #[test]
    fn freq_set_serde_round_trip(set in freq_set()) {
        let json = serde_json::to_string(&set).unwrap();
        let parsed: FreqSet = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(parsed, set, "json {}", json);
    }

    #[test]
    fn freq_set_contains_matches_model(
        raw in raw_ranges(),
        probes in prop::collection::vec(freq_id(), 8),
    ) {
        let set = FreqSet::from_ranges(raw.clone());
        let model = |freq: FreqId| {
            raw.iter()
                .any(|&(a, b)| a.min(b) <= freq && freq <= a.max(b))
        };

        // Range ends and their neighbours are where an off-by-one shows up.
        let mut candidates = probes;
        for &(a, b) in &raw {
            for end in [a, b] {
                candidates.push(end);
                candidates.extend(freq_below(end));
                candidates.extend(freq_above(end));
            }
        }
        candidates.push(FreqId::new(i64::from(FreqId::MIN)).unwrap());
        candidates.push(FreqId::new(i64::from(FreqId::MAX)).unwrap());

        for freq in candidates {
            prop_assert_eq!(set.contains(freq), model(freq), "frequency {}", freq);
        }

        let members: Vec<FreqId> = set.iter().collect();
        prop_assert_eq!(members.len(), set.len());
        prop_assert!(members.windows(2).all(|pair| pair[0] < pair[1]), "iter is not ascending");
        prop_assert!(
            members.iter().all(|&freq| model(freq)),
            "iter yields a frequency outside the ranges"
        );
        prop_assert_eq!(set.is_empty(), raw.is_empty());
    }

    #[test]
    fn frame_header_encode_parse_round_trip(
        freq in freq_id(),
        seq in any::<u32>(),
        payload in prop::collection::vec(any::<u8>(), 1..=DEFAULT_MAX_FRAME_LEN - HEADER_LEN),
    ) {
        let header = FrameHeader { freq, seq };
        let frame = header.encode(&payload);
        prop_assert_eq!(frame.len(), HEADER_LEN + payload.len());
        prop_assert_eq!(&frame[HEADER_LEN..], &payload[..]);
        prop_assert_eq!(FrameHeader::parse(&frame, DEFAULT_MAX_FRAME_LEN), Ok(header));
        prop_assert_eq!(FrameHeader::parse(&frame, frame.len()), Ok(header));
        prop_assert_eq!(
            FrameHeader::parse(&frame, frame.len() - 1),
            Err(FrameError::TooLong { len: frame.len(), max: frame.len() - 1 })
        );
    }

    #[test]
    fn frame_header_parse_matches_model(
        frame in prop::collection::vec(any::<u8>(), 0..64),
        max_len in 0usize..80,
    ) {
        let result = FrameHeader::parse(&frame, max_len);
        if frame.len() < MIN_FRAME_LEN {
            prop_assert_eq!(result, Err(FrameError::TooShort { len: frame.len() }));
        } else if frame.len() > max_len {
            prop_assert_eq!(result, Err(FrameError::TooLong { len: frame.len(), max: max_len }));
        } else {
            let value = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
            match result {
                Ok(header) => {
                    prop_assert_eq!(u32::from(header.freq.get()), value);
                    prop_assert_eq!(header.encode(&frame[HEADER_LEN..]), frame);
                }
                Err(error) => {
                    prop_assert_eq!(error, FrameError::InvalidFreq { value });
                    prop_assert!(FreqId::new(i64::from(value)).is_err());
                }
            }
        }
    }

    #[test]
    fn client_parse_never_panics(text in any::<String>()) {
        let _ = ClientMessage::parse(&text);
    }

    #[test]
    fn client_parse_never_panics_on_json_like(text in JSON_LIKE_MESSAGE) {
        if let Err(error) = ClientMessage::parse(&text) {
            prop_assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn client_parse_accepts_valid_freq_messages(
        freq in freq_id(),
        kind in prop::sample::select(vec!["join", "leave", "mute", "unmute", "tx_stop"]),
        spaced in any::<bool>(),
        extra_field in any::<bool>(),
    ) {
        let mut text = if spaced {
            format!(r#"{{ "freqId" : {freq} , "type" : "{kind}" }}"#)
        } else {
            format!(r#"{{"type":"{kind}","freqId":{freq}}}"#)
        };
        if extra_field {
            text.insert_str(1, r#""client":"test 1.0","#);
        }
        let expected = match kind {
            "join" => ClientMessage::Join { freq },
            "leave" => ClientMessage::Leave { freq },
            "mute" => ClientMessage::Mute { freq },
            "unmute" => ClientMessage::Unmute { freq },
            _ => ClientMessage::TxStop { freq },
        };
        prop_assert_eq!(ClientMessage::parse(&text), Ok(expected), "text {}", text);
    }

    #[test]
    fn client_parse_rejects_out_of_range_freq(
        value in prop_oneof![i64::MIN..1000, 10_000..=i64::MAX],
        kind in prop::sample::select(vec!["join", "leave", "mute", "unmute", "tx_stop"]),
    ) {
        let text = format!(r#"{{"type":"{kind}","freqId":{value}}}"#);
        let error = ClientMessage::parse(&text).unwrap_err();
        prop_assert_eq!(
            &error,
            &ProtocolError::InvalidFreqId { kind, value: value.to_string() }
        );
        prop_assert_eq!(error.kind(), Some(kind));
        prop_assert_eq!(error.sent_freq(), Some(value));
    }

    #[test]
    fn server_message_serde_round_trip(message in server_message()) {
        let json = message.to_json();
        let parsed: ServerMessage = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(parsed, message, "json {}", json);
    }

    #[test]
    fn user_id_text_round_trip(id in user_id()) {
        let text = id.to_string();
        prop_assert_eq!(text.len(), 32);
        prop_assert!(
            text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "text {}",
            text
        );
        prop_assert_eq!(text.parse::<UserId>(), Ok(id));
        prop_assert_eq!(text.to_ascii_uppercase().parse::<UserId>(), Ok(id));

        let json = serde_json::to_string(&id).unwrap();
        prop_assert_eq!(serde_json::from_str::<UserId>(&json).unwrap(), id);
    }

    #[test]
    fn user_id_parse_accepts_only_hex(text in "[0-9a-fA-Fg-z]{0,34}") {
        let is_id = text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit());
        prop_assert_eq!(text.parse::<UserId>().is_ok(), is_id, "text {}", text);
    }
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    let text = || any::<String>();
    prop_oneof![
        (text(), text(), text(), any::<u64>()).prop_map(
            |(session_token, display_name, user_id, expires_at)| ServerMessage::AuthOk {
                session_token,
                display_name,
                user_id,
                expires_at,
            }
        ),
        text().prop_map(|reason| ServerMessage::AuthError { reason }),
        (freq_id(), any::<u32>(), text()).prop_map(|(freq_id, listener_count, freq_key)| {
            ServerMessage::JoinOk {
                freq_id,
                listener_count,
                freq_key,
            }
        }),
        (any::<Option<i64>>(), text())
            .prop_map(|(freq_id, reason)| ServerMessage::JoinError { freq_id, reason }),
        freq_id().prop_map(|freq_id| ServerMessage::LeaveOk { freq_id }),
        (any::<Option<i64>>(), text())
            .prop_map(|(freq_id, reason)| ServerMessage::LeaveError { freq_id, reason }),
        (freq_id(), any::<bool>())
            .prop_map(|(freq_id, muted)| ServerMessage::MuteOk { freq_id, muted }),
        text().prop_map(|reason| ServerMessage::MuteError { reason }),
        Just(ServerMessage::Pong),
        (freq_id(), any::<u32>()).prop_map(|(freq_id, listener_count)| {
            ServerMessage::ListenerUpdate {
                freq_id,
                listener_count,
            }
        }),
        (
            freq_id(),
            text(),
            text(),
            prop_oneof![Just(RxAction::Start), Just(RxAction::Stop)]
        )
            .prop_map(
                |(freq_id, discord_user_id, username, action)| ServerMessage::Rx {
                    freq_id,
                    discord_user_id,
                    username,
                    action,
                }
            ),
        (freq_id(), text())
            .prop_map(|(freq_id, freq_key)| ServerMessage::FreqKeyUpdate { freq_id, freq_key }),
        (
            freq_id(),
            prop_oneof![
                Just(TxDeniedReason::Busy),
                Just(TxDeniedReason::Preempted),
                Just(TxDeniedReason::Muted),
                Just(TxDeniedReason::NotAllowed),
            ]
        )
            .prop_map(|(freq_id, reason)| ServerMessage::TxDenied { freq_id, reason }),
        (
            freq_id(),
            prop_oneof![Just(AssignAction::Grant), Just(AssignAction::Revoke)]
        )
            .prop_map(|(freq_id, action)| ServerMessage::FreqAssign { freq_id, action }),
        text().prop_map(|reason| ServerMessage::Error { reason }),
    ]
}

/// Claims of realistic size, so that every generated token stays under
/// [`MAX_TOKEN_LEN`]. The round trip asserts this.
fn claims() -> impl Strategy<Value = Claims> {
    (
        user_id(),
        "[0-9]{1,20}",
        ".{0,32}",
        0..=MAX_RANK,
        freq_set(),
        0u64..(1 << 40),
        1u64..(1 << 24),
        "[0-9a-f]{32}",
    )
        .prop_map(
            |(sub, guild, name, rank, freqs, iat, lifetime, jti)| Claims {
                sub,
                guild,
                name,
                rank,
                freqs,
                iat,
                exp: iat + lifetime,
                jti,
            },
        )
}

fn signer() -> impl Strategy<Value = TokenSigner> {
    any::<[u8; 32]>().prop_map(|secret| TokenSigner::from_secret(&secret))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(TOKEN_CASES))]

    #[test]
    fn token_sign_verify_round_trip(
        signer in signer(),
        claims in claims(),
        offset in any::<u64>(),
    ) {
        let token = signer.sign(&claims);
        prop_assert!(token.len() <= MAX_TOKEN_LEN, "token of {} bytes", token.len());

        let verifier = signer.verifier();
        prop_assert_eq!(verifier.verify_signature(&token), Ok(claims.clone()));

        // Any time from the skew allowance before `iat` up to just before
        // `exp` is inside the validity period.
        let earliest = claims.iat.saturating_sub(CLOCK_SKEW_SECS);
        let now = earliest + offset % (claims.exp - earliest);
        prop_assert_eq!(verifier.verify(&token, now), Ok(claims.clone()), "now {}", now);
        prop_assert!(verifier.verify(&token, claims.exp).is_err());
    }

    #[test]
    fn token_single_byte_mutation_rejected(
        signer in signer(),
        claims in claims(),
        position in any::<prop::sample::Index>(),
        replacement in 0x20u8..0x7f,
    ) {
        let token = signer.sign(&claims);
        let mut bytes = token.clone().into_bytes();
        let position = position.index(bytes.len());
        bytes[position] = replacement;
        // Tokens are ASCII and the replacement is ASCII, so this cannot fail.
        let mutated = String::from_utf8(bytes).unwrap();

        let result = signer.verifier().verify_signature(&mutated);
        if mutated == token {
            prop_assert_eq!(result, Ok(claims));
        } else {
            prop_assert!(
                result.is_err(),
                "byte {} set to {:?} was accepted: {}",
                position,
                char::from(replacement),
                mutated
            );
        }
    }

    #[test]
    fn token_truncation_rejected(
        signer in signer(),
        claims in claims(),
        cut in any::<prop::sample::Index>(),
    ) {
        let token = signer.sign(&claims);
        let cut = cut.index(token.len());
        let result = signer.verifier().verify_signature(&token[..cut]);
        prop_assert!(result.is_err(), "prefix of {} bytes", cut);
    }

    #[test]
    fn token_other_key_rejected(first in signer(), second in signer(), claims in claims()) {
        prop_assume!(first.secret_bytes() != second.secret_bytes());
        let token = first.sign(&claims);
        prop_assert!(second.verifier().verify_signature(&token).is_err());
    }
}

/// Exact validity rule of `Claims::check_time`, computed without overflow.
fn model_check_time(iat: u64, exp: u64, now: u64) -> Result<(), TokenError> {
    if now >= exp {
        Err(TokenError::Expired { exp })
    } else if u128::from(iat) > u128::from(now) + u128::from(CLOCK_SKEW_SECS) {
        Err(TokenError::NotYetValid { iat })
    } else {
        Ok(())
    }
}

fn time_claims(iat: u64, exp: u64) -> Claims {
    Claims {
        sub: UserId::from_bytes([0xff; 16]),
        guild: String::new(),
        name: String::new(),
        rank: u8::MAX,
        freqs: FreqSet::all(),
        iat,
        exp,
        jti: String::new(),
    }
}

/// Times near `u64::MAX`, where `now` plus the skew allowance overflows.
fn edge_time() -> impl Strategy<Value = u64> {
    prop_oneof![any::<u64>(), (u64::MAX - 2 * CLOCK_SKEW_SECS)..=u64::MAX]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn check_time_matches_model(iat in edge_time(), exp in edge_time(), now in edge_time()) {
        let claims = time_claims(iat, exp);
        prop_assert_eq!(claims.check_time(now), model_check_time(iat, exp, now));
    }
}

/// The times from the crash that the `token` fuzz target found: a token
/// that expires at `u64::MAX`, verified one second before that.
#[test]
fn verify_near_u64_max_time() {
    let signer = TokenSigner::from_secret(&[0x4b; 32]);
    let claims = time_claims(u64::MAX - 255, u64::MAX);
    let token = signer.sign(&claims);
    let verifier = signer.verifier();
    assert_eq!(verifier.verify(&token, u64::MAX - 1), Ok(claims.clone()));
    assert_eq!(
        verifier.verify(&token, u64::MAX),
        Err(TokenError::Expired { exp: u64::MAX })
    );
}
