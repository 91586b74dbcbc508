//! Worker tests: port URLs and connections to a port.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

#[tokio::test]
async fn port_url_and_connect() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    let url = h
        .worker
        .port_url(&dev(), &sid, "3000", Some("https"), "broker.example.com")
        .unwrap();
    assert_eq!(
        url.url,
        format!("https://broker.example.com/sandboxes/{sid}/proxy/3000")
    );
    assert_eq!((url.port, url.protocol.as_str()), (3000, "https"));
    let url = h.worker.port_url(&dev(), &sid, "80", None, "").unwrap();
    assert_eq!(
        url.url,
        format!("https://localhost/sandboxes/{sid}/proxy/80")
    );
    assert!(matches!(
        h.worker.port_url(&dev(), &sid, "0", None, "h"),
        Err(WorkerError::InvalidPort)
    ));
    assert!(matches!(
        h.worker.port_url(&dev(), &sid, "80", Some("gopher"), "h"),
        Err(WorkerError::InvalidProtocol)
    ));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4];
        socket.read_exact(&mut buf).await.unwrap();
        socket.write_all(b"pong").await.unwrap();
        buf
    });
    let (id, mut stream) = h
        .worker
        .connect_port(&dev(), &sid, &format!(" {port} "))
        .await
        .unwrap();
    assert_eq!(id.to_string(), sid);
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
            .connect_port(&dev(), &sid, &closed.to_string())
            .await
            .map(|(id, _)| id),
        Err(WorkerError::UpstreamUnreachable)
    ));
    assert!(matches!(
        h.worker
            .connect_port(&dev(), &sid, "70000")
            .await
            .map(|(id, _)| id),
        Err(WorkerError::InvalidPort)
    ));
}
