//! The duplicate-id memory: the event ids seen, per coarse window, in open-addressing tables laid out
//! slot for slot as flows/fold/event_ids.py's (so a snapshot of one is restored by the other), and
//! forgotten a window at a time once no event of the window can still be counted.

use xxhash_rust::xxh3::xxh3_64;

const MIN_SLOTS: usize = 1024;

/// What an event id is remembered by, as event_ids.py hashes it: never 0, which marks a free slot.
pub(crate) fn event_id_hash(event_id: &str) -> u64 {
    (xxh3_64(event_id.as_bytes()) >> 1) | 1
}

/// One coarse window's ids.
pub(crate) struct IdTable {
    pub(crate) slots: Vec<u64>,
    pub(crate) mask: u64,
    pub(crate) count: u64,
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

#[derive(Default)]
pub(crate) struct EventIds {
    /// (coarse window start, its ids), in the order the windows were first seen (forgetting depends on it).
    pub(crate) tables: Vec<(i64, IdTable)>,
    /// The size of the last window forgotten, decaying: a new window's table starts about that big.
    pub(crate) last_count: u64,
}

impl EventIds {
    /// True the first time `h` (an `event_id_hash`) is seen in the coarse window starting at `window`.
    pub(crate) fn first_time(&mut self, window: i64, h: u64) -> bool {
        self.table(window).first_time(h)
    }

    fn table(&mut self, window: i64) -> &mut IdTable {
        if let Some(i) = self.tables.iter().position(|(start, _)| *start == window) {
            return &mut self.tables[i].1;
        }
        // Windows of a steady stream hold about as many ids as the one before: start there.
        let mut slots = MIN_SLOTS;
        while (slots as u64) < 2 * self.last_count {
            slots *= 2;
        }
        self.tables.push((window, IdTable::new(slots)));
        &mut self.tables.last_mut().unwrap().1
    }

    /// Drop the tables of the windows starting at or before `horizon`.
    pub(crate) fn forget(&mut self, horizon: i64) {
        let mut i = 0;
        while i < self.tables.len() {
            if self.tables[i].0 <= horizon {
                let (_, table) = self.tables.remove(i);
                self.last_count = (self.last_count / 2).max(table.count);
            } else {
                i += 1;
            }
        }
    }

    /// Ids held.
    pub(crate) fn remembered(&self) -> u64 {
        self.tables.iter().map(|(_, t)| t.count).sum()
    }
}
