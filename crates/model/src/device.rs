//! Device selection: `auto`, `cpu`, `cuda`, `cuda:N`.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Device;

use crate::error::{Error, Result};

/// Parses a device string. `auto` picks CUDA device 0 when this build has the `cuda` feature and a GPU is
/// present, else the CPU; `cuda`/`cuda:N` fail clearly without the feature.
pub fn select(spec: &str) -> Result<Device> {
    let err = |reason: String| Error::Device {
        spec: spec.to_string(),
        reason,
    };
    match spec.trim() {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if cfg!(feature = "cuda") {
                Ok(Device::cuda_if_available(0).map_err(|e| err(e.to_string()))?)
            } else {
                Ok(Device::Cpu)
            }
        }
        "cuda" => cuda(0).map_err(err),
        other => match other.strip_prefix("cuda:") {
            Some(n) => {
                let ordinal = n
                    .parse::<usize>()
                    .map_err(|_| err(format!("`{n}` is not a device number")))?;
                cuda(ordinal).map_err(err)
            }
            None => Err(err("expected auto, cpu, cuda or cuda:N".into())),
        },
    }
}

/// Sets the process-wide defaults of candle's CPU runtime that the compute pool below is tuned for, unless the user
/// set them: `CANDLE_NUM_THREADS=1`, so candle's elementwise ops run on the calling thread instead of in its
/// separate spinning barrier pool. With the model on [`on_compute_pool`], that pool's extra worker only competed
/// with the matmul threads for the cores (measured on 2 cores, SmolLM2 LoRA steps: 155 → 161 tokens/s).
///
/// It also sets `RAYON_NUM_THREADS`, when unset, to the size rayon gives its pools by default (the available
/// parallelism): candle asks for the thread count on every matmul, and without that variable it counts physical
/// cores through `num_cpus`, which parses `/proc/cpuinfo` each time (1.8 % of a SmolLM2 LoRA step's samples were
/// the kernel printing that file, `perf record`). Pool sizes do not change.
///
/// On glibc it also keeps freed memory in the process for reuse (`mallopt`: buffers up to 1 GiB come from the heap,
/// not from a fresh `mmap` whose every page faults on first touch and is unmapped on free; no trimming; the heap
/// grows by 1 GiB at a time, which costs address space, not resident memory). Each training step frees and
/// reallocates the same large buffers (gradients, activations): measured on SmolLM2 full fine-tuning, 2 cores,
/// 106–111 → 122–125 non-padding tokens/s; LoRA unchanged within noise, its peak RSS +2–4 %. And it keeps every
/// thread on the one main arena (`M_ARENA_MAX` 1): a compute-pool thread otherwise allocates from its own arena,
/// whose heaps are capped at 64 MiB, so a larger buffer (SmolLM2's 108 MiB embedding gradient, the target rows'
/// logits) is mapped and unmapped again on every step whatever the threshold says (10-step full fine-tuning bench,
/// back to back: 28.8 / 30.3 → 26.2 / 26.3 s, CPU time 44.6 / 46.2 → 40.9 / 41.1 s; LoRA 11.7 / 11.8 s either way).
///
/// # Safety
/// Changes the environment: call it first thing in `main`, before any other thread exists.
#[allow(unsafe_code)]
pub unsafe fn set_cpu_runtime_defaults() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: the caller guarantees no other thread reads or writes the environment concurrently.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none()
        && let Ok(n) = std::thread::available_parallelism()
    {
        // SAFETY: as above.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const GIB: libc::c_int = 1 << 30;
        // SAFETY: mallopt only sets allocator parameters; called before any other thread allocates.
        // Only when the threshold is accepted (glibc 2.36 here does; some versions cap it at 32 MiB): setting the
        // trim threshold or top pad also ends glibc's dynamic threshold, which alone would pin it at 128 KiB.
        unsafe {
            if libc::mallopt(libc::M_MMAP_THRESHOLD, GIB) == 1 {
                libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
                libc::mallopt(libc::M_TOP_PAD, GIB);
                libc::mallopt(libc::M_ARENA_MAX, 1);
            }
        }
    }
}

/// Stack of the compute pool's threads: candle's backward walks the graph recursively, and a deep model's graph
/// is thousands of nodes deep.
const COMPUTE_STACK_BYTES: usize = 64 << 20;

/// Runs `f` on a worker of a dedicated rayon pool (`RAYON_NUM_THREADS` threads, default one per core) and returns
/// its result. Candle's matmul (gemm) and the fused ops of [`crate::ops`] parallelise with rayon: called from a pool
/// worker they share out work in that pool with the caller taking part, where a call from outside parks the caller
/// and wakes the pool for every matmul. Measured on 2 cores (SmolLM2-135M LoRA training steps): 148 → 155 tokens/s.
/// Falls back to running `f` here when the pool cannot be built.
pub fn on_compute_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("compute-{i}"))
        .stack_size(COMPUTE_STACK_BYTES)
        .build()
    {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

/// Runs `f` (on a worker of the current rayon pool) while every other worker of the pool polls for work instead of
/// going to sleep, and returns its result. An idle rayon worker sleeps after a few microseconds, and work shared out
/// later (the second half of a gemm) waits for it to be woken, or is run by the calling thread itself when that
/// finishes its own half first: in full fine-tuning, whose step alternates threaded matmuls with single-threaded
/// stretches (candle's backward sums every gradient on the calling thread), the second core then sat idle through
/// whole matmuls. Polling workers steal such work at once, at the price of spinning through the single-threaded
/// stretches (OpenMP runtimes do the same by default). Outside a pool, or in a pool of one, it just runs `f`.
pub fn with_pool_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let Some(caller) = rayon::current_thread_index() else {
        return f();
    };
    let others = rayon::current_num_threads().saturating_sub(1);
    if others == 0 {
        return f();
    }
    /// Tells the pollers to stop when `f` returns or unwinds.
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let done = AtomicBool::new(false);
    rayon::scope(|scope| {
        for _ in 0..others {
            scope.spawn(|_| {
                // The caller may pick a poller up from its own queue while it waits inside `f`: polling there would
                // never let `f` finish.
                if rayon::current_thread_index() == Some(caller) {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    match rayon::yield_now() {
                        Some(rayon::Yield::Executed) => {}
                        Some(rayon::Yield::Idle) => std::hint::spin_loop(),
                        None => return,
                    }
                }
            });
        }
        let _done = Done(&done);
        f()
    })
}

fn cuda(ordinal: usize) -> std::result::Result<Device, String> {
    if !cfg!(feature = "cuda") {
        return Err("this build has no CUDA support (rebuild with `--features cuda`)".into());
    }
    Device::new_cuda(ordinal).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The result comes back, threaded work inside completes (thousands of small joins, so the caller also meets
    /// pollers in its own queue), a panic in `f` propagates instead of leaving the pollers spinning, and outside a
    /// pool `f` simply runs.
    #[test]
    fn pool_awake_runs_f_to_completion() {
        use rayon::prelude::*;
        assert_eq!(with_pool_awake(|| 7), 7);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("pool");
        let sum = pool.install(|| {
            with_pool_awake(|| {
                (0..2000u64)
                    .map(|i| {
                        let (a, b) = rayon::join(|| i, || (0..i).into_par_iter().sum::<u64>());
                        a + b
                    })
                    .sum::<u64>()
            })
        });
        let expected: u64 = (0..2000u64).map(|i| i + i * i.saturating_sub(1) / 2).sum();
        assert_eq!(sum, expected);
        // One worker blocked elsewhere through the whole call: its poller waits in a queue while `f` runs.
        let busy_elsewhere = pool.install(|| {
            rayon::join(
                || with_pool_awake(|| (0..200u64).map(|i| rayon::join(|| i, || i).1).sum::<u64>()),
                || std::thread::sleep(std::time::Duration::from_millis(300)),
            )
            .0
        });
        assert_eq!(busy_elsewhere, (0..200u64).sum::<u64>());
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| with_pool_awake(|| panic!("inside f")))
        }));
        assert!(panicked.is_err());
        assert_eq!(pool.install(|| with_pool_awake(|| 1 + 1)), 2);
    }

    #[test]
    fn parses_device_strings() {
        assert!(select("cpu").expect("cpu").is_cpu());
        assert!(select("nonsense").is_err());
        assert!(select("cuda:x").is_err());
        if !cfg!(feature = "cuda") {
            assert!(select("auto").expect("auto").is_cpu());
            let err = select("cuda:1").expect_err("no cuda in this build");
            assert!(err.to_string().contains("features cuda"), "{err}");
        }
    }
}
