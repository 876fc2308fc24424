//! The error type of commands and event handlers, and how each variant is
//! shown to the member who ran the command.

use std::time::Duration;

use crate::control_client::ControlError;
use crate::store::StoreError;

/// Failures of a command or an event handler.
#[derive(Debug, thiserror::Error)]
pub enum BotError {
    /// An argument is invalid. The text names the value and what to do, and
    /// is shown to the member as it is.
    #[error("{0}")]
    Input(String),
    /// The member is banned from the radio.
    #[error("you are banned from the radio ({reason}): ask a moderator")]
    Banned {
        /// Reason given by the moderator.
        reason: String,
    },
    /// The member sent commands faster than the cooldown allows.
    #[error("slow down: try again in {} s", wait.as_secs().max(1))]
    SlowDown {
        /// Time until the next command is accepted.
        wait: Duration,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The relay's control socket failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A Discord REST call failed.
    #[error("Discord request failed: {0}")]
    Discord(Box<serenity::Error>),
}

impl From<serenity::Error> for BotError {
    fn from(error: serenity::Error) -> Self {
        BotError::Discord(Box::new(error))
    }
}

impl From<sea_orm::DbErr> for BotError {
    fn from(error: sea_orm::DbErr) -> Self {
        BotError::Store(StoreError::Query(error))
    }
}

impl BotError {
    /// Text for the member who ran the command. Internal details stay in the
    /// log.
    pub fn user_text(&self) -> String {
        match self {
            BotError::Input(_) | BotError::Banned { .. } | BotError::SlowDown { .. } => {
                capitalize(&self.to_string())
            }
            BotError::Control(ControlError::NotConnected { .. })
            | BotError::Control(ControlError::TimedOut)
            | BotError::Control(ControlError::Closed) => {
                "The radio relay is not reachable right now. Try again in a minute, and tell a \
                 moderator if it persists."
                    .into()
            }
            BotError::Control(ControlError::Rejected(reason)) => {
                format!("The radio relay rejected the request: {reason}")
            }
            BotError::Control(ControlError::InvalidResponse(_))
            | BotError::Store(_)
            | BotError::Discord(_) => {
                "Something went wrong on the bot's side. A moderator can find the details in the \
                 bot's log."
                    .into()
            }
        }
    }

    /// True for errors caused by the member rather than the service.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            BotError::Input(_) | BotError::Banned { .. } | BotError::SlowDown { .. }
        )
    }
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_hides_internals() {
        let db = BotError::from(sea_orm::DbErr::Custom("disk I/O error at page 7".into()));
        assert!(!db.user_text().contains("page 7"));
        assert!(!db.is_user_error());
        let input = BotError::Input("invalid frequency 50: use a number from 1000 to 9999".into());
        assert_eq!(
            input.user_text(),
            "Invalid frequency 50: use a number from 1000 to 9999"
        );
        assert!(input.is_user_error());
        let slow = BotError::SlowDown {
            wait: Duration::from_millis(300),
        };
        assert_eq!(slow.user_text(), "Slow down: try again in 1 s");
    }
}
