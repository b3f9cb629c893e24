//! The scviR model format: everything needed to rebuild a fitted model, in one byte string that R
//! keeps inside its objects (so models survive `saveRDS`) and `save_model()` writes to disk.
//!
//! Layout (version 2), little-endian:
//!   8 bytes  magic "SCVIRMDL"
//!   u32      format version
//!   u64      length L of the JSON header
//!   L bytes  JSON header: { model, vae, train, registry, history, split, tensors: [{name, shape}] }
//!   f32 data of each tensor, in header order, row-major
//!   u32      CRC-32 (IEEE) of every byte before it
//! Version 1 is the same without the checksum; it is still read (its length and values are
//! checked instead). Every read verifies the whole byte string, so a truncated or corrupted model
//! is refused when it is loaded, not at its first query.

use crate::data::{DataSplit, Registry};
use crate::error::{Error, Result};
use crate::module::{Vae, VaeConfig};
use crate::train::{History, TrainConfig};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

pub const MAGIC: &[u8; 8] = b"SCVIRMDL";
pub const FORMAT_VERSION: u32 = 2;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<i64>,
}

/// Everything but the weights.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelMeta {
    /// "SCVI" for now; later LDVAE / SCANVI.
    pub model: String,
    pub engine_version: String,
    pub vae: VaeConfig,
    pub train: TrainConfig,
    pub registry: Registry,
    #[serde(default)]
    pub history: History,
    #[serde(default)]
    pub split: DataSplit,
    #[serde(default)]
    pub tensors: Vec<TensorEntry>,
}

pub fn to_bytes(vae: &Vae, meta: &ModelMeta) -> Result<Vec<u8>> {
    let mut vars: Vec<(String, Tensor)> = vae.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut meta = meta.clone();
    meta.tensors = vars.iter().map(|(n, t)| TensorEntry { name: n.clone(), shape: t.size() }).collect();
    let header = serde_json::to_vec(&meta)?;
    let n_values: usize = vars.iter().map(|(_, t)| t.numel()).sum();
    let mut out = Vec::with_capacity(20 + header.len() + 4 * n_values);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for (_, t) in &vars {
        let t = t.to_kind(Kind::Float).to_device(Device::Cpu).contiguous();
        let mut buf = vec![0f32; t.numel()];
        t.copy_data(&mut buf, t.numel());
        for v in buf {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let sum = crc32fast::hash(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    Ok(out)
}

/// Reads the header (config, registry, history) after verifying the whole byte string: its
/// checksum (version 2), or its length and finite values (version 1). Returns the header and the
/// offset of the first tensor.
pub fn read_meta(bytes: &[u8]) -> Result<(ModelMeta, usize)> {
    let bad = |m: &str| Error::ModelFormat(m.to_string());
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return Err(bad("not an scviR model (magic bytes missing)"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    if version != 1 && version != FORMAT_VERSION {
        return Err(Error::ModelFormat(format!(
            "format version {version} is not supported by this scviR (reads versions 1 and {FORMAT_VERSION})"
        )));
    }
    let body_end = if version >= 2 {
        if bytes.len() < 24 {
            return Err(bad("the model is truncated"));
        }
        let end = bytes.len() - 4;
        let stored = u32::from_le_bytes(bytes[end..].try_into().unwrap());
        if crc32fast::hash(&bytes[..end]) != stored {
            return Err(bad("the model's checksum does not match its contents: the file or object is corrupted or truncated"));
        }
        end
    } else {
        bytes.len()
    };
    let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
    let end = 20usize.checked_add(len).filter(|&e| e <= body_end).ok_or_else(|| bad("the model's header is truncated"))?;
    let meta: ModelMeta = serde_json::from_slice(&bytes[20..end])
        .map_err(|e| Error::ModelFormat(format!("the model's header is not valid ({e})")))?;
    let n_values = meta.tensors.iter().try_fold(0usize, |acc, t| {
        let n = t.shape.iter().try_fold(1usize, |a, &d| usize::try_from(d).ok().and_then(|d| a.checked_mul(d)))?;
        acc.checked_add(n)
    });
    let expected = n_values.and_then(|n| n.checked_mul(4)).and_then(|b| b.checked_add(end));
    if expected != Some(body_end) {
        return Err(bad("the model's weights do not match its header (truncated or corrupted)"));
    }
    if version == 1 && bytes[end..].chunks_exact(4).any(|c| !f32::from_le_bytes(c.try_into().unwrap()).is_finite()) {
        return Err(bad("the model's weights hold non-finite values (corrupted)"));
    }
    Ok((meta, end))
}

pub fn from_bytes(bytes: &[u8], device: Device) -> Result<(Vae, ModelMeta)> {
    let (meta, mut offset) = read_meta(bytes)?;
    let reg = &meta.registry;
    let prior = (!meta.vae.use_observed_lib_size)
        .then_some((reg.library_log_means.as_slice(), reg.library_log_vars.as_slice()));
    let vae = Vae::new(meta.vae.clone(), device, prior)?;
    let mut vars = vae.vs.variables();
    if vars.len() != meta.tensors.len() {
        return Err(Error::ModelFormat(format!(
            "the file holds {} tensors, the model expects {}",
            meta.tensors.len(),
            vars.len()
        )));
    }
    tch::no_grad(|| -> Result<()> {
        for entry in &meta.tensors {
            let numel: usize = entry.shape.iter().product::<i64>() as usize;
            let end = offset + 4 * numel;
            if end > bytes.len() {
                return Err(Error::ModelFormat("truncated weights".into()));
            }
            let values: Vec<f32> = bytes[offset..end]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            offset = end;
            let target = vars
                .get_mut(&entry.name)
                .ok_or_else(|| Error::ModelFormat(format!("unexpected tensor {}", entry.name)))?;
            if target.size() != entry.shape {
                return Err(Error::ModelFormat(format!("tensor {} has the wrong shape", entry.name)));
            }
            target.copy_(&Tensor::from_slice(&values).view(entry.shape.as_slice()).to_device(device));
        }
        Ok(())
    })?;
    Ok((vae, meta))
}
