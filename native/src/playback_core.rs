//! `PlaybackCore`, the pyo3 class the flow calls (flows/fold/native.py): per event it reads the
//! attributes, applies lateness and the duplicate-id check, and hands the event to the batch's rows and
//! partials and to the sessions; per batch it settles the windows that closed and hands the batch over.

// pyo3 0.22's #[pymethods] wrappers convert each method's PyErr into itself, which clippy (1.80 on)
// flags at the method; the allow cannot go on the impl block, as the wrappers are generated outside it.
#![allow(clippy::useless_conversion)]

use crate::batch::{
    Batch, BITRATE_X_PLAYED, DOWNSHIFTS, HEARTBEAT_PLAYED, PLAYBACK_ERRORS, PLAYED, REBUFFER_MS, STARTUP_SKETCH,
    START_FAILURES, STREAM_STARTS, TITLE_STARTS,
};
use crate::ids::{event_id_hash, EventIds};
use crate::kinds::{
    EventKinds, BITRATE_CHANGE, EVENT_TYPES, HEARTBEAT, PAUSE, PLAY_ATTEMPT, PLAY_ERROR, PLAY_START, PLAY_STOP,
    REBUFFER, RESUME, START_FAILURE, UNKNOWN_TYPE,
};
use crate::names::Names;
use crate::sessions::{session_key, Sessions};
use crate::{floor_mod, snapshot};
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

const NO_EVENT_YET: i64 = -1;
const ZERO_BUCKET: i64 = -(1 << 31);

#[pyclass(module = "streampulse_native")]
pub struct PlaybackCore {
    fine_ms: i64,
    coarse_ms: i64,
    lateness_ms: i64,
    starts_only: bool,
    log_gamma: f64,
    fine_name: Py<PyString>,
    coarse_name: Py<PyString>,
    high: i64,
    closed_to: i64,
    forgot_at: i64,
    ids: EventIds,
    sessions: Sessions,
    names: Names,
    kinds: EventKinds,
    batch: Batch,
}

impl PlaybackCore {
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

    fn bucket_of(&self, value: i64) -> i64 {
        if value <= 0 {
            return ZERO_BUCKET;
        }
        ((value as f64).ln() / self.log_gamma).ceil() as i64
    }

    fn add_one(&mut self, py: Python<'_>, event: &Bound<'_, PyAny>) -> PyResult<()> {
        let t: i64 = event.getattr(intern!(py, "event_time_ms"))?.extract()?;
        if t > self.high {
            self.high = t;
        }
        let high = self.high;
        let kind = self.kinds.kind_of(event)?;
        let (slotted, handled) = self.counts(kind);
        if !slotted && !handled {
            // A type no enabled metric counts only moves the watermark (flows/fold/partition_aggregator.py).
            return Ok(());
        }
        let (fine_ms, coarse_ms, lateness) = (self.fine_ms, self.coarse_ms, self.lateness_ms);
        let coarse_start = t - floor_mod(t, coarse_ms);
        let fine_start = t - floor_mod(t, fine_ms);
        if coarse_start + coarse_ms + lateness <= high {
            self.batch.count_late(true, coarse_start, kind);
            self.batch.count_late(false, fine_start, kind);
            return Ok(());
        }
        let event_id = event.getattr(intern!(py, "event_id"))?;
        let h = event_id_hash(event_id.downcast::<PyString>()?.to_str()?);
        if !self.ids.first_time(coarse_start, h) {
            self.batch.duplicates += 1;
            return Ok(());
        }
        let on_time = fine_start + fine_ms + lateness > high;
        let window = if on_time {
            fine_start
        } else {
            self.batch.count_late(false, fine_start, kind);
            coarse_start
        };
        let country = event.getattr(intern!(py, "country"))?;
        let device = event.getattr(intern!(py, "device_type"))?;
        let dims = self.names.dims_of(country.downcast::<PyString>()?, device.downcast::<PyString>()?)?;
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
            self.batch.add_to_row(on_time, window, dims, adds);
        }
        match kind {
            PLAY_START => {
                let cdn = self.names.string_of(event.getattr(intern!(py, "cdn"))?.downcast::<PyString>()?)?;
                self.batch.add_partial(on_time, (window, STREAM_STARTS, dims, cdn));
                if !self.starts_only {
                    let startup: i64 = event.getattr(intern!(py, "startup_ms"))?.extract()?;
                    let bucket = self.bucket_of(startup);
                    self.batch.add_partial(on_time, (window, STARTUP_SKETCH, dims, bucket));
                    let title = self.names.string_of(event.getattr(intern!(py, "title_id"))?.downcast::<PyString>()?)?;
                    self.batch.add_partial(on_time, (window, TITLE_STARTS, dims, title));
                    if on_time {
                        let key = self.session_key(py, event)?;
                        self.sessions.touch(&mut self.batch.fine_rows, key, t, dims);
                    }
                }
            }
            START_FAILURE => {
                let code = self.names.string_of(event.getattr(intern!(py, "error_code"))?.downcast::<PyString>()?)?;
                self.batch.add_partial(on_time, (window, START_FAILURES, dims, code));
            }
            HEARTBEAT | REBUFFER | BITRATE_CHANGE | PAUSE | RESUME if on_time => {
                let key = self.session_key(py, event)?;
                self.sessions.touch(&mut self.batch.fine_rows, key, t, dims);
            }
            PLAY_ERROR => {
                let code = self.names.string_of(event.getattr(intern!(py, "error_code"))?.downcast::<PyString>()?)?;
                self.batch.add_partial(on_time, (window, PLAYBACK_ERRORS, dims, code));
                let key = self.session_key(py, event)?;
                self.sessions.end(&mut self.batch.fine_rows, key, t, dims, on_time);
            }
            PLAY_STOP => {
                let key = self.session_key(py, event)?;
                self.sessions.end(&mut self.batch.fine_rows, key, t, dims, on_time);
            }
            _ => {}
        }
        Ok(())
    }

    fn session_key(&self, py: Python<'_>, event: &Bound<'_, PyAny>) -> PyResult<i64> {
        let session_id = event.getattr(intern!(py, "session_id"))?;
        Ok(session_key(session_id.downcast::<PyString>()?.to_str()?))
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
            starts_only,
            log_gamma,
            fine_name: fine_name.unbind(),
            coarse_name: coarse_name.unbind(),
            high: NO_EVENT_YET,
            closed_to: NO_EVENT_YET,
            forgot_at: NO_EVENT_YET,
            ids: EventIds::default(),
            sessions: Sessions::new(fine_ms, session_timeout_ms),
            names: Names::default(),
            kinds: EventKinds::default(),
            batch: Batch::default(),
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
            self.sessions.close(&mut self.batch.fine_rows, high - self.lateness_ms - fine_ms, !active);
        }
        let horizon = high - self.lateness_ms - self.coarse_ms;
        self.ids.forget(horizon);
        if horizon >= self.forgot_at + self.coarse_ms {
            self.forgot_at = horizon;
            self.sessions.forget(horizon);
        }
        self.batch.take(py, high, &self.names, &self.fine_name, &self.coarse_name)
    }

    /// What the aggregator remembers between batches, in flows/fold/partition_aggregator.py's snapshot layout:
    /// (high, closed_to, forgot_at, ({window: [array('Q'), mask, count]}, last_count), (sessions, dims)).
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let ids = snapshot::ids_to_py(py, &self.ids)?;
        // StreamStartsFolder holds nothing per key: its snapshot is None.
        let folder: PyObject = if self.starts_only {
            py.None()
        } else {
            snapshot::sessions_to_py(py, &self.sessions, &self.names)?
        };
        Ok(PyTuple::new_bound(
            py,
            [self.high.into_py(py), self.closed_to.into_py(py), self.forgot_at.into_py(py), ids, folder],
        ))
    }

    /// Take back what `state` returned (or what the Python aggregator's snapshot holds).
    fn restore(&mut self, high: i64, closed_to: i64, forgot_at: i64, ids: &Bound<'_, PyAny>, folder: &Bound<'_, PyAny>) -> PyResult<()> {
        let ids = snapshot::ids_from_py(ids)?;
        // a stream-starts-only aggregator's folder is None: nothing per key
        let sessions = if folder.is_none() {
            Default::default()
        } else {
            snapshot::sessions_from_py(folder, &mut self.names, self.fine_ms)?
        };
        self.high = high;
        self.closed_to = closed_to;
        self.forgot_at = forgot_at;
        self.ids = ids;
        self.sessions.held = sessions;
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
        self.sessions.held.len()
    }

    /// Event ids held for duplicate detection.
    #[getter]
    fn remembered_ids(&self) -> u64 {
        self.ids.remembered()
    }
}
