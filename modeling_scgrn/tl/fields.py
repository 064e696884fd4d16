"""What every `tl` verb reads from an AnnData and how it writes back, in one place (as scanpy's tools do):

- reading: the genes are `adata.var[gene_column]` (default the var names), the values `adata.layers[layer]` (default
  `adata.X`), raw counts normalised by the tokenizer unless `normalize=False`, at most `max_length` tokens per cell;
- writing, with `key_added` as in `sc.tl.umap`: embeddings in `obsm["X_<key>"]`, per-cell columns in
  `obs["<key>_..."]`, everything else in `uns["<key>"]`, with the call's parameters in `uns["<key>"]["params"]`;
- `copy=False` writes into `adata`; `copy=True` writes into a copy and returns it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class CellFields:
    """Where a verb finds genes and values in an AnnData, and how it tokenizes them."""

    gene_column: str | None = None
    layer: str | None = None
    normalize: bool = True
    max_length: int | None = None

    def gene_names(self, adata) -> list[str]:
        if self.gene_column is None:
            return list(adata.var_names)
        if self.gene_column not in adata.var:
            raise ValueError(f"adata.var has no column {self.gene_column!r}; columns are {list(adata.var.columns)}.")
        return list(adata.var[self.gene_column].astype(str))

    def matrix(self, adata):
        if self.layer is None:
            return adata.X
        if self.layer not in adata.layers:
            raise ValueError(f"adata.layers has no layer {self.layer!r}; layers are {list(adata.layers)}.")
        return adata.layers[self.layer]

    def encode(self, adata, tokenizer, *, chunk_size: int | None = None, return_tensors: str = "pt"):
        """The cells tokenized, `chunk_size` cells at a time (all at once when None), after checking that the
        tokenizer knows enough of the genes."""
        from ..cells.reading import check_raw_counts

        if adata.n_obs == 0 or adata.n_vars == 0:
            raise ValueError(f"the AnnData holds {adata.n_obs} cells x {adata.n_vars} genes; there is nothing to read.")
        genes = self.gene_names(adata)
        tokenizer.check_coverage(genes)
        matrix = self.matrix(adata)
        if self.normalize:  # the tokenizer normalises raw counts: log data would be normalised twice, silently
            where = "adata.X" if self.layer is None else f"adata.layers[{self.layer!r}]"
            check_raw_counts(matrix, advice=f"{where} must hold raw counts: pass layer='counts' (a layer of raw "
                                            "counts), or normalize=False if the values are log1p-normalised.")
        step = chunk_size or max(adata.n_obs, 1)
        for start in range(0, adata.n_obs, step):
            yield tokenizer.encode_cells(matrix[start : start + step], genes, max_length=self.max_length,
                                         normalize=self.normalize, return_tensors=return_tensors)

    def params(self, model, **more) -> dict:
        """The parameters a verb records in `uns[key]["params"]` (None values left out: h5ad cannot store them)."""
        values = {"model": type(model).__name__, "grn_mode": model.config.grn_mode, **asdict(self), **more}
        return {k: v for k, v in values.items() if v is not None}


def target(adata, copy: bool):
    """The AnnData a verb writes into: `adata` itself, or a copy of it with `copy=True`."""
    return adata.copy() if copy else adata
