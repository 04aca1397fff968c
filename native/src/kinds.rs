//! Event types: their numbers, in flows/fold/playback.py EVENT_TYPES order (checked when a `PlaybackCore`
//! is made), and the cache that reads a decoded event's type once per class rather than once per event.

use hashbrown::HashMap;
use pyo3::intern;
use pyo3::prelude::*;

pub(crate) const PLAY_ATTEMPT: u8 = 0;
pub(crate) const PLAY_START: u8 = 1;
pub(crate) const START_FAILURE: u8 = 2;
pub(crate) const HEARTBEAT: u8 = 3;
pub(crate) const REBUFFER: u8 = 4;
pub(crate) const BITRATE_CHANGE: u8 = 5;
pub(crate) const PAUSE: u8 = 6;
pub(crate) const RESUME: u8 = 7;
pub(crate) const PLAY_ERROR: u8 = 8;
pub(crate) const PLAY_STOP: u8 = 9;
pub(crate) const EVENT_TYPES: [&str; 10] = [
    "play_attempt", "play_start", "start_failure", "heartbeat", "rebuffer",
    "bitrate_change", "pause", "resume", "play_error", "play_stop",
];
pub(crate) const UNKNOWN_TYPE: u8 = 255;
const PER_INSTANCE: u8 = 254; // the class has no `event_type`, each object has its own

fn kind_named(name: &str) -> u8 {
    EVENT_TYPES.iter().position(|t| *t == name).map_or(UNKNOWN_TYPE, |i| i as u8)
}

/// The event type of each class of event seen, by the class's address.
#[derive(Default)]
pub(crate) struct EventKinds {
    by_class: HashMap<usize, (Py<PyAny>, u8)>,
}

impl EventKinds {
    pub(crate) fn kind_of(&mut self, event: &Bound<'_, PyAny>) -> PyResult<u8> {
        // A decoded event's type is its class's (schemas/decoder.py: a class per event type), so it is
        // looked up once per class; an object whose `event_type` is its own (tests' stand-ins) is read each time.
        let class = event.get_type();
        let address = class.as_ptr() as usize;
        match self.by_class.get(&address) {
            Some((_, PER_INSTANCE)) => {}
            Some((_, kind)) => return Ok(*kind),
            None => {
                let on_class = class.getattr(intern!(event.py(), "event_type")).ok();
                let kind = match on_class {
                    Some(name) => kind_named(&name.extract::<String>()?),
                    None => PER_INSTANCE,
                };
                // The class is held, so its address cannot be reused by another while it is in the map.
                self.by_class.insert(address, (class.into_any().unbind(), kind));
                if kind != PER_INSTANCE {
                    return Ok(kind);
                }
            }
        }
        Ok(kind_named(&event.getattr(intern!(event.py(), "event_type"))?.extract::<String>()?))
    }
}
