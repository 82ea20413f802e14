//! Who may read one event of the log, by its id: a reader of its
//! namespace, or of the whole log for an event of none. Which events exist,
//! and of which namespace, is told only to a reader of the whole log: to
//! any other caller an unknown event, an event of another namespace and one
//! of the deployment are refused in the same words, whatever else the
//! request asks.

use super::{Caller, Identified, Rpc};
use crate::domain::{Error, EventRecord, Namespace, Result};

/// A caller admitted to `rpc` on one event, before the event is read.
#[derive(Debug)]
pub struct EventAccess<'a> {
    caller: &'a Caller,
    rpc: Rpc,
    /// Whether the caller reads every namespace: only then is it told that
    /// an event does not exist.
    whole_log: bool,
}

impl Identified {
    /// Admits the caller to `rpc` on one event: it needs the role in some
    /// namespace before anything is read; which events it is shown is the
    /// returned access's.
    pub fn admit_event(&self, rpc: Rpc) -> Result<EventAccess<'_>> {
        self.caller.authorize_anywhere(rpc)?;
        Ok(EventAccess {
            caller: &self.caller,
            rpc,
            whole_log: self.caller.authorize_everywhere(rpc).is_ok(),
        })
    }
}

impl EventAccess<'_> {
    /// Whether the caller may be shown `event`.
    pub fn may_read(&self, event: &EventRecord) -> bool {
        self.whole_log
            || event.policy.as_ref().is_some_and(|(namespace, _)| {
                Namespace::parse("namespace", namespace)
                    .is_ok_and(|namespace| self.caller.authorize(self.rpc, &namespace).is_ok())
            })
    }

    /// The answer about event `event_id` as the caller may see it: an event
    /// not found is, to a caller that does not read the whole log, one it
    /// may not read.
    pub fn answer<T>(&self, event_id: u64, answer: Result<T>) -> Result<T> {
        match answer {
            Err(Error::NotFound(_)) if !self.whole_log => Err(Error::PermissionDenied(format!(
                "event {event_id} is not one of a namespace the caller may read"
            ))),
            answer => answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::caller;
    use super::*;

    fn identified(grants: &[&str]) -> Identified {
        Identified {
            caller: caller(grants),
            request_id: "request".into(),
        }
    }

    fn event(namespace: Option<&str>) -> EventRecord {
        EventRecord {
            id: 1,
            kind: crate::domain::EventKind::Published,
            policy: namespace.map(|namespace| (namespace.to_owned(), "limits".to_owned())),
            actor: "alice".into(),
            at: chrono::Utc::now(),
            reason: String::new(),
            request_id: String::new(),
            previous_version: None,
            new_version: Some(1),
            revision: None,
            key_id: None,
            rollout_id: None,
            hash: String::new(),
        }
    }

    #[test]
    fn a_reader_of_a_namespace_reads_its_events_and_learns_nothing_of_others() {
        let identified = identified(&["payments:reader"]);
        let access = identified.admit_event(Rpc::GetInclusionProof).unwrap();
        assert!(access.may_read(&event(Some("payments"))));
        assert!(!access.may_read(&event(Some("search"))));
        assert!(!access.may_read(&event(None)));
        let unknown = access.answer::<()>(7, Err(Error::NotFound("event 7".into())));
        assert!(
            matches!(unknown, Err(Error::PermissionDenied(_))),
            "{unknown:?}"
        );
    }

    #[test]
    fn a_reader_of_the_whole_log_reads_every_event_and_is_told_what_is_missing() {
        let identified = identified(&["*:reader"]);
        let access = identified.admit_event(Rpc::GetInclusionProof).unwrap();
        assert!(access.may_read(&event(Some("search"))));
        assert!(access.may_read(&event(None)));
        let unknown = access.answer::<()>(7, Err(Error::NotFound("event 7".into())));
        assert!(matches!(unknown, Err(Error::NotFound(_))), "{unknown:?}");
    }

    #[test]
    fn a_caller_without_a_reader_grant_is_refused_before_anything_is_read() {
        let nobody = identified(&[]);
        let refused = nobody.admit_event(Rpc::GetInclusionProof);
        assert!(matches!(refused, Err(Error::PermissionDenied(_))));
    }
}
