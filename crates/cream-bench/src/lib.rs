//! cream-bench: the workloads of `just bench` (batched generation, teacher-forced scoring, one
//! DPO step), measured with wall clock and process CPU time, plus hardware probes, the export
//! of the model to Hugging Face layout for the PyTorch baseline and the golden-vector check.
//! `bench/run.py` runs the binary and `bench/baseline.py` side by side; see bench/README.md.

pub mod inputs;
pub mod measure;
pub mod probe;
pub mod shapes;
pub mod workloads;

/// A short name of the device, for the records.
pub fn device_name(device: &candle_core::Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}
