//! CPU time of processes from `/proc/<pid>/stat`: user plus system time of all their
//! threads, in microseconds.

use std::time::Duration;

/// User plus system CPU time so far of process `pid` ("self" for this one).
pub fn cpu_time(pid: &str) -> Result<Duration, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    let ticks = parse_stat_ticks(&text).ok_or_else(|| format!("unexpected format of {path}"))?;
    let per_sec = clock_ticks_per_sec()?;
    // Ticks are a u64 count of 1/per_sec seconds; u128 keeps the product exact.
    let micros = u128::from(ticks) * 1_000_000 / u128::from(per_sec);
    Ok(Duration::from_micros(
        u64::try_from(micros).unwrap_or(u64::MAX),
    ))
}

/// Sum of CPU time of several processes.
pub fn cpu_time_of(pids: &[u32]) -> Result<Duration, String> {
    pids.iter().map(|p| cpu_time(&p.to_string())).sum()
}

/// `utime + stime` (fields 14 and 15) from the text of `/proc/<pid>/stat`. The second field,
/// the command name in parentheses, may hold spaces and parentheses itself, so the fields
/// are counted from after its last `)`.
fn parse_stat_ticks(text: &str) -> Option<u64> {
    let after_name = &text[text.rfind(')')? + 1..];
    // After the name come field 3 (state) onwards: utime is field 14, the 12th here.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

fn clock_ticks_per_sec() -> Result<u64, String> {
    // SAFETY: sysconf only reads a configuration value; it takes no pointers.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks)
        .ok()
        .filter(|&t| t > 0)
        .ok_or_else(|| format!("sysconf(_SC_CLK_TCK) returned {ticks}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let line = "4242 (keel (a) b) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    350 120 0 0 20 0 9 0 12345 1000000 500";
        assert_eq!(parse_stat_ticks(line), Some(470));
        assert_eq!(parse_stat_ticks("4242 (keel) S 1"), None);
    }

    #[test]
    fn this_process_counts_the_cpu_it_burns() {
        // Burn CPU until a tick is counted; on a busy machine the thread may wait for a core,
        // so the bound is generous and in wall time.
        let before = cpu_time("self").unwrap();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_time("self").unwrap() <= before {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no CPU time counted"
            );
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
        }
    }
}
