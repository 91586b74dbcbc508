//! Access tickets: single-use, short-lived credentials for one WebSocket exec, for callers
//! that can neither set `Authorization` nor follow a redirect (browsers).
//!
//! A ticket is 32 random bytes (URL-safe base64), issued to an authenticated client for one
//! sandbox and one exec (its options, as an opaque binding string the caller canonicalises).
//! The book keeps only a SHA-256 digest of each ticket, so a lookup compares digests, never
//! the secret itself. Presenting a ticket consumes it whatever the outcome, so it can be
//! neither replayed nor probed for its binding. Tickets expire after [`TICKET_LIFETIME`];
//! at most [`MAX_OUTSTANDING_TICKETS`] are outstanding at once per book, and
//! [`MAX_TICKETS_PER_CLIENT`] per client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};

use super::Principal;
use crate::clock::Clock;

/// How long a ticket stays valid.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(60);

/// Most unexpired, unused tickets one book holds.
pub const MAX_OUTSTANDING_TICKETS: usize = 4096;

/// Most unexpired, unused tickets of one client, so that no client can use up the book.
pub const MAX_TICKETS_PER_CLIENT: usize = 64;

/// A ticket just issued: the secret to hand over, and when it stops being accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The secret (43 URL-safe base64 characters).
    pub token: String,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
}

/// Why a ticket was not issued or not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// Unknown, already used, or expired.
    #[error("unauthorized: invalid or expired access token")]
    Invalid,
    /// Issued for another sandbox or other exec options (it is consumed all the same).
    #[error("unauthorized: access token was issued for another exec")]
    WrongExec,
    /// [`MAX_OUTSTANDING_TICKETS`] are outstanding.
    #[error("too many outstanding access tokens")]
    TooMany,
    /// The system's random generator failed, so no unguessable ticket can be made.
    #[error("access tokens cannot be issued: no randomness available")]
    NoRandomness,
}

struct Entry {
    principal: Principal,
    sandbox_id: String,
    binding: String,
    expires_at: DateTime<Utc>,
}

/// The tickets one service issued and not yet saw used.
pub struct TicketBook {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    random: SystemRandom,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for TicketBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketBook")
            .field("outstanding", &self.outstanding())
            .finish_non_exhaustive()
    }
}

fn fingerprint(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

impl TicketBook {
    /// An empty book on `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            random: SystemRandom::new(),
            clock,
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Issues a ticket that lets `principal` open the exec `binding` describes in
    /// `sandbox_id`, once, within [`TICKET_LIFETIME`].
    pub fn issue(
        &self,
        principal: &Principal,
        sandbox_id: &str,
        binding: &str,
    ) -> Result<Ticket, TicketError> {
        let now = self.clock.now();
        let mut secret = [0u8; 32];
        self.random
            .fill(&mut secret)
            .map_err(|_| TicketError::NoRandomness)?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let expires_at = now + chrono::Duration::from_std(TICKET_LIFETIME).unwrap_or_default();
        let mut entries = self.entries();
        entries.retain(|_, e| e.expires_at > now);
        let own = entries
            .values()
            .filter(|e| e.principal == *principal)
            .count();
        if entries.len() >= MAX_OUTSTANDING_TICKETS || own >= MAX_TICKETS_PER_CLIENT {
            return Err(TicketError::TooMany);
        }
        entries.insert(
            fingerprint(&token),
            Entry {
                principal: principal.clone(),
                sandbox_id: sandbox_id.to_string(),
                binding: binding.to_string(),
                expires_at,
            },
        );
        Ok(Ticket { token, expires_at })
    }

    /// Consumes `token` and answers the principal it was issued to, when it is unexpired and
    /// was issued for `sandbox_id` and `binding`.
    pub fn redeem(
        &self,
        token: &str,
        sandbox_id: &str,
        binding: &str,
    ) -> Result<Principal, TicketError> {
        let now = self.clock.now();
        let entry = self
            .entries()
            .remove(&fingerprint(token.trim()))
            .ok_or(TicketError::Invalid)?;
        if entry.expires_at <= now {
            return Err(TicketError::Invalid);
        }
        if entry.sandbox_id != sandbox_id || entry.binding != binding {
            return Err(TicketError::WrongExec);
        }
        Ok(entry.principal)
    }

    /// Unexpired tickets not used yet.
    pub fn outstanding(&self) -> usize {
        let now = self.clock.now();
        self.entries()
            .values()
            .filter(|e| e.expires_at > now)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn book() -> (Arc<ManualClock>, TicketBook) {
        let start = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        let clock = Arc::new(ManualClock::new(start));
        (clock.clone(), TicketBook::new(clock))
    }

    fn alice() -> Principal {
        Principal {
            client_id: "alice".to_string(),
        }
    }

    #[test]
    fn a_ticket_works_once() {
        let (_, book) = book();
        let ticket = book.issue(&alice(), "sbx", "command=sh").unwrap();
        assert_eq!(ticket.token.len(), 43);
        assert_eq!(book.outstanding(), 1);
        assert_eq!(book.redeem(&ticket.token, "sbx", "command=sh"), Ok(alice()));
        assert_eq!(
            book.redeem(&ticket.token, "sbx", "command=sh"),
            Err(TicketError::Invalid)
        );
        assert_eq!(book.outstanding(), 0);
        let other = book.issue(&alice(), "sbx", "command=sh").unwrap();
        assert_ne!(other.token, ticket.token);
    }

    #[test]
    fn a_ticket_is_bound_to_its_exec_and_consumed_by_a_wrong_use() {
        let (_, book) = book();
        let ticket = book.issue(&alice(), "sbx", "command=sh").unwrap();
        assert_eq!(
            book.redeem(&ticket.token, "sbx", "command=rm+-rf"),
            Err(TicketError::WrongExec)
        );
        assert_eq!(
            book.redeem(&ticket.token, "sbx", "command=sh"),
            Err(TicketError::Invalid),
            "a wrong use consumes it"
        );
        let ticket = book.issue(&alice(), "sbx", "command=sh").unwrap();
        assert_eq!(
            book.redeem(&ticket.token, "other", "command=sh"),
            Err(TicketError::WrongExec)
        );
        assert_eq!(
            book.redeem("made-up", "sbx", "command=sh"),
            Err(TicketError::Invalid)
        );
    }

    #[test]
    fn tickets_expire() {
        let (clock, book) = book();
        let ticket = book.issue(&alice(), "sbx", "").unwrap();
        assert_eq!(
            ticket.expires_at,
            clock.now() + chrono::Duration::seconds(60)
        );
        clock.advance(TICKET_LIFETIME);
        assert_eq!(book.outstanding(), 0);
        assert_eq!(
            book.redeem(&ticket.token, "sbx", ""),
            Err(TicketError::Invalid)
        );
    }

    #[test]
    fn outstanding_tickets_are_bounded_and_expired_ones_make_room() {
        let (clock, book) = book();
        for i in 0..MAX_OUTSTANDING_TICKETS {
            let client = Principal {
                client_id: format!("c{}", i % 100),
            };
            book.issue(&client, "sbx", "").unwrap();
        }
        assert_eq!(book.issue(&alice(), "sbx", ""), Err(TicketError::TooMany));
        clock.advance(TICKET_LIFETIME);
        assert!(book.issue(&alice(), "sbx", "").is_ok());
        assert_eq!(book.outstanding(), 1);
    }

    #[test]
    fn one_client_cannot_use_up_the_book() {
        let (_, book) = book();
        for _ in 1..MAX_TICKETS_PER_CLIENT {
            book.issue(&alice(), "sbx", "").unwrap();
        }
        let last = book.issue(&alice(), "sbx", "").unwrap();
        assert_eq!(book.issue(&alice(), "sbx", ""), Err(TicketError::TooMany));
        let bob = Principal {
            client_id: "bob".to_string(),
        };
        assert!(
            book.issue(&bob, "sbx", "").is_ok(),
            "others are not refused"
        );
        // A used ticket makes room.
        book.redeem(&last.token, "sbx", "").unwrap();
        assert!(book.issue(&alice(), "sbx", "").is_ok());
    }

    #[test]
    fn debug_shows_no_secret() {
        let (_, book) = book();
        let ticket = book.issue(&alice(), "sbx", "").unwrap();
        let shown = format!("{book:?}");
        assert!(!shown.contains(&ticket.token), "{shown}");
    }
}
