//! Structural diff of two versions: a merge walk of two lazy cursors that
//! steps over any subtree both versions share.

use std::cmp::Ordering;
use std::iter::FusedIterator;
use std::sync::Arc;

use arrayvec::ArrayVec;

use super::node::Node;
use super::MAX_DEPTH;

/// One difference between two versions, an item of [`Changes`] from
/// [`Tree::diff`](super::Tree::diff) or [`Tree::diff_by`](super::Tree::diff_by).
/// "Old" is the tree `diff` was called on, "new" its argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Diff<'a, K, V> {
    /// The key is only in the new version.
    Add(&'a K, &'a V),
    /// The key is only in the old version.
    Remove(&'a K, &'a V),
    /// The key is in both, with values that are not equal.
    Update {
        /// The key.
        key: &'a K,
        /// Its value in the old version.
        old: &'a V,
        /// Its value in the new version.
        new: &'a V,
    },
}

/// What a lazy cursor stands on: a whole unopened subtree, or one entry.
enum Item<'a, K, V, S, const B: usize> {
    Entry(&'a K, &'a V),
    Subtree {
        key: &'a K,
        node: &'a Arc<Node<K, V, S, B>>,
        height: usize,
    },
}

impl<'a, K, V, S, const B: usize> Item<'a, K, V, S, B> {
    fn key(&self) -> &'a K {
        match *self {
            Item::Entry(k, _) | Item::Subtree { key: k, .. } => k,
        }
    }
}

/// A cursor that opens subtrees only on demand. The top frame's index is
/// always in bounds; no frames means exhausted.
struct Side<'a, K, V, S, const B: usize> {
    frames: ArrayVec<(&'a Node<K, V, S, B>, usize), MAX_DEPTH>,
    /// Levels of the root, so that the height of the current subtree is
    /// `height - frames.len()`.
    height: usize,
    opened: usize,
}

impl<'a, K, V, S, const B: usize> Side<'a, K, V, S, B> {
    fn new(root: Option<&'a Arc<Node<K, V, S, B>>>) -> Self {
        let mut side = Side {
            frames: ArrayVec::new(),
            height: root.map_or(0, Node::height),
            opened: 0,
        };
        if let Some(root) = root {
            side.open(root);
        }
        side
    }

    fn open(&mut self, node: &'a Node<K, V, S, B>) {
        self.frames.push((node, 0));
        self.opened += 1;
    }

    fn current(&self) -> Option<Item<'a, K, V, S, B>> {
        let &(node, i) = self.frames.last()?;
        Some(match node {
            Node::Leaf(l) => Item::Entry(&l.keys[i], &l.vals[i]),
            Node::Internal(n) => Item::Subtree {
                key: &n.keys[i],
                node: &n.children[i],
                height: self.height - self.frames.len(),
            },
        })
    }

    /// Steps over the current entry or subtree.
    fn advance(&mut self) {
        while let Some(top) = self.frames.last_mut() {
            top.1 += 1;
            if top.1 < top.0.len() {
                return;
            }
            self.frames.pop();
        }
    }

    /// Opens the current subtree.
    fn expand(&mut self) {
        if let Some(&(Node::Internal(n), i)) = self.frames.last() {
            self.open(&n.children[i]);
        }
    }
}

/// Iterator over the differences between two versions, in key order, from
/// [`Tree::diff`](super::Tree::diff) and [`Tree::diff_by`](super::Tree::diff_by);
/// each is a [`Diff`].
///
/// The walk opens a node only if it is not shared by both versions at the
/// current position, so versions that differ in `k` entries cost
/// `O((k + 1) log n)` node visits rather than `O(n)`. Does not allocate.
pub struct Changes<'a, K, V, S, const B: usize, F = fn(&V, &V) -> bool> {
    old: Side<'a, K, V, S, B>,
    new: Side<'a, K, V, S, B>,
    eq: F,
}

impl<'a, K, V, S, const B: usize, F> Changes<'a, K, V, S, B, F> {
    pub(crate) fn new(
        old: Option<&'a Arc<Node<K, V, S, B>>>,
        new: Option<&'a Arc<Node<K, V, S, B>>>,
        eq: F,
    ) -> Self {
        let same = match (old, new) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (a, b) => a.is_none() && b.is_none(),
        };
        let (old, new) = if same { (None, None) } else { (old, new) };
        Changes {
            old: Side::new(old),
            new: Side::new(new),
            eq,
        }
    }

    /// Nodes opened so far in both versions together. A measure of the work
    /// done: two versions that share all but a few paths open `O(log n)`
    /// nodes, a full walk opens every node of both trees.
    ///
    /// Time: O(1).
    pub fn nodes_visited(&self) -> usize {
        self.old.opened + self.new.opened
    }
}

impl<'a, K, V, S, const B: usize, F> Iterator for Changes<'a, K, V, S, B, F>
where
    K: Ord,
    F: FnMut(&V, &V) -> bool,
{
    type Item = Diff<'a, K, V>;

    fn next(&mut self) -> Option<Self::Item> {
        use Item::{Entry, Subtree};
        // Invariant: every key below both cursors has been reported. A cursor
        // whose key is strictly smaller than the other's stands on something
        // the other version cannot share, so it is reported or opened.
        loop {
            let (a, b) = match (self.old.current(), self.new.current()) {
                (None, None) => return None,
                (Some(a), Some(b)) => (a, b),
                (Some(Entry(k, v)), None) => {
                    self.old.advance();
                    return Some(Diff::Remove(k, v));
                }
                (None, Some(Entry(k, v))) => {
                    self.new.advance();
                    return Some(Diff::Add(k, v));
                }
                (Some(Subtree { .. }), None) => {
                    self.old.expand();
                    continue;
                }
                (None, Some(Subtree { .. })) => {
                    self.new.expand();
                    continue;
                }
            };
            match (a.key().cmp(b.key()), a, b) {
                (Ordering::Less, Entry(k, v), _) => {
                    self.old.advance();
                    return Some(Diff::Remove(k, v));
                }
                (Ordering::Less, Subtree { .. }, _) => self.old.expand(),
                (Ordering::Greater, _, Entry(k, v)) => {
                    self.new.advance();
                    return Some(Diff::Add(k, v));
                }
                (Ordering::Greater, _, Subtree { .. }) => self.new.expand(),
                (Ordering::Equal, Entry(k, old), Entry(_, new)) => {
                    self.old.advance();
                    self.new.advance();
                    if !(self.eq)(old, new) {
                        return Some(Diff::Update { key: k, old, new });
                    }
                }
                (
                    Ordering::Equal,
                    Subtree {
                        node: x,
                        height: hx,
                        ..
                    },
                    Subtree {
                        node: y,
                        height: hy,
                        ..
                    },
                ) => {
                    if Arc::ptr_eq(x, y) {
                        self.old.advance();
                        self.new.advance();
                    } else {
                        // Only a subtree of the same height can be shared:
                        // open the taller one, or both if equally tall.
                        if hx >= hy {
                            self.old.expand();
                        }
                        if hy >= hx {
                            self.new.expand();
                        }
                    }
                }
                (Ordering::Equal, Subtree { .. }, Entry(..)) => self.old.expand(),
                (Ordering::Equal, Entry(..), Subtree { .. }) => self.new.expand(),
            }
        }
    }
}

impl<K, V, S, const B: usize, F> FusedIterator for Changes<'_, K, V, S, B, F>
where
    K: Ord,
    F: FnMut(&V, &V) -> bool,
{
}

impl<K, V, S, const B: usize, F> std::fmt::Debug for Changes<'_, K, V, S, B, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes")
            .field("nodes_visited", &self.nodes_visited())
            .finish_non_exhaustive()
    }
}
