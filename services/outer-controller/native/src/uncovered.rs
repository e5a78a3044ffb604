//! The users whose lines in the shard's durable log the snapshot does not cover yet, oldest first
//! (`state_log.StateLog.uncovered` of the Python window, kept here for the native one).
//!
//! A user enters once, at the log blob it first has lines in after its last compaction, and leaves
//! only from the front (compaction takes the users that hold the log back longest): a queue plus a
//! membership set. Kept natively so that a checkpoint's take needs no Python str, set or dict entry
//! per changed user (at 5*10^4 events/s the dirty set, its bookkeeping and the commit were ~40 % of
//! the take).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

#[derive(Default)]
pub struct Uncovered {
    /// (user, the first blob with lines of it that the snapshot does not cover), in blob order
    queue: VecDeque<(Arc<str>, u64)>,
    members: HashSet<Arc<str>, foldhash::fast::RandomState>,
}

impl Uncovered {
    /// The user has lines in blob `seq` (a no-op when it is uncovered from an earlier blob already).
    pub fn mark(&mut self, user: &Arc<str>, seq: u64) {
        if self.members.insert(user.clone()) {
            self.queue.push_back((user.clone(), seq));
        }
    }

    /// The user that holds the log back longest, removed.
    pub fn pop_front(&mut self) -> Option<Arc<str>> {
        let (user, _) = self.queue.pop_front()?;
        self.members.remove(&user);
        Some(user)
    }

    /// The first blob some user still needs (`None`: none).
    pub fn front(&self) -> Option<u64> {
        self.queue.front().map(|(_, seq)| *seq)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &(Arc<str>, u64)> {
        self.queue.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_enters_once_and_leaves_from_the_front() {
        let mut u = Uncovered::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        u.mark(&a, 3);
        u.mark(&b, 4);
        u.mark(&a, 5); // still uncovered from blob 3
        assert_eq!(u.len(), 2);
        assert_eq!(u.front(), Some(3));
        assert_eq!(u.pop_front().as_deref(), Some("a"));
        assert_eq!(u.front(), Some(4));
        u.mark(&a, 6); // covered since: enters again, behind b
        let order: Vec<_> = u.iter().map(|(k, s)| (k.to_string(), *s)).collect();
        assert_eq!(order, vec![("b".to_string(), 4), ("a".to_string(), 6)]);
    }
}
