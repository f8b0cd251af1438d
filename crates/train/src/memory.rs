//! Peak-memory measurement, with the definition that goes next to every number.
//!
//! - CPU: the process's peak resident set (`VmHWM` in `/proc/self/status`). Before each epoch the trainer resets
//!   the mark by writing `5` to `/proc/self/clear_refs` (Linux ≥ 4.0), so each epoch reports its own peak; when
//!   the reset is refused the definition says the peak is since process start.
//! - CUDA (feature `cuda`): the device memory used by this process as `nvidia-smi --query-compute-apps` reports it
//!   (tensors + allocator cache + CUDA context, like nvidia-smi's table), sampled every 100 ms by a thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Definition of the CPU number.
pub const RSS_DEFINITION: &str = "process peak RSS (VmHWM, reset per epoch)";
/// Definition of the CPU number when the per-epoch reset is not permitted.
pub const RSS_SINCE_START_DEFINITION: &str = "process peak RSS (VmHWM since process start)";
/// Definition of the CUDA number.
pub const NVML_DEFINITION: &str =
    "device memory used by the process (nvidia-smi compute-apps, sampled every 100 ms)";

/// Reads a `kB` field such as `VmHWM` from `/proc/self/status`, in bytes.
pub fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_field(&status, field)
}

fn parse_status_field(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// CPU seconds (user + system, all threads) this process has used so far, from `/proc/self/stat` (10 ms
/// resolution); `None` where that file is unavailable. On a shared machine this measures the work done, where wall
/// time also counts waiting for a core.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / CLOCK_TICKS_PER_SECOND)
}

/// `USER_HZ`, the unit of `/proc/<pid>/stat` times: 100 on every Linux architecture we build for.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line; the command name may contain spaces, so
/// fields are counted after its closing parenthesis.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")" come field 3 (state) onwards, so utime (14) and stime (15) are at indices 11 and 12.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Resets the kernel's peak-RSS mark to the current RSS; false when the kernel refuses.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Tracks the peak memory of one interval (an epoch).
#[derive(Debug)]
pub struct PeakMemory {
    cuda: bool,
    reset_ok: bool,
    sampler: Option<Sampler>,
}

impl PeakMemory {
    /// Starts measuring; `cuda` selects the device sampler (only with the `cuda` feature, else RSS is used).
    pub fn start(cuda: bool) -> Self {
        let cuda = cuda && cfg!(feature = "cuda");
        let sampler = if cuda { Some(Sampler::spawn()) } else { None };
        let reset_ok = if cuda { true } else { reset_peak_rss() };
        Self {
            cuda,
            reset_ok,
            sampler,
        }
    }

    /// The definition of the number [`PeakMemory::peak_bytes`] returns.
    pub fn definition(&self) -> &'static str {
        match (self.cuda, self.reset_ok) {
            (true, _) => NVML_DEFINITION,
            (false, true) => RSS_DEFINITION,
            (false, false) => RSS_SINCE_START_DEFINITION,
        }
    }

    /// The peak so far in bytes (0 if it could not be read).
    pub fn peak_bytes(&self) -> u64 {
        match &self.sampler {
            Some(sampler) => sampler.peak.load(Ordering::Relaxed),
            None => proc_status_bytes("VmHWM").unwrap_or(0),
        }
    }
}

#[derive(Debug)]
struct Sampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Sampler {
    fn spawn() -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let pid = std::process::id();
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(used) = nvidia_smi_used_bytes(pid) {
                    p.fetch_max(used, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self {
            peak,
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            // A panicked sampler thread only loses samples; nothing to propagate from a destructor.
            let _ = handle.join();
        }
    }
}

/// This process's used device memory per `nvidia-smi --query-compute-apps=pid,used_memory`, in bytes.
fn nvidia_smi_used_bytes(pid: u32) -> Option<u64> {
    let output = std::process::Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    parse_compute_apps(&String::from_utf8_lossy(&output.stdout), pid)
}

fn parse_compute_apps(csv: &str, pid: u32) -> Option<u64> {
    let mut total = None;
    for line in csv.lines() {
        let mut fields = line.split(',').map(str::trim);
        let (Some(p), Some(mib)) = (fields.next(), fields.next()) else {
            continue;
        };
        if p.parse::<u32>().ok() == Some(pid) {
            let mib: u64 = mib.parse().ok()?;
            *total.get_or_insert(0) += mib * 1024 * 1024;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vmhwm_in_bytes() {
        let status = "Name:\ttrain\nVmPeak:\t  100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_status_field(status, "VmHWM"), Some(2048 * 1024));
        assert_eq!(parse_status_field(status, "VmSwap"), None);
    }

    #[test]
    fn own_process_peak_rss_is_readable_and_positive() {
        let peak = PeakMemory::start(false);
        assert!(peak.peak_bytes() > 0);
        assert!(peak.definition().starts_with("process peak RSS"));
    }

    #[test]
    fn cpu_ticks_are_utime_plus_stime_even_with_spaces_in_the_name() {
        let stat = "1234 (my train) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0 100 1000 50";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        // This process's own counter advances with work done.
        let before = process_cpu_seconds().expect("/proc/self/stat");
        let start = std::time::Instant::now();
        let mut spin = 0u64;
        while start.elapsed().as_millis() < 60 {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let after = process_cpu_seconds().expect("/proc/self/stat");
        assert!(after > before && before >= 0.0, "{before} → {after}");
    }

    #[test]
    fn compute_apps_rows_of_this_pid_are_summed() {
        let csv = "123, 500\n456, 100\n123, 20\n";
        assert_eq!(parse_compute_apps(csv, 123), Some(520 * 1024 * 1024));
        assert_eq!(parse_compute_apps(csv, 9), None);
    }
}
