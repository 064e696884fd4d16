"""The shape of the code, checked from its source: the folders of `modeling_scgrn/` are its layers and import only
downwards, no import circle, no library function over 100 lines nor module over 700, and `model/` is exactly the
code that ships with the weights, importing only what `trust_remote_code` can count on."""

import ast
import sys
from pathlib import Path

from modeling_scgrn.model import SHIPPED_CODE

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "modeling_scgrn"
SCRIPTS = sorted([*(ROOT / "data").glob("*.py"), *(ROOT / "pretrain").glob("*.py"), *(ROOT / "finetune").glob("*.py")])
# Each subpackage may import only subpackages of a lower layer (and its own modules).
LAYERS = {"model": 0, "storage": 0, "options": 0, "grn": 1, "cells": 2, "hub": 2, "evaluation": 3, "train": 4, "tl": 4,
          "bench": 5, "workflows": 6}
# The one upward import: `ScGrnPreTrainedModel.push_to_hub` publishes a complete repo through scgrn's publisher,
# imported inside a try block (so remote loading, which has no scgrn, never needs it).
UPWARD = {("model.modeling_scgrn", "hub.publish")}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def package_imports(path: Path) -> set[str]:
    """Package modules (dotted, below `modeling_scgrn`) a file imports, at the top or inside functions."""
    here = module_name(path).split(".")[:-1] if path.is_relative_to(PACKAGE) else []
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - node.level + 1]
            if node.module:
                found.add(".".join([*base, node.module]))
            else:
                found |= {".".join([*base, a.name]) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("modeling_scgrn."):
            found.add(node.module.removeprefix("modeling_scgrn."))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("modeling_scgrn.") for a in node.names if a.name.startswith("modeling_scgrn.")}
    return {name for name in found if name and name != "__version__"}


def library_files() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if path.parent != PACKAGE and "model_cards" not in path.parts)


def test_every_module_lives_in_a_layer():
    assert {path.name for path in PACKAGE.glob("*.py")} == {"__init__.py"}
    assert {path.parent.name for path in library_files()} == set(LAYERS)


def test_layers_import_only_downwards():
    for path in library_files():
        layer = path.relative_to(PACKAGE).parts[0]
        for target in package_imports(path):
            other = target.split(".")[0]
            allowed = other == layer or LAYERS[other] < LAYERS[layer] or (module_name(path), target) in UPWARD
            assert allowed, f"{module_name(path)} imports {target}"


def test_nothing_in_the_library_imports_workflows():
    """Workflows (and their `cli`) are what scripts call; the library below never calls back up into them."""
    for path in library_files():
        if not path.is_relative_to(PACKAGE / "workflows"):
            imported = {t for t in package_imports(path) if t.startswith("workflows")}
            assert not imported, f"{module_name(path)} imports {imported}"


def test_no_import_circle():
    graph = {module_name(path): package_imports(path) - {module_name(path)} for path in library_files()}

    def visit(module, trail):
        for target in sorted(graph.get(module, ())):
            assert target not in trail, " -> ".join([*trail, target])
            visit(target, [*trail, target])

    for module in graph:
        visit(module, [module])


def test_functions_and_modules_stay_readable():
    for path in [*library_files(), *SCRIPTS]:
        text = path.read_text()
        if path.is_relative_to(PACKAGE):
            assert len(text.splitlines()) <= 700, f"{path.name} has {len(text.splitlines())} lines"
        compiled = {ast.unparse(n.args[0]) for n in ast.walk(ast.parse(text))  # numba.njit(...)(kernel)
                    if isinstance(n, ast.Call) and "njit" in ast.unparse(n.func) and n.args}
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in compiled:
                length = node.end_lineno - node.lineno + 1
                assert length <= 100, f"{path.name}:{node.name} has {length} lines"


def test_shipped_code_is_the_model_folder():
    folder = PACKAGE / "model"
    assert set(SHIPPED_CODE) == {path.name for path in folder.glob("*.py")} - {"__init__.py"}
    assert {"configuration_scgrn.py", "modeling_scgrn.py", "tokenization_scgrn.py"} <= set(SHIPPED_CODE)


def test_shipped_files_import_only_what_remote_loading_has():
    allowed = {"torch", "transformers", "tokenizers", "numpy", "safetensors", "__future__"}
    for name in SHIPPED_CODE:
        path = PACKAGE / "model" / name
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            elif isinstance(node, ast.ImportFrom):
                # remote loading resolves only flat siblings: `from .x import`, x a shipped file
                assert node.level == 1 and f"{node.module}.py" in SHIPPED_CODE, (name, node.module)
                continue
            else:
                continue
            outside = {r for r in roots - allowed if r not in sys.stdlib_module_names}
            # `modeling_scgrn.hub.publish` is imported inside a try block of push_to_hub, which remote loading skips
            assert outside <= {"modeling_scgrn"}, (name, outside)


def test_script_options_need_only_the_standard_library():
    """Scripts read `options/arguments.py` by path before importing scgrn (which loads torch): it may import only the
    standard library, and nothing relative."""
    path = PACKAGE / "options" / "arguments.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert not node.level and node.module.split(".")[0] in sys.stdlib_module_names, node.module
        elif isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] in sys.stdlib_module_names for a in node.names)
