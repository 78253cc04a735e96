#!/usr/bin/env bash
# The quick start in one command: install, prepare the character data, train, print a sample.
#
#   bash run.sh [--key=value ...]
#
# Extra arguments go to train.py, e.g. `bash run.sh --max_iters=500 --out_dir=out-short`. With a CUDA GPU it trains
# nanoGPT's baby GPT with our Triton kernel (config/train_shakespeare_char.py, about two minutes on an H100);
# without one, the small CPU config (config/train_shakespeare_char_cpu.py, a few minutes). It then samples from the
# checkpoint this run trained: in the config's out_dir, or in the --out_dir=... given, and says which.
# The settings train.py takes: `.venv/bin/python train.py --help`.
#
# Environment:
#   PYTHON=path/to/python  use this interpreter as it is, with requirements.txt already installed, instead of
#                          making .venv and installing into it (tests/test_quickstart.py runs run.sh this way)
# Without network: put a local copy of Tiny Shakespeare's input.txt at data/shakespeare_char/input.txt first.
set -euo pipefail
cd "$(dirname "$0")"

for arg in "$@"; do
    if [ "$arg" = -h ] || [ "$arg" = --help ]; then
        sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
        exit 0
    fi
done

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
else
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    .venv/bin/pip install -q -r requirements.txt
    PY=.venv/bin/python
fi

if ! "$PY" -c 'import torch' 2>/dev/null; then
    echo "error: $PY cannot import torch: give PYTHON=path/to/python with requirements.txt installed, or leave PYTHON unset to make .venv" >&2
    exit 1
fi

data=data/shakespeare_char
if [ -f $data/train.bin ] && [ -f $data/val.bin ] && [ -f $data/meta.pkl ]; then
    echo "$data is prepared (delete its train.bin to prepare it again)"
else
    "$PY" $data/prepare.py
fi

if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    config=config/train_shakespeare_char.py
else
    config=config/train_shakespeare_char_cpu.py
    echo "no CUDA GPU: training the small CPU config, $config"
fi

started=$(mktemp)  # its time tells a checkpoint this run wrote from an older one
trap 'rm -f "$started"' EXIT
"$PY" train.py "$config" "$@"

# the directory this run trained into, read from the same arguments the way train.py reads them
out_dir=$("$PY" -c 'import sys; from train import TrainConfig; from utils import parse_config; print(parse_config(sys.argv[1:], TrainConfig).out_dir)' \
    "$config" "$@" | tail -n 1)
ckpt="$out_dir/ckpt.pt"
if [ ! -f "$ckpt" ]; then
    echo "error: this run saved no checkpoint in $out_dir (train.py saves one when the val loss improves at an" \
         "evaluation after step 0), so there is nothing to sample; train longer, e.g. --max_iters=500" >&2
    exit 1
fi
if [ ! "$ckpt" -nt "$started" ]; then
    echo "note: this run saved no new checkpoint; $ckpt is from an earlier run"
fi
echo "sampling from $ckpt"
"$PY" sample.py --out_dir="$out_dir" --num_samples=1 --max_new_tokens=500
