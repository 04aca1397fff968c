//! The recovery snapshot's parts to and from Python, in flows/fold/partition_aggregator.py's layout, so
//! a snapshot taken by either fold is restored by the other: the id tables as ({window: [array('Q'),
//! mask, count]}, last_count), the sessions as ({key: packed int | [country, device_type, end, open,
//! lo, hi, ...]}, [(country, device_type), ...]).

use crate::ids::{EventIds, IdTable};
use crate::names::Names;
use crate::sessions::{unpack_wide, Held, Session, Sessions};
use hashbrown::HashMap;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

pub(crate) fn ids_to_py(py: Python<'_>, ids: &EventIds) -> PyResult<PyObject> {
    let array = py.import_bound("array")?.getattr("array")?;
    let tables = PyDict::new_bound(py);
    for (start, table) in &ids.tables {
        let raw: Vec<u8> = table.slots.iter().flat_map(|s| s.to_ne_bytes()).collect();
        let slots = array.call1(("Q", PyBytes::new_bound(py, &raw)))?;
        tables.set_item(start, PyList::new_bound(py, [slots.unbind(), table.mask.into_py(py), table.count.into_py(py)]))?;
    }
    Ok(PyTuple::new_bound(py, [tables.into_any().unbind(), ids.last_count.into_py(py)]).into_any().unbind())
}

pub(crate) fn ids_from_py(ids: &Bound<'_, PyAny>) -> PyResult<EventIds> {
    let (tables, last_count): (Bound<'_, PyDict>, u64) = ids.extract()?;
    let mut restored = Vec::new();
    for (start, table) in tables.iter() {
        let table = table.downcast::<PyList>()?;
        let (slots, mask, count) = (table.get_item(0)?, table.get_item(1)?.extract::<u64>()?, table.get_item(2)?.extract::<u64>()?);
        let raw: Vec<u8> = slots.call_method0("tobytes")?.extract()?;
        let slots: Vec<u64> = raw.chunks_exact(8).map(|b| u64::from_ne_bytes(b.try_into().unwrap())).collect();
        if slots.len() as u64 != mask + 1 {
            return Err(PyValueError::new_err("corrupt id table in the recovery snapshot"));
        }
        restored.push((start.extract::<i64>()?, IdTable { slots, mask, count }));
    }
    Ok(EventIds { tables: restored, last_count })
}

/// The playback folder's part: (sessions, dims).
pub(crate) fn sessions_to_py(py: Python<'_>, sessions: &Sessions, names: &Names) -> PyResult<PyObject> {
    let held = PyDict::new_bound(py);
    for (key, session) in &sessions.held {
        held.set_item(key, held_to_py(py, names, session))?;
    }
    let dims = PyList::new_bound(py, names.dims.iter().map(|(c, d)| PyTuple::new_bound(py, [c.clone_ref(py), d.clone_ref(py)])));
    Ok(PyTuple::new_bound(py, [held.into_any().unbind(), dims.into_any().unbind()]).into_any().unbind())
}

fn held_to_py(py: Python<'_>, names: &Names, held: &Held) -> PyObject {
    match held {
        Held::Packed(packed) => packed.into_py(py),
        Held::Listed(s) => {
            let (country, device) = &names.dims[s.dims as usize];
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

/// The sessions of what `sessions_to_py` made; `names` takes the snapshot's (country, device_type) numbers.
pub(crate) fn sessions_from_py(folder: &Bound<'_, PyAny>, names: &mut Names, step: i64) -> PyResult<HashMap<i64, Held>> {
    let (sessions, dims): (Bound<'_, PyDict>, Bound<'_, PyList>) = folder.extract()?;
    names.clear_dims();
    for pair in dims.iter() {
        let (country, device): (Bound<'_, PyString>, Bound<'_, PyString>) = pair.extract()?;
        names.dims_of(&country, &device)?;
    }
    let mut restored = HashMap::new();
    for (key, held) in sessions.iter() {
        let key: i64 = key.extract()?;
        if let Ok(packed) = held.extract::<i128>() {
            // Python packs sessions whatever the size of the int; past an i64 they are kept listed here.
            let session = if packed <= i64::MAX as i128 {
                Held::Packed(packed as i64)
            } else {
                Held::Listed(unpack_wide(step, packed))
            };
            restored.insert(key, session);
            continue;
        }
        let items = held.downcast::<PyList>()?;
        let country = items.get_item(0)?;
        let device = items.get_item(1)?;
        let dims = names.dims_of(country.downcast::<PyString>()?, device.downcast::<PyString>()?)?;
        let end: i64 = items.get_item(2)?.extract()?;
        let open: bool = items.get_item(3)?.extract()?;
        let ranges: Vec<i64> = items.iter().skip(4).map(|r| r.extract()).collect::<PyResult<_>>()?;
        if !ranges.len().is_multiple_of(2) || (open && ranges.is_empty()) {
            return Err(PyValueError::new_err("corrupt session in the recovery snapshot"));
        }
        restored.insert(key, Held::Listed(Session { dims, end, open, ranges }));
    }
    Ok(restored)
}
