//! The serving process's progress display: done / total, failed, a smoothed rate and an ETA.
//!
//! [`ProgressBar`] knows nothing of the server: it is fed [`Progress`] snapshots, through
//! [`ProgressBar::update`] or from a `tokio::sync::watch` channel by [`follow`]. On a terminal it
//! draws a bar on stderr; elsewhere it writes a plain line through the `log` crate now and then,
//! or nothing at all.
//!
//! Invariants:
//! - The rate counts settled tasks (done plus failed) per second since the first update, so a
//!   resumed job's tasks settled before the restart never inflate it.
//! - The rate is an exponentially weighted moving average over time (not over updates), so it
//!   does not depend on how often updates arrive; it is bias-corrected, so before one time
//!   constant has passed it is the plain average since the first update.
//! - Time is injected: every computation has an `_at` form taking the caller's
//!   [`std::time::Instant`], so the maths is tested without sleeping.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use colony_core::sched::Progress;
use tokio::sync::watch;

/// Default time constant of the rate's moving average.
pub const DEFAULT_SMOOTHING: Duration = Duration::from_secs(5);

/// Default interval between two plain log lines when stderr is not a terminal.
pub const DEFAULT_LOG_EVERY: Duration = Duration::from_secs(10);

/// A smoothed rate of a growing count, and the time left at that rate.
///
/// An exponentially weighted moving average in continuous time: a sample covering `dt` seconds
/// moves the average towards its own rate by `1 - exp(-dt / tau)`. The average starts at zero
/// and is divided by the total weight given so far, which removes the bias of that start.
#[derive(Clone, Debug)]
pub struct RateMeter {
    tau: f64,
    /// The last observation: when, and the count then.
    last: Option<(Instant, u64)>,
    /// The weighted average before bias correction.
    raw: f64,
    /// The total weight given to samples, in `0..=1`.
    weight: f64,
}

impl RateMeter {
    /// A meter whose average forgets with time constant `smoothing` (a zero one means "the last
    /// sample only").
    pub fn new(smoothing: Duration) -> Self {
        RateMeter {
            tau: smoothing.as_secs_f64(),
            last: None,
            raw: 0.0,
            weight: 0.0,
        }
    }

    /// Records that the count was `count` at `now`.
    ///
    /// The first call only sets the starting point. A count lower than the last one restarts
    /// from it (the caller reset its counter); a `now` earlier than the last one is ignored.
    pub fn observe(&mut self, now: Instant, count: u64) {
        let Some((then, before)) = self.last else {
            self.last = Some((now, count));
            return;
        };
        if count < before {
            self.last = Some((now, count));
            return;
        }
        let dt = now.saturating_duration_since(then).as_secs_f64();
        if dt <= 0.0 {
            // Same instant: keep the older starting point, so the items are counted once time
            // moves on.
            return;
        }
        let sample = (count - before) as f64 / dt;
        let alpha = if self.tau > 0.0 {
            1.0 - (-dt / self.tau).exp()
        } else {
            1.0
        };
        self.raw += alpha * (sample - self.raw);
        self.weight += alpha * (1.0 - self.weight);
        self.last = Some((now, count));
    }

    /// The smoothed rate in items per second; `None` before two observations at distinct times.
    pub fn rate(&self) -> Option<f64> {
        (self.weight > 0.0).then(|| self.raw / self.weight)
    }

    /// Time to settle `remaining` more items at the current rate; `None` if the rate is unknown
    /// or zero. Zero items remaining take no time.
    pub fn eta(&self, remaining: u64) -> Option<Duration> {
        if remaining == 0 {
            return Some(Duration::ZERO);
        }
        let rate = self.rate()?;
        if rate <= 0.0 || !rate.is_finite() {
            return None;
        }
        Duration::try_from_secs_f64(remaining as f64 / rate).ok()
    }
}

/// Where a [`ProgressBar`] shows itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Display {
    /// A bar redrawn on stderr (use only when stderr is a terminal).
    Terminal,
    /// A plain line through the `log` crate (at level info), at most once per interval, and one
    /// at the end.
    Log {
        /// Least time between two lines.
        every: Duration,
    },
    /// Nothing shown; the figures can still be read.
    Hidden,
}

impl Display {
    /// [`Display::Terminal`] if stderr is a terminal, otherwise a log line every
    /// [`DEFAULT_LOG_EVERY`].
    pub fn detect() -> Self {
        if std::io::stderr().is_terminal() {
            Display::Terminal
        } else {
            Display::Log {
                every: DEFAULT_LOG_EVERY,
            }
        }
    }
}

/// A job's progress shown to the person running it: fed [`Progress`] snapshots, it keeps the
/// rate and ETA and draws them.
#[derive(Debug)]
pub struct ProgressBar {
    display: Display,
    bar: Option<indicatif::ProgressBar>,
    meter: RateMeter,
    last: Progress,
    /// When the last plain log line was written.
    logged_at: Option<Instant>,
    finished: bool,
}

impl ProgressBar {
    /// A bar for a job of `total` tasks, shown as [`Display::detect`] decides.
    pub fn new(total: u32) -> Self {
        Self::with_display(total, Display::detect())
    }

    /// A bar for a job of `total` tasks, shown as `display` says.
    pub fn with_display(total: u32, display: Display) -> Self {
        let bar = match display {
            Display::Terminal => {
                let bar = indicatif::ProgressBar::with_draw_target(
                    Some(u64::from(total)),
                    indicatif::ProgressDrawTarget::stderr_with_hz(10),
                );
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:40}] {pos}/{len} {msg}",
                ) {
                    bar.set_style(style.progress_chars("=> "));
                }
                Some(bar)
            }
            Display::Log { .. } | Display::Hidden => None,
        };
        ProgressBar {
            display,
            bar,
            meter: RateMeter::new(DEFAULT_SMOOTHING),
            last: Progress {
                total,
                ..Progress::default()
            },
            logged_at: None,
            finished: false,
        }
    }

    /// Takes a new snapshot, now.
    pub fn update(&mut self, progress: Progress) {
        self.update_at(progress, Instant::now());
    }

    /// Takes a new snapshot, as of `now`, and redraws (a terminal bar) or logs (when a line is
    /// due). A snapshot whose job is finished finishes the bar.
    pub fn update_at(&mut self, progress: Progress, now: Instant) {
        if self.finished {
            return;
        }
        self.meter.observe(now, settled(&progress));
        self.last = progress;
        match self.display {
            Display::Terminal => self.draw(),
            Display::Log { every } => {
                if self
                    .logged_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= every)
                {
                    self.logged_at = Some(now);
                    log::info!("{}", self.line());
                }
            }
            Display::Hidden => {}
        }
        if progress.finished {
            self.finish();
        }
    }

    /// Re-reads the clock without a new snapshot, so a stalled job's rate decays.
    pub fn tick(&mut self) {
        self.tick_at(Instant::now());
    }

    /// [`tick`](Self::tick) as of `now`.
    pub fn tick_at(&mut self, now: Instant) {
        self.update_at(self.last, now);
    }

    /// Ends the display: the bar stays drawn with its final figures, or a last line is logged.
    /// Later updates are ignored. Calling it twice does nothing more.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        match self.display {
            Display::Terminal => {
                self.draw();
                if let Some(bar) = &self.bar {
                    bar.finish();
                }
            }
            Display::Log { .. } => log::info!("{}", self.line()),
            Display::Hidden => {}
        }
    }

    /// The last snapshot taken.
    pub fn progress(&self) -> Progress {
        self.last
    }

    /// The smoothed rate in settled tasks per second, once known.
    pub fn rate(&self) -> Option<f64> {
        self.meter.rate()
    }

    /// Time left at the current rate, once known.
    pub fn eta(&self) -> Option<Duration> {
        self.meter.eta(remaining(&self.last))
    }

    /// Whether [`finish`](Self::finish) was called (or a finished snapshot came).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The figures as one line: `done/total done, failed, running, rate, ETA`.
    pub fn line(&self) -> String {
        let p = &self.last;
        let mut s = format!("{}/{} done", p.done, p.total);
        let _ = write!(s, ", {} failed, {} running, ", p.failed, p.running);
        s.push_str(&self.tail());
        s
    }

    /// The part after the counts: rate and ETA (or "finished").
    fn tail(&self) -> String {
        let rate = self.rate().map_or_else(|| "-".to_owned(), format_rate);
        if self.last.finished {
            format!("{rate} tasks/s, finished")
        } else {
            let eta = self.eta().map_or_else(|| "?".to_owned(), format_duration);
            format!("{rate} tasks/s, ETA {eta}")
        }
    }

    fn draw(&self) {
        let Some(bar) = &self.bar else { return };
        let p = &self.last;
        bar.set_length(u64::from(p.total));
        bar.set_position(settled(p));
        let mut msg = String::new();
        if p.failed > 0 {
            let _ = write!(msg, "({} failed) ", p.failed);
        }
        msg.push_str(&self.tail());
        bar.set_message(msg);
    }
}

/// Feeds `bar` from `progress` until the job finishes or the sender goes away, ticking every
/// second so the rate decays while nothing settles; finishes the bar and returns the last
/// snapshot.
pub async fn follow(mut progress: watch::Receiver<Progress>, mut bar: ProgressBar) -> Progress {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let first = *progress.borrow_and_update();
    bar.update(first);
    while !bar.is_finished() {
        tokio::select! {
            changed = progress.changed() => {
                if changed.is_err() {
                    break;
                }
                let p = *progress.borrow_and_update();
                bar.update(p);
            }
            _ = tick.tick() => bar.tick(),
        }
    }
    bar.finish();
    bar.progress()
}

fn settled(p: &Progress) -> u64 {
    u64::from(p.done) + u64::from(p.failed)
}

fn remaining(p: &Progress) -> u64 {
    u64::from(p.total).saturating_sub(settled(p))
}

/// A rate with three significant figures and an SI suffix: `950`, `12.3k`, `1.25M`.
pub fn format_rate(rate: f64) -> String {
    let (value, suffix) = if rate >= 1e9 {
        (rate / 1e9, "G")
    } else if rate >= 1e6 {
        (rate / 1e6, "M")
    } else if rate >= 1e3 {
        (rate / 1e3, "k")
    } else {
        (rate, "")
    };
    let digits = if value >= 100.0 || suffix.is_empty() && value >= 10.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.digits$}{suffix}")
}

/// A duration as `45s`, `3m05s` or `2h07m`, rounded up to the second.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn snap(total: u32, done: u32, failed: u32) -> Progress {
        Progress {
            total,
            done,
            failed,
            running: 0,
            finished: false,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn no_rate_before_time_passes() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(DEFAULT_SMOOTHING);
        assert_eq!(m.rate(), None);
        m.observe(t0, 10);
        assert_eq!(m.rate(), None);
        m.observe(t0, 50);
        assert_eq!(m.rate(), None);
        assert_eq!(m.eta(5), None);
        assert_eq!(m.eta(0), Some(Duration::ZERO));
    }

    #[test]
    fn steady_rate_is_exact_whatever_the_update_spacing() {
        let t0 = Instant::now();
        for step_ms in [1, 7, 100, 1000, 30_000] {
            let mut m = RateMeter::new(DEFAULT_SMOOTHING);
            // 2,000 items per second, starting from 1,000 already settled (a resume).
            for i in 0..50u64 {
                m.observe(at(t0, i * step_ms), 1000 + i * step_ms * 2);
            }
            let r = m.rate().unwrap();
            assert!(close(r, 2000.0), "step {step_ms}: {r}");
        }
    }

    #[test]
    fn early_rate_is_the_plain_average() {
        // Bias correction: before the average has warmed up, it equals total / elapsed.
        let t0 = Instant::now();
        let mut m = RateMeter::new(Duration::from_secs(10));
        m.observe(t0, 0);
        m.observe(at(t0, 100), 300);
        m.observe(at(t0, 200), 300);
        m.observe(at(t0, 1000), 900);
        // Weighted samples: not the plain average of the samples (they span unequal times), but
        // close to 900 items / 1 s since the weights are nearly proportional to the durations.
        let r = m.rate().unwrap();
        assert!((r - 900.0).abs() < 20.0, "{r}");
    }

    #[test]
    fn rate_follows_a_change_with_its_time_constant() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(Duration::from_secs(5));
        m.observe(t0, 0);
        // A long run at 1,000/s: the average is 1,000.
        m.observe(at(t0, 100_000), 100_000);
        assert!(close(m.rate().unwrap(), 1000.0));
        // Then 5 s (one time constant) at 0/s: the average keeps exp(-1) of its value.
        m.observe(at(t0, 105_000), 100_000);
        let want = 1000.0 * (-1.0f64).exp();
        assert!(close(m.rate().unwrap(), want), "{:?}", m.rate());
    }

    #[test]
    fn zero_smoothing_is_the_last_sample() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(Duration::ZERO);
        m.observe(t0, 0);
        m.observe(at(t0, 1000), 100);
        m.observe(at(t0, 2000), 400);
        assert!(close(m.rate().unwrap(), 300.0));
    }

    #[test]
    fn count_going_back_restarts_and_time_going_back_is_ignored() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(Duration::ZERO);
        m.observe(at(t0, 1000), 100);
        m.observe(at(t0, 500), 999);
        assert_eq!(m.rate(), None);
        m.observe(at(t0, 2000), 50);
        assert_eq!(m.rate(), None);
        m.observe(at(t0, 3000), 70);
        assert!(close(m.rate().unwrap(), 20.0));
    }

    #[test]
    fn eta_is_remaining_over_rate() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(DEFAULT_SMOOTHING);
        m.observe(t0, 0);
        m.observe(at(t0, 2000), 400);
        assert_eq!(m.eta(1000), Some(Duration::from_secs(5)));
        // A stall: rate zero, no ETA.
        let mut z = RateMeter::new(Duration::ZERO);
        z.observe(t0, 5);
        z.observe(at(t0, 1000), 5);
        assert_eq!(z.rate(), Some(0.0));
        assert_eq!(z.eta(3), None);
    }

    #[test]
    fn bar_counts_failed_as_settled_and_reports_eta() {
        let t0 = Instant::now();
        let mut bar = ProgressBar::with_display(1000, Display::Hidden);
        bar.update_at(snap(1000, 0, 0), t0);
        bar.update_at(snap(1000, 90, 10), at(t0, 1000));
        assert!(close(bar.rate().unwrap(), 100.0));
        assert_eq!(bar.eta(), Some(Duration::from_secs(9)));
        assert_eq!(
            bar.line(),
            "90/1000 done, 10 failed, 0 running, 100 tasks/s, ETA 9s"
        );
        // Nothing settles for a while: ticking lowers the rate, so the ETA grows.
        bar.tick_at(at(t0, 6000));
        assert!(bar.eta().unwrap() > Duration::from_secs(9));
    }

    #[test]
    fn finished_snapshot_finishes_and_freezes() {
        let t0 = Instant::now();
        let mut bar = ProgressBar::with_display(10, Display::Hidden);
        assert_eq!(
            bar.line(),
            "0/10 done, 0 failed, 0 running, - tasks/s, ETA ?"
        );
        bar.update_at(snap(10, 0, 0), t0);
        let mut done = snap(10, 10, 0);
        done.finished = true;
        bar.update_at(done, at(t0, 2000));
        assert!(bar.is_finished());
        assert_eq!(
            bar.line(),
            "10/10 done, 0 failed, 0 running, 5.00 tasks/s, finished"
        );
        bar.update_at(snap(10, 3, 0), at(t0, 3000));
        assert_eq!(bar.progress(), done);
        bar.finish();
    }

    #[test]
    fn log_display_is_rate_limited() {
        let t0 = Instant::now();
        let every = Duration::from_secs(10);
        let mut bar = ProgressBar::with_display(100, Display::Log { every });
        bar.update_at(snap(100, 1, 0), t0);
        assert_eq!(bar.logged_at, Some(t0));
        bar.update_at(snap(100, 2, 0), at(t0, 9_999));
        assert_eq!(bar.logged_at, Some(t0));
        bar.update_at(snap(100, 3, 0), at(t0, 10_000));
        assert_eq!(bar.logged_at, Some(at(t0, 10_000)));
    }

    #[test]
    fn terminal_bar_takes_updates() {
        // Drawing goes to stderr (hidden under the test harness when not a terminal); the
        // figures are the same as in any display.
        let t0 = Instant::now();
        let mut bar = ProgressBar::with_display(4, Display::Terminal);
        bar.update_at(snap(4, 2, 1), t0);
        bar.update_at(snap(5, 3, 1), at(t0, 1000));
        assert_eq!(bar.progress().total, 5);
        assert_eq!(bar.eta(), Some(Duration::from_secs(1)));
        bar.finish();
        assert!(bar.is_finished());
    }

    #[test]
    fn formats() {
        let cases = [
            (0.5, "0.50"),
            (7.0, "7.00"),
            (12.0, "12"),
            (950.0, "950"),
            (1234.0, "1.23k"),
            (12_345.0, "12.3k"),
            (523_400.0, "523k"),
            (1_250_000.0, "1.25M"),
            (3.2e9, "3.20G"),
        ];
        for (rate, want) in cases {
            assert_eq!(format_rate(rate), want);
        }
        let durations = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(1), "1s"),
            (Duration::from_secs(59), "59s"),
            (Duration::from_secs(185), "3m05s"),
            (Duration::from_secs(7620), "2h07m"),
        ];
        for (d, want) in durations {
            assert_eq!(format_duration(d), want);
        }
    }

    #[tokio::test]
    async fn follow_ends_when_the_job_finishes_or_the_sender_goes() {
        let (tx, rx) = watch::channel(snap(3, 0, 0));
        let task = tokio::spawn(follow(rx, ProgressBar::with_display(3, Display::Hidden)));
        tx.send(snap(3, 2, 0)).unwrap();
        let mut last = snap(3, 2, 1);
        last.finished = true;
        tx.send(last).unwrap();
        assert_eq!(task.await.unwrap(), last);

        let (tx, rx) = watch::channel(snap(3, 1, 0));
        let task = tokio::spawn(follow(rx, ProgressBar::with_display(3, Display::Hidden)));
        drop(tx);
        assert_eq!(task.await.unwrap(), snap(3, 1, 0));
    }
}
