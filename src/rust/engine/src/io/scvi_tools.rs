//! Models saved by scvi-tools, read natively: `model.pt` (scvi-tools >= 0.15: a torch.save zip
//! holding `{"model_state_dict", "var_names", "attr_dict"}`) and the legacy layout
//! (`model_params.pt`, `var_names.csv`, `attr.pkl`). The architecture comes from
//! `attr_dict["init_params_"]`, genes and categories from `var_names` and `registry_`, weights
//! from the state dict renamed to this engine's layout. SCVI, LinearSCVI and SCANVI are read; a
//! model class or option this engine does not implement is an error naming it.

use super::pickle::{Node, Pickle};
use crate::data::Registry;
use crate::error::{Error, Result};
use crate::module::config::{BatchRepresentation, LatentDistribution, VarActivation};
use crate::module::{Dispersion, ScanviConfig, Vae, VaeConfig};
use crate::distributions::GeneLikelihood;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Tensor};

fn bad(m: impl Into<String>) -> Error {
    Error::ModelFormat(m.into())
}

/// What a scvi-tools save holds, in this engine's terms.
pub struct Imported {
    pub model: String,
    pub config: VaeConfig,
    pub registry: Registry,
    pub vae: Vae,
    pub scvi_version: String,
}

struct Archive {
    entries: HashMap<String, Vec<u8>>,
    prefix: String,
}

impl Archive {
    fn open(bytes: &[u8]) -> Result<(Archive, Pickle)> {
        let entries = super::pickle::zip_entries(bytes)?;
        let pkl = entries.keys().find(|k| k.ends_with("/data.pkl") || *k == "data.pkl").cloned().ok_or_else(|| bad("no data.pkl in the torch archive"))?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        let pickle = Pickle::parse(&entries[&pkl])?;
        Ok((Archive { entries, prefix }, pickle))
    }

    /// A tensor node (`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`)
    /// as f32 values with its shape; None for other dtypes (e.g. BatchNorm's int64 counter).
    fn tensor(&self, p: &Pickle, node: usize) -> Result<Option<(Vec<i64>, Vec<f32>)>> {
        let Node::Object { args, .. } = p.node(node) else { return Ok(None) };
        if !p.class_of(node).is_some_and(|c| c.ends_with("_rebuild_tensor_v2")) {
            return Ok(None);
        }
        let a = p.seq(*args).ok_or_else(|| bad("malformed tensor"))?;
        let Node::Persistent(pid) = p.node(a[0]) else { return Err(bad("tensor without storage")) };
        let pid = p.seq(*pid).ok_or_else(|| bad("malformed storage id"))?;
        let kind = match p.node(pid[1]) {
            Node::Global { name, .. } => name.clone(),
            _ => String::new(),
        };
        let key = p.str(pid[2]).ok_or_else(|| bad("storage key"))?;
        let offset = p.int(a[1]).unwrap_or(0) as usize;
        let size: Vec<i64> = p.seq(a[2]).unwrap_or(&[]).iter().filter_map(|&i| p.int(i)).collect();
        let stride: Vec<i64> = p.seq(a[3]).unwrap_or(&[]).iter().filter_map(|&i| p.int(i)).collect();
        let raw = self.entries.get(&format!("{}data/{key}", self.prefix)).ok_or_else(|| bad(format!("storage {key} missing")))?;
        let values: Vec<f32> = match kind.as_str() {
            "FloatStorage" => raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            "DoubleStorage" => raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            _ => return Ok(None),
        };
        let n: i64 = size.iter().product();
        let mut out = Vec::with_capacity(n as usize);
        let mut idx = vec![0i64; size.len()];
        for _ in 0..n {
            let pos = offset as i64 + idx.iter().zip(&stride).map(|(i, s)| i * s).sum::<i64>();
            out.push(*values.get(pos as usize).ok_or_else(|| bad("tensor outside its storage"))?);
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < size[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok(Some((size, out)))
    }
}

/// A scvi-tools parameter name in this engine's layout, or None for what it does not keep.
pub fn engine_name(name: &str) -> Option<String> {
    if name.ends_with("num_batches_tracked") || name == "pyro_param_store" {
        return None;
    }
    if name == "_embeddings_dict.batch.weight" {
        return Some("batch_embedding".into());
    }
    let mut n = name.to_string();
    // scANVI's modules live under "scanvi." here.
    for (from, to) in [
        ("classifier.classifier.", "scanvi.classifier."),
        ("encoder_z2_z1.", "scanvi.encoder_z2_z1."),
        ("decoder_z1_z2.", "scanvi.decoder_z1_z2."),
    ] {
        if let Some(rest) = n.strip_prefix(from) {
            n = format!("{to}{rest}");
        }
    }
    let parts: Vec<&str> = n.split('.').collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < parts.len() {
        let p = parts[i];
        if p == "fc_layers" {
            // "fc_layers.Layer k.0.x" -> "layer_k.linear.x", ".1." -> ".batch_norm."
            let layer = parts.get(i + 1)?.strip_prefix("Layer ")?;
            let which = match *parts.get(i + 2)? {
                "0" => "linear",
                "1" => "batch_norm",
                _ => return None,
            };
            out.push(format!("layer_{layer}"));
            out.push(which.to_string());
            i += 3;
            continue;
        }
        out.push(p.to_string());
        i += 1;
    }
    let mut n = out.join(".");
    // Sequential wrappers: px_scale_decoder.0 (Linear then Softmax), the classifier's FC stack
    // (index 0) and output layer (index 1, or 0 for a linear classifier).
    n = n.replace("decoder.px_scale_decoder.0.", "decoder.px_scale_decoder.");
    if let Some(rest) = n.strip_prefix("scanvi.classifier.0.layer_") {
        n = format!("scanvi.classifier.fc.layer_{rest}");
    } else if let Some(rest) = n.strip_prefix("scanvi.classifier.1.") {
        n = format!("scanvi.classifier.out.{rest}");
    } else if let Some(rest) = n.strip_prefix("scanvi.classifier.0.") {
        n = format!("scanvi.classifier.out.{rest}");
    }
    Some(n)
}

/// Reads a scvi-tools model directory.
pub fn load_dir(dir: &Path, device: Device) -> Result<Imported> {
    let read = |f: &str| std::fs::read(dir.join(f)).map_err(|e| Error::InvalidInput(format!("{}: {e}", dir.join(f).display())));
    let (archive, pickle, state, var_names, attr, attr_pickle);
    if dir.join("model.pt").exists() {
        let (a, p) = Archive::open(&read("model.pt")?)?;
        let root = p.root;
        state = p.get(root, "model_state_dict").ok_or_else(|| bad("model.pt has no model_state_dict"))?;
        let v = p.get(root, "var_names").ok_or_else(|| bad("model.pt has no var_names"))?;
        var_names = p.numpy_strings(v).or_else(|| p.seq(v).map(|s| s.iter().filter_map(|&i| p.str(i).map(String::from)).collect())).ok_or_else(|| bad("var_names are not strings"))?;
        attr = p.get(root, "attr_dict").ok_or_else(|| bad("model.pt has no attr_dict"))?;
        archive = a;
        pickle = p;
        attr_pickle = None;
    } else if dir.join("model_params.pt").exists() {
        // scvi-tools < 0.15: weights, var_names.csv and attr.pkl apart.
        let (a, p) = Archive::open(&read("model_params.pt")?)?;
        state = p.root;
        var_names = String::from_utf8_lossy(&read("var_names.csv")?).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
        let ap = Pickle::parse(&read("attr.pkl")?)?;
        attr = ap.root;
        archive = a;
        pickle = p;
        attr_pickle = Some(ap);
    } else {
        return Err(Error::InvalidInput(format!(
            "{}: not a model saved by scvi-tools (no model.pt, nor model_params.pt / var_names.csv / attr.pkl)",
            dir.display()
        )));
    }
    let ap = attr_pickle.as_ref().unwrap_or(&pickle);
    let registry_node = ap.get(attr, "registry_").ok_or_else(|| bad("attr_dict has no registry_"))?;
    let init = ap.get(attr, "init_params_").ok_or_else(|| bad("attr_dict has no init_params_"))?;
    let model = ap.get(registry_node, "model_name").and_then(|i| ap.str(i)).unwrap_or("SCVI").to_string();
    let scvi_version = ap.get(registry_node, "scvi_version").and_then(|i| ap.str(i)).unwrap_or("").to_string();
    let (config, registry) = architecture(ap, &model, init, registry_node, var_names)?;

    // Weights in this engine's names.
    let mut weights: HashMap<String, (Vec<i64>, Vec<f32>)> = HashMap::new();
    for &(k, v) in pickle.pairs(state).ok_or_else(|| bad("the state dict is not a dict"))? {
        let Some(name) = pickle.str(k) else { continue };
        let Some(mapped) = engine_name(name) else { continue };
        if let Some(t) = archive.tensor(&pickle, v)? {
            weights.insert(mapped, t);
        }
    }
    let mut registry = registry;
    let mut config = config;
    // scANVI's label prior is a (non-trained) parameter of the state dict; the module's
    // constructor argument may be a tensor the init parameters do not spell out.
    if let (Some(sc), Some((_, prior))) = (config.scanvi.as_mut(), weights.get("y_prior")) {
        let p: Vec<f64> = prior.iter().map(|&x| x as f64).collect();
        if p.len() != sc.n_labels as usize {
            return Err(bad(format!("y_prior has {} values for {} labels", p.len(), sc.n_labels)));
        }
        let uniform = p.iter().all(|&x| (x - p[0]).abs() <= 1e-6 * p[0].abs());
        sc.y_prior = if uniform { vec![] } else { p };
    }
    if let (Some(m), Some(v)) = (weights.get("library_log_means"), weights.get("library_log_vars")) {
        registry.library_log_means = m.1.iter().map(|&x| x as f64).collect();
        registry.library_log_vars = v.1.iter().map(|&x| x as f64).collect();
    }
    let prior = (!config.use_observed_lib_size).then_some((registry.library_log_means.as_slice(), registry.library_log_vars.as_slice()));
    let vae = Vae::new(config.clone(), device, prior)?;
    let mut vars = vae.vs.variables();
    tch::no_grad(|| -> Result<()> {
        for (name, t) in vars.iter_mut() {
            let (shape, values) = weights.get(name).ok_or_else(|| bad(format!("the saved model lacks {name} (an option this engine reads differently?)")))?;
            if &t.size() != shape {
                return Err(bad(format!("{name}: shape {shape:?} in the file, {:?} expected", t.size())));
            }
            t.copy_(&Tensor::from_slice(values).view(shape.as_slice()).to_device(device));
        }
        Ok(())
    })?;
    Ok(Imported { model, config, registry, vae, scvi_version })
}

/// The engine's configuration and registry from `init_params_` and `registry_`.
fn architecture(p: &Pickle, model: &str, init: usize, reg: usize, genes: Vec<String>) -> Result<(VaeConfig, Registry)> {
    if !["SCVI", "LinearSCVI", "SCANVI"].contains(&model) {
        return Err(Error::InvalidInput(format!("scvi-tools model class {model} is not implemented in scviR (SCVI, LinearSCVI and SCANVI are)")));
    }
    // init_params_: {"non_kwargs": {...}, "kwargs": {"kwargs": {...}}} (older: a flat dict).
    let mut params: HashMap<String, usize> = HashMap::new();
    let mut collect = |d: usize| {
        for &(k, v) in p.pairs(d).unwrap_or(&[]) {
            if let Some(k) = p.str(k) {
                params.insert(k.to_string(), v);
            }
        }
    };
    // The model's own arguments, then its **kwargs (saved as {"kwargs": {...}} or
    // {"model_kwargs": {...}}, whose dict values are the keyword arguments themselves).
    match (p.get(init, "non_kwargs"), p.get(init, "kwargs")) {
        (Some(nk), kw) => {
            collect(nk);
            if let Some(kw) = kw {
                for &(_, v) in p.pairs(kw).unwrap_or(&[]) {
                    if p.pairs(v).is_some() {
                        collect(v);
                    }
                }
            }
        }
        _ => collect(init),
    }
    for k in ["kwargs", "model_kwargs", "datamodule"] {
        params.remove(k);
    }
    let s = |k: &str| params.get(k).and_then(|&i| p.str(i)).map(String::from);
    let int = |k: &str| params.get(k).and_then(|&i| p.int(i));
    let flag = |k: &str| params.get(k).and_then(|&i| p.bool(i));
    let float = |k: &str| params.get(k).and_then(|&i| p.float(i));
    let field = |key: &str| p.get(reg, "field_registries").and_then(|f| p.get(f, key));
    let state = |key: &str| field(key).and_then(|f| p.get(f, "state_registry"));
    let setup = p.get(reg, "setup_args");
    let setup_str = |k: &str| setup.and_then(|s| p.get(s, k)).and_then(|i| p.str(i)).map(String::from);

    let mut registry = Registry { genes, ..Default::default() };
    registry.batch_key = setup_str("batch_key");
    registry.batches = state("batch")
        .and_then(|st| p.get(st, "categorical_mapping"))
        .and_then(|m| p.numpy_strings(m).or_else(|| p.numpy_numbers(m).map(|v| v.iter().map(|x| format!("{x}")).collect())))
        .unwrap_or_else(|| vec!["0".into()]);
    if registry.batch_key.is_none() && registry.batches.len() == 1 {
        registry.batches = vec!["0".into()];
    }
    registry.labels_key = setup_str("labels_key");
    if registry.labels_key.is_some() {
        registry.labels = state("labels").and_then(|st| p.get(st, "categorical_mapping")).and_then(|m| p.numpy_strings(m)).unwrap_or_default();
    }
    if let Some(st) = state("extra_categorical_covs") {
        let keys: Vec<String> = p.get(st, "field_keys").and_then(|k| p.seq(k).map(|s| s.iter().filter_map(|&i| p.str(i).map(String::from)).collect()).or_else(|| p.numpy_strings(k))).unwrap_or_default();
        let maps = p.get(st, "mappings");
        for k in keys {
            let cats = maps.and_then(|m| p.get(m, &k)).and_then(|c| p.numpy_strings(c)).ok_or_else(|| bad(format!("categories of covariate {k}")))?;
            registry.categorical_covariates.push((k, cats));
        }
    }
    if let Some(st) = state("extra_continuous_covs") {
        registry.continuous_covariates = p.get(st, "columns").and_then(|c| p.numpy_strings(c)).unwrap_or_default();
    }
    registry.size_factor_key = setup_str("size_factor_key");

    let linear = model == "LinearSCVI";
    let mut c = VaeConfig::new(registry.genes.len() as i64, registry.n_batch() as i64);
    c.n_hidden = int("n_hidden").unwrap_or(128);
    c.n_latent = int("n_latent").unwrap_or(10);
    c.n_layers = int("n_layers").unwrap_or(1);
    c.dropout_rate = float("dropout_rate").unwrap_or(0.1);
    c.dispersion = Dispersion::parse(&s("dispersion").unwrap_or_else(|| "gene".into()))?;
    c.gene_likelihood = match s("gene_likelihood").as_deref().unwrap_or(if linear { "nb" } else { "zinb" }) {
        "zinb" => GeneLikelihood::Zinb,
        "nb" => GeneLikelihood::Nb,
        "poisson" => GeneLikelihood::Poisson,
        "normal" => GeneLikelihood::Normal,
        other => return Err(Error::InvalidInput(format!("gene_likelihood \"{other}\" is not implemented in scviR"))),
    };
    c.latent_distribution = match s("latent_distribution").as_deref().unwrap_or("normal") {
        "normal" => LatentDistribution::Normal,
        "ln" => LatentDistribution::LogisticNormal,
        other => return Err(Error::InvalidInput(format!("latent_distribution \"{other}\" is not implemented in scviR"))),
    };
    c.use_observed_lib_size = flag("use_observed_lib_size").unwrap_or(!linear);
    c.log_variational = flag("log_variational").unwrap_or(true);
    c.encode_covariates = flag("encode_covariates").unwrap_or(false);
    c.deeply_inject_covariates = flag("deeply_inject_covariates").unwrap_or(true);
    let where_ = |k: &str, default: &str| -> Result<(bool, bool)> {
        let v = params.get(k).copied();
        let w = match v.map(|i| p.node(i)) {
            Some(Node::Bool(b)) => if *b { "both".to_string() } else { "none".to_string() },
            Some(Node::Str(x)) => x.clone(),
            _ => default.to_string(),
        };
        match w.as_str() {
            "both" => Ok((true, true)),
            "encoder" => Ok((true, false)),
            "decoder" => Ok((false, true)),
            "none" => Ok((false, false)),
            other => Err(Error::InvalidInput(format!("{k} = \"{other}\" is not understood"))),
        }
    };
    let (bne, bnd) = where_("use_batch_norm", "both")?;
    let (lne, lnd) = where_("use_layer_norm", "none")?;
    c.use_batch_norm_encoder = bne;
    c.use_batch_norm_decoder = bnd;
    c.use_layer_norm_encoder = lne;
    c.use_layer_norm_decoder = lnd;
    c.var_activation = match params.get("var_activation").map(|&i| p.node(i)) {
        None | Some(Node::None) => VarActivation::Exp,
        Some(Node::Global { name, .. }) if name == "softplus" => VarActivation::Softplus,
        Some(Node::Object { .. }) if p.class_of(params["var_activation"]).is_some_and(|c| c.ends_with("Softplus")) => VarActivation::Softplus,
        _ => return Err(Error::InvalidInput("var_activation other than exp or softplus is not implemented in scviR".into())),
    };
    c.batch_representation = match s("batch_representation").as_deref() {
        None | Some("one-hot") => BatchRepresentation::OneHot,
        Some("embedding") => {
            c.batch_embedding_dim = params
                .get("batch_embedding_kwargs")
                .and_then(|&d| p.get(d, "embedding_dim"))
                .and_then(|i| p.int(i))
                .unwrap_or(5);
            BatchRepresentation::Embedding
        }
        Some(other) => return Err(Error::InvalidInput(format!("batch_representation \"{other}\" is not implemented in scviR"))),
    };
    c.linear_decoder = linear;
    if model == "SCANVI" {
        let unlabeled = state("labels").and_then(|st| p.get(st, "unlabeled_category")).and_then(|i| p.str(i)).map(String::from);
        let n_known = registry.labels.iter().filter(|l| Some(*l) != unlabeled.as_ref()).count();
        if unlabeled.is_some() && registry.labels.last() != unlabeled.as_ref() {
            return Err(bad("the unlabeled category is not the last label (an unexpected scvi-tools layout)"));
        }
        let y_prior = params.get("y_prior").filter(|&&i| !p.is_none(i)).map(|&i| p.numpy_numbers(i).unwrap_or_default()).unwrap_or_default();
        if params.get("labels_groups").is_some_and(|&i| !p.is_none(i)) {
            // scviR's label-group classifier takes a softmax over groups and one within each
            // group; scvi-tools' divides the classifier's logits as if they were probabilities,
            // so the same weights would predict other labels here.
            return Err(Error::InvalidInput(
                "scANVI with labels_groups is not read: scviR's label-group classifier differs from scvi-tools' (see ?scanvi), so its predictions would not be scvi-tools'".into(),
            ));
        }
        c.scanvi = Some(ScanviConfig {
            n_labels: n_known as i64,
            linear_classifier: flag("linear_classifier").unwrap_or(false),
            y_prior,
            ..ScanviConfig::default()
        });
    }
    registry.apply_to(&mut c);
    c.use_size_factor_key = registry.size_factor_key.is_some();
    c.validate()?;
    Ok((c, registry))
}

#[cfg(test)]
mod tests {
    use super::engine_name;

    #[test]
    fn scvi_tools_names_map_to_the_engine_layout() {
        let m = |s: &str| engine_name(s).unwrap();
        assert_eq!(m("z_encoder.encoder.fc_layers.Layer 0.0.weight"), "z_encoder.encoder.layer_0.linear.weight");
        assert_eq!(m("decoder.px_decoder.fc_layers.Layer 1.1.running_var"), "decoder.px_decoder.layer_1.batch_norm.running_var");
        assert_eq!(m("decoder.px_scale_decoder.0.weight"), "decoder.px_scale_decoder.weight");
        assert_eq!(m("decoder.factor_regressor.fc_layers.Layer 0.0.weight"), "decoder.factor_regressor.layer_0.linear.weight");
        assert_eq!(m("classifier.classifier.0.fc_layers.Layer 0.0.weight"), "scanvi.classifier.fc.layer_0.linear.weight");
        assert_eq!(m("classifier.classifier.1.bias"), "scanvi.classifier.out.bias");
        assert_eq!(m("encoder_z2_z1.encoder.fc_layers.Layer 0.1.weight"), "scanvi.encoder_z2_z1.encoder.layer_0.batch_norm.weight");
        assert_eq!(m("decoder_z1_z2.mean_decoder.weight"), "scanvi.decoder_z1_z2.mean_decoder.weight");
        assert_eq!(m("decoder_z1_z2.decoder.fc_layers.Layer 0.0.bias"), "scanvi.decoder_z1_z2.decoder.layer_0.linear.bias");
        assert_eq!(engine_name("z_encoder.encoder.fc_layers.Layer 0.1.num_batches_tracked"), None);
        assert_eq!(m("_embeddings_dict.batch.weight"), "batch_embedding");
    }
}
