//! An allocator wrapper for tests that must show a decoder allocates within its limit: installed
//! as a test binary's global allocator, it tracks the bytes live and their peak on the current
//! thread while a probe runs (other threads, e.g. parallel tests, are not counted).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static PROBING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, counting this thread's bytes while [`peak_during`] runs.
pub struct PeakAlloc;

fn note_alloc(size: usize) {
    let _ = PROBING.try_with(|probing| {
        if probing.get() {
            let live = LIVE.with(|l| {
                let now = l.get().saturating_add(size);
                l.set(now);
                now
            });
            PEAK.with(|p| p.set(p.get().max(live)));
        }
    });
}

fn note_free(size: usize) {
    let _ = PROBING.try_with(|probing| {
        if probing.get() {
            LIVE.with(|l| l.set(l.get().saturating_sub(size)));
        }
    });
}

// SAFETY: every call is passed to the system allocator unchanged; the bookkeeping touches only
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_free(layout.size());
        note_alloc(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `work` and answers its result with the most bytes it had allocated at once on this
/// thread (0 unless [`PeakAlloc`] is the global allocator).
pub fn peak_during<T>(work: impl FnOnce() -> T) -> (T, usize) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    PROBING.with(|p| p.set(true));
    let out = work();
    PROBING.with(|p| p.set(false));
    (out, PEAK.with(Cell::get))
}
