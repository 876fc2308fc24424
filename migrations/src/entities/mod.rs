//! sea-orm entities, one module per table.

pub mod audit_log;
pub mod bans;
pub mod frequencies;
pub mod members;
pub mod mutes;
pub mod rank_roles;
pub mod revocations;
pub mod tokens;
pub mod transmissions;
pub mod voice_states;
