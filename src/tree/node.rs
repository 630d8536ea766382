//! Node layout and the structural edits: insert with split, remove with
//! borrow/merge, and bottom-up bulk building.
//!
//! Every edit works on a `&mut Node` obtained through [`Arc::make_mut`], so a
//! node shared with another version is copied before it is touched and a
//! uniquely owned node is edited in place.

use std::sync::Arc;

use arrayvec::ArrayVec;

use super::Summary;

/// A leaf: up to `B` entries, keys strictly increasing.
#[derive(Clone)]
pub(crate) struct Leaf<K, V, const B: usize> {
    pub(crate) keys: ArrayVec<K, B>,
    pub(crate) vals: ArrayVec<V, B>,
}

/// An internal node: up to `B` children, and for each child its smallest key
/// and its summary, so searches and pruning never have to open a child to
/// decide whether to enter it.
#[derive(Clone)]
pub(crate) struct Internal<K, V, S, const B: usize> {
    pub(crate) keys: ArrayVec<K, B>,
    pub(crate) sums: ArrayVec<S, B>,
    pub(crate) children: ArrayVec<Arc<Node<K, V, S, B>>, B>,
}

/// A tree node. All leaves are at the same depth.
#[derive(Clone)]
pub(crate) enum Node<K, V, S, const B: usize> {
    Leaf(Leaf<K, V, B>),
    Internal(Internal<K, V, S, B>),
}

/// Fewest entries (leaf) or children (internal) of a non-root node that is not
/// the last node of its level.
///
/// A full node plus one entry splits into `B / 2 + 1` and `B - B / 2`, both
/// `>= B / 2`; two siblings are merged only when one is below the minimum and
/// the other cannot lend, so the merge holds `2 * (B / 2) - 1 < B`.
///
/// The last node of each level (the tree's right edge) may hold fewer: an
/// append there splits off just the new entry (see [`split_point`]), so that
/// keys inserted in ascending order, as slots are created, leave the nodes
/// behind the edge full instead of half full. Only such a split makes a node
/// that small, and a removal below the minimum rebalances it as any other.
pub(crate) const fn min_len(b: usize) -> usize {
    b / 2
}

/// Fewest entries (leaf) or children (internal) of a non-root node on the
/// right edge. An internal node keeps two children, so that a child of it that
/// falls below the minimum always has a sibling to borrow from or merge with.
pub(crate) const fn min_edge_len(leaf: bool) -> usize {
    if leaf {
        1
    } else {
        2
    }
}

/// How many of the `B + 1` items a full node keeps when an insert at `pos`
/// splits it. Normally `B / 2 + 1`, so both halves hold at least `B / 2`. On
/// the right edge of the tree, for an append past the node's last item, a leaf
/// keeps all `B` and an internal node `B - 1`, the new node getting the rest
/// (one entry, two children: [`min_edge_len`]), as B-tree databases split on
/// sequential inserts.
#[inline]
fn split_point<const B: usize>(pos: usize, right_edge: bool, leaf: bool) -> usize {
    if right_edge && pos == B {
        B + 1 - min_edge_len(leaf)
    } else {
        B / 2 + 1
    }
}

/// Number of keys `<= key` in a sorted slice.
///
/// A branch-free count over the whole node: the comparisons are independent,
/// so they overlap in the pipeline, and there is no data-dependent exit to
/// mispredict. At `B = 16` it measured faster than both an early-exit scan and
/// `partition_point` (see `benches/gfn_map.rs`).
#[inline]
pub(crate) fn rank_le<K: Ord>(keys: &[K], key: &K) -> usize {
    keys.iter().map(|k| usize::from(k <= key)).sum()
}

/// Number of keys `< key` in a sorted slice.
#[inline]
pub(crate) fn rank_lt<K: Ord>(keys: &[K], key: &K) -> usize {
    keys.iter().map(|k| usize::from(k < key)).sum()
}

/// Index of the child whose key range would contain `key`: the last child
/// whose smallest key is `<= key`, or the first child if there is none.
#[inline]
pub(crate) fn child_index<K: Ord>(keys: &[K], key: &K) -> usize {
    rank_le(keys, key).saturating_sub(1)
}

/// Inserts `item` at `pos` into `arr`; if `arr` is full, splits it first,
/// keeping `left` of the `B + 1` items, and returns the upper part. For a fixed
/// `(len, pos, left)` the split is fixed, so parallel arrays split identically.
fn insert_or_split<T, const B: usize>(
    arr: &mut ArrayVec<T, B>,
    pos: usize,
    item: T,
    left: usize,
) -> Option<ArrayVec<T, B>> {
    if !arr.is_full() {
        arr.insert(pos, item);
        return None;
    }
    if pos < left {
        let right = arr.drain(left - 1..).collect();
        arr.insert(pos, item);
        Some(right)
    } else {
        let mut right: ArrayVec<T, B> = arr.drain(left..).collect();
        right.insert(pos - left, item);
        Some(right)
    }
}

fn back_to_front<T, const B: usize>(from: &mut ArrayVec<T, B>, to: &mut ArrayVec<T, B>) {
    if let Some(x) = from.pop() {
        to.insert(0, x);
    }
}

fn front_to_back<T, const B: usize>(from: &mut ArrayVec<T, B>, to: &mut ArrayVec<T, B>) {
    if !from.is_empty() {
        to.push(from.remove(0));
    }
}

impl<K, V, const B: usize> Leaf<K, V, B> {
    pub(crate) fn single(key: K, value: V) -> Self {
        let mut leaf = Leaf {
            keys: ArrayVec::new(),
            vals: ArrayVec::new(),
        };
        leaf.keys.push(key);
        leaf.vals.push(value);
        leaf
    }
}

impl<K: Ord, V, const B: usize> Leaf<K, V, B> {
    /// Where `key` is: `Ok` with its index, or `Err` with the index it would
    /// be inserted at.
    #[inline]
    pub(crate) fn find(&self, key: &K) -> Result<usize, usize> {
        let i = rank_lt(&self.keys, key);
        if self.keys.get(i) == Some(key) {
            Ok(i)
        } else {
            Err(i)
        }
    }
}

impl<K, V, S, const B: usize> Node<K, V, S, B> {
    /// Entries (leaf) or children (internal).
    #[inline]
    pub(crate) fn len(&self) -> usize {
        match self {
            Node::Leaf(l) => l.keys.len(),
            Node::Internal(n) => n.children.len(),
        }
    }

    /// Smallest key of the subtree. The node must be non-empty.
    #[inline]
    pub(crate) fn first_key(&self) -> &K {
        match self {
            Node::Leaf(l) => &l.keys[0],
            Node::Internal(n) => &n.keys[0],
        }
    }

    /// The root-to-leaf descent that every lookup and every iterator start
    /// shares: from `root` down to a leaf, taking at each internal node the
    /// child `pick` returns, and the answer `at` reads from the leaf.
    ///
    /// A `pick` that needs the path (the iterators' stack, `ceil`'s next
    /// subtree) records it as it goes. No early exit: a lookup whose answer is
    /// not below the child taken learns so at the leaf (an upper bound below
    /// the whole tree, in the leftmost leaf). Does not allocate.
    ///
    /// The walk starts from the `Arc` that holds the node (every node is held
    /// in one) and dereferences it inside the loop, so that the loop carries
    /// the pointers loaded from the parents: started from a `&Node`, `get`
    /// compiled to one more instruction per level (an add on the chain of
    /// dependent loads).
    ///
    /// Two descents do not use it. `Tree::floor` keeps its own loop, for
    /// speed (see there). `insert` and `remove` recurse instead: they go
    /// through `Arc::make_mut` at each level and fix the parent's cached key
    /// and summary on the way back up; they share the choice of child
    /// ([`child_index`]) and the search in the leaf ([`Leaf::find`]).
    #[inline]
    pub(crate) fn descend<'a, R>(
        root: &'a Arc<Self>,
        mut pick: impl FnMut(&'a Internal<K, V, S, B>) -> usize,
        at: impl FnOnce(&'a Leaf<K, V, B>) -> R,
    ) -> R {
        let mut node = root;
        loop {
            match &**node {
                Node::Internal(n) => node = &n.children[pick(n)],
                Node::Leaf(l) => return at(l),
            }
        }
    }

    /// Leftmost entry of the subtree. The node must be non-empty.
    pub(crate) fn first_entry(node: &Arc<Self>) -> (&K, &V) {
        Self::descend(node, |_| 0, |l| (&l.keys[0], &l.vals[0]))
    }

    /// Rightmost entry of the subtree. The node must be non-empty.
    pub(crate) fn last_entry(node: &Arc<Self>) -> (&K, &V) {
        Self::descend(
            node,
            |n| n.children.len() - 1,
            |l| {
                let i = l.keys.len() - 1;
                (&l.keys[i], &l.vals[i])
            },
        )
    }

    /// Levels from `node` down to the leaves, inclusive.
    pub(crate) fn height(node: &Arc<Self>) -> usize {
        let mut h = 1;
        Self::descend(
            node,
            |_| {
                h += 1;
                0
            },
            |_| (),
        );
        h
    }

    /// Nodes in the subtree.
    #[cfg(any(test, feature = "invariants"))]
    pub(crate) fn count(&self) -> usize {
        match self {
            Node::Leaf(_) => 1,
            Node::Internal(n) => 1 + n.children.iter().map(|c| c.count()).sum::<usize>(),
        }
    }
}

impl<K: Ord + Copy, V: Clone, S: Summary<K, V>, const B: usize> Node<K, V, S, B> {
    /// Summary of the subtree, from the entries (leaf) or the cached child
    /// summaries (internal). The node must be non-empty.
    pub(crate) fn summary(&self) -> S {
        let s = match self {
            Node::Leaf(l) => l
                .keys
                .iter()
                .zip(&l.vals)
                .map(|(k, v)| S::of_entry(k, v))
                .reduce(S::combine),
            Node::Internal(n) => n.sums.iter().copied().reduce(S::combine),
        };
        s.expect("summary of an empty node")
    }

    /// Inserts or replaces. Returns the replaced value and, if this node split,
    /// the new right sibling (to be linked by the caller). `right_edge`: this
    /// node is the last of its level.
    pub(crate) fn insert(
        &mut self,
        key: K,
        value: V,
        right_edge: bool,
    ) -> (Option<V>, Option<Self>) {
        match self {
            Node::Leaf(l) => {
                let pos = match l.find(&key) {
                    Ok(pos) => return (Some(std::mem::replace(&mut l.vals[pos], value)), None),
                    Err(pos) => pos,
                };
                // Same length and position, so both arrays split or neither does.
                let left = split_point::<B>(pos, right_edge, true);
                let keys = insert_or_split(&mut l.keys, pos, key, left);
                let vals = insert_or_split(&mut l.vals, pos, value, left);
                let right = keys.zip(vals).map(|(keys, vals)| Leaf { keys, vals });
                (None, right.map(Node::Leaf))
            }
            Node::Internal(n) => {
                let i = child_index(&n.keys, &key);
                let last = i + 1 == n.children.len();
                let child = Arc::make_mut(&mut n.children[i]);
                let (old, split) = child.insert(key, value, right_edge && last);
                n.keys[i] = *child.first_key();
                n.sums[i] = child.summary();
                let Some(right) = split else {
                    return (old, None);
                };
                let (k, s) = (*right.first_key(), right.summary());
                let split = n.insert_child(i + 1, k, s, Arc::new(right), right_edge);
                (old, split.map(Node::Internal))
            }
        }
    }

    /// Removes `key`, rebalancing children that fall below the minimum.
    /// Callers check presence first, so that a miss copies nothing.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        match self {
            Node::Leaf(l) => {
                let pos = l.find(key).ok()?;
                l.keys.remove(pos);
                Some(l.vals.remove(pos))
            }
            Node::Internal(n) => {
                let i = child_index(&n.keys, key);
                let child = Arc::make_mut(&mut n.children[i]);
                let old = child.remove(key)?;
                if child.len() < min_len(B) {
                    n.rebalance(i);
                } else {
                    n.refresh(i);
                }
                Some(old)
            }
        }
    }

    /// Moves the last entry/child of `left` to the front of `right`.
    fn shift_right(left: &mut Self, right: &mut Self) {
        match (left, right) {
            (Node::Leaf(l), Node::Leaf(r)) => {
                back_to_front(&mut l.keys, &mut r.keys);
                back_to_front(&mut l.vals, &mut r.vals);
            }
            (Node::Internal(l), Node::Internal(r)) => {
                back_to_front(&mut l.keys, &mut r.keys);
                back_to_front(&mut l.sums, &mut r.sums);
                back_to_front(&mut l.children, &mut r.children);
            }
            _ => unreachable!("siblings at different heights"),
        }
    }

    /// Moves the first entry/child of `right` to the back of `left`.
    fn shift_left(left: &mut Self, right: &mut Self) {
        match (left, right) {
            (Node::Leaf(l), Node::Leaf(r)) => {
                front_to_back(&mut r.keys, &mut l.keys);
                front_to_back(&mut r.vals, &mut l.vals);
            }
            (Node::Internal(l), Node::Internal(r)) => {
                front_to_back(&mut r.keys, &mut l.keys);
                front_to_back(&mut r.sums, &mut l.sums);
                front_to_back(&mut r.children, &mut l.children);
            }
            _ => unreachable!("siblings at different heights"),
        }
    }

    /// Appends all of `right` to `self`.
    fn append(&mut self, right: Self) {
        match (self, right) {
            (Node::Leaf(l), Node::Leaf(r)) => {
                l.keys.extend(r.keys);
                l.vals.extend(r.vals);
            }
            (Node::Internal(l), Node::Internal(r)) => {
                l.keys.extend(r.keys);
                l.sums.extend(r.sums);
                l.children.extend(r.children);
            }
            _ => unreachable!("siblings at different heights"),
        }
    }

    /// Builds a tree from entries sorted by strictly increasing key, packing
    /// nodes as full as the bounds allow. Returns the root, or `None` if empty.
    pub(crate) fn build(entries: Vec<(K, V)>) -> Option<Arc<Self>> {
        let mut entries = entries.into_iter();
        let n = entries.len();
        let mut level: Vec<Arc<Self>> = even_chunks(n, B)
            .map(|size| {
                let mut leaf = Leaf {
                    keys: ArrayVec::new(),
                    vals: ArrayVec::new(),
                };
                for (k, v) in entries.by_ref().take(size) {
                    leaf.keys.push(k);
                    leaf.vals.push(v);
                }
                Arc::new(Node::Leaf(leaf))
            })
            .collect();
        while level.len() > 1 {
            let mut nodes = level.into_iter();
            let n = nodes.len();
            level = even_chunks(n, B)
                .map(|size| {
                    let mut node = Internal {
                        keys: ArrayVec::new(),
                        sums: ArrayVec::new(),
                        children: ArrayVec::new(),
                    };
                    for child in nodes.by_ref().take(size) {
                        node.keys.push(*child.first_key());
                        node.sums.push(child.summary());
                        node.children.push(child);
                    }
                    Arc::new(Node::Internal(node))
                })
                .collect();
        }
        level.pop()
    }
}

/// Sizes of `m = ceil(n / b)` chunks covering `n` items as evenly as possible.
/// Each is at most `b`, and when `m >= 2` at least `b / 2`, because
/// `n > b * (m - 1)` gives `n / m > b * (m - 1) / m >= b / 2`.
fn even_chunks(n: usize, b: usize) -> impl Iterator<Item = usize> {
    let m = n.div_ceil(b);
    (0..m).map(move |i| n / m + usize::from(i < n % m))
}

impl<K: Ord + Copy, V: Clone, S: Summary<K, V>, const B: usize> Internal<K, V, S, B> {
    /// Recomputes the cached key and summary of child `i`.
    fn refresh(&mut self, i: usize) {
        let child = &self.children[i];
        self.keys[i] = *child.first_key();
        self.sums[i] = child.summary();
    }

    /// Inserts a child at `pos`, splitting this node if it is full.
    fn insert_child(
        &mut self,
        pos: usize,
        key: K,
        sum: S,
        child: Arc<Node<K, V, S, B>>,
        right_edge: bool,
    ) -> Option<Self> {
        let left = split_point::<B>(pos, right_edge, false);
        let keys = insert_or_split(&mut self.keys, pos, key, left);
        let sums = insert_or_split(&mut self.sums, pos, sum, left);
        let children = insert_or_split(&mut self.children, pos, child, left);
        Some(Internal {
            keys: keys?,
            sums: sums?,
            children: children?,
        })
    }

    /// Restores the minimum size of child `i` (which is one below it) by
    /// borrowing from a sibling that can spare an entry, else by merging with
    /// a sibling. Only the siblings actually touched are copied.
    fn rebalance(&mut self, i: usize) {
        let min = min_len(B);
        if i > 0 && self.children[i - 1].len() > min {
            let (l, r) = self.children.split_at_mut(i);
            Node::shift_right(Arc::make_mut(&mut l[i - 1]), Arc::make_mut(&mut r[0]));
            self.refresh(i - 1);
            self.refresh(i);
        } else if i + 1 < self.children.len() && self.children[i + 1].len() > min {
            let (l, r) = self.children.split_at_mut(i + 1);
            Node::shift_left(Arc::make_mut(&mut l[i]), Arc::make_mut(&mut r[0]));
            self.refresh(i);
            self.refresh(i + 1);
        } else {
            // Merge the pair (j, j + 1) that contains child i.
            let j = i.saturating_sub(1);
            let right = self.children.remove(j + 1);
            self.keys.remove(j + 1);
            self.sums.remove(j + 1);
            Arc::make_mut(&mut self.children[j]).append(Arc::unwrap_or_clone(right));
            self.refresh(j);
        }
    }
}
