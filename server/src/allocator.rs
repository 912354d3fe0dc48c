//! The process's memory allocator: mimalloc, and how long it keeps freed memory.
//!
//! mimalloc rather than glibc's allocator: Arrow and Parquet allocate and free large
//! buffers per batch, which glibc returns to the kernel and faults in again (page faults
//! and `malloc_consolidate` were 15% of an ingest profile).
//!
//! Freed memory goes back to the kernel after a delay (`memory_release_ms`). Getting it
//! back costs a page fault and the kernel zeroing the page, and much more in a virtual
//! machine that reports free pages to its host (virtio-balloon free page reporting, as in
//! Firecracker and most cloud VMs): there every page handed back is allocated by the host
//! again, about 2 s per GiB on the 2-core machines this is benchmarked on. mimalloc's own
//! default is 1 s; Touchlake keeps freed memory for a minute, so that a burst of queries
//! or an identity run after an ingest reuses the memory of the one before, and an idle
//! server still shrinks. (10 s was tried: a 20-second identity run then gave back memory
//! it freed early and faulted it in again later.)

/// `memory_release_ms` when the configuration does not say.
pub const DEFAULT_RELEASE_MS: i64 = 60_000;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (the version `libmimalloc-sys`
/// builds by default; its own Rust constants follow v2's numbering, which has no purge
/// delay).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

unsafe extern "C" {
    /// mimalloc's `void mi_option_set(mi_option_t option, long value)`.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Keep freed memory for `ms` milliseconds before returning it to the kernel (`-1`:
/// never; `0`: at once).
pub fn set_release_delay(ms: i64) {
    let ms = ms.max(-1) as std::ffi::c_long;
    // SAFETY: mi_option_set only stores the value in mimalloc's option table (an atomic
    // store); the option index is mimalloc v3's `mi_option_purge_delay`, which the
    // allocator reads each time it schedules a purge.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, ms) };
}
