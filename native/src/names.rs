//! The strings the fold counts by, each kept once as a Python string and numbered: (country, device_type)
//! pairs (a row's or a partial's dimensions) and the further dimension of a partial (CDN, title, error
//! code). The numbers stand for them in the fold; the summary hands the same Python strings back.

use hashbrown::HashMap;
use pyo3::prelude::*;
use pyo3::types::PyString;
use std::hash::{Hash, Hasher};

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

#[derive(Default)]
pub(crate) struct Names {
    /// (country, device_type) by number, in the order first seen (the snapshot keeps this order).
    pub(crate) dims: Vec<(Py<PyString>, Py<PyString>)>,
    dims_index: HashMap<(String, String), u32>,
    strings: Vec<Py<PyString>>,
    string_index: HashMap<String, u32>,
}

impl Names {
    pub(crate) fn dims_of(&mut self, country: &Bound<'_, PyString>, device: &Bound<'_, PyString>) -> PyResult<u32> {
        let (c, d) = (country.to_str()?, device.to_str()?);
        if let Some(&index) = self.dims_index.get(&DimsRef(c, d)) {
            return Ok(index);
        }
        let index = self.dims.len() as u32;
        self.dims.push((country.clone().unbind(), device.clone().unbind()));
        self.dims_index.insert((c.to_owned(), d.to_owned()), index);
        Ok(index)
    }

    pub(crate) fn string_of(&mut self, value: &Bound<'_, PyString>) -> PyResult<i64> {
        let s = value.to_str()?;
        if let Some(&index) = self.string_index.get(s) {
            return Ok(index as i64);
        }
        let index = self.strings.len() as u32;
        self.strings.push(value.clone().unbind());
        self.string_index.insert(s.to_owned(), index);
        Ok(index as i64)
    }

    pub(crate) fn string(&self, index: i64) -> &Py<PyString> {
        &self.strings[index as usize]
    }

    /// Forget the (country, device_type) numbers: a restored snapshot brings its own.
    pub(crate) fn clear_dims(&mut self) {
        self.dims.clear();
        self.dims_index.clear();
    }
}
