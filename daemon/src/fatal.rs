//! The last resort for a model file changed under a running sotad: a SIGBUS handler.
//!
//! Model files are memory-mapped. One truncated in place while a job reads it (what `cp`
//! over it does first) raises SIGBUS on the next page past its new end, inside the engine,
//! where nothing can be recovered. Before each job the stages check their files
//! (`stages::files`); a change that lands during a job ends here: the handler looks the
//! faulting address up among the mapped model files (`sotad_engines::mapped::file_at`,
//! async-signal-safe) and, when it belongs to one, writes one line naming the file and the
//! cause to stderr (the journal) with `write(2)` and exits with [`EXIT_MODEL_CHANGED`], so
//! that systemd (`Restart=on-failure`) starts sotad again with the new file. Any other SIGBUS
//! gets the default action (a core dump), as without the handler.

/// The exit status after a model file changed under a running job.
pub const EXIT_MODEL_CHANGED: i32 = 3;

/// Installs the handler; once, at start-up.
pub fn install_sigbus_handler() {
    // SAFETY: sigaction with a zeroed, then filled struct; the handler only does
    // async-signal-safe work (atomic loads, write(2), _exit(2)).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        // SA_RESETHAND: a SIGBUS that is not ours re-faults into the default action.
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "no SIGBUS handler: a model file changed under sotad would end it without a word"
            );
        }
    }
}

extern "C" fn on_sigbus(_signal: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo_t to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let Some((file, offset)) = sotad_engines::mapped::file_at(addr) else {
        // Not a model file: return, and the fault repeats under the default action.
        return;
    };
    let mut line = Line::new();
    line.push(b"sotad: fatal: SIGBUS reading model file ");
    line.push(file);
    line.push(b" at byte ");
    line.number(offset);
    line.push(
        b": the file was truncated or overwritten in place while sotad had it mapped. \
          Replace model files by renaming a new file into place (README, \"Models\"); \
          sotad exits now so that its service manager starts it again with the new file.\n",
    );
    line.write_stderr();
    // SAFETY: _exit is async-signal-safe and does not return.
    unsafe { libc::_exit(EXIT_MODEL_CHANGED) }
}

/// A fixed buffer, filled without allocating (async-signal-safe).
struct Line {
    buf: [u8; 2048],
    len: usize,
}

impl Line {
    fn new() -> Line {
        Line {
            buf: [0; 2048],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn number(&mut self, mut n: usize) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn write_stderr(&self) {
        let mut done = 0;
        while done < self.len {
            // SAFETY: write(2) from a valid buffer; async-signal-safe.
            let n = unsafe {
                libc::write(
                    libc::STDERR_FILENO,
                    self.buf[done..].as_ptr().cast(),
                    self.len - done,
                )
            };
            if n <= 0 {
                break;
            }
            done += n as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Line;

    #[test]
    fn the_line_is_built_without_allocating_and_numbers_are_decimal() {
        let mut line = Line::new();
        line.push(b"at byte ");
        line.number(0);
        line.push(b" ");
        line.number(1_234_567);
        assert_eq!(&line.buf[..line.len], b"at byte 0 1234567");
        let mut long = Line::new();
        long.push(&[b'x'; 5000]);
        assert_eq!(long.len, 2048);
    }
}
