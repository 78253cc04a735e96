# The same 12-layer, 768-wide model at a 16,384-token context, one sequence per step: attention dominates the
# step here, and the naive T x T attention matrix no longer fits in 80 GB. A speed comparison on the BPE
# Shakespeare data (its 36k-token val split holds two such windows). Prepare the data first:
#   python data/shakespeare/prepare.py
#   python compare.py config/train_long_context.py

out_dir = 'out-long-context'
eval_interval = 1000        # evaluate only at the start and the end: this run measures speed
eval_iters = 2
log_interval = 5            # timing windows of 5 iterations
always_save_checkpoint = False

dataset = 'shakespeare'
gradient_accumulation_steps = 1
batch_size = 1
block_size = 16384          # 16k tokens of context

n_layer = 12
n_head = 12                 # head dim 64
n_embd = 768
dropout = 0.0
bias = False

learning_rate = 6e-4
max_iters = 40
lr_decay_iters = 40
warmup_iters = 5
min_lr = 6e-5

attn = 'triton'             # compare.py runs each implementation
