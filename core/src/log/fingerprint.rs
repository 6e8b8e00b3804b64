//! [`Fingerprint`]: the SHA-256 identity of a job (its kind, inputs and edges), so a log is
//! never resumed for a different job.
//!
//! The encoding is unambiguous (every variable field is length-prefixed, every count is hashed)
//! and independent of how inputs and edges are interleaved when fed. Order within the inputs and
//! within the edges matters. `docs/log-format.md` gives the exact bytes:
//!
//! ```text
//! SHA-256( "colony.fingerprint.v1"
//!        ‖ u64 len(kind) ‖ kind
//!        ‖ u64 count(inputs) ‖ SHA-256( for each input: u64 len ‖ bytes )
//!        ‖ u64 count(edges)  ‖ SHA-256( for each edge: u32 before ‖ u32 after ) )
//! ```
//! with every integer little-endian.

use sha2::{Digest, Sha256};

use crate::id::TaskId;

/// Domain tag that opens every fingerprint.
const TAG: &[u8] = b"colony.fingerprint.v1";

/// A streaming fingerprint: feed the inputs and edges as they come, then [`finish`](Self::finish).
#[derive(Clone, Debug)]
pub struct Fingerprint {
    outer: Sha256,
    inputs: Sha256,
    edges: Sha256,
    input_count: u64,
    edge_count: u64,
}

impl Fingerprint {
    /// Starts the fingerprint of a job of task kind `kind`.
    pub fn new(kind: &str) -> Self {
        let mut outer = Sha256::new();
        outer.update(TAG);
        outer.update((kind.len() as u64).to_le_bytes());
        outer.update(kind.as_bytes());
        Fingerprint {
            outer,
            inputs: Sha256::new(),
            edges: Sha256::new(),
            input_count: 0,
            edge_count: 0,
        }
    }

    /// Adds the next task's input.
    pub fn add_input(&mut self, input: &[u8]) {
        self.inputs.update((input.len() as u64).to_le_bytes());
        self.inputs.update(input);
        self.input_count += 1;
    }

    /// Adds the next dependency edge: `before` runs before `after`.
    pub fn add_edge(&mut self, before: TaskId, after: TaskId) {
        let [a0, a1, a2, a3] = before.0.to_le_bytes();
        let [b0, b1, b2, b3] = after.0.to_le_bytes();
        self.edges.update([a0, a1, a2, a3, b0, b1, b2, b3]);
        self.edge_count += 1;
    }

    /// The fingerprint.
    pub fn finish(self) -> [u8; 32] {
        let mut outer = self.outer;
        outer.update(self.input_count.to_le_bytes());
        outer.update(self.inputs.finalize());
        outer.update(self.edge_count.to_le_bytes());
        outer.update(self.edges.finalize());
        outer.finalize().into()
    }
}

/// The fingerprint of a job of kind `kind` with `inputs` (in task order) and `edges`.
pub fn fingerprint<'i, I, E>(kind: &str, inputs: I, edges: E) -> [u8; 32]
where
    I: IntoIterator<Item = &'i [u8]>,
    E: IntoIterator<Item = (TaskId, TaskId)>,
{
    let mut fp = Fingerprint::new(kind);
    for input in inputs {
        fp.add_input(input);
    }
    for (before, after) in edges {
        fp.add_edge(before, after);
    }
    fp.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(kind: &str, inputs: &[&[u8]], edges: &[(u32, u32)]) -> [u8; 32] {
        fingerprint(
            kind,
            inputs.iter().copied(),
            edges.iter().map(|&(a, b)| (TaskId(a), TaskId(b))),
        )
    }

    #[test]
    fn golden_empty_job() {
        // Spelled out from the documented encoding.
        let mut want = Sha256::new();
        want.update(b"colony.fingerprint.v1");
        want.update(1u64.to_le_bytes());
        want.update(b"k");
        want.update(0u64.to_le_bytes());
        want.update(Sha256::digest(b""));
        want.update(0u64.to_le_bytes());
        want.update(Sha256::digest(b""));
        let want: [u8; 32] = want.finalize().into();
        assert_eq!(fp("k", &[], &[]), want);
    }

    #[test]
    fn golden_one_input_one_edge() {
        let mut inputs = Vec::new();
        inputs.extend_from_slice(&2u64.to_le_bytes());
        inputs.extend_from_slice(b"ab");
        let mut edges = Vec::new();
        edges.extend_from_slice(&[0, 0, 0, 0, 1, 0, 0, 0]);
        let mut want = Sha256::new();
        want.update(b"colony.fingerprint.v1");
        want.update(3u64.to_le_bytes());
        want.update(b"sum");
        want.update(1u64.to_le_bytes());
        want.update(Sha256::digest(&inputs));
        want.update(1u64.to_le_bytes());
        want.update(Sha256::digest(&edges));
        let want: [u8; 32] = want.finalize().into();
        assert_eq!(fp("sum", &[b"ab"], &[(0, 1)]), want);
    }

    #[test]
    fn boundaries_are_unambiguous() {
        let all = [
            fp("k", &[b"ab", b"c"], &[]),
            fp("k", &[b"a", b"bc"], &[]),
            fp("k", &[b"abc"], &[]),
            fp("k", &[b"abc", b""], &[]),
            fp("ka", &[b"bc"], &[]),
            fp("k", &[b"ab", b"c"], &[(0, 1)]),
            fp("k", &[b"ab", b"c"], &[(1, 0)]),
            fp("k", &[b"ab", b"c"], &[(0, 1), (0, 1)]),
            fp("", &[], &[]),
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn streaming_order_of_inputs_and_edges_does_not_matter() {
        let mut a = Fingerprint::new("k");
        a.add_input(b"x");
        a.add_edge(TaskId(0), TaskId(1));
        a.add_input(b"y");
        let mut b = Fingerprint::new("k");
        b.add_edge(TaskId(0), TaskId(1));
        b.add_input(b"x");
        b.add_input(b"y");
        assert_eq!(a.finish(), b.finish());
    }
}
