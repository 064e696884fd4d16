"""Cell-type finetuning of scgrn through Accelerate, with held-out evaluation and a Hub-ready model folder.

    accelerate launch finetune/run.py --config finetune/configs/pbmc68k.yaml --data runs/pbmc68k/data \
        --pretrained runs/pbmc68k/pretrain/model --label_column bulk_labels --output_dir runs/pbmc68k/finetune

Without `--pretrained` the model trains from scratch (a comparison baseline). Prints held-out accuracy and
macro-F1 next to the majority-class baseline; writes `model/` (weights, tokenizer, GRN files, model card),
`confusion_matrix.png` and `training_curves.png`.
"""

import argparse
import json

from modeling_scgrn.pipeline import add_config_arguments, run_finetuning, script_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--data", required=True, help="folder from data/tokenize_cells.py (with --label_column)")
    parser.add_argument("--pretrained", default=None, help="a pretrained scgrn model folder")
    parser.add_argument("--label_column", required=True, help="obs column with the cell types")
    parser.add_argument("--output_dir", required=True, help="checkpoints, logs, plots and model/ go here")
    parser.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder or 'latest'")
    args = parser.parse_args()
    options = script_options(args.config, args.overrides, {"model": None, "training": None})
    if args.resume_from_checkpoint:
        options["training"]["resume_from_checkpoint"] = args.resume_from_checkpoint
    evaluation = run_finetuning(args.data, args.output_dir, label_column=args.label_column,
                                pretrained=args.pretrained, model_options=options["model"],
                                training_options=options["training"])
    headline = {k: v for k, v in evaluation.items() if k not in ("per_class", "confusion_matrix")}
    print(json.dumps(headline, indent=2))
    print(f"held-out accuracy {evaluation['test_accuracy']:.3f} (majority class {evaluation['majority_class_accuracy']:.3f}), "
          f"macro-F1 {evaluation['test_macro_f1']:.3f} (majority class {evaluation['majority_class_macro_f1']:.3f})")


if __name__ == "__main__":
    main()
