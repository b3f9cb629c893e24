//! Train / validation / test split with scvi-tools' `DataSplitter` sizes.

use crate::error::{invalid, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct DataSplit {
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
    pub test: Vec<usize>,
}

/// Sizes as scvi-tools computes them: `n_train = ceil(train_size * n)`, validation the rest unless
/// `validation_size` is given (`floor(validation_size * n)`), test whatever remains. When the
/// train size was not given and the last training minibatch would hold only 1 or 2 cells (which
/// breaks BatchNorm), those cells move to validation.
pub fn split_sizes(
    n: usize,
    train_size: Option<f64>,
    validation_size: Option<f64>,
    batch_size: usize,
) -> Result<(usize, usize)> {
    let ts = train_size.unwrap_or(0.9);
    if !(ts > 0.0 && ts <= 1.0) {
        return invalid(format!("train_size must be in (0, 1], got {ts}"));
    }
    let mut n_train = (ts * n as f64).ceil() as usize;
    let mut n_val = match validation_size {
        None => n - n_train,
        Some(vs) => {
            if !(0.0..1.0).contains(&vs) || ts + vs > 1.0 + 1e-12 {
                return invalid(format!(
                    "validation_size must be in [0, 1) with train_size + validation_size <= 1, got {vs}"
                ));
            }
            (vs * n as f64).floor() as usize
        }
    };
    if n_train == 0 {
        return invalid("the training set is empty; increase train_size or add cells");
    }
    let tail = n_train % batch_size;
    if train_size.is_none() && (tail == 1 || tail == 2) {
        n_train -= tail;
        n_val += tail;
    }
    Ok((n_train, n_val))
}

/// Validation first, then train, from numpy's `RandomState(seed).permutation(n)` (or the
/// identity when not shuffling): the same cells scvi-tools picks for the same seed.
pub fn make_split(
    n: usize,
    train_size: Option<f64>,
    validation_size: Option<f64>,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
) -> Result<DataSplit> {
    let (n_train, n_val) = split_sizes(n, train_size, validation_size, batch_size)?;
    let perm: Vec<usize> = if shuffle {
        super::numpy_rng::permutation(n, (seed & 0xffff_ffff) as u32)
    } else {
        (0..n).collect()
    };
    Ok(DataSplit {
        validation: perm[..n_val].to_vec(),
        train: perm[n_val..n_val + n_train].to_vec(),
        test: perm[n_val + n_train..].to_vec(),
    })
}

/// scvi-tools' `SemiSupervisedDataSplitter`: labelled and unlabelled cells are split separately
/// (each with the same sizes rule and seeded permutation), so both keep their proportions; each
/// set lists its labelled cells first.
pub fn make_semisupervised_split(
    labelled: &[bool],
    train_size: Option<f64>,
    validation_size: Option<f64>,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
) -> Result<DataSplit> {
    let mut out = DataSplit::default();
    for want in [true, false] {
        let cells: Vec<usize> = labelled.iter().enumerate().filter(|(_, &l)| l == want).map(|(i, _)| i).collect();
        if cells.is_empty() {
            continue;
        }
        let s = make_split(cells.len(), train_size, validation_size, batch_size, shuffle, seed)?;
        out.train.extend(s.train.iter().map(|&i| cells[i]));
        out.validation.extend(s.validation.iter().map(|&i| cells[i]));
        out.test.extend(s.test.iter().map(|&i| cells[i]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_scvi_tools() {
        // PBMC 3k: ceil(0.9 * 2638) = 2375 train, 263 validation; 2375 % 128 = 71, no move.
        assert_eq!(split_sizes(2638, None, None, 128).unwrap(), (2375, 263));
        // 80 cells: ceil(72) = 72 train, 8 validation.
        assert_eq!(split_sizes(80, None, None, 128).unwrap(), (72, 8));
        // 1000 cells: 900 train; 900 % 128 = 4, no move.
        assert_eq!(split_sizes(1000, None, None, 128).unwrap(), (900, 100));
    }

    #[test]
    fn tail_batch_of_one_or_two_moves_to_validation() {
        // 145 cells: ceil(130.5) = 131 train; 131 % 128 = 3 stays.
        assert_eq!(split_sizes(145, None, None, 128).unwrap(), (131, 14));
        // 144 cells: ceil(129.6) = 130 train; 130 % 128 = 2 -> 128 train, 16 validation.
        assert_eq!(split_sizes(144, None, None, 128).unwrap(), (128, 16));
        // 143 cells: ceil(128.7) = 129; tail 1 -> 128 train, 15 validation.
        assert_eq!(split_sizes(143, None, None, 128).unwrap(), (128, 15));
        // An explicit train_size keeps the tail, as in scvi-tools.
        assert_eq!(split_sizes(144, Some(0.9), None, 128).unwrap(), (130, 14));
    }

    #[test]
    fn validation_size_leaves_a_test_set() {
        assert_eq!(split_sizes(100, Some(0.8), Some(0.1), 128).unwrap(), (80, 10));
        assert!(split_sizes(100, Some(0.8), Some(0.3), 128).is_err());
    }

    #[test]
    fn split_is_a_partition_and_repeatable() {
        let a = make_split(500, Some(0.7), Some(0.2), 128, true, 0).unwrap();
        let b = make_split(500, Some(0.7), Some(0.2), 128, true, 0).unwrap();
        assert_eq!(a, b);
        let mut all: Vec<usize> = a.train.iter().chain(&a.validation).chain(&a.test).copied().collect();
        all.sort();
        assert_eq!(all, (0..500).collect::<Vec<_>>());
        assert_eq!((a.train.len(), a.validation.len(), a.test.len()), (350, 100, 50));
    }

    #[test]
    fn split_picks_scvi_tools_cells() {
        // numpy's RandomState(0).permutation(10) = [2, 8, 4, 9, 1, 6, 7, 3, 0, 5]; 1 validation cell.
        let s = make_split(10, None, None, 128, true, 0).unwrap();
        assert_eq!(s.validation, vec![2]);
        assert_eq!(s.train, vec![8, 4, 9, 1, 6, 7, 3, 0, 5]);
        let fixed = make_split(10, None, None, 128, false, 0).unwrap();
        assert_eq!(fixed.validation, vec![0]);
    }
}
