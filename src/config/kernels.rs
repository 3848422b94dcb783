//! Which kernels run an encoder and in which number format: settings of a task
//! (`[tasks."X"] kernels`, `precision`), defined here beside the other settings so that
//! checking a config needs nothing from the model code. What they mean on this machine
//! (CPU features, devices) is implemented in [`crate::model`].

use serde::{Deserialize, Serialize};

use super::DeviceSpec;

/// Which implementation runs the encoder (`[tasks."X"] kernels`; by default the
/// device's, [`Kernels::for_device`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// Packed batches and fused kernels on plain buffers ([`crate::model::packed`]); CPU only.
    Packed,
    /// The encoder on candle tensor ops, padded batches ([`crate::model::bert`]); CPU or CUDA, f32,
    /// f16 or bf16.
    Candle,
}

impl Kernels {
    /// The default for a device: packed on the CPU, candle on CUDA.
    pub fn for_device(device: DeviceSpec) -> Self {
        match device {
            DeviceSpec::Cpu => Kernels::Packed,
            DeviceSpec::Cuda(_) => Kernels::Candle,
        }
    }

    /// Its name in configs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kernels::Packed => "packed",
            Kernels::Candle => "candle",
        }
    }
}

impl std::fmt::Display for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The number format of the encoder's dense layers (`[tasks."X"] precision`). On the
/// packed CPU kernels, layer norm, softmax, GELU, attention, pooling and the head always
/// run in f32; on the candle kernels, layer norm and softmax sum in f32 and pooling and
/// the head run in f32 ([`crate::model::bert`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Packed kernels: bf16 where it is both faithful and faster than f32 here
    /// (AMX-BF16), f32 elsewhere ([`Precision::resolve`]). Candle kernels: f16 on CUDA,
    /// f32 on the CPU ([`Precision::for_kernels`]). README "Precision".
    #[default]
    Auto,
    /// f32 weights and activations.
    F32,
    /// bf16 weights and activations, f32 sums ([`crate::model::qgemm`] on the CPU, cuBLAS on CUDA).
    Bf16,
    /// int8 weights (a scale per output), u8 activations (per token), i32 sums
    /// ([`crate::model::qgemm`]); packed CPU kernels only.
    Int8,
    /// f16 weights and activations, f32 sums; candle kernels only (CUDA tensor cores).
    F16,
}

impl Precision {
    /// Every setting.
    /// (Appended, never reordered: the packed-weights cache stores the index.)
    pub const ALL: [Precision; 5] = [
        Precision::Auto,
        Precision::F32,
        Precision::Bf16,
        Precision::Int8,
        Precision::F16,
    ];

    /// Its name in configs, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
            Precision::F16 => "f16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Precision::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("precision `{s}`: expected auto, f32, f16, bf16 or int8"))
    }
}
