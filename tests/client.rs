//! The connect phase of the client library (`accio::client::connect_addrs`, what `connect`
//! does once a name is resolved) against real sockets on loopback: black-holed addresses
//! (accept queue full, SYNs dropped) and a listener.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use accio::client::{connect_addrs, ClientError, Destination, Phase};
use accio::protocol::Timeouts;
use support::net::BlackHole;
use tokio::time::Instant;

/// The name errors give the destination; the addresses tried are passed apart.
fn dest() -> Destination {
    Destination {
        host: "test".to_string(),
        port: 1,
    }
}

/// A black-holed first address does not use up the whole connect timeout: the next one
/// gets its share and is reached.
#[tokio::test]
async fn every_address_is_tried_within_the_connect_timeout() {
    let hole = BlackHole::start();
    let good = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let good_addr = good.local_addr().unwrap();
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        ..Timeouts::default()
    };
    let start = Instant::now();
    let deadline = start + timeouts.connect;
    let stream = connect_addrs(&dest(), vec![hole.addr, good_addr], &timeouts, deadline)
        .await
        .unwrap();
    assert_eq!(stream.peer_addr().unwrap(), good_addr);
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// However many addresses there are, the whole connect phase ends at the deadline.
#[tokio::test]
async fn many_black_holes_still_end_at_the_connect_timeout() {
    let holes: Vec<BlackHole> = (0..3).map(|_| BlackHole::start()).collect();
    let addrs: Vec<SocketAddr> = holes.iter().map(|h| h.addr).collect();
    let timeouts = Timeouts {
        connect: Duration::from_millis(1500),
        ..Timeouts::default()
    };
    let start = Instant::now();
    let deadline = start + timeouts.connect;
    let err = connect_addrs(&dest(), addrs, &timeouts, deadline)
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, ClientError::ConnectTimeout { .. }), "{err}");
    assert_eq!(err.phase(), Phase::ConnectTimeout);
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    // The message names every address tried.
    let msg = err.to_string();
    for h in &holes {
        assert!(msg.contains(&h.addr.to_string()), "{msg}");
    }
}
