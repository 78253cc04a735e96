#!/usr/bin/env bash
# The main job: install, prepare the character data, train, print a sample.
# On a machine with a CUDA GPU it trains nanoGPT's baby GPT with our Triton kernel (a few minutes);
# without one, the tiny CPU config (a few minutes on a laptop CPU).
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q -r requirements.txt
PY=.venv/bin/python

# offline machines: use the local copy beside the repo when there is one (the script downloads otherwise)
input_args=()
if [ ! -f data/shakespeare_char/input.txt ] && [ -f ../shared/data/tinyshakespeare/input.txt ]; then
    input_args=(--input ../shared/data/tinyshakespeare/input.txt)
fi
$PY data/shakespeare_char/prepare.py "${input_args[@]}"

if $PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    config=config/train_shakespeare_char.py
    out_dir=out-shakespeare-char
else
    echo "no CUDA GPU: training the small CPU config (attn=sdpa)"
    config=config/train_shakespeare_char_cpu.py
    out_dir=out-shakespeare-char-cpu
fi
$PY train.py "$config" "$@"
$PY sample.py --out_dir="$out_dir" --num_samples=1 --max_new_tokens=500
