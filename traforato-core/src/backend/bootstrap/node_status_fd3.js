
// Status on fd 3 (the container backend): `S` for a syntax error, closed when the code runs.
function _status(ok) {
  if (ok) fs.closeSync(3);
  else fs.writeSync(3, 'S');
}
