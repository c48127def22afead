//! [`Small`]: a few values, inline when there are few enough.
//!
//! Per request the layers keep one value per limit or per budget (costs,
//! deltas, hashes); there are nearly always one to four. An inline array
//! covers those without an allocation, a `Vec` the rest. The public
//! `LimitStates` and `BudgetStatuses` are this, with a type of their own.

use std::ops::{Deref, DerefMut};

/// `len` values of `T`, inline up to `N`, on the heap beyond.
#[derive(Clone)]
pub(crate) enum Small<T, const N: usize> {
    Inline([T; N], usize),
    Heap(Vec<T>),
}

impl<T: Copy + Default, const N: usize> Small<T, N> {
    /// `len` default values.
    pub(crate) fn new(len: usize) -> Self {
        Small::filled(len, T::default())
    }
}

impl<T: Copy, const N: usize> Small<T, N> {
    /// `len` copies of `value` (for types without a default, such as
    /// borrowed views the caller then fills in).
    pub(crate) fn filled(len: usize, value: T) -> Self {
        if len <= N {
            Small::Inline([value; N], len)
        } else {
            Small::Heap(vec![value; len])
        }
    }

    /// Appends `value`: inline while there is room, then on the heap.
    pub(crate) fn push(&mut self, value: T) {
        let spilled = match self {
            Small::Inline(buf, len) if *len < N => {
                buf[*len] = value;
                *len += 1;
                return;
            }
            Small::Inline(buf, len) => {
                let mut all = Vec::with_capacity(2 * N + 1);
                all.extend_from_slice(&buf[..*len]);
                all.push(value);
                all
            }
            Small::Heap(all) => return all.push(value),
        };
        *self = Small::Heap(spilled);
    }
}

impl<T, const N: usize> Deref for Small<T, N> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Small::Inline(buf, len) => &buf[..*len],
            Small::Heap(v) => v,
        }
    }
}

impl<T, const N: usize> DerefMut for Small<T, N> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            Small::Inline(buf, len) => &mut buf[..*len],
            Small::Heap(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Small;

    #[test]
    fn inline_up_to_n_then_on_the_heap() {
        for len in [0, 1, 4, 5, 9] {
            let mut small = Small::<u64, 4>::new(len);
            assert_eq!(matches!(small, Small::Inline(..)), len <= 4);
            for (i, v) in small.iter_mut().enumerate() {
                *v = i as u64;
            }
            assert_eq!(&small[..], &(0..len as u64).collect::<Vec<_>>()[..]);
        }
    }

    #[test]
    fn pushes_stay_inline_up_to_n_then_spill_in_order() {
        let mut small = Small::<u64, 2>::new(0);
        for n in 0..5 {
            small.push(n);
            assert_eq!(matches!(small, Small::Inline(..)), n < 2);
            assert_eq!(&small[..], &(0..=n).collect::<Vec<_>>()[..]);
        }
    }
}
