//! The files API through [`Vm::exec`]: the default file methods of [`Vm`] for backends whose
//! sandboxes run a POSIX shell with GNU coreutils and findutils (a Linux VM over SSH, say).
//! A backend with a faster path (the container backend's `openat2` under the root, SFTP)
//! overrides them.
//!
//! Each operation is one `/bin/sh -c` script with the path as `$1`; the script checks what
//! the contract distinguishes (missing, a directory where a file was needed, a file among the
//! ancestors...) and answers with an exit code of its own. Only a refusal by the filesystem
//! itself (`EACCES`, `EPERM`, a read-only mount) is recognised by its message, in the C
//! locale. The path is an argument, never part of the script, so no name can inject shell
//! code. Symlinks are followed as a read would (`stat -L`, `find -H`); a read is bounded
//! (whole files over exec are held in memory).

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use tokio::io::AsyncReadExt;

use super::{
    run_collected, BackendError, BoxedReader, Collected, ExecSpec, FileEntry, FileKind, FileReader,
    FileStat, FilesError, Program, Vm, WriteMode,
};
use crate::path::SandboxPath;

/// How long one file operation may take.
const FILE_OP_TIMEOUT: Duration = Duration::from_secs(60);

/// The most entries a listing returns (the container backend's bound too).
pub const MAX_LIST_ENTRIES: usize = 100_000;

/// The largest file a read over exec returns.
pub const MAX_READ_BYTES: u64 = 256 << 20;

/// Exit codes of the scripts (beside 0).
const NOT_FOUND: i32 = 72;
const NOT_DIRECTORY: i32 = 73;
const IS_DIRECTORY: i32 = 74;
const PARENT_NOT_FOUND: i32 = 75;
const NOT_EMPTY: i32 = 76;
const EXISTS: i32 = 77;
const TOO_LARGE: i32 = 78;

/// Shell functions every script starts with: `ancestors_ok` fails with NOT_DIRECTORY when a
/// file sits among the ancestors of `$1`, with NOT_FOUND when one is missing.
const PRELUDE: &str = r#"
p=$1
ancestors_ok() {
  d=$(dirname -- "$1")
  while [ "$d" != / ] && [ ! -e "$d" ]; do d=$(dirname -- "$d"); done
  [ -d "$d" ] || exit 73
}
"#;

const READ: &str = r#"
if [ -d "$p" ]; then exit 74; fi
if [ ! -e "$p" ]; then ancestors_ok "$p"; exit 72; fi
if [ "$(stat -L -c %s -- "$p")" -gt "$2" ]; then exit 78; fi
exec head -c "$2" -- "$p"
"#;

const WRITE: &str = r#"
if [ -d "$p" ]; then exit 74; fi
ancestors_ok "$p"
mkdir -p -- "$(dirname -- "$p")" || exit 1
if [ "$2" = append ]; then exec cat >> "$p"; else exec cat > "$p"; fi
"#;

const STAT: &str = r#"
if [ -L "$p" ] && [ ! -e "$p" ]; then printf 'f 0 '; exec stat -c %Y -- "$p"; fi
if [ ! -e "$p" ]; then exit 72; fi
if [ -d "$p" ]; then printf 'd 0 '; else printf 'f %s ' "$(stat -L -c %s -- "$p")"; fi
exec stat -L -c %Y -- "$p"
"#;

const LIST: &str = r#"
if [ ! -e "$p" ]; then exit 72; fi
if [ ! -d "$p" ]; then exit 73; fi
if [ ! -r "$p" ] || [ ! -x "$p" ]; then echo "$p: Permission denied" >&2; exit 1; fi
depth=-maxdepth; [ "$2" = recursive ] && depth=-mindepth
# Unreadable subdirectories are skipped, as the container backend does.
find -H "$p" -mindepth 1 $depth 1 -printf '%Y %s %P\0' 2>/dev/null | head -z -n 100001
exit 0
"#;

const MKDIR: &str = r#"
if [ -d "$p" ]; then exit 77; fi
if [ -e "$p" ]; then exit 73; fi
if [ "$2" = recursive ]; then
  ancestors_ok "$p"
  exec mkdir -p -- "$p"
fi
parent=$(dirname -- "$p")
if [ ! -d "$parent" ]; then
  if [ -e "$parent" ]; then exit 73; fi
  ancestors_ok "$parent"
  exit 75
fi
exec mkdir -- "$p"
"#;

const REMOVE: &str = r#"
if [ ! -e "$p" ] && [ ! -L "$p" ]; then exit 72; fi
if [ -d "$p" ] && [ ! -L "$p" ] && [ "$2" != recursive ]; then
  if [ -n "$(ls -A -- "$p")" ]; then exit 76; fi
  exec rmdir -- "$p"
fi
exec rm -rf -- "$p"
"#;

/// Runs `script` with the path and `mode` as `$1` and `$2`, `stdin` fed to it.
async fn run<V: Vm + ?Sized>(
    vm: &V,
    op: &'static str,
    script: &str,
    path: &SandboxPath,
    mode: &str,
    stdin: Option<Bytes>,
) -> Result<Collected, FilesError> {
    let argv = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        format!("{PRELUDE}{script}"),
        "sh".to_string(),
        path.to_string(),
        mode.to_string(),
    ];
    let mut spec = ExecSpec::program(Program::Argv(argv));
    spec.cwd = Some("/".to_string());
    // Messages in the C locale: the only ones recognised are the filesystem's refusals.
    spec.env.insert("LC_ALL".to_string(), "C".to_string());
    spec.stdin = stdin;
    spec.timeout = FILE_OP_TIMEOUT;
    run_collected(vm, spec).await.map_err(|error| match error {
        BackendError::Gone => FilesError::Gone,
        other => FilesError::Io {
            op: op.to_string(),
            source: std::io::Error::other(other.to_string()),
        },
    })
}

/// The error of a script that failed, by its exit code.
fn failure(op: &'static str, ran: &Collected) -> FilesError {
    match ran.exit.exit_code {
        NOT_FOUND => FilesError::NotFound,
        NOT_DIRECTORY => FilesError::NotDirectory,
        IS_DIRECTORY => FilesError::IsDirectory,
        PARENT_NOT_FOUND => FilesError::ParentNotFound,
        NOT_EMPTY => FilesError::NotEmpty,
        TOO_LARGE => FilesError::TooLarge,
        _ => {
            let stderr = String::from_utf8_lossy(&ran.stderr);
            let refused = [
                "Permission denied",
                "Operation not permitted",
                "Read-only file system",
            ];
            if refused.iter().any(|m| stderr.contains(m)) {
                FilesError::PermissionDenied
            } else {
                FilesError::Io {
                    op: op.to_string(),
                    source: std::io::Error::other(format!(
                        "exit {}: {}",
                        ran.exit.exit_code,
                        stderr.trim()
                    )),
                }
            }
        }
    }
}

/// Parses `<kind> <size> <rest>` where kind is `d` or anything else (a file).
fn kind_size(line: &str) -> Option<(FileKind, u64, &str)> {
    let (kind, rest) = line.split_once(' ')?;
    let (size, rest) = rest.split_once(' ')?;
    let kind = if kind == "d" {
        FileKind::Directory
    } else {
        FileKind::File
    };
    let size = if kind == FileKind::Directory {
        0
    } else {
        size.parse().ok()?
    };
    Some((kind, size, rest))
}

fn garbled(op: &'static str) -> FilesError {
    FilesError::Io {
        op: op.to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "unexpected output"),
    }
}

/// [`Vm::read_file`] through exec: the whole file is read at once.
pub async fn read_file<V: Vm + ?Sized>(
    vm: &V,
    path: &SandboxPath,
) -> Result<FileReader, FilesError> {
    let limit = MAX_READ_BYTES.to_string();
    let ran = run(vm, "read file", READ, path, &limit, None).await?;
    if ran.exit.exit_code != 0 {
        return Err(failure("read file", &ran));
    }
    let size = ran.stdout.len() as u64;
    Ok(FileReader {
        size,
        body: Box::new(std::io::Cursor::new(ran.stdout)),
    })
}

/// [`Vm::write_file`] through exec: the content goes to the script's stdin.
pub async fn write_file<V: Vm + ?Sized>(
    vm: &V,
    path: &SandboxPath,
    mut content: BoxedReader,
    mode: WriteMode,
) -> Result<u64, FilesError> {
    let mut bytes = Vec::new();
    content
        .read_to_end(&mut bytes)
        .await
        .map_err(|source| FilesError::Io {
            op: "read upload".to_string(),
            source,
        })?;
    let written = bytes.len() as u64;
    let mode = match mode {
        WriteMode::Replace => "replace",
        WriteMode::Append => "append",
    };
    let ran = run(vm, "write file", WRITE, path, mode, Some(bytes.into())).await?;
    if ran.exit.exit_code != 0 {
        return Err(failure("write file", &ran));
    }
    Ok(written)
}

/// [`Vm::stat`] through exec.
pub async fn stat<V: Vm + ?Sized>(
    vm: &V,
    path: &SandboxPath,
) -> Result<Option<FileStat>, FilesError> {
    let ran = run(vm, "stat", STAT, path, "", None).await?;
    match ran.exit.exit_code {
        0 => {}
        NOT_FOUND => return Ok(None),
        _ => return Err(failure("stat", &ran)),
    }
    let text = String::from_utf8_lossy(&ran.stdout);
    let (kind, size, modified) = kind_size(text.trim()).ok_or_else(|| garbled("stat"))?;
    let seconds: i64 = modified.trim().parse().map_err(|_| garbled("stat"))?;
    let modified_at: DateTime<Utc> = Utc
        .timestamp_opt(seconds, 0)
        .single()
        .ok_or_else(|| garbled("stat"))?;
    Ok(Some(FileStat {
        kind,
        size,
        modified_at,
    }))
}

/// [`Vm::list_dir`] through exec (GNU `find -printf`).
pub async fn list_dir<V: Vm + ?Sized>(
    vm: &V,
    path: &SandboxPath,
    recursive: bool,
) -> Result<Vec<FileEntry>, FilesError> {
    let mode = if recursive { "recursive" } else { "" };
    let ran = run(vm, "list directory", LIST, path, mode, None).await?;
    if ran.exit.exit_code != 0 {
        return Err(failure("list directory", &ran));
    }
    let mut entries = Vec::new();
    for record in ran.stdout.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        if entries.len() == MAX_LIST_ENTRIES {
            return Err(FilesError::TooManyEntries);
        }
        let record = String::from_utf8_lossy(record);
        let (kind, size, relative) = kind_size(&record).ok_or_else(|| garbled("list directory"))?;
        // Joined component by component: names keep their spaces and newlines.
        let mut entry_path = path.clone();
        for component in relative.split('/') {
            if component.is_empty() || component == "." || component == ".." {
                return Err(garbled("list directory"));
            }
            entry_path = entry_path.join(component);
        }
        entries.push(FileEntry {
            path: entry_path,
            kind,
            size,
        });
    }
    Ok(entries)
}

/// [`Vm::mkdir`] through exec.
pub async fn mkdir<V: Vm + ?Sized>(
    vm: &V,
    path: &SandboxPath,
    recursive: bool,
) -> Result<bool, FilesError> {
    let mode = if recursive { "recursive" } else { "" };
    let ran = run(vm, "mkdir", MKDIR, path, mode, None).await?;
    match ran.exit.exit_code {
        0 => Ok(true),
        EXISTS => Ok(false),
        _ => Err(failure("mkdir", &ran)),
    }
}

/// [`Vm::remove`] through exec.
pub async fn remove<V: Vm + ?Sized>(
    vm: &V,
    path: &SandboxPath,
    recursive: bool,
) -> Result<(), FilesError> {
    let mode = if recursive { "recursive" } else { "" };
    let ran = run(vm, "remove", REMOVE, path, mode, None).await?;
    if ran.exit.exit_code != 0 {
        return Err(failure("remove", &ran));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ExecExit;

    #[test]
    fn records_parse() {
        assert_eq!(
            kind_size("f 12 /workspace/a b.txt"),
            Some((FileKind::File, 12, "/workspace/a b.txt"))
        );
        assert_eq!(
            kind_size("d 4096 /workspace/dir"),
            Some((FileKind::Directory, 0, "/workspace/dir"))
        );
        assert_eq!(kind_size("f x /a"), None);
        assert_eq!(kind_size("garbage"), None);
    }

    #[test]
    fn scripts_take_the_path_as_an_argument() {
        for script in [READ, WRITE, STAT, LIST, MKDIR, REMOVE] {
            assert!(script.contains("\"$p\""));
            assert!(!script.contains("{}"));
        }
        let ran = |exit_code: i32, stderr: &[u8]| Collected {
            exit: ExecExit {
                exit_code,
                timed_out: false,
            },
            stdout: Vec::new(),
            stderr: stderr.to_vec(),
        };
        let denied = ran(1, b"cat: /etc/x: Permission denied\n");
        assert!(matches!(
            failure("read file", &denied),
            FilesError::PermissionDenied
        ));
        assert!(matches!(
            failure("remove", &ran(NOT_EMPTY, b"")),
            FilesError::NotEmpty
        ));
    }
}
