# GPT-2 124M's shape on the BPE Shakespeare data: a speed comparison, not a recipe (300k tokens are far too few
# for 124M parameters). Prepare the data first: python data/shakespeare/prepare.py
#   python compare.py config/train_gpt2_shape.py        # tokens/s of triton vs sdpa vs naive

out_dir = 'out-gpt2-shape'
eval_interval = 1000        # evaluate only at the start and the end: this run measures speed
eval_iters = 2              # 2 x 12 x 1024 tokens per split
log_interval = 10           # timing windows of 10 iterations
always_save_checkpoint = False  # save only when val improves

dataset = 'shakespeare'     # GPT-2 BPE tokens
gradient_accumulation_steps = 1  # one micro-step per step (and CUDA graphs)
batch_size = 12             # 12 x 1024 tokens per step
block_size = 1024           # GPT-2's context

n_layer = 12                # GPT-2 124M
n_head = 12                 # head dim 64
n_embd = 768                # GPT-2 124M's width
dropout = 0.0               # as in GPT-2 pretraining
bias = False                # unlike GPT-2 (nanoGPT's faster default): the attention is what is timed

learning_rate = 6e-4        # GPT-2 124M's, as nanoGPT trains it
max_iters = 150             # enough for a steady-state median after compilation
lr_decay_iters = 150        # the cosine decay ends with the run
warmup_iters = 10           # a short linear warmup
min_lr = 6e-5               # learning_rate / 10

attn = 'triton'             # compare.py runs each implementation
