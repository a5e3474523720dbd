//! File contents that identify themselves: a fixed-size header line with the file's id, then
//! filler derived from the id and the position. A receiver can tell a complete copy from a
//! truncated one or from garbage without knowing the file name.
#![allow(dead_code)]

use std::io::Read;
use std::path::Path;

/// Length of the header line `ACCIO-FAULT-ID 0000000123\n`.
pub const HEADER_LEN: usize = 26;
const MAGIC: &[u8] = b"ACCIO-FAULT-ID ";

/// The header of file `id`.
pub fn header(id: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    let s = format!("ACCIO-FAULT-ID {id:010}\n");
    h.copy_from_slice(s.as_bytes());
    h
}

/// The filler byte at absolute position `pos` (>= HEADER_LEN) of file `id`.
#[inline]
pub fn filler(id: u64, pos: u64) -> u8 {
    ((pos.wrapping_add(id.wrapping_mul(13))) % 251) as u8
}

/// The whole content of file `id` with `len` bytes (`len` >= HEADER_LEN).
pub fn content(id: u64, len: u64) -> Vec<u8> {
    let len = len.max(HEADER_LEN as u64);
    let mut v = Vec::with_capacity(len as usize);
    v.extend_from_slice(&header(id));
    v.extend((HEADER_LEN as u64..len).map(|p| filler(id, p)));
    v
}

/// The id in a header, if `bytes` starts with one.
pub fn parse_header(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < HEADER_LEN || !bytes.starts_with(MAGIC) || bytes[HEADER_LEN - 1] != b'\n' {
        return None;
    }
    std::str::from_utf8(&bytes[MAGIC.len()..HEADER_LEN - 1])
        .ok()?
        .parse()
        .ok()
}

/// Checks a received copy: `Some((id, intact))` where `intact` means every byte is what file
/// `id` holds at that position (the copy is a prefix of, or equal to, some file `id`).
pub fn check(bytes: &[u8]) -> Option<(u64, bool)> {
    let id = parse_header(bytes)?;
    let intact = bytes[HEADER_LEN..]
        .iter()
        .enumerate()
        .all(|(i, b)| *b == filler(id, (HEADER_LEN + i) as u64));
    Some((id, intact))
}

/// The id of the file at `path` from its header, if it is readable and has one.
pub fn id_of_file(path: &Path) -> Option<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    // Never block on a FIFO, never follow a link: the spool may hold anything.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut h = [0u8; HEADER_LEN];
    f.read_exact(&mut h).ok()?;
    parse_header(&h)
}
