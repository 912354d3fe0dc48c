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
//!
//! Transparent huge pages are off for the process unless `transparent_huge_pages` is set.
//! mimalloc asks for them (`madvise(MADV_HUGEPAGE)` on its arenas), and on a kernel whose
//! THP mode is `madvise` every fault in those arenas then zeroes a 2 MiB page. With the
//! churn of Arrow and Parquet buffers that was measured at 3,470 faults (about 7 GiB
//! zeroed) for an ingest whose peak was 540 MB: 5–6 s of kernel time, against 0.6 s with
//! 4 KiB pages, and a 1M-row CSV ingest took 7.6–9.0 s instead of 5.1 s.

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

/// Let the kernel back this process's memory with transparent huge pages, or not
/// (`prctl(PR_SET_THP_DISABLE)`; Linux only, a no-op elsewhere). Applies to memory
/// faulted in from now on.
pub fn allow_transparent_huge_pages(allow: bool) {
    #[cfg(target_os = "linux")]
    {
        let disable: libc::c_ulong = if allow { 0 } else { 1 };
        // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process's memory map; the
        // unused arguments are zero as prctl(2) requires.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, disable, 0, 0, 0) };
        if rc != 0 {
            tracing::debug!(
                "prctl(PR_SET_THP_DISABLE) failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = allow;
}
