//! The DAG frontier: which tasks of a job may run now.
//!
//! An edge `(a, b)` means `a` runs, and is recorded, before `b` starts. The frontier keeps each
//! task's count of unfinished predecessors and a FIFO queue of tasks whose count is zero.
//!
//! Invariants:
//! - The graph is acyclic: [`Frontier::new`] refuses a cycle, naming tasks on it.
//! - A task enters the ready queue exactly once, when its last predecessor is
//!   [`finished`](Frontier::finish) (or at creation if it has none).
//! - Finishing a task costs O(its successors): O(1) amortised per edge.
//! - Memory: a job without edges holds no per-task state at all (its ready queue is a cursor);
//!   with edges, 8 bytes per task plus 4 per edge (compressed sparse rows).

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;

use crate::id::TaskId;
use crate::proto::Edge;

/// How many tasks of a cycle a [`DagError::Cycle`] names at most.
pub const CYCLE_REPORT_LEN: usize = 8;

/// A job's dependency graph could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DagError {
    /// An edge names a task the job does not have.
    OutOfRange {
        /// The edge.
        edge: Edge,
        /// Tasks in the job.
        tasks: u32,
    },
    /// The edges form a cycle.
    Cycle {
        /// Tasks on the cycle, in edge order (at most [`CYCLE_REPORT_LEN`]).
        tasks: heapless::Vec<TaskId, CYCLE_REPORT_LEN>,
        /// How many tasks the cycle has in all.
        length: u32,
    },
}

impl fmt::Display for DagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DagError::OutOfRange { edge, tasks } => write!(
                f,
                "edge ({}, {}) names a task beyond the job's {tasks} tasks",
                edge.before.0, edge.after.0
            ),
            DagError::Cycle { tasks, length } => {
                f.write_str("dependency cycle through tasks ")?;
                for (i, t) in tasks.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" -> ")?;
                    }
                    write!(f, "{}", t.0)?;
                }
                if (*length as usize) > tasks.len() {
                    write!(f, " -> ... ({length} tasks in all)")?;
                }
                Ok(())
            }
        }
    }
}

impl core::error::Error for DagError {}

/// The ready frontier of one job.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    tasks: u32,
    /// Tasks `cursor..tasks` have no predecessors and were never handed out (edge-less jobs).
    cursor: u32,
    graph: Option<Graph>,
    ready: VecDeque<TaskId>,
}

#[derive(Debug, Clone, Default)]
struct Graph {
    /// Unfinished predecessors per task.
    waiting: Vec<u32>,
    /// `successors[offsets[t]..offsets[t + 1]]` are the successors of `t`.
    offsets: Vec<u32>,
    successors: Vec<u32>,
}

impl Frontier {
    /// A frontier over `tasks` tasks and `edges`.
    ///
    /// # Errors
    /// [`DagError::OutOfRange`] for an edge naming a task `>= tasks`; [`DagError::Cycle`] if the
    /// edges form a cycle (a self-edge is a cycle of one).
    pub fn new(tasks: u32, edges: &[Edge]) -> Result<Self, DagError> {
        if edges.is_empty() {
            return Ok(Frontier {
                tasks,
                cursor: 0,
                graph: None,
                ready: VecDeque::new(),
            });
        }
        let n = tasks as usize;
        let mut offsets = alloc::vec![0u32; n + 1];
        let mut waiting = alloc::vec![0u32; n];
        for e in edges {
            let (a, b) = (e.before.index(), e.after.index());
            match (offsets.get_mut(a + 1), waiting.get_mut(b)) {
                (Some(count), Some(w)) if a < n => {
                    *count += 1;
                    *w += 1;
                }
                _ => return Err(DagError::OutOfRange { edge: *e, tasks }),
            }
        }
        for i in 0..n {
            let prev = offsets.get(i).copied().unwrap_or(0);
            if let Some(o) = offsets.get_mut(i + 1) {
                *o += prev;
            }
        }
        let mut fill: Vec<u32> = offsets.clone();
        let mut successors = alloc::vec![0u32; edges.len()];
        for e in edges {
            if let Some(slot) = fill.get_mut(e.before.index()) {
                if let Some(s) = successors.get_mut(*slot as usize) {
                    *s = e.after.0;
                }
                *slot += 1;
            }
        }
        drop(fill);
        let graph = Graph {
            waiting,
            offsets,
            successors,
        };
        graph.check_acyclic()?;
        let ready = (0..tasks)
            .filter(|&t| graph.waiting.get(t as usize) == Some(&0))
            .map(TaskId)
            .collect();
        Ok(Frontier {
            tasks,
            cursor: tasks,
            graph: Some(graph),
            ready,
        })
    }

    /// Number of tasks.
    pub fn tasks(&self) -> u32 {
        self.tasks
    }

    /// Whether the job has dependency edges.
    pub fn has_edges(&self) -> bool {
        self.graph.is_some()
    }

    /// Adds one task with no predecessors at the end (an open job's `submit`); returns its id.
    ///
    /// Returns `None` if the job has edges (open jobs have none) or holds `u32::MAX` tasks.
    pub fn push_task(&mut self) -> Option<TaskId> {
        if self.graph.is_some() || self.tasks == u32::MAX {
            return None;
        }
        let id = TaskId(self.tasks);
        self.tasks += 1;
        Some(id)
    }

    /// Takes the next ready task, FIFO.
    pub fn pop_ready(&mut self) -> Option<TaskId> {
        if let Some(t) = self.ready.pop_front() {
            return Some(t);
        }
        if self.cursor < self.tasks {
            let t = TaskId(self.cursor);
            self.cursor += 1;
            return Some(t);
        }
        None
    }

    /// Whether a task is waiting in the ready queue.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty() || self.cursor < self.tasks
    }

    /// Number of tasks waiting in the ready queue.
    pub fn ready_len(&self) -> usize {
        self.ready.len() + (self.tasks - self.cursor) as usize
    }

    /// The successors of `task` (empty for an unknown task).
    pub fn successors(&self, task: TaskId) -> &[u32] {
        let Some(g) = &self.graph else { return &[] };
        let (Some(&lo), Some(&hi)) = (g.offsets.get(task.index()), g.offsets.get(task.index() + 1))
        else {
            return &[];
        };
        g.successors.get(lo as usize..hi as usize).unwrap_or(&[])
    }

    /// Records that `task` finished (its output is durable): successors whose last predecessor
    /// it was become ready, and are also passed to `on_ready`.
    ///
    /// The caller must finish each task at most once; finishing it twice would release its
    /// successors early. The scheduler's task states guarantee that.
    pub fn finish(&mut self, task: TaskId, mut on_ready: impl FnMut(TaskId)) {
        let Some(g) = &mut self.graph else { return };
        let (Some(&lo), Some(&hi)) = (g.offsets.get(task.index()), g.offsets.get(task.index() + 1))
        else {
            return;
        };
        for &s in g.successors.get(lo as usize..hi as usize).unwrap_or(&[]) {
            if let Some(w) = g.waiting.get_mut(s as usize) {
                *w = w.saturating_sub(1);
                if *w == 0 {
                    self.ready.push_back(TaskId(s));
                    on_ready(TaskId(s));
                }
            }
        }
    }

    /// Rebuilds the ready queue for a job resumed from its log: `is_finished(t)` tells which
    /// tasks are already done. Finished tasks never become ready; the others become ready once
    /// every predecessor is finished. Call once, right after [`Frontier::new`].
    pub fn resume(&mut self, is_finished: impl Fn(TaskId) -> bool) {
        match &mut self.graph {
            None => {
                self.ready = (self.cursor..self.tasks)
                    .map(TaskId)
                    .filter(|&t| !is_finished(t))
                    .collect();
                self.cursor = self.tasks;
            }
            Some(g) => {
                for t in 0..self.tasks {
                    if !is_finished(TaskId(t)) {
                        continue;
                    }
                    let (Some(&lo), Some(&hi)) =
                        (g.offsets.get(t as usize), g.offsets.get(t as usize + 1))
                    else {
                        continue;
                    };
                    for &s in g.successors.get(lo as usize..hi as usize).unwrap_or(&[]) {
                        if let Some(w) = g.waiting.get_mut(s as usize) {
                            *w = w.saturating_sub(1);
                        }
                    }
                }
                self.ready = (0..self.tasks)
                    .map(TaskId)
                    .filter(|&t| !is_finished(t) && g.waiting.get(t.index()) == Some(&0))
                    .collect();
            }
        }
    }

    /// Bytes of heap this frontier holds (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        let graph = self.graph.as_ref().map_or(0, |g| {
            4 * (g.waiting.capacity() + g.offsets.capacity() + g.successors.capacity())
        });
        graph + 4 * self.ready.capacity()
    }
}

impl Graph {
    /// Kahn's algorithm over a copy of the in-degrees; on a cycle, walks it to name its tasks.
    fn check_acyclic(&self) -> Result<(), DagError> {
        let n = self.waiting.len();
        let mut indegree = self.waiting.clone();
        let mut stack: Vec<u32> = (0..n as u32)
            .filter(|&t| indegree.get(t as usize) == Some(&0))
            .collect();
        let mut seen = 0usize;
        while let Some(t) = stack.pop() {
            seen += 1;
            for &s in self.succ(t) {
                if let Some(d) = indegree.get_mut(s as usize) {
                    *d -= 1;
                    if *d == 0 {
                        stack.push(s);
                    }
                }
            }
        }
        if seen == n {
            return Ok(());
        }
        // Every task left with a positive in-degree lies on a cycle or behind one. A depth-first
        // search over the left tasks finds a back edge; the stack above its target is a cycle.
        const NEW: u8 = 0;
        const ON_STACK: u8 = 1;
        const DONE: u8 = 2;
        let mut state = alloc::vec![NEW; n];
        for root in 0..n as u32 {
            if indegree.get(root as usize).is_none_or(|&d| d == 0)
                || state.get(root as usize) != Some(&NEW)
            {
                continue;
            }
            // (task, index of its next successor to look at)
            let mut stack: Vec<(u32, usize)> = alloc::vec![(root, 0)];
            if let Some(s) = state.get_mut(root as usize) {
                *s = ON_STACK;
            }
            while let Some(&mut (t, ref mut next)) = stack.last_mut() {
                let succ = self.succ(t);
                let Some(&s) = succ.get(*next) else {
                    if let Some(st) = state.get_mut(t as usize) {
                        *st = DONE;
                    }
                    stack.pop();
                    continue;
                };
                *next += 1;
                match state.get(s as usize) {
                    Some(&NEW) => {
                        if let Some(st) = state.get_mut(s as usize) {
                            *st = ON_STACK;
                        }
                        stack.push((s, 0));
                    }
                    Some(&ON_STACK) => {
                        let pos = stack.iter().position(|&(x, _)| x == s).unwrap_or(0);
                        let cycle = stack.get(pos..).unwrap_or(&[]);
                        let mut tasks = heapless::Vec::new();
                        for &(c, _) in cycle.iter().take(CYCLE_REPORT_LEN) {
                            let _ = tasks.push(TaskId(c));
                        }
                        return Err(DagError::Cycle {
                            tasks,
                            length: cycle.len() as u32,
                        });
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn succ(&self, t: u32) -> &[u32] {
        let (Some(&lo), Some(&hi)) = (
            self.offsets.get(t as usize),
            self.offsets.get(t as usize + 1),
        ) else {
            return &[];
        };
        self.successors.get(lo as usize..hi as usize).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn e(a: u32, b: u32) -> Edge {
        Edge {
            before: TaskId(a),
            after: TaskId(b),
        }
    }

    fn drain(f: &mut Frontier) -> Vec<u32> {
        core::iter::from_fn(|| f.pop_ready()).map(|t| t.0).collect()
    }

    #[test]
    fn independent_tasks_come_in_order() {
        let mut f = Frontier::new(4, &[]).unwrap();
        assert_eq!(drain(&mut f), vec![0, 1, 2, 3]);
        assert_eq!(f.push_task(), Some(TaskId(4)));
        assert_eq!(drain(&mut f), vec![4]);
    }

    #[test]
    fn chain_releases_one_at_a_time() {
        let mut f = Frontier::new(3, &[e(0, 1), e(1, 2)]).unwrap();
        assert_eq!(drain(&mut f), vec![0]);
        let mut released = Vec::new();
        f.finish(TaskId(0), |t| released.push(t.0));
        assert_eq!(released, vec![1]);
        assert_eq!(drain(&mut f), vec![1]);
        f.finish(TaskId(1), |_| {});
        assert_eq!(drain(&mut f), vec![2]);
        assert_eq!(f.push_task(), None);
    }

    #[test]
    fn diamond_waits_for_both() {
        let mut f = Frontier::new(4, &[e(0, 1), e(0, 2), e(1, 3), e(2, 3)]).unwrap();
        assert_eq!(drain(&mut f), vec![0]);
        f.finish(TaskId(0), |_| {});
        assert_eq!(drain(&mut f), vec![1, 2]);
        f.finish(TaskId(1), |_| {});
        assert!(!f.has_ready());
        f.finish(TaskId(2), |_| {});
        assert_eq!(drain(&mut f), vec![3]);
    }

    #[test]
    fn cycles_are_named() {
        let err = Frontier::new(5, &[e(0, 1), e(1, 2), e(2, 3), e(3, 1), e(4, 0)]).unwrap_err();
        let DagError::Cycle { tasks, length } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*length, 3);
        let set: BTreeSet<u32> = tasks.iter().map(|t| t.0).collect();
        assert_eq!(set, BTreeSet::from([1, 2, 3]));
        assert!(
            err.to_string()
                .starts_with("dependency cycle through tasks "),
            "{err}"
        );
        let self_edge = Frontier::new(2, &[e(1, 1)]).unwrap_err();
        assert_eq!(self_edge.to_string(), "dependency cycle through tasks 1");
    }

    #[test]
    fn cycle_behind_a_dead_end_is_found() {
        // 0 -> 1 (dead end, but 0 is on the cycle 0 -> 2 -> 0)
        let err = Frontier::new(3, &[e(0, 1), e(0, 2), e(2, 0)]).unwrap_err();
        let DagError::Cycle { length, .. } = err else {
            panic!()
        };
        assert_eq!(length, 2);
    }

    #[test]
    fn out_of_range_edges_are_refused() {
        assert_eq!(
            Frontier::new(2, &[e(0, 2)]).unwrap_err(),
            DagError::OutOfRange {
                edge: e(0, 2),
                tasks: 2
            }
        );
        assert!(matches!(
            Frontier::new(2, &[e(5, 0)]),
            Err(DagError::OutOfRange { .. })
        ));
    }

    #[test]
    fn resume_skips_finished_and_releases_their_successors() {
        let mut f = Frontier::new(4, &[e(0, 1), e(1, 2), e(0, 3)]).unwrap();
        f.resume(|t| t.0 == 0 || t.0 == 1);
        assert_eq!(drain(&mut f), vec![2, 3]);
        let mut g = Frontier::new(4, &[]).unwrap();
        g.resume(|t| t.0 % 2 == 0);
        assert_eq!(drain(&mut g), vec![1, 3]);
    }

    fn random_dag() -> impl Strategy<Value = (u32, Vec<Edge>)> {
        (1u32..40).prop_flat_map(|n| {
            let edges = proptest::collection::vec((0..n, 0..n), 0..80).prop_map(|pairs| {
                // orient every edge from lower to higher index: always acyclic
                pairs
                    .into_iter()
                    .filter(|(a, b)| a != b)
                    .map(|(a, b)| e(a.min(b), a.max(b)))
                    .collect()
            });
            (Just(n), edges)
        })
    }

    proptest! {
        /// Against a reference model: a task is handed out only when all its predecessors
        /// finished, exactly once, and every task is handed out.
        #[test]
        fn topological_and_complete((n, edges) in random_dag(), picks in proptest::collection::vec(0usize..8, 0..200)) {
            let mut f = Frontier::new(n, &edges).unwrap();
            let preds = |t: u32| edges.iter().filter(move |x| x.after.0 == t).map(|x| x.before.0);
            let mut finished = BTreeSet::new();
            let mut running: Vec<u32> = Vec::new();
            let mut handed = BTreeSet::new();
            let mut picks = picks.into_iter().cycle();
            loop {
                while let Some(t) = f.pop_ready() {
                    prop_assert!(handed.insert(t.0), "task {} handed out twice", t.0);
                    for p in preds(t.0) {
                        prop_assert!(finished.contains(&p), "task {} before its predecessor {}", t.0, p);
                    }
                    running.push(t.0);
                }
                if running.is_empty() { break; }
                let i = picks.next().unwrap_or(0) % running.len();
                let t = running.swap_remove(i);
                finished.insert(t);
                f.finish(TaskId(t), |_| {});
            }
            prop_assert_eq!(handed.len() as u32, n);
        }

        /// Any graph with a back edge added to a path is refused as a cycle whose named tasks
        /// really form a cycle.
        #[test]
        fn cycles_named_are_real((n, mut edges) in random_dag(), a in 0u32..40, b in 0u32..40) {
            let (a, b) = (a % n, b % n);
            edges.push(e(a.max(b), a.min(b)));
            match Frontier::new(n, &edges) {
                Ok(_) => {}
                Err(DagError::Cycle { tasks, length }) => {
                    prop_assert!(length as usize >= tasks.len());
                    if length as usize == tasks.len() {
                        for w in 0..tasks.len() {
                            let (x, y) = (tasks[w], tasks[(w + 1) % tasks.len()]);
                            prop_assert!(edges.contains(&Edge { before: x, after: y }), "{x:?}->{y:?} is not an edge");
                        }
                    }
                }
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }
    }
}
