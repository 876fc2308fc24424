//! Radio frequency ids and sets of them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A radio frequency number, always within [`FreqId::MIN`]..=[`FreqId::MAX`].
///
/// The value can only be built through validation, so code that holds a
/// `FreqId` never has to check the range again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FreqId(u16);

/// Error for a number outside the frequency range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid frequency {value}: use a number from 1000 to 9999")]
pub struct InvalidFreqId {
    /// The rejected value.
    pub value: i64,
}

impl FreqId {
    /// Lowest valid frequency.
    pub const MIN: u16 = 1000;
    /// Highest valid frequency.
    pub const MAX: u16 = 9999;
    /// Number of valid frequencies, for tables indexed by [`FreqId::index`].
    pub const COUNT: usize = (Self::MAX - Self::MIN + 1) as usize;

    /// Validates `value` as a frequency id.
    pub fn new(value: i64) -> Result<Self, InvalidFreqId> {
        if (i64::from(Self::MIN)..=i64::from(Self::MAX)).contains(&value) {
            Ok(Self(value as u16))
        } else {
            Err(InvalidFreqId { value })
        }
    }

    /// The frequency number.
    pub fn get(self) -> u16 {
        self.0
    }

    /// Position of this frequency in a table of [`FreqId::COUNT`] entries.
    pub fn index(self) -> usize {
        usize::from(self.0 - Self::MIN)
    }

    /// Iterates over every valid frequency in ascending order.
    pub fn all() -> impl Iterator<Item = FreqId> {
        (Self::MIN..=Self::MAX).map(FreqId)
    }
}

impl fmt::Display for FreqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for FreqId {
    type Err = InvalidFreqId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value = s
            .trim()
            .parse::<i64>()
            .map_err(|_| InvalidFreqId { value: -1 })?;
        Self::new(value)
    }
}

impl TryFrom<i64> for FreqId {
    type Error = InvalidFreqId;

    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<FreqId> for i32 {
    fn from(freq: FreqId) -> i32 {
        i32::from(freq.0)
    }
}

impl Serialize for FreqId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for FreqId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(deserializer)?;
        FreqId::new(value).map_err(serde::de::Error::custom)
    }
}

/// A set of frequencies stored as sorted, non-overlapping inclusive ranges.
///
/// Tokens carry one of these, so "every frequency" costs two numbers instead
/// of nine thousand. Serialized as a list of `[first, last]` pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<(FreqId, FreqId)>", into = "Vec<(FreqId, FreqId)>")]
pub struct FreqSet {
    ranges: Vec<(FreqId, FreqId)>,
}

/// Error for a frequency list that cannot be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidFreqSet {
    /// One element is not a number or a `first-last` range.
    #[error(
        "invalid frequency list element '{element}': use numbers like 1050 or ranges like 1000-1099"
    )]
    Syntax {
        /// The element as written.
        element: String,
    },
    /// One number is outside the valid range.
    #[error(transparent)]
    Range(#[from] InvalidFreqId),
    /// A range whose first number is above its last.
    #[error("invalid frequency range {first}-{last}: the first number must not exceed the last")]
    Reversed {
        /// First number as written.
        first: FreqId,
        /// Last number as written.
        last: FreqId,
    },
}

impl FreqSet {
    /// A set holding every valid frequency.
    pub fn all() -> Self {
        Self::from_ranges([(FreqId(FreqId::MIN), FreqId(FreqId::MAX))])
    }

    /// Builds a set from ranges in any order, merging overlaps.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (FreqId, FreqId)>) -> Self {
        let mut ranges: Vec<(FreqId, FreqId)> = ranges
            .into_iter()
            .map(|(a, b)| if a <= b { (a, b) } else { (b, a) })
            .collect();
        ranges.sort();
        let mut merged: Vec<(FreqId, FreqId)> = Vec::with_capacity(ranges.len());
        for (first, last) in ranges {
            match merged.last_mut() {
                Some(prev) if first.0 <= prev.1.0.saturating_add(1) => {
                    prev.1 = prev.1.max(last);
                }
                _ => merged.push((first, last)),
            }
        }
        Self { ranges: merged }
    }

    /// Builds a set of single frequencies.
    pub fn from_freqs(freqs: impl IntoIterator<Item = FreqId>) -> Self {
        Self::from_ranges(freqs.into_iter().map(|f| (f, f)))
    }

    /// Returns true when `freq` is in the set, in O(log ranges).
    pub fn contains(&self, freq: FreqId) -> bool {
        let idx = self.ranges.partition_point(|&(_, last)| last < freq);
        self.ranges
            .get(idx)
            .is_some_and(|&(first, _)| first <= freq)
    }

    /// Returns true when the set holds no frequency.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The merged ranges in ascending order.
    pub fn ranges(&self) -> &[(FreqId, FreqId)] {
        &self.ranges
    }

    /// Iterates over every frequency in the set in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = FreqId> + '_ {
        self.ranges
            .iter()
            .flat_map(|&(first, last)| (first.0..=last.0).map(FreqId))
    }

    /// Number of frequencies in the set.
    pub fn len(&self) -> usize {
        self.ranges
            .iter()
            .map(|&(first, last)| usize::from(last.0 - first.0) + 1)
            .sum()
    }
}

/// Reads the pairs of a serialized set, which must each be in order.
impl TryFrom<Vec<(FreqId, FreqId)>> for FreqSet {
    type Error = InvalidFreqSet;

    fn try_from(ranges: Vec<(FreqId, FreqId)>) -> Result<Self, Self::Error> {
        if let Some(&(first, last)) = ranges.iter().find(|(first, last)| first > last) {
            return Err(InvalidFreqSet::Reversed { first, last });
        }
        Ok(Self::from_ranges(ranges))
    }
}

impl From<FreqSet> for Vec<(FreqId, FreqId)> {
    fn from(set: FreqSet) -> Self {
        set.ranges
    }
}

impl fmt::Display for FreqSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (first, last)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if first == last {
                write!(f, "{first}")?;
            } else {
                write!(f, "{first}-{last}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for FreqSet {
    type Err = InvalidFreqSet;

    /// Parses a comma-separated list such as `1000-1099,2000`, or `all`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("all") {
            return Ok(Self::all());
        }
        let mut ranges = Vec::new();
        for element in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let syntax = || InvalidFreqSet::Syntax {
                element: element.to_owned(),
            };
            let number = |text: &str| -> Result<FreqId, InvalidFreqSet> {
                let value = text.trim().parse::<i64>().map_err(|_| syntax())?;
                Ok(FreqId::new(value)?)
            };
            let range = match element.split_once('-') {
                Some((first, last)) => (number(first)?, number(last)?),
                None => {
                    let freq = number(element)?;
                    (freq, freq)
                }
            };
            if range.0 > range.1 {
                return Err(InvalidFreqSet::Reversed {
                    first: range.0,
                    last: range.1,
                });
            }
            ranges.push(range);
        }
        Ok(Self::from_ranges(ranges))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn freq(value: i64) -> FreqId {
        FreqId::new(value).unwrap()
    }

    #[test]
    fn freq_id_bounds() {
        assert!(FreqId::new(999).is_err());
        assert!(FreqId::new(1000).is_ok());
        assert!(FreqId::new(9999).is_ok());
        assert!(FreqId::new(10000).is_err());
        assert!(FreqId::new(-1).is_err());
        assert_eq!(freq(1000).index(), 0);
        assert_eq!(freq(9999).index(), FreqId::COUNT - 1);
    }

    #[test]
    fn freq_id_error_names_value() {
        let message = FreqId::new(42).unwrap_err().to_string();
        assert!(message.contains("42"), "{message}");
        assert!(message.contains("1000 to 9999"), "{message}");
    }

    #[test]
    fn freq_set_merges_and_contains() {
        let set: FreqSet = "1000-1009, 1010-1020,2000,1005".parse().unwrap();
        assert_eq!(
            set.ranges(),
            &[(freq(1000), freq(1020)), (freq(2000), freq(2000))]
        );
        assert!(set.contains(freq(1000)));
        assert!(set.contains(freq(1020)));
        assert!(!set.contains(freq(1021)));
        assert!(set.contains(freq(2000)));
        assert!(!set.contains(freq(9999)));
        assert_eq!(set.len(), 22);
        assert_eq!(set.to_string(), "1000-1020,2000");
    }

    #[test]
    fn freq_set_rejects_bad_lists() {
        assert!(matches!(
            "abc".parse::<FreqSet>(),
            Err(InvalidFreqSet::Syntax { .. })
        ));
        assert!(matches!(
            "1000-99999".parse::<FreqSet>(),
            Err(InvalidFreqSet::Range(_))
        ));
        assert!(matches!(
            "1100-1000".parse::<FreqSet>(),
            Err(InvalidFreqSet::Reversed { .. })
        ));
    }

    #[test]
    fn freq_set_all_and_json() {
        let all = FreqSet::all();
        assert_eq!(all.len(), FreqId::COUNT);
        let json = serde_json::to_string(&all).unwrap();
        assert_eq!(json, "[[1000,9999]]");
        let back: FreqSet = serde_json::from_str(&json).unwrap();
        assert_eq!(back, all);
        assert!(serde_json::from_str::<FreqSet>("[[1,2]]").is_err());
        let reversed = serde_json::from_str::<FreqSet>("[[1100,1000]]").unwrap_err();
        assert!(reversed.to_string().contains("1100-1000"), "{reversed}");
    }
}
