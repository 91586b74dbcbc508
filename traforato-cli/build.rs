//! Build script: the git commit for `--version`, recorded as `traforato-server`'s is.

#[path = "../traforato-server/build.rs"]
mod version;

fn main() {
    version::main();
}
