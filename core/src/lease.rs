//! The lease table: time-bounded grants of items to holders, on the server's clock.
//!
//! Every lease has one holder (a worker) and one deadline. Renewing a lease moves its deadline to
//! `now + duration`; [`LeaseTable::expire_next`] hands back leases whose deadline has passed.
//!
//! Invariants:
//! - All leases of one table last the same duration, and the clock never goes back (an earlier
//!   `now` is treated as the latest one seen), so deadlines are ordered by the time of the last
//!   grant or renewal. The table keeps leases in one intrusive list in that order: granting,
//!   renewing, releasing and expiring are all O(1), and `poll_at` is the list's head.
//! - Each holder's leases are also linked together, so renewing or releasing every lease of a
//!   holder costs O(its leases).
//! - A [`LeaseId`] carries its slot and a generation: an id whose lease was released or expired
//!   never matches a later lease that reuses the slot.

use alloc::vec::Vec;
use core::fmt;

use crate::id::{LeaseId, WorkerId};
use crate::time::{Duration, Instant};

const NIL: u32 = u32::MAX;

/// A lease table over items of type `T` (the scheduler stores a job, task and attempt).
#[derive(Debug, Clone)]
pub struct LeaseTable<T> {
    duration: Duration,
    latest: Instant,
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    /// Oldest deadline first.
    head: u32,
    tail: u32,
    /// First lease of each holder, indexed by `WorkerId`.
    holder_heads: Vec<u32>,
    live: usize,
}

#[derive(Debug, Clone)]
struct Slot<T> {
    generation: u32,
    item: Option<T>,
    holder: WorkerId,
    deadline: Instant,
    prev: u32,
    next: u32,
    holder_prev: u32,
    holder_next: u32,
}

/// A live lease, as seen through [`LeaseTable::get`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease<'a, T> {
    /// Who holds it.
    pub holder: WorkerId,
    /// When it expires unless renewed.
    pub deadline: Instant,
    /// What it grants.
    pub item: &'a T,
}

/// A lease that ended, with what it granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended<T> {
    /// The lease.
    pub lease: LeaseId,
    /// Who held it.
    pub holder: WorkerId,
    /// What it granted.
    pub item: T,
}

/// A lease operation named a lease that is not live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LeaseError {
    /// No live lease has this id (never granted, released, or expired).
    Unknown(LeaseId),
    /// The lease is live but held by another worker.
    NotHolder {
        /// The lease.
        lease: LeaseId,
        /// Its real holder.
        holder: WorkerId,
    },
}

impl fmt::Display for LeaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseError::Unknown(lease) => write!(f, "{lease} is not live"),
            LeaseError::NotHolder { lease, holder } => write!(f, "{lease} is held by {holder}"),
        }
    }
}

impl core::error::Error for LeaseError {}

fn split(lease: LeaseId) -> (u32, u32) {
    ((lease.0 >> 32) as u32, lease.0 as u32)
}

fn join(generation: u32, index: u32) -> LeaseId {
    LeaseId((u64::from(generation) << 32) | u64::from(index))
}

impl<T> LeaseTable<T> {
    /// An empty table whose leases last `duration` unless renewed.
    pub fn new(duration: Duration) -> Self {
        LeaseTable {
            duration,
            latest: Instant::ZERO,
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            holder_heads: Vec::new(),
            live: 0,
        }
    }

    /// How long a lease lasts without renewal.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Number of live leases.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no lease is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The earliest deadline of any live lease: when [`expire_next`](Self::expire_next) will
    /// next have something to return.
    pub fn poll_at(&self) -> Option<Instant> {
        self.slots.get(self.head as usize).map(|s| s.deadline)
    }

    fn clock(&mut self, now: Instant) -> Instant {
        if now > self.latest {
            self.latest = now;
        }
        self.latest
    }

    /// Grants `item` to `holder` until `now + duration`.
    pub fn grant(&mut self, now: Instant, holder: WorkerId, item: T) -> LeaseId {
        let now = self.clock(now);
        let deadline = now + self.duration;
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let index = u32::try_from(self.slots.len()).unwrap_or(NIL);
                self.slots.push(Slot {
                    generation: 0,
                    item: None,
                    holder,
                    deadline,
                    prev: NIL,
                    next: NIL,
                    holder_prev: NIL,
                    holder_next: NIL,
                });
                index
            }
        };
        let generation = match self.slots.get_mut(index as usize) {
            Some(slot) => {
                slot.generation = slot.generation.wrapping_add(1);
                slot.item = Some(item);
                slot.holder = holder;
                slot.deadline = deadline;
                slot.generation
            }
            None => 0,
        };
        self.link_tail(index);
        self.link_holder(index, holder);
        self.live += 1;
        join(generation, index)
    }

    fn slot_index(&self, lease: LeaseId) -> Result<u32, LeaseError> {
        let (generation, index) = split(lease);
        match self.slots.get(index as usize) {
            Some(slot) if slot.generation == generation && slot.item.is_some() => Ok(index),
            _ => Err(LeaseError::Unknown(lease)),
        }
    }

    /// The live lease `lease`, if any.
    pub fn get(&self, lease: LeaseId) -> Option<Lease<'_, T>> {
        let index = self.slot_index(lease).ok()?;
        let slot = self.slots.get(index as usize)?;
        Some(Lease {
            holder: slot.holder,
            deadline: slot.deadline,
            item: slot.item.as_ref()?,
        })
    }

    /// Moves the deadline of `lease` to `now + duration`.
    ///
    /// # Errors
    /// [`LeaseError::Unknown`] if the lease is not live.
    pub fn renew(&mut self, now: Instant, lease: LeaseId) -> Result<(), LeaseError> {
        let index = self.slot_index(lease)?;
        self.renew_index(now, index);
        Ok(())
    }

    fn renew_index(&mut self, now: Instant, index: u32) {
        let now = self.clock(now);
        self.unlink(index);
        if let Some(slot) = self.slots.get_mut(index as usize) {
            slot.deadline = now + self.duration;
        }
        self.link_tail(index);
    }

    /// Renews every lease `holder` holds; returns how many.
    pub fn renew_holder(&mut self, now: Instant, holder: WorkerId) -> usize {
        let mut count = 0;
        let mut index = self.holder_head(holder);
        while index != NIL {
            let next = self
                .slots
                .get(index as usize)
                .map_or(NIL, |s| s.holder_next);
            self.renew_index(now, index);
            count += 1;
            index = next;
        }
        count
    }

    /// Ends `lease` early (its task completed or failed) and returns what it granted.
    ///
    /// # Errors
    /// [`LeaseError::Unknown`] if the lease is not live; [`LeaseError::NotHolder`] if `holder` is
    /// given and does not hold it (the lease stays live then).
    pub fn release(
        &mut self,
        lease: LeaseId,
        holder: Option<WorkerId>,
    ) -> Result<Ended<T>, LeaseError> {
        let index = self.slot_index(lease)?;
        if let (Some(holder), Some(slot)) = (holder, self.slots.get(index as usize))
            && slot.holder != holder
        {
            return Err(LeaseError::NotHolder {
                lease,
                holder: slot.holder,
            });
        }
        self.remove(index).ok_or(LeaseError::Unknown(lease))
    }

    /// Ends the oldest lease of `holder`, if it has any. Call repeatedly to drain a holder that
    /// disconnected.
    pub fn release_one_of(&mut self, holder: WorkerId) -> Option<Ended<T>> {
        let index = self.holder_head(holder);
        if index == NIL {
            None
        } else {
            self.remove(index)
        }
    }

    /// Ends and returns one lease whose deadline is at or before `now`, oldest first.
    pub fn expire_next(&mut self, now: Instant) -> Option<Ended<T>> {
        let now = self.clock(now);
        let head = self.head;
        let slot = self.slots.get(head as usize)?;
        if slot.deadline <= now {
            self.remove(head)
        } else {
            None
        }
    }

    /// Number of live leases `holder` holds.
    pub fn count_of(&self, holder: WorkerId) -> usize {
        let mut count = 0;
        let mut index = self.holder_head(holder);
        while let Some(slot) = self.slots.get(index as usize) {
            count += 1;
            index = slot.holder_next;
        }
        count
    }

    fn holder_head(&self, holder: WorkerId) -> u32 {
        self.holder_heads
            .get(holder.0 as usize)
            .copied()
            .unwrap_or(NIL)
    }

    fn remove(&mut self, index: u32) -> Option<Ended<T>> {
        self.unlink(index);
        self.unlink_holder(index);
        let slot = self.slots.get_mut(index as usize)?;
        let item = slot.item.take()?;
        let ended = Ended {
            lease: join(slot.generation, index),
            holder: slot.holder,
            item,
        };
        self.free.push(index);
        self.live -= 1;
        Some(ended)
    }

    fn link_tail(&mut self, index: u32) {
        let tail = self.tail;
        if let Some(slot) = self.slots.get_mut(index as usize) {
            slot.prev = tail;
            slot.next = NIL;
        }
        match self.slots.get_mut(tail as usize) {
            Some(prev) => prev.next = index,
            None => self.head = index,
        }
        self.tail = index;
    }

    fn unlink(&mut self, index: u32) {
        let Some(slot) = self.slots.get(index as usize) else {
            return;
        };
        let (prev, next) = (slot.prev, slot.next);
        match self.slots.get_mut(prev as usize) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.slots.get_mut(next as usize) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    fn link_holder(&mut self, index: u32, holder: WorkerId) {
        let h = holder.0 as usize;
        if self.holder_heads.len() <= h {
            self.holder_heads.resize(h + 1, NIL);
        }
        let old_head = self.holder_head(holder);
        if let Some(slot) = self.slots.get_mut(index as usize) {
            slot.holder_prev = NIL;
            slot.holder_next = old_head;
        }
        if let Some(old) = self.slots.get_mut(old_head as usize) {
            old.holder_prev = index;
        }
        if let Some(head) = self.holder_heads.get_mut(h) {
            *head = index;
        }
    }

    fn unlink_holder(&mut self, index: u32) {
        let Some(slot) = self.slots.get(index as usize) else {
            return;
        };
        let (prev, next, holder) = (slot.holder_prev, slot.holder_next, slot.holder);
        match self.slots.get_mut(prev as usize) {
            Some(p) => p.holder_next = next,
            None => {
                if let Some(head) = self.holder_heads.get_mut(holder.0 as usize) {
                    *head = next;
                }
            }
        }
        if let Some(n) = self.slots.get_mut(next as usize) {
            n.holder_prev = prev;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const D: Duration = Duration::from_millis(100);

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn grant_renew_expire() {
        let mut t = LeaseTable::new(D);
        let a = t.grant(at(0), WorkerId(1), "a");
        let b = t.grant(at(10), WorkerId(2), "b");
        assert_eq!(t.poll_at(), Some(at(100)));
        t.renew(at(50), a).unwrap();
        assert_eq!(t.poll_at(), Some(at(110)));
        assert_eq!(t.expire_next(at(109)), None);
        let e = t.expire_next(at(110)).unwrap();
        assert_eq!((e.lease, e.holder, e.item), (b, WorkerId(2), "b"));
        assert_eq!(t.expire_next(at(149)), None);
        assert_eq!(t.expire_next(at(150)).unwrap().item, "a");
        assert!(t.is_empty());
        assert_eq!(t.poll_at(), None);
    }

    #[test]
    fn stale_ids_are_fenced() {
        let mut t = LeaseTable::new(D);
        let a = t.grant(at(0), WorkerId(1), 1);
        assert_eq!(t.release(a, None).unwrap().item, 1);
        let b = t.grant(at(0), WorkerId(1), 2);
        assert_ne!(a, b);
        assert_eq!(t.release(a, None), Err(LeaseError::Unknown(a)));
        assert_eq!(t.renew(at(1), a), Err(LeaseError::Unknown(a)));
        assert_eq!(t.get(b).unwrap().item, &2);
    }

    #[test]
    fn only_the_holder_releases() {
        let mut t = LeaseTable::new(D);
        let a = t.grant(at(0), WorkerId(1), ());
        assert_eq!(
            t.release(a, Some(WorkerId(2))),
            Err(LeaseError::NotHolder {
                lease: a,
                holder: WorkerId(1)
            })
        );
        assert!(t.release(a, Some(WorkerId(1))).is_ok());
    }

    #[test]
    fn holder_operations() {
        let mut t = LeaseTable::new(D);
        for i in 0..5 {
            t.grant(at(i), WorkerId(i as u32 % 2), i);
        }
        assert_eq!(t.count_of(WorkerId(0)), 3);
        assert_eq!(t.renew_holder(at(60), WorkerId(1)), 2);
        // worker 0's leases (granted at 0, 2, 4) expire before worker 1's (renewed at 60).
        let mut order = Vec::new();
        while let Some(e) = t.expire_next(at(1_000)) {
            order.push(e.item);
        }
        order[3..].sort();
        assert_eq!(order, vec![0, 2, 4, 1, 3]);
        let x = t.grant(at(0), WorkerId(7), 9);
        let y = t.grant(at(0), WorkerId(7), 10);
        let mut drained: Vec<_> = core::iter::from_fn(|| t.release_one_of(WorkerId(7)))
            .map(|e| e.lease)
            .collect();
        drained.sort();
        let mut want = vec![x, y];
        want.sort();
        assert_eq!(drained, want);
        assert!(t.is_empty());
    }

    #[test]
    fn clock_never_goes_back() {
        let mut t = LeaseTable::new(D);
        t.grant(at(500), WorkerId(0), 0);
        t.grant(at(100), WorkerId(0), 1); // stale now: treated as 500
        assert_eq!(t.expire_next(at(599)), None);
        assert_eq!(t.expire_next(at(600)).unwrap().item, 0);
        assert_eq!(t.expire_next(at(600)).unwrap().item, 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Grant(u32),
        Renew(usize),
        RenewHolder(u32),
        Release(usize),
        ReleaseHolder(u32),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..4).prop_map(Op::Grant),
            (0usize..64).prop_map(Op::Renew),
            (0u32..4).prop_map(Op::RenewHolder),
            (0usize..64).prop_map(Op::Release),
            (0u32..4).prop_map(Op::ReleaseHolder),
            (0u64..80).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// The table agrees with a plain map of lease -> (holder, deadline, item).
        #[test]
        fn matches_reference_model(ops in proptest::collection::vec(op(), 1..200)) {
            let mut t = LeaseTable::new(D);
            let mut model: BTreeMap<LeaseId, (WorkerId, Instant, u32)> = BTreeMap::new();
            let mut issued: Vec<LeaseId> = Vec::new();
            let mut now = at(0);
            let mut next_item = 0u32;
            for op in ops {
                match op {
                    Op::Grant(h) => {
                        let id = t.grant(now, WorkerId(h), next_item);
                        prop_assert!(!model.contains_key(&id));
                        model.insert(id, (WorkerId(h), now + D, next_item));
                        issued.push(id);
                        next_item += 1;
                    }
                    Op::Renew(i) => if let Some(&id) = issued.get(i) {
                        let r = t.renew(now, id);
                        match model.get_mut(&id) {
                            Some(e) => { prop_assert!(r.is_ok()); e.1 = now + D; }
                            None => prop_assert_eq!(r, Err(LeaseError::Unknown(id))),
                        }
                    },
                    Op::RenewHolder(h) => {
                        let n = t.renew_holder(now, WorkerId(h));
                        let mut m = 0;
                        for e in model.values_mut().filter(|e| e.0 == WorkerId(h)) { e.1 = now + D; m += 1; }
                        prop_assert_eq!(n, m);
                    }
                    Op::Release(i) => if let Some(&id) = issued.get(i) {
                        let r = t.release(id, None);
                        match model.remove(&id) {
                            Some((h, _, item)) => prop_assert_eq!(r, Ok(Ended { lease: id, holder: h, item })),
                            None => prop_assert_eq!(r, Err(LeaseError::Unknown(id))),
                        }
                    },
                    Op::ReleaseHolder(h) => {
                        while let Some(e) = t.release_one_of(WorkerId(h)) {
                            let m = model.remove(&e.lease);
                            prop_assert_eq!(m.map(|m| (m.0, m.2)), Some((WorkerId(h), e.item)));
                        }
                        prop_assert!(model.values().all(|e| e.0 != WorkerId(h)));
                    }
                    Op::Advance(ms) => {
                        now = now + Duration::from_millis(ms);
                        while let Some(e) = t.expire_next(now) {
                            let m = model.remove(&e.lease);
                            prop_assert!(m.is_some());
                            prop_assert!(m.unwrap().1 <= now);
                        }
                        prop_assert!(model.values().all(|e| e.1 > now));
                    }
                }
                prop_assert_eq!(t.len(), model.len());
                prop_assert_eq!(t.poll_at(), model.values().map(|e| e.1).min());
                for (id, e) in &model {
                    let l = t.get(*id).unwrap();
                    prop_assert_eq!((l.holder, l.deadline, *l.item), (e.0, e.1, e.2));
                }
            }
        }
    }
}
