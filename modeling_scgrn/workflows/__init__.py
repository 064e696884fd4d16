"""The runs scripts start, each one function taking typed configs and options: data, pretrain, finetune, compare,
interpret, perturb, and the known-truth and knockout benchmarks. Nothing in the library imports them; `cli` is what
the scripts share once their arguments are parsed."""
