//! The ACL's read check on each message a Session sends, for the clients that need it: one
//! granted a subscription that reaches topics it may not read (a dashboard's `#` beside a `deny`
//! line: [`SubscribeAccess::Filtered`](crate::auth::SubscribeAccess)), one that resumed a session
//! whose subscriptions were granted to an earlier connection, and every client once the ACL has
//! been reloaded. Other clients' subscriptions were judged whole at SUBSCRIBE, and their messages
//! go out unchecked.

use std::sync::Arc;

use super::{Phase, Session};
use crate::auth::AclFile;
use crate::message::Delivery;

/// Who a Session's client is to the ACL, borrowed from the Session's fields (so that its queue
/// can be borrowed mutably beside it).
#[derive(Clone, Copy)]
pub(super) struct ReadCheck<'a> {
    acl: &'a AclFile,
    username: Option<&'a str>,
    client_id: &'a str,
}

impl ReadCheck<'_> {
    /// Whether the client may receive `delivery` (its topic is readable and not denied).
    pub(super) fn allows(&self, delivery: &Delivery) -> bool {
        self.acl
            .may_read(self.username, self.client_id, &delivery.message.topic)
    }
}

/// The check to apply to a Session's outgoing messages: `None` when `needed` is false or there
/// is no ACL.
pub(super) fn read_check<'a>(
    needed: bool,
    acl: &'a Option<Arc<AclFile>>,
    username: &'a Option<Box<str>>,
    phase: &'a Phase,
) -> Option<ReadCheck<'a>> {
    let acl = acl.as_deref().filter(|_| needed)?;
    let client_id = match phase {
        Phase::Connected { client_id, .. } => client_id,
        _ => "",
    };
    Some(ReadCheck {
        acl,
        username: username.as_deref(),
        client_id,
    })
}

impl Session {
    /// Before messages go out: takes up a reloaded ACL (which marks every message for checking),
    /// and says whether they must be checked.
    pub(super) fn reads_checked(&mut self) -> bool {
        // Without an ACL at start there is none to reload: nothing to read on this path.
        if self.acl.1.is_none() {
            return false;
        }
        if self.shared.access.acl_generation() != self.acl.0 {
            self.refresh_acl();
        }
        self.read_checks && self.acl.1.is_some()
    }

    /// Counts a message not sent because the client may not read its topic.
    pub(super) fn unreadable_dropped(&self, n: u64) {
        self.shared.metrics.add_acl_denied(n);
        tracing::debug!(client_id = %self.client_id(), n, "messages not delivered: the ACL denies reading them");
    }
}
