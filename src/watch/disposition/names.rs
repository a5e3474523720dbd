//! The names dispositions choose: fitting a name to [`NAME_MAX`], keeping its extension,
//! collision suffixes, hidden temporary and delete names, `.reason` names. Pure (no
//! filesystem access), so property tests pin the rules.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// Longest file name (bytes) Linux filesystems take.
pub const NAME_MAX: usize = 255;

/// How many numbered suffixes (`name.1` … ) are tried before a timestamped one.
pub const MAX_SUFFIX: u32 = 1000;

/// What a failed file's reason file adds to its name.
pub const REASON: &str = ".reason";

/// Start of the hidden name a delete renames a file to: `.accio-del.<16 hex>.<NAME>`, a
/// pattern a user's own file is implausible to match.
const DEL_PREFIX: &str = ".accio-del.";

/// The `n`th collision suffix: none, then `.1` … `.1000`, then one with a timestamp and a
/// random part (free unless something else is very unlucky).
pub fn suffix(n: u32) -> String {
    match n {
        0 => String::new(),
        n if n <= MAX_SUFFIX => format!(".{n}"),
        _ => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            format!(".{}.{:08x}", now.as_nanos(), fastrand::u32(..))
        }
    }
}

/// `base` followed by `suffix`, with `base` cut short if needed so the whole stays within
/// `max` bytes: a 255-byte name must still get its collision suffix, temporary name or
/// `.reason` file instead of failing with ENAMETOOLONG for ever.
pub fn fit_name(base: &OsStr, suffix: &str, max: usize) -> OsString {
    let b = base.as_bytes();
    let keep = b.len().min(max.saturating_sub(suffix.len()));
    let mut s = OsString::from(OsStr::from_bytes(&b[..keep]));
    s.push(suffix);
    s
}

/// Splits `name` into stem and extension (with its dot): `report.csv` → (`report`,
/// `.csv`). A leading dot is not an extension, and neither is a long tail (over 16 bytes).
pub fn split_ext(name: &[u8]) -> (&[u8], &[u8]) {
    match name.iter().rposition(|&b| b == b'.') {
        Some(p) if p > 0 && name.len() - p <= 16 => name.split_at(p),
        _ => (name, &[]),
    }
}

/// A name for a file that goes back into the spool: `stem` + `tag` + extension, the stem cut
/// short to fit `max` bytes. Keeping the extension last keeps the name matching the watch's
/// globs (`*.csv`), so a file put back is still picked up and sent.
pub fn spool_name(name: &OsStr, tag: &str, max: usize) -> OsString {
    let (stem, ext) = split_ext(name.as_bytes());
    let ext = if ext.len() + tag.len() < max {
        ext
    } else {
        &[][..]
    };
    let keep = stem.len().min(max.saturating_sub(tag.len() + ext.len()));
    let mut b = stem[..keep].to_vec();
    b.extend_from_slice(tag.as_bytes());
    b.extend_from_slice(ext);
    OsString::from_vec(b)
}

/// The `.reason` file's name for a file named `name` in failed_dir: `NAME.reason`, `NAME`
/// cut short if needed to fit [`NAME_MAX`].
pub fn reason_name(name: &OsStr) -> OsString {
    fit_name(name, REASON, NAME_MAX)
}

/// A hidden temporary beside `name`: `.NAME.accio-<8 hex>.tmp`, fitted to [`NAME_MAX`]
/// (see [`is_our_temporary`]).
pub fn temp_name(name: &OsStr) -> OsString {
    let mut hidden = OsString::from(".");
    hidden.push(name);
    fit_name(
        &hidden,
        &format!(".accio-{:08x}.tmp", fastrand::u32(..)),
        NAME_MAX,
    )
}

/// Is `name` one of our temporaries: `.ANY.accio-XXXXXXXX.<ext>`?
pub fn is_our_temporary(name: &OsStr, ext: &str) -> bool {
    let b = name.as_bytes();
    let suffix_len = ".accio-".len() + 8 + 1 + ext.len();
    if b.len() <= suffix_len + 1 || b[0] != b'.' {
        return false;
    }
    let tail = &b[b.len() - suffix_len..];
    tail.starts_with(b".accio-")
        && tail[7..15].iter().all(u8::is_ascii_hexdigit)
        && tail[15] == b'.'
        && &tail[16..] == ext.as_bytes()
}

/// The hidden name for deleting `name`: `.accio-del.<16 hex>.<NAME>`, `NAME` cut short if
/// needed to fit [`NAME_MAX`] (if a crash leaves it, the file comes back under that
/// shortened name: still in the spool, sent again), keeping its extension.
pub fn del_name(name: &OsStr) -> OsString {
    let mut b = format!("{DEL_PREFIX}{:016x}.", fastrand::u64(..)).into_bytes();
    let room = NAME_MAX - b.len();
    b.extend_from_slice(spool_name(name, "", room).as_bytes());
    OsString::from_vec(b)
}

/// The original name inside a hidden delete name, if `name` is one.
pub fn del_original(name: &OsStr) -> Option<&OsStr> {
    let rest = name.as_bytes().strip_prefix(DEL_PREFIX.as_bytes())?;
    if rest.len() < 18 || !rest[..16].iter().all(u8::is_ascii_hexdigit) || rest[16] != b'.' {
        return None;
    }
    Some(OsStr::from_bytes(&rest[17..]))
}

/// How the names to try are made for a destination. Every kind tries the name itself
/// first, then suffixed ones (see [`suffix`]), each fitted to [`NAME_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// done_dir, reason files: `NAME`, `NAME.1`, `NAME.2`, …
    Plain,
    /// failed_dir: as [`Naming::Plain`], but a candidate is only taken if its `.reason` is
    /// free too (checked by the caller), so a file and its reason keep matching names
    /// (`y.1` and `y.1.reason`, never `y` and `y.reason.1`). The name itself first, even if
    /// too long for `.reason` to be appended whole (its reason is then `NAME` shortened +
    /// `.reason`); after that only names short enough for `.reason` to fit whole, since
    /// suffixed long names would all share one shortened reason name.
    Failed,
    /// Back into the spool: `STEM.1.EXT`, … keeping the extension last (see
    /// [`spool_name`]).
    Spool,
}

impl Naming {
    /// The names to try for `name`, in order, each once: the name, up to [`MAX_SUFFIX`]
    /// numbered ones, then one timestamped. Lazy, so the timestamp is taken when reached.
    pub fn candidates(self, name: &OsStr) -> impl Iterator<Item = OsString> + '_ {
        let make = move |n: u32| match self {
            Naming::Plain => fit_name(name, &suffix(n), NAME_MAX),
            Naming::Spool => spool_name(name, &suffix(n), NAME_MAX),
            Naming::Failed => fit_name(name, &suffix(n), NAME_MAX - REASON.len()),
        };
        let first = match self {
            Naming::Spool => spool_name(name, "", NAME_MAX),
            Naming::Plain | Naming::Failed => fit_name(name, "", NAME_MAX),
        };
        // Failed tries the unsuffixed name again, shortened for `.reason`; shortening can
        // also make `NAME.1` equal to `NAME`: each name is tried once.
        let mut seen = HashSet::new();
        std::iter::once(first)
            .chain((0..=MAX_SUFFIX + 1).filter_map(move |n| match (self, n) {
                (Naming::Failed, n) => Some(make(n)),
                (_, 0) => None,
                (_, n) => Some(make(n)),
            }))
            .filter(move |c| seen.insert(c.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_put_back_into_the_spool_keep_their_extension() {
        let c = |name: &str, n: usize| {
            Naming::Spool
                .candidates(OsStr::new(name))
                .nth(n)
                .unwrap()
                .into_vec()
        };
        assert_eq!(c("report.csv", 0), b"report.csv");
        assert_eq!(c("report.csv", 1), b"report.1.csv");
        assert_eq!(c("report", 2), b"report.2");
        assert_eq!(c(".hidden", 1), b".hidden.1");
        assert_eq!(c("a.tar.gz", 1), b"a.tar.1.gz");
        // A long name is shortened in its stem; the extension survives.
        let long = format!("{}.csv", "x".repeat(251));
        let got = c(&long, 3);
        assert_eq!(got.len(), NAME_MAX);
        assert!(got.ends_with(b".3.csv"));
        // The hidden delete name of a 255-byte name still restores to a `*.csv`.
        let hidden = del_name(OsStr::new(&long));
        assert!(hidden.as_bytes().len() <= NAME_MAX);
        let orig = del_original(&hidden).unwrap();
        assert!(orig.as_bytes().ends_with(b".csv"), "{orig:?}");
    }

    #[test]
    fn failed_names_leave_room_for_their_reason() {
        let names: Vec<_> = Naming::Failed.candidates(OsStr::new("y")).take(3).collect();
        assert_eq!(names, ["y", "y.1", "y.2"]);
        let long = OsString::from("f".repeat(NAME_MAX));
        let names: Vec<_> = Naming::Failed.candidates(&long).take(3).collect();
        assert_eq!(names[0], long);
        assert_eq!(names[1].len(), NAME_MAX - REASON.len());
        assert!(names[2].as_bytes().ends_with(b".1"));
    }

    #[test]
    fn hidden_delete_names_are_distinctive_and_fit() {
        let n = del_name(OsStr::new("a.txt"));
        assert!(n.as_bytes().starts_with(b".accio-del."), "{n:?}");
        assert_eq!(del_original(&n), Some(OsStr::new("a.txt")));
        let long = OsString::from("l".repeat(NAME_MAX));
        let n = del_name(&long);
        assert_eq!(n.len(), NAME_MAX);
        assert_eq!(del_original(&n).unwrap().len(), NAME_MAX - 28);
        for not in [
            ".a.accio-0123abcd.del",
            ".accio-del.0123.x",
            ".accio-del.0123456789abcdefx",
            ".accio-del.0123456789abcdef.",
            ".accio-del.0123456789abcdeg.x",
        ] {
            assert_eq!(del_original(OsStr::new(not)), None, "{not}");
        }
    }

    #[test]
    fn our_temporaries_are_recognised() {
        assert!(is_our_temporary(OsStr::new(".a.accio-0123abcd.tmp"), "tmp"));
        assert!(is_our_temporary(
            OsStr::new(".a b.accio-0123abcd.del"),
            "del"
        ));
        assert!(!is_our_temporary(OsStr::new("a.accio-0123abcd.tmp"), "tmp"));
        assert!(!is_our_temporary(
            OsStr::new(".a.accio-0123abcz.tmp"),
            "tmp"
        ));
        assert!(!is_our_temporary(OsStr::new(".accio-0123abcd.tmp"), "tmp"));
        assert!(!is_our_temporary(
            OsStr::new(".a.accio-0123abcd.tmp"),
            "del"
        ));
        assert!(is_our_temporary(&temp_name(OsStr::new("x")), "tmp"));
        let long = OsString::from("t".repeat(NAME_MAX));
        assert!(is_our_temporary(&temp_name(&long), "tmp"));
    }

    /// A file name as a directory entry holds it: 1 to 255 bytes, no `/`, no NUL, not `.`
    /// or `..`; dots and an extension often.
    fn file_name() -> impl Strategy<Value = OsString> {
        let part = proptest::collection::vec(
            prop_oneof![
                4 => any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
                1 => Just(b'.'),
            ],
            0..250,
        );
        (part, proptest::option::of("[a-z]{1,6}"))
            .prop_map(|(mut b, ext)| {
                if let Some(ext) = ext {
                    b.push(b'.');
                    b.extend_from_slice(ext.as_bytes());
                }
                b.truncate(NAME_MAX);
                OsString::from_vec(b)
            })
            .prop_filter("a real name", |n| !n.is_empty() && n != "." && n != "..")
    }

    fn is_name(n: &OsStr) -> bool {
        !n.is_empty() && n.len() <= NAME_MAX && !n.as_bytes().contains(&b'/')
    }

    proptest! {
        #[test]
        fn fitted_names_fit_and_end_with_their_suffix(
            name in file_name(),
            n in 0..MAX_SUFFIX + 2,
        ) {
            let s = suffix(n);
            let f = fit_name(&name, &s, NAME_MAX);
            prop_assert!(f.len() <= NAME_MAX);
            prop_assert!(f.as_bytes().ends_with(s.as_bytes()));
            prop_assert!(name.as_bytes().starts_with(&f.as_bytes()[..f.len() - s.len()]));
            prop_assert!(reason_name(&name).len() <= NAME_MAX);
            prop_assert!(temp_name(&name).len() <= NAME_MAX);
            prop_assert!(del_name(&name).len() <= NAME_MAX);
        }

        #[test]
        fn spool_names_keep_the_extension(name in file_name(), n in 0..MAX_SUFFIX + 2) {
            let (_, ext) = split_ext(name.as_bytes());
            let s = spool_name(&name, &suffix(n), NAME_MAX);
            prop_assert!(is_name(&s), "{:?}", s);
            prop_assert!(s.as_bytes().ends_with(ext), "{:?} lost {:?}", s, ext);
            // What a hidden delete restores to keeps it as well.
            let hidden = del_name(&name);
            let orig = del_original(&hidden).unwrap();
            prop_assert!(orig.as_bytes().ends_with(ext), "{:?} lost {:?}", orig, ext);
        }

        #[test]
        fn candidates_are_distinct_names_that_fit(name in file_name()) {
            for naming in [Naming::Plain, Naming::Failed, Naming::Spool] {
                let all: Vec<_> = naming.candidates(&name).collect();
                prop_assert!(all.len() > MAX_SUFFIX as usize);
                let distinct: HashSet<_> = all.iter().collect();
                prop_assert_eq!(distinct.len(), all.len());
                for c in &all {
                    prop_assert!(is_name(c), "{:?}", c);
                }
            }
        }

        #[test]
        fn failed_names_and_their_reasons_pair(name in file_name()) {
            let all: Vec<_> = Naming::Failed.candidates(&name).collect();
            prop_assert_eq!(&all[0], &fit_name(&name, "", NAME_MAX));
            prop_assert!(reason_name(&all[0]).len() <= NAME_MAX);
            // After the first (whose shortened reason a later candidate may share: that one
            // is skipped while the reason exists), reasons are distinct and `.reason` is
            // appended whole.
            let mut reasons = HashSet::new();
            for c in &all[1..] {
                prop_assert!(reasons.insert(reason_name(c)), "{:?} shares its reason", c);
                let mut whole = c.clone();
                whole.push(REASON);
                prop_assert_eq!(reason_name(c), whole);
            }
        }
    }
}
