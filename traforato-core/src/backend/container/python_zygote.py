

# The zygote (`python_run.py` + this file): serves run requests on fd 0, a SOCK_SEQPACKET
# socket. Request: `id\0cwd\0KEY=value\0...` with 4 fds (stdin, stdout, stderr, status).
# Replies: `R` once warm, then per request `S id pid` (forked) or `F id message`, and
# `E id code` when the child ended (128 + signal when killed). After a short idle time it
# loads `site` once, so later children have the dist-packages without paying for it.
# First of all it makes itself non-dumpable, so that no other process of the sandbox (same
# uid, no CAP_SYS_PTRACE) can ptrace it, read its memory or take its fds; without that it
# exits and the sandbox runs one-shot. Its children inherit it and keep it: their memory is
# a copy of the zygote's.
def _serve():
    import ctypes
    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE
        posix._exit(1)
    import _socket, _signal, select
    sock = _socket.socket(fileno=0)
    wake_r, wake_w = posix.pipe()
    posix.set_blocking(wake_r, False)
    posix.set_blocking(wake_w, False)
    _signal.signal(_signal.SIGCHLD, lambda signum, frame: None)
    _signal.set_wakeup_fd(wake_w)
    exec(compile('pass', '<prewarm>', 'exec', dont_inherit=True), {})
    poller = select.poll()
    poller.register(0, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    running = {}
    sock.send(b'R')
    idle = 200
    while True:
        events = poller.poll(idle)
        if not events:
            if idle is not None:
                idle = None
                if 'site' not in sys.modules:
                    import site
                    site.main()
            continue
        for fd, _ in events:
            if fd == wake_r:
                try:
                    while posix.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                while running:
                    pid, status = posix.waitpid(-1, posix.WNOHANG)
                    if pid == 0:
                        break
                    rid = running.pop(pid, None)
                    if rid is not None:
                        code = posix.waitstatus_to_exitcode(status)
                        sock.send(b'E %s %d' % (rid, 128 - code if code < 0 else code))
                continue
            data, ancillary, _, _ = sock.recvmsg(262144, _socket.CMSG_SPACE(16))
            if not data:
                posix._exit(0)
            fds = []
            for level, kind, raw in ancillary:
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                    fds += [int.from_bytes(raw[i:i + 4], sys.byteorder, signed=True)
                            for i in range(0, len(raw) - len(raw) % 4, 4)]
            parts = data.split(b'\0')
            rid = parts[0]
            failure = None
            if len(fds) != 4 or len(parts) < 2:
                failure = b'bad request'
            else:
                try:
                    posix.chdir(parts[1])
                except OSError as e:
                    failure = b'working directory %s: %s (os error %d)' % (
                        parts[1], e.strerror.encode(), e.errno)
            if failure is None:
                pid = posix.fork()
                if pid == 0:
                    try:
                        _signal.set_wakeup_fd(-1)
                        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
                        posix.close(wake_r)
                        posix.close(wake_w)
                        sock.detach()
                        posix.setsid()
                        # The zygote runs with real uid 1 (out of the sandbox's reach); the
                        # run is sandbox root again.
                        posix.setresuid(0, 0, 0)
                        for target, fd in enumerate(fds):
                            posix.dup2(fd, target)
                        for fd in fds:
                            posix.close(fd)
                        env = posix.environ
                        for key in list(env):
                            posix.unsetenv(key)
                        env.clear()
                        for item in parts[2:]:
                            key, _, value = item.partition(b'=')
                            posix.putenv(key, value)
                            env[key] = value
                        _run()
                    finally:
                        posix._exit(127)
                running[pid] = rid
            for fd in fds:
                posix.close(fd)
            sock.send(b'F %s %s' % (rid, failure) if failure else b'S %s %d' % (rid, pid))


_serve()
