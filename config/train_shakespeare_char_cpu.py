# A tiny character-level GPT that trains on a laptop CPU in a few minutes (about 0.8M parameters).
# Expect a val loss around 1.9 and sample text that looks like Shakespeare from a distance.
#   python data/shakespeare_char/prepare.py
#   python train.py config/train_shakespeare_char_cpu.py

out_dir = 'out-shakespeare-char-cpu'
eval_interval = 250         # evaluate (and maybe checkpoint) this often
eval_iters = 20             # batches per split per evaluation: enough for a rough curve, cheap on a CPU
log_interval = 25           # print a training line this often
always_save_checkpoint = False  # keep the checkpoint with the best val loss

wandb_log = False           # override on the command line if you like
wandb_project = 'shakespeare-char'  # the GPU config's project: CPU and GPU runs side by side
wandb_run_name = 'mini-gpt-cpu'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1  # one micro-batch per optimizer step (use 2 under torchrun with 2 processes)
batch_size = 12             # sequences per step
block_size = 64             # context of up to 64 previous characters

n_layer = 4                 # transformer blocks
n_head = 4                  # head dim 128/4 = 32
n_embd = 128                # width of the residual stream
dropout = 0.0               # too small and too short a run to overfit

learning_rate = 1e-3        # small networks can take a larger learning rate
max_iters = 2000            # optimizer steps
lr_decay_iters = 2000       # equal to max_iters
min_lr = 1e-4               # learning_rate / 10
beta2 = 0.99                # few tokens per step: average the second moment over more steps
warmup_iters = 100          # a short linear warmup

device = 'cpu'              # this config is for machines without a GPU
compile = False             # compiling takes longer than this whole run saves
attn = 'sdpa'               # the Triton kernel needs a GPU (or TRITON_INTERPRET=1, far too slow to train)
