//! One log of rows for all the groups of a grouped aggregate, in arrival order, grouped
//! when emitted. A vector per group was an allocation (and several reallocations) per
//! group, and with hundreds of thousands of persons its pages were faulted in a few groups
//! at a time; one log grows by doubling and is grouped by a counting sort, O(rows).
//!
//! The log notes each row's group as runs (a group and how many rows in a row belong to
//! it): a lake laid out by person delivers a person's rows together, so a run holds dozens
//! of rows, and grouping moves whole runs instead of scattering rows one by one.

use datafusion::logical_expr::EmitTo;

/// Rows of type `T`, each tagged with its group.
#[derive(Debug)]
pub struct GroupLog<T> {
    rows: Vec<T>,
    /// `(group, rows)`: the next `rows` rows of the log belong to `group`.
    runs: Vec<(u32, u32)>,
    /// The number of groups so far (the highest group index seen + 1, or more).
    len: usize,
}

impl<T> Default for GroupLog<T> {
    fn default() -> Self {
        GroupLog {
            rows: vec![],
            runs: vec![],
            len: 0,
        }
    }
}

/// The rows of some groups, ordered by group: group `g`'s rows are
/// `rows[offsets[g]..offsets[g + 1]]`, in arrival order.
#[derive(Debug)]
pub struct Grouped<T> {
    pub rows: Vec<T>,
    pub offsets: Vec<usize>,
}

impl<T> Grouped<T> {
    /// The number of groups.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether there are no groups.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Group `g`'s rows.
    pub fn group(&self, g: usize) -> &[T] {
        &self.rows[self.offsets[g]..self.offsets[g + 1]]
    }

    /// Group `g`'s rows, mutable (to sort them).
    pub fn group_mut(&mut self, g: usize) -> &mut [T] {
        &mut self.rows[self.offsets[g]..self.offsets[g + 1]]
    }

    /// The number of rows of each group.
    pub fn lengths(&self) -> impl Iterator<Item = usize> + '_ {
        self.offsets.windows(2).map(|w| w[1] - w[0])
    }
}

impl<T: Default> GroupLog<T> {
    /// Make room for `n` groups (DataFusion's `total_num_groups`).
    pub fn resize(&mut self, n: usize) {
        self.len = self.len.max(n);
    }

    /// Make room for `n` more rows.
    pub fn reserve(&mut self, n: usize) {
        self.rows.reserve(n);
    }

    /// Add a row to group `g`.
    pub fn push(&mut self, g: usize, row: T) {
        self.rows.push(row);
        let g = g as u32;
        match self.runs.last_mut() {
            Some((last, n)) if *last == g && *n < u32::MAX => *n += 1,
            _ => self.runs.push((g, 1)),
        }
    }

    /// Every row, in arrival order.
    pub fn rows(&self) -> &[T] {
        &self.rows
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Take the groups `emit_to` names with their rows, grouped; the groups left are
    /// renumbered from 0 (as DataFusion does after `EmitTo::First`).
    pub fn take(&mut self, emit_to: EmitTo) -> Grouped<T> {
        let n = match emit_to {
            EmitTo::All => self.len,
            EmitTo::First(k) => k.min(self.len),
        };
        let (mut rows, runs) = match emit_to {
            EmitTo::All => (
                std::mem::take(&mut self.rows),
                std::mem::take(&mut self.runs),
            ),
            EmitTo::First(_) => {
                let (mut out, mut out_runs) = (vec![], vec![]);
                let (mut keep, mut keep_runs) = (vec![], vec![]);
                let mut rows = std::mem::take(&mut self.rows).into_iter();
                for (g, len) in std::mem::take(&mut self.runs) {
                    let run = rows.by_ref().take(len as usize);
                    if (g as usize) < n {
                        out.extend(run);
                        out_runs.push((g, len));
                    } else {
                        keep.extend(run);
                        keep_runs.push((g - n as u32, len));
                    }
                }
                self.rows = keep;
                self.runs = keep_runs;
                (out, out_runs)
            }
        };
        self.len -= n;
        let mut offsets = vec![0usize; n + 1];
        for &(g, len) in &runs {
            offsets[g as usize + 1] += len as usize;
        }
        for g in 0..n {
            offsets[g + 1] += offsets[g];
        }
        // Runs of distinct groups in ascending order: the rows are grouped already.
        if runs.windows(2).all(|w| w[0].0 < w[1].0) {
            return Grouped { rows, offsets };
        }
        let mut next = offsets[..n].to_vec();
        // Every slot is written once below.
        let mut sorted: Vec<T> = std::iter::repeat_with(T::default)
            .take(rows.len())
            .collect();
        let mut from = 0;
        for (g, len) in runs {
            let (len, at) = (len as usize, &mut next[g as usize]);
            sorted[*at..*at + len].swap_with_slice(&mut rows[from..from + len]);
            *at += len;
            from += len;
        }
        Grouped {
            rows: sorted,
            offsets,
        }
    }

    /// The bytes held.
    pub fn size(&self) -> usize {
        self.rows.capacity() * std::mem::size_of::<T>() + self.runs.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_rows_in_arrival_order_and_renumbers_the_rest() {
        let mut log = GroupLog::default();
        log.resize(4);
        for (g, r) in [(2, 'a'), (0, 'b'), (3, 'c'), (2, 'd'), (0, 'e')] {
            log.push(g, r);
        }
        let first = log.take(EmitTo::First(2));
        assert_eq!(first.len(), 2);
        assert_eq!(first.group(0), &['b', 'e']);
        assert_eq!(first.group(1), &[] as &[char]);
        let rest = log.take(EmitTo::All);
        assert_eq!(rest.len(), 2);
        assert_eq!(rest.group(0), &['a', 'd']);
        assert_eq!(rest.group(1), &['c']);
        assert!(log.is_empty());
    }

    /// Runs of one group split by others, and runs already in group order: the rows come
    /// out grouped, in arrival order within each group, either way.
    #[test]
    fn groups_runs_in_and_out_of_order() {
        let mut log = GroupLog::default();
        log.resize(3);
        for (g, r) in [(0, 1), (0, 2), (1, 3), (0, 4), (2, 5), (2, 6), (1, 7)] {
            log.push(g, r);
        }
        let out = log.take(EmitTo::All);
        assert_eq!(out.rows, vec![1, 2, 4, 3, 7, 5, 6]);
        assert_eq!(out.offsets, vec![0, 3, 5, 7]);

        log.resize(3);
        for (g, r) in [(0, 1), (0, 2), (2, 3), (2, 4)] {
            log.push(g, r);
        }
        let out = log.take(EmitTo::All);
        assert_eq!(out.rows, vec![1, 2, 3, 4]);
        assert_eq!(out.offsets, vec![0, 2, 2, 4]);
    }
}
