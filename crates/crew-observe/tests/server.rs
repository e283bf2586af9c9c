//! The dashboard server's refusals: a method other than GET, an unknown path,
//! and a stream past [`MAX_STREAMS`](crew_observe::MAX_STREAMS), which is
//! accepted again once a stream closes.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{get, wait_for};
use crew_observe::MAX_STREAMS;

/// Sends a raw request and returns the status line.
fn request(addr: SocketAddr, head: &str) -> (String, BufReader<TcpStream>) {
    let mut conn = TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    conn.write_all(head.as_bytes()).expect("send");
    let mut reader = BufReader::new(conn);
    let mut status = String::new();
    reader.read_line(&mut status).expect("a status line");
    (status, reader)
}

/// Opens `/events` and reads until its first event, so the stream is open.
fn open_stream(addr: SocketAddr) -> Result<BufReader<TcpStream>, String> {
    let (status, mut reader) = request(addr, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n");
    if !status.contains(" 200 ") {
        return Err(status);
    }
    let mut line = String::new();
    while !line.starts_with("event: history") {
        line.clear();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
    }
    Ok(reader)
}

#[test]
fn refuses_what_it_does_not_serve_and_caps_streams() {
    let pool: crew::Pool = crew::Pool::builder().workers(1).build().expect("build");
    let server = crew_observe::Dashboard::new()
        .pool("p", &pool)
        .serve("127.0.0.1:0")
        .expect("serve");
    let addr = server.addr();

    let (status, _) = request(
        addr,
        "POST /api/stats HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(status.contains(" 405 "), "{status}");
    let (status, _) = get(&format!("{}missing", server.url())).expect("GET");
    assert_eq!(status, 404);

    let mut streams: Vec<_> = (0..MAX_STREAMS)
        .map(|i| open_stream(addr).unwrap_or_else(|s| panic!("stream {i}: {s}")))
        .collect();
    let (status, _) = request(addr, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(status.contains(" 503 "), "one stream too many: {status}");
    // Plain requests are still answered meanwhile.
    assert_eq!(
        get(&format!("{}api/stats", server.url())).expect("GET").0,
        200
    );

    // Closing one frees its place once the server notices (at its next write).
    drop(streams.pop());
    wait_for("a stream slot to free up", Duration::from_secs(20), || {
        open_stream(addr).map(drop)
    });
    drop(streams);
    drop(server);
    pool.shutdown();
}
