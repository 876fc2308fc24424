//! Pure rules: ranks from roles, the frequencies a member may use, and the
//! frequency that a voice channel's name links to.

use std::collections::HashMap;

use krt_shared::token::MAX_RANK;
use krt_shared::{FreqId, FreqSet};

/// The settings of one configured frequency that decide who may use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreqRule {
    /// Frequency.
    pub id: FreqId,
    /// Display name.
    pub name: String,
    /// Discord role required to use it.
    pub role_id: Option<u64>,
    /// Lowest rank that may use it.
    pub min_rank: u8,
}

/// Rank of a member: the highest rank among their roles, 0 without any.
pub fn member_rank(roles: &[u64], rank_roles: &HashMap<u64, u8>) -> u8 {
    roles
        .iter()
        .filter_map(|role| rank_roles.get(role).copied())
        .max()
        .unwrap_or(0)
}

/// Returns true when a member with `roles` and `rank` may use `rule`.
pub fn may_use(rule: &FreqRule, roles: &[u64], rank: u8) -> bool {
    let role_ok = rule.role_id.is_none_or(|role| roles.contains(&role));
    role_ok && rank >= rule.min_rank
}

/// Frequencies written into a member's token.
///
/// Configured frequencies are allowed when [`may_use`] returns true. Every other
/// frequency is allowed when `open_unconfigured` is true.
pub fn allowed_freqs(
    rules: &[FreqRule],
    roles: &[u64],
    rank: u8,
    open_unconfigured: bool,
) -> FreqSet {
    let mut allowed = vec![open_unconfigured; FreqId::COUNT];
    for rule in rules {
        allowed[rule.id.index()] = may_use(rule, roles, rank);
    }
    FreqSet::from_freqs(FreqId::all().filter(|freq| allowed[freq.index()]))
}

/// A frequency link read from a voice channel name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelLink {
    /// Frequency in parentheses.
    pub freq: FreqId,
    /// Name without the parentheses and brackets, or the frequency number
    /// when nothing else is left.
    pub name: String,
    /// Minimum rank in square brackets, 0 without.
    pub min_rank: u8,
}

/// Parses a voice channel name such as `Alpha (1050)` or `Alpha (1050) [3]`.
///
/// The frequency is the first parenthesized number from 1000 to 9999, and
/// the minimum rank the first bracketed number up to the maximum rank.
/// Returns None when the name has no such frequency.
pub fn parse_channel_name(name: &str) -> Option<ChannelLink> {
    let (freq, freq_span) = find_number(name, '(', ')')
        .and_then(|(value, span)| Some((FreqId::new(value).ok()?, span)))?;
    let rank = find_number(name, '[', ']').filter(|&(value, _)| value <= i64::from(MAX_RANK));

    let mut rest = String::with_capacity(name.len());
    for (index, ch) in name.char_indices() {
        let in_freq = freq_span.contains(&index);
        let in_rank = rank.as_ref().is_some_and(|(_, span)| span.contains(&index));
        if !in_freq && !in_rank {
            rest.push(ch);
        }
    }
    let rest = rest.split_whitespace().collect::<Vec<_>>().join(" ");
    Some(ChannelLink {
        freq,
        name: if rest.is_empty() {
            freq.to_string()
        } else {
            rest
        },
        min_rank: rank.map_or(0, |(value, _)| value as u8),
    })
}

/// Finds the first `open digits close` group and returns the number and the
/// byte range of the whole group.
fn find_number(text: &str, open: char, close: char) -> Option<(i64, std::ops::Range<usize>)> {
    let mut search_from = 0;
    while let Some(offset) = text[search_from..].find(open) {
        let start = search_from + offset;
        let digits_start = start + open.len_utf8();
        if let Some(length) = text[digits_start..].find(close) {
            let inner = &text[digits_start..digits_start + length];
            let end = digits_start + length + close.len_utf8();
            let digits_only = !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit());
            if digits_only
                && inner.len() <= 6
                && let Ok(value) = inner.parse()
            {
                return Some((value, start..end));
            }
        }
        search_from = digits_start;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn freq(value: i64) -> FreqId {
        FreqId::new(value).unwrap()
    }

    fn rule(id: i64, role_id: Option<u64>, min_rank: u8) -> FreqRule {
        FreqRule {
            id: freq(id),
            name: format!("F{id}"),
            role_id,
            min_rank,
        }
    }

    #[test]
    fn rank_is_highest_role_rank() {
        let ranks = HashMap::from([(1, 3), (2, 7), (3, 5)]);
        assert_eq!(member_rank(&[1, 3], &ranks), 5);
        assert_eq!(member_rank(&[2, 1], &ranks), 7);
        assert_eq!(member_rank(&[9], &ranks), 0);
        assert_eq!(member_rank(&[], &ranks), 0);
    }

    #[test]
    fn allowed_freqs_apply_role_and_rank() {
        let rules = [rule(1050, Some(77), 0), rule(1060, None, 3)];
        let member = allowed_freqs(&rules, &[], 0, true);
        assert!(!member.contains(freq(1050)), "role required");
        assert!(!member.contains(freq(1060)), "rank 3 required");
        assert!(member.contains(freq(1000)), "unconfigured frequencies open");
        assert_eq!(member.len(), FreqId::COUNT - 2);

        let officer = allowed_freqs(&rules, &[77], 3, true);
        assert!(officer.contains(freq(1050)));
        assert!(officer.contains(freq(1060)));

        let closed = allowed_freqs(&rules, &[77], 0, false);
        assert_eq!(closed, FreqSet::from_freqs([freq(1050)]));
    }

    #[test]
    fn channel_name_links_frequency() {
        let link = parse_channel_name("Alpha (1050)").unwrap();
        assert_eq!(link.freq, freq(1050));
        assert_eq!(link.name, "Alpha");
        assert_eq!(link.min_rank, 0);

        let ranked = parse_channel_name("Command (2000) [3]").unwrap();
        assert_eq!(ranked.freq, freq(2000));
        assert_eq!(ranked.name, "Command");
        assert_eq!(ranked.min_rank, 3);

        let bare = parse_channel_name("(1234)").unwrap();
        assert_eq!(bare.name, "1234");
    }

    #[test]
    fn channel_name_without_link() {
        for name in [
            "General",
            "Alpha (50)",
            "Alpha (10000)",
            "Alpha (abc)",
            "Alpha [3]",
            "Alpha (1050",
        ] {
            assert_eq!(parse_channel_name(name), None, "{name}");
        }
        let skip_word = parse_channel_name("Team (north) (1100)").unwrap();
        assert_eq!(skip_word.freq, freq(1100));
        assert_eq!(skip_word.name, "Team (north)");
        let bad_rank = parse_channel_name("Alpha (1050) [500]").unwrap();
        assert_eq!(bad_rank.min_rank, 0);
        assert_eq!(bad_rank.name, "Alpha [500]");
    }
}
