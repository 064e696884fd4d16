"""transformers' own common model and config tests (`ModelTesterMixin`, `ConfigTester`) run against scgrn's three
heads, in both value encodings.

The test files come from the source distribution of the installed transformers release, fetched once through the
package index (`pip download`) into a cache folder: they are not in its wheel. That sdist lacks three helper
modules the files import; they are written here as what they are for a model like scgrn: no generation mixin
(scgrn generates nothing), no export mixin (torch.export is not a scgrn feature), and an empty table of the
config keyword arguments shared by every model (so `ConfigTester`'s check of them has nothing to compare, and says
so by passing; every other config check runs). Offline, the module is skipped with its reason (a failure in CI).

A GRN model refuses to run without its prior, and the mixin builds models from a config alone; the classes under test
attach a small prior when built, as `attach_grn` does after `ScGrnModel(config)`. Tests that do not apply are
skipped with their reason; every other one must pass.
"""

import os
import subprocess
import sys
import tarfile
import tempfile
import unittest
from pathlib import Path

import pytest
import torch
import transformers

HELPERS = {
    "exporters/test_export.py": "class ExportTesterMixin:  # not in the sdist; scgrn is not a torch.export model\n"
                                "    pass\n",
    "generation/test_utils.py": "class GenerationTesterMixin:  # not in the sdist; scgrn generates nothing\n    pass\n",
    "utils/test_configuration_utils.py": "config_common_kwargs = {}  # not in the sdist\n",
}


def common_tests_root() -> Path:
    """A folder holding transformers' `tests` package (the two common files and the helpers), for the installed
    release, fetched through the package index once."""
    version = transformers.__version__
    root = Path(os.environ.get("SCGRN_TEST_CACHE", Path.home() / ".cache" / "scgrn-tests")) / f"transformers-{version}"
    package = root / "tests"
    if (package / "test_modeling_common.py").is_file():
        return root
    with tempfile.TemporaryDirectory() as download:
        result = subprocess.run([sys.executable, "-m", "pip", "download", f"transformers=={version}", "--no-deps",
                                 "--no-binary", ":all:", "--quiet", "-d", download], capture_output=True, text=True,
                                timeout=300, check=False)
        archives = list(Path(download).glob("transformers-*.tar.gz"))
        if result.returncode != 0 or not archives:
            message = f"transformers {version}'s sdist could not be fetched: {result.stderr.strip()[-300:]}"
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail(message)
            pytest.skip(message, allow_module_level=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root.parent))  # beside its place, so the rename below is atomic
        with tarfile.open(archives[0]) as archive:
            for name in ("test_modeling_common.py", "test_configuration_common.py"):
                member = archive.getmember(f"transformers-{version}/tests/{name}")
                (staging / "tests").mkdir(parents=True, exist_ok=True)
                (staging / "tests" / name).write_bytes(archive.extractfile(member).read())
    for relative, text in {"__init__.py": "", **HELPERS}.items():
        path = staging / "tests" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(text)
    staging.replace(root)
    return root


sys.path.insert(0, str(common_tests_root()))
pytest.importorskip("parameterized", reason="transformers' common tests need parameterized (the test extra)")
from tests.test_configuration_common import ConfigTester
from tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor

from modeling_scgrn import (
    ScGrnConfig,
    ScGrnForCellClassification,
    ScGrnForMaskedExpressionModeling,
    ScGrnModel,
)

PRIOR = torch.tensor([[4, 4, 5, 8, 9], [5, 6, 7, 4, 10]])  # regulator -> target ids of the tester's vocabulary


def with_prior(model_class):
    """`model_class` whose models carry `PRIOR` (its edges inside the vocabulary) once built, and again after
    `init_weights` (which resets an edge buffer to unset); on the meta device nothing can be attached."""

    class WithPrior(model_class):
        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            self.attach_prior()

        def attach_prior(self):
            inside = PRIOR[:, (PRIOR < self.config.vocab_size).all(0)]
            if self.config.grn_mode != "dense" and not self.base_model.grn_edges.is_meta and inside.numel():
                self.set_grn_edges(inside)

        def init_weights(self):
            super().init_weights()
            self.attach_prior()

    WithPrior.__name__, WithPrior.__qualname__ = model_class.__name__, model_class.__qualname__
    return WithPrior


class ScGrnModelTester:
    def __init__(self, parent, value_encoding: str = "binned"):
        self.parent, self.value_encoding = parent, value_encoding
        self.batch_size, self.seq_length, self.vocab_size = 3, 9, 24
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = 32, 2, 4
        self.is_training = True

    def get_config(self) -> ScGrnConfig:
        return ScGrnConfig(vocab_size=self.vocab_size, hidden_size=self.hidden_size, n_bins=5,
                           num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
                           intermediate_size=37, value_encoding=self.value_encoding, num_labels=3,
                           hidden_dropout_prob=0.0, num_grn_edges=PRIOR.shape[1])

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        ids = 4 + ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 4)  # genes after the specials
        ids[:, 0] = config.cls_token_id
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if self.value_encoding == "binned":
            inputs["expression_bins"] = 1 + ids_tensor([self.batch_size, self.seq_length], 5)
        else:
            inputs["expression_values"] = floats_tensor([self.batch_size, self.seq_length])
        return config, inputs


class ScGrnCommonTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = tuple(with_prior(c) for c in (ScGrnModel, ScGrnForMaskedExpressionModeling,
                                                      ScGrnForCellClassification))
    additional_model_inputs = ("expression_bins", "expression_values")  # a cell's values go with its gene ids
    value_encoding = "binned"

    def setUp(self):
        self.model_tester = ScGrnModelTester(self, self.value_encoding)
        self.config_tester = ConfigTester(self, config_class=ScGrnConfig, hidden_size=37, num_attention_heads=1)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        """transformers adds labels for the heads it knows by name; scgrn's: masked values (-100 / NaN elsewhere)
        and cell types."""
        inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels)
        if return_labels and model_class.task == "masked_expression":
            binned = "expression_bins" in inputs
            labels = (inputs["expression_bins"] if binned else inputs["expression_values"]).clone()
            labels[:, ::2] = -100 if binned else float("nan")
            inputs["labels"] = labels
        elif return_labels and model_class.task == "cell_classification":
            inputs["labels"] = torch.arange(self.model_tester.batch_size) % 3
        return inputs

    def _heads_only(self, test):
        """transformers skips training tests for base models by its own name table, which scgrn is not in: the
        encoder has no loss to train on."""
        saved = self.all_model_classes
        self.all_model_classes = tuple(c for c in saved if c.task != "encoder")
        try:
            test()
        finally:
            self.all_model_classes = saved

    def test_training(self):
        self._heads_only(super().test_training)

    def test_training_gradient_checkpointing(self):
        self._heads_only(super().test_training_gradient_checkpointing)

    def test_training_gradient_checkpointing_use_reentrant_false(self):
        self._heads_only(super().test_training_gradient_checkpointing_use_reentrant_false)

    def test_training_gradient_checkpointing_use_reentrant_true(self):
        self._heads_only(super().test_training_gradient_checkpointing_use_reentrant_true)

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_sdpa_can_dispatch_non_composite_models(self):
        self.skipTest("scgrn's default kernel is grn_auto (exact and prior-structured), not sdpa; sdpa stays "
                      "selectable, and tests/test_attention.py checks it against eager")


class ScGrnContinuousCommonTest(ScGrnCommonTest):
    value_encoding = "continuous"
