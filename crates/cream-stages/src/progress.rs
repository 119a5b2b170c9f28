//! Progress bars and log lines on stderr.
//!
//! Bars show position, rate and ETA; they are hidden with `--quiet` or when stderr is not a
//! terminal. All bars of a process hang off one [`MultiProgress`], so a log line written through
//! [`LogWriter`] (the binaries' `tracing` output) clears the bars, prints, and redraws them
//! instead of tearing a bar line.

use std::io::{self, Write};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// A bar of `len` steps labelled `what` (hidden when `quiet`). It redraws every half second, so
/// elapsed time moves even while one long step runs; call `finish_and_clear` when done.
pub fn bar(len: usize, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = bars().add(ProgressBar::new(len as u64));
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {per_sec} elapsed {elapsed} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(500));
    pb
}

/// Score `convs` under `model` in chunks of `chunk` conversations, advancing a bar labelled
/// `what` after each chunk (`cream_lm::score` itself reports no progress). The scores do not
/// depend on the chunking.
pub fn score(
    model: &cream_lm::Model,
    convs: &[cream_lm::Conversation],
    opts: cream_lm::ScoreOptions,
    chunk: usize,
    what: &str,
    quiet: bool,
) -> Result<Vec<cream_lm::Scored>> {
    let pb = bar(convs.len(), what, quiet);
    let mut out = Vec::with_capacity(convs.len());
    for c in convs.chunks(chunk.max(1)) {
        out.extend(cream_lm::score(model, c, opts)?);
        pb.inc(c.len() as u64);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// Stderr for log lines: each write happens with the progress bars cleared, then they are
/// redrawn.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        bars().suspend(|| io::stderr().lock().write(buf))
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        bars().suspend(|| io::stderr().lock().write_all(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}
