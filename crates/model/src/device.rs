//! Device selection: `auto`, `cpu`, `cuda`, `cuda:N`.

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

fn cuda(ordinal: usize) -> std::result::Result<Device, String> {
    if !cfg!(feature = "cuda") {
        return Err("this build has no CUDA support (rebuild with `--features cuda`)".into());
    }
    Device::new_cuda(ordinal).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
