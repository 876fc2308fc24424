//! Fuzzes token verification with a fixed key. Any text must be rejected or
//! accepted without a panic. Claims signed with the key must verify to the
//! same claims, and a token with one byte replaced must be rejected.

#![no_main]

use std::sync::LazyLock;

use krt_shared::token::{Claims, MAX_TOKEN_LEN, TokenError, TokenSigner};
use krt_shared::{FreqId, FreqSet, UserId};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

static SIGNER: LazyLock<TokenSigner> = LazyLock::new(|| TokenSigner::from_secret(&[0x4b; 32]));

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    /// Any text, verified at time `now`.
    Text { token: &'a str, now: u64 },
    /// Claims signed with the fixed key, then verified at time `now`. A
    /// `mutation` of (position, replacement) replaces one byte of the token.
    Signed {
        claims: ClaimsInput,
        now: u64,
        mutation: Option<(u16, u8)>,
    },
}

#[derive(Arbitrary, Debug)]
struct ClaimsInput {
    sub: [u8; 16],
    guild: String,
    name: String,
    rank: u8,
    ranges: Vec<(u16, u16)>,
    iat: u64,
    exp: u64,
    jti: String,
}

impl ClaimsInput {
    fn into_claims(self) -> Claims {
        let freq = |raw: u16| {
            let offset = raw % FreqId::COUNT as u16;
            FreqId::new(i64::from(FreqId::MIN + offset)).expect("offset is below COUNT")
        };
        Claims {
            sub: UserId::from_bytes(self.sub),
            guild: self.guild,
            name: self.name,
            rank: self.rank,
            freqs: FreqSet::from_ranges(self.ranges.into_iter().map(|(a, b)| (freq(a), freq(b)))),
            iat: self.iat,
            exp: self.exp,
            jti: self.jti,
        }
    }
}

fuzz_target!(|input: Input<'_>| {
    let verifier = SIGNER.verifier();
    match input {
        Input::Text { token, now } => {
            if let Ok(claims) = verifier.verify(token, now) {
                assert_eq!(claims.check_time(now), Ok(()));
            }
        }
        Input::Signed {
            claims,
            now,
            mutation,
        } => {
            let claims = claims.into_claims();
            let token = SIGNER.sign(&claims);
            if token.len() > MAX_TOKEN_LEN {
                assert_eq!(
                    verifier.verify_signature(&token),
                    Err(TokenError::Malformed { detail: "too long" })
                );
                return;
            }
            assert_eq!(verifier.verify_signature(&token), Ok(claims.clone()));
            let expected = claims.check_time(now).map(|()| claims.clone());
            assert_eq!(verifier.verify(&token, now), expected);

            if let Some((position, replacement)) = mutation {
                let mut bytes = token.clone().into_bytes();
                let position = usize::from(position) % bytes.len();
                // Printable ASCII keeps the token valid UTF-8.
                bytes[position] = 0x20 + replacement % 0x5f;
                let mutated = String::from_utf8(bytes).expect("token is ASCII");
                if mutated != token {
                    let result = verifier.verify_signature(&mutated);
                    assert!(result.is_err(), "accepted mutated token {mutated}");
                }
            }
        }
    }
});
