//! Worker tests: connections to a port.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

#[tokio::test]
async fn connect_to_a_port() {
    let h = Harness::new();
    let sid = h.sandbox().await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4];
        socket.read_exact(&mut buf).await.unwrap();
        socket.write_all(b"pong").await.unwrap();
        buf
    });
    let mut stream = h.worker.connect_port(&dev(), &sid, port).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut answer = [0u8; 4];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"pong");
    assert_eq!(&server.await.unwrap(), b"ping");

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    assert!(matches!(
        h.worker
            .connect_port(&dev(), &sid, closed)
            .await
            .map(|_| ()),
        Err(WorkerError::UpstreamUnreachable)
    ));
}
