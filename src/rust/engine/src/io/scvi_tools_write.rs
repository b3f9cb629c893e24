//! Writing a model in scvi-tools' save format (`model.pt`: a torch.save zip archive holding the
//! pickled `{"model_state_dict", "var_names", "attr_dict"}`), so that
//! `scvi.model.SCVI.load(dir, adata)` (or `LinearSCVI` / `SCANVI`) reads it. The pickle is
//! written directly (protocol 3), as are the zip entries (stored, 64-byte aligned data, CRC-32).

use crate::data::Registry;
use crate::error::{Error, Result};
use crate::module::config::{BatchRepresentation, LatentDistribution, VarActivation};
use crate::module::{Dispersion, Vae, VaeConfig};
use crate::distributions::GeneLikelihood;
use tch::{Device, Kind};

/// A Python value to pickle.
#[derive(Clone, Debug)]
pub enum Py {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Py>),
    Tuple(Vec<Py>),
    Dict(Vec<(Py, Py)>),
    Global(String, String),
    /// `callable(*args)`.
    Reduce(Box<Py>, Box<Py>),
    /// `obj.__setstate__(state)`.
    Build(Box<Py>, Box<Py>),
    Persistent(Box<Py>),
    OrderedDict(Vec<(Py, Py)>),
}

fn s(v: &str) -> Py {
    Py::Str(v.to_string())
}

fn global(m: &str, n: &str) -> Py {
    Py::Global(m.to_string(), n.to_string())
}

fn dict(items: Vec<(&str, Py)>) -> Py {
    Py::Dict(items.into_iter().map(|(k, v)| (s(k), v)).collect())
}

/// A numpy array: object dtype for strings, int64 for integers.
fn np_array(dtype: &str, n: usize, data: Py) -> Py {
    let dt = Py::Build(
        Box::new(Py::Reduce(Box::new(global("numpy", "dtype")), Box::new(Py::Tuple(vec![s(dtype), Py::Bool(false), Py::Bool(true)])))),
        Box::new(Py::Tuple(vec![
            Py::Int(3),
            s(if dtype == "O8" { "|" } else { "<" }),
            Py::None,
            Py::None,
            Py::None,
            Py::Int(-1),
            Py::Int(-1),
            Py::Int(if dtype == "O8" { 63 } else { 0 }),
        ])),
    );
    let arr = Py::Reduce(
        Box::new(global("numpy.core.multiarray", "_reconstruct")),
        Box::new(Py::Tuple(vec![global("numpy", "ndarray"), Py::Tuple(vec![Py::Int(0)]), Py::Bytes(b"b".to_vec())])),
    );
    Py::Build(Box::new(arr), Box::new(Py::Tuple(vec![Py::Int(1), Py::Tuple(vec![Py::Int(n as i64)]), dt, Py::Bool(false), data])))
}

pub fn np_strings(v: &[String]) -> Py {
    np_array("O8", v.len(), Py::List(v.iter().map(|x| s(x)).collect()))
}

pub fn np_ints(v: &[i64]) -> Py {
    np_array("i8", v.len(), Py::Bytes(v.iter().flat_map(|x| x.to_le_bytes()).collect()))
}

/// Protocol-3 pickle of `v`; persistent ids are emitted as given.
pub fn pickle(v: &Py) -> Vec<u8> {
    fn emit(v: &Py, out: &mut Vec<u8>) {
        match v {
            Py::None => out.push(b'N'),
            Py::Bool(b) => out.push(if *b { 0x88 } else { 0x89 }),
            Py::Int(i) => {
                if let Ok(x) = i32::try_from(*i) {
                    out.push(b'J');
                    out.extend(x.to_le_bytes());
                } else {
                    out.push(0x8a);
                    out.push(8);
                    out.extend(i.to_le_bytes());
                }
            }
            Py::Float(f) => {
                out.push(b'G');
                out.extend(f.to_be_bytes());
            }
            Py::Str(x) => {
                out.push(b'X');
                out.extend((x.len() as u32).to_le_bytes());
                out.extend(x.as_bytes());
            }
            Py::Bytes(b) => {
                out.push(b'B');
                out.extend((b.len() as u32).to_le_bytes());
                out.extend(b);
            }
            Py::List(items) => {
                out.push(b']');
                if !items.is_empty() {
                    out.push(b'(');
                    items.iter().for_each(|x| emit(x, out));
                    out.push(b'e');
                }
            }
            Py::Tuple(items) => {
                if items.is_empty() {
                    out.push(b')');
                } else {
                    out.push(b'(');
                    items.iter().for_each(|x| emit(x, out));
                    out.push(b't');
                }
            }
            Py::Dict(items) | Py::OrderedDict(items) => {
                if matches!(v, Py::OrderedDict(_)) {
                    emit(&global("collections", "OrderedDict"), out);
                    out.push(b')');
                    out.push(b'R');
                } else {
                    out.push(b'}');
                }
                if !items.is_empty() {
                    out.push(b'(');
                    for (k, x) in items {
                        emit(k, out);
                        emit(x, out);
                    }
                    out.push(b'u');
                }
            }
            Py::Global(m, n) => {
                out.push(b'c');
                out.extend(m.as_bytes());
                out.push(b'\n');
                out.extend(n.as_bytes());
                out.push(b'\n');
            }
            Py::Reduce(f, args) => {
                emit(f, out);
                emit(args, out);
                out.push(b'R');
            }
            Py::Build(obj, state) => {
                emit(obj, out);
                emit(state, out);
                out.push(b'b');
            }
            Py::Persistent(pid) => {
                emit(pid, out);
                out.push(b'Q');
            }
        }
    }
    let mut out = vec![0x80, 3];
    emit(v, &mut out);
    out.push(b'.');
    out
}

/// A zip archive of stored entries whose data start on 64-byte boundaries (as torch writes).
pub fn zip_stored(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len();
        let crc = crc32fast::hash(data);
        let base = offset + 30 + name.len() + 4;
        let pad = (64 - base % 64) % 64;
        let mut local = Vec::new();
        local.extend(0x0403_4b50u32.to_le_bytes());
        local.extend(20u16.to_le_bytes()); // version needed
        local.extend(0u16.to_le_bytes()); // flags
        local.extend(0u16.to_le_bytes()); // stored
        local.extend(0u16.to_le_bytes()); // time
        local.extend(0u16.to_le_bytes()); // date
        local.extend(crc.to_le_bytes());
        local.extend((data.len() as u32).to_le_bytes());
        local.extend((data.len() as u32).to_le_bytes());
        local.extend((name.len() as u16).to_le_bytes());
        local.extend(((pad + 4) as u16).to_le_bytes());
        local.extend(name.as_bytes());
        // Padding extra field ("FB"), so the data is aligned.
        local.extend(0x4246u16.to_le_bytes());
        local.extend((pad as u16).to_le_bytes());
        local.extend(std::iter::repeat(b'Z').take(pad));
        out.extend(local);
        out.extend(data);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend(20u16.to_le_bytes());
        central.extend(20u16.to_le_bytes());
        central.extend(0u16.to_le_bytes());
        central.extend(0u16.to_le_bytes());
        central.extend(0u16.to_le_bytes());
        central.extend(0u16.to_le_bytes());
        central.extend(crc.to_le_bytes());
        central.extend((data.len() as u32).to_le_bytes());
        central.extend((data.len() as u32).to_le_bytes());
        central.extend((name.len() as u16).to_le_bytes());
        central.extend(0u16.to_le_bytes()); // extra
        central.extend(0u16.to_le_bytes()); // comment
        central.extend(0u16.to_le_bytes()); // disk
        central.extend(0u16.to_le_bytes()); // internal attributes
        central.extend(0u32.to_le_bytes()); // external attributes
        central.extend((offset as u32).to_le_bytes());
        central.extend(name.as_bytes());
    }
    let dir_offset = out.len();
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend((dir_offset as u32).to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

/// This engine's parameter name in scvi-tools' layout.
pub fn scvi_tools_name(name: &str, linear_classifier: bool) -> String {
    let mut parts: Vec<String> = Vec::new();
    let comps: Vec<&str> = name.split('.').collect();
    let mut i = 0;
    while i < comps.len() {
        if let Some(k) = comps[i].strip_prefix("layer_") {
            if let Some(which) = comps.get(i + 1).and_then(|w| match *w {
                "linear" => Some("0"),
                "batch_norm" => Some("1"),
                _ => None,
            }) {
                parts.push("fc_layers".into());
                parts.push(format!("Layer {k}"));
                parts.push(which.into());
                i += 2;
                continue;
            }
        }
        parts.push(comps[i].to_string());
        i += 1;
    }
    let mut n = parts.join(".");
    if n == "batch_embedding" {
        return "_embeddings_dict.batch.weight".into();
    }
    n = n.replace("decoder.px_scale_decoder.weight", "decoder.px_scale_decoder.0.weight");
    n = n.replace("decoder.px_scale_decoder.bias", "decoder.px_scale_decoder.0.bias");
    if let Some(rest) = n.strip_prefix("scanvi.classifier.fc.") {
        n = format!("classifier.classifier.0.{rest}");
    } else if let Some(rest) = n.strip_prefix("scanvi.classifier.out.") {
        n = format!("classifier.classifier.{}.{rest}", if linear_classifier { 0 } else { 1 });
    } else if let Some(rest) = n.strip_prefix("scanvi.") {
        n = rest.to_string();
    }
    n
}

fn refuse(m: String) -> Error {
    Error::InvalidInput(format!("{m}; scvi-tools' format cannot hold it yet"))
}

/// Writes `dir/model.pt` for a model named `model` ("SCVI", "LDVAE" or "SCANVI").
pub fn save_dir(dir: &std::path::Path, model: &str, vae: &Vae, registry: &Registry, scvi_version: &str) -> Result<()> {
    let c = &vae.config;
    if c.scanvi.as_ref().is_some_and(|s| s.use_labels_groups) {
        return Err(Error::InvalidInput(
            "scANVI with label groups cannot be written for scvi-tools: scviR's label-group classifier differs from scvi-tools' (see ?scanvi), so scvi-tools would predict other labels with these weights".into(),
        ));
    }
    // A reference-mapping query model is written as the model it is (reference and query
    // categories together); its freezing rules only apply to training it here.
    let class = match model {
        "SCVI" => "SCVI",
        "LDVAE" => "LinearSCVI",
        "SCANVI" => "SCANVI",
        other => return Err(refuse(format!("model type {other}"))),
    };
    // The state dict: this engine's tensors, plus what scvi-tools' module has and this engine
    // does not use (the library encoder of an observed-library model, BatchNorm counters).
    let mut state: Vec<(String, Vec<i64>, Vec<f32>)> = Vec::new();
    let linear_classifier = c.scanvi.as_ref().is_some_and(|s| s.linear_classifier);
    let mut vars: Vec<(String, tch::Tensor)> = vae.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in &vars {
        let t = t.to_kind(Kind::Float).to_device(Device::Cpu).contiguous();
        let mut v = vec![0f32; t.numel()];
        t.copy_data(&mut v, t.numel());
        state.push((scvi_tools_name(name, linear_classifier), t.size(), v));
    }
    if c.use_observed_lib_size {
        let w0 = vars.iter().find(|(n, _)| n == "z_encoder.encoder.layer_0.linear.weight").map(|(_, t)| t.size()).unwrap_or_default();
        let n_in = *w0.get(1).unwrap_or(&0);
        let h = c.n_hidden;
        let zeros = |shape: Vec<i64>| {
            let n = shape.iter().product::<i64>() as usize;
            (shape, vec![0f32; n])
        };
        let ones = |n: i64| (vec![n], vec![1f32; n as usize]);
        let mut add = |n: &str, (shape, v): (Vec<i64>, Vec<f32>)| state.push((n.to_string(), shape, v));
        add("l_encoder.encoder.fc_layers.Layer 0.0.weight", zeros(vec![h, n_in]));
        add("l_encoder.encoder.fc_layers.Layer 0.0.bias", zeros(vec![h]));
        if c.use_batch_norm_encoder {
            add("l_encoder.encoder.fc_layers.Layer 0.1.weight", ones(h));
            add("l_encoder.encoder.fc_layers.Layer 0.1.bias", zeros(vec![h]));
            add("l_encoder.encoder.fc_layers.Layer 0.1.running_mean", zeros(vec![h]));
            add("l_encoder.encoder.fc_layers.Layer 0.1.running_var", ones(h));
        }
        add("l_encoder.mean_encoder.weight", zeros(vec![1, h]));
        add("l_encoder.mean_encoder.bias", zeros(vec![1]));
        add("l_encoder.var_encoder.weight", zeros(vec![1, h]));
        add("l_encoder.var_encoder.bias", zeros(vec![1]));
    }
    // scvi-tools' DecoderSCVI always has its dispersion and zero-inflation heads, and its VAE a
    // per-gene px_r for "gene" dispersion even with a Poisson likelihood: zeros where unused.
    let has = |state: &Vec<(String, Vec<i64>, Vec<f32>)>, n: &str| state.iter().any(|(x, _, _)| x == n);
    if !c.linear_decoder {
        for head in ["decoder.px_r_decoder", "decoder.px_dropout_decoder"] {
            if !has(&state, &format!("{head}.weight")) {
                state.push((format!("{head}.weight"), vec![c.n_genes, c.n_hidden], vec![0.0; (c.n_genes * c.n_hidden) as usize]));
                state.push((format!("{head}.bias"), vec![c.n_genes], vec![0.0; c.n_genes as usize]));
            }
        }
    }
    if c.dispersion == Dispersion::Gene && !has(&state, "px_r") {
        state.push(("px_r".into(), vec![c.n_genes], vec![0.0; c.n_genes as usize]));
    }
    if let Some(sc) = &c.scanvi {
        let n = sc.n_labels as usize;
        let prior: Vec<f32> = if sc.y_prior.is_empty() {
            vec![1.0 / n as f32; n]
        } else {
            let total: f64 = sc.y_prior.iter().sum();
            sc.y_prior.iter().map(|p| (p / total) as f32).collect()
        };
        state.push(("y_prior".into(), vec![1, n as i64], prior));
    }
    let counters: Vec<String> = state.iter().filter(|(n, _, _)| n.ends_with(".1.running_mean")).map(|(n, _, _)| n.replace("running_mean", "num_batches_tracked")).collect();

    let mut storages: Vec<(String, Vec<u8>)> = Vec::new();
    let tensor = |key: usize, kind: &str, size: &[i64]| -> Py {
        let numel: i64 = size.iter().product();
        let mut stride = vec![1i64; size.len()];
        for d in (0..size.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * size[d + 1];
        }
        Py::Reduce(
            Box::new(global("torch._utils", "_rebuild_tensor_v2")),
            Box::new(Py::Tuple(vec![
                Py::Persistent(Box::new(Py::Tuple(vec![s("storage"), global("torch", kind), s(&key.to_string()), s("cpu"), Py::Int(numel)]))),
                Py::Int(0),
                Py::Tuple(size.iter().map(|&x| Py::Int(x)).collect()),
                Py::Tuple(stride.into_iter().map(Py::Int).collect()),
                Py::Bool(false),
                Py::OrderedDict(vec![]),
            ])),
        )
    };
    let mut items = Vec::new();
    for (name, size, v) in &state {
        let key = storages.len();
        storages.push((key.to_string(), v.iter().flat_map(|x| x.to_le_bytes()).collect()));
        items.push((s(name), tensor(key, "FloatStorage", size)));
    }
    for name in &counters {
        let key = storages.len();
        storages.push((key.to_string(), 0i64.to_le_bytes().to_vec()));
        items.push((s(name), tensor(key, "LongStorage", &[])));
    }

    let attr = attr_dict(class, c, registry, scvi_version)?;
    let root = dict(vec![
        ("model_state_dict", Py::OrderedDict(items)),
        ("var_names", np_strings(&registry.genes)),
        ("attr_dict", attr),
    ]);
    let mut entries = vec![("model/data.pkl".to_string(), pickle(&root))];
    entries.push(("model/byteorder".to_string(), b"little".to_vec()));
    for (key, bytes) in storages {
        entries.push((format!("model/data/{key}"), bytes));
    }
    entries.push(("model/version".to_string(), b"3\n".to_vec()));
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("model.pt"), zip_stored(&entries))?;
    Ok(())
}

fn attr_dict(class: &str, c: &VaeConfig, r: &Registry, scvi_version: &str) -> Result<Py> {
    let both = |e: bool, d: bool| s(if e && d { "both" } else if e { "encoder" } else if d { "decoder" } else { "none" });
    let dispersion = match c.dispersion {
        Dispersion::Gene => "gene",
        Dispersion::GeneBatch => "gene-batch",
        Dispersion::GeneLabel => "gene-label",
        Dispersion::GeneCell => "gene-cell",
    };
    let likelihood = match c.gene_likelihood {
        GeneLikelihood::Zinb => "zinb",
        GeneLikelihood::Nb => "nb",
        GeneLikelihood::Poisson => "poisson",
        GeneLikelihood::Normal => "normal",
    };
    let latent = if c.latent_distribution == LatentDistribution::LogisticNormal { "ln" } else { "normal" };
    let mut non_kwargs = vec![
        ("n_hidden", Py::Int(c.n_hidden)),
        ("n_latent", Py::Int(c.n_latent)),
        ("n_layers", Py::Int(c.n_layers)),
        ("dropout_rate", Py::Float(c.dropout_rate)),
        ("dispersion", s(dispersion)),
        ("gene_likelihood", s(likelihood)),
        ("use_observed_lib_size", Py::Bool(c.use_observed_lib_size)),
        ("latent_distribution", s(latent)),
    ];
    let mut kwargs = vec![
        ("log_variational", Py::Bool(c.log_variational)),
        ("encode_covariates", Py::Bool(c.encode_covariates)),
        ("deeply_inject_covariates", Py::Bool(c.deeply_inject_covariates)),
    ];
    if c.var_activation == VarActivation::Softplus {
        kwargs.push(("var_activation", global("torch.nn.functional", "softplus")));
    }
    if c.batch_representation == BatchRepresentation::Embedding {
        kwargs.push(("batch_representation", s("embedding")));
        kwargs.push(("batch_embedding_kwargs", dict(vec![("embedding_dim", Py::Int(c.batch_embedding_dim))])));
    }
    if c.linear_decoder {
        // LinearSCVI's module takes a single batch-norm and layer-norm switch.
        if c.use_batch_norm_encoder != c.use_batch_norm_decoder || c.use_layer_norm_encoder || c.use_layer_norm_decoder {
            return Err(refuse("an LDVAE with different encoder / decoder normalisation".into()));
        }
        kwargs.push(("use_batch_norm", Py::Bool(c.use_batch_norm_encoder)));
    } else {
        kwargs.push(("use_batch_norm", both(c.use_batch_norm_encoder, c.use_batch_norm_decoder)));
        kwargs.push(("use_layer_norm", both(c.use_layer_norm_encoder, c.use_layer_norm_decoder)));
    }
    if let Some(sc) = &c.scanvi {
        // A non-uniform y_prior travels in the state dict, which scvi-tools loads over the
        // constructor's uniform one.
        non_kwargs.push(("linear_classifier", Py::Bool(sc.linear_classifier)));
    }
    let init = dict(vec![("non_kwargs", dict(non_kwargs)), ("kwargs", dict(vec![("kwargs", dict(kwargs))]))]);

    let has_batch = r.batch_key.is_some() || r.batches.iter().any(|b| b != "0");
    let batch_key = if has_batch { Some(r.batch_key.clone().unwrap_or_else(|| "batch".into())) } else { None };
    let scanvi = c.scanvi.is_some();
    let labels_key = if scanvi || !r.labels.is_empty() { Some(r.labels_key.clone().unwrap_or_else(|| "labels".into())) } else { None };
    let key_or_none = |k: &Option<String>| k.as_ref().map_or(Py::None, |x| s(x));
    let cat_field = |attr_key: &str, key: &Option<String>, values: &[String], summary: &str, extra: Vec<(&str, Py)>| {
        let (mapping, original) = match key {
            Some(k) => (np_strings(values), s(k)),
            None => (np_ints(&[0]), s(attr_key)),
        };
        let mut st = vec![("categorical_mapping", mapping), ("original_key", original)];
        st.extend(extra);
        let n = if key.is_some() { values.len() } else { 1 };
        dict(vec![
            ("data_registry", dict(vec![("attr_name", s("obs")), ("attr_key", s(attr_key))])),
            ("state_registry", dict(st)),
            ("summary_stats", dict(vec![(summary, Py::Int(n as i64))])),
        ])
    };
    let empty = |summary: Option<&str>| {
        dict(vec![
            ("data_registry", dict(vec![])),
            ("state_registry", dict(vec![])),
            ("summary_stats", dict(summary.map(|k| vec![(k, Py::Int(0))]).unwrap_or_default())),
        ])
    };
    let cat_keys: Vec<String> = r.categorical_covariates.iter().map(|(k, _)| k.clone()).collect();
    // Models trained here take size factors as values, not an obs column: "size_factor" names it.
    let sf_key = c.use_size_factor_key.then(|| r.size_factor_key.clone().unwrap_or_else(|| "size_factor".into()));
    let size_factor = match &sf_key {
        Some(k) => dict(vec![
            ("data_registry", dict(vec![("attr_name", s("obs")), ("attr_key", s(k))])),
            ("state_registry", dict(vec![])),
            ("summary_stats", dict(vec![])),
        ]),
        None => empty(None),
    };
    let categorical = if cat_keys.is_empty() {
        empty(Some("n_extra_categorical_covs"))
    } else {
        dict(vec![
            ("data_registry", dict(vec![("attr_name", s("obsm")), ("attr_key", s("_scvi_extra_categorical_covs"))])),
            (
                "state_registry",
                dict(vec![
                    ("mappings", Py::Dict(r.categorical_covariates.iter().map(|(k, v)| (s(k), np_strings(v))).collect())),
                    ("field_keys", Py::List(cat_keys.iter().map(|k| s(k)).collect())),
                    ("n_cats_per_key", Py::List(r.categorical_covariates.iter().map(|(_, v)| Py::Int(v.len() as i64)).collect())),
                ]),
            ),
            ("summary_stats", dict(vec![("n_extra_categorical_covs", Py::Int(cat_keys.len() as i64))])),
        ])
    };
    let continuous = if r.continuous_covariates.is_empty() {
        empty(Some("n_extra_continuous_covs"))
    } else {
        dict(vec![
            ("data_registry", dict(vec![("attr_name", s("obsm")), ("attr_key", s("_scvi_extra_continuous_covs"))])),
            ("state_registry", dict(vec![("columns", np_strings(&r.continuous_covariates))])),
            ("summary_stats", dict(vec![("n_extra_continuous_covs", Py::Int(r.continuous_covariates.len() as i64))])),
        ])
    };
    let mut labels_extra = vec![];
    let mut setup = vec![
        ("layer", Py::None),
        ("batch_key", key_or_none(&batch_key)),
        ("labels_key", key_or_none(&labels_key)),
        ("size_factor_key", key_or_none(&sf_key)),
        ("categorical_covariate_keys", if cat_keys.is_empty() { Py::None } else { Py::List(cat_keys.iter().map(|k| s(k)).collect()) }),
        ("continuous_covariate_keys", if r.continuous_covariates.is_empty() { Py::None } else { Py::List(r.continuous_covariates.iter().map(|k| s(k)).collect()) }),
    ];
    let mut labels = r.labels.clone();
    if let Some(sc) = &c.scanvi {
        let n = sc.n_labels as usize;
        if labels.len() == n {
            labels.push("Unknown".into());
        }
        let unlabeled = labels[n].clone();
        labels_extra.push(("unlabeled_category", s(&unlabeled)));
        setup.push(("unlabeled_category", s(&unlabeled)));
        setup.push(("use_minified", Py::Bool(false)));
    }
    let n_cells = r.n_cells_fitted as i64;
    let fields = dict(vec![
        (
            "X",
            dict(vec![
                ("data_registry", dict(vec![("attr_name", s("X")), ("attr_key", Py::None)])),
                ("state_registry", dict(vec![("n_obs", Py::Int(n_cells)), ("n_vars", Py::Int(r.genes.len() as i64)), ("column_names", np_strings(&r.genes))])),
                ("summary_stats", dict(vec![("n_vars", Py::Int(r.genes.len() as i64)), ("n_cells", Py::Int(n_cells))])),
            ]),
        ),
        ("batch", cat_field("_scvi_batch", &batch_key, &r.batches, "n_batch", vec![])),
        ("labels", cat_field("_scvi_labels", &labels_key, &labels, "n_labels", labels_extra)),
        ("size_factor", size_factor),
        ("extra_categorical_covs", categorical),
        ("extra_continuous_covs", continuous),
    ]);
    let registry = dict(vec![
        ("scvi_version", s(scvi_version)),
        ("model_name", s(class)),
        ("setup_args", dict(setup)),
        ("field_registries", fields),
        ("setup_method_name", s("setup_anndata")),
    ]);
    Ok(dict(vec![("init_params_", init), ("registry_", registry), ("is_trained_", Py::Bool(true))]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::pickle::Pickle;

    #[test]
    fn written_pickles_and_archives_read_back() {
        let v = dict(vec![("a", Py::List(vec![Py::Int(1), Py::Int(-(1 << 40)), Py::Float(2.5)])), ("g", np_strings(&["x".into(), "y".into()]))]);
        let bytes = pickle(&v);
        let p = Pickle::parse(&bytes).unwrap();
        let a = p.seq(p.get(p.root, "a").unwrap()).unwrap();
        assert_eq!(p.int(a[1]), Some(-(1 << 40)));
        assert_eq!(p.float(a[2]), Some(2.5));
        assert_eq!(p.numpy_strings(p.get(p.root, "g").unwrap()), Some(vec!["x".to_string(), "y".to_string()]));
        let z = zip_stored(&[("m/data.pkl".into(), bytes.clone()), ("m/data/0".into(), vec![1, 2, 3])]);
        let e = crate::io::pickle::zip_entries(&z).unwrap();
        assert_eq!(e["m/data.pkl"], bytes);
        assert_eq!(e["m/data/0"], vec![1, 2, 3]);
        assert_eq!(scvi_tools_name("z_encoder.encoder.layer_0.batch_norm.running_var", false), "z_encoder.encoder.fc_layers.Layer 0.1.running_var");
        assert_eq!(scvi_tools_name("scanvi.classifier.out.weight", false), "classifier.classifier.1.weight");
        assert_eq!(scvi_tools_name("decoder.px_scale_decoder.weight", false), "decoder.px_scale_decoder.0.weight");
    }
}
