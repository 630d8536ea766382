//! Non-allocating iterators: the descent path lives in a fixed-capacity
//! [`ArrayVec`] of [`MAX_DEPTH`] frames.

use std::iter::FusedIterator;
use std::ops::Bound;
use std::sync::Arc;

use arrayvec::ArrayVec;

use super::node::{child_index, rank_le, rank_lt, Internal, Leaf, Node};
use super::Visitor;
use super::{Summary, Visit, MAX_DEPTH};

/// The internal nodes on a path from the root, each with the index of the
/// child taken.
type Path<'a, K, V, S, const B: usize> = ArrayVec<(&'a Internal<K, V, S, B>, usize), MAX_DEPTH>;

/// [`Node::descend`] from `node` with `pick`, pushing each internal node
/// passed and the child taken onto `path`.
#[inline]
fn descend_onto<'a, K, V, S, const B: usize>(
    path: &mut Path<'a, K, V, S, B>,
    node: &'a Arc<Node<K, V, S, B>>,
    mut pick: impl FnMut(&'a Internal<K, V, S, B>) -> usize,
) -> &'a Leaf<K, V, B> {
    Node::descend(
        node,
        |n| {
            let i = pick(n);
            path.push((n, i));
            i
        },
        |l| l,
    )
}

/// A bound's key and whether the bound includes it; `None` when unbounded.
fn bound_key<K>(bound: Bound<&K>) -> Option<(&K, bool)> {
    match bound {
        Bound::Unbounded => None,
        Bound::Included(k) => Some((k, true)),
        Bound::Excluded(k) => Some((k, false)),
    }
}

/// A position on one entry: the internal nodes on the path with the index of
/// the child taken, plus the leaf and the index in it.
pub(crate) struct Cursor<'a, K, V, S, const B: usize> {
    stack: Path<'a, K, V, S, B>,
    leaf: &'a Leaf<K, V, B>,
    pos: usize,
}

impl<K, V, S, const B: usize> Clone for Cursor<'_, K, V, S, B> {
    fn clone(&self) -> Self {
        Cursor {
            stack: self.stack.clone(),
            leaf: self.leaf,
            pos: self.pos,
        }
    }
}

impl<'a, K: Ord, V, S, const B: usize> Cursor<'a, K, V, S, B> {
    /// The first entry of the subtree.
    pub(crate) fn first(root: &'a Arc<Node<K, V, S, B>>) -> Self {
        Self::descend(root, |_| 0)
    }

    /// The last entry of the subtree.
    pub(crate) fn last(root: &'a Arc<Node<K, V, S, B>>) -> Self {
        let mut cursor = Self::descend(root, |n| n.children.len() - 1);
        cursor.pos = cursor.leaf.keys.len() - 1;
        cursor
    }

    /// The first entry inside `bound` taken as a lower bound, if any.
    pub(crate) fn lower_bound(root: &'a Arc<Node<K, V, S, B>>, bound: Bound<&K>) -> Option<Self> {
        let Some((k, inclusive)) = bound_key(bound) else {
            return Some(Self::first(root));
        };
        let mut cursor = Self::descend(root, |n| child_index(&n.keys, k));
        let keys = &cursor.leaf.keys;
        cursor.pos = if inclusive {
            rank_lt(keys, k)
        } else {
            rank_le(keys, k)
        };
        // Every key of this leaf is below the bound: the answer starts the next leaf.
        if cursor.pos < keys.len() || cursor.next_leaf() {
            Some(cursor)
        } else {
            None
        }
    }

    /// The last entry inside `bound` taken as an upper bound, if any.
    pub(crate) fn upper_bound(root: &'a Arc<Node<K, V, S, B>>, bound: Bound<&K>) -> Option<Self> {
        let Some((k, inclusive)) = bound_key(bound) else {
            return Some(Self::last(root));
        };
        // Keys inside the bound.
        let inside = |keys: &[K]| {
            if inclusive {
                rank_le(keys, k)
            } else {
                rank_lt(keys, k)
            }
        };
        // Each child taken is the last whose smallest key is inside the bound,
        // so the leaf reached holds the answer; if no child's is, the whole
        // tree is above the bound, and the leftmost leaf has no key inside it.
        let mut cursor = Self::descend(root, |n| inside(&n.keys).saturating_sub(1));
        cursor.pos = inside(&cursor.leaf.keys).checked_sub(1)?;
        Some(cursor)
    }
}

impl<'a, K, V, S, const B: usize> Cursor<'a, K, V, S, B> {
    /// A cursor on the leaf reached from `root` by [`Node::descend`] with
    /// `pick`, at position 0; the path taken is its stack.
    #[inline]
    fn descend(
        root: &'a Arc<Node<K, V, S, B>>,
        pick: impl FnMut(&'a Internal<K, V, S, B>) -> usize,
    ) -> Self {
        let mut stack = ArrayVec::new();
        let leaf = descend_onto(&mut stack, root, pick);
        Cursor {
            stack,
            leaf,
            pos: 0,
        }
    }

    #[inline]
    pub(crate) fn get(&self) -> (&'a K, &'a V) {
        (&self.leaf.keys[self.pos], &self.leaf.vals[self.pos])
    }

    /// Same entry as `other` (both cursors on the same tree).
    #[inline]
    fn same(&self, other: &Self) -> bool {
        std::ptr::eq(self.leaf, other.leaf) && self.pos == other.pos
    }

    /// Moves to the next entry; `false` (and the cursor is spent) at the end.
    #[inline]
    pub(crate) fn next(&mut self) -> bool {
        if self.pos + 1 < self.leaf.keys.len() {
            self.pos += 1;
            true
        } else {
            self.next_leaf()
        }
    }

    /// Moves to the first entry of the next leaf.
    fn next_leaf(&mut self) -> bool {
        while let Some(top) = self.stack.last_mut() {
            let n: &'a Internal<K, V, S, B> = top.0;
            if top.1 + 1 < n.children.len() {
                top.1 += 1;
                let child = &n.children[top.1];
                self.leaf = descend_onto(&mut self.stack, child, |_| 0);
                self.pos = 0;
                return true;
            }
            self.stack.pop();
        }
        false
    }

    /// Moves to the previous entry; `false` (and the cursor is spent) at the
    /// start.
    #[inline]
    pub(crate) fn prev(&mut self) -> bool {
        if self.pos > 0 {
            self.pos -= 1;
            return true;
        }
        while let Some(top) = self.stack.last_mut() {
            let n: &'a Internal<K, V, S, B> = top.0;
            if top.1 > 0 {
                top.1 -= 1;
                let child = &n.children[top.1];
                self.leaf = descend_onto(&mut self.stack, child, |n| n.children.len() - 1);
                self.pos = self.leaf.keys.len() - 1;
                return true;
            }
            self.stack.pop();
        }
        false
    }
}

/// Double-ended iterator over the entries of a [`Tree`](super::Tree) in key
/// order, from [`Tree::iter`](super::Tree::iter). Does not allocate.
pub struct Iter<'a, K, V, S, const B: usize> {
    front: Option<Cursor<'a, K, V, S, B>>,
    back: Option<Cursor<'a, K, V, S, B>>,
    remaining: usize,
}

impl<'a, K: Ord, V, S, const B: usize> Iter<'a, K, V, S, B> {
    pub(crate) fn new(root: Option<&'a Arc<Node<K, V, S, B>>>, len: usize) -> Self {
        Iter {
            front: root.map(Cursor::first),
            back: root.map(Cursor::last),
            remaining: len,
        }
    }
}

impl<K, V, S, const B: usize> Clone for Iter<'_, K, V, S, B> {
    fn clone(&self) -> Self {
        Iter {
            front: self.front.clone(),
            back: self.back.clone(),
            remaining: self.remaining,
        }
    }
}

impl<'a, K, V, S, const B: usize> Iterator for Iter<'a, K, V, S, B> {
    type Item = (&'a K, &'a V);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let cursor = self.front.as_mut()?;
        let item = cursor.get();
        if self.remaining > 0 {
            cursor.next();
        }
        Some(item)
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<K, V, S, const B: usize> DoubleEndedIterator for Iter<'_, K, V, S, B> {
    #[inline]
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let cursor = self.back.as_mut()?;
        let item = cursor.get();
        if self.remaining > 0 {
            cursor.prev();
        }
        Some(item)
    }
}

impl<K, V, S, const B: usize> ExactSizeIterator for Iter<'_, K, V, S, B> {}
impl<K, V, S, const B: usize> FusedIterator for Iter<'_, K, V, S, B> {}

/// Front and back cursors of a non-empty range.
type Ends<'a, K, V, S, const B: usize> = (Cursor<'a, K, V, S, B>, Cursor<'a, K, V, S, B>);

/// Double-ended iterator over the entries of a [`Tree`](super::Tree) whose keys
/// fall in a range, in key order, from [`Tree::range`](super::Tree::range).
/// Does not allocate. Not `ExactSizeIterator`: nodes do not store subtree
/// sizes, which would cost a slot per child and an update per level per edit.
pub struct Range<'a, K, V, S, const B: usize> {
    /// `None` once exhausted; otherwise the next entries to yield from each end.
    ends: Option<Ends<'a, K, V, S, B>>,
}

impl<'a, K: Ord, V, S, const B: usize> Range<'a, K, V, S, B> {
    pub(crate) fn new(
        root: Option<&'a Arc<Node<K, V, S, B>>>,
        start: Bound<&K>,
        end: Bound<&K>,
    ) -> Self {
        let ends = root.and_then(|root| {
            let front = Cursor::lower_bound(root, start)?;
            let back = Cursor::upper_bound(root, end)?;
            (front.get().0 <= back.get().0).then_some((front, back))
        });
        Range { ends }
    }
}

impl<K, V, S, const B: usize> Clone for Range<'_, K, V, S, B> {
    fn clone(&self) -> Self {
        Range {
            ends: self.ends.clone(),
        }
    }
}

impl<'a, K, V, S, const B: usize> Iterator for Range<'a, K, V, S, B> {
    type Item = (&'a K, &'a V);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let (front, back) = self.ends.as_mut()?;
        let item = front.get();
        if front.same(back) || !front.next() {
            self.ends = None;
        }
        Some(item)
    }
}

impl<K, V, S, const B: usize> DoubleEndedIterator for Range<'_, K, V, S, B> {
    #[inline]
    fn next_back(&mut self) -> Option<Self::Item> {
        let (front, back) = self.ends.as_mut()?;
        let item = back.get();
        if front.same(back) || !back.prev() {
            self.ends = None;
        }
        Some(item)
    }
}

impl<K, V, S, const B: usize> FusedIterator for Range<'_, K, V, S, B> {}

/// Pruned in-order iterator from [`Tree::search`](super::Tree::search): yields
/// the entries whose subtrees and entries were all `Enter`ed by the visitor.
/// Does not allocate.
///
/// A leaf is visited whole when it is opened: the visitor is called on its
/// entries in key order up to the first `Stop`, and the entries it entered are
/// kept as a bit mask and yielded from there. The scan is then one loop with a
/// single exit, which for a small set (one leaf) is most of the query.
pub struct Search<'a, K, V, S, F, const B: usize> {
    stack: Path<'a, K, V, S, B>,
    /// The entries of the leaf opened last.
    keys: &'a [K],
    vals: &'a [V],
    /// Bit `i` set: entry `i` of `keys` / `vals` was entered and is not yet yielded.
    hits: u64,
    visit: F,
    /// No more nodes to open (the pending hits are still yielded).
    done: bool,
    nodes: usize,
}

impl<'a, K, V, S, F, const B: usize> Search<'a, K, V, S, F, B>
where
    S: Summary<K, V>,
    F: Visitor<K, S>,
{
    #[inline]
    pub(crate) fn new(root: Option<&'a Node<K, V, S, B>>, visit: F) -> Self {
        const { assert!(B <= 64, "a leaf's hits are kept in a u64") };
        let mut search = Search {
            stack: ArrayVec::new(),
            keys: &[],
            vals: &[],
            hits: 0,
            visit,
            done: root.is_none(),
            nodes: 0,
        };
        if let Some(root) = root {
            search.enter(root);
        }
        search
    }

    #[inline]
    fn enter(&mut self, node: &'a Node<K, V, S, B>) {
        self.nodes += 1;
        match node {
            Node::Internal(n) => self.stack.push((n, 0)),
            Node::Leaf(l) => {
                let mut hits = 0u64;
                for (i, (k, v)) in l.keys.iter().zip(&l.vals).enumerate() {
                    let visit = self.visit.visit(k, &S::of_entry(k, v));
                    if visit == Visit::Stop {
                        self.done = true;
                        break;
                    }
                    hits |= u64::from(visit == Visit::Enter) << i;
                }
                (self.keys, self.vals, self.hits) = (&l.keys, &l.vals, hits);
            }
        }
    }
}

impl<K, V, S, F, const B: usize> Search<'_, K, V, S, F, B> {
    /// Nodes opened so far (the root, and every child the visitor entered).
    /// A measure of the work done, for tests and tuning.
    ///
    /// Time: O(1).
    pub fn nodes_visited(&self) -> usize {
        self.nodes
    }
}

impl<'a, K, V, S, F, const B: usize> Iterator for Search<'a, K, V, S, F, B>
where
    S: Summary<K, V>,
    F: Visitor<K, S>,
{
    type Item = (&'a K, &'a V);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.hits != 0 {
                let i = self.hits.trailing_zeros() as usize;
                self.hits &= self.hits - 1;
                return self.keys.get(i).zip(self.vals.get(i));
            }
            if self.done {
                return None;
            }
            let Some(top) = self.stack.last_mut() else {
                self.done = true;
                return None;
            };
            let (n, i) = (top.0, top.1);
            if i == n.children.len() {
                self.stack.pop();
                continue;
            }
            top.1 += 1;
            match self.visit.visit(&n.keys[i], &n.sums[i]) {
                Visit::Enter => self.enter(&n.children[i]),
                Visit::Skip => {}
                Visit::Stop => self.done = true,
            }
        }
    }
}

impl<K, V, S, F, const B: usize> FusedIterator for Search<'_, K, V, S, F, B>
where
    S: Summary<K, V>,
    F: Visitor<K, S>,
{
}

impl<K, V, S, const B: usize> std::fmt::Debug for Iter<'_, K, V, S, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iter")
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl<K, V, S, const B: usize> std::fmt::Debug for Range<'_, K, V, S, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Range")
            .field("exhausted", &self.ends.is_none())
            .finish_non_exhaustive()
    }
}

impl<K, V, S, F, const B: usize> std::fmt::Debug for Search<'_, K, V, S, F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Search")
            .field("nodes_visited", &self.nodes)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
