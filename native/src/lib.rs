//! The per-partition fold of playback events, in Rust: the flow's hot path.
//!
//! `PlaybackCore` does what `PartitionAggregator` (flows/fold/partition_aggregator.py) does with a
//! `PlaybackFolder` or a `StreamStartsFolder` (flows/fold/playback.py): per-partition lateness,
//! duplicate ids, one row of integers per (window, country, device_type), the partials with a further
//! dimension, and the open sessions counted at window ends. The Python modules are the reference: their
//! docstrings explain the rules, the tests hold this port equal to them batch by batch, and the two
//! snapshot formats are the same, so a recovery snapshot taken by one is restored by the other.
//!
//! What it saves is per event: Python spent ~2.5 µs folding one (attribute reads, tuple keys, dict
//! lookups, two calls per handler); here it is the attribute reads and a few hash lookups.

use hashbrown::HashMap;
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use std::hash::{Hash, Hasher};
use xxhash_rust::xxh3::xxh3_64;

const NEVER: i64 = 1 << 62;
const NO_EVENT_YET: i64 = -1;
const ZERO_BUCKET: i64 = -(1 << 31);
const MIN_SLOTS: usize = 1024;

// The packed form of a session playing on (flows/fold/playback.py): bit 0 open, then the
// (country, device_type) index, the range's length and its last end, in windows.
const DIMS_SHIFT: u32 = 1;
const DIMS_MASK: i64 = (1 << 12) - 1;
const SPAN_SHIFT: u32 = 13;
const SPAN_MASK: i64 = (1 << 16) - 1;
const HI_SHIFT: u32 = 29;
const LOW_BITS: i64 = (1 << SPAN_SHIFT) - 1;
// Python's ints have no top; an i64 holds the last end up to 2^34 windows (year 7400 at 10 s windows, but
// 2026 at 100 ms ones): a session past it stays in the listed form, which counts the same.
const MAX_HI: i64 = 1 << (63 - HI_SHIFT);

// Event types, in flows/fold/playback.py EVENT_TYPES order (checked at construction), and the row slots.
const PLAY_ATTEMPT: u8 = 0;
const PLAY_START: u8 = 1;
const START_FAILURE: u8 = 2;
const HEARTBEAT: u8 = 3;
const REBUFFER: u8 = 4;
const BITRATE_CHANGE: u8 = 5;
const PAUSE: u8 = 6;
const RESUME: u8 = 7;
const PLAY_ERROR: u8 = 8;
const PLAY_STOP: u8 = 9;
const EVENT_TYPES: [&str; 10] = [
    "play_attempt", "play_start", "start_failure", "heartbeat", "rebuffer",
    "bitrate_change", "pause", "resume", "play_error", "play_stop",
];
const UNKNOWN_TYPE: u8 = 255;
const PER_INSTANCE: u8 = 254; // type_kinds: the class has no `event_type`, each object has its own

fn kind_named(name: &str) -> u8 {
    EVENT_TYPES.iter().position(|t| *t == name).map_or(UNKNOWN_TYPE, |i| i as u8)
}
const PLAYED: usize = 10;
const HEARTBEAT_PLAYED: usize = 11;
const BITRATE_X_PLAYED: usize = 12;
const REBUFFER_MS: usize = 13;
const DOWNSHIFTS: usize = 14;
const CONCURRENCY: usize = 15;
const WIDTH: usize = 16;

// Aggregates with a further dimension, as named in flows/windows/catalog.py.
const STREAM_STARTS: u8 = 0;
const STARTUP_SKETCH: u8 = 1;
const TITLE_STARTS: u8 = 2;
const START_FAILURES: u8 = 3;
const PLAYBACK_ERRORS: u8 = 4;
const PARTIAL_NAMES: [&str; 5] = ["stream_starts", "startup_ms_sketch", "title_starts", "start_failures", "playback_errors"];

type Row = [i64; WIDTH];
type Rows = HashMap<(i64, u32), Row>;
// (window, aggregate, dims, further dimension: a string's index, or a sketch bucket)
type Partials = HashMap<(i64, u8, u32, i64), i64>;

/// A session that is not in the packed form: ranges of window ends it is counted at (lo, hi, ...).
#[derive(Clone, Debug)]
struct Session {
    dims: u32,
    end: i64,
    open: bool,
    ranges: Vec<i64>,
}

#[derive(Clone, Debug)]
enum Held {
    Packed(i64),
    Listed(Session),
}

/// One coarse window's ids: the open-addressing table of flows/fold/event_ids.py, slot for slot.
struct IdTable {
    slots: Vec<u64>,
    mask: u64,
    count: u64,
}

impl IdTable {
    fn new(size: usize) -> Self {
        IdTable { slots: vec![0; size], mask: size as u64 - 1, count: 0 }
    }

    fn first_time(&mut self, h: u64) -> bool {
        let mut i = h & self.mask;
        loop {
            let held = self.slots[i as usize];
            if held == 0 {
                break;
            }
            if held == h {
                return false;
            }
            i = (i + 1) & self.mask;
        }
        self.slots[i as usize] = h;
        let count = self.count;
        self.count = count + 1;
        if count * 2 >= self.mask {
            self.grow();
        }
        true
    }

    fn grow(&mut self) {
        let mask = self.mask * 2 + 1;
        let mut slots = vec![0u64; (mask + 1) as usize];
        for &h in &self.slots {
            if h != 0 {
                let mut i = h & mask;
                while slots[i as usize] != 0 {
                    i = (i + 1) & mask;
                }
                slots[i as usize] = h;
            }
        }
        self.slots = slots;
        self.mask = mask;
    }
}

/// A (country, device_type) looked up without making Strings: hashes as the owned tuple does.
struct DimsRef<'a>(&'a str, &'a str);

impl Hash for DimsRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl hashbrown::Equivalent<(String, String)> for DimsRef<'_> {
    fn equivalent(&self, key: &(String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

fn floor_mod(a: i64, b: i64) -> i64 {
    a.rem_euclid(b)
}

fn floor_div(a: i64, b: i64) -> i64 {
    a.div_euclid(b)
}

fn id_hash(identifier: &str) -> i64 {
    (xxh3_64(identifier.as_bytes()) >> 4) as i64
}

#[pyclass(module = "streampulse_native")]
pub struct PlaybackCore {
    fine_ms: i64,
    coarse_ms: i64,
    lateness_ms: i64,
    timeout_ms: i64,
    starts_only: bool,
    log_gamma: f64,
    fine_name: Py<PyString>,
    coarse_name: Py<PyString>,
    high: i64,
    closed_to: i64,
    forgot_at: i64,
    // ids per coarse window, in the order the windows were first seen (forgetting depends on it)
    ids: Vec<(i64, IdTable)>,
    last_count: u64,
    sessions: HashMap<i64, Held>,
    dims: Vec<(Py<PyString>, Py<PyString>)>,
    dims_index: HashMap<(String, String), u32>,
    strings: Vec<Py<PyString>>,
    string_index: HashMap<String, u32>,
    type_kinds: HashMap<usize, (Py<PyAny>, u8)>,
    // the batch
    fine: Partials,
    coarse_only: Partials,
    fine_rows: Rows,
    coarse_rows: Rows,
    late: HashMap<(bool, i64, u8), i64>,
    duplicates: i64,
}

impl PlaybackCore {
    fn dims_of(&mut self, country: &Bound<'_, PyString>, device: &Bound<'_, PyString>) -> PyResult<u32> {
        let (c, d) = (country.to_str()?, device.to_str()?);
        if let Some(&index) = self.dims_index.get(&DimsRef(c, d)) {
            return Ok(index);
        }
        let index = self.dims.len() as u32;
        self.dims.push((country.clone().unbind(), device.clone().unbind()));
        self.dims_index.insert((c.to_owned(), d.to_owned()), index);
        Ok(index)
    }

    fn string_of(&mut self, value: &Bound<'_, PyString>) -> PyResult<i64> {
        let s = value.to_str()?;
        if let Some(&index) = self.string_index.get(s) {
            return Ok(index as i64);
        }
        let index = self.strings.len() as u32;
        self.strings.push(value.clone().unbind());
        self.string_index.insert(s.to_owned(), index);
        Ok(index as i64)
    }

    fn kind_of(&mut self, event: &Bound<'_, PyAny>) -> PyResult<u8> {
        // A decoded event's type is its class's (schemas/decoder.py: a class per event type), so it is
        // looked up once per class; an object whose `event_type` is its own (tests' stand-ins) is read each time.
        let class = event.get_type();
        let address = class.as_ptr() as usize;
        match self.type_kinds.get(&address) {
            Some((_, PER_INSTANCE)) => {}
            Some((_, kind)) => return Ok(*kind),
            None => {
                let on_class = class.getattr(intern!(event.py(), "event_type")).ok();
                let kind = match on_class {
                    Some(name) => kind_named(&name.extract::<String>()?),
                    None => PER_INSTANCE,
                };
                // The class is held, so its address cannot be reused by another while it is in the map.
                self.type_kinds.insert(address, (class.into_any().unbind(), kind));
                if kind != PER_INSTANCE {
                    return Ok(kind);
                }
            }
        }
        Ok(kind_named(&event.getattr(intern!(event.py(), "event_type"))?.extract::<String>()?))
    }

    fn counts(&self, kind: u8) -> (bool, bool) {
        // (counted in a row slot, has a handler), as the folders' event_slots and handlers say
        if kind == UNKNOWN_TYPE {
            return (false, false);
        }
        if self.starts_only {
            return (false, kind == PLAY_START);
        }
        (true, kind != PLAY_ATTEMPT)
    }

    fn ids_table(&mut self, window: i64) -> &mut IdTable {
        if let Some(i) = self.ids.iter().position(|(start, _)| *start == window) {
            return &mut self.ids[i].1;
        }
        // Windows of a steady stream hold about as many ids as the one before: start there.
        let mut slots = MIN_SLOTS;
        while (slots as u64) < 2 * self.last_count {
            slots *= 2;
        }
        self.ids.push((window, IdTable::new(slots)));
        &mut self.ids.last_mut().unwrap().1
    }

    fn count_late(&mut self, coarse: bool, window: i64, kind: u8) {
        *self.late.entry((coarse, window, kind)).or_insert(0) += 1;
    }

    fn bucket_of(&self, value: i64) -> i64 {
        if value <= 0 {
            return ZERO_BUCKET;
        }
        ((value as f64).ln() / self.log_gamma).ceil() as i64
    }

    fn change(&mut self, dims: u32, end: i64, delta: i64) {
        let row = self.fine_rows.entry((end - self.fine_ms, dims)).or_insert([0; WIDTH]);
        row[CONCURRENCY] += delta;
    }

    fn unpack(&self, packed: i64) -> Session {
        let step = self.fine_ms;
        let last = packed >> HI_SHIFT;
        let span = (packed >> SPAN_SHIFT) & SPAN_MASK;
        let dims = ((packed >> DIMS_SHIFT) & DIMS_MASK) as u32;
        Session { dims, end: NEVER, open: packed & 1 == 1, ranges: vec![(last - span) * step, last * step] }
    }

    fn unpack_wide(&self, packed: i128) -> Session {
        let step = self.fine_ms as i128;
        let last = packed >> HI_SHIFT;
        let span = (packed >> SPAN_SHIFT) & SPAN_MASK as i128;
        let dims = ((packed >> DIMS_SHIFT) & DIMS_MASK as i128) as u32;
        Session { dims, end: NEVER, open: packed & 1 == 1, ranges: vec![((last - span) * step) as i64, (last * step) as i64] }
    }

    fn session(&self, key: i64) -> Option<Session> {
        match self.sessions.get(&key) {
            None => None,
            Some(Held::Packed(packed)) => Some(self.unpack(*packed)),
            Some(Held::Listed(session)) => Some(session.clone()),
        }
    }

    fn store(&mut self, key: i64, session: Session) {
        let step = self.fine_ms;
        if session.ranges.len() == 2 && session.end == NEVER && (session.dims as i64) <= DIMS_MASK {
            let (lo, hi) = (floor_div(session.ranges[0], step), floor_div(session.ranges[1], step));
            if hi - lo <= SPAN_MASK && hi < MAX_HI {
                let packed = (hi << HI_SHIFT) | ((hi - lo) << SPAN_SHIFT) | ((session.dims as i64) << DIMS_SHIFT) | session.open as i64;
                self.sessions.insert(key, Held::Packed(packed));
                return;
            }
        }
        self.sessions.insert(key, Held::Listed(session));
    }

    fn touch(&mut self, key: i64, t: i64, dims: u32) {
        let step = self.fine_ms;
        if let Some(Held::Packed(packed)) = self.sessions.get(&key) {
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
                        self.sessions.insert(key, Held::Packed(grown));
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
                self.change(dims, lo, 1);
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
            self.count_range(&mut session, lo, hi);
        }
        self.store(key, session);
    }

    fn close_session(&mut self, session: &mut Session) {
        if session.open {
            let last = *session.ranges.last().expect("an open session has a range");
            self.change(session.dims, last + self.fine_ms, -1);
            session.open = false;
        }
    }

    fn count_range(&mut self, session: &mut Session, mut lo: i64, mut hi: i64) {
        let step = self.fine_ms;
        self.close_session(session);
        let counted = session.ranges.clone();
        let mut cursor = lo;
        for pair in counted.chunks(2) {
            let (c_lo, c_hi) = (pair[0], pair[1]);
            if c_hi < cursor || c_lo > hi {
                continue;
            }
            if cursor <= c_lo - step {
                self.change(session.dims, cursor, 1);
                self.change(session.dims, c_lo, -1);
            }
            cursor = cursor.max(c_hi + step);
        }
        if cursor <= hi {
            self.change(session.dims, cursor, 1);
            self.change(session.dims, hi + step, -1);
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
            self.change(session.dims, hi + step, 1);
            session.open = true;
        }
    }

    fn end(&mut self, key: i64, t: i64, dims: u32, on_time: bool) {
        let Some(mut session) = self.session(key) else {
            // Remember it ended, so a straggler delivered after the stop cannot reopen it.
            self.sessions.insert(key, Held::Listed(Session { dims, end: t, open: false, ranges: vec![] }));
            return;
        };
        session.end = session.end.min(t);
        if on_time {
            let step = self.fine_ms;
            let first_after = t - floor_mod(t, step) + step;
            self.close_session(&mut session);
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
                self.change(session.dims, cut, -1);
                self.change(session.dims, c_hi + step, 1);
                if c_lo < first_after {
                    kept.push(c_lo);
                    kept.push(first_after - step);
                }
            }
            session.ranges = kept;
        }
        self.sessions.insert(key, Held::Listed(session));
    }

    fn close(&mut self, high: i64, everything: bool) {
        let step = self.fine_ms;
        let limit = high - self.lateness_ms - step;
        let last_packed = if everything { NEVER } else { floor_div(limit, step) };
        let closing: Vec<i64> = self
            .sessions
            .iter()
            .filter(|(_, held)| match held {
                Held::Packed(p) => p & 1 == 1 && (p >> HI_SHIFT) <= last_packed,
                Held::Listed(s) => s.open && (everything || *s.ranges.last().unwrap() <= limit),
            })
            .map(|(key, _)| *key)
            .collect();
        for key in closing {
            let mut session = self.session(key).unwrap();
            self.close_session(&mut session);
            self.store(key, session);
        }
    }

    fn forget(&mut self, horizon: i64) {
        let last_packed = floor_div(horizon, self.fine_ms);
        self.sessions.retain(|_, held| match held {
            Held::Packed(p) => !(*p & 1 == 0 && (*p >> HI_SHIFT) < last_packed),
            Held::Listed(s) => {
                let last = s.ranges.last().copied().unwrap_or(NEVER);
                !(!s.open && (s.end < horizon || last < horizon))
            }
        });
    }

    fn forget_ids(&mut self, horizon: i64) {
        let mut i = 0;
        while i < self.ids.len() {
            if self.ids[i].0 <= horizon {
                let (_, table) = self.ids.remove(i);
                self.last_count = (self.last_count / 2).max(table.count);
            } else {
                i += 1;
            }
        }
    }

    fn add_one(&mut self, py: Python<'_>, event: &Bound<'_, PyAny>) -> PyResult<()> {
        let t: i64 = event.getattr(intern!(py, "event_time_ms"))?.extract()?;
        if t > self.high {
            self.high = t;
        }
        let high = self.high;
        let kind = self.kind_of(event)?;
        let (slotted, handled) = self.counts(kind);
        if !slotted && !handled {
            // A type no enabled metric counts only moves the watermark (flows/fold/partition_aggregator.py).
            return Ok(());
        }
        let (fine_ms, coarse_ms, lateness) = (self.fine_ms, self.coarse_ms, self.lateness_ms);
        let coarse_start = t - floor_mod(t, coarse_ms);
        let fine_start = t - floor_mod(t, fine_ms);
        if coarse_start + coarse_ms + lateness <= high {
            self.count_late(true, coarse_start, kind);
            self.count_late(false, fine_start, kind);
            return Ok(());
        }
        let event_id = event.getattr(intern!(py, "event_id"))?;
        let h = (xxh3_64(event_id.downcast::<PyString>()?.to_str()?.as_bytes()) >> 1) | 1;
        if !self.ids_table(coarse_start).first_time(h) {
            self.duplicates += 1;
            return Ok(());
        }
        let on_time = fine_start + fine_ms + lateness > high;
        let window = if on_time {
            fine_start
        } else {
            self.count_late(false, fine_start, kind);
            coarse_start
        };
        let country = event.getattr(intern!(py, "country"))?;
        let device = event.getattr(intern!(py, "device_type"))?;
        let dims = self.dims_of(country.downcast::<PyString>()?, device.downcast::<PyString>()?)?;
        if slotted {
            let mut adds: [(usize, i64); 4] = [(kind as usize, 1), (0, 0), (0, 0), (0, 0)];
            match kind {
                HEARTBEAT => {
                    let played: i64 = event.getattr(intern!(py, "played_ms"))?.extract()?;
                    let bitrate: i64 = event.getattr(intern!(py, "bitrate_kbps"))?.extract()?;
                    adds[1] = (PLAYED, played);
                    adds[2] = (HEARTBEAT_PLAYED, played);
                    adds[3] = (BITRATE_X_PLAYED, bitrate * played);
                }
                REBUFFER => adds[1] = (REBUFFER_MS, event.getattr(intern!(py, "rebuffer_ms"))?.extract()?),
                BITRATE_CHANGE => {
                    let bitrate: i64 = event.getattr(intern!(py, "bitrate_kbps"))?.extract()?;
                    let previous: i64 = event.getattr(intern!(py, "previous_bitrate_kbps"))?.extract()?;
                    if bitrate < previous {
                        adds[1] = (DOWNSHIFTS, 1);
                    }
                }
                PLAY_STOP => adds[1] = (PLAYED, event.getattr(intern!(py, "played_ms"))?.extract()?),
                _ => {}
            }
            let rows = if on_time { &mut self.fine_rows } else { &mut self.coarse_rows };
            let row = rows.entry((window, dims)).or_insert([0; WIDTH]);
            for (slot, value) in adds {
                row[slot] += value;
            }
        }
        match kind {
            PLAY_START => {
                let cdn = self.string_of(event.getattr(intern!(py, "cdn"))?.downcast::<PyString>()?)?;
                self.add_partial(on_time, (window, STREAM_STARTS, dims, cdn));
                if !self.starts_only {
                    let startup: i64 = event.getattr(intern!(py, "startup_ms"))?.extract()?;
                    let bucket = self.bucket_of(startup);
                    self.add_partial(on_time, (window, STARTUP_SKETCH, dims, bucket));
                    let title = self.string_of(event.getattr(intern!(py, "title_id"))?.downcast::<PyString>()?)?;
                    self.add_partial(on_time, (window, TITLE_STARTS, dims, title));
                    if on_time {
                        let key = self.session_key(py, event)?;
                        self.touch(key, t, dims);
                    }
                }
            }
            START_FAILURE => {
                let code = self.string_of(event.getattr(intern!(py, "error_code"))?.downcast::<PyString>()?)?;
                self.add_partial(on_time, (window, START_FAILURES, dims, code));
            }
            HEARTBEAT | REBUFFER | BITRATE_CHANGE | PAUSE | RESUME => {
                if on_time {
                    let key = self.session_key(py, event)?;
                    self.touch(key, t, dims);
                }
            }
            PLAY_ERROR => {
                let code = self.string_of(event.getattr(intern!(py, "error_code"))?.downcast::<PyString>()?)?;
                self.add_partial(on_time, (window, PLAYBACK_ERRORS, dims, code));
                let key = self.session_key(py, event)?;
                self.end(key, t, dims, on_time);
            }
            PLAY_STOP => {
                let key = self.session_key(py, event)?;
                self.end(key, t, dims, on_time);
            }
            _ => {}
        }
        Ok(())
    }

    fn session_key(&self, py: Python<'_>, event: &Bound<'_, PyAny>) -> PyResult<i64> {
        let session_id = event.getattr(intern!(py, "session_id"))?;
        Ok(id_hash(session_id.downcast::<PyString>()?.to_str()?))
    }

    fn add_partial(&mut self, on_time: bool, key: (i64, u8, u32, i64)) {
        let acc = if on_time { &mut self.fine } else { &mut self.coarse_only };
        *acc.entry(key).or_insert(0) += 1;
    }

    fn rows_to_dict<'py>(&self, py: Python<'py>, rows: &Rows) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new_bound(py);
        // In window order, as the Python fold inserts them: the window store looks each window up once per run.
        let mut ordered: Vec<(&(i64, u32), &Row)> = rows.iter().collect();
        ordered.sort_unstable_by_key(|(key, _)| **key);
        for (&(window, dims), row) in ordered {
            let (country, device) = &self.dims[dims as usize];
            let key = PyTuple::new_bound(py, [window.into_py(py), country.clone_ref(py).into_any(), device.clone_ref(py).into_any()]);
            out.set_item(key, PyList::new_bound(py, row.iter()))?;
        }
        Ok(out)
    }

    fn partials_to_dict<'py>(&self, py: Python<'py>, partials: &Partials) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new_bound(py);
        let mut ordered: Vec<(&(i64, u8, u32, i64), &i64)> = partials.iter().collect();
        ordered.sort_unstable_by_key(|(key, _)| **key);
        for (&(window, name, dims, extra), &count) in ordered {
            let (country, device) = &self.dims[dims as usize];
            let extra: PyObject = if name == STARTUP_SKETCH {
                extra.into_py(py)
            } else {
                self.strings[extra as usize].clone_ref(py).into_any()
            };
            let key = PyTuple::new_bound(
                py,
                [
                    window.into_py(py),
                    PyString::new_bound(py, PARTIAL_NAMES[name as usize]).into_any().unbind(),
                    country.clone_ref(py).into_any(),
                    device.clone_ref(py).into_any(),
                    extra,
                ],
            );
            out.set_item(key, count)?;
        }
        Ok(out)
    }

    fn held_to_py(&self, py: Python<'_>, held: &Held) -> PyObject {
        match held {
            Held::Packed(packed) => packed.into_py(py),
            Held::Listed(s) => {
                let (country, device) = &self.dims[s.dims as usize];
                let mut items: Vec<PyObject> = vec![
                    country.clone_ref(py).into_any(),
                    device.clone_ref(py).into_any(),
                    s.end.into_py(py),
                    s.open.into_py(py),
                ];
                items.extend(s.ranges.iter().map(|r| r.into_py(py)));
                PyList::new_bound(py, items).into_any().unbind()
            }
        }
    }
}

#[pymethods]
impl PlaybackCore {
    /// One partition's playback fold. `event_types` must be flows.fold.playback.EVENT_TYPES (checked).
    #[new]
    #[pyo3(signature = (fine_ms, coarse_ms, lateness_ms, session_timeout_ms, starts_only, log_gamma, fine_name, coarse_name, event_types))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        fine_ms: i64,
        coarse_ms: i64,
        lateness_ms: i64,
        session_timeout_ms: i64,
        starts_only: bool,
        log_gamma: f64,
        fine_name: Bound<'_, PyString>,
        coarse_name: Bound<'_, PyString>,
        event_types: Vec<String>,
    ) -> PyResult<Self> {
        if event_types != EVENT_TYPES {
            return Err(PyValueError::new_err(format!(
                "streampulse_native folds the event types {EVENT_TYPES:?}, the flow has {event_types:?}: rebuild it (pip install ./native)"
            )));
        }
        if fine_ms <= 0 || coarse_ms <= 0 || coarse_ms % fine_ms != 0 {
            return Err(PyValueError::new_err("windows must be positive and the coarse one a multiple of the fine one"));
        }
        Ok(PlaybackCore {
            fine_ms,
            coarse_ms,
            lateness_ms,
            timeout_ms: session_timeout_ms,
            starts_only,
            log_gamma,
            fine_name: fine_name.unbind(),
            coarse_name: coarse_name.unbind(),
            high: NO_EVENT_YET,
            closed_to: NO_EVENT_YET,
            forgot_at: NO_EVENT_YET,
            ids: Vec::new(),
            last_count: 0,
            sessions: HashMap::new(),
            dims: Vec::new(),
            dims_index: HashMap::new(),
            strings: Vec::new(),
            string_index: HashMap::new(),
            type_kinds: HashMap::new(),
            fine: HashMap::new(),
            coarse_only: HashMap::new(),
            fine_rows: HashMap::new(),
            coarse_rows: HashMap::new(),
            late: HashMap::new(),
            duplicates: 0,
        })
    }

    /// Fold decoded, valid events, in partition order.
    fn add_all(&mut self, py: Python<'_>, events: &Bound<'_, PyAny>) -> PyResult<()> {
        for event in events.iter()? {
            self.add_one(py, &event?)?;
        }
        Ok(())
    }

    /// Settle and hand over the batch: (high, fine, coarse_only, late, fine_rows, coarse_rows, duplicates).
    /// `active` is false when the partition is idle or finished (every session's -1 is sent then).
    fn summary<'py>(&mut self, py: Python<'py>, active: bool) -> PyResult<Bound<'py, PyTuple>> {
        let (high, fine_ms) = (self.high, self.fine_ms);
        let mut closed_to = high - self.lateness_ms;
        closed_to -= floor_mod(closed_to, fine_ms);
        if !active || closed_to > self.closed_to {
            self.closed_to = closed_to;
            self.close(high, !active);
        }
        let horizon = high - self.lateness_ms - self.coarse_ms;
        self.forget_ids(horizon);
        if horizon >= self.forgot_at + self.coarse_ms {
            self.forgot_at = horizon;
            self.forget(horizon);
        }
        let late = PyDict::new_bound(py);
        for (&(coarse, window, kind), &count) in &self.late {
            let resolution = if coarse { &self.coarse_name } else { &self.fine_name };
            let key = PyTuple::new_bound(
                py,
                [resolution.clone_ref(py).into_any(), window.into_py(py), EVENT_TYPES[kind as usize].into_py(py)],
            );
            late.set_item(key, count)?;
        }
        let parts = PyTuple::new_bound(
            py,
            [
                high.into_py(py),
                self.partials_to_dict(py, &self.fine)?.into_any().unbind(),
                self.partials_to_dict(py, &self.coarse_only)?.into_any().unbind(),
                late.into_any().unbind(),
                self.rows_to_dict(py, &self.fine_rows)?.into_any().unbind(),
                self.rows_to_dict(py, &self.coarse_rows)?.into_any().unbind(),
                self.duplicates.into_py(py),
            ],
        );
        self.fine.clear();
        self.coarse_only.clear();
        self.fine_rows.clear();
        self.coarse_rows.clear();
        self.late.clear();
        self.duplicates = 0;
        Ok(parts)
    }

    /// What the aggregator remembers between batches, in flows/fold/partition_aggregator.py's snapshot layout:
    /// (high, closed_to, forgot_at, ({window: [array('Q'), mask, count]}, last_count), (sessions, dims)).
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let array = py.import_bound("array")?.getattr("array")?;
        let tables = PyDict::new_bound(py);
        for (start, table) in &self.ids {
            let raw: Vec<u8> = table.slots.iter().flat_map(|s| s.to_ne_bytes()).collect();
            let slots = array.call1(("Q", PyBytes::new_bound(py, &raw)))?;
            tables.set_item(start, PyList::new_bound(py, [slots.unbind(), table.mask.into_py(py), table.count.into_py(py)]))?;
        }
        let ids = PyTuple::new_bound(py, [tables.into_any().unbind(), self.last_count.into_py(py)]);
        let sessions = PyDict::new_bound(py);
        for (key, held) in &self.sessions {
            sessions.set_item(key, self.held_to_py(py, held))?;
        }
        let dims = PyList::new_bound(
            py,
            self.dims.iter().map(|(c, d)| PyTuple::new_bound(py, [c.clone_ref(py), d.clone_ref(py)])),
        );
        // StreamStartsFolder holds nothing per key: its snapshot is None.
        let folder: PyObject = if self.starts_only {
            py.None()
        } else {
            PyTuple::new_bound(py, [sessions.into_any().unbind(), dims.into_any().unbind()]).into_any().unbind()
        };
        Ok(PyTuple::new_bound(
            py,
            [
                self.high.into_py(py),
                self.closed_to.into_py(py),
                self.forgot_at.into_py(py),
                ids.into_any().unbind(),
                folder,
            ],
        ))
    }

    /// Take back what `state` returned (or what the Python aggregator's snapshot holds).
    fn restore(&mut self, high: i64, closed_to: i64, forgot_at: i64, ids: &Bound<'_, PyAny>, folder: &Bound<'_, PyAny>) -> PyResult<()> {
        let (tables, last_count): (Bound<'_, PyDict>, u64) = ids.extract()?;
        let mut restored_ids = Vec::new();
        for (start, table) in tables.iter() {
            let table = table.downcast::<PyList>()?;
            let (slots, mask, count) = (table.get_item(0)?, table.get_item(1)?.extract::<u64>()?, table.get_item(2)?.extract::<u64>()?);
            let raw: Vec<u8> = slots.call_method0("tobytes")?.extract()?;
            let slots: Vec<u64> = raw.chunks_exact(8).map(|b| u64::from_ne_bytes(b.try_into().unwrap())).collect();
            if slots.len() as u64 != mask + 1 {
                return Err(PyValueError::new_err("corrupt id table in the recovery snapshot"));
            }
            restored_ids.push((start.extract::<i64>()?, IdTable { slots, mask, count }));
        }
        if folder.is_none() {
            // a stream-starts-only aggregator's: nothing per key
            self.high = high;
            self.closed_to = closed_to;
            self.forgot_at = forgot_at;
            self.ids = restored_ids;
            self.last_count = last_count;
            self.sessions.clear();
            return Ok(());
        }
        let (sessions, dims): (Bound<'_, PyDict>, Bound<'_, PyList>) = folder.extract()?;
        self.dims.clear();
        self.dims_index.clear();
        for pair in dims.iter() {
            let (country, device): (Bound<'_, PyString>, Bound<'_, PyString>) = pair.extract()?;
            self.dims_of(&country, &device)?;
        }
        let mut restored = HashMap::new();
        for (key, held) in sessions.iter() {
            let key: i64 = key.extract()?;
            if let Ok(packed) = held.extract::<i128>() {
                // Python packs sessions whatever the size of the int; past an i64 they are kept listed here.
                let session = if packed <= i64::MAX as i128 {
                    Held::Packed(packed as i64)
                } else {
                    Held::Listed(self.unpack_wide(packed))
                };
                restored.insert(key, session);
                continue;
            }
            let items = held.downcast::<PyList>()?;
            let country = items.get_item(0)?;
            let device = items.get_item(1)?;
            let dims = self.dims_of(country.downcast::<PyString>()?, device.downcast::<PyString>()?)?;
            let end: i64 = items.get_item(2)?.extract()?;
            let open: bool = items.get_item(3)?.extract()?;
            let ranges: Vec<i64> = items.iter().skip(4).map(|r| r.extract()).collect::<PyResult<_>>()?;
            if ranges.len() % 2 != 0 || (open && ranges.is_empty()) {
                return Err(PyValueError::new_err("corrupt session in the recovery snapshot"));
            }
            restored.insert(key, Held::Listed(Session { dims, end, open, ranges }));
        }
        self.high = high;
        self.closed_to = closed_to;
        self.forgot_at = forgot_at;
        self.ids = restored_ids;
        self.last_count = last_count;
        self.sessions = restored;
        Ok(())
    }

    /// The startup sketch's bucket of `value` (flows/windows/sketch.py bucket_of): exposed so tests compare the two.
    #[pyo3(name = "bucket_of")]
    fn py_bucket_of(&self, value: i64) -> i64 {
        self.bucket_of(value)
    }

    #[getter]
    fn high_event_time_ms(&self) -> i64 {
        self.high
    }

    /// Sessions held in memory.
    #[getter]
    fn keys_held(&self) -> usize {
        self.sessions.len()
    }

    /// Event ids held for duplicate detection.
    #[getter]
    fn remembered_ids(&self) -> u64 {
        self.ids.iter().map(|(_, t)| t.count).sum()
    }
}

#[pymodule]
fn streampulse_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PlaybackCore>()?;
    Ok(())
}
