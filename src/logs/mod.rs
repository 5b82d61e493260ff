//! Build logs: lines with an offset. The owner keeps the running attempt's lines in memory and
//! fans them out to followers at once; a flusher appends them to the local cache in batches.
//! Followers read memory while the build runs here and the cache otherwise, so a reader never
//! sees a gap or a duplicate, across attempts too.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::Stream;
use rusqlite::params;
use tokio::sync::watch;

use crate::cache::{Cache, CacheError};
use crate::model::{BuildId, Status};
use crate::store::BuildStore;

/// How often a running build's new lines are appended to the cache: often enough that a crash
/// loses little, rarely enough that chatty builds cost one transaction per interval.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// How long a follower waits between checks of a build that is not running here (queued, or
/// running on another node); wake-ups usually come sooner.
const IDLE_RECHECK: Duration = Duration::from_millis(250);
/// Lines read from the cache per query.
const PAGE: i64 = 1000;

/// One line of a build's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Position in the build's whole log, across attempts; the SSE event id.
    pub offset: u64,
    pub attempt: u32,
    pub text: Arc<str>,
}

/// What a follower receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    Line(LogLine),
    /// The log is complete (or, without follow, everything so far was sent).
    End(Option<Status>),
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// The logs of every build this node runs, and the way to read any build's log.
#[derive(Clone)]
pub struct LogHub {
    cache: Cache,
    live: Arc<Mutex<HashMap<BuildId, Arc<LiveLog>>>>,
    /// Bumped whenever a build starts logging here, so waiting followers look again at once.
    started: Arc<watch::Sender<u64>>,
}

/// The running attempt's log, in memory.
struct LiveLog {
    state: Mutex<LiveState>,
    /// Bumped on every new line and at the end.
    changed: watch::Sender<u64>,
}

struct LiveState {
    attempt: u32,
    first_offset: u64,
    lines: Vec<Arc<str>>,
    persisted: usize,
    finished: bool,
}

impl LiveLog {
    /// Lines from `offset` on (offset must be ≥ first_offset) and whether the log has ended.
    fn read_from(&self, offset: u64) -> (Vec<LogLine>, bool) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let start = offset.saturating_sub(state.first_offset) as usize;
        let lines = state
            .lines
            .iter()
            .enumerate()
            .skip(start)
            .map(|(i, text)| LogLine {
                offset: state.first_offset + i as u64,
                attempt: state.attempt,
                text: text.clone(),
            })
            .collect();
        (lines, state.finished)
    }

    fn first_offset(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first_offset
    }
}

impl LogHub {
    pub fn new(cache: Cache) -> Self {
        LogHub {
            cache,
            live: Arc::default(),
            started: Arc::new(watch::channel(0).0),
        }
    }

    /// Opens the log of a new attempt; lines continue after everything logged before.
    pub async fn start(&self, id: BuildId, attempt: u32) -> Result<LogWriter, LogError> {
        let key = id.to_string();
        let first_offset = self
            .cache
            .call(move |c| {
                c.query_row(
                    "SELECT COALESCE(MAX(offset) + 1, 0) FROM log_lines WHERE build_id = ?1",
                    [key],
                    |r| r.get::<_, i64>(0),
                )
            })
            .await? as u64;
        let live = Arc::new(LiveLog {
            state: Mutex::new(LiveState {
                attempt,
                first_offset,
                lines: Vec::new(),
                persisted: 0,
                finished: false,
            }),
            changed: watch::channel(0).0,
        });
        self.live_map().insert(id, live.clone());
        self.started.send_modify(|n| *n += 1);
        let flusher = tokio::spawn(flush_periodically(self.cache.clone(), id, live.clone()));
        Ok(LogWriter {
            hub: self.clone(),
            id,
            live,
            flusher,
        })
    }

    /// Follows a build's log from `offset`: history first, then live lines until the build
    /// ends (or, when `follow` is false, until what exists now has been sent).
    pub fn follow(
        &self,
        store: Arc<dyn BuildStore>,
        id: BuildId,
        offset: u64,
        follow: bool,
    ) -> impl Stream<Item = Result<LogEvent, LogError>> + Send + 'static {
        let follower = Follower {
            hub: self.clone(),
            store,
            id,
            next_offset: offset,
            pending: VecDeque::new(),
            follow,
            done: false,
            started: self.started.subscribe(),
        };
        futures_util::stream::unfold(follower, |mut f| async move {
            let event = f.next().await.transpose()?;
            Some((event, f))
        })
    }

    fn live_map(&self) -> std::sync::MutexGuard<'_, HashMap<BuildId, Arc<LiveLog>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live_log(&self, id: BuildId) -> Option<Arc<LiveLog>> {
        self.live_map().get(&id).cloned()
    }

    async fn stored_lines(
        &self,
        id: BuildId,
        from: u64,
        to: Option<u64>,
    ) -> Result<Vec<LogLine>, LogError> {
        let key = id.to_string();
        let to = to.map(|t| t as i64).unwrap_or(i64::MAX);
        let rows = self
            .cache
            .call(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT offset, attempt, line FROM log_lines \
                     WHERE build_id = ?1 AND offset >= ?2 AND offset < ?3 ORDER BY offset LIMIT ?4",
                )?;
                let rows = stmt.query_map(params![key, from as i64, to, PAGE], |r| {
                    Ok(LogLine {
                        offset: r.get::<_, i64>(0)? as u64,
                        attempt: r.get(1)?,
                        text: Arc::from(r.get::<_, String>(2)?),
                    })
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        Ok(rows)
    }
}

/// Appends lines to one attempt's log. Dropping it without `close` still persists what the
/// flusher had time to write; `close` persists everything.
pub struct LogWriter {
    hub: LogHub,
    id: BuildId,
    live: Arc<LiveLog>,
    flusher: tokio::task::JoinHandle<()>,
}

impl LogWriter {
    /// Adds one line (without its newline) and wakes every follower.
    pub fn line(&self, text: &str) {
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        {
            let mut state = self.live.state.lock().unwrap_or_else(|p| p.into_inner());
            state.lines.push(Arc::from(text));
        }
        self.live.changed.send_modify(|n| *n += 1);
    }

    /// Writes every line to the cache. Call before recording the outcome, so that anyone who
    /// sees the build finished also finds its whole log.
    pub async fn persist(&self) -> Result<(), LogError> {
        persist_new_lines(&self.hub.cache, self.id, &self.live).await
    }

    /// Ends the live log: followers drain what is left and stop. Call after the outcome is
    /// recorded.
    pub async fn close(self) -> Result<(), LogError> {
        self.flusher.abort();
        let persisted = self.persist().await;
        {
            let mut state = self.live.state.lock().unwrap_or_else(|p| p.into_inner());
            state.finished = true;
        }
        self.live.changed.send_modify(|n| *n += 1);
        let mut live = self.hub.live_map();
        if live
            .get(&self.id)
            .is_some_and(|l| Arc::ptr_eq(l, &self.live))
        {
            live.remove(&self.id);
        }
        persisted
    }
}

async fn flush_periodically(cache: Cache, id: BuildId, live: Arc<LiveLog>) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = persist_new_lines(&cache, id, &live).await {
            tracing::warn!(build = %id, error = %e, "could not persist log lines; will retry");
        }
    }
}

async fn persist_new_lines(
    cache: &Cache,
    id: BuildId,
    live: &Arc<LiveLog>,
) -> Result<(), LogError> {
    let (attempt, first_offset, start, batch) = {
        let state = live.state.lock().unwrap_or_else(|p| p.into_inner());
        let batch: Vec<Arc<str>> = state.lines[state.persisted..].to_vec();
        (state.attempt, state.first_offset, state.persisted, batch)
    };
    if batch.is_empty() {
        return Ok(());
    }
    let count = batch.len();
    let key = id.to_string();
    cache
        .call(move |c| {
            let tx = c.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO log_lines (build_id, offset, attempt, line) \
                     VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (i, line) in batch.iter().enumerate() {
                    let offset = (first_offset + (start + i) as u64) as i64;
                    insert.execute(params![key, offset, attempt, &**line])?;
                }
            }
            tx.commit()
        })
        .await?;
    let mut state = live.state.lock().unwrap_or_else(|p| p.into_inner());
    state.persisted = state.persisted.max(start + count);
    Ok(())
}

struct Follower {
    hub: LogHub,
    store: Arc<dyn BuildStore>,
    id: BuildId,
    next_offset: u64,
    pending: VecDeque<LogLine>,
    follow: bool,
    done: bool,
    started: watch::Receiver<u64>,
}

/// What reading a live log found.
enum LiveRead {
    Lines,
    /// The attempt ended; its outcome is recorded.
    Ended,
    /// Not following and nothing more exists yet.
    CaughtUp,
}

impl Follower {
    async fn next(&mut self) -> Result<Option<LogEvent>, LogError> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                self.next_offset = line.offset + 1;
                return Ok(Some(LogEvent::Line(line)));
            }
            if self.done {
                return Ok(None);
            }
            // Mark every start seen so far *before* looking: a build that starts after this
            // point wakes the wait below instead of leaving it to the recheck timer.
            self.started.borrow_and_update();
            if let Some(live) = self.hub.live_log(self.id) {
                match self.read_live(&live).await? {
                    LiveRead::Lines => continue,
                    LiveRead::CaughtUp => return Ok(Some(self.end().await)),
                    LiveRead::Ended => {} // the stored path below sees the final status
                }
            }
            // Not running here. Read the status before the lines: a finished status means the
            // whole log was persisted before it was written.
            let status = self.status().await;
            let lines = self
                .hub
                .stored_lines(self.id, self.next_offset, None)
                .await?;
            if !lines.is_empty() {
                self.pending.extend(lines);
                continue;
            }
            if status.is_none_or(Status::is_finished) || !self.follow {
                self.done = true;
                return Ok(Some(LogEvent::End(status)));
            }
            let _ = tokio::time::timeout(IDLE_RECHECK, self.started.changed()).await;
        }
    }

    async fn read_live(&mut self, live: &Arc<LiveLog>) -> Result<LiveRead, LogError> {
        let first = live.first_offset();
        if self.next_offset < first {
            let earlier = self
                .hub
                .stored_lines(self.id, self.next_offset, Some(first))
                .await?;
            if !earlier.is_empty() {
                self.pending.extend(earlier);
                return Ok(LiveRead::Lines);
            }
            self.next_offset = first; // lines lost with a crashed attempt: skip the hole
        }
        let mut changed = live.changed.subscribe();
        loop {
            changed.borrow_and_update();
            let (lines, finished) = live.read_from(self.next_offset);
            if !lines.is_empty() {
                self.pending.extend(lines);
                return Ok(LiveRead::Lines);
            }
            if finished {
                return Ok(LiveRead::Ended);
            }
            if !self.follow {
                return Ok(LiveRead::CaughtUp);
            }
            if changed.changed().await.is_err() {
                return Ok(LiveRead::Ended);
            }
        }
    }

    async fn end(&mut self) -> LogEvent {
        self.done = true;
        LogEvent::End(self.status().await)
    }

    async fn status(&self) -> Option<Status> {
        self.store
            .get(self.id)
            .await
            .ok()
            .flatten()
            .map(|b| b.status)
    }
}
