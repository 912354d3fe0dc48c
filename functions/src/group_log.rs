//! One log of rows for all the groups of a grouped aggregate, in arrival order, grouped
//! when emitted. A vector per group was an allocation (and several reallocations) per
//! group, and with hundreds of thousands of persons its pages were faulted in a few groups
//! at a time; one log grows by doubling and is grouped by a counting sort, O(rows).

use datafusion::logical_expr::EmitTo;

/// Rows of type `T`, each tagged with its group.
#[derive(Debug)]
pub struct GroupLog<T> {
    rows: Vec<T>,
    groups: Vec<u32>,
    /// The number of groups so far (the highest group index seen + 1, or more).
    len: usize,
}

impl<T> Default for GroupLog<T> {
    fn default() -> Self {
        GroupLog {
            rows: vec![],
            groups: vec![],
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
        self.groups.reserve(n);
    }

    /// Add a row to group `g`.
    pub fn push(&mut self, g: usize, row: T) {
        self.rows.push(row);
        self.groups.push(g as u32);
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
        let (rows, groups) = match emit_to {
            EmitTo::All => (
                std::mem::take(&mut self.rows),
                std::mem::take(&mut self.groups),
            ),
            EmitTo::First(_) => {
                let (mut out, mut out_groups) = (vec![], vec![]);
                let (mut keep, mut keep_groups) = (vec![], vec![]);
                let rows = std::mem::take(&mut self.rows);
                let groups = std::mem::take(&mut self.groups);
                for (r, g) in rows.into_iter().zip(groups) {
                    if (g as usize) < n {
                        out.push(r);
                        out_groups.push(g);
                    } else {
                        keep.push(r);
                        keep_groups.push(g - n as u32);
                    }
                }
                self.rows = keep;
                self.groups = keep_groups;
                (out, out_groups)
            }
        };
        self.len -= n;
        let mut offsets = vec![0usize; n + 1];
        for &g in &groups {
            offsets[g as usize + 1] += 1;
        }
        for g in 0..n {
            offsets[g + 1] += offsets[g];
        }
        let mut next = offsets[..n].to_vec();
        // Every slot is written once below.
        let mut sorted: Vec<T> = std::iter::repeat_with(T::default)
            .take(rows.len())
            .collect();
        for (r, g) in rows.into_iter().zip(groups) {
            let at = &mut next[g as usize];
            sorted[*at] = r;
            *at += 1;
        }
        Grouped {
            rows: sorted,
            offsets,
        }
    }

    /// The bytes held.
    pub fn size(&self) -> usize {
        self.rows.capacity() * std::mem::size_of::<T>() + self.groups.capacity() * 4
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
}
