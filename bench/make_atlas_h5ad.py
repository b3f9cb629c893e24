"""Writes an atlas-sized .h5ad by resampling the real cells of the bundled PBMC 3k (2,000 genes).

Two conditions, as in a stimulation experiment: "ctrl" cells are PBMC 3k cells drawn with
replacement as they are; "stim" cells are drawn the same way, then every gene's counts are scaled
by a fixed gene-wise factor (log-normal, sd 0.5; seed 7) and Poisson-resampled. The file is
written in blocks (never held in memory): X as CSR float32 (int32 indices and indptr while the
nonzeros fit, as scipy and anndata write it), obs with the
condition and the source cell type as categoricals, var with the genes, anndata's encoding.

    python bench/make_atlas_h5ad.py N_CELLS OUT.h5ad
"""

import sys

import h5py
import numpy as np

SOURCE = "inst/extdata/pbmc3k_hvg2000.h5ad"
BLOCK = 50_000


def read_source(path):
    with h5py.File(path, "r") as f:
        x = f["X"]
        indptr = x["indptr"][:].astype(np.int64)
        indices = x["indices"][:].astype(np.int32)
        data = x["data"][:].astype(np.float32)
        var = f["var"]
        genes = var[var.attrs["_index"]][:].astype(str)
        ct = f["obs"]["cell_type"]
        cell_type = ct["categories"][:].astype(str)[ct["codes"][:]]
    return indptr, indices, data, genes, cell_type


def str_attr(obj, name, value):
    obj.attrs.create(name, value, dtype=h5py.string_dtype())


def write_categorical(group, name, codes, categories):
    g = group.create_group(name)
    str_attr(g, "encoding-type", "categorical")
    str_attr(g, "encoding-version", "0.2.0")
    g.attrs["ordered"] = False
    g.create_dataset("codes", data=codes.astype(np.int8))
    g.create_dataset("categories", data=np.array(categories, dtype=object), dtype=h5py.string_dtype())


def main(n_cells, out):
    indptr, indices, data, genes, cell_type = read_source(SOURCE)
    n_src, n_genes = len(indptr) - 1, len(genes)
    rng = np.random.default_rng(7)
    factor = np.exp(rng.normal(0.0, 0.5, n_genes)).astype(np.float64)
    types = sorted(set(cell_type))
    type_code = np.array([types.index(t) for t in cell_type])
    with h5py.File(out, "w") as f:
        str_attr(f, "encoding-type", "anndata")
        str_attr(f, "encoding-version", "0.1.0")
        x = f.create_group("X")
        str_attr(x, "encoding-type", "csr_matrix")
        str_attr(x, "encoding-version", "0.1.0")
        x.attrs["shape"] = np.array([n_cells, n_genes], dtype=np.int64)
        chunk = 1 << 20
        d_data = x.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(chunk,))
        d_idx = x.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(chunk,))
        ptr = np.zeros(n_cells + 1, dtype=np.int64)
        cond = np.zeros(n_cells, dtype=np.int8)
        src_type = np.zeros(n_cells, dtype=np.int8)
        nnz = 0
        for start in range(0, n_cells, BLOCK):
            end = min(start + BLOCK, n_cells)
            cells = rng.integers(0, n_src, end - start)
            stim = rng.random(end - start) < 0.5
            lens = indptr[cells + 1] - indptr[cells]
            pos = np.repeat(indptr[cells] - np.cumsum(np.concatenate(([0], lens[:-1]))), lens) + np.arange(lens.sum())
            idx = indices[pos]
            val = data[pos].astype(np.float64)
            row = np.repeat(np.arange(end - start), lens)
            s = stim[row]
            val[s] = rng.poisson(val[s] * factor[idx[s]])
            keep = val > 0
            idx, val, row = idx[keep], val[keep].astype(np.float32), row[keep]
            counts = np.bincount(row, minlength=end - start)
            if np.any(counts == 0):  # a stimulated cell that lost every count: keep its top gene
                for r in np.flatnonzero(counts == 0):
                    c = cells[r]
                    a, b = indptr[c], indptr[c + 1]
                    k = a + int(np.argmax(data[a:b]))
                    idx = np.append(idx, indices[k])
                    val = np.append(val, np.float32(data[k]))
                    row = np.append(row, r)
                order = np.argsort(row, kind="stable")
                idx, val, row = idx[order], val[order], row[order]
                counts = np.bincount(row, minlength=end - start)
            ptr[start + 1 : end + 1] = nnz + np.cumsum(counts)
            n_new = len(val)
            d_data.resize((nnz + n_new,))
            d_idx.resize((nnz + n_new,))
            d_data[nnz:] = val
            d_idx[nnz:] = idx
            nnz += n_new
            cond[start:end] = stim
            src_type[start:end] = type_code[cells]
            print(f"{end} cells, {nnz} nonzeros", flush=True)
        # scipy (and so anndata) keeps indptr and indices in one index type: int32 while the
        # nonzeros fit. A file with int64 indptr next to int32 indices makes scipy convert the whole
        # index array on every row slice, which costs a reader like scvi-tools O(nnz) per minibatch.
        x.create_dataset("indptr", data=ptr.astype(np.int32) if nnz < 2**31 else ptr)
        obs = f.create_group("obs")
        str_attr(obs, "encoding-type", "dataframe")
        str_attr(obs, "encoding-version", "0.2.0")
        str_attr(obs, "_index", "_index")
        obs.attrs.create("column-order", np.array(["condition", "cell_type"], dtype=object), dtype=h5py.string_dtype())
        names = np.char.add("cell", np.arange(n_cells).astype(str)).astype(object)
        obs.create_dataset("_index", data=names, dtype=h5py.string_dtype())
        write_categorical(obs, "condition", cond, ["ctrl", "stim"])
        write_categorical(obs, "cell_type", src_type, types)
        var = f.create_group("var")
        str_attr(var, "encoding-type", "dataframe")
        str_attr(var, "encoding-version", "0.2.0")
        str_attr(var, "_index", "_index")
        var.attrs.create("column-order", np.array([], dtype=object), dtype=h5py.string_dtype())
        var.create_dataset("_index", data=genes.astype(object), dtype=h5py.string_dtype())
        for g in ("layers", "obsm", "varm", "obsp", "varp", "uns"):
            grp = f.create_group(g)
            str_attr(grp, "encoding-type", "dict")
            str_attr(grp, "encoding-version", "0.1.0")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
