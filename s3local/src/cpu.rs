//! CPU time from `/proc`: of a set of this process's threads (what the server's own threads
//! cost, apart from a client that shares its process, as the benchmarks do) or of another
//! process (the benchmarks' daemons).

/// User + system seconds of the live threads of this process whose name `wanted` accepts
/// (threads that have exited are not counted); `None` if the clock rate is unknown.
pub fn threads_cpu_seconds(wanted: impl Fn(&str) -> bool) -> Option<f64> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return seconds(0);
    };
    let mut total: u64 = 0;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        if let Some((name, cpu)) = name_and_cpu_ticks(&stat) {
            if wanted(name) {
                total += cpu;
            }
        }
    }
    seconds(total)
}

/// User + system seconds process `pid` has used so far; `None` if it cannot be read.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    seconds(name_and_cpu_ticks(&stat)?.1)
}

/// `ticks` clock ticks in seconds; `None` if the clock rate is unknown.
fn seconds(ticks: u64) -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks as f64 / per_second as f64)
}

/// The thread name and user + system clock ticks of a `/proc/.../stat` line.
fn name_and_cpu_ticks(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    // After the name: state (field 3) ... utime (14), stime (15).
    let mut fields = stat.get(close + 1..)?.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((name, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_name_and_ticks_even_with_parentheses_in_the_name() {
        let stat = "4242 (odd) name) S 1 2 3 4 5 6 7 8 9 10 120 30 0 0 20 0 1 0";
        assert_eq!(name_and_cpu_ticks(stat), Some(("odd) name", 150)));
        assert_eq!(name_and_cpu_ticks("4242 (short) S 1 2"), None);
    }

    #[test]
    fn a_busy_thread_is_counted_and_others_are_not() {
        let name = format!("cpu-test-{}", std::process::id() % 100_000);
        let spin = {
            let name = name.clone();
            std::thread::Builder::new()
                .name(name)
                .spawn(|| {
                    let started = std::time::Instant::now();
                    let mut x = 0u64;
                    while started.elapsed() < std::time::Duration::from_millis(300) {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                    std::thread::sleep(std::time::Duration::from_secs(1));
                })
                .expect("spawn")
        };
        std::thread::sleep(std::time::Duration::from_millis(500));
        let busy = threads_cpu_seconds(|n| n == name).expect("clock rate");
        let nobody = threads_cpu_seconds(|n| n == "no such thread");
        let process = process_cpu_seconds(std::process::id()).expect("own stat");
        spin.join().expect("join");
        assert!((0.2..0.6).contains(&busy), "{busy} s");
        assert_eq!(nobody, Some(0.0));
        // The kernel scales sampled ticks to the scheduler's runtime separately for a thread
        // and for its process, so the two can disagree by a few ticks.
        assert!(
            process + 0.05 >= busy,
            "the process ({process} s) holds its thread ({busy} s)"
        );
    }
}
