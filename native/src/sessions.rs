//! The sessions playing on, counted at every fine window end they span (the concurrency slot), as
//! flows/fold/playback.py's `PlaybackFolder` counts them: a session is a list of ranges of window ends,
//! held packed into one integer while it is one range (most are), and its starts and ends are sent to
//! the batch's rows as +1/-1 at the window where they happen.

use crate::batch::{change_concurrency, Rows};
use crate::{floor_div, floor_mod, NEVER};
use hashbrown::HashMap;
use xxhash_rust::xxh3::xxh3_64;

// The packed form of a session playing on (flows/fold/playback.py): bit 0 open, then the
// (country, device_type) number, the range's length and its last end, in windows.
const DIMS_SHIFT: u32 = 1;
const DIMS_MASK: i64 = (1 << 12) - 1;
const SPAN_SHIFT: u32 = 13;
const SPAN_MASK: i64 = (1 << 16) - 1;
const HI_SHIFT: u32 = 29;
const LOW_BITS: i64 = (1 << SPAN_SHIFT) - 1;
// Python's ints have no top; an i64 holds the last end up to 2^34 windows (year 7400 at 10 s windows, but
// 2026 at 100 ms ones): a session past it stays in the listed form, which counts the same.
const MAX_HI: i64 = 1 << (63 - HI_SHIFT);

/// A session's key, as flows/fold/event_ids.py id_hash makes it from the session id.
pub(crate) fn session_key(session_id: &str) -> i64 {
    (xxh3_64(session_id.as_bytes()) >> 4) as i64
}

/// A session that is not in the packed form: ranges of window ends it is counted at (lo, hi, ...).
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub(crate) dims: u32,
    pub(crate) end: i64,
    pub(crate) open: bool,
    pub(crate) ranges: Vec<i64>,
}

#[derive(Clone, Debug)]
pub(crate) enum Held {
    Packed(i64),
    Listed(Session),
}

/// A packed session too wide for an i64 (from a Python snapshot), in the listed form.
pub(crate) fn unpack_wide(step: i64, packed: i128) -> Session {
    let step = step as i128;
    let last = packed >> HI_SHIFT;
    let span = (packed >> SPAN_SHIFT) & SPAN_MASK as i128;
    let dims = ((packed >> DIMS_SHIFT) & DIMS_MASK as i128) as u32;
    Session { dims, end: NEVER, open: packed & 1 == 1, ranges: vec![((last - span) * step) as i64, (last * step) as i64] }
}

pub(crate) struct Sessions {
    /// The fine window, which session ranges are counted in.
    step: i64,
    timeout_ms: i64,
    pub(crate) held: HashMap<i64, Held>,
}

impl Sessions {
    pub(crate) fn new(step: i64, timeout_ms: i64) -> Self {
        Sessions { step, timeout_ms, held: HashMap::new() }
    }

    fn unpack(&self, packed: i64) -> Session {
        let step = self.step;
        let last = packed >> HI_SHIFT;
        let span = (packed >> SPAN_SHIFT) & SPAN_MASK;
        let dims = ((packed >> DIMS_SHIFT) & DIMS_MASK) as u32;
        Session { dims, end: NEVER, open: packed & 1 == 1, ranges: vec![(last - span) * step, last * step] }
    }

    fn session(&self, key: i64) -> Option<Session> {
        match self.held.get(&key) {
            None => None,
            Some(Held::Packed(packed)) => Some(self.unpack(*packed)),
            Some(Held::Listed(session)) => Some(session.clone()),
        }
    }

    fn store(&mut self, key: i64, session: Session) {
        let step = self.step;
        if session.ranges.len() == 2 && session.end == NEVER && (session.dims as i64) <= DIMS_MASK {
            let (lo, hi) = (floor_div(session.ranges[0], step), floor_div(session.ranges[1], step));
            if hi - lo <= SPAN_MASK && hi < MAX_HI {
                let packed = (hi << HI_SHIFT) | ((hi - lo) << SPAN_SHIFT) | ((session.dims as i64) << DIMS_SHIFT) | session.open as i64;
                self.held.insert(key, Held::Packed(packed));
                return;
            }
        }
        self.held.insert(key, Held::Listed(session));
    }

    /// An event of session `key` at `t`: it plays on until `t` + the timeout, unless it ended before.
    pub(crate) fn touch(&mut self, rows: &mut Rows, key: i64, t: i64, dims: u32) {
        let step = self.step;
        if let Some(Held::Packed(packed)) = self.held.get(&key) {
            let packed = *packed;
            if packed & 1 == 1 {
                // Most events belong to a session playing on: its range grows, nothing is sent.
                let last = packed >> HI_SHIFT;
                let span = (packed >> SPAN_SHIFT) & SPAN_MASK;
                let window = floor_div(t, step) + 1;
                if last - span <= window && window <= last + 1 {
                    let hi = floor_div(t + self.timeout_ms, step);
                    if hi > last && span + hi - last <= SPAN_MASK && hi < MAX_HI {
                        let grown = (hi << HI_SHIFT) | ((span + hi - last) << SPAN_SHIFT) | (packed & LOW_BITS);
                        self.held.insert(key, Held::Packed(grown));
                        return;
                    }
                    if hi <= last {
                        return;
                    }
                }
            }
        }
        let lo = t - floor_mod(t, step) + step;
        let Some(mut session) = self.session(key) else {
            let mut hi = t + self.timeout_ms;
            hi -= floor_mod(hi, step);
            if hi >= lo {
                let session = Session { dims, end: NEVER, open: true, ranges: vec![lo, hi] };
                change_concurrency(rows, step, dims, lo, 1);
                self.store(key, session);
            }
            return;
        };
        let mut hi = (t + self.timeout_ms).min(session.end);
        hi -= floor_mod(hi, step);
        if hi < lo {
            return;
        }
        let n = session.ranges.len();
        if session.open && session.ranges[n - 2] <= lo && lo <= session.ranges[n - 1] + step {
            if hi > session.ranges[n - 1] {
                session.ranges[n - 1] = hi;
            }
        } else {
            self.count_range(rows, &mut session, lo, hi);
        }
        self.store(key, session);
    }

    fn close_session(&self, rows: &mut Rows, session: &mut Session) {
        if session.open {
            let last = *session.ranges.last().expect("an open session has a range");
            change_concurrency(rows, self.step, session.dims, last + self.step, -1);
            session.open = false;
        }
    }

    fn count_range(&self, rows: &mut Rows, session: &mut Session, mut lo: i64, mut hi: i64) {
        let step = self.step;
        self.close_session(rows, session);
        let counted = session.ranges.clone();
        let mut cursor = lo;
        for pair in counted.chunks(2) {
            let (c_lo, c_hi) = (pair[0], pair[1]);
            if c_hi < cursor || c_lo > hi {
                continue;
            }
            if cursor <= c_lo - step {
                change_concurrency(rows, step, session.dims, cursor, 1);
                change_concurrency(rows, step, session.dims, c_lo, -1);
            }
            cursor = cursor.max(c_hi + step);
        }
        if cursor <= hi {
            change_concurrency(rows, step, session.dims, cursor, 1);
            change_concurrency(rows, step, session.dims, hi + step, -1);
        }
        let mut merged: Vec<i64> = Vec::with_capacity(counted.len() + 2);
        for pair in counted.chunks(2) {
            let (c_lo, c_hi) = (pair[0], pair[1]);
            if c_hi + step < lo || c_lo > hi + step {
                merged.push(c_lo);
                merged.push(c_hi);
            } else {
                lo = lo.min(c_lo);
                hi = hi.max(c_hi);
            }
        }
        merged.push(lo);
        merged.push(hi);
        if merged.len() > 2 {
            let mut pairs: Vec<(i64, i64)> = merged.chunks(2).map(|p| (p[0], p[1])).collect();
            pairs.sort();
            merged = pairs.into_iter().flat_map(|(a, b)| [a, b]).collect();
        }
        let last_is_new = *merged.last().unwrap() == hi;
        session.ranges = merged;
        if last_is_new {
            change_concurrency(rows, step, session.dims, hi + step, 1);
            session.open = true;
        }
    }

    /// Session `key` stopped (or failed) at `t`; an event that comes late only remembers the end.
    pub(crate) fn end(&mut self, rows: &mut Rows, key: i64, t: i64, dims: u32, on_time: bool) {
        let Some(mut session) = self.session(key) else {
            // Remember it ended, so a straggler delivered after the stop cannot reopen it.
            self.held.insert(key, Held::Listed(Session { dims, end: t, open: false, ranges: vec![] }));
            return;
        };
        session.end = session.end.min(t);
        if on_time {
            let step = self.step;
            let first_after = t - floor_mod(t, step) + step;
            self.close_session(rows, &mut session);
            let counted = std::mem::take(&mut session.ranges);
            let mut kept = Vec::with_capacity(counted.len());
            for pair in counted.chunks(2) {
                let (c_lo, c_hi) = (pair[0], pair[1]);
                if c_hi < first_after {
                    kept.push(c_lo);
                    kept.push(c_hi);
                    continue;
                }
                let cut = c_lo.max(first_after);
                change_concurrency(rows, step, session.dims, cut, -1);
                change_concurrency(rows, step, session.dims, c_hi + step, 1);
                if c_lo < first_after {
                    kept.push(c_lo);
                    kept.push(first_after - step);
                }
            }
            session.ranges = kept;
        }
        self.held.insert(key, Held::Listed(session));
    }

    /// Send the -1 of every open session whose last window end is at or before `limit` (all if `everything`).
    pub(crate) fn close(&mut self, rows: &mut Rows, limit: i64, everything: bool) {
        let last_packed = if everything { NEVER } else { floor_div(limit, self.step) };
        let closing: Vec<i64> = self
            .held
            .iter()
            .filter(|(_, held)| match held {
                Held::Packed(p) => p & 1 == 1 && (p >> HI_SHIFT) <= last_packed,
                Held::Listed(s) => s.open && (everything || *s.ranges.last().unwrap() <= limit),
            })
            .map(|(key, _)| *key)
            .collect();
        for key in closing {
            let mut session = self.session(key).unwrap();
            self.close_session(rows, &mut session);
            self.store(key, session);
        }
    }

    /// Drop the closed sessions that ended, or were last counted, before `horizon`.
    pub(crate) fn forget(&mut self, horizon: i64) {
        let last_packed = floor_div(horizon, self.step);
        self.held.retain(|_, held| match held {
            Held::Packed(p) => !(*p & 1 == 0 && (*p >> HI_SHIFT) < last_packed),
            Held::Listed(s) => {
                let last = s.ranges.last().copied().unwrap_or(NEVER);
                !(!s.open && (s.end < horizon || last < horizon))
            }
        });
    }
}
