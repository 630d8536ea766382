//! Persistent (immutable, structurally shared) B+tree map with a pluggable
//! per-subtree summary.
//!
//! # Design
//!
//! * **Persistent.** A [`Tree`] is a root `Arc` and a length. Cloning it
//!   clones the `Arc`, O(1). Readers hold a version that never changes under
//!   them, so lookups need no lock: a writer builds the next version and
//!   publishes it, and old versions stay valid for as long as anyone holds
//!   them.
//! * **Path copying through [`Arc::make_mut`].** An edit walks from the root
//!   to a leaf calling `Arc::make_mut` on each node it changes. A node shared
//!   with another version is copied (one node per level, so O(log n)
//!   allocations); a node only this version owns is edited in place, so a
//!   writer that does not keep old versions around does no copying at all.
//!   Untouched subtrees are shared between the versions, which is also what
//!   makes [`Tree::diff`] cheap.
//! * **Why a B+tree.** Entries live only in leaves; internal nodes hold, for
//!   each child, its smallest key and its summary. Keys are stored inline in a
//!   flat array ([`arrayvec::ArrayVec`]), so a node is searched as a small
//!   array (a branch-free count over one or two cache lines) instead of
//!   chasing one pointer per comparison as in a binary tree; the depth is
//!   `log_{B/2} n`, so a lookup makes a handful of pointer hops; and an edit
//!   copies one node of at most `B` entries per level.
//! * **Summaries.** A [`Summary`] is a monoid-like value computed per entry
//!   and combined over subtrees; each internal node caches its children's
//!   summaries. [`Tree::search`] uses them (with the children's smallest
//!   keys) to prune whole subtrees, e.g. keys `(start, id)` with the maximum
//!   end as summary answer interval-overlap queries. With `S = ()` the cache
//!   is a zero-sized array and costs nothing.
//! * **No allocation on reads.** Lookups walk down with plain references;
//!   iterators keep their path in a fixed-capacity array of [`MAX_DEPTH`]
//!   frames.
//!
//! # Node bounds
//!
//! A leaf holds at most `B` entries, an internal node at most `B` children.
//! Every node but the root and the last node of each level holds at least
//! `B / 2`; the root holds at least one entry (leaf) or two children
//! (internal), and so does the last node of each level; all leaves are at the
//! same depth. `B` must be at least 4, and at most 64 for [`Tree::search`].
//!
//! The exception on the right edge is what lets ascending inserts (slots
//! created one after another, at rising ids and addresses) fill nodes: a full
//! leaf on the right edge that receives a key past its last splits off just
//! that key and stays full (an internal node there keeps `B - 1`), where the usual split into halves would leave
//! every node behind the edge half full, the tree a level deeper at 32764
//! entries, and each update copying that extra level.
//!
//! # Choice of `B`
//!
//! The default `B = 16` keeps a node's `u64` keys in two cache lines, and an
//! edit copies at most 16 entries per level. On the slot-lookup benchmark
//! (`cargo bench --features invariants --bench gfn_map`, 32764 slots, criterion medians) a packed
//! `B = 16` tree answered `floor` in 23.8 ns against 32.2 ns for `B = 32` and
//! 34.0 ns for `partition_point` on a sorted `Vec`; built by inserts, 49.8 ns
//! against 45.7 ns for `B = 32`. A persistent insert plus remove cost 1.24 us
//! against 1.71 us for `B = 32`. Within a node the branch-free count beat both
//! an early-exit scan and binary search at `B = 16`.

use std::fmt;
use std::ops::RangeBounds;
use std::sync::Arc;

#[cfg(any(test, feature = "invariants"))]
mod check;
mod diff;
mod iter;
mod node;
#[cfg(test)]
mod tests;

#[cfg(any(test, feature = "invariants"))]
#[cfg_attr(docsrs, doc(cfg(feature = "invariants")))]
pub use check::Violation;
pub use diff::{Changes, Diff};
pub use iter::{Iter, Range, Search};

use node::{child_index, rank_le, rank_lt, Leaf, Node};

/// Most levels (counting the leaves) a tree may have; the capacity of the
/// iterators' path stacks.
///
/// Every node off the root and the right edge has at least `B / 2` entries or
/// children, so the first child of the root of a tree of `d` levels holds at
/// least `(B / 2)^(d - 1)` entries: more than 20 levels needs over `10^18`
/// entries at the default `B = 16` and over `10^6` even at the smallest
/// `B = 4`. `insert` asserts it. Kept small because every
/// iterator carries a stack of this many frames inline, and iterators are
/// returned and moved by value.
pub const MAX_DEPTH: usize = 20;

/// The node width [`Tree`] uses unless told otherwise, and so the width of the memslot set's
/// trees.
///
/// Built with `--cfg memslots_small_nodes` (tests only; `.ci/run` does it) it is 4, the smallest
/// width, so that a handful of slots already makes trees of several levels and the differential
/// tests meet splits, merges and multi-level searches.
pub const DEFAULT_B: usize = if cfg!(memslots_small_nodes) { 4 } else { 16 };

/// Per-subtree summary (augmentation), cached for every child of every
/// internal node. `()` is the no-summary case.
///
/// `combine` must be associative: the summary of a subtree is the `combine` of
/// its entries' `of_entry` in key order, grouped by the tree's shape, which
/// changes with edits.
///
/// The tree itself asks only `Copy` of a summary: it is cached by value in the
/// nodes and copied when they are. `Tree::check_invariants` (feature `invariants`) also needs
/// `PartialEq`, to compare each cached summary with one recomputed. A tree is
/// `Send` and `Sync` when its keys, values and summary are.
///
/// ```
/// use memslots::tree::Summary;
///
/// /// Largest interval end in a subtree; keys are `(start, id)`, values ends.
/// #[derive(Clone, Copy, Debug, PartialEq)]
/// struct MaxEnd(u64);
///
/// impl Summary<(u64, u32), u64> for MaxEnd {
///     fn of_entry(_key: &(u64, u32), end: &u64) -> Self {
///         MaxEnd(*end)
///     }
///     fn combine(self, other: Self) -> Self {
///         MaxEnd(self.0.max(other.0))
///     }
/// }
///
/// let tree: memslots::tree::Tree<(u64, u32), u64, MaxEnd> =
///     [((0, 1), 10), ((4, 2), 30), ((8, 3), 12)].into_iter().collect();
/// assert_eq!(tree.summary(), Some(MaxEnd(30)));
/// ```
pub trait Summary<K, V>: Copy {
    /// Summary of a single entry.
    fn of_entry(key: &K, value: &V) -> Self;
    /// Summary of two adjacent runs of entries, `self` before `other`.
    fn combine(self, other: Self) -> Self;
}

impl<K, V> Summary<K, V> for () {
    #[inline]
    fn of_entry(_: &K, _: &V) {}
    #[inline]
    fn combine(self, _: Self) {}
}

/// Decision of a [`Tree::search`] visitor about a subtree or an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// Do not look inside (for an entry: do not yield it).
    Skip,
    /// Descend into the subtree (for an entry: yield it).
    Enter,
    /// End the whole search: nothing after this point can match.
    Stop,
}

/// Decides, for [`Tree::search_by`], which subtrees and entries to look into.
///
/// Any `FnMut(&K, &S) -> Visit` closure is a visitor; implement the trait on a named type when
/// the search iterator must be named (a field of a struct, a return type).
pub trait Visitor<K, S> {
    /// Called with the smallest key of a subtree (or an entry's key) and its summary.
    fn visit(&mut self, min_key: &K, summary: &S) -> Visit;
}

impl<K, S, F: FnMut(&K, &S) -> Visit> Visitor<K, S> for F {
    #[inline]
    fn visit(&mut self, min_key: &K, summary: &S) -> Visit {
        self(min_key, summary)
    }
}

/// Persistent B+tree map. `B` is the most entries per leaf and the most
/// children per internal node.
///
/// Cloning is O(1) and the clone shares all nodes; edits copy only the nodes
/// on the edited path that are shared. The tree is `Send + Sync` when `K`, `V`
/// and `S` are.
///
/// | operation | cost |
/// |---|---|
/// | `new`, `len`, `is_empty`, `clone`, `ptr_eq` | O(1) |
/// | `get`, `floor`, `ceil`, `first`, `last` | O(log n), no allocation |
/// | `summary` | O(B) |
/// | `insert`, `remove` | O(log n); O(log n) node copies if shared, none if owned |
/// | `update`, `without` | O(log n), O(log n) node copies |
/// | `iter`, `range` | O(log n) to start, O(1) amortised per entry, no allocation |
/// | `search` | O(log n) per entered path, no allocation |
/// | `diff` | O((k + 1) log n) for k differences between related versions; O(1) if `ptr_eq` |
/// | `from_iter` | O(n log n) (sort, then a packed bottom-up build) |
/// | `eq` | O(1) if `ptr_eq`, else O(n) |
/// | `check_invariants`, `node_count` | O(n) |
/// | `depth` | O(log n) |
///
/// Here `log n` stands for the depth, `log_{B/2} n`, times the O(B) scan of a
/// node.
///
/// ```
/// use memslots::tree::Tree;
///
/// let mut v1: Tree<u64, &str> = Tree::new();
/// v1.insert(0x1000, "low");
/// v1.insert(0x8000, "high");
/// let v2 = v1.update(0x4000, "mid"); // v1 is unchanged
///
/// assert_eq!(v1.len(), 2);
/// assert_eq!(v2.floor(&0x4fff), Some((&0x4000, &"mid")));
/// assert_eq!(v1.floor(&0x4fff), Some((&0x1000, &"low")));
/// assert_eq!(v2.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [0x1000, 0x4000, 0x8000]);
/// ```
pub struct Tree<K, V, S = (), const B: usize = DEFAULT_B> {
    root: Option<Arc<Node<K, V, S, B>>>,
    len: usize,
}

impl<K, V, S, const B: usize> Clone for Tree<K, V, S, B> {
    /// Time: O(1).
    fn clone(&self) -> Self {
        Tree {
            root: self.root.clone(),
            len: self.len,
        }
    }
}

impl<K: Ord + Copy, V: Clone, S: Summary<K, V>, const B: usize> Default for Tree<K, V, S, B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Ord + Copy, V: Clone, S: Summary<K, V>, const B: usize> Tree<K, V, S, B> {
    /// An empty tree.
    ///
    /// Time: O(1).
    ///
    /// ```
    /// use memslots::tree::Tree;
    /// let t: Tree<u64, u64> = Tree::new();
    /// assert!(t.is_empty());
    /// ```
    pub fn new() -> Self {
        const { assert!(B >= 4, "Tree needs B >= 4") };
        Tree { root: None, len: 0 }
    }

    /// Number of entries.
    ///
    /// Time: O(1).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tree has no entries.
    ///
    /// Time: O(1).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether both are the same version: the same root node, or both empty.
    /// `true` implies equal contents; `false` says nothing.
    ///
    /// Time: O(1).
    ///
    /// ```
    /// use memslots::tree::Tree;
    /// let a: Tree<u8, u8> = [(1, 1)].into_iter().collect();
    /// let b = a.clone();
    /// assert!(a.ptr_eq(&b));
    /// assert!(!a.ptr_eq(&b.update(2, 2)));
    /// ```
    pub fn ptr_eq(&self, other: &Self) -> bool {
        match (&self.root, &other.root) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }

    /// The value stored under `key`.
    ///
    /// Time: O(log n). Does not allocate.
    ///
    /// ```
    /// use memslots::tree::Tree;
    /// let t: Tree<u32, char> = [(1, 'a'), (5, 'e')].into_iter().collect();
    /// assert_eq!(t.get(&5), Some(&'e'));
    /// assert_eq!(t.get(&4), None);
    /// ```
    pub fn get(&self, key: &K) -> Option<&V> {
        Node::descend(
            self.root.as_ref()?,
            |n| child_index(&n.keys, key),
            |l| l.find(key).ok().map(|i| &l.vals[i]),
        )
    }

    /// The entry with the greatest key `<= key`: "which slot starts at or
    /// before this address".
    ///
    /// Time: O(log n), one root-to-leaf descent. Does not allocate.
    ///
    /// ```
    /// use memslots::tree::Tree;
    /// let t: Tree<u64, u64> = [(0, 16), (16, 48), (64, 8)].into_iter().collect();
    /// assert_eq!(t.floor(&20), Some((&16, &48)));
    /// assert_eq!(t.floor(&64), Some((&64, &8)));
    /// let t2: Tree<u64, u64> = [(10, 1)].into_iter().collect();
    /// assert_eq!(t2.floor(&9), None);
    /// ```
    #[inline]
    pub fn floor(&self, key: &K) -> Option<(&K, &V)> {
        // The gfn lookup, so its own loop rather than `Node::descend`: there
        // the choice of child cannot end the descent (the decrement below
        // becomes a saturating one, on the chain of dependent loads) and the
        // compiler no longer sees that the entry found is not null, so it
        // tests the `Option` again. That measured about 10% slower on trees
        // of one and two levels (10 and 509 entries, `B = 16`).
        let mut node = self.root.as_deref()?;
        loop {
            // Cached child keys are exact subtree minima, so the floor is in
            // the last child whose minimum is <= key: no backtracking.
            match node {
                Node::Internal(n) => node = &n.children[rank_le(&n.keys, key).checked_sub(1)?],
                Node::Leaf(l) => {
                    let i = rank_le(&l.keys, key).checked_sub(1)?;
                    return Some((&l.keys[i], &l.vals[i]));
                }
            }
        }
    }

    /// The entry with the smallest key `>= key`.
    ///
    /// Time: O(log n). Does not allocate.
    ///
    /// ```
    /// use memslots::tree::Tree;
    /// let t: Tree<u64, ()> = [(0, ()), (16, ()), (64, ())].into_iter().collect();
    /// assert_eq!(t.ceil(&17).map(|(k, _)| *k), Some(64));
    /// assert_eq!(t.ceil(&16).map(|(k, _)| *k), Some(16));
    /// assert_eq!(t.ceil(&65), None);
    /// ```
    pub fn ceil(&self, key: &K) -> Option<(&K, &V)> {
        // Nearest subtree right of the path: holds the answer if the leaf
        // reached has no key >= `key`.
        let mut next: Option<&Arc<Node<K, V, S, B>>> = None;
        let in_leaf = Node::descend(
            self.root.as_ref()?,
            |n| {
                let i = child_index(&n.keys, key);
                if let Some(c) = n.children.get(i + 1) {
                    next = Some(c);
                }
                i
            },
            |l| {
                let i = rank_lt(&l.keys, key);
                l.keys.get(i).map(|k| (k, &l.vals[i]))
            },
        );
        in_leaf.or_else(|| next.map(Node::first_entry))
    }

    /// The entry with the smallest key.
    ///
    /// Time: O(log n).
    ///
    /// ```
    /// use memslots::tree::Tree;
    /// let t: Tree<i32, ()> = [(3, ()), (-1, ())].into_iter().collect();
    /// assert_eq!(t.first(), Some((&-1, &())));
    /// ```
    pub fn first(&self) -> Option<(&K, &V)> {
        self.root.as_ref().map(Node::first_entry)
    }

    /// The entry with the greatest key.
    ///
    /// Time: O(log n).
    ///
    /// ```
    /// use memslots::tree::Tree;
    /// let t: Tree<i32, ()> = [(3, ()), (-1, ())].into_iter().collect();
    /// assert_eq!(t.last(), Some((&3, &())));
    /// ```
    pub fn last(&self) -> Option<(&K, &V)> {
        self.root.as_ref().map(Node::last_entry)
    }

    /// Summary of the whole tree, or `None` if it is empty.
    ///
    /// Time: O(B) (combines the root's cached child summaries).
    ///
    /// ```
    /// use memslots::tree::{Summary, Tree};
    ///
    /// #[derive(Clone, Copy, Debug, PartialEq)]
    /// struct Total(u64);
    /// impl Summary<u32, u64> for Total {
    ///     fn of_entry(_: &u32, v: &u64) -> Self { Total(*v) }
    ///     fn combine(self, o: Self) -> Self { Total(self.0 + o.0) }
    /// }
    ///
    /// let t: Tree<u32, u64, Total> = (0..100).map(|i| (i, 2)).collect();
    /// assert_eq!(t.summary(), Some(Total(200)));
    /// ```
    pub fn summary(&self) -> Option<S> {
        self.root.as_deref().map(Node::summary)
    }

    /// Inserts `value` under `key`, returning the value it replaces, if any.
    ///
    /// Nodes on the path that are shared with another version are copied
    /// (`Arc::make_mut`); nodes owned only by this version are edited in
    /// place. Full nodes split, and a split root grows the tree by a level.
    ///
    /// Time: O(log n); at most one node copy and one split per level.
    ///
    /// # Panics
    ///
    /// If the tree would exceed [`MAX_DEPTH`] levels (unreachable in memory).
    ///
    /// ```
    /// use memslots::tree::Tree;
    /// let mut t: Tree<u32, &str> = Tree::new();
    /// assert_eq!(t.insert(7, "a"), None);
    /// let snapshot = t.clone();
    /// assert_eq!(t.insert(7, "b"), Some("a"));
    /// assert_eq!(t.get(&7), Some(&"b"));
    /// assert_eq!(snapshot.get(&7), Some(&"a"));
    /// ```
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let Some(root) = self.root.as_mut() else {
            self.root = Some(Arc::new(Node::Leaf(Leaf::single(key, value))));
            self.len = 1;
            return None;
        };
        let (old, split) = Arc::make_mut(root).insert(key, value, true);
        if old.is_none() {
            self.len += 1;
        }
        if let Some(right) = split {
            let left = self.root.take().expect("root present");
            let mut root = node::Internal {
                keys: Default::default(),
                sums: Default::default(),
                children: Default::default(),
            };
            for child in [left, Arc::new(right)] {
                root.keys.push(*child.first_key());
                root.sums.push(child.summary());
                root.children.push(child);
            }
            let root = Arc::new(Node::Internal(root));
            assert!(
                Node::height(&root) <= MAX_DEPTH,
                "tree deeper than MAX_DEPTH"
            );
            self.root = Some(root);
        }
        old
    }

    /// Removes `key`, returning its value if it was present.
    ///
    /// A miss copies nothing. Otherwise nodes on the path (and a sibling per
    /// level when one lends an entry or is merged) are copied if shared.
    /// Underfull nodes borrow from or merge with a sibling; a root left with
    /// one child is replaced by it.
    ///
    /// Time: O(log n).
    ///
    /// ```
    /// use memslots::tree::Tree;
    /// let mut t: Tree<u32, u32> = (0..100).map(|i| (i, i * 10)).collect();
    /// assert_eq!(t.remove(&42), Some(420));
    /// assert_eq!(t.remove(&42), None);
    /// assert_eq!(t.len(), 99);
    /// ```
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.get(key)?;
        let root = Arc::make_mut(self.root.as_mut()?);
        let old = root.remove(key);
        self.len -= 1;
        let new_root = match root {
            Node::Leaf(l) if l.keys.is_empty() => None,
            Node::Internal(n) if n.children.len() == 1 => n.children.pop(),
            _ => return old,
        };
        self.root = new_root;
        old
    }

    /// A new version with `value` under `key`; `self` is unchanged.
    ///
    /// Time: O(log n), O(log n) node copies.
    ///
    /// ```
    /// use memslots::tree::Tree;
    /// let v1: Tree<u32, u32> = Tree::new();
    /// let v2 = v1.update(1, 10);
    /// assert_eq!((v1.len(), v2.len()), (0, 1));
    /// ```
    #[must_use]
    pub fn update(&self, key: K, value: V) -> Self {
        let mut t = self.clone();
        t.insert(key, value);
        t
    }

    /// A new version without `key`; `self` is unchanged.
    ///
    /// Time: O(log n), O(log n) node copies (none if `key` is absent).
    ///
    /// ```
    /// use memslots::tree::Tree;
    /// let v1: Tree<u32, u32> = [(1, 10)].into_iter().collect();
    /// let v2 = v1.without(&1);
    /// assert_eq!((v1.len(), v2.len()), (1, 0));
    /// ```
    #[must_use]
    pub fn without(&self, key: &K) -> Self {
        let mut t = self.clone();
        t.remove(key);
        t
    }

    /// Iterator over all entries in key order (double-ended, exact size).
    ///
    /// Time: O(log n) to start, O(1) amortised per entry. Does not allocate.
    ///
    /// ```
    /// use memslots::tree::Tree;
    /// let t: Tree<u32, u32> = [(2, 20), (1, 10), (3, 30)].into_iter().collect();
    /// assert_eq!(t.iter().len(), 3);
    /// assert_eq!(t.iter().rev().next(), Some((&3, &30)));
    /// assert!(t.iter().map(|(k, _)| *k).eq([1, 2, 3]));
    /// ```
    pub fn iter(&self) -> Iter<'_, K, V, S, B> {
        Iter::new(self.root.as_ref(), self.len)
    }

    /// Iterator over the entries whose keys fall in `range`, in key order
    /// (double-ended). An empty or inverted range yields nothing.
    ///
    /// Time: O(log n) to start, O(1) amortised per entry. Does not allocate.
    ///
    /// ```
    /// use memslots::tree::Tree;
    /// let t: Tree<u32, ()> = (0..100).map(|i| (i * 2, ())).collect();
    /// assert!(t.range(10..16).map(|(k, _)| *k).eq([10, 12, 14]));
    /// assert!(t.range(11..=16).rev().map(|(k, _)| *k).eq([16, 14, 12]));
    /// assert_eq!(t.range(..).count(), 100);
    /// ```
    pub fn range<R: RangeBounds<K>>(&self, range: R) -> Range<'_, K, V, S, B> {
        Range::new(self.root.as_ref(), range.start_bound(), range.end_bound())
    }

    /// Pruned in-order search. For each child subtree, and at leaf level for
    /// each entry, calls `visit(smallest key, summary)`: [`Visit::Enter`]
    /// descends into the subtree (for an entry: yields it), [`Visit::Skip`]
    /// passes over it, [`Visit::Stop`] ends the search. For an entry the key
    /// is its own and the summary is `S::of_entry`.
    ///
    /// Time: O(B) per node opened, plus O(1) per entry of the leaves opened;
    /// [`Search::nodes_visited`] counts the nodes. Does not allocate.
    ///
    /// # Interval overlap
    ///
    /// Keys `(start, id)`, values the ends, summary the largest end. A subtree
    /// may hold an interval overlapping `[a, b)` iff its smallest start is
    /// `< b` and its largest end is `> a`; once a smallest start is `>= b`,
    /// so is every later one, and the search stops. For disjoint intervals
    /// (memory slots) the overlapping ones are adjacent in key order, so the
    /// query opens O(log n + k / B) nodes for k results. For arbitrary
    /// intervals each opened node holds a result or lies on the path to the
    /// `b` boundary, so at most O((k + 1) log n) nodes are opened.
    ///
    /// ```
    /// use memslots::tree::{Summary, Tree, Visit};
    ///
    /// #[derive(Clone, Copy, Debug, PartialEq)]
    /// struct MaxEnd(u64);
    /// impl Summary<(u64, u32), u64> for MaxEnd {
    ///     fn of_entry(_: &(u64, u32), end: &u64) -> Self { MaxEnd(*end) }
    ///     fn combine(self, o: Self) -> Self { MaxEnd(self.0.max(o.0)) }
    /// }
    ///
    /// // Intervals [start, end) keyed by (start, id).
    /// let t: Tree<(u64, u32), u64, MaxEnd> =
    ///     [((0, 0), 10), ((5, 1), 50), ((20, 2), 30), ((40, 3), 45)].into_iter().collect();
    ///
    /// let (a, b) = (25, 42);
    /// let hits: Vec<u32> = t
    ///     .search(|&(start, _), s| {
    ///         if start >= b {
    ///             Visit::Stop
    ///         } else if s.0 > a {
    ///             Visit::Enter
    ///         } else {
    ///             Visit::Skip
    ///         }
    ///     })
    ///     .map(|(&(_, id), _)| id)
    ///     .collect();
    /// assert_eq!(hits, [1, 2, 3]);
    /// ```
    pub fn search<F>(&self, visit: F) -> Search<'_, K, V, S, F, B>
    where
        F: FnMut(&K, &S) -> Visit,
    {
        Search::new(self.root.as_deref(), visit)
    }

    /// [`search`](Self::search) with a named [`Visitor`], so that the iterator's type can be
    /// written down (a struct field, a return type).
    ///
    /// Time: as [`search`](Self::search).
    #[inline]
    pub fn search_by<F: Visitor<K, S>>(&self, visitor: F) -> Search<'_, K, V, S, F, B> {
        Search::new(self.root.as_deref(), visitor)
    }

    /// Differences from `self` (old) to `other` (new) in key order, values
    /// compared with `eq`: e.g. `Arc::ptr_eq` for `Arc` values.
    ///
    /// Subtrees shared by both versions are stepped over without being opened,
    /// so versions that differ in k entries cost O((k + 1) log n), and
    /// `t.diff_by(&t, ..)` is empty in O(1). Unrelated trees with equal
    /// contents still work, at O(n). [`Changes::nodes_visited`] counts the work.
    ///
    /// Time: O((k + 1) log n) for k differences between related versions,
    /// O(n) for unrelated trees, O(1) if `ptr_eq`. Does not allocate.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use memslots::tree::{Diff, Tree};
    ///
    /// let v1: Tree<u32, Arc<str>> = (0..1000).map(|i| (i, Arc::from("x"))).collect();
    /// let v2 = v1.update(500, Arc::from("x"));
    /// let d: Vec<_> = v1.diff_by(&v2, Arc::ptr_eq).collect();
    /// assert!(matches!(d[..], [Diff::Update { key: &500, .. }]));
    /// ```
    pub fn diff_by<'a, F>(&'a self, other: &'a Self, eq: F) -> Changes<'a, K, V, S, B, F>
    where
        F: FnMut(&V, &V) -> bool,
    {
        Changes::new(self.root.as_ref(), other.root.as_ref(), eq)
    }

    /// Number of nodes, for memory accounting and tests.
    ///
    /// Time: O(n / B).
    ///
    /// ```
    /// use memslots::tree::Tree;
    /// let t: Tree<u32, (), (), 4> = (0..4).map(|i| (i, ())).collect();
    /// assert_eq!(t.node_count(), 1);
    /// ```
    #[cfg(any(test, feature = "invariants"))]
    #[cfg_attr(docsrs, doc(cfg(feature = "invariants")))]
    pub fn node_count(&self) -> usize {
        self.root.as_deref().map_or(0, Node::count)
    }

    /// Number of levels, counting the leaves (0 if empty).
    ///
    /// Time: O(log n).
    ///
    /// ```
    /// use memslots::tree::Tree;
    /// let t: Tree<u32, (), (), 4> = (0..5).map(|i| (i, ())).collect();
    /// assert_eq!(t.depth(), 2);
    /// ```
    #[cfg(any(test, feature = "invariants"))]
    #[cfg_attr(docsrs, doc(cfg(feature = "invariants")))]
    pub fn depth(&self) -> usize {
        self.root.as_ref().map_or(0, Node::height)
    }
}

impl<K: Ord + Copy, V: Clone + PartialEq, S: Summary<K, V>, const B: usize> Tree<K, V, S, B> {
    /// Differences from `self` (old) to `other` (new) in key order, values
    /// compared with `==`. See [`Tree::diff_by`].
    ///
    /// Time: O((k + 1) log n) for k differences between related versions,
    /// O(1) if `ptr_eq`. Does not allocate.
    ///
    /// ```
    /// use memslots::tree::{Diff, Tree};
    ///
    /// let v1: Tree<u32, u32> = (0..1000).map(|i| (i, i)).collect();
    /// let v2 = v1.update(1000, 0).without(&3).update(7, 70);
    /// let d: Vec<_> = v1.diff(&v2).collect();
    /// assert_eq!(
    ///     d,
    ///     [
    ///         Diff::Remove(&3, &3),
    ///         Diff::Update { key: &7, old: &7, new: &70 },
    ///         Diff::Add(&1000, &0),
    ///     ]
    /// );
    /// assert_eq!(v1.diff(&v1).count(), 0);
    /// ```
    pub fn diff<'a>(&'a self, other: &'a Self) -> Changes<'a, K, V, S, B> {
        self.diff_by(other, <V as PartialEq>::eq)
    }
}

impl<K, V, S, const B: usize> fmt::Debug for Tree<K, V, S, B>
where
    K: Ord + Copy + fmt::Debug,
    V: Clone + fmt::Debug,
    S: Summary<K, V>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K, V, S, const B: usize> PartialEq for Tree<K, V, S, B>
where
    K: Ord + Copy,
    V: Clone + PartialEq,
    S: Summary<K, V>,
{
    /// Time: O(1) if `ptr_eq`, else O(n).
    fn eq(&self, other: &Self) -> bool {
        self.ptr_eq(other) || (self.len == other.len && self.iter().eq(other.iter()))
    }
}

impl<K, V, S, const B: usize> Eq for Tree<K, V, S, B>
where
    K: Ord + Copy,
    V: Clone + Eq,
    S: Summary<K, V>,
{
}

impl<K: Ord + Copy, V: Clone, S: Summary<K, V>, const B: usize> FromIterator<(K, V)>
    for Tree<K, V, S, B>
{
    /// Builds a packed tree (nodes as full as the bounds allow) from entries
    /// in any order; for a repeated key the last value wins.
    ///
    /// Time: O(n log n).
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut entries: Vec<(K, V)> = iter.into_iter().collect();
        entries.sort_by_key(|e| e.0);
        // Stable sort keeps insertion order among equal keys; `dedup_by` keeps
        // the first of a run, so swap each later value into it.
        entries.dedup_by(|later, kept| {
            let dup = later.0 == kept.0;
            if dup {
                std::mem::swap(&mut later.1, &mut kept.1);
            }
            dup
        });
        let mut t = Self::new();
        t.len = entries.len();
        t.root = Node::build(entries);
        t
    }
}

impl<K: Ord + Copy, V: Clone, S: Summary<K, V>, const B: usize> Extend<(K, V)>
    for Tree<K, V, S, B>
{
    /// Inserts each entry in turn.
    ///
    /// Time: O(m log n) for m entries.
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<'a, K: Ord + Copy, V: Clone, S: Summary<K, V>, const B: usize> IntoIterator
    for &'a Tree<K, V, S, B>
{
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V, S, B>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}
