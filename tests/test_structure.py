"""The shape of the code, checked from its source: no import circle inside the package, no library function over
100 lines nor module over 700, and the files shipped with the weights import only what `trust_remote_code` can
count on."""

import ast
import sys
from pathlib import Path

from modeling_scgrn.configuration_scgrn import SHIPPED_CODE

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "modeling_scgrn"
SCRIPTS = [ROOT / "data" / "tokenize_cells.py", ROOT / "data" / "fetch_prior.py", ROOT / "pretrain" / "run.py",
           ROOT / "finetune" / "run.py", ROOT / "finetune" / "compare.py", ROOT / "finetune" / "interpret.py",
           ROOT / "finetune" / "push_to_hub.py"]


def package_imports(path: Path) -> set[str]:
    """Sibling modules a package file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("modeling_scgrn."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("modeling_scgrn.")}
    return found - {"__version__"}


def test_no_import_circle():
    graph = {path.stem: package_imports(path) - {path.stem} for path in PACKAGE.glob("*.py")}
    graph.pop("__init__")  # the package imports its parts; no part imports the package's registrations

    def visit(module, trail):
        for target in sorted(graph.get(module, ())):
            assert target not in trail, " -> ".join([*trail, target])
            visit(target, [*trail, target])

    for module in graph:
        visit(module, [module])


def test_functions_and_modules_stay_readable():
    for path in [*PACKAGE.glob("*.py"), *SCRIPTS]:
        text = path.read_text()
        if path.parent == PACKAGE:
            assert len(text.splitlines()) <= 700, f"{path.name} has {len(text.splitlines())} lines"
        compiled = {ast.unparse(n.args[0]) for n in ast.walk(ast.parse(text))  # numba.njit(...)(kernel)
                    if isinstance(n, ast.Call) and "njit" in ast.unparse(n.func) and n.args}
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in compiled:
                length = node.end_lineno - node.lineno + 1
                assert length <= 100, f"{path.name}:{node.name} has {length} lines"


def test_shipped_files_import_only_what_remote_loading_has():
    allowed = {"torch", "transformers", "tokenizers", "numpy", "safetensors", "__future__"}
    for name in SHIPPED_CODE:
        for node in ast.walk(ast.parse((PACKAGE / name).read_text())):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            outside = {r for r in roots - allowed if r not in sys.stdlib_module_names}
            # `modeling_scgrn.hub` is imported inside a try block of push_to_hub, which remote loading skips
            assert outside <= {"modeling_scgrn"}, (name, outside)
