//! What one batch adds, until `summary` hands it over: one row of integers per (window, dims) in
//! flows/fold/playback.py ROW_LAYOUT's slots, the partials with a further dimension as named in
//! flows/windows/catalog.py, the late counts and the duplicates; and its conversion to the dicts of
//! the Python fold's `BatchSummary`.

use crate::kinds::EVENT_TYPES;
use crate::names::Names;
use hashbrown::HashMap;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

// Row slots after the event types' counts (slot = the event type's number), as ROW_LAYOUT has them.
pub(crate) const PLAYED: usize = 10;
pub(crate) const HEARTBEAT_PLAYED: usize = 11;
pub(crate) const BITRATE_X_PLAYED: usize = 12;
pub(crate) const REBUFFER_MS: usize = 13;
pub(crate) const DOWNSHIFTS: usize = 14;
pub(crate) const CONCURRENCY: usize = 15;
/// flows/fold/native.py NATIVE_ROW_WIDTH says it to the flow, which folds in Python if ROW_LAYOUT differs.
pub(crate) const WIDTH: usize = 16;

// Aggregates with a further dimension.
pub(crate) const STREAM_STARTS: u8 = 0;
pub(crate) const STARTUP_SKETCH: u8 = 1;
pub(crate) const TITLE_STARTS: u8 = 2;
pub(crate) const START_FAILURES: u8 = 3;
pub(crate) const PLAYBACK_ERRORS: u8 = 4;
const PARTIAL_NAMES: [&str; 5] = ["stream_starts", "startup_ms_sketch", "title_starts", "start_failures", "playback_errors"];

type Row = [i64; WIDTH];
/// (window, dims) -> row
pub(crate) type Rows = HashMap<(i64, u32), Row>;
/// (window, aggregate, dims, further dimension: a string's number in `Names`, or a sketch bucket)
type PartialKey = (i64, u8, u32, i64);
type Partials = HashMap<PartialKey, i64>;

/// Add `delta` to the sessions playing at the window ending at `end` (the concurrency slot).
pub(crate) fn change_concurrency(rows: &mut Rows, step: i64, dims: u32, end: i64, delta: i64) {
    let row = rows.entry((end - step, dims)).or_insert([0; WIDTH]);
    row[CONCURRENCY] += delta;
}

#[derive(Default)]
pub(crate) struct Batch {
    fine: Partials,
    coarse_only: Partials,
    /// Rows of fine windows; sessions add their concurrency changes here.
    pub(crate) fine_rows: Rows,
    coarse_rows: Rows,
    late: HashMap<(bool, i64, u8), i64>,
    pub(crate) duplicates: i64,
}

impl Batch {
    pub(crate) fn count_late(&mut self, coarse: bool, window: i64, kind: u8) {
        *self.late.entry((coarse, window, kind)).or_insert(0) += 1;
    }

    /// Add (slot, value) pairs to a row: of a fine window if `on_time`, else of a coarse one.
    // Per event: inlined into add_one, as it was before the split (left a call, it cost 0.7% more
    // instructions in the fold, measured with callgrind).
    #[inline(always)]
    pub(crate) fn add_to_row(&mut self, on_time: bool, window: i64, dims: u32, adds: [(usize, i64); 4]) {
        let rows = if on_time { &mut self.fine_rows } else { &mut self.coarse_rows };
        let row = rows.entry((window, dims)).or_insert([0; WIDTH]);
        for (slot, value) in adds {
            row[slot] += value;
        }
    }

    pub(crate) fn add_partial(&mut self, on_time: bool, key: PartialKey) {
        let acc = if on_time { &mut self.fine } else { &mut self.coarse_only };
        *acc.entry(key).or_insert(0) += 1;
    }

    /// (high, fine, coarse_only, late, fine_rows, coarse_rows, duplicates), and start the next batch.
    pub(crate) fn take<'py>(
        &mut self,
        py: Python<'py>,
        high: i64,
        names: &Names,
        fine_name: &Py<PyString>,
        coarse_name: &Py<PyString>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let late = PyDict::new_bound(py);
        for (&(coarse, window, kind), &count) in &self.late {
            let resolution = if coarse { coarse_name } else { fine_name };
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
                partials_to_dict(py, names, &self.fine)?.into_any().unbind(),
                partials_to_dict(py, names, &self.coarse_only)?.into_any().unbind(),
                late.into_any().unbind(),
                rows_to_dict(py, names, &self.fine_rows)?.into_any().unbind(),
                rows_to_dict(py, names, &self.coarse_rows)?.into_any().unbind(),
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
}

fn rows_to_dict<'py>(py: Python<'py>, names: &Names, rows: &Rows) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new_bound(py);
    // In window order, as the Python fold inserts them: the window store looks each window up once per run.
    let mut ordered: Vec<(&(i64, u32), &Row)> = rows.iter().collect();
    ordered.sort_unstable_by_key(|(key, _)| **key);
    for (&(window, dims), row) in ordered {
        let (country, device) = &names.dims[dims as usize];
        let key = PyTuple::new_bound(py, [window.into_py(py), country.clone_ref(py).into_any(), device.clone_ref(py).into_any()]);
        out.set_item(key, PyList::new_bound(py, row.iter()))?;
    }
    Ok(out)
}

fn partials_to_dict<'py>(py: Python<'py>, names: &Names, partials: &Partials) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new_bound(py);
    let mut ordered: Vec<(&PartialKey, &i64)> = partials.iter().collect();
    ordered.sort_unstable_by_key(|(key, _)| **key);
    for (&(window, name, dims, extra), &count) in ordered {
        let (country, device) = &names.dims[dims as usize];
        let extra: PyObject = if name == STARTUP_SKETCH {
            extra.into_py(py)
        } else {
            names.string(extra).clone_ref(py).into_any()
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
