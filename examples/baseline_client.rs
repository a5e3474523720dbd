//! The benchmark's baseline: the plainest correct Accio client, blocking I/O, std plus one
//! libc call. Connect, read the 7-byte command, send the file, half-close, read to EOF. No
//! timeouts, no error classes: only what the transfer itself costs. Used by `benches/send.rs`
//! as a process, beside `accio send`.
//!
//! Two ways to send the file:
//! - default: a blocking `sendfile(2)` loop, what a C client would do;
//! - `--copy`: `std::io::copy(&mut file, &mut stream)`. Note that current std does NOT use
//!   sendfile from a regular file into a socket (pages still in the send buffer could show
//!   later changes to the file), so this is a read/write loop with an 8 KiB buffer.
//!
//! - `--pace RATE` (bytes per second): the `sendfile` loop on a socket the kernel paces
//!   (`SO_MAX_PACING_RATE` = RATE): the floor of a paced send, what
//!   the kernel's pacing costs by itself (benches/rate.rs).
//!
//! Usage: baseline_client [--copy | --pace RATE] HOST PORT FILE

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut how = Body::Sendfile;
    if args.first().is_some_and(|a| a == "--copy") {
        args.remove(0);
        how = Body::StdCopy;
    } else if args.first().is_some_and(|a| a == "--pace") && args.len() > 1 {
        let Ok(rate) = args[1].parse() else {
            eprintln!("ERROR: --pace takes bytes per second");
            return ExitCode::from(2);
        };
        args.drain(..2);
        how = Body::PacedSendfile(rate);
    }
    if args.len() != 3 {
        eprintln!("ERROR: usage: baseline_client [--copy | --pace RATE] HOST PORT FILE");
        return ExitCode::from(2);
    }
    match send(&args[0], &args[1], &args[2], how) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ERROR: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How the file's content goes into the socket.
#[derive(Clone, Copy, Debug)]
pub enum Body {
    /// Blocking `sendfile(2)` until end of file.
    Sendfile,
    /// `std::io::copy`.
    StdCopy,
    /// The blocking `sendfile(2)` loop on a socket paced by the kernel at this many bytes
    /// per second (`SO_MAX_PACING_RATE`).
    PacedSendfile(u64),
}

/// One transfer.
///
/// # Errors
/// Any I/O error, a bad port, or a wrong command.
pub fn send(host: &str, port: &str, path: &str, how: Body) -> std::io::Result<()> {
    let port: u16 = port
        .parse()
        .map_err(|_| std::io::Error::other("bad port"))?;
    let mut file = std::fs::File::open(path)?;
    let mut stream = TcpStream::connect((host, port))?;
    if let Body::PacedSendfile(rate) = how {
        let rate: u64 = rate;
        // SAFETY: an open socket, and a pointer to a u64 of the size given (the kernel
        // reads 64 bits when given 64).
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MAX_PACING_RATE,
                (&rate as *const u64).cast(),
                std::mem::size_of::<u64>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let mut command = [0u8; 7];
    stream.read_exact(&mut command)?;
    if &command != b"accio\r\n" {
        return Err(std::io::Error::other("wrong command"));
    }
    match how {
        Body::StdCopy => {
            std::io::copy(&mut file, &mut stream)?;
        }
        Body::Sendfile | Body::PacedSendfile(_) => loop {
            // SAFETY: both descriptors are open for the call; a null offset means "use and
            // advance the file's own offset".
            let n = unsafe {
                libc::sendfile(
                    stream.as_raw_fd(),
                    file.as_raw_fd(),
                    std::ptr::null_mut(),
                    1 << 30,
                )
            };
            match n {
                0 => break,
                n if n > 0 => continue,
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        },
    }
    stream.flush()?;
    stream.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest)?;
    Ok(())
}
