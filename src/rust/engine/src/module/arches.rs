//! scArches reference mapping (Lotfollahi et al. 2022; scvi-tools' `ArchesMixin`): a query model
//! is the reference model with its covariate inputs extended by the query's new categories
//! (batches, categorical covariate values). Every reference weight is copied; the columns (or
//! rows) of the new categories start from a fresh initialisation. Training the query model then
//! updates only what the freeze options leave free.
//!
//! Which parameters train (defaults in brackets), as scvi-tools' `_set_params_online_update`:
//! * the new-category columns of every FC layer weight that takes covariates (encoders, decoder,
//!   LDVAE's linear decoder); the whole first layer of the encoder with `freeze_expression =
//!   false` [true], of the decoder with `freeze_decoder_first_layer = false` [true];
//! * the library encoder (latent library size) entirely;
//! * BatchNorm scale and shift of the encoders unless `freeze_batchnorm_encoder` [true], of the
//!   decoders unless `freeze_batchnorm_decoder` [false]; frozen BatchNorm also keeps its running
//!   statistics (momentum 0);
//! * scANVI's classifier with `freeze_classifier = false` [true]; its z2 layers never;
//! * dropout is switched off with `freeze_dropout` [false].
//!
//! Differences by choice, each avoiding a known trap of scvi-tools' hooks:
//! * only the columns of *new* categories train, not those of categories the reference already
//!   had (a query cell sharing a reference category would otherwise move the reference's own
//!   representation of it);
//! * a frozen entry never changes, whatever the weight decay: the optimiser skips it, where
//!   scvi-tools' zeroed gradients still let L2 weight decay shrink "frozen" weights (hence the
//!   usual advice to train queries with `weight_decay = 0`);
//! * the new batches' columns of a gene-batch dispersion and the new rows of a batch embedding
//!   train (scvi-tools leaves them at their random initialisation);
//! * the classifier's BatchNorm statistics stay frozen with the classifier.

use super::vae::Vae;
use crate::data::registry::library_prior;
use crate::data::{CountSource, Registry};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// The entries of one tensor that belong to the query's new categories: half-open ranges along
/// `axis`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NewEntries {
    pub name: String,
    pub axis: i64,
    pub ranges: Vec<(i64, i64)>,
}

/// How a query model trains (scvi-tools' `load_query_data` options, with its defaults).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Train every parameter (the other options are then ignored).
    pub unfrozen: bool,
    pub freeze_dropout: bool,
    pub freeze_expression: bool,
    pub freeze_decoder_first_layer: bool,
    pub freeze_batchnorm_encoder: bool,
    pub freeze_batchnorm_decoder: bool,
    pub freeze_classifier: bool,
    /// Filled when the query model is built.
    pub new_entries: Vec<NewEntries>,
    /// Batches and cells of the reference, for the record.
    pub reference_batches: Vec<String>,
    pub reference_n_cells: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            unfrozen: false,
            freeze_dropout: false,
            freeze_expression: true,
            freeze_decoder_first_layer: true,
            freeze_batchnorm_encoder: true,
            freeze_batchnorm_decoder: false,
            freeze_classifier: true,
            new_entries: vec![],
            reference_batches: vec![],
            reference_n_cells: 0,
        }
    }
}

/// The reference's registry extended by the query's categories: batches and categorical
/// covariate values the reference lacks are appended, in the order given. Genes, continuous
/// covariates and size factors stay the reference's, and so do the labels, except that a scANVI
/// reference (`scanvi_labels`: its number of known labels) whose cells were all labelled gains
/// the unlabelled category its query cells need.
pub fn extend_registry(
    reference: &Registry,
    batches: &[String],
    categorical: &[(String, Vec<String>)],
    scanvi_labels: Option<i64>,
) -> Result<Registry> {
    let mut out = reference.clone();
    if scanvi_labels.is_some_and(|n| out.labels.len() as i64 == n) {
        let name = ["Unknown", "unlabeled", "_unlabeled_"].into_iter().find(|n| !out.labels.iter().any(|l| l == n)).unwrap();
        out.labels.push(name.to_string());
    }
    // A model fitted without batches has the single placeholder batch "0" and no batch key.
    let has_batches = reference.batch_key.is_some() || reference.batches.iter().any(|b| b != "0");
    if !has_batches {
        if batches.iter().any(|b| !reference.batches.contains(b)) {
            return Err(Error::InvalidInput(
                "the reference model was trained without a batch key, so the query cannot add batches: give no batch for the query, or train the reference with a batch key".into(),
            ));
        }
    } else {
        for b in batches {
            if !out.batches.contains(b) {
                out.batches.push(b.clone());
            }
        }
    }
    let ref_keys: Vec<&str> = reference.categorical_covariates.iter().map(|(k, _)| k.as_str()).collect();
    let query_keys: Vec<&str> = categorical.iter().map(|(k, _)| k.as_str()).collect();
    if ref_keys != query_keys {
        return Err(Error::InvalidInput(format!(
            "the reference model has the categorical covariates [{}]; the query gives [{}]",
            ref_keys.join(", "),
            query_keys.join(", ")
        )));
    }
    for ((_, cats), (_, given)) in out.categorical_covariates.iter_mut().zip(categorical) {
        for c in given {
            if !cats.contains(c) {
                cats.push(c.clone());
            }
        }
    }
    Ok(out)
}

/// Builds the untrained query model: the reference's architecture for `registry` (the extended
/// one), every reference weight copied, the new categories' entries freshly initialised (seeded
/// by the caller) and the latent-library prior of the new batches computed from the query cells
/// (also written into `registry`).
pub fn query_model<'a>(
    reference: &Vae,
    registry: &mut Registry,
    counts: impl Into<CountSource<'a>>,
    batch_codes: &[i32],
    options: QueryConfig,
    device: Device,
) -> Result<Vae> {
    let counts = counts.into();
    let mut cfg = reference.config.clone();
    registry.apply_to(&mut cfg);
    if cfg.n_genes != reference.config.n_genes {
        return Err(Error::InvalidInput("the query must have the reference's genes, in its order (prepare_query)".into()));
    }
    cfg.query = Some(options);
    let n_batch = registry.n_batch();
    if batch_codes.len() != counts.n_cells() || batch_codes.iter().any(|&b| b < 0 || b as usize >= n_batch) {
        return Err(Error::InvalidInput("one batch code of the extended registry is needed per query cell".into()));
    }
    let (mut means, mut vars) = library_prior(counts, batch_codes, n_batch);
    let n_old = registry.library_log_means.len().min(n_batch);
    means[..n_old].copy_from_slice(&registry.library_log_means[..n_old]);
    vars[..n_old].copy_from_slice(&registry.library_log_vars[..n_old.min(registry.library_log_vars.len())]);
    registry.library_log_means = means.clone();
    registry.library_log_vars = vars.clone();
    let mut query = Vae::new(cfg, device, Some((&means, &vars)))?;
    let new_entries = copy_reference(&mut query, reference)?;
    if let Some(q) = query.config.query.as_mut() {
        q.new_entries = new_entries;
    }
    Ok(query)
}

/// Copies the reference's weights into the query model; returns the entries left to the new
/// categories.
fn copy_reference(query: &mut Vae, reference: &Vae) -> Result<Vec<NewEntries>> {
    let from = reference.vs.variables();
    let mut to = query.vs.variables();
    let ref_layouts: HashMap<String, crate::nn::BlockLayout> = reference.fc_layouts().into_iter().map(|l| (l.weight.clone(), l)).collect();
    let query_layouts: HashMap<String, crate::nn::BlockLayout> = query.fc_layouts().into_iter().map(|l| (l.weight.clone(), l)).collect();
    let mut names: Vec<String> = to.keys().cloned().collect();
    names.sort();
    let mut new_entries = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for name in names {
            let dst = to.get_mut(&name).unwrap();
            let src = from
                .get(&name)
                .ok_or_else(|| Error::ModelFormat(format!("the reference model has no tensor {name}")))?
                .to_device(dst.device());
            let (ds, ss) = (dst.size(), src.size());
            if ds == ss {
                dst.copy_(&src);
                continue;
            }
            // (axis, [(source start, destination start, shared length)], new ranges, zero ranges)
            let (axis, pieces, ranges, zeros) = if let (Some(ql), Some(rl)) = (query_layouts.get(&name), ref_layouts.get(&name)) {
                segment_map(ql, rl)
            } else if (name == "px_r" && ds.len() == 2) || name == "library_log_means" || name == "library_log_vars" {
                (1, vec![(0, 0, ss[1])], vec![(ss[1], ds[1])], vec![])
            } else if name == "batch_embedding" {
                (0, vec![(0, 0, ss[0])], vec![(ss[0], ds[0])], vec![])
            } else {
                return Err(Error::ModelFormat(format!("tensor {name} changes shape from {ss:?} to {ds:?} in the query model")));
            };
            for (s0, d0, len) in pieces {
                if len > 0 {
                    dst.narrow(axis, d0, len).copy_(&src.narrow(axis, s0, len));
                }
            }
            for (a, b) in zeros {
                let _ = dst.narrow(axis, a, b - a).zero_();
            }
            let ranges: Vec<(i64, i64)> = ranges.into_iter().filter(|(a, b)| b > a).collect();
            if !ranges.is_empty() && !name.starts_with("library_log_") {
                new_entries.push(NewEntries { name, axis, ranges });
            }
        }
        Ok(())
    })?;
    Ok(new_entries)
}

type SegmentMap = (i64, Vec<(i64, i64, i64)>, Vec<(i64, i64)>, Vec<(i64, i64)>);

/// Column correspondence of an FC weight between the reference layout and the query layout:
/// the base columns, then each covariate's reference columns; the rest of each segment is new.
/// A covariate the reference had with a single category took no columns there (it is dropped);
/// in the query its first column, that category's, is zero, so the reference's cells are
/// computed exactly as the reference computed them, and only the new categories' columns train.
fn segment_map(q: &crate::nn::BlockLayout, r: &crate::nn::BlockLayout) -> SegmentMap {
    let mut pieces = vec![(0, 0, r.base.min(q.base))];
    let (mut ranges, mut zeros) = (Vec::new(), Vec::new());
    let (mut s, mut d) = (r.base, q.base);
    for (k, &w) in q.widths.iter().enumerate() {
        let old = r.widths.get(k).copied().unwrap_or(0);
        let shared = old.min(w);
        pieces.push((s, d, shared));
        if old == 0 && w > 0 {
            zeros.push((d, d + 1));
            ranges.push((d + 1, d + w));
        } else {
            ranges.push((d + shared, d + w));
        }
        s += old;
        d += w;
    }
    (1, pieces, ranges, zeros)
}

/// What an optimiser may change in a parameter.
enum Freedom {
    Full,
    /// Only the query's new-category entries.
    NewEntries,
    Frozen,
}

fn freedom(name: &str, q: &QueryConfig, layouts: &HashMap<String, crate::nn::BlockLayout>, biases: &HashMap<String, usize>) -> Freedom {
    use Freedom::*;
    if name.starts_with("l_encoder.") {
        return Full;
    }
    if name.starts_with("scanvi.classifier") {
        return if q.freeze_classifier { Frozen } else { Full };
    }
    if name.contains(".batch_norm.") {
        let encoder = name.starts_with("z_encoder.") || name.starts_with("scanvi.encoder_z2_z1.");
        let free = if encoder { !q.freeze_batchnorm_encoder } else { !q.freeze_batchnorm_decoder };
        return if free { Full } else { Frozen };
    }
    if name.starts_with("scanvi.") {
        return Frozen;
    }
    let index = layouts.get(name).map(|l| l.index).or_else(|| biases.get(name).copied());
    if let Some(i) = index {
        let first_free = i == 0
            && ((name.starts_with("z_encoder.encoder.") && !q.freeze_expression)
                || (name.starts_with("decoder.px_decoder.") && !q.freeze_decoder_first_layer));
        return if first_free {
            Full
        } else if layouts.contains_key(name) {
            NewEntries
        } else {
            Frozen
        };
    }
    if name == "px_r" || name == "batch_embedding" {
        return NewEntries;
    }
    Frozen
}

/// The parameters an optimiser updates, each with a 0/1 mask of the entries it may change (None:
/// all). For a query model, frozen parameters stop requiring gradients.
pub fn trainable_parameters(vae: &Vae) -> Vec<(Tensor, Option<Tensor>)> {
    let mut vars: Vec<(String, Tensor)> = vae.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let q = match vae.config.frozen() {
        None => return vars.into_iter().map(|(_, t)| (t, None)).collect(),
        Some(q) => q,
    };
    let layouts: HashMap<String, crate::nn::BlockLayout> = vae.fc_layouts().into_iter().map(|l| (l.weight.clone(), l)).collect();
    let biases: HashMap<String, usize> = layouts.values().filter_map(|l| l.bias.clone().map(|b| (b, l.index))).collect();
    let mut out = Vec::new();
    for (name, t) in vars {
        let entries = q.new_entries.iter().find(|e| e.name == name);
        match (freedom(&name, q, &layouts, &biases), entries) {
            (Freedom::Full, _) => out.push((t, None)),
            (Freedom::NewEntries, Some(e)) => {
                let mask = Tensor::zeros(t.size(), (Kind::Float, t.device()));
                for &(a, b) in &e.ranges {
                    let _ = mask.narrow(e.axis, a, b - a).fill_(1.0);
                }
                out.push((t, Some(mask)));
            }
            _ => {
                let _ = t.set_requires_grad(false);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Counts;
    use crate::module::VaeConfig;
    use crate::TORCH_RNG;

    fn registry(batches: &[&str]) -> Registry {
        Registry {
            genes: (0..20).map(|g| format!("g{g}")).collect(),
            batches: batches.iter().map(|b| b.to_string()).collect(),
            batch_key: Some("batch".into()),
            ..Default::default()
        }
    }

    #[test]
    fn registry_extension_appends_new_categories() {
        let mut r = registry(&["a", "b"]);
        r.categorical_covariates = vec![("donor".into(), vec!["d1".into()])];
        let q = extend_registry(&r, &["b".into(), "c".into()], &[("donor".into(), vec!["d2".into(), "d1".into()])], None).unwrap();
        assert_eq!(q.batches, vec!["a", "b", "c"]);
        assert_eq!(q.categorical_covariates[0].1, vec!["d1", "d2"]);
        assert!(extend_registry(&r, &["c".into()], &[], None).is_err(), "covariate keys must match");
        let mut labelled = r.clone();
        labelled.categorical_covariates.clear();
        labelled.labels = vec!["B".into(), "T".into()];
        assert_eq!(extend_registry(&labelled, &[], &[], Some(2)).unwrap().labels, vec!["B", "T", "Unknown"]);
        let mut none = registry(&["0"]);
        none.batch_key = None;
        assert!(extend_registry(&none, &["x".into()], &[], None).is_err());
        // Batches given as a vector (no key) still extend.
        let mut keyless = registry(&["a"]);
        keyless.batch_key = None;
        assert_eq!(extend_registry(&keyless, &["x".into()], &[], None).unwrap().batches, vec!["a", "x"]);
    }

    #[test]
    fn query_weights_extend_the_reference() {
        let _turn = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let _ = tch::manual_seed(1);
        let r = registry(&["a", "b"]);
        let mut cfg = VaeConfig::new(20, 2);
        cfg.n_layers = 2;
        cfg.n_hidden = 8;
        cfg.dispersion = crate::module::Dispersion::GeneBatch;
        r.apply_to(&mut cfg);
        let reference = Vae::new(cfg, Device::Cpu, None).unwrap();
        let mut q = extend_registry(&r, &["c".into()], &[], None).unwrap();
        let (indptr, indices, values) = (vec![0, 1, 2], vec![0, 3], vec![2.0, 5.0]);
        let counts = Counts::from_csr(2, 20, &indptr, &indices, &values).unwrap();
        let query = query_model(&reference, &mut q, counts, &[2, 2], QueryConfig::default(), Device::Cpu).unwrap();
        let (rv, qv) = (reference.vs.variables(), query.vs.variables());
        // First decoder layer: [z (10), batch one-hot (2 -> 3)]; deeply injected second layer too.
        let name = "decoder.px_decoder.layer_0.linear.weight";
        assert_eq!(qv[name].size(), vec![8, 13]);
        assert!(qv[name].narrow(1, 0, 12).equal(&rv[name]));
        let e = query.config.query.as_ref().unwrap().new_entries.iter().find(|e| e.name == name).unwrap();
        assert_eq!(e.ranges, vec![(12, 13)]);
        assert!(qv["px_r"].narrow(1, 0, 2).equal(&rv["px_r"]));
        // Parameters that do not see the batch are copied unchanged.
        assert!(qv["z_encoder.mean_encoder.weight"].equal(&rv["z_encoder.mean_encoder.weight"]));
        let params = trainable_parameters(&query);
        // Masked: decoder layers 0 and 1 (new columns) and px_r's new column. Whole: the decoder's
        // BatchNorm scales and shifts (freeze_batchnorm_decoder = false). The rest is frozen.
        let masked: Vec<&Tensor> = params.iter().filter_map(|(_, m)| m.as_ref()).collect();
        assert_eq!(masked.len(), 3);
        assert_eq!(params.len() - masked.len(), 4);
        let free: f64 = masked.iter().map(|m| m.sum(Kind::Double).double_value(&[])).sum();
        assert_eq!(free, (8 + 8 + 20) as f64);
        assert!(!query.vs.variables()["z_encoder.mean_encoder.weight"].requires_grad());
        // freeze_dropout: the query's networks run without dropout even in training mode.
        let no_dropout = QueryConfig { freeze_dropout: true, ..QueryConfig::default() };
        let quiet = query_model(&reference, &mut q.clone(), counts, &[2, 2], no_dropout, Device::Cpu).unwrap();
        let cov = crate::data::Covariates::default();
        let mut builder = crate::data::MinibatchBuilder::new(counts, &[2, 2], &cov, Device::Cpu);
        let mb = builder.build(&[0, 1]);
        let twice = |v: &Vae| (v.inference(&mb, true).qz.q_mean, v.inference(&mb, true).qz.q_mean);
        let (a, b) = twice(&quiet);
        assert!(a.equal(&b), "no dropout: training-mode passes agree");
        let (a, b) = twice(&query);
        assert!(!a.equal(&b), "dropout 0.1: training-mode passes differ");
        let unfrozen = QueryConfig { unfrozen: true, ..QueryConfig::default() };
        let open = query_model(&reference, &mut q, counts, &[2, 2], unfrozen, Device::Cpu).unwrap();
        assert!(trainable_parameters(&open).iter().all(|(_, m)| m.is_none()));
    }

    #[test]
    fn split_training_product_matches_the_full_one() {
        let _turn = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let r = registry(&["a", "b"]);
        let mut cfg = VaeConfig::new(20, 2);
        cfg.n_hidden = 8;
        cfg.dropout_rate = 0.0;
        cfg.encode_covariates = true;
        r.apply_to(&mut cfg);
        let _ = tch::manual_seed(3);
        let reference = Vae::new(cfg, Device::Cpu, None).unwrap();
        let (indptr, indices, values) = (vec![0, 2, 3, 5], vec![0, 3, 1, 2, 19], vec![2.0, 5.0, 1.0, 3.0, 4.0]);
        let counts = Counts::from_csr(3, 20, &indptr, &indices, &values).unwrap();
        let codes = [2, 0, 2];
        let build = |options: QueryConfig| {
            let mut q = extend_registry(&r, &["c".into()], &[], None).unwrap();
            let _ = tch::manual_seed(5);
            query_model(&reference, &mut q, counts, &codes, options, Device::Cpu).unwrap()
        };
        let frozen = build(QueryConfig::default());
        let open = build(QueryConfig { unfrozen: true, ..QueryConfig::default() });
        let cov = crate::data::Covariates::default();
        let mut builder = crate::data::MinibatchBuilder::new(counts, &codes, &cov, Device::Cpu);
        let mb = builder.build(&[0, 1, 2]);
        let (a, b) = (frozen.inference(&mb, true).qz.q_mean, open.inference(&mb, true).qz.q_mean);
        assert!(a.allclose(&b, 1e-5, 1e-6, false), "split and concatenated products agree");
        // The new column's gradient is the same either way.
        a.sum(Kind::Float).backward();
        b.sum(Kind::Float).backward();
        let name = "z_encoder.encoder.layer_0.linear.weight";
        let (ga, gb) = (frozen.vs.variables()[name].grad(), open.vs.variables()[name].grad());
        assert!(ga.narrow(1, 22, 1).allclose(&gb.narrow(1, 22, 1), 1e-5, 1e-6, false));
    }
}
