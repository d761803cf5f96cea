//! Sharing one output buffer between parallel tasks.

/// A raw pointer that may cross threads, for tasks that each write a disjoint part of one
/// buffer (rows, columns, heads) that outlives the parallel loop. `T` is the element type
/// (`f32` unless said otherwise).
pub(crate) struct SendPtr<T = f32>(pub(crate) *mut T);
// SAFETY: the callers hand out disjoint parts only, and join their tasks before the buffer
// is used or dropped; the elements themselves may move between threads (`T: Send`).
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}

// Not derived: the derives would ask for `T: Clone`/`T: Copy`, and a pointer is copied
// whatever it points to.
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper, not its
    /// field).
    pub(crate) fn get(self) -> *mut T {
        self.0
    }

    /// The pointer to element `offset` (computed with wrapping arithmetic; the caller keeps
    /// it in bounds before using it).
    pub(crate) fn at(self, offset: usize) -> *mut T {
        self.0.wrapping_add(offset)
    }
}
