//! Chunk buffers reused across the chunks of one backup or restore.
//!
//! Without reuse, every chunk allocates and frees a buffer of several MiB on
//! one of tokio's blocking threads. glibc serves such allocations from
//! per-thread arenas once the first one is freed, and keeps the freed
//! memory in each arena, so the agent's resident memory grew to about three
//! times the buffers in use (measured with `backstop-bench`).

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError};

/// A stack of free buffers.
#[derive(Debug)]
pub(crate) struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    /// Maximum number of free buffers kept. Buffers returned beyond it are
    /// freed.
    max_free: usize,
}

impl BufferPool {
    pub(crate) fn new(max_free: usize) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(Vec::with_capacity(max_free)),
            max_free,
        })
    }

    /// Returns a buffer of `len` bytes. Its content is unspecified: the
    /// caller overwrites all of it.
    pub(crate) fn take(self: &Arc<Self>, len: usize) -> PooledBuffer {
        let reused = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut data = reused.unwrap_or_default();
        data.resize(len, 0);
        PooledBuffer {
            data,
            pool: Arc::clone(self),
        }
    }
}

/// A buffer that goes back to its pool when dropped.
#[derive(Debug)]
pub(crate) struct PooledBuffer {
    data: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl Deref for PooledBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.data
    }
}

impl DerefMut for PooledBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

impl AsRef<[u8]> for PooledBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl AsMut<[u8]> for PooledBuffer {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        let mut free = self
            .pool
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if free.len() < self.pool.max_free {
            free.push(data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_buffer_is_reused() {
        let pool = BufferPool::new(2);
        let first = pool.take(1024);
        let address = first.as_ptr();
        drop(first);

        let second = pool.take(512);

        assert_eq!(second.as_ptr(), address);
        assert_eq!(second.len(), 512);
    }

    #[test]
    fn pool_keeps_at_most_max_free() {
        let pool = BufferPool::new(1);
        let buffers: Vec<PooledBuffer> = (0..3).map(|_| pool.take(16)).collect();

        drop(buffers);

        assert_eq!(pool.free.lock().unwrap().len(), 1);
    }
}
