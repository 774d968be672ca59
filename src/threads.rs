//! Scheduling of keybroker's own background threads.

/// Lowers the calling thread's scheduling priority to nice `nice` (Linux: a nice value set for a
/// thread id applies to that thread only). Used for the background threads (password hashing,
/// the spend writer, WAL checkpoints) so they yield the CPU to the workers answering calls.
/// Failing to lower it is harmless: the thread then competes at normal priority.
#[cfg(target_os = "linux")]
pub fn lower_priority(nice: i32) {
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice);
}

#[cfg(not(target_os = "linux"))]
pub fn lower_priority(_nice: i32) {}
