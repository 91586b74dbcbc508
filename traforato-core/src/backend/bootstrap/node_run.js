// Run-code bootstrap for Node.js, passed with `node -e`: reads the code from stdin, compiles it
// as a CommonJS module body (nothing runs before that), reports a syntax error with
// `_status(false)` and Node's own message on stderr, else calls `_status(true)` and runs the
// code like `node -`. `_status` comes from a status file appended to this one.
const fs = require('fs');
const path = require('path');
const vm = require('vm');
const Module = require('module');
const source = fs.readFileSync(0, 'utf8');
const params = ['exports', 'require', 'module', '__filename', '__dirname'];
let compiled;
try {
  compiled = vm.compileFunction(source, params, { filename: '[stdin]' });
} catch (e) {
  _status(false);
  fs.writeSync(2, String((e && e.stack) || e) + '\n');
  process.exit(1);
}
_status(true);
const filename = path.join(process.cwd(), '[stdin]');
const main = new Module(filename, null);
main.filename = filename;
main.paths = Module._nodeModulePaths(process.cwd());
process.argv.splice(1, 0, '-');
compiled.call(main.exports, main.exports, Module.createRequire(filename), main, '[stdin]', '.');
