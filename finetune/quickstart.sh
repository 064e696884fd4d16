#!/usr/bin/env bash
# The whole scgrn path on real data, on a laptop CPU in a few minutes:
#   real CollecTRI prior -> tokenize pbmc68k_reduced -> pretrain -> finetune on bulk_labels -> Hub-ready folder.
# Usage: bash finetune/quickstart.sh [OUTPUT_DIR]   (default runs/quickstart; run it again into the same folder
# and the scripts refuse to overwrite it: remove the folder first, or pass another one)
set -euo pipefail
out="${1:-runs/quickstart}"
# torch's own thread count: without a GPU, accelerate launch would otherwise give the process one thread (1.4x slower)
threads="$(python -c 'import torch; print(torch.get_num_threads())')"
launch=(accelerate launch -q --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no
        --num_cpu_threads_per_process "$threads")

python data/fetch_prior.py --output priors/omnipath_interactions.parquet
python data/tokenize_cells.py --input pbmc68k_reduced --prior priors/omnipath_interactions.parquet \
    --resource collectri --label_column bulk_labels --output_dir "$out/data"
"${launch[@]}" pretrain/run.py --config pretrain/configs/pbmc68k.yaml --data "$out/data" \
    --output_dir "$out/pretrain"
"${launch[@]}" finetune/run.py --config finetune/configs/pbmc68k_pretrained.yaml --data "$out/data" \
    --model "$out/pretrain/model" --label_column bulk_labels --output_dir "$out/finetune"
echo "Hub-ready model folder: $out/finetune/model (upload with huggingface_hub or model.push_to_hub)"
