//! The benchmark table of the 2021 "scalable memslots" patch series, reproduced at library level:
//! the six tests of the kernel's `memslot_perf_test`, run in one process on the array design the
//! kernel replaced ("Before", [`memslots::baseline::ArrayMemslots`]), on the trees ("After",
//! [`memslots::Memslots`]) and, where it applies, on rust-vmm's `vm-memory` 0.18.
//!
//! ```text
//! cargo run --release --example seed_table -- [--slots 10,509,32764] [--tests map,unmap,...]
//!     [--json FILE] [--plot FILE.svg] [--budget SECONDS] [--no-peer]
//! ```
//!
//! Times are seconds per iteration, the median of as many iterations as fit the budget (at least
//! three, unless a single iteration is longer than the cap). Progress goes to stderr.

mod layout;
mod peer;
mod plot;
mod tests;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use memslots::baseline::ArrayMemslots;
use memslots::{MemFlags, Memslots};

use layout::{Design, Layout, DEFAULT_SIZE, MAP_SIZE, UNMAP_SIZE};
use tests::{Budget, Sample};

/// Table order, with the names the JSON and `--tests` use.
const TESTS: [(&str, &str); 6] = [
    ("map", "Map"),
    ("unmap", "Unmap"),
    ("unmap2m", "Unmap 2M"),
    ("move-active", "Move active"),
    ("move-inactive", "Move inactive"),
    ("setup", "Slot setup"),
];
const DEFAULT_SLOTS: [usize; 6] = [10, 30, 50, 100, 509, 32764];
/// The Map area holds 8193 pages: one page per test slot at most, plus slot 0.
const MAP_MAX_SLOTS: usize = 8194;
/// Each measurement alternates the designs this many times.
const ROUNDS: u32 = 3;
const CHUNK_2M: u64 = (2 << 20) / layout::PAGE;

/// One line of the table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) test: &'static str,
    /// Slots actually used (the Map test is capped).
    pub(crate) slots: usize,
    pub(crate) before: Sample,
    pub(crate) after: Sample,
    pub(crate) peer: Option<Sample>,
}

impl Row {
    /// Before, After, vm-memory.
    pub(crate) fn times(&self) -> [Option<f64>; 3] {
        [
            Some(self.before.median),
            Some(self.after.median),
            self.peer.map(|p| p.median),
        ]
    }
}

struct Options {
    slots: Vec<usize>,
    tests: Vec<&'static str>,
    json: Option<PathBuf>,
    plot: Option<PathBuf>,
    budget: Budget,
    peer: bool,
}

const USAGE: &str = "\
usage: seed_table [--slots N,N,...] [--tests T,T,...] [--json FILE] [--plot FILE.svg]
                  [--budget SECONDS] [--no-peer]
  --slots   slot counts (default 10,30,50,100,509,32764; at most 32764, at least 2)
  --tests   any of map, unmap, unmap2m, move-active, move-inactive, setup (default: all)
  --json    write every row as {\"test\", \"slots\", \"before_s\", \"after_s\", \"vm_memory_s\"}
  --plot    write seconds per iteration against slots, log-log, as SVG
  --budget  seconds per measurement before it stops at the next iteration (default 0.5)
  --no-peer skip the vm-memory column";

fn parse() -> Result<Options, String> {
    let mut o = Options {
        slots: DEFAULT_SLOTS.to_vec(),
        tests: TESTS.iter().map(|t| t.1).collect(),
        json: None,
        plot: None,
        budget: Budget {
            time: Duration::from_millis(500),
            cap: Duration::from_secs(5),
            min_iters: 3,
            max_iters: 20_000,
        },
        peer: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--slots" => {
                o.slots = value()?
                    .split(',')
                    .map(|s| match s.trim().parse::<usize>() {
                        Ok(n) if (2..=32764).contains(&n) => Ok(n),
                        _ => Err(format!("bad slot count {s:?} (2..=32764)")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--tests" => {
                let v = value()?;
                let wanted: Vec<String> = v
                    .split(',')
                    .map(|t| t.trim().to_ascii_lowercase().replace(['_', ' '], "-"))
                    .collect();
                for w in &wanted {
                    let known = TESTS.iter().any(|(k, _)| k == w) || w == "unmap-2m";
                    if !known {
                        return Err(format!("unknown test {w:?}"));
                    }
                }
                o.tests = TESTS
                    .iter()
                    .filter(|(k, _)| {
                        wanted
                            .iter()
                            .any(|w| w == k || (*k == "unmap2m" && w == "unmap-2m"))
                    })
                    .map(|t| t.1)
                    .collect();
            }
            "--json" => o.json = Some(value()?.into()),
            "--plot" => o.plot = Some(value()?.into()),
            "--budget" => {
                let s: f64 = value()?.parse().map_err(|e| format!("--budget: {e}"))?;
                if s.is_nan() || s <= 0.0 || s >= 3600.0 {
                    return Err("--budget: seconds in (0, 3600)".into());
                }
                o.budget.time = Duration::from_secs_f64(s);
                o.budget.cap = Duration::from_secs_f64(s * 10.0);
            }
            "--no-peer" => o.peer = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok(o)
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let run_start = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    for &n in &o.slots {
        let got = run_count(n, &o);
        print_table(n, &got, o.peer);
        rows.extend(got);
    }
    print_notes(&rows, o.peer);
    eprintln!("total {:.1} s", run_start.elapsed().as_secs_f64());
    if let Some(path) = &o.json {
        std::fs::write(path, json(&rows)).expect("write --json file");
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &o.plot {
        let tests: Vec<&str> = o.tests.clone();
        if let Err(e) = plot::write(path, &tests, &rows) {
            eprintln!("plot failed: {e}");
            std::process::exit(1);
        }
        eprintln!("wrote {}", path.display());
    }
}

fn progress(n: usize, test: &str, who: &str, s: &Sample) {
    eprintln!(
        "[{n:>5} slots] {test:<13} {who:<9} {:>11}s  ({} iterations)",
        secs(s.median),
        s.iters
    );
}

/// Runs the selected tests at `n` slots; the rows come back in table order.
fn run_count(n: usize, o: &Options) -> Vec<Row> {
    let b = &o.budget;
    let wants = |t: &str| o.tests.contains(&t);
    let mut rows = BTreeMap::new();
    let mut add =
        |test: &'static str, slots, before: Option<Sample>, after: Option<Sample>, peer| {
            let (before, after) = (before.expect("measured"), after.expect("measured"));
            for (who, s) in [
                ("before", Some(before)),
                ("after", Some(after)),
                ("vm-memory", peer),
            ] {
                if let Some(s) = s {
                    progress(slots, test, who, &s);
                }
            }
            rows.insert(
                TESTS.iter().position(|t| t.1 == test).unwrap_or(0),
                Row {
                    test,
                    slots,
                    before,
                    after,
                    peer,
                },
            );
        };

    // Slot setup first: its last VM of each design serves the Move tests (same default area).
    let default = Layout::new(n, DEFAULT_SIZE, MemFlags::empty()).expect("one page per slot");
    let (mut array, mut trees): (Option<ArrayMemslots>, Option<Memslots>) = (None, None);
    if wants("Slot setup") {
        eprintln!("[{n:>5} slots] Slot setup ...");
        let [before, after, peer] = tests::interleaved(b, ROUNDS, |i, b| match i {
            0 => tests::setup(&default, b, &mut array),
            1 => tests::setup(&default, b, &mut trees),
            _ if o.peer => peer::setup(&default, b),
            _ => Vec::new(),
        });
        add("Slot setup", n, before, after, peer);
    }
    for (test, active) in [("Move active", true), ("Move inactive", false)] {
        if !wants(test) {
            continue;
        }
        let array = array.get_or_insert_with(|| built(&default));
        let trees = trees.get_or_insert_with(|| built(&default));
        let [before, after] = tests::interleaved(b, ROUNDS, |i, b| match i {
            0 => tests::moves(array, &default, active, b),
            _ => tests::moves(trees, &default, active, b),
        });
        add(test, n, before, after, None);
    }
    drop((array, trees));

    if wants("Map") {
        let slots = n.min(MAP_MAX_SLOTS);
        let map = Layout::new(slots, MAP_SIZE, MemFlags::LOG_DIRTY_PAGES).expect("fits");
        let array: ArrayMemslots = built(&map);
        let trees: Memslots = built(&map);
        let vmm = o.peer.then(|| peer::build(&map));
        let [before, after, peer] = tests::interleaved(b, ROUNDS, |i, b| match (i, &vmm) {
            (0, _) => tests::map(&array, &map, b),
            (1, _) => tests::map(&trees, &map, b),
            (_, Some(vmm)) => peer::map(vmm, &map, b),
            _ => Vec::new(),
        });
        add("Map", slots, before, after, peer);
    }

    if wants("Unmap") || wants("Unmap 2M") {
        let unmap = Layout::new(n, UNMAP_SIZE, MemFlags::empty()).expect("one page per slot");
        eprintln!("[{n:>5} slots] building the Unmap layout ...");
        let array: ArrayMemslots = built(&unmap);
        let trees: Memslots = built(&unmap);
        let vmm = o.peer.then(|| peer::build(&unmap));
        for (test, chunk) in [("Unmap", 1), ("Unmap 2M", CHUNK_2M)] {
            if !wants(test) {
                continue;
            }
            let chunks = tests::unmap_chunks(&unmap, chunk);
            let [before, after, peer] = tests::interleaved(b, ROUNDS, |i, b| match (i, &vmm) {
                (0, _) => tests::unmap(&array, &chunks, b),
                (1, _) => tests::unmap(&trees, &chunks, b),
                (_, Some(vmm)) => peer::unmap(vmm, &chunks, b),
                _ => Vec::new(),
            });
            add(test, n, before, after, peer);
        }
    }
    rows.into_values().collect()
}

/// A VM of design `D` holding `layout`.
fn built<D: Design>(layout: &Layout) -> D {
    let vm = D::empty();
    layout.build(&vm);
    vm
}

/// Three significant digits, without exponent, as the cover letter writes them.
fn secs(x: f64) -> String {
    if x.is_nan() || x <= 0.0 {
        return "0".into();
    }
    let decimals = (2 - x.log10().floor() as i32).max(0) as usize;
    format!("{x:.decimals$}")
}

fn improvement(before: f64, after: f64) -> String {
    let pct = (1.0 - after / before) * 100.0;
    if pct.abs() < 1.0 {
        "None".into()
    } else {
        format!("{pct:.0}%")
    }
}

fn label(row: &Row, n: usize) -> String {
    if row.slots == n {
        row.test.to_string()
    } else {
        format!("{} ({})", row.test, row.slots)
    }
}

fn print_table(n: usize, rows: &[Row], with_peer: bool) {
    let mut out = String::new();
    let _ = writeln!(out, "\n{n} slots in use:");
    let _ = write!(
        out,
        "{:<16} {:>11} {:>11} {:>12} {:>13}",
        "Test", "Before", "After", "Improvement", "Before/After"
    );
    if with_peer {
        let _ = write!(out, " {:>12}", "vm-memory");
    }
    out.push('\n');
    for r in rows {
        let _ = write!(
            out,
            "{:<16} {:>11} {:>11} {:>12} {:>13}",
            label(r, n),
            format!("{}s", secs(r.before.median)),
            format!("{}s", secs(r.after.median)),
            improvement(r.before.median, r.after.median),
            format!("{:.1}x", r.before.median / r.after.median)
        );
        if with_peer {
            let peer = match r.peer {
                Some(p) => format!("{}s", secs(p.median)),
                None => "-".into(),
            };
            let mark = match r.test {
                "Unmap" | "Unmap 2M" => " [1]",
                "Move active" | "Move inactive" => " [2]",
                "Map" => " [3]",
                _ => "",
            };
            let _ = write!(out, " {peer:>12}{mark}");
        }
        out.push('\n');
    }
    print!("{out}");
}

fn print_notes(rows: &[Row], with_peer: bool) {
    println!(
        "\nSeconds per iteration, median of the iterations that fit the time budget (fewest: {}).",
        rows.iter()
            .map(|r| r.before.iters.min(r.after.iters))
            .min()
            .unwrap_or(0)
    );
    println!(
        "Slots include slot 0; Map runs with at most {MAP_MAX_SLOTS} slots (one page each), as in \
         the kernel.\nUnmap chunks are split at slot boundaries, as the selftest's madvise calls \
         are. A Move iteration is\ntwo moves (away and back), each with its INVALID step and \
         grace periods, while one vCPU thread faults."
    );
    if with_peer {
        println!(
            "[1] vm-memory has no hva -> gpa lookup: every chunk scans all regions.\n\
             [2] vm-memory has no move and no grace period: nothing comparable to time.\n\
             [3] vm-memory: memory() guard + find_region per page; no per-vCPU cache, no dirty log."
        );
    }
    // The targets are ratios; print whether this run met them.
    let ratio = |r: &Row| r.before.median / r.after.median;
    let mut lines = Vec::new();
    for r in rows {
        let need = match (r.test, r.slots) {
            ("Unmap" | "Unmap 2M", 32764) => Some(100.0),
            ("Slot setup", 32764) => Some(30.0),
            ("Move active" | "Move inactive", 32764) => Some(20.0),
            ("Map", _) | (_, 10) => Some(1.0 / 1.25),
            _ => None,
        };
        if let Some(need) = need {
            let ok = ratio(r) >= need;
            lines.push(format!(
                "  {:<20} {:>6} slots: {:>7.2}x (target >= {need:.2}x) {}",
                r.test,
                r.slots,
                ratio(r),
                if ok { "met" } else { "MISSED" }
            ));
        }
    }
    if !lines.is_empty() {
        println!("\nTargets (Before/After):\n{}", lines.join("\n"));
    }
}

fn json(rows: &[Row]) -> String {
    let mut out = String::from("[\n");
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(
            out,
            "  {{\"test\": \"{}\", \"slots\": {}, \"before_s\": {:e}, \"after_s\": {:e}",
            r.test, r.slots, r.before.median, r.after.median
        );
        if let Some(p) = r.peer {
            let _ = write!(out, ", \"vm_memory_s\": {:e}", p.median);
        }
        out.push('}');
        if i + 1 < rows.len() {
            out.push(',');
        }
        out.push('\n');
    }
    out.push_str("]\n");
    out
}
