//! Each running job's own user and group id, from a range the worker reserves.
//!
//! Per-uid kernel state crosses every namespace a job has: keyrings, `RLIMIT_NPROC`, inotify
//! limits, signal permissions, file ownership in writable binds. Two jobs that share a uid share
//! all of it, and so does a job with any host service running as that uid. So every running job
//! gets a uid (and a gid of the same number) nobody else has, like systemd's `DynamicUser=`,
//! and ids are handed out round-robin, so a released id comes back only after every other id of
//! the range was used.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::ops::RangeInclusive;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::str::FromStr;

use crate::Error;

/// A range of user (and group) ids for jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    first: u32,
    last: u32,
}

/// Ids that are never handed to jobs: system accounts, systemd's `DynamicUser=` range, `nobody`
/// and the 16-bit "invalid" id. Above `i32::MAX` ids are mistaken for negative numbers.
const RESERVED: [(RangeInclusive<u32>, &str); 3] = [
    (0..=999, "system accounts (0-999)"),
    (
        61184..=65535,
        "systemd's DynamicUser range (61184-65519), nobody and 65535",
    ),
    (
        0x8000_0000..=u32::MAX,
        "ids above 2147483647 (read as negative by many programs)",
    ),
];

impl IdRange {
    /// The default: 65536 ids from 1879048192 (0x70000000), above systemd-nspawn's container
    /// range (524288-1879048191), below 2^31, and clear of what distributions allocate for
    /// accounts and of typical `/etc/subuid` ranges.
    pub const DEFAULT: IdRange = IdRange {
        first: 0x7000_0000,
        last: 0x7000_0000 + 65535,
    };

    /// The ids `first..=last`.
    pub fn new(first: u32, last: u32) -> Result<IdRange, Error> {
        if first > last {
            return Err(Error::Config(format!(
                "job id range {first}-{last} is empty (the first id is above the last)"
            )));
        }
        Ok(IdRange { first, last })
    }

    /// The first id.
    pub fn first(&self) -> u32 {
        self.first
    }

    /// The last id.
    pub fn last(&self) -> u32 {
        self.last
    }

    /// How many ids the range holds.
    pub fn len(&self) -> u64 {
        u64::from(self.last - self.first) + 1
    }

    /// Always false: a range holds at least one id.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn contains(&self, id: u32) -> bool {
        (self.first..=self.last).contains(&id)
    }

    fn overlaps(&self, other: &RangeInclusive<u32>) -> bool {
        self.first <= *other.end() && *other.start() <= self.last
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for IdRange {
    type Err = Error;

    /// `FIRST-LAST`.
    fn from_str(s: &str) -> Result<IdRange, Error> {
        let parsed = s
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
        match parsed {
            Some((first, last)) => IdRange::new(first, last),
            None => Err(Error::Config(format!(
                "{s:?} is not an id range such as 1879048192-1879113727"
            ))),
        }
    }
}

/// Refuses a range that overlaps reserved ids, or any user or group of this machine
/// (`/etc/passwd`, `/etc/group`) or a subordinate id range (`/etc/subuid`, `/etc/subgid`).
pub(crate) fn check_range(range: IdRange) -> Result<(), Error> {
    for (reserved, what) in RESERVED {
        if range.overlaps(&reserved) {
            return Err(Error::Config(format!(
                "job id range {range} overlaps {what}; choose ids in 1000-61183 or \
                 65536-2147483647 that no account uses"
            )));
        }
    }
    for (file, kind) in [("/etc/passwd", "user"), ("/etc/group", "group")] {
        let text = read_optional(file)?;
        if let Some((name, id)) = accounts(&text).find(|(_, id)| range.contains(*id)) {
            return Err(Error::Config(format!(
                "job id range {range} contains {id}, the id of {kind} {name:?} in {file}; \
                 choose a range no account uses"
            )));
        }
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = read_optional(file)?;
        if let Some((name, sub)) = subordinate_ranges(&text).find(|(_, r)| range.overlaps(r)) {
            return Err(Error::Config(format!(
                "job id range {range} overlaps {name}'s subordinate ids {}-{} in {file}",
                sub.start(),
                sub.end()
            )));
        }
    }
    Ok(())
}

fn read_optional(path: &str) -> Result<String, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Error::io(format!("cannot read {path}"), e)),
    }
}

/// (name, id) of each `name:password:id:...` line of passwd(5) or group(5).
fn accounts(text: &str) -> impl Iterator<Item = (&str, u32)> {
    text.lines().filter_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?.trim().parse().ok()?;
        Some((name, id))
    })
}

/// (name, ids) of each `name:first:count` line of subuid(5) or subgid(5).
fn subordinate_ranges(text: &str) -> impl Iterator<Item = (&str, RangeInclusive<u32>)> {
    text.lines().filter_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let first: u32 = fields.next()?.trim().parse().ok()?;
        let count: u32 = fields.next()?.trim().parse().ok()?;
        let last = first.checked_add(count.checked_sub(1)?)?;
        Some((name, first..=last))
    })
}

/// Where running workers register their id ranges, so that two workers on one machine (with two
/// state directories) never hand out the same uid.
const RANGES_DIR: &str = "/run/jobworker/id-ranges";

/// A worker's claim on its id range for as long as it runs (a `flock`, released by the kernel
/// however the process ends).
#[derive(Debug)]
pub(crate) struct RangeClaim {
    _lock: nix::fcntl::Flock<File>,
}

/// Claims `range` for this worker, machine-wide. Refused if a running worker claimed an
/// overlapping range.
pub(crate) fn claim_range(range: IdRange) -> Result<RangeClaim, Error> {
    claim_range_in(Path::new(RANGES_DIR), range)
}

fn claim_range_in(dir: &Path, range: IdRange) -> Result<RangeClaim, Error> {
    use nix::fcntl::{Flock, FlockArg};
    let ctx = |what: &str| format!("cannot {what} {}", dir.display());
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(ctx("create"), e))?;
    let open = |path: &Path| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
    };
    let mine = dir.join(range.to_string());
    let file = open(&mine).map_err(|e| Error::io(ctx("use"), e))?;
    let lock =
        Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| Error::IdRangeBusy {
            range,
            other: range,
        })?;
    for entry in fs::read_dir(dir)
        .map_err(|e| Error::io(ctx("list"), e))?
        .flatten()
    {
        let Some(other) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<IdRange>().ok())
        else {
            continue;
        };
        if other == range || !range.overlaps(&(other.first..=other.last)) {
            continue;
        }
        // A claim file whose lock is free belongs to a worker that has ended.
        let Ok(file) = open(&entry.path()) else {
            continue;
        };
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(_free) => {}
            Err(_) => return Err(Error::IdRangeBusy { range, other }),
        }
    }
    Ok(RangeClaim { _lock: lock })
}

/// The ids in use, and where the round-robin allocation continues.
#[derive(Debug)]
pub(crate) struct IdPool {
    range: IdRange,
    used: HashSet<u32>,
    next: u32,
}

impl IdPool {
    pub(crate) fn new(range: IdRange) -> IdPool {
        IdPool {
            range,
            used: HashSet::new(),
            next: range.first,
        }
    }

    /// A free id, or `None` when every id of the range is in use.
    pub(crate) fn allocate(&mut self) -> Option<u32> {
        if self.used.len() as u64 >= self.range.len() {
            return None;
        }
        loop {
            let id = self.next;
            self.next = if id == self.range.last {
                self.range.first
            } else {
                id + 1
            };
            if self.used.insert(id) {
                return Some(id);
            }
        }
    }

    /// Marks `id` as used (a job re-adopted after a restart). False if it was already, or is
    /// not in the range.
    pub(crate) fn claim(&mut self, id: u32) -> bool {
        self.range.contains(id) && self.used.insert(id)
    }

    /// Returns `id` to the pool.
    pub(crate) fn release(&mut self, id: u32) {
        self.used.remove(&id);
    }

    /// How many ids are in use.
    pub(crate) fn in_use(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_come_back_only_after_the_rest_of_the_range() {
        let mut pool = IdPool::new(IdRange::new(5000, 5003).expect("range"));
        let first: Vec<u32> = (0..4).filter_map(|_| pool.allocate()).collect();
        assert_eq!(first, [5000, 5001, 5002, 5003]);
        assert_eq!(pool.allocate(), None, "the range is exhausted");
        pool.release(5001);
        pool.release(5000);
        assert_eq!(pool.allocate(), Some(5000));
        assert_eq!(pool.allocate(), Some(5001));
    }

    #[test]
    fn a_claimed_id_is_not_handed_out() {
        let mut pool = IdPool::new(IdRange::new(7000, 7002).expect("range"));
        assert!(pool.claim(7000));
        assert!(!pool.claim(7000));
        assert!(!pool.claim(1));
        assert_eq!(pool.allocate(), Some(7001));
    }

    #[test]
    fn reserved_ranges_are_refused() {
        for (first, last) in [
            (0, 10),
            (61184, 61200),
            (65534, 70000),
            (0x8000_0000, u32::MAX),
        ] {
            let range = IdRange::new(first, last).expect("range");
            assert!(check_range(range).is_err(), "{range} accepted");
        }
    }

    #[test]
    fn the_default_range_collides_with_nothing_on_this_machine() {
        check_range(IdRange::DEFAULT).expect("default range is usable");
    }

    #[test]
    fn a_range_holding_an_account_names_it() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nsvc:x:70001:70001::/:/bin/false\n";
        let found: Vec<(&str, u32)> = accounts(passwd)
            .filter(|(_, id)| IdRange::new(70000, 70010).expect("range").contains(*id))
            .collect();
        assert_eq!(found, [("svc", 70001)]);
        let subuid = "alice:100000:65536\n";
        let ranges: Vec<_> = subordinate_ranges(subuid).collect();
        assert_eq!(ranges, [("alice", 100000..=165535)]);
    }

    #[test]
    fn two_workers_cannot_claim_overlapping_ranges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = IdRange::new(80_000, 80_099).expect("range");
        let b = IdRange::new(80_050, 80_149).expect("range");
        let c = IdRange::new(80_150, 80_199).expect("range");
        let claim_a = claim_range_in(dir.path(), a).expect("first claim");
        assert!(matches!(
            claim_range_in(dir.path(), b),
            Err(Error::IdRangeBusy { .. })
        ));
        assert!(matches!(
            claim_range_in(dir.path(), a),
            Err(Error::IdRangeBusy { .. })
        ));
        let _claim_c = claim_range_in(dir.path(), c).expect("a disjoint range");
        drop(claim_a);
        // The first worker is gone: its range is free again.
        let _claim_b = claim_range_in(dir.path(), b).expect("after the first ended");
    }

    #[test]
    fn ranges_parse_from_text() {
        assert_eq!(
            "1879048192-1879113727".parse::<IdRange>().expect("parse"),
            IdRange::DEFAULT
        );
        assert!("5-1".parse::<IdRange>().is_err());
        assert!("lots".parse::<IdRange>().is_err());
    }
}
