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
    let stream = connect_addrs(
        &dest(),
        vec![hole.addr, good_addr],
        &timeouts,
        deadline,
        None,
    )
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
    let err = connect_addrs(&dest(), addrs, &timeouts, deadline, None)
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

/// A connect whose SYNs go unanswered (the accept queue is full, so the server drops them)
/// starts afresh once the destination's known round trip says the answer is overdue, not
/// after the kernel's 1 s; it connects as soon as the server has room, and the server
/// accepts no connection besides the ones really made (an attempt closed before its
/// handshake leaves nothing behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_syn_is_sent_afresh_after_the_known_round_trip() {
    use accio::handshake::{Handshake, MIN_RETRY};
    use std::sync::Arc;

    let listener = support::net::loopback_listener(0, None);
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    // Fill the accept queue: the next SYN is dropped.
    let mut fillers = Vec::new();
    loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => fillers.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
            Err(e) => panic!("filling the accept queue: {e}"),
        }
        assert!(fillers.len() < 64, "the accept queue never filled");
    }
    // A destination a tenth of a millisecond away, as far as its handshakes told.
    let hs = Arc::new(Handshake::default());
    for _ in 0..8 {
        hs.sample(Duration::from_micros(100));
    }
    assert_eq!(hs.retry_after(0, Duration::from_secs(10)), MIN_RETRY);
    let timeouts = Timeouts {
        connect: Duration::from_secs(20),
        ..Timeouts::default()
    };
    let task = {
        let hs = hs.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + timeouts.connect;
            connect_addrs(&dest(), vec![addr], &timeouts, deadline, Some(&hs)).await
        })
    };
    // Started afresh twice (at 200 ms and 600 ms), where the kernel alone would not even
    // have sent its first retransmission (at 1 s).
    let until = Instant::now() + Duration::from_secs(15);
    while hs.restarts() < 2 {
        assert!(Instant::now() < until, "never started afresh");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Room for one: the next SYN is answered.
    listener.set_nonblocking(false).unwrap();
    let (first, _) = listener.accept().unwrap();
    let stream = task.await.unwrap().unwrap();
    let ours = stream.local_addr().unwrap();
    // What the server has: the fillers and ours, nothing from the attempts closed unanswered.
    listener.set_nonblocking(true).unwrap();
    let mut accepted = vec![first.peer_addr().unwrap().as_socket().unwrap()];
    while let Ok((s, _)) = listener.accept() {
        accepted.push(s.peer_addr().unwrap().as_socket().unwrap());
    }
    assert_eq!(accepted.len(), fillers.len() + 1, "{accepted:?}");
    assert!(accepted.contains(&ours), "{accepted:?} lacks {ours}");
}
