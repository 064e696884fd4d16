"""scanpy-style verbs: a scgrn model run over an AnnData, results written where scanpy users look for them.

    import modeling_scgrn as scgrn
    scgrn.tl.embed(adata, model, tokenizer)     # adata.obsm["X_scgrn"]
    scgrn.tl.predict(adata, model, tokenizer)   # adata.obs["scgrn_prediction"], ...
    scgrn.tl.perturb(adata, model, tokenizer, ["SPI1"])
    scgrn.tl.regulatory_edges(adata, model, tokenizer)  # a decoupler network: source, target, weight, in_prior
"""

from .attention import attention_scores, prior_agreement, top_pairs
from .edges import regulatory_edges
from .perturb import perturb
from .verbs import embed, predict

__all__ = ["embed", "predict", "perturb", "regulatory_edges", "attention_scores", "prior_agreement", "top_pairs"]
