import anndata as ad
import numpy as np
import pytest
import torch
from conftest import tiny_config

from modeling_scgrn import ScGrnForCellClassification, ScGrnTokenizer
from modeling_scgrn.cells.collators import DataCollatorForCellClassification
from modeling_scgrn.cells.reading import pbmc68k_reduced_counts
from modeling_scgrn.cells.tokenize import tokenize_anndata
from modeling_scgrn.tl.verbs import check_labels, embed, predict


@pytest.fixture(scope="module")
def pbmc():
    return pbmc68k_reduced_counts()


@pytest.fixture(scope="module")
def classifier(pbmc):
    tokenizer = ScGrnTokenizer.from_genes(pbmc.var_names, n_bins=5)
    classes = sorted(pbmc.obs["bulk_labels"].unique())
    torch.manual_seed(0)
    model = ScGrnForCellClassification(tiny_config(
        tokenizer, grn_mode="dense", num_labels=len(classes), id2label=dict(enumerate(classes)),
        label2id={c: i for i, c in enumerate(classes)}))
    return model.eval(), tokenizer


def test_predict_writes_obs_and_obsm_and_round_trips(pbmc, classifier, tmp_path):
    model, tokenizer = classifier
    adata = pbmc[:90].copy()
    predict(adata, model, tokenizer, max_length=64, batch_size=16, chunk_size=40)
    classes = list(model.config.id2label.values())
    assert list(adata.obs["scgrn_prediction"].cat.categories) == classes
    assert adata.obsm["scgrn_probabilities"].shape == (90, len(classes))
    np.testing.assert_allclose(adata.obsm["scgrn_probabilities"].sum(1), 1.0, rtol=1e-5)
    assert adata.obsm["X_scgrn"].shape == (90, 32)
    # the same cells in one batch give the same answers (batching and chunking change nothing)
    with torch.no_grad():
        direct = model(**tokenizer(adata, max_length=64))
    np.testing.assert_allclose(adata.obsm["scgrn_probabilities"], direct.logits.softmax(-1).numpy(), atol=1e-5)
    path = tmp_path / "predicted.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert back.obs["scgrn_prediction"].tolist() == adata.obs["scgrn_prediction"].tolist()
    np.testing.assert_array_equal(back.obsm["X_scgrn"], adata.obsm["X_scgrn"])
    assert list(back.uns["scgrn"]["classes"]) == classes
    embed(back, model, tokenizer, key_added="other", max_length=64)
    np.testing.assert_allclose(back.obsm["X_other"], adata.obsm["X_scgrn"], atol=1e-5)


def test_verbs_follow_scanpys_key_added_and_copy(pbmc, classifier, tmp_path):
    """key_added as in sc.tl.umap (obsm["X_<key>"], uns["<key>"]["params"]); copy=True leaves the input alone."""
    model, tokenizer = classifier
    adata = pbmc[:30].copy()
    adata.var["symbol"] = adata.var_names
    adata.var_names = [f"id{i}" for i in range(adata.n_vars)]
    before = (set(adata.obsm), set(adata.uns), set(adata.obs.columns))
    copied = predict(adata, model, tokenizer, key_added="ct", copy=True, gene_column="symbol", max_length=64)
    assert (set(adata.obsm), set(adata.uns), set(adata.obs.columns)) == before  # the input is untouched
    assert {"X_ct", "ct_probabilities"} <= set(copied.obsm) and {"ct_prediction", "ct_probability"} <= set(copied.obs)
    params = copied.uns["ct"]["params"]
    assert params["model"] == "ScGrnForCellClassification" and params["gene_column"] == "symbol"
    assert params["max_length"] == 64 and params["normalize"] is True and "layer" not in params
    assert embed(adata, model, tokenizer, gene_column="symbol", max_length=64) is None
    np.testing.assert_allclose(adata.obsm["X_scgrn"], copied.obsm["X_ct"], atol=1e-5)
    with pytest.raises(ValueError, match="no column 'gene'"):
        embed(adata, model, tokenizer, gene_column="gene")
    with pytest.raises(ValueError, match="no layer 'counts'"):
        embed(adata, model, tokenizer, gene_column="symbol", layer="counts")
    copied.write_h5ad(tmp_path / "copied.h5ad")  # what the verbs record can be saved


def test_prediction_inputs_are_checked(pbmc, classifier):
    model, tokenizer = classifier
    adata = pbmc[:20].copy()
    with pytest.raises(ValueError, match="no column 'cell_type'"):
        check_labels(adata, "cell_type", model)
    adata.obs["relabelled"] = adata.obs["bulk_labels"].astype(str)
    adata.obs.iloc[:3, adata.obs.columns.get_loc("relabelled")] = "Platelet"
    with pytest.warns(UserWarning, match=r"3 cells carry labels the model was not trained on: Platelet \(3\)"):
        assert check_labels(adata, "relabelled", model) == {"Platelet": 3}
    partial = adata[:, :200].copy()
    with pytest.warns(UserWarning, match="cover only 200 of the model's 765"):
        predict(partial, model, tokenizer, max_length=32)
    renamed = adata.copy()
    renamed.var_names = [f"ENSG{i:011d}" for i in range(renamed.n_vars)]
    with pytest.raises(ValueError, match="none of the 765 genes"):
        predict(renamed, model, tokenizer)


def test_works_with_transformers_trainer(pbmc, classifier, tmp_path):
    from transformers import Trainer, TrainingArguments

    model, tokenizer = classifier
    dataset, _ = tokenize_anndata(pbmc[:64], tokenizer, obs_columns=["bulk_labels"], max_length=64, show_progress=False)
    label2id = model.config.label2id
    dataset = dataset.map(lambda cell: {"labels": label2id[cell["bulk_labels"]]})
    before = model.classifier.weight.detach().clone()
    trainer = Trainer(
        model=model.train(),
        args=TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=16,
                               report_to=[], use_cpu=True, save_strategy="no", logging_steps=1),
        train_dataset=dataset,
        data_collator=DataCollatorForCellClassification(model.config.pad_token_id),
    )
    result = trainer.train()
    assert result.global_step == 3 and np.isfinite(result.training_loss)
    assert not torch.equal(before, model.classifier.weight.detach())



def test_embedding_metrics_add_scib_scores_where_installed():
    """Runs where the optional `scib` extra is installed (not in CI's test extra: it pulls jax)."""
    pytest.importorskip("scib_metrics")
    import scanpy as sc
    from sklearn.metrics import silhouette_score

    from modeling_scgrn.evaluation.metrics import embedding_metrics

    adata = sc.datasets.pbmc68k_reduced()
    embeddings, labels = adata.obsm["X_pca"][:, :20], adata.obs["bulk_labels"].astype(str).to_numpy()
    metrics = embedding_metrics(embeddings, labels)
    # scib's label silhouette is the euclidean silhouette rescaled to [0, 1]
    expected = (silhouette_score(embeddings, labels, metric="euclidean") + 1) / 2
    assert metrics["scib_silhouette_label"] == pytest.approx(expected, abs=1e-3)
    assert 0.2 < metrics["scib_kmeans_nmi"] <= 1 and 0 < metrics["scib_kmeans_ari"] <= 1
