//! Full structural invariant check, for tests and fuzzing.

use std::fmt;

use super::node::{min_edge_len, min_len, Node};
use super::{Summary, Tree, MAX_DEPTH};

/// A broken invariant found by [`Tree::check_invariants`]. Depths count from
/// 0 at the root; indexes are positions within the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Keys inside one leaf are not strictly increasing.
    KeysOutOfOrder {
        /// Depth of the leaf.
        depth: usize,
        /// Index of the first key not greater than its predecessor.
        index: usize,
    },
    /// The largest key of a child is not below the smallest key of the next
    /// child.
    ChildrenOutOfOrder {
        /// Depth of the internal node.
        depth: usize,
        /// Index of the later child.
        index: usize,
    },
    /// A node off the root and the right edge holds fewer entries or children
    /// than the minimum, a node on the right edge no entry (leaf) or a single
    /// child (internal), or the root the same.
    Underfull {
        /// Depth of the node.
        depth: usize,
        /// Entries (leaf) or children (internal).
        len: usize,
        /// Required minimum.
        min: usize,
    },
    /// A node's parallel arrays (keys and values, or keys, summaries and
    /// children) have different lengths. Capacity bounds the maximum at `B`.
    Mismatched {
        /// Depth of the node.
        depth: usize,
    },
    /// Leaves are not all at the same depth.
    UnevenLeaves {
        /// Depth of the first leaf found.
        expected: usize,
        /// Depth of a leaf that differs.
        found: usize,
    },
    /// The cached smallest key of a child differs from the child's actual
    /// smallest key.
    StaleKey {
        /// Depth of the internal node holding the cache.
        depth: usize,
        /// Index of the child.
        index: usize,
    },
    /// The cached summary of a child differs from the summary recomputed from
    /// the child's entries.
    StaleSummary {
        /// Depth of the internal node holding the cache.
        depth: usize,
        /// Index of the child.
        index: usize,
    },
    /// The tree's cached length differs from its number of entries.
    WrongLen {
        /// The cached `len`.
        cached: usize,
        /// Entries actually reachable.
        actual: usize,
    },
    /// The tree is deeper than the iterator stacks can hold.
    TooDeep {
        /// Levels, counting the leaves.
        depth: usize,
        /// [`MAX_DEPTH`].
        max: usize,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Violation::KeysOutOfOrder { depth, index } => {
                write!(f, "leaf keys out of order at depth {depth}, index {index}")
            }
            Violation::ChildrenOutOfOrder { depth, index } => {
                write!(
                    f,
                    "child {index} at depth {depth} overlaps its left sibling"
                )
            }
            Violation::Underfull { depth, len, min } => {
                write!(f, "node at depth {depth} holds {len}, fewer than {min}")
            }
            Violation::Mismatched { depth } => {
                write!(f, "node at depth {depth} has arrays of different lengths")
            }
            Violation::UnevenLeaves { expected, found } => {
                write!(f, "leaf at depth {found}, others at depth {expected}")
            }
            Violation::StaleKey { depth, index } => {
                write!(f, "cached key of child {index} at depth {depth} is wrong")
            }
            Violation::StaleSummary { depth, index } => {
                write!(
                    f,
                    "cached summary of child {index} at depth {depth} is wrong"
                )
            }
            Violation::WrongLen { cached, actual } => {
                write!(f, "len is {cached} but the tree holds {actual} entries")
            }
            Violation::TooDeep { depth, max } => {
                write!(f, "tree has {depth} levels, more than {max}")
            }
        }
    }
}

impl std::error::Error for Violation {}

/// What a checked subtree reports to its parent.
struct Checked<'a, K, S> {
    len: usize,
    first: &'a K,
    last: &'a K,
    summary: S,
}

struct Checker {
    leaf_depth: Option<usize>,
}

impl Checker {
    fn node<'a, K: Ord + Copy, V: Clone, S: Summary<K, V> + PartialEq, const B: usize>(
        &mut self,
        node: &'a Node<K, V, S, B>,
        depth: usize,
        right_edge: bool,
    ) -> Result<Checked<'a, K, S>, Violation> {
        if depth >= MAX_DEPTH {
            return Err(Violation::TooDeep {
                depth: depth + 1,
                max: MAX_DEPTH,
            });
        }
        let min = if depth == 0 {
            match node {
                Node::Leaf(_) => 1,
                Node::Internal(_) => 2,
            }
        } else if right_edge {
            min_edge_len(matches!(node, Node::Leaf(_)))
        } else {
            min_len(B)
        };
        if node.len() < min {
            return Err(Violation::Underfull {
                depth,
                len: node.len(),
                min,
            });
        }
        match node {
            Node::Leaf(l) => {
                if l.keys.len() != l.vals.len() {
                    return Err(Violation::Mismatched { depth });
                }
                match self.leaf_depth {
                    Some(expected) if expected != depth => {
                        return Err(Violation::UnevenLeaves {
                            expected,
                            found: depth,
                        })
                    }
                    _ => self.leaf_depth = Some(depth),
                }
                if let Some(index) = (1..l.keys.len()).find(|&i| l.keys[i - 1] >= l.keys[i]) {
                    return Err(Violation::KeysOutOfOrder { depth, index });
                }
                let summary = l
                    .keys
                    .iter()
                    .zip(&l.vals)
                    .map(|(k, v)| S::of_entry(k, v))
                    .reduce(S::combine)
                    .expect("non-empty leaf");
                Ok(Checked {
                    len: l.keys.len(),
                    first: &l.keys[0],
                    last: &l.keys[l.keys.len() - 1],
                    summary,
                })
            }
            Node::Internal(n) => {
                if n.keys.len() != n.children.len() || n.sums.len() != n.children.len() {
                    return Err(Violation::Mismatched { depth });
                }
                let mut acc: Option<Checked<'a, K, S>> = None;
                for (index, child) in n.children.iter().enumerate() {
                    let last = index + 1 == n.children.len();
                    let c = self.node(child, depth + 1, right_edge && last)?;
                    if *c.first != n.keys[index] {
                        return Err(Violation::StaleKey { depth, index });
                    }
                    if c.summary != n.sums[index] {
                        return Err(Violation::StaleSummary { depth, index });
                    }
                    acc = Some(match acc {
                        None => c,
                        Some(a) if a.last < c.first => Checked {
                            len: a.len + c.len,
                            first: a.first,
                            last: c.last,
                            summary: a.summary.combine(c.summary),
                        },
                        Some(_) => return Err(Violation::ChildrenOutOfOrder { depth, index }),
                    });
                }
                Ok(acc.expect("non-empty internal node"))
            }
        }
    }
}

impl<K, V, S, const B: usize> Tree<K, V, S, B>
where
    K: Ord + Copy,
    V: Clone,
    S: Summary<K, V> + PartialEq,
{
    /// Checks every structural invariant: key order within and across nodes,
    /// node fill bounds, equal leaf depth, cached child keys and summaries
    /// (recomputed from the entries, and compared with `==`, hence
    /// `S: PartialEq`), `len`, and the depth bound.
    ///
    /// Time: O(n).
    ///
    /// ```
    /// use memslots::tree::Tree;
    /// let t: Tree<u32, u32> = (0..1000).map(|i| (i, i)).collect();
    /// assert_eq!(t.check_invariants(), Ok(()));
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "invariants")))]
    pub fn check_invariants(&self) -> Result<(), Violation> {
        let actual = match self.root.as_deref() {
            None => 0,
            Some(root) => Checker { leaf_depth: None }.node(root, 0, true)?.len,
        };
        if actual != self.len {
            return Err(Violation::WrongLen {
                cached: self.len,
                actual,
            });
        }
        Ok(())
    }
}
