//! Progress of long phases: a bar with rows/s and ETA on a terminal, a log
//! line every few seconds otherwise (services, CI, `| tee`).

use std::time::{Duration, Instant};

use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Phases can run side by side; their bars share the terminal.
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// How progress is shown; chosen once by the binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    Bar,
    Log,
}

pub struct Progress {
    label: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    last_log: Instant,
    bar: Option<ProgressBar>,
}

const LOG_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    pub fn start(mode: ProgressMode, label: &'static str, total: u64) -> Progress {
        let bar = (mode == ProgressMode::Bar).then(|| {
            let b = bars().add(ProgressBar::new(total));
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix:>14} [{bar:30}] {human_pos}/{human_len} {per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(label);
            b
        });
        Progress {
            label,
            total,
            done: 0,
            started: Instant::now(),
            last_log: Instant::now(),
            bar,
        }
    }

    pub fn inc(&mut self, n: u64) {
        self.done += n;
        if let Some(b) = &self.bar {
            b.inc(n);
        } else if self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            let rate = self.done as f64 / secs;
            let eta = (self.total.saturating_sub(self.done)) as f64 / rate.max(1e-9);
            tracing::info!(
                phase = self.label,
                done = self.done,
                total = self.total,
                rows_per_s = rate as u64,
                eta_s = eta as u64,
                "rebuild progress"
            );
        }
    }

    pub fn finish(self) -> u64 {
        if let Some(b) = &self.bar {
            b.finish();
        }
        tracing::info!(
            phase = self.label,
            rows = self.done,
            seconds = self.started.elapsed().as_secs_f64(),
            "rebuild phase done"
        );
        self.done
    }
}
