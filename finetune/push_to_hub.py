"""Publish a saved scgrn model folder (from pretrain/run.py or finetune/run.py: `<output_dir>/model`) to the
Hugging Face Hub: weights with the GRN edge buffer, tokenizer, modeling code, GRN files and model card.

    python finetune/push_to_hub.py --folder runs/quickstart/finetune/model --repo_id my-org/scgrn-pbmc [--private]

The token comes from HF_TOKEN or `hf auth login`, as huggingface_hub looks it up. Nothing is uploaded unless
the folder is complete.
"""

import argparse


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", required=True, help="a complete scgrn model folder")
    parser.add_argument("--repo_id", required=True, help="namespace/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", default=None, help="branch to commit to (created when missing)")
    parser.add_argument("--create_pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--commit_message", default="Upload scgrn model (weights, GRN prior, tokenizer, model card)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return parser.parse_args(argv)


def push(args):
    from modeling_scgrn.hub.publish import push_model_folder

    info = push_model_folder(args.folder, args.repo_id, private=args.private, revision=args.revision,
                             create_pr=args.create_pr, commit_message=args.commit_message)
    print(f"pushed: {info.commit_url}" + (f" (pull request {info.pr_url})" if args.create_pr else ""))
    return info


def main(argv=None) -> None:
    args = parse_arguments(argv)
    from modeling_scgrn.workflows.cli import run_script

    run_script(args, lambda: push(args))


if __name__ == "__main__":
    main()
