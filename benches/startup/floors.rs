//! The machine's floors, measured in the same run as the system: a bare interpreter start
//! (`python3 -I -S -c 'print(1)'`, the cold floor) and a round trip to a pre-warmed Python
//! zygote that forks per request, over a unix socket (the warm floor, as in
//! `startup-limits.md` §7a).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The interpreter of both floors and of the sandboxes (`host` image).
pub const PYTHON: &str = "/usr/bin/python3";

/// The zygote: imports only `os`, `struct` and `_socket`, pre-warms `compile`, then serves
/// requests of `<u32 len><code>` with `<u32 len><i32 status><stdout>`, forking one child per
/// request whose stdout goes to a pipe.
const ZYGOTE: &str = r#"
import os, struct, sys, _socket

def recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        part = conn.recv(n - len(buf))
        if not part:
            return None
        buf += part
    return buf

def run_child(code, w):
    os.dup2(w, 1)
    os.close(w)
    status = 0
    try:
        exec(compile(code, "<request>", "exec"), {"__name__": "__main__"})
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    except BaseException:
        status = 1
    try:
        sys.stdout.flush()
    finally:
        os._exit(status)

def serve(conn):
    while True:
        head = recv_exact(conn, 4)
        if head is None:
            return
        code = recv_exact(conn, struct.unpack("<I", head)[0])
        if code is None:
            return
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            run_child(code, w)
        os.close(w)
        out = b""
        while True:
            part = os.read(r, 65536)
            if not part:
                break
            out += part
        os.close(r)
        _, st = os.waitpid(pid, 0)
        conn.sendall(struct.pack("<Ii", len(out), os.waitstatus_to_exitcode(st)) + out)

exec(compile("x = 1", "<prewarm>", "exec"), {})
srv = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
srv.bind(sys.argv[1])
srv.listen(8)
while True:
    fd, _ = srv._accept()
    conn = _socket.socket(fileno=fd)
    try:
        serve(conn)
    finally:
        conn.close()
"#;

/// A running zygote, killed on drop.
pub struct Zygote {
    child: Child,
    conn: UnixStream,
    dir: PathBuf,
}

impl Zygote {
    /// Starts the zygote in `dir` (which must exist and be private to this run).
    pub fn start(dir: &Path) -> io::Result<Self> {
        let script = dir.join("zygote.py");
        let socket = dir.join("zygote.sock");
        std::fs::write(&script, ZYGOTE)?;
        let mut child = Command::new(PYTHON)
            .args(["-I", "-S"])
            .arg(&script)
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let conn = loop {
            match UnixStream::connect(&socket) {
                Ok(conn) => break conn,
                Err(error) => {
                    if let Some(status) = child.try_wait()? {
                        return Err(io::Error::other(format!("zygote exited: {status}")));
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(error);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        };
        Ok(Self {
            child,
            conn,
            dir: dir.to_path_buf(),
        })
    }

    /// Runs `code` in a forked child; returns its stdout and exit status.
    pub fn run(&mut self, code: &str) -> io::Result<(Vec<u8>, i32)> {
        let mut request = Vec::with_capacity(4 + code.len());
        request.extend_from_slice(&(code.len() as u32).to_le_bytes());
        request.extend_from_slice(code.as_bytes());
        self.conn.write_all(&request)?;
        let mut head = [0u8; 8];
        self.conn.read_exact(&mut head)?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let status = i32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let mut out = vec![0u8; len];
        self.conn.read_exact(&mut out)?;
        Ok((out, status))
    }

    /// One timed round trip of `print(1)`, checked.
    pub fn sample(&mut self) -> io::Result<Duration> {
        let started = Instant::now();
        let (out, status) = self.run("print(1)")?;
        let took = started.elapsed();
        check_print(&out, status)?;
        Ok(took)
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.dir.join("zygote.sock"));
        let _ = std::fs::remove_file(self.dir.join("zygote.py"));
    }
}

/// One timed bare start of `python3 <flags> -c 'print(1)'`, until it printed and exited.
pub fn bare_python(flags: &[&str]) -> io::Result<Duration> {
    let started = Instant::now();
    let output = Command::new(PYTHON)
        .args(flags)
        .args(["-c", "print(1)"])
        .stdin(Stdio::null())
        .output()?;
    let took = started.elapsed();
    check_print(&output.stdout, output.status.code().unwrap_or(-1))?;
    Ok(took)
}

fn check_print(out: &[u8], status: i32) -> io::Result<()> {
    if out == b"1\n" && status == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "expected \"1\\n\" and status 0, got {:?} and {status}",
            String::from_utf8_lossy(out)
        )))
    }
}
