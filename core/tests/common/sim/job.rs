//! The jobs a simulation runs: inputs, random dependency DAGs, poisoned tasks, and the output
//! every task must produce.
//!
//! Invariants: an output is a pure function of the task's kind and input ([`task_output`]), so
//! any output anywhere (at the scheduler, in the log) can be checked; a task is *doomed* (must
//! end failed) exactly when it is poisoned or depends, directly or not, on a doomed task.

use colony_core::TaskId;
use colony_core::proto::Edge;
use colony_core::sched::Inputs;

use super::rng::Rng;

/// The kind of the first job.
pub(crate) const KIND_HASH: &str = "sim.hash";
/// The kind of the second job.
pub(crate) const KIND_MIX: &str = "sim.mix";
/// First input byte of a task whose handler always fails for good.
pub(crate) const POISON: u8 = 0xFF;

/// How a job's dependency edges are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// No edges.
    Flat,
    /// Layers; each task depends on one to three tasks of the layer before.
    Layered(u32),
    /// Each task depends, with some chance, on one or two of the twenty tasks before it.
    Sparse,
}

/// One job of a simulation and everything needed to judge its outcome.
#[derive(Clone, Debug)]
pub(crate) struct SimJob {
    pub(crate) name: String,
    pub(crate) kind: &'static str,
    pub(crate) shape: Shape,
    pub(crate) inputs: Inputs,
    pub(crate) edges: Vec<Edge>,
    /// Predecessors of each task.
    pub(crate) preds: Vec<Vec<u32>>,
    /// Tasks that must end failed.
    pub(crate) doomed: Vec<bool>,
    /// Poisoned tasks (their handler fails for good).
    pub(crate) poisoned: Vec<bool>,
    /// The output each task must end with, `None` for doomed tasks.
    outputs: Vec<Option<Vec<u8>>>,
    pub(crate) max_attempts: u16,
}

impl SimJob {
    /// A job of `tasks` tasks of `kind`, shaped at random, with `poison` poisoned tasks; a few
    /// jobs allow only one to three attempts per task.
    pub(crate) fn generate(
        rng: &mut Rng,
        index: usize,
        kind: &'static str,
        tasks: u32,
        poison: u32,
    ) -> SimJob {
        let n = tasks as usize;
        let shape = match rng.below(3) {
            0 => Shape::Flat,
            1 => Shape::Layered(rng.range(2, 12) as u32),
            _ => Shape::Sparse,
        };
        // A random topological order: edges only go from earlier to later positions.
        let mut order: Vec<u32> = (0..tasks).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.index(i + 1));
        }
        let mut preds = vec![Vec::new(); n];
        let mut edges = Vec::new();
        let mut add = |before: u32, after: u32, preds: &mut Vec<Vec<u32>>| {
            if !preds[after as usize].contains(&before) {
                preds[after as usize].push(before);
                edges.push(Edge {
                    before: TaskId(before),
                    after: TaskId(after),
                });
            }
        };
        match shape {
            Shape::Flat => {}
            Shape::Layered(layers) => {
                let layer_start = |l: u32| (l as usize * n) / layers as usize;
                for l in 1..layers {
                    let (lo, hi) = (layer_start(l - 1), layer_start(l));
                    for p in layer_start(l)..layer_start(l + 1) {
                        for _ in 0..rng.range(1, 4) {
                            if hi > lo {
                                let q = lo + rng.index(hi - lo);
                                add(order[q], order[p], &mut preds);
                            }
                        }
                    }
                }
            }
            Shape::Sparse => {
                for p in 1..n {
                    if rng.chance(300) {
                        for _ in 0..rng.range(1, 3) {
                            let q = p - 1 - rng.index(p.min(20));
                            add(order[q], order[p], &mut preds);
                        }
                    }
                }
            }
        }
        let mut poisoned = vec![false; n];
        for _ in 0..poison {
            poisoned[rng.index(n)] = true;
        }
        let mut doomed = vec![false; n];
        for &t in &order {
            let t = t as usize;
            doomed[t] = poisoned[t] || preds[t].iter().any(|&p| doomed[p as usize]);
        }
        let mut inputs = Inputs::with_capacity(n, n * 16);
        for t in 0..tasks {
            let mut input = vec![if poisoned[t as usize] { POISON } else { 0 }];
            input.extend_from_slice(&t.to_le_bytes());
            input.push(index as u8);
            let salt = rng.below(12) as usize;
            input.extend((0..salt).map(|_| rng.next_u64() as u8));
            inputs.push(&input);
        }
        let outputs = (0..tasks)
            .map(|t| {
                let input = inputs.get(t as usize).unwrap_or_default();
                task_output(kind, input)
                    .ok()
                    .filter(|_| !doomed[t as usize])
            })
            .collect();
        SimJob {
            outputs,
            poisoned,
            name: format!("sim-job-{index}"),
            kind,
            shape,
            inputs,
            edges,
            preds,
            doomed,
            max_attempts: if rng.chance(200) {
                rng.range(1, 4) as u16
            } else {
                20
            },
        }
    }

    /// Whether every task that can succeed must succeed: attempts are plenty. With few, a
    /// task may run out of them (task errors and expired leases count) and fail for good.
    pub(crate) fn strict(&self) -> bool {
        self.max_attempts >= 20
    }

    /// Number of tasks.
    pub(crate) fn tasks(&self) -> u32 {
        self.inputs.len() as u32
    }

    /// The input of task `t`.
    pub(crate) fn input(&self, t: u32) -> &[u8] {
        self.inputs.get(t as usize).unwrap_or_default()
    }

    /// The output task `t` must end with, or `None` if it must fail.
    pub(crate) fn expected(&self, t: u32) -> Option<&[u8]> {
        self.outputs[t as usize].as_deref()
    }
}

/// The task handler every simulated worker runs: a pure function of kind and input.
///
/// # Errors
/// A poisoned input fails for good.
pub(crate) fn task_output(kind: &str, input: &[u8]) -> Result<Vec<u8>, &'static str> {
    if input.first() == Some(&POISON) {
        return Err("poisoned input");
    }
    // FNV-1a over kind and input, then a splitmix stream of a length the hash picks (0..=40).
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in kind.as_bytes().iter().chain([0u8].iter()).chain(input) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    let len = (h % 41) as usize;
    let mut rng = Rng::new(h);
    Ok((0..len).map(|_| rng.next_u64() as u8).collect())
}
