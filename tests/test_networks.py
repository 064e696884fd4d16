import json
import warnings

import pandas as pd
import pytest
import torch
from conftest import CELLTYPIST_SAMPLE, OMNIPATH_TABLE, shared_data_or_skip, tiny_config

from modeling_scgrn import ScGrnModel, ScGrnTokenizer
from modeling_scgrn.grn.coverage import plot_mask, prior_report
from modeling_scgrn.grn.network import GeneRegulatoryNetwork, read_mapping_table
from modeling_scgrn.grn.panel import select_gene_panel
from modeling_scgrn.model.controls import random_control_edges, shuffled_control_edges


@pytest.fixture(scope="module")
def omnipath():
    return pd.read_parquet(shared_data_or_skip(OMNIPATH_TABLE))


@pytest.fixture(scope="module")
def collectri(omnipath):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GeneRegulatoryNetwork.from_omnipath_table(omnipath, "collectri")


def test_collectri_from_real_omnipath_table(omnipath):
    with pytest.warns(UserWarning) as record:
        net = GeneRegulatoryNetwork.from_omnipath_table(omnipath, "collectri")
    messages = " ".join(str(w.message) for w in record)
    # 64,186 CollecTRI rows among 1,209 TFs; 2 are self edges and 399 repeat a (TF, target) pair
    assert net.provenance["n_rows_matching_filters"] == 64186
    assert net.provenance["n_regulators_before_dedup"] == 1209
    assert "dropped 2 self edges" in messages and "merged 399 duplicate" in messages
    assert len(net) == 64186 - 2 - 399
    assert len(net.regulators) == 1209 and len(net.targets) == 6503
    assert set(net.edges["weight"].unique()) <= {-1.0, 1.0, 0.0} and (net.edges["weight"] < 0).sum() > 5000
    assert net.provenance["resource"] == "CollecTRI" and net.provenance["organism"] == "human"
    # OmniPath keeps a UniProt accession where it found no symbol (P04637 is TP53); they are counted, not hidden
    assert net.provenance["genes_with_uniprot_accession"] > 1000
    assert net.provenance["rows_with_uniprot_accession"] > 10000
    assert "P04637" in set(net.genes)


def test_dorothea_and_bad_tables(omnipath):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dorothea = GeneRegulatoryNetwork.from_omnipath_table(omnipath, "dorothea")
    assert dorothea.provenance["n_rows_matching_filters"] == int(
        ((omnipath["type"] == "transcriptional") & omnipath["sources"].str.contains("DoRothEA")).sum()
    )
    with pytest.raises(ValueError, match="confidence levels"):
        GeneRegulatoryNetwork.from_omnipath_table(omnipath, "dorothea", confidence_levels=["A"])
    with pytest.raises(ValueError, match="columns"):
        GeneRegulatoryNetwork.from_omnipath_table(omnipath.drop(columns=["type"]))
    with pytest.raises(ValueError, match="lacks column"):
        GeneRegulatoryNetwork.from_dataframe(pd.DataFrame({"tf": ["A"], "gene": ["B"]}))


def test_files_round_trip(tmp_path, collectri):
    table = collectri.edges.head(50)
    table.to_csv(tmp_path / "net.csv", index=False)
    table.to_csv(tmp_path / "net.tsv", sep="\t", index=False)
    table.to_parquet(tmp_path / "net.parquet")
    for name in ("net.csv", "net.tsv", "net.parquet"):
        net = GeneRegulatoryNetwork.from_file(tmp_path / name)
        pd.testing.assert_frame_equal(net.edges, table.reset_index(drop=True), check_dtype=False)
    collectri.save(tmp_path / "saved", mask_options={"grn_direction": "regulator_to_target"})
    loaded = GeneRegulatoryNetwork.load(tmp_path / "saved")
    pd.testing.assert_frame_equal(loaded.edges, collectri.edges, check_dtype=False)
    assert loaded.provenance == collectri.provenance
    record = json.loads((tmp_path / "saved" / "grn_provenance.json").read_text())
    assert record["mask"]["grn_direction"] == "regulator_to_target"
    assert not list((tmp_path / "saved").glob("*.tmp"))


def test_map_genes_and_wrong_id_type(collectri):
    genes = ["STAT1", "IRF8", "IFNG", "IFNB1"]
    small = collectri.restrict(genes)
    assert len(small) >= 3
    ensembl = {"STAT1": "ENSG00000115415", "IRF8": "ENSG00000140968", "IFNG": "ENSG00000111537"}
    with pytest.warns(UserWarning, match="no entry in the mapping table"):
        mapped = small.map_genes(ensembl, id_type="ensembl")
    assert set(mapped.genes) <= set(ensembl.values())
    assert mapped.provenance["id_type"] == "ensembl" and mapped.provenance["id_mapping"]["genes_unmapped"] == 1
    tokenizer = ScGrnTokenizer.from_genes(genes)
    with pytest.raises(ValueError, match="Ensembl IDs and the vocabulary symbols"):
        mapped.to_vocab_edges(tokenizer)
    edges = small.to_vocab_edges(tokenizer)
    assert edges.shape == (2, len(small))


def test_no_edge_among_vocabulary(collectri):
    tokenizer = ScGrnTokenizer.from_genes(["NOTAGENE1", "NOTAGENE2"])
    with pytest.raises(ValueError, match="no edge of the network"):
        collectri.to_vocab_edges(tokenizer)


def test_prior_report_on_pbmc_panel(collectri):
    import scanpy as sc

    genes = sc.datasets.pbmc68k_reduced().raw.var_names
    report = prior_report(collectri, genes)
    assert report["panel_genes"] == 765 and report["edges_in_panel"] == 189
    assert report["regulators_in_panel"] == 26
    assert report["density"] == pytest.approx(189 / (765 * 764))
    assert 0 < report["isolated_gene_share"] < 1
    assert sum(report["out_degree"]["histogram"].values()) == 26


def test_prior_aware_panel_covers_more_of_the_prior(collectri, tmp_path):
    import anndata as ad

    adata = ad.read_h5ad(shared_data_or_skip(CELLTYPIST_SAMPLE))
    hvg, hvg_report = select_gene_panel(adata, collectri, n_top_genes=1000, strategy="hvg")
    ranked, ranked_report = select_gene_panel(adata, collectri, n_top_genes=1000, strategy="ranked")
    union, union_report = select_gene_panel(adata, collectri, n_top_genes=1000, strategy="union")
    assert len(hvg) == len(ranked) == 1000 and len(union) > 1000 and set(hvg) <= set(union)
    assert ranked_report["prior_aware"]["edges_in_panel"] > 1.5 * hvg_report["hvg_only"]["edges_in_panel"]
    assert union_report["prior_aware"]["edges_in_panel"] > ranked_report["prior_aware"]["edges_in_panel"]
    png = plot_mask(collectri, ranked, tmp_path / "mask.png")
    assert png.stat().st_size > 10_000


def test_controls_match_density_and_degrees(collectri):
    genes = sorted(collectri.genes)[:3000]
    tokenizer = ScGrnTokenizer.from_genes(genes)
    prior = collectri.restrict(genes).to_vocab_edges(tokenizer)
    panel = torch.as_tensor(tokenizer.gene_vocab_ids)
    random = random_control_edges(prior, panel, seed=1)
    shuffled = shuffled_control_edges(prior, seed=1)
    n = prior.shape[1]
    for control in (random, shuffled):
        assert control.shape == (2, n)
        assert len({tuple(e) for e in control.T.tolist()}) == n
        assert not (control[0] == control[1]).any()
    assert set(random.flatten().tolist()) <= set(panel.tolist())
    assert torch.equal(torch.bincount(shuffled[0]), torch.bincount(prior[0]))
    assert torch.equal(torch.bincount(shuffled[1], minlength=len(tokenizer)), torch.bincount(prior[1], minlength=len(tokenizer)))
    overlap = len({tuple(e) for e in shuffled.T.tolist()} & {tuple(e) for e in prior.T.tolist()})
    # hubs keep many partners under degree-preserving rewiring: about 35% of edges recur on this panel
    assert overlap < 0.5 * n
    assert torch.equal(random, random_control_edges(prior, panel, seed=1))
    assert torch.equal(shuffled, shuffled_control_edges(prior, seed=1))
    assert not torch.equal(shuffled, shuffled_control_edges(prior, seed=2))


def test_rewired_control_keeps_degrees_and_no_real_edge(collectri):
    tokenizer = ScGrnTokenizer.from_genes(sorted(collectri.genes))  # all of CollecTRI: 63,785 edges
    prior = torch.as_tensor(collectri.to_vocab_edges(tokenizer))
    rewired = shuffled_control_edges(prior, seed=1, avoid_prior=True)
    n = prior.shape[1]
    assert rewired.shape == (2, n) and len({tuple(e) for e in rewired.T.tolist()}) == n
    assert not (rewired[0] == rewired[1]).any()
    assert torch.equal(torch.bincount(rewired[0]), torch.bincount(prior[0]))
    assert torch.equal(torch.bincount(rewired[1], minlength=len(tokenizer)),
                       torch.bincount(prior[1], minlength=len(tokenizer)))
    assert not {tuple(e) for e in rewired.T.tolist()} & {tuple(e) for e in prior.T.tolist()}
    assert torch.equal(rewired, shuffled_control_edges(prior, seed=1, avoid_prior=True))
    model = ScGrnModel(tiny_config(tokenizer, grn_mode="rewired", grn_control_seed=1))
    model.set_grn_edges(prior)
    assert torch.equal(model.grn_edges, rewired)
    # one regulator of every target: the prior is the only edge set with these degrees, so it cannot be rewired
    with pytest.raises(ValueError, match="left 3 of 3 real edges"):
        shuffled_control_edges(torch.tensor([[4, 4, 4], [5, 6, 7]]), seed=0, avoid_prior=True)


def test_model_stores_the_control_it_uses(collectri):
    genes = sorted(collectri.genes)[:500]
    tokenizer = ScGrnTokenizer.from_genes(genes)
    prior = collectri.restrict(genes).to_vocab_edges(tokenizer)
    models = {mode: ScGrnModel(tiny_config(tokenizer, grn_mode=mode, grn_control_seed=3)) for mode in ("grn", "random", "shuffled")}
    for model in models.values():
        model.set_grn_edges(prior)
    assert models["grn"].config.num_grn_edges == models["random"].config.num_grn_edges == prior.shape[1]
    assert models["shuffled"].config.num_grn_edges == prior.shape[1]
    assert {tuple(e) for e in models["grn"].grn_edges.T.tolist()} == {tuple(e) for e in prior.T.tolist()}
    assert not torch.equal(models["random"].grn_edges, models["grn"].grn_edges)


def test_mapping_tables_in_celltypist_format(tmp_path, collectri):
    # headerless two-column CSVs as celltypist ships them; an empty second column means no counterpart
    (tmp_path / "id2name.csv").write_text(
        "ENSG00000115415,STAT1\nENSG00000140968,IRF8\nENSG00000111537,IFNG\nENSG00000999999,\n")
    (tmp_path / "human2mouse.csv").write_text("STAT1,Stat1\nIRF8,Irf8\nIFNG,Ifng\nIFNB1,Ifnb1\nMT-TF,\n")
    symbol_to_ensembl = read_mapping_table(tmp_path / "id2name.csv", reverse=True)
    assert list(symbol_to_ensembl.columns) == ["from", "to"] and len(symbol_to_ensembl) == 3
    small = collectri.restrict(["STAT1", "IRF8", "IFNG", "IFNB1"])
    mouse = small.map_genes(read_mapping_table(tmp_path / "human2mouse.csv"), organism="mouse")
    assert len(mouse) == len(small) and set(mouse.genes) <= {"Stat1", "Irf8", "Ifng", "Ifnb1"}
    assert mouse.provenance["organism"] == "mouse"


def test_decoupler_cache_is_read_without_network(tmp_path, collectri):
    table = collectri.edges.head(20)
    table.to_parquet(tmp_path / "collectri_human.parquet")
    (tmp_path / "collectri_human.json").write_text(json.dumps({"resource": "CollecTRI", "version": "cached"}))
    net = GeneRegulatoryNetwork.from_decoupler("collectri", cache_dir=tmp_path)
    assert len(net) == 20 and net.provenance["version"] == "cached"
    with pytest.raises(ValueError, match="not one of"):
        GeneRegulatoryNetwork.from_decoupler("trrust", cache_dir=tmp_path)


def test_read_recognises_omnipath_and_plain_networks(tmp_path, collectri):
    net = GeneRegulatoryNetwork.read(shared_data_or_skip(OMNIPATH_TABLE), "collectri")
    assert len(net) == len(collectri)
    collectri.edges.head(5).to_parquet(tmp_path / "plain.parquet")
    assert len(GeneRegulatoryNetwork.read(tmp_path / "plain.parquet")) == 5


def test_regulation_named_in_words_keeps_its_sign_and_unknown_words_are_refused():
    table = pd.DataFrame({"source": ["SPI1", "SPI1", "GATA1", "MYC"], "target": ["CD14", "LYZ", "KLF1", "CDK4"],
                          "weight": ["Activation", "repression", "-", None]})
    network = GeneRegulatoryNetwork.from_dataframe(table)
    assert network.edges["weight"].tolist() == [1.0, -1.0, -1.0, 1.0]  # missing: +1, as without a weight column
    table["weight"] = ["activation", "represses", "0.5", "-2"]
    with pytest.raises(ValueError, match=r"neither numbers nor a mode of regulation \(e.g. \['represses'\]\)"):
        GeneRegulatoryNetwork.from_dataframe(table)
