//! A small spinner on stderr, drawn only after a moment of waiting, only on a terminal and
//! never in `--json` mode; it erases itself when stopped.

use std::io::{IsTerminal, Write};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Waiting shorter than this shows nothing.
const DELAY: Duration = Duration::from_millis(400);
const TICK: Duration = Duration::from_millis(80);
const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

/// Whether a spinner may be drawn: a terminal on stderr, not `--json`, not a dumb terminal.
pub fn enabled(json: bool) -> bool {
    should_spin(
        json,
        std::io::stderr().is_terminal(),
        std::env::var("TERM").ok().as_deref(),
    )
}

fn should_spin(json: bool, stderr_is_terminal: bool, term: Option<&str>) -> bool {
    !json && stderr_is_terminal && term != Some("dumb")
}

/// A running spinner; stops (and erases itself) on [`Spinner::stop`] or drop.
pub struct Spinner {
    running: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl Spinner {
    /// Starts a spinner with `message`, or a no-op one when `enabled` is false.
    pub fn start(enabled: bool, message: &str) -> Self {
        if !enabled {
            return Spinner { running: None };
        }
        let (tx, rx) = mpsc::channel::<()>();
        let message = message.to_string();
        let handle = std::thread::spawn(move || {
            if !matches!(rx.recv_timeout(DELAY), Err(RecvTimeoutError::Timeout)) {
                return;
            }
            let mut stderr = std::io::stderr();
            let mut i = 0usize;
            loop {
                let _ = write!(stderr, "\r{} {message}", FRAMES[i % FRAMES.len()]);
                let _ = stderr.flush();
                i += 1;
                if !matches!(rx.recv_timeout(TICK), Err(RecvTimeoutError::Timeout)) {
                    break;
                }
            }
            // Erase the line.
            let _ = write!(stderr, "\r\x1b[2K");
            let _ = stderr.flush();
        });
        Spinner {
            running: Some((tx, handle)),
        }
    }

    /// Stops and erases the spinner; returns once the line is clean.
    pub fn stop(&mut self) {
        if let Some((tx, handle)) = self.running.take() {
            let _ = tx.send(());
            let _ = handle.join();
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spins_only_on_a_real_terminal_without_json() {
        assert!(should_spin(false, true, Some("xterm-256color")));
        assert!(!should_spin(true, true, Some("xterm")));
        assert!(!should_spin(false, false, Some("xterm")));
        assert!(!should_spin(false, true, Some("dumb")));
    }

    #[test]
    fn a_disabled_spinner_stops_at_once() {
        let mut s = Spinner::start(false, "x");
        assert!(s.running.is_none());
        s.stop();
    }
}
