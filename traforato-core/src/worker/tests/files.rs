//! Worker tests: the files API.

use tokio::io::AsyncReadExt;

use super::*;
use crate::api::Encoding;
use crate::backend::fake::{FakeCode, FakeExec};
use crate::backend::WriteMode;

#[tokio::test]
async fn files_write_read_stat_list_mkdir_remove() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    let w = &h.worker;
    let p = dev();

    let bytes = Encoding::Utf8.decode("Hello").unwrap();
    let written = w
        .write_file(
            &p,
            &sid,
            &path("/workspace/a.txt"),
            reader(&bytes),
            WriteMode::Replace,
        )
        .await
        .unwrap();
    assert_eq!((written.bytes_written, written.bytes), (5, 5));
    assert_eq!(written.path, "/workspace/a.txt");

    assert!(matches!(
        w.write_file(
            &p,
            &sid,
            &path("/workspace/a.txt/child.txt"),
            reader(b"x"),
            WriteMode::Replace
        )
        .await,
        Err(WorkerError::PathIsFile)
    ));
    assert!(matches!(
        w.write_file(
            &p,
            &sid,
            &path("/workspace"),
            reader(b"x"),
            WriteMode::Replace
        )
        .await,
        Err(WorkerError::PathIsDirectory)
    ));
    assert!(matches!(
        w.write_file(&p, &sid, &path("/"), reader(b"x"), WriteMode::Replace)
            .await,
        Err(WorkerError::PathIsDirectory)
    ));

    let read = w
        .read_file(&p, &sid, &path("/workspace/a.txt"), Encoding::Utf8)
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

    let bytes = Encoding::Base64.decode("IQ==").unwrap();
    let written = w
        .write_file(
            &p,
            &sid,
            &path("/workspace/a.txt"),
            reader(&bytes),
            WriteMode::Append,
        )
        .await
        .unwrap();
    assert_eq!(written.bytes_written, 1);
    let read = w
        .read_file(&p, &sid, &path("/workspace/a.txt"), Encoding::Base64)
        .await
        .unwrap();
    assert_eq!(
        (read.content.as_str(), read.encoding.as_str(), read.bytes),
        ("SGVsbG8h", "base64", 6)
    );
    assert!(matches!(
        w.read_file(&p, &sid, &path("/workspace"), Encoding::Utf8)
            .await,
        Err(WorkerError::FileNotFound)
    ));
    assert!(matches!(
        w.read_file(&p, &sid, &path("/missing"), Encoding::Utf8)
            .await,
        Err(WorkerError::FileNotFound)
    ));
    let mut opened = w
        .open_file(&p, &sid, &path("/workspace/a.txt"))
        .await
        .unwrap();
    let mut raw = Vec::new();
    opened.body.read_to_end(&mut raw).await.unwrap();
    assert_eq!((raw.as_slice(), opened.size), (&b"Hello!"[..], 6));

    let stat = w.stat_file(&p, &sid, &path("/nope")).await.unwrap();
    assert!(!stat.exists && stat.kind.is_none());
    let stat = w
        .stat_file(&p, &sid, &path("/workspace/a.txt/x"))
        .await
        .unwrap();
    assert!(!stat.exists);
    let stat = w
        .stat_file(&p, &sid, &path("/workspace/a.txt"))
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
    let stat = w.stat_file(&p, &sid, &path("/workspace/")).await.unwrap();
    assert_eq!(
        (stat.kind.as_deref(), stat.size),
        (Some("directory"), Some(0))
    );

    let made = w
        .mkdir(&p, &sid, &path("/workspace/src"), true)
        .await
        .unwrap();
    assert!(made.created);
    let again = w
        .mkdir(&p, &sid, &path("/workspace/src"), false)
        .await
        .unwrap();
    assert!(!again.created);
    assert!(matches!(
        w.mkdir(&p, &sid, &path("/a/b/c"), false).await,
        Err(WorkerError::ParentNotFound)
    ));
    assert!(matches!(
        w.mkdir(&p, &sid, &path("/workspace/a.txt"), false).await,
        Err(WorkerError::PathIsFile)
    ));
    w.write_file(
        &p,
        &sid,
        &path("/workspace/src/main.txt"),
        reader(b"m"),
        WriteMode::Replace,
    )
    .await
    .unwrap();

    let list = w
        .list_files(&p, &sid, &path("/workspace"), ListOptions::default())
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

    let recursive = RemoveOptions {
        recursive: true,
        force: false,
    };
    let force = RemoveOptions {
        recursive: false,
        force: true,
    };
    assert!(matches!(
        w.remove_file(&p, &sid, &path("/workspace/src"), RemoveOptions::default())
            .await,
        Err(WorkerError::DirectoryNotEmpty)
    ));
    w.remove_file(&p, &sid, &path("/workspace/src"), recursive)
        .await
        .unwrap();
    let stat = w
        .stat_file(&p, &sid, &path("/workspace/src/main.txt"))
        .await
        .unwrap();
    assert!(!stat.exists);
    assert!(matches!(
        w.remove_file(&p, &sid, &path("/gone"), RemoveOptions::default())
            .await,
        Err(WorkerError::PathNotFound)
    ));
    w.remove_file(&p, &sid, &path("/gone"), force)
        .await
        .unwrap();
    assert!(matches!(
        w.remove_file(&p, &sid, &path("/.."), RemoveOptions::default())
            .await,
        Err(WorkerError::CannotRemoveRoot)
    ));
}

#[tokio::test]
async fn list_paging_and_validation() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    let (w, p, sid) = (&h.worker, &dev(), &sid);
    for name in ["c", "a", "b", "d/e"] {
        w.write_file(
            p,
            sid,
            &path(&format!("/data/{name}")),
            reader(b"1"),
            WriteMode::Replace,
        )
        .await
        .unwrap();
    }
    let list = |raw: &str, recursive, limit, cursor| {
        let at = path(raw);
        async move {
            w.list_files(
                p,
                sid,
                &at,
                ListOptions {
                    recursive,
                    limit,
                    cursor,
                },
            )
            .await
        }
    };
    let page = list("/data", true, 2, 0).await.unwrap();
    let paths: Vec<_> = page.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, vec!["/data/a", "/data/b"]);
    assert_eq!(page.next_cursor.as_deref(), Some("2"));
    let page = list("/data", true, 2, 2).await.unwrap();
    let paths: Vec<_> = page.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, vec!["/data/c", "/data/d"]);
    assert_eq!(page.next_cursor.as_deref(), Some("4"));
    let page = list("/data", true, 2, 4).await.unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.next_cursor, None);
    // Overflow-safe: huge cursor and limit.
    let page = list("/data", false, usize::MAX, usize::MAX).await.unwrap();
    assert!(page.entries.is_empty());
    assert_eq!(page.next_cursor, None);
    let page = list("/data", false, usize::MAX, 1).await.unwrap();
    assert_eq!(page.entries.len(), 3);
    assert_eq!(
        serde_json::to_value(&page).unwrap()["next_cursor"],
        serde_json::Value::Null
    );

    assert!(matches!(
        list("/data", false, 0, 0).await,
        Err(WorkerError::InvalidLimit)
    ));
    assert!(matches!(
        list("/data/a", false, DEFAULT_LIST_LIMIT, 0).await,
        Err(WorkerError::DirectoryNotFound)
    ));
    assert!(matches!(
        list("/missing", false, DEFAULT_LIST_LIMIT, 0).await,
        Err(WorkerError::DirectoryNotFound)
    ));
}

#[tokio::test]
async fn dev_mode_files_and_code_without_tokens() {
    let h = Harness::new();
    h.fake.set_script_code(
        "print('dev')",
        FakeCode::Runs(FakeExec::new().stdout("dev\n")),
    );
    let sid = h.sandbox().await;
    let Ok(RunCodeOutcome::Finished(r)) = code(&h, &sid, "python", "print('dev')", None).await
    else {
        panic!("run code")
    };
    assert_eq!(r.stdout, "dev\n");
    let bytes = Encoding::Base64.decode("RGV2").unwrap();
    h.worker
        .write_file(
            &dev(),
            &sid,
            &path("/workspace/dev.txt"),
            reader(&bytes),
            WriteMode::Replace,
        )
        .await
        .unwrap();
    assert!(
        h.worker
            .stat_file(&dev(), &sid, &path("/workspace/dev.txt"))
            .await
            .unwrap()
            .exists
    );
}
