
// Status as the first byte of stdout (backends with stdio only): ACK when the code runs, NAK
// for a syntax error. Nothing of the code can write before it.
function _status(ok) {
  fs.writeSync(1, ok ? '\x06' : '\x15');
}
