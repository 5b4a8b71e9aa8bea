//! Where tensors live: the `device` a spec or `--device` names, and opening it.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::error::InputError;

/// What `device:` and `--device` accept.
pub const CHOICES: &str = "auto, cpu, cuda or cuda:N";

/// A device as named in a spec or on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The first GPU when the binary has CUDA and one answers, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA GPU number N.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = InputError;

    fn from_str(name: &str) -> Result<Self, InputError> {
        match name {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| {
                    InputError::new(format!("unknown device `{other}`"))
                        .with_help(format!("use {CHOICES}"))
                }),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

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
    fn names_parse_and_print_back() {
        for name in ["auto", "cpu", "cuda:0", "cuda:3"] {
            assert_eq!(name.parse::<DeviceChoice>().unwrap().to_string(), name);
        }
        assert_eq!(
            "cuda".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", ""] {
            assert!(bad.parse::<DeviceChoice>().is_err(), "{bad}");
        }
    }

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
