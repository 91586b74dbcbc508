//! The files API through the broker: write, read, raw up- and download, stat, list, mkdir,
//! remove.

use serde_json::{json, Value};

use crate::harness::*;

#[tokio::test]
async fn files_api() {
    let stack = Stack::dev().await;
    let id = stack.create_id().await;
    let put_json = |path: &str, body: Value| {
        follow()
            .put(stack.sandbox(&id, &format!("/files?path={path}")))
            .json(&body)
            .send()
    };
    let get = |rest: String| follow().get(stack.sandbox(&id, &rest)).send();

    let resp = put_json(
        "/workspace/a.txt",
        json!({"content": "Hello", "encoding": "utf8"}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let written = body_json(resp).await;
    assert_eq!(written["bytes_written"], 5);
    assert_eq!(written["path"], "/workspace/a.txt");

    expect_error(
        put_json(
            "/workspace/a.txt/child.txt",
            json!({"content": "x", "encoding": "utf8"}),
        )
        .await
        .unwrap(),
        400,
        "path points to a file",
    )
    .await;

    let read = body_json(get("/files?path=/workspace/a.txt".into()).await.unwrap()).await;
    assert_eq!(read["content"], "Hello");
    assert_eq!(read["type"], "file");

    let resp = put_json(
        "/workspace/a.txt",
        json!({"content": "IQ==", "encoding": "base64", "append": true}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let read = body_json(
        get("/files?path=/workspace/a.txt&encoding=base64".into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(read["content"], "SGVsbG8h");
    assert_eq!(read["bytes"], 6);
    let read = body_json(
        get("/files?path=/workspace/a.txt&encoding=utf-8".into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(read["content"], "Hello!");

    // Raw download (extension) and raw upload.
    let resp = get("/files/raw?path=/workspace/a.txt".into())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"Hello!");
    let resp = follow()
        .put(stack.sandbox(&id, "/files?path=/workspace/raw.bin"))
        .body(vec![0u8, 1, 2, 255])
        .send()
        .await
        .unwrap();
    assert_eq!(body_json(resp).await["bytes_written"], 4);
    let resp = get("/files/raw?path=/workspace/raw.bin".into())
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &[0u8, 1, 2, 255]);

    // Dev base64 write, then stat.
    let resp = put_json("/workspace/dev.txt", json!({"content": "RGV2"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let stat = body_json(
        get("/files/stat?path=/workspace/dev.txt".into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stat["exists"], true);
    assert_eq!(stat["type"], "file");
    assert_eq!(stat["size"], 3);
    expect_error(
        put_json(
            "/workspace/x",
            json!({"content": "!!", "encoding": "base64"}),
        )
        .await
        .unwrap(),
        400,
        "invalid base64 content",
    )
    .await;
    expect_error(
        put_json(
            "/workspace/x",
            json!({"content": "x", "encoding": "latin1"}),
        )
        .await
        .unwrap(),
        400,
        "encoding must be utf8 or base64",
    )
    .await;
    expect_error(
        put_json("relative", json!({"content": "x"})).await.unwrap(),
        400,
        "path must be an absolute path",
    )
    .await;

    let stat = body_json(
        get("/files/stat?path=/workspace/missing".into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stat["exists"], false);

    let resp = follow()
        .post(stack.sandbox(&id, "/files/mkdir"))
        .json(&json!({"path": "/workspace/src", "recursive": true}))
        .expect_status(200)
        .await;
    assert_eq!(body_json(resp).await["created"], true);
    let resp = put_json(
        "/workspace/src/main.txt",
        json!({"content": "fn main", "encoding": "utf8"}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);

    let list = body_json(get("/files/list?path=/workspace".into()).await.unwrap()).await;
    let entries = list["entries"].as_array().unwrap();
    assert!(entries.len() >= 2);
    assert!(entries
        .iter()
        .any(|e| e["path"] == "/workspace/a.txt" && e["type"] == "file"));
    assert!(entries
        .iter()
        .any(|e| e["path"] == "/workspace/src" && e["type"] == "directory"));
    assert!(list["next_cursor"].is_null());

    follow()
        .delete(stack.sandbox(&id, "/files?path=/workspace/src&recursive=false"))
        .expect_error(409, "directory is not empty")
        .await;
    follow()
        .delete(stack.sandbox(&id, "/files?path=/workspace/src&recursive=true"))
        .expect_status(204)
        .await;
    let stat = body_json(
        get("/files/stat?path=/workspace/src/main.txt".into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stat["exists"], false);
    follow()
        .delete(stack.sandbox(&id, "/files?path=/"))
        .expect_error(400, "cannot remove root directory")
        .await;
    stack.stop().await.unwrap();
}
