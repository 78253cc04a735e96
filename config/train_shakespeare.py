# A small GPT trained from scratch on Tiny Shakespeare as GPT-2 BPE tokens, with our Triton kernel.
# 300k training tokens are few for a 50k vocabulary: the model overfits within a few hundred steps, so we
# evaluate often and keep only the best checkpoint. Prepare the data first:
#   python data/shakespeare/prepare.py
# then: python train.py config/train_shakespeare.py

out_dir = 'out-shakespeare'
eval_interval = 100         # evaluate (and maybe checkpoint) often: the best val loss comes early
eval_iters = 20             # 20 x 32 x 256 tokens per split: more than the 36k-token val split holds
log_interval = 10           # print a training line this often
always_save_checkpoint = False  # keep only the checkpoint with the best val loss

wandb_log = False           # override on the command line if you like
wandb_project = 'shakespeare'
wandb_run_name = 'small-gpt-bpe'

dataset = 'shakespeare'     # GPT-2 BPE tokens: vocab_size is GPT-2's 50257 padded to 50304 (a multiple of 64)
gradient_accumulation_steps = 1  # one micro-batch per optimizer step
batch_size = 32             # sequences per step: 8,192 tokens, ~37 steps per epoch
block_size = 256            # context of 256 BPE tokens (~1,000 characters)

n_layer = 6                 # transformer blocks
n_head = 6                  # head dim 384/6 = 64
n_embd = 384                # width; the 50304 x 384 embedding is 19M of the ~30M parameters
dropout = 0.2               # strong regularization for a small dataset

learning_rate = 6e-4        # a little lower than the char model's: a larger, sparser embedding
max_iters = 2000            # ~50 epochs: far past the best val loss, kept short on purpose
lr_decay_iters = 2000       # equal to max_iters
min_lr = 6e-5               # learning_rate / 10
beta2 = 0.99                # few tokens per step: average the second moment over more steps
warmup_iters = 100          # a short linear warmup

attn = 'triton'             # 'triton' (our kernel) | 'sdpa' | 'naive'
