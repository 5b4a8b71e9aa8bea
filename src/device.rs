//! Where tensors live: opening the device a spec or `--device` names.

use candle_core::Device;

use crate::error::InputError;
pub use crate::spec::{CHOICES, DeviceChoice};

/// Settings for CPU work: candle's thread count read once, its element-wise ops on the
/// calling thread, freed memory kept.
///
/// # Safety
/// Call it first thing in `main`, before any other thread exists: it sets an environment
/// variable.
pub unsafe fn prepare_process() {
    keep_freed_memory();
    // SAFETY: the caller promises that no other thread exists yet.
    unsafe { count_threads_once() };
    // SAFETY: as above.
    unsafe { one_thread_pool() };
}

/// candle 0.11 runs its element-wise ops on a pool of its own (cores - 1 threads besides the
/// caller) that spin while waiting, beside rayon's pool, which runs xferlab's kernels and the
/// matrix multiplies: on 2 cores the two pools' spinning threads crowd each other out, and
/// the caller waited on candle's pool for a sixth of a training step. Element-wise ops on
/// the calling thread make training steps faster and forward passes no slower
/// (docs/speed.md). `CANDLE_NUM_THREADS` set by the user wins.
unsafe fn one_thread_pool() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: no other thread exists yet (`prepare_process`).
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// candle asks for its CPU thread count before every parallel kernel and, unless
/// `RAYON_NUM_THREADS` is set, counts physical cores by parsing /proc/cpuinfo each time: a
/// fifth of an EfficientNet training step on 2 cores. Count once, as candle would.
unsafe fn count_threads_once() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads();
        // SAFETY: no other thread exists yet (`prepare_process`).
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
}

/// Training allocates and frees the same big tensors every step, and glibc gives blocks over
/// 128 KiB back to the kernel at once, then faults zeroed pages in for the next: a fifth of
/// an EfficientNet training step on the CPU. Keep freed blocks (up to 32 MiB, the most glibc
/// allows) in the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: settings of the allocator, which takes its own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

impl DeviceChoice {
    /// Opens the device. `auto` tries GPU 0 and falls back to the CPU: candle's
    /// `cuda_if_available` only says whether the binary has CUDA, not whether a GPU answers.
    pub fn open(self) -> Result<Device, InputError> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto => Ok(Device::new_cuda(0).unwrap_or(Device::Cpu)),
            DeviceChoice::Cuda(ordinal) => Device::new_cuda(ordinal).map_err(|e| {
                // candle appends a backtrace to driver errors; the first line is the reason.
                let reason = e.to_string();
                let reason = reason.lines().next().unwrap_or_default();
                let help = if cfg!(feature = "cuda") {
                    format!("no GPU {ordinal} answers here; use --device cpu, or auto")
                } else {
                    "this xferlab was built without CUDA: build with `just build-gpu` \
                     (`--features cuda`) for a machine with a GPU; here use --device cpu"
                        .into()
                };
                InputError::new(format!("cannot use CUDA device {ordinal}: {reason}"))
                    .with_help(help)
            }),
        }
    }
}

/// Name of an open device, as records and trackers show it: `cpu`, `cuda:0`.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_the_cpu_without_a_gpu() {
        // The default build has no CUDA, so auto must fall back, and cuda must say why not.
        if cfg!(not(feature = "cuda")) {
            assert!(DeviceChoice::Auto.open().unwrap().is_cpu());
            let error = DeviceChoice::Cuda(0).open().unwrap_err();
            assert!(error.message.contains("cannot use CUDA device 0"));
        }
    }
}
