"""The model card written into every model folder, from the template in `model_cards/`."""

from __future__ import annotations

import json
from importlib.resources import files

import yaml

from ..grn.coverage import coverage_line
from ..grn.network import GeneRegulatoryNetwork


# What to cite for a prior read from OmniPath, by the resource label its provenance records. The table scgrn reads
# is OmniPath's; each resource's own paper is the one to cite for its edges.
PRIOR_CITATIONS = {
    "CollecTRI": "Müller-Dott S. et al., Expanding the coverage of regulons from high-confidence prior knowledge for "
                 "accurate estimation of transcription factor activities. Nucleic Acids Research 51, 10934-10949 "
                 "(2023), doi:10.1093/nar/gkad841",
    "DoRothEA": "Garcia-Alonso L. et al., Benchmark and integration of resources for the estimation of human "
                "transcription factor activities. Genome Research 29, 1363-1375 (2019), doi:10.1101/gr.240663.118",
}
OMNIPATH_CITATION = ("Türei D. et al., Integrated intra- and intercellular signaling knowledge for multicellular "
                     "omics analysis. Molecular Systems Biology 17, e9923 (2021), doi:10.15252/msb.20209923")


def _prior_terms(provenance: dict) -> str:
    """The card's lines on citing the prior and on its licence."""
    resource = provenance.get("resource")
    if resource in PRIOR_CITATIONS:
        cite = f"- Cite: {PRIOR_CITATIONS[resource]}; and OmniPath, which serves it: {OMNIPATH_CITATION}.\n"
        terms = ("- Licence: this model's licence covers its weights and code, not the prior. OmniPath's data are free "
                 f"to use under each resource's own licence: check {resource}'s before redistributing its edges "
                 "(`grn_edges.parquet` holds them).")
    else:
        cite = "- Cite: the source of this network (a custom prior: scgrn records no citation for it).\n"
        terms = "- Licence: that of the network's source, which this model's licence does not cover."
    return cite + terms


def model_card(
    model,
    network: GeneRegulatoryNetwork | None,
    report: dict | None,
    *,
    repo_id: str = "org/scgrn",
    training_data: str = "Not recorded.",
    evaluation: dict | None = None,
    baselines_markdown: str | None = None,
    prior_coverage: dict | None = None,
    license: str = "apache-2.0",
    datasets: list[str] | None = None,
) -> str:
    """The model card text, rendered from `model_cards/scgrn.md` (the single template)."""
    config = model.config
    metadata = {
        "library_name": "transformers",
        "license": license,
        "tags": ["single-cell", "scRNA-seq", "gene-regulatory-network", "biology", "scgrn"],
        "pipeline_tag": "feature-extraction",
    }
    if datasets:
        metadata["datasets"] = datasets
    if evaluation and "accuracy" in evaluation:
        metadata["metrics"] = ["accuracy", "f1"]
    if network is not None and report is not None:
        p = network.provenance
        prior_section = (
            f"- Resource: {p.get('resource', 'custom')} ({p.get('version', 'version not recorded')}), organism "
            f"{p.get('organism', '?')}, identifiers {p.get('id_type', '?')}.\n"
            + (f"- Source file: {p['source_file']}" if p.get("source_file") else "- Source file: not recorded")
            + (f", SHA-256 {p['sha256']}" if p.get("sha256") else "")
            + (f"; {p['n_edges']} edges after reading" if p.get("n_edges") is not None else "") + ".\n"
            f"- Filters: {p.get('filters', 'none recorded')}; dropped: {json.dumps(p.get('dropped', {}))}.\n"
            f"- On this model's gene panel ({report['panel_genes']} genes): {report['edges_in_panel']} edges, "
            f"{report['regulators_in_panel']} regulators, {report['targets_in_panel']} targets, density "
            f"{report['density']:.2e} of ordered gene pairs, {report['isolated_gene_share']:.1%} of panel genes "
            "without any edge.\n" + _prior_terms(p)
        )
    else:
        prior_section = "No prior attached (`grn_mode='dense'`)."
    mask_rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in config.mask_description().items())
    if evaluation:
        lines = ["| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in evaluation.items()
                  if isinstance(v, (int, float, str))]
        evaluation_text = "\n".join(lines)
    else:
        evaluation_text = "No evaluation recorded."
    if baselines_markdown:
        evaluation_text += "\n\nAgainst simple baselines on the same cells:\n\n" + baselines_markdown
    if prior_coverage:
        prior_section += "\n- In the training cells: " + coverage_line(prior_coverage).removeprefix("prior coverage: ")
    elif network is not None and report is not None:
        prior_section += ("\n- In the training cells: not measured (this folder was saved without them; "
                          "`save_model_folder(..., prior_coverage=grn.coverage.prior_coverage(...))` records it).")
    if training_data == "Not recorded." and not evaluation:
        training_data = ("Not recorded, and no evaluation either: these weights may be untrained (a model saved "
                         "without a training run).")
    template = files("modeling_scgrn").joinpath("model_cards/scgrn.md").read_text()
    return template.format(
        metadata=yaml.safe_dump(metadata, sort_keys=False).strip(),
        title=f"scgrn: {repo_id}",
        training_data=training_data,
        labels_section=_labels_section(model),
        prior_section=prior_section,
        mask_table=mask_rows,
        evaluation=evaluation_text,
        baseline_advice="read the baselines above" if baselines_markdown else
        "compare with a logistic regression on your own cells (this card records no baselines)",
        repo_id=repo_id,
        load_head=_load_head(model, repo_id),
    )


def _labels_section(model) -> str:
    """A classifier's cell types, as the card lists them."""
    if getattr(model, "task", None) != "cell_classification":
        return ""
    labels = [model.config.id2label[i] for i in sorted(model.config.id2label)]
    names = ", ".join(f"`{label}`" for label in labels)
    return f"\nCell types this classifier predicts ({len(labels)}): {names}\n"


def _load_head(model, repo_id: str) -> str:
    if getattr(model, "task", None) == "cell_classification":
        return ("Cell types: `AutoModelForSequenceClassification.from_pretrained(\"" + repo_id + "\")(**inputs)"
                ".logits.argmax(-1)`, names in `model.config.id2label`.\n")
    if getattr(model, "task", None) == "masked_expression":
        return ("Masked values and in-silico perturbations: `AutoModelForMaskedLM.from_pretrained(\"" + repo_id
                + "\")` (see `scgrn.tl.perturb`).\n")
    return ""
