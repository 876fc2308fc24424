//! Database schema of KRT-Com: sea-orm migrations and the matching entities.
//!
//! The schema runs on SQLite and PostgreSQL alike, so it uses only portable
//! column types. Times are Unix milliseconds in `BIGINT` columns (suffix
//! `_ms`), except revocation cut-offs, which compare with token issue times
//! and are Unix seconds. User ids are the pseudonymous ids of tokens, never
//! raw Discord ids.

pub mod entities;
mod m20261204_000001_initial;

pub use sea_orm_migration::MigratorTrait;
use sea_orm_migration::prelude::*;

/// Applies every migration in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261204_000001_initial::Migration)]
    }
}
