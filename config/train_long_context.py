# The same 12-layer, 768-wide model at a 16,384-token context, one sequence per step: attention dominates the
# step here, and the naive T x T attention matrix no longer fits in 80 GB. A speed comparison on the BPE
# Shakespeare data (its 36k-token val split holds two such windows). Prepare the data first:
#   python data/shakespeare/prepare.py
#   python compare.py config/train_long_context.py

out_dir = 'out-long-context'
eval_interval = 1000        # evaluate only at the start and the end: this run measures speed
eval_iters = 2              # 2 windows of 16k tokens per split
log_interval = 5            # timing windows of 5 iterations
always_save_checkpoint = False  # save only when val improves

dataset = 'shakespeare'     # GPT-2 BPE tokens
gradient_accumulation_steps = 1  # one micro-step per step (and CUDA graphs)
batch_size = 1              # one 16k-token sequence per step
block_size = 16384          # 16k tokens of context

n_layer = 12                # GPT-2 124M's depth
n_head = 12                 # head dim 64
n_embd = 768                # and width
dropout = 0.0               # as in GPT-2 pretraining
bias = False                # unlike GPT-2 (nanoGPT's faster default): the attention is what is timed

learning_rate = 6e-4        # GPT-2 124M's, as nanoGPT trains it
max_iters = 40              # enough for a steady-state median after compilation
lr_decay_iters = 40         # the cosine decay ends with the run
warmup_iters = 5            # a short linear warmup
min_lr = 6e-5               # learning_rate / 10

attn = 'triton'             # compare.py runs each implementation
