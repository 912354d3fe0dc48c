//! Interned text for the aggregates that buffer rows per group (channels, items, values):
//! a group keeps a `u32` per row instead of a `String`, and the text is stored once.

use datafusion::common::HashMap;

/// Text values numbered in the order they are first seen.
#[derive(Debug, Default, Clone)]
pub struct Interner {
    names: Vec<String>,
    index: HashMap<Box<str>, u32>,
    /// The number given last: runs of one value skip the hash.
    last: Option<u32>,
    /// Bytes held, roughly, kept as names are added.
    bytes: usize,
}

impl Interner {
    /// The number of `s`, giving it the next one if it is new.
    pub fn id(&mut self, s: &str) -> u32 {
        if let Some(l) = self.last
            && self.names[l as usize] == s
        {
            return l;
        }
        let i = match self.index.get(s) {
            Some(&i) => i,
            None => {
                let i = self.names.len() as u32;
                self.names.push(s.to_string());
                self.index.insert(s.into(), i);
                self.bytes += 2 * s.len() + 64;
                i
            }
        };
        self.last = Some(i);
        i
    }

    /// The text of number `id` (from [`Interner::id`]).
    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    /// Bytes held, roughly.
    pub fn size(&self) -> usize {
        self.bytes
    }
}
