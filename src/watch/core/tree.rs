//! Decisions about a spool's tree (`recursive = true`), without I/O: which directories a
//! walk enters, which empty ones it removes, and what the kernel's watch limit calls for.
//! The walk itself is [`crate::watch::listing::walk`].
//!
//! A file's name in a tree is its path relative to the spool: components joined by `/`, no
//! leading `/`, no empty, `.` or `..` component; a file in the spool itself has no `/`, so
//! a flat spool is named exactly as before.

use std::ffi::{OsStr, OsString};
use std::time::Duration;

/// The relative name of `name` in the directory `dir` (itself relative; empty: the spool).
pub fn join(dir: &OsStr, name: &OsStr) -> OsString {
    if dir.is_empty() {
        return name.to_os_string();
    }
    let mut s = OsString::with_capacity(dir.len() + 1 + name.len());
    s.push(dir);
    s.push("/");
    s.push(name);
    s
}

/// Whether `rel` is a well-formed relative name: not empty, no leading or trailing `/`, no
/// empty, `.` or `..` component.
pub fn well_formed(rel: &OsStr) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let b = rel.as_bytes();
    !b.is_empty()
        && b.split(|&c| c == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

/// How many directory levels below the spool `rel` is (`a/b/x`: 2).
pub fn depth(rel: &OsStr) -> usize {
    use std::os::unix::ffi::OsStrExt;
    rel.as_bytes().iter().filter(|&&c| c == b'/').count()
}

/// What a walk does with a directory it found at `depth` levels below the spool (the spool
/// is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enter {
    /// Watched, then listed.
    Yes,
    /// On another filesystem: a mount point is not crossed.
    OtherFs,
    /// Deeper than `max_depth`.
    TooDeep,
}

/// Whether a walk enters a directory at `depth` on device `dev`, the spool being on
/// `spool_dev`.
pub fn enter(depth: usize, max_depth: usize, dev: u64, spool_dev: u64) -> Enter {
    if dev != spool_dev {
        Enter::OtherFs
    } else if depth > max_depth {
        Enter::TooDeep
    } else {
        Enter::Yes
    }
}

/// Whether a walk removes a directory (`rmdir`, which fails harmlessly if something came
/// in meanwhile): never the spool itself (`depth` 0), only when its listing found nothing
/// left in it (`entries`, counting every entry, hidden and excluded ones too, minus the
/// subdirectories the walk removed) and it has been unchanged for `settle` (`age`, since
/// its last change as its mtime tells; `None` if that is in the future).
pub fn prune(depth: usize, entries: usize, age: Option<Duration>, settle: Duration) -> bool {
    depth > 0 && entries == 0 && age.is_some_and(|a| a >= settle)
}

/// The value to suggest for `fs.inotify.max_user_watches` when `unwatched` more watches
/// were refused under the current `max`: room for them and as many again (other programs of
/// the user watch too, and trees grow), rounded up to a power of two.
pub fn suggest_max_watches(max: Option<u64>, unwatched: usize) -> u64 {
    let max = max.unwrap_or(8192);
    let need = max.saturating_add((unwatched as u64).saturating_mul(2));
    need.checked_next_power_of_two().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        assert_eq!(join(OsStr::new(""), OsStr::new("x")), "x");
        assert_eq!(join(OsStr::new("a/b"), OsStr::new("x")), "a/b/x");
        assert_eq!(depth(OsStr::new("x")), 0);
        assert_eq!(depth(OsStr::new("a/b/x")), 2);
        for ok in ["x", "a/b/x", ".hidden/x"] {
            assert!(well_formed(OsStr::new(ok)), "{ok}");
        }
        for no in ["", "/x", "x/", "a//x", "./x", "a/../x", "a/."] {
            assert!(!well_formed(OsStr::new(no)), "{no}");
        }
    }

    #[test]
    fn entering() {
        assert_eq!(enter(1, 32, 5, 5), Enter::Yes);
        assert_eq!(enter(32, 32, 5, 5), Enter::Yes);
        assert_eq!(enter(33, 32, 5, 5), Enter::TooDeep);
        assert_eq!(enter(1, 32, 6, 5), Enter::OtherFs);
    }

    #[test]
    fn suggestion() {
        assert_eq!(suggest_max_watches(Some(8192), 100), 16384);
        assert_eq!(suggest_max_watches(Some(65536), 100_000), 524_288);
        assert_eq!(suggest_max_watches(Some(u64::MAX), 1), u64::MAX);
    }

    proptest! {
        /// The spool itself is never removed, nor a directory with anything in it, nor one
        /// changed within `settle`; anything else is.
        #[test]
        fn prune_decides_by_emptiness_and_age(
            depth in 0usize..5,
            entries in 0usize..3,
            age_ms in proptest::option::of(0u64..2000),
            settle_ms in 0u64..1000,
        ) {
            let age = age_ms.map(Duration::from_millis);
            let settle = Duration::from_millis(settle_ms);
            let p = prune(depth, entries, age, settle);
            prop_assert_eq!(p, depth > 0 && entries == 0 && age_ms.is_some_and(|a| a >= settle_ms));
        }

        /// A name joined from well-formed parts is well formed, and one level deeper.
        #[test]
        fn joined_names_are_well_formed(parts in proptest::collection::vec("[a-z.]{1,4}", 1..5)) {
            prop_assume!(parts.iter().all(|p| p != "." && p != ".."));
            let mut rel = OsString::new();
            for p in &parts {
                rel = join(&rel, OsStr::new(p));
            }
            prop_assert!(well_formed(&rel));
            prop_assert_eq!(depth(&rel), parts.len() - 1);
        }
    }
}
