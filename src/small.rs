//! [`Small`]: a few values, inline when there are few enough.
//!
//! Per request the layers keep one value per limit or per budget (costs,
//! deltas, hashes); there are nearly always one to four. An inline array
//! covers those without an allocation, a `Vec` the rest. The public
//! `LimitStates` and `BudgetStatuses` are this, with a type of their own
//! ([`small_newtype!`]).

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

/// The public face of a newtype `$name(Small<$item, N>)`: `new` (empty,
/// its inline room filled with `$filler`), `push`, `Default`, the slice
/// (`Deref`, `DerefMut`, `&$name: IntoIterator`), `FromIterator`,
/// `From<Vec>`, equality of the values (inline or not) and `Debug` as a
/// list. The type and its docs stay where it belongs.
macro_rules! small_newtype {
    ($name:ident, $item:ty, $filler:expr) => {
        impl $name {
            /// None yet.
            pub fn new() -> Self {
                $name($crate::small::Small::filled(0, $filler))
            }

            /// Appends one.
            pub fn push(&mut self, value: $item) {
                self.0.push(value);
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name::new()
            }
        }

        impl std::ops::Deref for $name {
            type Target = [$item];

            fn deref(&self) -> &[$item] {
                &self.0
            }
        }

        impl std::ops::DerefMut for $name {
            fn deref_mut(&mut self) -> &mut [$item] {
                &mut self.0
            }
        }

        impl<'a> IntoIterator for &'a $name {
            type Item = &'a $item;
            type IntoIter = std::slice::Iter<'a, $item>;

            fn into_iter(self) -> Self::IntoIter {
                self.iter()
            }
        }

        impl FromIterator<$item> for $name {
            fn from_iter<I: IntoIterator<Item = $item>>(iter: I) -> Self {
                let mut all = $name::new();
                for value in iter {
                    all.push(value);
                }
                all
            }
        }

        impl From<Vec<$item>> for $name {
            fn from(values: Vec<$item>) -> Self {
                $name($crate::small::Small::Heap(values))
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                **self == **other
            }
        }

        impl Eq for $name {}

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_list().entries(self.iter()).finish()
            }
        }
    };
}

pub(crate) use small_newtype;

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
