//! How the allocator serves the array's whole-version copies, chosen for the whole process.
//!
//! Each update of the array design copies the whole version into a fresh allocation (1.8 MB of
//! slots at 32764 slots). glibc serves an allocation that large either from its heap or from a
//! fresh `mmap` (every page faulted in on each copy), and by default it moves the threshold
//! between the two as the program frees such blocks, so the same run can land in either mode:
//! the array's Slot setup at 32764 slots took 1.8 s in some runs and 5 to 7 s in others. The
//! mode is fixed before `main` runs by re-executing this program with `GLIBC_TUNABLES` set
//! (glibc reads its tunables only at start-up, and the crate's lints forbid the `unsafe` a
//! `mallopt` call would need). Which mode actually ran is reported from the page faults the
//! process took (see [`minor_faults`]), which works whatever the C library.

use std::process::Command;

/// Set in the re-executed child, naming the mode it runs in, so that it does not re-execute.
const MARK: &str = "MEMSLOTS_SEED_TABLE_MALLOC";

/// The allocator mode of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malloc {
    /// Blocks of 128 KiB and more always come from a fresh `mmap`, as the kernel's array came
    /// from `kvzalloc`, which falls back to `vmalloc` (fresh pages) for allocations that large.
    Mmap,
    /// Every block comes from the heap and freed memory is kept for reuse: no page faults.
    Heap,
    /// glibc's own adaptive threshold, left alone (either of the above, run by run).
    Adaptive,
}

impl Malloc {
    pub(crate) const NAMES: &'static str = "mmap, heap, adaptive";

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "mmap" => Some(Malloc::Mmap),
            "heap" => Some(Malloc::Heap),
            "adaptive" => Some(Malloc::Adaptive),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Malloc::Mmap => "mmap",
            Malloc::Heap => "heap",
            Malloc::Adaptive => "adaptive",
        }
    }

    /// glibc tunables that fix the mode. Setting a threshold turns glibc's adaptation off.
    fn tunables(self) -> Option<&'static str> {
        match self {
            Malloc::Mmap => Some("glibc.malloc.mmap_threshold=131072"),
            Malloc::Heap => {
                Some("glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824")
            }
            Malloc::Adaptive => None,
        }
    }

    /// Says how the allocator was set up for this run (lines after the first indented to fit
    /// the table's header).
    pub(crate) fn describe(self) -> String {
        let glibc = cfg!(all(target_os = "linux", target_env = "gnu"));
        match (self, self.tunables()) {
            (Malloc::Mmap, Some(t)) if glibc && in_place(self) => format!(
                "mmap: glibc serves blocks of 128 KiB and more from fresh mmaps, as the kernel's\n\
                 \x20               kvzalloc falls back to vmalloc (GLIBC_TUNABLES={t})"
            ),
            (_, Some(t)) if glibc && in_place(self) => format!(
                "heap: glibc serves every block from its heap and keeps freed memory\n\
                 \x20               (GLIBC_TUNABLES={t})"
            ),
            (_, Some(_)) => format!(
                "{} requested but not in effect (not glibc, or re-executing failed)",
                self.name()
            ),
            (_, None) => "adaptive: the C library's default, which may change mode mid-run".into(),
        }
    }
}

/// Whether this process already runs with `mode`'s tunables.
fn in_place(mode: Malloc) -> bool {
    std::env::var(MARK).is_ok_and(|m| m == mode.name())
}

/// Re-executes this program with `mode` in effect, unless it already is (or cannot be: not
/// glibc, or the mode needs no tunables). Returns the child's exit code when it ran.
pub(crate) fn reexec(mode: Malloc) -> Option<i32> {
    let tunables = mode.tunables()?;
    if !cfg!(all(target_os = "linux", target_env = "gnu")) || in_place(mode) {
        return None;
    }
    let all = match std::env::var("GLIBC_TUNABLES") {
        Ok(old) if !old.is_empty() => format!("{old}:{tunables}"),
        _ => tunables.to_string(),
    };
    let exe = std::env::current_exe().ok()?;
    match Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", all)
        .env(MARK, mode.name())
        .status()
    {
        Ok(status) => Some(status.code().unwrap_or(1)),
        Err(e) => {
            eprintln!("could not re-execute with GLIBC_TUNABLES ({e}); running as is");
            None
        }
    }
}

/// Minor page faults this process has taken so far (`/proc/self/stat`), or `None` where that
/// file does not exist. A copy served by a fresh `mmap` faults once per page it touches.
pub(crate) fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name, which may itself hold spaces: state is
    // field 3 of the file, minflt field 10.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(7)?.parse().ok()
}
