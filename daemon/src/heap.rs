//! The C allocator's share of the anonymous memory (glibc's malloc, which Rust's `System`
//! allocator uses): how many arenas it keeps, and handing freed pages back after a model load.
//!
//! glibc gives a thread that finds the main arena locked an arena of its own, up to eight per
//! core, each a 64 MiB reservation whose freed pages stay resident until the arena's top is
//! trimmed. sotad's engines run on a dozen threads (stages, pools, rayon), and loading a model
//! frees large temporaries (weights decoded to `f32` before they are re-laid out): without a
//! bound and a trim, tens of MiB of freed memory stay counted in `RssAnon`
//! (docs/benchmarks.md, "Memory").

/// Arenas sotad allows when `MALLOC_ARENA_MAX` is not set: the main one and one other, so
/// that two threads allocating at once do not wait on each other (two cores on the smallest
/// boards).
pub const ARENAS: i32 = 2;

/// Bounds glibc's arenas to [`ARENAS`] unless `MALLOC_ARENA_MAX` is set (glibc then reads it
/// itself). Call it first thing in `main`, before any thread starts.
pub fn bound_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes the allocator's tuning; called before other threads.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        }
    }
}

/// Returns the free pages of every arena to the kernel (glibc's `malloc_trim`). Cheap next to
/// a model load (a walk over the free lists); call it after one.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and only releases memory that is free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Where [`spill_weights`] puts the weights the engines compute at load: `$SOTAD_CACHE_DIR`
/// (empty: nowhere, they stay on the heap), else systemd's `$CACHE_DIRECTORY`
/// (`CacheDirectory=sotad` in the unit), else `$XDG_CACHE_HOME/sotad`, else
/// `~/.cache/sotad`.
pub fn weights_dir() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(v) = std::env::var_os("SOTAD_CACHE_DIR") {
        return (!v.is_empty()).then(|| PathBuf::from(v));
    }
    if let Some(v) = var("CACHE_DIRECTORY") {
        // systemd may list several, separated by ':'.
        let first = v
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_owned();
        return Some(PathBuf::from(first));
    }
    if let Some(v) = var("XDG_CACHE_HOME") {
        return Some(PathBuf::from(v).join("sotad"));
    }
    var("HOME").map(|h| PathBuf::from(h).join(".cache").join("sotad"))
}

/// Makes the engines keep the weights they compute at load (Whisper's transposed and Q8_0
/// matrices, Piper's re-laid-out convolutions) in an unlinked file under [`weights_dir`],
/// memory-mapped: file-backed pages the kernel can drop and read back, instead of anonymous
/// memory. Returns a warning when that is not possible (the weights then stay on the heap).
pub fn spill_weights() -> Option<String> {
    let dir = weights_dir()?;
    sotad_engines::mapped::spill_to(&dir).err().map(|e| {
        format!("weights computed at load stay in anonymous memory: {e} (SOTAD_CACHE_DIR names another directory)")
    })
}
