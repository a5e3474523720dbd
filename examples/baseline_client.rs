//! The benchmark's baseline: the plainest correct Accio client in Rust std, blocking I/O.
//! Connect, read the 7-byte command, `std::io::copy` the file into the socket (sendfile on
//! Linux), half-close, read to EOF. No timeouts, no error classes: only what the transfer
//! itself costs. Used by `benches/send.rs` as a process, beside `accio send`.
//!
//! Usage: baseline_client HOST PORT FILE

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("ERROR: usage: baseline_client HOST PORT FILE");
        return ExitCode::from(2);
    }
    match send(&args[1], &args[2], &args[3]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ERROR: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn send(host: &str, port: &str, path: &str) -> std::io::Result<()> {
    let port: u16 = port
        .parse()
        .map_err(|_| std::io::Error::other("bad port"))?;
    let mut file = std::fs::File::open(path)?;
    let mut stream = TcpStream::connect((host, port))?;
    let mut command = [0u8; 7];
    stream.read_exact(&mut command)?;
    if &command != b"accio\r\n" {
        return Err(std::io::Error::other("wrong command"));
    }
    std::io::copy(&mut file, &mut stream)?;
    stream.flush()?;
    stream.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest)?;
    Ok(())
}
