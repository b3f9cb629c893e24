//! The training loop: split, KL warm-up, Adam, per-epoch history, progress and interruption.

use super::adam::Adam;
use super::config::{default_max_epochs, TrainConfig};
use super::callbacks::{EarlyStopping, ReduceLrOnPlateau};
use super::config::Optimizer;
use super::history::{EpochRecord, History};
use super::kl_schedule::kl_weight;
use super::profile::{Phase, PhaseClock, StepProfile};
use crate::data::split::{make_semisupervised_split, make_split};
use crate::data::source::membership;
use crate::data::{CountSource, Counts, Covariates, DataSplit, Minibatch, MinibatchBuilder};
use crate::error::{Error, Result};
use crate::module::vae::SideWork;
use crate::module::Vae;
use rand::seq::SliceRandom;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::time::Instant;
use tch::{Kind, Tensor};

/// Hooks the caller (R bridge, CLI) gives the loop.
pub trait TrainingObserver {
    fn on_epoch_end(&mut self, _record: &EpochRecord, _max_epochs: usize) {}
    /// Polled between minibatches; true stops training with `Error::Interrupted`.
    fn interrupt_requested(&mut self) -> bool {
        false
    }
    /// True to have the loop time the phases of its steps; they come to `on_step_profile`.
    fn profile_steps(&self) -> bool {
        false
    }
    /// Called once after the last epoch with the phases' times, when `profile_steps`.
    fn on_step_profile(&mut self, _profile: &StepProfile) {}
}

pub struct NoObserver;
impl TrainingObserver for NoObserver {}

pub struct TrainOutcome {
    pub history: History,
    pub split: DataSplit,
    pub max_epochs: usize,
}

/// Sums of per-cell loss components over one pass of a data set.
#[derive(Default)]
struct PassTotals {
    n_cells: usize,
    reconstruction: f64,
    kl_local: f64,
    loss_sum: f64,
    n_steps: usize,
}

impl PassTotals {
    fn elbo(&self) -> f64 {
        (self.reconstruction + self.kl_local) / self.n_cells as f64
    }
}

fn scalar(t: &tch::Tensor) -> f64 {
    t.double_value(&[])
}

/// Trains `vae` on `counts` (cells in rows) with batch codes per cell.
pub fn train(
    vae: &mut Vae,
    counts: Counts<'_>,
    batch_codes: &[i32],
    cov: &Covariates<'_>,
    cfg: &TrainConfig,
    observer: &mut dyn TrainingObserver,
) -> Result<TrainOutcome> {
    train_on(vae, CountSource::Memory(counts), batch_codes, cov, cfg, observer)
}

/// Trains `vae` on counts in memory or on disk.
pub fn train_on(
    vae: &mut Vae,
    data: CountSource<'_>,
    batch_codes: &[i32],
    cov: &Covariates<'_>,
    cfg: &TrainConfig,
    observer: &mut dyn TrainingObserver,
) -> Result<TrainOutcome> {
    let n = data.n_cells();
    if n < 2 {
        return Err(Error::InvalidInput(format!("at least 2 cells are needed to train, got {n}")));
    }
    if batch_codes.len() != n {
        return Err(Error::InvalidInput("one batch code per cell is needed".into()));
    }
    cov.check(n, &vae.config)?;
    if cov.latent.is_some() {
        return Err(Error::InvalidInput("a minified model has no counts to train on; train the full model".into()));
    }
    if batch_codes.iter().any(|&b| b < 0 || b as i64 >= vae.config.n_batch) {
        return Err(Error::InvalidInput(format!("a batch code is outside the model's {} batches", vae.config.n_batch)));
    }
    if let Some(c) = data.first_empty_cell() {
        return Err(Error::InvalidInput(format!(
            "cell {} has no counts in the selected genes; remove empty cells before training",
            c + 1
        )));
    }
    if cfg.batch_size < 1 {
        return Err(Error::InvalidConfig("batch_size must be a positive integer".into()));
    }
    let decoupled = cfg.optimizer == Optimizer::AdamW;
    let max_epochs = cfg.max_epochs.unwrap_or_else(|| default_max_epochs(n));
    tch::manual_seed(cfg.seed as i64);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    // scANVI: cells whose label is known feed the classifier; splits keep their proportion.
    let labelled: Option<Vec<bool>> = match (&vae.scanvi, cov.labels) {
        (Some(h), Some(codes)) => Some(codes.iter().map(|&c| (c as i64) < h.config.n_labels).collect()),
        (Some(_), None) => return Err(Error::InvalidInput("scANVI needs a label (or the unlabelled category) for every cell".into())),
        (None, _) => None,
    };
    let split = match &labelled {
        Some(l) => make_semisupervised_split(l, cfg.train_size, cfg.validation_size, cfg.batch_size, cfg.shuffle_set_split, cfg.seed)?,
        None => make_split(n, cfg.train_size, cfg.validation_size, cfg.batch_size, cfg.shuffle_set_split, cfg.seed)?,
    };
    // BatchNorm normalises each minibatch in training mode: a minibatch of one cell has no
    // variance and turns the model into NaN (PyTorch refuses it outright).
    let batch_norm = vae.config.use_batch_norm_encoder || vae.config.use_batch_norm_decoder;
    if batch_norm {
        if cfg.batch_size < 2 {
            return Err(Error::InvalidConfig(
                "batch_size must be at least 2 with BatchNorm (use_batch_norm): a one-cell minibatch has no variance".into(),
            ));
        }
        if split.train.len() < 2 {
            return Err(Error::InvalidInput(format!(
                "the training set has {} cell(s); BatchNorm needs at least 2 (more cells, or a larger train_size)",
                split.train.len()
            )));
        }
        if split.train.len() % cfg.batch_size == 1 {
            return Err(Error::InvalidConfig(format!(
                "with {} training cells and batch_size {}, the last minibatch would hold one cell, which BatchNorm cannot normalise; change batch_size or train_size",
                split.train.len(),
                cfg.batch_size
            )));
        }
    }
    let labelled_all: Vec<usize> = match &labelled {
        Some(l) => split.train.iter().copied().filter(|&c| l[c]).collect(),
        None => Vec::new(),
    };
    if batch_norm && labelled_all.len() == 1 {
        return Err(Error::InvalidInput(
            "only one labelled cell is in the training set; scANVI's classifier needs at least 2 with BatchNorm".into(),
        ));
    }
    let mut labelled_train = labelled_all.clone();
    let classification_ratio = vae.scanvi.as_ref().map_or(0.0, |h| h.config.classification_ratio);
    let per_label = vae.scanvi.as_ref().and_then(|h| h.config.n_samples_per_label);
    // The labelled loader cycles, reshuffled at each pass, beside the loader of all cells.
    let mut labelled_pos = labelled_train.len();

    let mut builder = data.builder(batch_codes, cov, vae.device());
    let train_mask = matches!(data, CountSource::Disk(..)).then(|| membership(n, &split.train));
    // A query model (reference mapping) updates only what its freeze options leave free.
    let params = crate::module::arches::trainable_parameters(vae);
    if params.is_empty() {
        return Err(Error::InvalidConfig("every parameter of the model is frozen: nothing would train".into()));
    }
    let mut optimizer = Adam::with_masks(params, cfg.lr, cfg.eps, cfg.weight_decay, decoupled);
    let mut history = History::default();
    let mut global_step = 0usize;
    let mut order = split.train.clone();
    let watches_validation = cfg.early_stopping || cfg.reduce_lr_on_plateau;
    if watches_validation && split.validation.is_empty() {
        return Err(Error::InvalidConfig(
            "early stopping and reduce_lr_on_plateau monitor the validation set, which is empty; lower train_size".into(),
        ));
    }
    // As in scvi-tools, monitoring a validation metric means validating every epoch.
    let check_val_every = if watches_validation { Some(1) } else { cfg.check_val_every_n_epoch };
    let mut early_stopping = cfg.early_stopping.then(|| {
        EarlyStopping::new(cfg.early_stopping_patience, cfg.early_stopping_min_delta, cfg.early_stopping_mode, cfg.early_stopping_warmup_epochs)
    });
    let mut clock = PhaseClock::new(observer.profile_steps());
    let mut plateau = cfg
        .reduce_lr_on_plateau
        .then(|| ReduceLrOnPlateau::new(cfg.lr_factor, cfg.lr_patience, cfg.lr_threshold, cfg.lr_min, super::callbacks::Mode::Min));

    for epoch in 0..max_epochs {
        let started = Instant::now();
        order.shuffle(&mut rng);
        if let (Some(k), Some(codes)) = (per_label, cov.labels) {
            labelled_train = subsample_labels(&labelled_all, codes, k, &mut rng);
            labelled_pos = labelled_train.len();
        }
        let mut totals = PassTotals::default();
        let mut classification = ClassificationTotals::default();
        let mut weight = 0.0;
        // On disk, the epoch's order of blocks and cells comes from its own seed.
        let disk_seed: Option<u64> = train_mask.as_ref().map(|_| rng.gen());
        {
            clock.restart();
            // One optimisation step on a minibatch of `n_cells` cells. With `upcoming` cells, the
            // minibatch of those is built on a second thread and returned: beside the first
            // serial stretch of a step in closed form, or else beside autograd's backward pass.
            let mut step = |builder: &mut MinibatchBuilder<'_>, mb: Minibatch, n_cells: usize, upcoming: Option<&[usize]>| -> Result<Option<Minibatch>> {
                if observer.interrupt_requested() {
                    return Err(Error::Interrupted { epoch: epoch + 1, max_epochs });
                }
                clock.mark(Phase::Minibatch);
                weight = kl_weight(epoch, global_step, cfg.n_epochs_kl_warmup, cfg.n_steps_kl_warmup, cfg.max_kl_weight, cfg.min_kl_weight);
                let mut next = None;
                let mut out = {
                    // Offered only with a second thread, and only without scANVI's labelled
                    // minibatch (whose loss joins after the step, before the update).
                    let mut side = SideWork::default();
                    if let Some(cells) = upcoming {
                        side.independent = Some(Box::new(|| next = Some(builder.build(cells))));
                    }
                    if upcoming.is_some() && labelled_train.is_empty() {
                        side.update = Some(Box::new(|params: Vec<Tensor>| optimizer.step_first(&params)));
                    }
                    vae.training_loss(&mb, weight, &mut side)
                };
                let mut labelled_mb = None;
                if !labelled_train.is_empty() {
                    if labelled_pos >= labelled_train.len() {
                        labelled_train.shuffle(&mut rng);
                        labelled_pos = 0;
                    }
                    if batch_norm && labelled_train.len() - labelled_pos == 1 && labelled_train.len() > 1 {
                        // A one-cell labelled minibatch cannot pass BatchNorm: start the next pass.
                        labelled_train.shuffle(&mut rng);
                        labelled_pos = 0;
                    }
                    let end = (labelled_pos + cfg.batch_size).min(labelled_train.len());
                    clock.mark(Phase::Forward);
                    let lmb = data.build(builder, &labelled_train[labelled_pos..end])?;
                    clock.mark(Phase::Minibatch);
                    labelled_pos = end;
                    let logits = vae.classify(&lmb, true);
                    let ce = logits.cross_entropy_for_logits(&lmb.labels);
                    classification.add(&logits, &lmb.labels, &ce);
                    out.loss = out.loss + ce * classification_ratio;
                    labelled_mb = Some(lmb);
                }
                let loss = scalar(&out.loss);
                if !loss.is_finite() {
                    return Err(Error::NumericalFailure(format!(
                        "the training loss became {loss} at epoch {} of {max_epochs}; try a smaller learning \
                         rate (lr), check that the counts are raw UMI counts, or remove extreme cells",
                        epoch + 1
                    )));
                }
                clock.mark(Phase::Forward);
                // A step in closed form has its gradients already (and built the next minibatch).
                let graph = out.loss.requires_grad();
                match upcoming {
                    // Autograd's backward pass is many small operations on this thread: libtorch's
                    // other thread builds the next minibatch meanwhile (the same minibatch as
                    // built later: it reads only the counts).
                    Some(cells) if graph && next.is_none() => crate::runtime::beside(|| out.loss.backward(), || next = Some(builder.build(cells))),
                    _ if graph => out.loss.backward(),
                    _ => {}
                }
                clock.mark(Phase::Backward);
                // The encoders' sparse first layers and the deferred decoder heads get their
                // weight gradients here.
                for m in std::iter::once(&mb).chain(labelled_mb.as_ref()) {
                    if let Some(rows) = m.rows() {
                        crate::nn::sparse_input::finish_backward(rows);
                    }
                }
                clock.mark(Phase::FinishBackward);
                optimizer.step();
                clock.mark(Phase::Optimizer);
                totals.n_cells += n_cells;
                totals.n_steps += 1;
                totals.loss_sum += loss;
                totals.reconstruction += scalar(&out.reconstruction.detach().sum(Kind::Double));
                totals.kl_local += scalar(&(&out.kl_z + &out.kl_library).detach().sum(Kind::Double));
                global_step += 1;
                clock.profile.steps += 1;
                clock.mark(Phase::Bookkeeping);
                Ok(next)
            };
            match (data, &train_mask) {
                (CountSource::Disk(d, _), Some(mask)) => {
                    d.for_each_shuffled(mask, cfg.batch_size, disk_seed.unwrap_or_default(), |block| {
                        let mb = builder.build_block(block);
                        step(&mut builder, mb, block.len(), None).map(|_| ())
                    })?;
                }
                _ => {
                    // With more than one thread, each minibatch after the first is built during
                    // the previous step's backward pass.
                    let beside = tch::get_num_threads() > 1;
                    let mut chunks = order.chunks(cfg.batch_size).peekable();
                    let mut built: Option<Minibatch> = None;
                    while let Some(cells) = chunks.next() {
                        let mb = match built.take() {
                            Some(mb) => mb,
                            None => builder.build(cells),
                        };
                        let upcoming = chunks.peek().copied().filter(|_| beside);
                        built = step(&mut builder, mb, cells.len(), upcoming)?;
                    }
                }
            }
        }
        let train_seconds = started.elapsed().as_secs_f64();
        let mut record = EpochRecord {
            epoch,
            kl_weight: weight,
            lr: optimizer.lr,
            train_loss_epoch: totals.loss_sum / totals.n_steps.max(1) as f64,
            elbo_train: totals.elbo(),
            reconstruction_loss_train: totals.reconstruction / totals.n_cells as f64,
            kl_local_train: totals.kl_local / totals.n_cells as f64,
            kl_global_train: 0.0,
            classification_loss_train: classification.loss(),
            accuracy_train: classification.accuracy(),
            train_seconds,
            ..Default::default()
        };
        let validate = check_val_every.map_or(false, |k| k > 0 && (epoch + 1) % k == 0);
        if validate && !split.validation.is_empty() {
            let v = evaluate(vae, data, &mut builder, &split.validation, cfg.batch_size, weight)?;
            if !v.elbo().is_finite() {
                return Err(Error::NumericalFailure(format!(
                    "the validation ELBO became {} at epoch {} of {max_epochs}; try a smaller learning rate (lr), \
                     check that the counts are raw UMI counts, or remove extreme cells",
                    v.elbo(),
                    epoch + 1
                )));
            }
            record.validation_loss = Some(v.loss_sum / v.n_steps.max(1) as f64);
            record.elbo_validation = Some(v.elbo());
            record.reconstruction_loss_validation = Some(v.reconstruction / v.n_cells as f64);
            record.kl_local_validation = Some(v.kl_local / v.n_cells as f64);
            record.kl_global_validation = Some(0.0);
            if let Some(l) = &labelled {
                let cells: Vec<usize> = split.validation.iter().copied().filter(|&c| l[c]).collect();
                let c = evaluate_classifier(vae, data, &mut builder, &cells, cfg.batch_size)?;
                record.classification_loss_validation = c.loss();
                record.accuracy_validation = c.accuracy();
            }
        }
        observer.on_epoch_end(&record, max_epochs);
        let mut stop = false;
        if let (Some(p), Some(m)) = (plateau.as_mut(), record.validation_metric(cfg.lr_scheduler_metric)) {
            optimizer.lr = p.step(m, optimizer.lr);
        }
        if let (Some(es), Some(m)) = (early_stopping.as_mut(), record.validation_metric(cfg.early_stopping_monitor)) {
            stop = es.update(epoch, m);
        }
        history.epochs.push(record);
        if stop {
            history.stopped_early_at = Some(epoch + 1);
            break;
        }
    }
    if let Some((name, _)) = vae.vs.variables().into_iter().find(|(_, t)| !all_finite(t)) {
        return Err(Error::NumericalFailure(format!(
            "training ended with non-finite values in the model's parameter {name}; try a smaller learning rate (lr) \
             or check the counts and covariates"
        )));
    }
    if observer.profile_steps() {
        observer.on_step_profile(&clock.profile);
    }
    Ok(TrainOutcome { history, split, max_epochs })
}

fn all_finite(t: &tch::Tensor) -> bool {
    t.isfinite().all().int64_value(&[]) != 0
}

/// Cross-entropy and accuracy of scANVI's classifier over several minibatches.
#[derive(Default)]
struct ClassificationTotals {
    loss_sum: f64,
    n_steps: usize,
    correct: f64,
    n_cells: usize,
}

impl ClassificationTotals {
    fn add(&mut self, logits: &tch::Tensor, labels: &tch::Tensor, ce: &tch::Tensor) {
        self.loss_sum += scalar(&ce.detach());
        self.n_steps += 1;
        self.correct += scalar(&logits.detach().argmax(-1, false).eq_tensor(labels).to_kind(Kind::Double).sum(Kind::Double));
        self.n_cells += labels.size()[0] as usize;
    }

    fn loss(&self) -> Option<f64> {
        (self.n_steps > 0).then(|| self.loss_sum / self.n_steps as f64)
    }

    fn accuracy(&self) -> Option<f64> {
        (self.n_cells > 0).then(|| self.correct / self.n_cells as f64)
    }
}

fn evaluate_classifier(vae: &Vae, data: CountSource<'_>, builder: &mut MinibatchBuilder<'_>, cells: &[usize], batch_size: usize) -> Result<ClassificationTotals> {
    tch::no_grad(|| {
        let mut totals = ClassificationTotals::default();
        data.for_each(builder, cells, batch_size, |mb, _| {
            let logits = vae.classify(mb, false);
            let ce = logits.cross_entropy_for_logits(&mb.labels);
            totals.add(&logits, &mb.labels, &ce);
            Ok(())
        })?;
        Ok(totals)
    })
}

/// Up to `k` cells of each label, drawn without replacement (all of a label's cells when it has
/// fewer), as scvi-tools' `SubSampleLabels` does at the start of every epoch.
fn subsample_labels(cells: &[usize], codes: &[i32], k: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut by_label: std::collections::BTreeMap<i32, Vec<usize>> = Default::default();
    for &c in cells {
        by_label.entry(codes[c]).or_default().push(c);
    }
    let mut out = Vec::new();
    for (_, mut group) in by_label {
        if group.len() > k {
            group.shuffle(rng);
            group.truncate(k);
        }
        out.extend(group);
    }
    out
}

/// One pass in evaluation mode (BatchNorm running statistics, no dropout), no gradients.
fn evaluate(vae: &Vae, data: CountSource<'_>, builder: &mut MinibatchBuilder<'_>, cells: &[usize], batch_size: usize, kl_weight: f64) -> Result<PassTotals> {
    tch::no_grad(|| {
        let mut totals = PassTotals::default();
        data.for_each(builder, cells, batch_size, |mb, chunk| {
            let out = vae.loss(mb, false, kl_weight);
            totals.n_cells += chunk.len();
            totals.n_steps += 1;
            totals.loss_sum += scalar(&out.loss);
            totals.reconstruction += scalar(&out.reconstruction.sum(Kind::Double));
            totals.kl_local += scalar(&(&out.kl_z + &out.kl_library).sum(Kind::Double));
            Ok(())
        })?;
        Ok(totals)
    })
}
