//! Counts read from disk (the bundled PBMC 3k .h5ad, real counts) against the same counts in
//! memory: rows, per-cell summaries, per-gene sums, the shuffled and sequential passes, and
//! training and the latent representation.

use scvir_engine::data::disk::{LoadedMatrix, RowBlock};
use scvir_engine::data::{CountSource, Counts, Covariates, DiskCounts};
use std::sync::Arc;
use scvir_engine::io::h5ad;
use scvir_engine::module::{Vae, VaeConfig};
use scvir_engine::train::{self, NoObserver, TrainConfig};
use scvir_engine::{infer, runtime};
use tch::Device;

fn path() -> String {
    std::env::var("SCVIR_TEST_H5AD")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../../inst/extdata/pbmc3k_hvg2000.h5ad").into())
}

fn counts(d: &h5ad::H5ad) -> Counts<'_> {
    let c = &d.counts;
    Counts::from_csr(c.n_cells, c.n_genes, &c.indptr, &c.indices, &c.data).unwrap()
}

/// A gene selection that reorders and drops genes: every third gene, last first.
fn genes(n: usize) -> Vec<usize> {
    (0..n).filter(|g| g % 3 == 0).rev().collect()
}

/// The in-memory row of `cell` restricted to `genes` (model positions, sorted), as (gene, count).
fn expected_row(x: &Counts<'_>, cell: usize, genes: &[usize]) -> Vec<(i32, f32)> {
    let (idx, val) = x.cell(cell);
    let mut out: Vec<(i32, f32)> = idx
        .iter()
        .zip(val)
        .filter_map(|(&g, &v)| genes.iter().position(|&k| k == g as usize).map(|p| (p as i32, v as f32)))
        .collect();
    out.sort_by_key(|e| e.0);
    out
}

fn sorted_row(genes: &[i32], values: &[f32]) -> Vec<(i32, f32)> {
    let mut out: Vec<(i32, f32)> = genes.iter().copied().zip(values.iter().copied()).collect();
    out.sort_by_key(|e| e.0);
    out
}

#[test]
fn rows_summaries_and_gene_sums_match_the_counts_in_memory() {
    let d = h5ad::read(&path(), None).unwrap();
    let x = counts(&d);
    let sel = genes(x.n_genes());
    let disk = DiskCounts::open(&path(), "X", &sel).unwrap();
    assert_eq!((disk.n_cells(), disk.n_genes()), (x.n_cells(), sel.len()));
    let cells = [5usize, 0, 2637, 5, 1000];
    let block = disk.read_cells(&cells).unwrap();
    assert_eq!(block.cells, cells);
    for (i, &c) in cells.iter().enumerate() {
        let (g, v) = block.row(i);
        assert_eq!(sorted_row(g, v), expected_row(&x, c, &sel), "cell {c}");
    }
    let s = disk.summaries().unwrap();
    for c in [0usize, 17, 2637] {
        let lib: f64 = expected_row(&x, c, &sel).iter().map(|e| e.1 as f64).sum();
        assert_eq!(s.library[c] as f64, lib);
        let lg: f64 = expected_row(&x, c, &sel).iter().map(|e| libm::lgamma(e.1 as f64 + 1.0)).sum();
        assert!((s.lgamma_x1[c] as f64 - lg).abs() < 1e-3 * lg.max(1.0));
    }
    // Two batches (odd and even cells), with and without clipping at 3.
    let codes: Vec<i32> = (0..x.n_cells()).map(|c| (c % 2) as i32).collect();
    let clip = vec![3.0; 2 * sel.len()];
    let (sum, _) = disk.gene_sums(&codes, 2, None).unwrap();
    let (csum, csq) = disk.gene_sums(&codes, 2, Some(&clip)).unwrap();
    for (p, &g) in sel.iter().enumerate().step_by(97) {
        for b in 0..2usize {
            let mut want = (0.0, 0.0, 0.0);
            for c in (b..x.n_cells()).step_by(2) {
                let (idx, val) = x.cell(c);
                if let Some(k) = idx.iter().position(|&i| i as usize == g) {
                    want.0 += val[k];
                    want.1 += val[k].min(3.0);
                    want.2 += val[k].min(3.0).powi(2);
                }
            }
            let k = b * sel.len() + p;
            assert_eq!((sum[k], csum[k], csq[k]), want, "gene {g} batch {b}");
        }
    }
}

#[test]
fn shuffled_and_sequential_passes_visit_each_selected_cell_once() {
    let d = h5ad::read(&path(), None).unwrap();
    let x = counts(&d);
    let sel: Vec<usize> = (0..x.n_genes()).collect();
    let disk = DiskCounts::open(&path(), "X", &sel).unwrap();
    let n = disk.n_cells();
    let selected: Vec<bool> = (0..n).map(|c| c % 10 != 3).collect();
    let mut seen = vec![0u32; n];
    let mut sizes = Vec::new();
    let mut first_cells = Vec::new();
    disk.for_each_shuffled(&selected, 128, 42, |b| {
        sizes.push(b.len());
        for i in 0..b.len() {
            let c = b.cells[i];
            seen[c] += 1;
            let (g, v) = b.row(i);
            assert_eq!(sorted_row(g, v), expected_row(&x, c, &sel));
        }
        first_cells.push(b.cells[0]);
        Ok(())
    })
    .unwrap();
    assert!((0..n).all(|c| seen[c] == selected[c] as u32));
    // Full minibatches but the last one.
    let total = selected.iter().filter(|&&s| s).count();
    assert!(sizes[..sizes.len() - 1].iter().all(|&s| s == 128));
    assert_eq!(sizes.iter().sum::<usize>(), total);
    // Shuffled: minibatches do not follow the file's order, and the seed fixes the order.
    assert!(first_cells.windows(2).any(|w| w[1] < w[0]));
    let mut again = Vec::new();
    disk.for_each_shuffled(&selected, 128, 42, |b| {
        again.push(b.cells[0]);
        Ok(())
    })
    .unwrap();
    assert_eq!(first_cells, again);
    // Sequential: every cell once, in order.
    let mut order = Vec::new();
    disk.for_each_sequential(None, 100, |b| {
        order.extend_from_slice(&b.cells);
        Ok(())
    })
    .unwrap();
    assert_eq!(order, (0..n).collect::<Vec<_>>());
    // An error of the consumer ends the pass (and the reader thread) with that error.
    let mut calls = 0;
    let r = disk.for_each_sequential(None, 10, |_| {
        calls += 1;
        Err(scvir_engine::Error::Cancelled)
    });
    assert!(matches!(r, Err(scvir_engine::Error::Cancelled)));
    assert_eq!(calls, 1);
}

#[test]
fn a_dense_dataset_reads_as_the_csr_matrix_and_malformed_ones_are_refused() {
    let dir = std::env::temp_dir().join(format!("scvir-disk-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The PBMC 3k counts as a dense cells x genes dataset of integers, in chunks of 100 cells
    // (as R's HDF5Array stores a genes x cells matrix, or anndata a dense X).
    let d = h5ad::read(&path(), None).unwrap();
    let x = counts(&d);
    let (n, g) = (x.n_cells(), x.n_genes());
    let mut dense = vec![0i32; n * g];
    for c in 0..n {
        let (idx, val) = x.cell(c);
        for (&j, &v) in idx.iter().zip(val) {
            dense[c * g + j as usize] = v as i32;
        }
    }
    let p = dir.join("dense.h5");
    {
        let f = hdf5::File::create(&p).unwrap();
        let ds = f.new_dataset::<i32>().shape([n, g]).chunk([100, g]).deflate(1).create("counts").unwrap();
        ds.write_raw(&dense).unwrap();
        f.new_dataset::<f32>().shape([3, 2, 2]).create("cube").unwrap();
    }
    let ps = p.to_str().unwrap();
    let sel = genes(g);
    let disk = DiskCounts::open(ps, "counts", &sel).unwrap();
    let csr = DiskCounts::open(&path(), "X", &sel).unwrap();
    assert!(disk.is_dense() && !csr.is_dense());
    assert_eq!((disk.n_cells(), disk.n_genes(), disk.n_file_genes()), (n, sel.len(), g));
    let cells = [5usize, 0, n - 1, 5, 1000, 99, 100];
    let (a, b) = (disk.read_cells(&cells).unwrap(), csr.read_cells(&cells).unwrap());
    for i in 0..cells.len() {
        let (ga, va) = a.row(i);
        let (gb, vb) = b.row(i);
        assert_eq!(sorted_row(ga, va), sorted_row(gb, vb), "cell {}", cells[i]);
    }
    let (sa, sb) = (disk.summaries().unwrap(), csr.summaries().unwrap());
    assert_eq!(sa.library, sb.library);
    assert_eq!(sa.lgamma_x1, sb.lgamma_x1);
    let codes: Vec<i32> = (0..n as i32).map(|c| c % 2).collect();
    assert_eq!(disk.gene_sums(&codes, 2, None).unwrap(), csr.gene_sums(&codes, 2, None).unwrap());
    let sel_all = vec![true; n];
    let mut seen = vec![0usize; n];
    disk.for_each_shuffled(&sel_all, 128, 7, |blk| {
        blk.cells.iter().for_each(|&c| seen[c] += 1);
        Ok(())
    })
    .unwrap();
    assert!(seen.iter().all(|&k| k == 1));
    // A value that is not a count is refused, naming the file and the cell.
    {
        let f = hdf5::File::open_rw(&p).unwrap();
        let mut bad = vec![0f32; n * g];
        bad[7 * g + 3] = 1.5;
        f.new_dataset::<f32>().shape([n, g]).create("bad").unwrap().write_raw(&bad).unwrap();
    }
    let e = DiskCounts::open(ps, "bad", &sel).unwrap().summaries().err().unwrap().to_string();
    assert!(e.contains("dense.h5") && e.contains("cell 8") && e.contains("1.5"), "{e}");
    let e = DiskCounts::open(ps, "cube", &[0]).err().unwrap().to_string();
    assert!(e.contains("dense.h5") && e.contains("3-dimensional"), "{e}");
    let missing = DiskCounts::open(dir.join("none.h5ad").to_str().unwrap(), "X", &[0]).err().unwrap().to_string();
    assert!(missing.contains("none.h5ad") && missing.contains("not found"), "{missing}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Every block of a shuffled pass (cells and rows), of a sequential pass and of a cell lookup.
fn passes(d: &DiskCounts, selected: &[bool], lookup: &[usize]) -> Vec<(Vec<usize>, Vec<Vec<(i32, f32)>>)> {
    let mut out = Vec::new();
    let mut keep = |b: &RowBlock| {
        out.push((b.cells.clone(), (0..b.len()).map(|i| sorted_row(b.row(i).0, b.row(i).1)).collect()));
    };
    d.for_each_shuffled(selected, 128, 3, |b| {
        keep(b);
        Ok(())
    })
    .unwrap();
    d.for_each_sequential(None, 500, |b| {
        keep(b);
        Ok(())
    })
    .unwrap();
    keep(&d.read_cells(lookup).unwrap());
    out
}

#[test]
fn a_matrix_read_into_memory_serves_the_same_blocks_as_the_file() {
    // PBMC 3k: 2,000 genes and counts below 65,536, so both columns are held in 16 bits.
    let m = Arc::new(LoadedMatrix::load(&path(), "X").unwrap());
    assert_eq!(m.narrow(), (true, true));
    let file = DiskCounts::open(&path(), "X", &[]).unwrap();
    assert_eq!((m.n_cells(), m.n_file_genes()), (file.n_cells(), file.n_file_genes()));
    assert_eq!(m.bytes(), (m.n_cells() + 1) * 8 + m.nnz() * 4);
    let sel = genes(m.n_file_genes());
    let (mem, disk) = (DiskCounts::in_memory(m.clone(), &sel).unwrap(), DiskCounts::open(&path(), "X", &sel).unwrap());
    assert!(mem.is_in_memory() && !disk.is_in_memory());
    let selected: Vec<bool> = (0..m.n_cells()).map(|c| c % 7 != 2).collect();
    let lookup = [9usize, 0, 2637, 9, 1200];
    assert_eq!(passes(&mem, &selected, &lookup), passes(&disk, &selected, &lookup));
    let (sm, sd) = (mem.summaries().unwrap(), disk.summaries().unwrap());
    assert_eq!((sm.library, sm.lgamma_x1), (sd.library, sd.lgamma_x1));
    let codes: Vec<i32> = (0..m.n_cells() as i32).map(|c| c % 3).collect();
    assert_eq!(mem.gene_sums(&codes, 3, None).unwrap(), disk.gene_sums(&codes, 3, None).unwrap());
    // The selection is checked as for the file.
    assert!(DiskCounts::in_memory(m.clone(), &[0, 0]).err().unwrap().to_string().contains("selected twice"));
    assert!(DiskCounts::in_memory(m, &[5000]).err().unwrap().to_string().contains("outside"));
}

#[test]
fn a_file_rewritten_under_its_fingerprint_is_refused() {
    // The fingerprint is the file's, whichever genes are selected and whether the matrix is read
    // from the file or from memory; backed_info gives the same one.
    let fp = DiskCounts::open(&path(), "X", &[]).unwrap().fingerprint();
    assert_eq!(fp.len(), 16);
    assert_eq!(DiskCounts::open(&path(), "X", &genes(2000)).unwrap().fingerprint(), fp);
    let m = Arc::new(LoadedMatrix::load(&path(), "X").unwrap());
    assert_eq!(m.fingerprint(), fp);
    assert_eq!(DiskCounts::in_memory(m, &[3, 1]).unwrap().fingerprint(), fp);
    assert_eq!(h5ad::backed_info(&path(), None).unwrap().fingerprint, fp);
    // A copy of the file with its first two cells swapped (the same shape and the same number of
    // stored values): another fingerprint, and a handle of the original refuses it.
    let dir = std::env::temp_dir().join(format!("scvir-fingerprint-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("copy.h5ad");
    std::fs::copy(path(), &copy).unwrap();
    let cs = copy.to_str().unwrap();
    assert_eq!(DiskCounts::open(cs, "X", &[]).unwrap().fingerprint(), fp);
    {
        let f = hdf5::File::open_rw(&copy).unwrap();
        let x = f.group("X").unwrap();
        let (ip, ix, dt) = (x.dataset("indptr").unwrap(), x.dataset("indices").unwrap(), x.dataset("data").unwrap());
        let indptr: Vec<i64> = ip.read_raw().unwrap();
        let (a, b, c) = (indptr[0] as usize, indptr[1] as usize, indptr[2] as usize);
        assert_ne!(b - a, c - b, "the first two cells must differ in their stored values");
        let swap_rows = |ds: &hdf5::Dataset| {
            let v: Vec<f64> = ds.read_raw().unwrap();
            let mut w = v[b..c].to_vec();
            w.extend_from_slice(&v[a..b]);
            let mut out = v.clone();
            out[a..c].copy_from_slice(&w);
            out
        };
        let (new_ix, new_dt) = (swap_rows(&ix), swap_rows(&dt));
        ix.write_raw(&new_ix.iter().map(|&v| v as i32).collect::<Vec<i32>>()).unwrap();
        dt.write_raw(&new_dt.iter().map(|&v| v as f32).collect::<Vec<f32>>()).unwrap();
        let mut new_ip = indptr.clone();
        new_ip[1] = indptr[0] + (indptr[2] - indptr[1]);
        ip.write_raw(&new_ip.iter().map(|&v| v as i32).collect::<Vec<i32>>()).unwrap();
    }
    let changed = DiskCounts::open(cs, "X", &[]).unwrap();
    assert_eq!((changed.n_cells(), changed.nnz()), (2638, DiskCounts::open(&path(), "X", &[]).unwrap().nnz()));
    assert_ne!(changed.fingerprint(), fp);
    let e = changed.check_fingerprint(&fp).err().unwrap().to_string();
    assert!(e.contains("copy.h5ad") && e.contains("changed since it was opened") && e.contains("read_h5ad()"), "{e}");
    // The file's own fingerprint passes, and so does none (a handle saved before they were kept).
    changed.check_fingerprint(&changed.fingerprint()).unwrap();
    changed.check_fingerprint("").unwrap();
    // Opening a handle's file again checks it, and a missing file says what to do.
    assert!(DiskCounts::reopen(cs, "X", &[], &fp).is_err());
    DiskCounts::reopen(&path(), "X", &[], &fp).unwrap();
    let gone = dir.join("gone.h5ad");
    let e = DiskCounts::reopen(gone.to_str().unwrap(), "X", &[], &fp).err().unwrap().to_string();
    assert!(e.contains("gone.h5ad") && e.contains("not found") && e.contains("newdata"), "{e}");
    // A layer whose matrix disagrees with obs is refused as the file is opened, naming both.
    {
        let f = hdf5::File::open_rw(&copy).unwrap();
        let x = f.group("X").unwrap();
        let indptr: Vec<i64> = x.dataset("indptr").unwrap().read_raw().unwrap();
        let end = indptr[10] as usize;
        let indices: Vec<i32> = x.dataset("indices").unwrap().read_raw().unwrap();
        let data: Vec<f32> = x.dataset("data").unwrap().read_raw().unwrap();
        let layers = f.group("layers").or_else(|_| f.create_group("layers")).unwrap();
        let layer = layers.create_group("short").unwrap();
        let enc: hdf5::types::VarLenUnicode = "csr_matrix".parse().unwrap();
        layer.new_attr::<hdf5::types::VarLenUnicode>().create("encoding-type").unwrap().write_scalar(&enc).unwrap();
        layer.new_attr::<i64>().shape([2]).create("shape").unwrap().write_raw(&[10i64, 2000]).unwrap();
        layer.new_dataset::<i64>().shape([11]).create("indptr").unwrap().write_raw(&indptr[..11]).unwrap();
        layer.new_dataset::<i32>().shape([end]).create("indices").unwrap().write_raw(&indices[..end]).unwrap();
        layer.new_dataset::<f32>().shape([end]).create("data").unwrap().write_raw(&data[..end]).unwrap();
    }
    let e = h5ad::backed_info(cs, Some("short")).err().unwrap().to_string();
    assert!(e.contains("copy.h5ad") && e.contains("10 cells") && e.contains("obs has 2638"), "{e}");
    assert!(!h5ad::backed_info(cs, None).unwrap().fingerprint.is_empty());
    // A dense dataset: its shape is its layout.
    let p = dir.join("dense.h5");
    {
        let f = hdf5::File::create(&p).unwrap();
        f.new_dataset::<i32>().shape([4, 3]).create("a").unwrap().write_raw(&[0i32; 12]).unwrap();
        f.new_dataset::<i32>().shape([3, 4]).create("b").unwrap().write_raw(&[0i32; 12]).unwrap();
    }
    let ps = p.to_str().unwrap();
    let (da, db) = (DiskCounts::open(ps, "a", &[]).unwrap(), DiskCounts::open(ps, "b", &[]).unwrap());
    assert_ne!(da.fingerprint(), db.fingerprint());
    assert!(db.check_fingerprint(&da.fingerprint()).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_matrix_read_into_memory_widens_what_16_bits_cannot_hold() {
    // Synthetic, for the sizes: 70,000 genes (positions past 65,535) and a count of 100,000 in the
    // last cell, after two cells held in 16 bits. Dense, so the zeros are left out as it loads.
    let dir = std::env::temp_dir().join(format!("scvir-load-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (n, g) = (3usize, 70_000usize);
    let mut dense = vec![0f32; n * g];
    for (c, j, v) in [(0, 3, 2.0), (0, 69_999, 1.0), (1, 65_536, 7.0), (2, 12, 100_000.0), (2, 40_000, 3.0)] {
        dense[c * g + j] = v;
    }
    let p = dir.join("wide.h5");
    hdf5::File::create(&p).unwrap().new_dataset::<f32>().shape([n, g]).create("counts").unwrap().write_raw(&dense).unwrap();
    let ps = p.to_str().unwrap();
    let m = Arc::new(LoadedMatrix::load(ps, "counts").unwrap());
    assert_eq!((m.narrow(), m.nnz()), ((false, false), 5));
    let sel: Vec<usize> = vec![69_999, 12, 65_536, 3];
    let (mem, disk) = (DiskCounts::in_memory(m, &sel).unwrap(), DiskCounts::open(ps, "counts", &sel).unwrap());
    let b = mem.read_cells(&[2, 0, 1]).unwrap();
    assert_eq!(sorted_row(b.row(0).0, b.row(0).1), vec![(1, 100_000.0)]);
    assert_eq!(sorted_row(b.row(1).0, b.row(1).1), vec![(0, 1.0), (3, 2.0)]);
    assert_eq!(sorted_row(b.row(2).0, b.row(2).1), vec![(2, 7.0)]);
    assert_eq!(mem.summaries().unwrap().library, disk.summaries().unwrap().library);
    // A value that is not a count is refused as the file's would be, naming the file and the cell.
    dense[g + 5] = -1.0;
    hdf5::File::open_rw(&p).unwrap().new_dataset::<f32>().shape([n, g]).create("bad").unwrap().write_raw(&dense).unwrap();
    let e = LoadedMatrix::load(ps, "bad").err().unwrap().to_string();
    assert!(e.contains("wide.h5") && e.contains("cell 2") && e.contains("-1"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn training_and_the_latent_from_disk_agree_with_memory() {
    let _session = runtime::Session::enter(runtime::SessionOptions { n_threads: Some(1), ..Default::default() });
    let d = h5ad::read(&path(), None).unwrap();
    let x = counts(&d);
    let sel: Vec<usize> = (0..x.n_genes()).collect();
    let disk = DiskCounts::open(&path(), "X", &sel).unwrap();
    let summaries = disk.summaries().unwrap();
    let batch = vec![0i32; x.n_cells()];
    let cov = Covariates::default();
    let cfg = TrainConfig { max_epochs: Some(8), seed: 3, ..Default::default() };
    let fit = |source: CountSource<'_>| {
        runtime::seed_everything(3);
        let mut vae = Vae::new(VaeConfig::new(x.n_genes() as i64, 1), Device::Cpu, None).unwrap();
        let out = train::train_on(&mut vae, source, &batch, &cov, &cfg, &mut NoObserver).unwrap();
        (vae, out)
    };
    let (vae_m, out_m) = fit(CountSource::Memory(x));
    let (vae_d, out_d) = fit(CountSource::Disk(&disk, &summaries));
    // Same split; the minibatches differ (block shuffling), the fit does not.
    assert_eq!(out_m.split, out_d.split);
    let last = |o: &train::TrainOutcome| o.history.epochs.last().unwrap().elbo_validation.unwrap();
    let rel = (last(&out_m) - last(&out_d)).abs() / last(&out_m);
    assert!(rel < 0.01, "validation ELBO memory {} disk {}", last(&out_m), last(&out_d));
    // The latent of one model is the same whether its cells come from memory or disk.
    let q = infer::LatentQuery::Mean { mc_samples: 1 };
    let (zm, _) = infer::latent_representation(&vae_d, x, &batch, &cov, q, 128).unwrap();
    let (zd, _) = infer::latent_representation(&vae_d, CountSource::Disk(&disk, &summaries), &batch, &cov, q, 128).unwrap();
    assert_eq!(zm, zd);
    drop(vae_m);
}
