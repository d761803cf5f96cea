//! The bytes of a model file: memory-mapped from disk, or owned in memory (tests, fuzzing).
//!
//! Every model reader (GGUF, CTranslate2, ONNX, and through them Whisper's GGUF and
//! safetensors files and Silero's ONNX) keeps its file in a [`Backing`], so that weights are
//! viewed in place and never copied, so that the one `unsafe` memory map lives here, and so
//! that every model file that cannot be mapped gets the same error: the path, the step and
//! the cause.
//!
//! A mapped file must not change while it is mapped: a file truncated under the mapping
//! (what an in-place `cp` does first) makes the next read of a page past its new end raise
//! SIGBUS, and a file rewritten in place changes the weights under the model (`MAP_PRIVATE`
//! copies only pages the process writes). Replacing a file by renaming a new one into place
//! is safe: the mapping keeps the old inode. So every mapping is registered here, with the
//! file's identity when it was mapped, for two uses:
//! - [`check_under`]: before a job, the caller (the daemon) compares each file under a path
//!   with what was mapped (a `stat`, no I/O policy) and refuses the job when one changed in
//!   place, naming the file;
//! - [`file_at`]: a SIGBUS handler (the daemon's) finds which file a faulting address belongs
//!   to, to say so before the process exits. It is async-signal-safe: atomics only.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use memmap2::Mmap;

use crate::error::{Error, Result};

pub(crate) enum Backing {
    Mmap(Mapped),
    Owned(Vec<u8>),
}

/// A mapped file, registered while it lives.
pub(crate) struct Mapped {
    mmap: Mmap,
    /// The slot in [`SLOTS`] holding this mapping's range, if one was free.
    slot: Option<usize>,
    /// The path as bytes, which the slot points into (kept alive as long as the slot).
    _name: Box<[u8]>,
    /// The entry's key in [`FILES`].
    key: usize,
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            // The range first, so that the handler never reads a freed name.
            SLOTS[i].start.store(0, Ordering::SeqCst);
            SLOTS[i].len.store(0, Ordering::SeqCst);
            SLOTS[i].name.store(std::ptr::null_mut(), Ordering::SeqCst);
            SLOTS[i].name_len.store(0, Ordering::SeqCst);
            SLOTS[i].busy.store(0, Ordering::SeqCst);
        }
        if let Ok(mut files) = FILES.lock() {
            files.retain(|f| f.key != self.key);
        }
    }
}

/// One mapped range for the signal handler: start address, length, path bytes.
struct Slot {
    /// 0: free; 1: taken (set before the fields, cleared after them).
    busy: AtomicUsize,
    start: AtomicUsize,
    len: AtomicUsize,
    name: AtomicPtr<u8>,
    name_len: AtomicUsize,
}

/// Mapped files a process keeps at once (each model is one to three files); a mapping beyond
/// them works, but a SIGBUS in it is not attributed.
const SLOT_COUNT: usize = 64;

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    busy: AtomicUsize::new(0),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    name: AtomicPtr::new(std::ptr::null_mut()),
    name_len: AtomicUsize::new(0),
};

static SLOTS: [Slot; SLOT_COUNT] = [FREE; SLOT_COUNT];

/// A mapped file as it was when mapped.
#[derive(Debug, Clone)]
struct Registered {
    key: usize,
    path: PathBuf,
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

static FILES: Mutex<Vec<Registered>> = Mutex::new(Vec::new());
static NEXT_KEY: AtomicUsize = AtomicUsize::new(1);

/// A mapped file that is no longer what was mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// The file as it was opened.
    pub path: PathBuf,
    /// What happened to it.
    pub kind: ChangeKind,
}

/// How a mapped file changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// Truncated or rewritten in place (same inode, another size or modification time):
    /// reading the mapping may raise SIGBUS or see other weights. The model must not be used.
    InPlace {
        /// Size when mapped.
        was: u64,
        /// Size now.
        now: u64,
    },
    /// Another file was renamed into place, or the file was deleted: the mapping still holds
    /// the old file, which stays intact; only a reload would see the new one.
    Replaced,
}

impl ChangeKind {
    /// Whether the mapped model can no longer be trusted.
    pub fn is_unsafe(&self) -> bool {
        matches!(self, ChangeKind::InPlace { .. })
    }
}

impl std::fmt::Display for FileChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            ChangeKind::InPlace { was, now } => write!(
                f,
                "model file {:?} was changed in place while mapped ({was} bytes when loaded, {now} now): truncated or overwritten, not replaced by renaming a new file into place",
                self.path
            ),
            ChangeKind::Replaced => write!(
                f,
                "model file {:?} was replaced or deleted since it was loaded; the loaded copy stays in use until a restart",
                self.path
            ),
        }
    }
}

/// Compares every mapped file whose path is `path` or lies under it (a model directory) with
/// what was mapped; one `stat` per file.
pub fn check_under(path: &Path) -> Vec<FileChange> {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let files: Vec<Registered> = match FILES.lock() {
        Ok(f) => f
            .iter()
            .filter(|r| r.path.starts_with(&path))
            .cloned()
            .collect(),
        Err(_) => return Vec::new(),
    };
    let mut changes = Vec::new();
    for r in files {
        let kind = match std::fs::metadata(&r.path) {
            Ok(m) if m.dev() == r.dev && m.ino() == r.ino => {
                if m.len() == r.len && (m.mtime(), m.mtime_nsec()) == r.mtime {
                    continue;
                }
                ChangeKind::InPlace {
                    was: r.len,
                    now: m.len(),
                }
            }
            _ => ChangeKind::Replaced,
        };
        changes.push(FileChange { path: r.path, kind });
    }
    changes
}

/// The mapped model file holding `addr`, and the offset of `addr` in it: the path's bytes
/// (valid while the mapping lives). Async-signal-safe: only atomic loads, no allocation, no
/// lock, so a SIGBUS handler may call it.
pub fn file_at(addr: usize) -> Option<(&'static [u8], usize)> {
    for slot in &SLOTS {
        if slot.busy.load(Ordering::SeqCst) == 0 {
            continue;
        }
        let start = slot.start.load(Ordering::SeqCst);
        let len = slot.len.load(Ordering::SeqCst);
        if start == 0 || addr < start || addr - start >= len {
            continue;
        }
        let name = slot.name.load(Ordering::SeqCst);
        let name_len = slot.name_len.load(Ordering::SeqCst);
        if name.is_null() {
            return None;
        }
        // SAFETY: the pointer and length were stored from the `Mapped`'s boxed path, which
        // lives as long as the mapping; the slot is cleared before either is freed, and a
        // fault in the mapping means the mapping is alive.
        let name = unsafe { std::slice::from_raw_parts(name, name_len) };
        return Some((name, addr - start));
    }
    None
}

impl Backing {
    /// Opens and memory-maps `path` read-only; errors name the path and the step that failed.
    pub(crate) fn map(path: &Path) -> Result<Backing> {
        let io_err = |action, source| Error::Io {
            action,
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(|e| io_err("open", e))?;
        // Linux opens a directory without complaint and then refuses to map it with ENODEV
        // ("No such device"), which says nothing useful.
        let meta = file.metadata().map_err(|e| io_err("inspect", e))?;
        if meta.is_dir() {
            return Err(io_err(
                "memory-map",
                std::io::Error::new(
                    std::io::ErrorKind::IsADirectory,
                    "is a directory, not a model file",
                ),
            ));
        }
        // SAFETY: the mapping is read-only and only ever viewed as `&[u8]`. Undefined
        // behaviour would require another process to truncate or rewrite the file while it
        // is mapped. Models are replaced by renaming a new file into place (README), which
        // leaves existing mappings intact; a file changed in place anyway is caught by
        // `check_under` before a job, or by the daemon's SIGBUS handler (`file_at`), which
        // names the file before the process exits.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| io_err("memory-map", e))?;
        Ok(Backing::Mmap(register(mmap, path, &meta)))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => &m.mmap,
            Backing::Owned(v) => v,
        }
    }
}

fn register(mmap: Mmap, path: &Path, meta: &std::fs::Metadata) -> Mapped {
    let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut name: Box<[u8]> = abs.as_os_str().as_encoded_bytes().into();
    if let Ok(mut files) = FILES.lock() {
        files.push(Registered {
            key,
            path: abs,
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        });
    }
    let mut slot = None;
    if !mmap.is_empty() {
        for (i, s) in SLOTS.iter().enumerate() {
            if s.busy
                .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                s.name.store(name.as_mut_ptr(), Ordering::SeqCst);
                s.name_len.store(name.len(), Ordering::SeqCst);
                s.len.store(mmap.len(), Ordering::SeqCst);
                s.start.store(mmap.as_ptr() as usize, Ordering::SeqCst);
                slot = Some(i);
                break;
            }
        }
    }
    Mapped {
        mmap,
        slot,
        _name: name,
        key,
    }
}

// ----- weights made at load, kept file-backed ------------------------------------------------

/// Element types a [`Frozen`] buffer holds: plain numbers, any bit pattern valid.
pub trait Plain: Copy + Send + Sync + std::fmt::Debug + 'static {}
impl Plain for f32 {}
impl Plain for u8 {}

/// Weights an engine computes at load (re-laid out, transposed, quantized, converted from
/// f16), read-only from then on: on the heap, or, once [`spill_to`] has named a directory, in
/// a file there that is memory-mapped read-only. Mapped, they count as file-backed memory
/// the kernel may drop and read back under pressure, not as anonymous memory.
///
/// The file is created, unlinked at once (nothing is left behind, even after a crash) and
/// written at every load; nothing else can reach it, so it cannot change under the mapping.
#[derive(Clone)]
pub struct Frozen<T: Plain> {
    inner: FrozenInner<T>,
}

#[derive(Clone)]
enum FrozenInner<T: Plain> {
    Owned(Vec<T>),
    Mapped {
        map: std::sync::Arc<Mmap>,
        len: usize,
    },
}

/// Buffers below this many bytes stay on the heap: a mapping rounds up to a page.
const SPILL_MIN_BYTES: usize = 64 * 1024;

struct SpillFile {
    file: File,
    end: u64,
}

static SPILL: Mutex<Option<SpillFile>> = Mutex::new(None);

/// From now on, [`Frozen`] buffers of 64 KiB and more are written to one unlinked file in
/// `dir` (created if missing) and mapped from there. Errors name the directory; on error the
/// buffers stay on the heap.
pub fn spill_to(dir: &Path) -> Result<()> {
    let io_err = |action, source| Error::Io {
        action,
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io_err("create", e))?;
    let path = dir.join(format!(
        "sotad-weights-{}-{}",
        std::process::id(),
        NEXT_KEY.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io_err("create a file in", e))?;
    std::fs::remove_file(&path).map_err(|e| io_err("unlink a file in", e))?;
    if let Ok(mut spill) = SPILL.lock() {
        *spill = Some(SpillFile { file, end: 0 });
    }
    Ok(())
}

/// Bytes written to the spill file so far (0 without one).
pub fn spilled_bytes() -> u64 {
    SPILL
        .lock()
        .ok()
        .and_then(|s| s.as_ref().map(|s| s.end))
        .unwrap_or(0)
}

fn as_bytes<T: Plain>(v: &[T]) -> &[u8] {
    // SAFETY: `Plain` types are plain numbers without padding; any `[T]` is readable as bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

fn spill(bytes: &[u8]) -> Option<Mmap> {
    use std::os::unix::fs::FileExt;
    let mut guard = SPILL.lock().ok()?;
    let spill = guard.as_mut()?;
    let at = spill.end;
    spill.file.write_all_at(bytes, at).ok()?;
    // SAFETY: the file is unlinked and only this process holds it; its written ranges are
    // never written again (`end` only grows), so the read-only mapping never changes.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(at)
            .len(bytes.len())
            .map(&spill.file)
    }
    .ok()?;
    spill.end = at + (bytes.len() as u64).next_multiple_of(4096);
    Some(map)
}

impl<T: Plain> Frozen<T> {
    /// Freezes `v`: spilled to the file of [`spill_to`] when there is one and `v` is large
    /// enough, else kept as it is.
    pub fn new(v: Vec<T>) -> Self {
        let n = std::mem::size_of_val(v.as_slice());
        if n >= SPILL_MIN_BYTES
            && let Some(map) = spill(as_bytes(&v))
        {
            return Frozen {
                inner: FrozenInner::Mapped {
                    map: std::sync::Arc::new(map),
                    len: v.len(),
                },
            };
        }
        Frozen {
            inner: FrozenInner::Owned(v),
        }
    }

    /// Whether the buffer lives in the spill file's mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self.inner, FrozenInner::Mapped { .. })
    }
}

impl<T: Plain> From<Vec<T>> for Frozen<T> {
    fn from(v: Vec<T>) -> Self {
        Frozen::new(v)
    }
}

impl<T: Plain> std::ops::Deref for Frozen<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.inner {
            FrozenInner::Owned(v) => v,
            // SAFETY: the mapping is page-aligned (aligned for `T`), `len * size_of::<T>()`
            // bytes long, read-only and alive as long as `self`; the bytes were a `[T]`.
            FrozenInner::Mapped { map, len } => unsafe {
                std::slice::from_raw_parts(map.as_ptr().cast::<T>(), *len)
            },
        }
    }
}

impl<T: Plain> std::fmt::Debug for Frozen<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frozen")
            .field("len", &self.len())
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_path_and_the_cause() {
        let dir = std::env::temp_dir();
        let e = Backing::map(&dir).err().unwrap().to_string();
        assert!(
            e.contains(&format!("{dir:?}")) && e.contains("is a directory"),
            "{e}"
        );
        let missing = dir.join("sotad-no-such-model.gguf");
        let e = Backing::map(&missing).err().unwrap().to_string();
        assert!(
            e.starts_with("cannot open") && e.contains("sotad-no-such-model.gguf"),
            "{e}"
        );
    }

    #[test]
    fn a_mapping_is_found_by_address_and_a_change_in_place_is_seen() {
        let dir = tempfile_dir("sotad-mapped-test");
        let path = dir.join("model.bin");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let backing = Backing::map(&path).unwrap();
        let start = backing.bytes().as_ptr() as usize;
        let (name, offset) = file_at(start + 100).expect("registered");
        assert_eq!(
            name,
            std::path::absolute(&path)
                .unwrap()
                .as_os_str()
                .as_encoded_bytes()
        );
        assert_eq!(offset, 100);
        assert!(file_at(start + 8192).is_none());
        assert!(check_under(&dir).is_empty());

        // Truncated in place (what `cp` over it does first).
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        let changes = check_under(&path);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].kind, ChangeKind::InPlace { was: 8192, now: 0 });
        assert!(changes[0].kind.is_unsafe());
        assert!(
            changes[0].to_string().contains("model.bin"),
            "{}",
            changes[0]
        );

        // Another file renamed into place: the mapping keeps the old one, which is safe.
        let fresh = dir.join("model.bin.new");
        std::fs::write(&fresh, vec![1u8; 10]).unwrap();
        std::fs::rename(&fresh, &path).unwrap();
        let changes = check_under(&dir);
        assert_eq!(changes[0].kind, ChangeKind::Replaced);
        assert!(!changes[0].kind.is_unsafe());

        drop(backing);
        assert!(file_at(start + 100).is_none());
        assert!(check_under(&dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
