//! Worker tests: the files API.

use tokio::io::AsyncReadExt;

use super::*;
use crate::api::WriteFileJson;

#[tokio::test]
async fn files_write_read_stat_list_mkdir_remove() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    let w = &h.worker;
    let p = dev();

    let (bytes, append) = decode_write_json(&WriteFileJson {
        content: "Hello".into(),
        encoding: "utf8".into(),
        append: false,
    })
    .unwrap();
    let written = w
        .write_file(&p, &sid, Some("/workspace/a.txt"), reader(&bytes), append)
        .await
        .unwrap();
    assert_eq!((written.bytes_written, written.bytes), (5, 5));
    assert_eq!(written.path, "/workspace/a.txt");

    assert!(matches!(
        w.write_file(
            &p,
            &sid,
            Some("/workspace/a.txt/child.txt"),
            reader(b"x"),
            false
        )
        .await,
        Err(WorkerError::PathIsFile)
    ));
    assert!(matches!(
        w.write_file(&p, &sid, Some("/workspace"), reader(b"x"), false)
            .await,
        Err(WorkerError::PathIsDirectory)
    ));
    assert!(matches!(
        w.write_file(&p, &sid, Some("/"), reader(b"x"), false).await,
        Err(WorkerError::PathIsDirectory)
    ));
    assert!(matches!(
        w.write_file(&p, &sid, Some("relative"), reader(b"x"), false)
            .await,
        Err(WorkerError::InvalidPath(
            crate::path::PathError::NotAbsolute
        ))
    ));

    let read = w
        .read_file(&p, &sid, Some("/workspace/a.txt"), None)
        .await
        .unwrap();
    assert_eq!(
        (
            read.content.as_str(),
            read.kind.as_str(),
            read.encoding.as_str(),
            read.bytes
        ),
        ("Hello", "file", "utf8", 5)
    );
    assert_eq!(
        w.read_file(&p, &sid, Some("/workspace/a.txt"), Some("utf-8"))
            .await
            .unwrap()
            .content,
        "Hello"
    );

    let (bytes, append) = decode_write_json(&WriteFileJson {
        content: "IQ==".into(),
        encoding: "base64".into(),
        append: true,
    })
    .unwrap();
    let written = w
        .write_file(&p, &sid, Some("/workspace/a.txt"), reader(&bytes), append)
        .await
        .unwrap();
    assert_eq!(written.bytes_written, 1);
    let read = w
        .read_file(&p, &sid, Some("/workspace/a.txt"), Some("base64"))
        .await
        .unwrap();
    assert_eq!((read.content.as_str(), read.bytes), ("SGVsbG8h", 6));
    assert!(matches!(
        w.read_file(&p, &sid, Some("/workspace/a.txt"), Some("hex"))
            .await,
        Err(WorkerError::InvalidEncoding)
    ));
    assert!(matches!(
        w.read_file(&p, &sid, Some("/workspace"), None).await,
        Err(WorkerError::FileNotFound)
    ));
    assert!(matches!(
        w.read_file(&p, &sid, Some("/missing"), None).await,
        Err(WorkerError::FileNotFound)
    ));
    let mut opened = w
        .open_file(&p, &sid, Some("/workspace/a.txt"))
        .await
        .unwrap();
    let mut raw = Vec::new();
    opened.body.read_to_end(&mut raw).await.unwrap();
    assert_eq!((raw.as_slice(), opened.size), (&b"Hello!"[..], 6));

    let stat = w.stat_file(&p, &sid, Some("/nope")).await.unwrap();
    assert!(!stat.exists && stat.kind.is_none());
    let stat = w
        .stat_file(&p, &sid, Some("/workspace/a.txt/x"))
        .await
        .unwrap();
    assert!(!stat.exists);
    let stat = w
        .stat_file(&p, &sid, Some("/workspace/a.txt"))
        .await
        .unwrap();
    assert_eq!(
        (
            stat.exists,
            stat.kind.as_deref(),
            stat.size,
            stat.modified_at
        ),
        (true, Some("file"), Some(6), Some(t0()))
    );
    let stat = w.stat_file(&p, &sid, Some("/workspace/")).await.unwrap();
    assert_eq!(
        (stat.kind.as_deref(), stat.size),
        (Some("directory"), Some(0))
    );

    let made = w
        .mkdir(
            &p,
            &sid,
            MkdirRequest {
                path: "/workspace/src".into(),
                recursive: true,
            },
        )
        .await
        .unwrap();
    assert!(made.created);
    let again = w
        .mkdir(
            &p,
            &sid,
            MkdirRequest {
                path: "/workspace/src".into(),
                recursive: false,
            },
        )
        .await
        .unwrap();
    assert!(!again.created);
    assert!(matches!(
        w.mkdir(
            &p,
            &sid,
            MkdirRequest {
                path: "/a/b/c".into(),
                recursive: false
            }
        )
        .await,
        Err(WorkerError::ParentNotFound)
    ));
    assert!(matches!(
        w.mkdir(
            &p,
            &sid,
            MkdirRequest {
                path: "/workspace/a.txt".into(),
                recursive: false
            }
        )
        .await,
        Err(WorkerError::PathIsFile)
    ));
    assert!(matches!(
        w.mkdir(&p, &sid, MkdirRequest::default()).await,
        Err(WorkerError::InvalidPath(crate::path::PathError::Required))
    ));
    w.write_file(
        &p,
        &sid,
        Some("/workspace/src/main.txt"),
        reader(b"m"),
        false,
    )
    .await
    .unwrap();

    let list = w
        .list_files(
            &p,
            &sid,
            ListQuery {
                path: Some("/workspace"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let entries: Vec<_> = list
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e.kind.as_str(), e.size, e.name.as_str()))
        .collect();
    assert_eq!(
        entries,
        vec![
            ("/workspace/a.txt", "file", Some(6), "a.txt"),
            ("/workspace/src", "directory", None, "src"),
        ]
    );
    assert_eq!(list.next_cursor, None);

    assert!(matches!(
        w.remove_file(&p, &sid, Some("/workspace/src"), Some("false"), None)
            .await,
        Err(WorkerError::DirectoryNotEmpty)
    ));
    w.remove_file(&p, &sid, Some("/workspace/src"), Some("true"), None)
        .await
        .unwrap();
    let stat = w
        .stat_file(&p, &sid, Some("/workspace/src/main.txt"))
        .await
        .unwrap();
    assert!(!stat.exists);
    assert!(matches!(
        w.remove_file(&p, &sid, Some("/gone"), None, None).await,
        Err(WorkerError::PathNotFound)
    ));
    w.remove_file(&p, &sid, Some("/gone"), None, Some("1"))
        .await
        .unwrap();
    assert!(matches!(
        w.remove_file(&p, &sid, Some("/.."), None, None).await,
        Err(WorkerError::CannotRemoveRoot)
    ));
    assert!(matches!(
        w.remove_file(&p, &sid, Some("/x"), Some("yes"), None).await,
        Err(WorkerError::InvalidRecursive)
    ));
    assert!(matches!(
        w.remove_file(&p, &sid, Some("/x"), None, Some("maybe"))
            .await,
        Err(WorkerError::InvalidForce)
    ));
}

#[tokio::test]
async fn list_paging_and_validation() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    let w = &h.worker;
    let p = dev();
    for name in ["c", "a", "b", "d/e"] {
        w.write_file(
            &p,
            &sid,
            Some(&format!("/data/{name}")),
            reader(b"1"),
            false,
        )
        .await
        .unwrap();
    }
    let list = |path, recursive, limit, cursor| {
        w.list_files(
            &p,
            &sid,
            ListQuery {
                path,
                recursive,
                limit,
                cursor,
            },
        )
    };
    let page = list(Some("/data"), Some("true"), Some("2"), None)
        .await
        .unwrap();
    let paths: Vec<_> = page.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, vec!["/data/a", "/data/b"]);
    assert_eq!(page.next_cursor.as_deref(), Some("2"));
    let page = list(Some("/data"), Some("true"), Some("2"), Some("2"))
        .await
        .unwrap();
    let paths: Vec<_> = page.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, vec!["/data/c", "/data/d"]);
    assert_eq!(page.next_cursor.as_deref(), Some("4"));
    let page = list(Some("/data"), Some("true"), Some("2"), Some("4"))
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.next_cursor, None);
    // Overflow-safe: huge cursor and limit.
    let page = list(
        Some("/data"),
        None,
        Some("9223372036854775807"),
        Some("9223372036854775807"),
    )
    .await
    .unwrap();
    assert!(page.entries.is_empty());
    assert_eq!(page.next_cursor, None);
    let page = list(Some("/data"), None, Some("9223372036854775807"), Some("1"))
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 3);
    assert_eq!(
        serde_json::to_value(&page).unwrap()["next_cursor"],
        serde_json::Value::Null
    );

    assert!(matches!(
        list(Some("/data"), Some("nah"), None, None).await,
        Err(WorkerError::InvalidRecursive)
    ));
    assert!(matches!(
        list(Some("/data"), None, Some("0"), None).await,
        Err(WorkerError::InvalidLimit)
    ));
    assert!(matches!(
        list(Some("/data"), None, None, Some("-1")).await,
        Err(WorkerError::InvalidCursor)
    ));
    assert!(matches!(
        list(Some("/data/a"), None, None, None).await,
        Err(WorkerError::DirectoryNotFound)
    ));
    assert!(matches!(
        list(Some("/missing"), None, None, None).await,
        Err(WorkerError::DirectoryNotFound)
    ));
    assert!(matches!(
        list(None, None, None, None).await,
        Err(WorkerError::InvalidPath(_))
    ));
}

#[tokio::test]
async fn dev_mode_files_and_code_without_tokens() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    let Ok(RunCodeOutcome::Finished(r)) = code(&h, &sid, "python", "print('dev')", None).await
    else {
        panic!("run code")
    };
    assert!(r.stdout.contains("dev"));
    let (bytes, _) = decode_write_json(&WriteFileJson {
        content: "RGV2".into(),
        ..Default::default()
    })
    .unwrap();
    h.worker
        .write_file(
            &dev(),
            &sid,
            Some("/workspace/dev.txt"),
            reader(&bytes),
            false,
        )
        .await
        .unwrap();
    assert!(
        h.worker
            .stat_file(&dev(), &sid, Some("/workspace/dev.txt"))
            .await
            .unwrap()
            .exists
    );
    let url = h
        .worker
        .port_url(&dev(), &sid, "3000", Some("http"), "broker.example.com")
        .unwrap();
    assert_eq!(url.protocol, "http");
}
