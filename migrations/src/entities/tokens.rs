//! An issued token, for revocation by user.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tokens")]
pub struct Model {
    /// Token id (the `jti` claim).
    #[sea_orm(primary_key, auto_increment = false)]
    pub token_id: String,
    /// Pseudonymous user id.
    pub user_id: String,
    /// Issue time, Unix milliseconds.
    pub issued_at_ms: i64,
    /// Expiry time, Unix milliseconds.
    pub expires_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
