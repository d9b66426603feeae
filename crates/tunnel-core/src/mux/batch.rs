//! Frames waiting for the tunnel, written with one vectored write.

use super::*;

/// Frames waiting for the tunnel, as a list of buffers written with one vectored write.
#[derive(Default)]
pub(super) struct OutBatch {
    parts: VecDeque<Bytes>,
    len: usize,
}

impl OutBatch {
    pub(super) fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.parts.push_back(b);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first buffers (as many as fit in `out`); returns how many.
    pub(super) fn slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, part) in out.iter_mut().zip(&self.parts) {
            *slot = IoSlice::new(part);
            n += 1;
        }
        n
    }

    /// Drops the first `n` bytes (written).
    pub(super) fn advance(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(front) = self.parts.front_mut() else {
                break;
            };
            if front.len() <= n {
                n -= front.len();
                self.parts.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}
