//! The live table drawn at the bottom of a terminal, with log lines scrolling above it.
//!
//! When stderr is a terminal, the recorder shows [`render_table`] there instead of a status
//! log line per stream every 10 s. Log lines still appear: the log writer ([`LiveTable`] is a
//! `tracing` `MakeWriter`) erases the table, writes the line, and draws the table again under
//! it, so the two never overwrite each other. One small lock orders the two writers; no media
//! path takes it.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::snapshot::Snapshot;
use super::table::render_table;

/// Width used when the terminal's cannot be read.
const DEFAULT_WIDTH: usize = 100;

#[derive(Debug, Default)]
struct Screen {
    /// The table as last rendered.
    table: String,
    /// Lines of it currently on screen (0 when erased or never drawn).
    drawn: usize,
}

impl Screen {
    /// Erases the table: cursor up to its first line, clear to the end of the screen.
    fn erase(&mut self, out: &mut impl Write) -> io::Result<()> {
        if self.drawn > 0 {
            write!(out, "\x1b[{}F\x1b[J", self.drawn)?;
            self.drawn = 0;
        }
        Ok(())
    }

    fn draw(&mut self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(self.table.as_bytes())?;
        self.drawn = self.table.lines().count();
        Ok(())
    }
}

/// The terminal's table and the log writer that keeps clear of it; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LiveTable {
    screen: Arc<Mutex<Screen>>,
}

impl LiveTable {
    /// A table on stderr (nothing is drawn until the first snapshot).
    pub fn new() -> LiveTable {
        LiveTable::default()
    }

    /// Redraws the table for every new snapshot until the sender is dropped, then leaves
    /// the last table on screen.
    pub async fn run(self, mut snapshots: watch::Receiver<Arc<Snapshot>>) {
        while snapshots.changed().await.is_ok() {
            let snapshot = snapshots.borrow_and_update().clone();
            let table = render_table(&snapshot, terminal_width().unwrap_or(DEFAULT_WIDTH));
            let Ok(mut screen) = self.screen.lock() else {
                return;
            };
            screen.table = table;
            let mut err = io::stderr().lock();
            let _ = screen.erase(&mut err).and_then(|()| screen.draw(&mut err));
            let _ = err.flush();
        }
    }
}

/// One log line on its way to stderr: collected, then written above the table on drop.
pub struct LineWriter {
    screen: Arc<Mutex<Screen>>,
    buf: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let mut err = io::stderr().lock();
        match self.screen.lock() {
            Ok(mut screen) => {
                let _ = screen
                    .erase(&mut err)
                    .and_then(|()| err.write_all(&self.buf))
                    .and_then(|()| screen.draw(&mut err));
            }
            Err(_) => {
                let _ = err.write_all(&self.buf);
            }
        }
        let _ = err.flush();
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LiveTable {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            screen: self.screen.clone(),
            buf: Vec::with_capacity(256),
        }
    }
}

/// Columns of the terminal on stderr, if it is one.
fn terminal_width() -> Option<usize> {
    // SAFETY: TIOCGWINSZ fills the `winsize` we pass and reads nothing else.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_col > 0).then_some(usize::from(ws.ws_col))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_erases_the_table_and_draws_it_again_below() {
        let mut screen = Screen {
            table: "a\nb\nc\n".into(),
            drawn: 0,
        };
        let mut out = Vec::new();
        screen.draw(&mut out).unwrap();
        assert_eq!(screen.drawn, 3);
        screen.erase(&mut out).unwrap();
        out.extend_from_slice(b"log line\n");
        screen.draw(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\nb\nc\n\x1b[3F\x1b[Jlog line\na\nb\nc\n"
        );
        let mut again = Vec::new();
        screen.erase(&mut again).unwrap();
        screen.erase(&mut again).unwrap();
        assert_eq!(again, b"\x1b[3F\x1b[J", "erased once");
    }
}
