

# Status on fd 3 (the container backend): `S` for a syntax error, closed when the code runs.
def _status(ok):
    if ok:
        posix.close(3)
    else:
        posix.write(3, b'S')
