//! Scheduling of keybroker's own background threads, and the process resources they share.

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

/// How many descriptors the table is grown to at start: client connections and upstream
/// connections of a busy instance, with room to spare (64 KiB of kernel memory).
pub const PRESIZED_DESCRIPTORS: u32 = 8192;

/// Raises the open-file soft limit to the hard limit (as Go's runtime does: the soft default of
/// 1,024 is too low for a proxy holding two sockets per call), then grows the descriptor table
/// to `want` entries (capped by that limit) in one step.
///
/// Why grow it now: Linux grows a process's descriptor table by doubling it when a new
/// descriptor does not fit, and in a multi-threaded process every growth waits for an RCU grace
/// period (`synchronize_rcu`, 10 to 30 ms on a loaded machine) inside the `socket`/`accept`
/// call that needed it. Measured on the bench: when the first burst of 280 connections arrived,
/// the worker stalled in upstream `socket()` calls and the accept thread in `accept4()`, and
/// every call of that burst waited. Called first thing in `serve`, before the workers exist, the
/// one growth waits at start instead: 11 ms measured, because jemalloc's background thread
/// (`src/main.rs`) already shares the table. Afterwards the table never shrinks. Failure is
/// harmless: the table then grows on demand as before.
pub fn presize_descriptor_table(want: u32) {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let mut limit = getrlimit(Resource::Nofile);
        if let (Some(soft), Some(hard)) = (limit.current, limit.maximum) {
            if soft < hard {
                limit.current = Some(hard);
                let _ = setrlimit(Resource::Nofile, limit);
            }
        }
        let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
        let highest = u64::from(want).min(soft).saturating_sub(1);
        if let Ok(highest) = i32::try_from(highest) {
            // The duplicate lands at `highest` (or above), which makes the table that large.
            if let Ok(fd) = rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), highest) {
                drop(fd);
            }
        }
    }
    #[cfg(not(unix))]
    let _ = want;
}

#[cfg(test)]
mod tests {
    /// `FDSize` in `/proc/self/status`: the number of slots in the descriptor table.
    #[cfg(target_os = "linux")]
    fn table_size() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("FDSize:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_descriptor_table_is_grown_to_the_wanted_size_and_no_descriptor_is_left_open() {
        let open = || std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
        let before = open();
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        super::presize_descriptor_table(super::PRESIZED_DESCRIPTORS);
        let want = u64::from(super::PRESIZED_DESCRIPTORS).min(
            rustix::process::getrlimit(rustix::process::Resource::Nofile)
                .current
                .unwrap_or(u64::MAX),
        );
        assert!(
            table_size() >= want,
            "FDSize {} below {want} (soft limit was {soft})",
            table_size()
        );
        // Other tests open descriptors concurrently; the call itself leaves none behind.
        assert!(open() <= before + 8);
    }
}
