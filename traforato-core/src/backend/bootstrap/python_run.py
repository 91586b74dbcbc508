# Run-code bootstrap for CPython, passed with `python3 -I -S -c`: `_run()` reads the code from
# stdin, compiles it (nothing runs before that), reports a syntax error with `_status(False)`
# and the interpreter's own message on stderr, else calls `_status(True)` and runs the code as
# `__main__`. `_status` comes from a status file appended to this one (fd 3 for the container
# backend, the first byte of stdout for backends with stdio only). Used alone for one-shot
# runs, and by the container's zygote in each forked child.
# `atexit` is imported here so that `_finish` finds it loaded (the zygote's children inherit it).
import sys, posix, atexit
_boot = sys.modules['__main__']


class _LazySite:
    """Runs `site` (dist-packages, .pth files) the first time an import is not found."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if path is not None or 'site' in sys.modules:
            return None
        sys.meta_path.remove(_LazySite)
        import site
        site.main()
        for finder in sys.meta_path:
            find = getattr(finder, 'find_spec', None)
            spec = find and find(name, path, target)
            if spec is not None:
                return spec
        return None


def _run():
    chunks = []
    while True:
        chunk = posix.read(0, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    try:
        code = compile(b''.join(chunks), '<stdin>', 'exec', dont_inherit=True)
    except (SyntaxError, ValueError) as e:
        _status(False)
        e.__traceback__ = None
        sys.excepthook(type(e), e, None)
        _finish(1)
    _status(True)
    extra = posix.environ.get(b'PYTHONPATH', b'').decode('utf-8', 'surrogateescape')
    sys.path[0:0] = [''] + [p for p in extra.split(':') if p]
    sys.argv = ['-']
    if 'site' not in sys.modules:
        import builtins
        builtins.exit = builtins.quit = sys.exit
        sys.meta_path.append(_LazySite)
    main = type(sys)('__main__')
    main.__builtins__ = __builtins__
    sys.modules['__main__'] = main
    status = 0
    try:
        exec(code, main.__dict__)
    except SystemExit as e:
        status = e.code
    except BaseException as e:
        tb = e.__traceback__
        tb = tb.tb_next if tb is not None else None
        e.__traceback__ = tb
        sys.excepthook(type(e), e, tb)
        status = 1
    _finish(status)


def _finish(status):
    """Exits like the interpreter (threads joined, atexit run, output flushed), minus the
    slow teardown of every module."""
    if status is None:
        status = 0
    elif not isinstance(status, int):
        try:
            sys.stderr.write('%s\n' % (status,))
        except BaseException:
            pass
        status = 1
    try:
        threading = sys.modules.get('threading')
        if threading is not None:
            threading._shutdown()
        atexit._run_exitfuncs()
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            if status == 0:
                status = 120
    posix._exit(status & 0xFF)
