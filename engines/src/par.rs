//! Sharing one output buffer between parallel tasks.

/// A raw pointer that may cross threads, for tasks that each write a disjoint part of one
/// buffer (rows, columns, heads) that outlives the parallel loop.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: the callers hand out disjoint parts only, and join their tasks before the buffer
// is used or dropped.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper, not its
    /// field).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
