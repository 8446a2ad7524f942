//! A counting global allocator: live heap bytes, split by "server thread" (the one-off ping
//! server's, tagged with `ON_SERVER`) and "everything else" (the pool, the bench): the scale
//! run's heap growth per idle connection.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

struct Counting;

/// Live bytes allocated by threads other than the server's (the pool, the bench).
pub(crate) static POOL_BYTES: AtomicIsize = AtomicIsize::new(0);
/// Live bytes allocated on the ping server's thread.
static SERVER_BYTES: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    pub(crate) static ON_SERVER: Cell<bool> = const { Cell::new(false) };
}

fn counter() -> &'static AtomicIsize {
    if ON_SERVER.try_with(Cell::get).unwrap_or(false) {
        &SERVER_BYTES
    } else {
        &POOL_BYTES
    }
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            counter().fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            counter().fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        counter().fetch_sub(layout.size() as isize, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            counter().fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;
