"""Publish a saved scgrn model folder (from pretrain/run.py or finetune/run.py: `<output_dir>/model`) to the
Hugging Face Hub: weights with the GRN edge buffer, tokenizer, modeling code, GRN files and model card.

    python finetune/push_to_hub.py --model runs/quickstart/finetune/model --repo_id my-org/scgrn-pbmc [--private]

The token comes from HF_TOKEN or `hf auth login`, as huggingface_hub looks it up. Nothing is uploaded unless
the folder is complete.
"""

import argparse
import runpy
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace

# scgrn's shared options (names, help, choices), read by path before scgrn is imported (it loads torch), so that
# --help answers at once
shared = SimpleNamespace(**runpy.run_path(str(Path(find_spec("modeling_scgrn").origin).parent / "options" /
                                                "arguments.py")))


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = shared.new_parser(__doc__)
    parser.add_argument("--model", required=True, help="a complete scgrn model folder")
    parser.add_argument("--repo_id", required=True, help="namespace/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", default=None, help="branch to commit to (created when missing)")
    parser.add_argument("--create_pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--commit_message", default="Upload scgrn model (weights, GRN prior, tokenizer, model card)")
    shared.add_housekeeping(parser, output=None)
    return parser.parse_args(argv)


def push(args):
    from modeling_scgrn.hub.publish import push_model_folder

    info = push_model_folder(args.model, args.repo_id, private=args.private, revision=args.revision,
                             create_pr=args.create_pr, commit_message=args.commit_message)
    print(f"pushed: {info.commit_url}" + (f" (pull request {info.pr_url})" if args.create_pr else ""))
    return info


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.workflows.cli import run_script

    run_script(args, lambda: push(args))


if __name__ == "__main__":
    main()
