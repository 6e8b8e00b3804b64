//! Identifier newtypes: jobs, tasks, leases, workers, attempts and log sequence numbers.
//!
//! Each is a plain integer on the wire (postcard varint) and in memory, wrapped so that a task
//! index can never be passed where a lease id is expected.

use core::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($inner:ty), $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        pub struct $name(pub $inner);

        impl $name {
            /// The raw integer.
            pub const fn get(self) -> $inner {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id_type!(
    /// A job on one server. Job ids are assigned by the server and never reused by it.
    JobId(u32), "job#"
);
id_type!(
    /// A task's index within its job, from 0 to the job's task count.
    TaskId(u32), "task#"
);
id_type!(
    /// One grant of one task to one worker. The server never reuses a lease id while it runs.
    LeaseId(u64), "lease#"
);
id_type!(
    /// A connected worker, assigned by the server at join.
    WorkerId(u32), "worker#"
);
id_type!(
    /// How many times a task has been leased before: 0 on its first lease.
    ///
    /// Fences late results: a completion carries the lease it answers, and only the lease of the
    /// task's current attempt may record it.
    Attempt(u16), "attempt#"
);
id_type!(
    /// A log sequence number: the position of a record in the checkpoint log.
    Lsn(u64), "lsn#"
);

impl Attempt {
    /// The next attempt, saturating.
    pub const fn next(self) -> Attempt {
        Attempt(self.0.saturating_add(1))
    }
}

impl TaskId {
    /// The task's index as a `usize`.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}
