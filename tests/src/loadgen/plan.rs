//! Who joins which frequency and who talks.
//!
//! Users are numbered 0.. and healthy users come first, then the slow
//! listeners. User `u` joins frequency indices `(u + j) % freqs` for `j` in
//! `0..joins_per_user`. Talker `t` is user `t`: it talks on frequency index
//! `t % freqs`, which is the first one it joins. The first talker of a
//! frequency (`t < freqs`) is its primary. Later ones are contenders: they
//! start talking after the primary has taken the floor, so floor control
//! must deny every one of their frames.

/// Layout of one run. Indices of frequencies count from the first frequency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Healthy users, which read their sockets.
    pub users: usize,
    /// Users that join but never read their socket.
    pub slow_listeners: usize,
    /// Number of frequencies.
    pub freqs: usize,
    /// Frequencies each user joins.
    pub joins_per_user: usize,
    /// Users that transmit.
    pub talkers: usize,
}

impl Plan {
    /// Returns the number of connections: healthy users and slow listeners.
    pub fn connections(&self) -> usize {
        self.users + self.slow_listeners
    }

    /// Returns true when `user` is a slow listener.
    pub fn is_slow(&self, user: usize) -> bool {
        user >= self.users
    }

    /// Frequency indices `user` joins, the talk frequency first.
    pub fn joins_of(&self, user: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.joins_per_user).map(move |j| (user + j) % self.freqs)
    }

    /// Frequency index talker `talker` talks on.
    pub fn talker_freq(&self, talker: usize) -> usize {
        talker % self.freqs
    }

    /// 0 for the primary talker of its frequency, 1.. for contenders.
    pub fn talker_rank(&self, talker: usize) -> usize {
        talker / self.freqs
    }

    /// Returns the primary talker of frequency index `freq`, if it has one.
    pub fn primary_of(&self, freq: usize) -> Option<usize> {
        (freq < self.talkers).then_some(freq)
    }

    /// Talkers on frequency index `freq`, primary and contenders.
    pub fn talkers_on(&self, freq: usize) -> usize {
        if freq >= self.talkers {
            0
        } else {
            (self.talkers - freq).div_ceil(self.freqs)
        }
    }

    /// Healthy users that joined frequency index `freq`.
    pub fn listeners_on(&self, freq: usize) -> usize {
        // User u joins freq when (freq - u) mod freqs < joins_per_user.
        (0..self.users)
            .filter(|&user| {
                (freq + self.freqs - user % self.freqs) % self.freqs < self.joins_per_user
            })
            .count()
    }

    /// Healthy users that should get each frame of the primary talker of
    /// `freq`: everyone on it but the talker itself.
    pub fn receivers_of_primary(&self, freq: usize) -> usize {
        self.listeners_on(freq).saturating_sub(1)
    }

    /// Returns the healthy user whose received audio `--record` writes: a user that
    /// does not talk and listens to frequency index 0, or failing that, any
    /// user on frequency index 0 other than its primary talker.
    pub fn recorder(&self) -> Option<usize> {
        let primary = self.primary_of(0)?;
        let on_first = |user: &usize| self.joins_of(*user).any(|freq| freq == 0);
        (self.talkers..self.users)
            .find(on_first)
            .or_else(|| (0..self.users).filter(|&u| u != primary).find(on_first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(users: usize, freqs: usize, joins: usize, talkers: usize) -> Plan {
        Plan {
            users,
            slow_listeners: 0,
            freqs,
            joins_per_user: joins,
            talkers,
        }
    }

    #[test]
    fn event_layout_600_6_6() {
        let plan = plan(600, 6, 1, 6);
        for freq in 0..6 {
            assert_eq!(plan.listeners_on(freq), 100, "freq {freq}");
            assert_eq!(plan.talkers_on(freq), 1, "freq {freq}");
            assert_eq!(plan.primary_of(freq), Some(freq));
            assert_eq!(plan.receivers_of_primary(freq), 99);
        }
        assert_eq!(plan.joins_of(7).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn four_of_six_joins() {
        let plan = plan(600, 6, 4, 6);
        for freq in 0..6 {
            assert_eq!(plan.listeners_on(freq), 400, "freq {freq}");
        }
        assert_eq!(plan.joins_of(5).collect::<Vec<_>>(), vec![5, 0, 1, 2]);
        // Counting by brute force agrees with the formula.
        let brute = (0..600)
            .filter(|&u| plan.joins_of(u).any(|f| f == 3))
            .count();
        assert_eq!(brute, plan.listeners_on(3));
    }

    #[test]
    fn contenders_per_frequency() {
        let plan = plan(600, 6, 1, 14);
        assert_eq!(plan.talkers_on(0), 3);
        assert_eq!(plan.talkers_on(1), 3);
        assert_eq!(plan.talkers_on(2), 2);
        assert_eq!(plan.talker_rank(6), 1);
        assert_eq!(plan.talker_rank(13), 2);
        assert_eq!(plan.talker_freq(13), 1);
        assert_eq!(plan.primary_of(5), Some(5));
    }

    #[test]
    fn frequencies_without_talkers() {
        let plan = plan(10, 4, 1, 2);
        assert_eq!(plan.talkers_on(3), 0);
        assert_eq!(plan.primary_of(3), None);
    }

    #[test]
    fn recorder_prefers_silent_listener() {
        assert_eq!(plan(20, 2, 1, 2).recorder(), Some(2));
        // Every user talks: take another user on frequency 0.
        assert_eq!(plan(4, 2, 1, 4).recorder(), Some(2));
        assert_eq!(plan(4, 2, 1, 0).recorder(), None);
        assert_eq!(plan(1, 1, 1, 1).recorder(), None);
    }
}
