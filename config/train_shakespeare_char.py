# nanoGPT's "baby GPT" on Tiny Shakespeare, character level, with our Triton flash-attention kernel.
# About 10.7M parameters; on one modern GPU a few minutes. Prepare the data first:
#   python data/shakespeare_char/prepare.py
# then: python train.py config/train_shakespeare_char.py

out_dir = 'out-shakespeare-char'
eval_interval = 250         # evaluate (and maybe checkpoint) this often; the model overfits, so keep watching
eval_iters = 200            # batches per split per evaluation
log_interval = 10           # print a training line this often (each one syncs the GPU once)
always_save_checkpoint = False  # keep only the checkpoint with the best val loss: it overfits later

wandb_log = False           # override on the command line if you like
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1  # one micro-batch per optimizer step
batch_size = 64             # sequences per step
block_size = 256            # context of up to 256 previous characters

n_layer = 6                 # transformer blocks
n_head = 6                  # head dim 384/6 = 64
n_embd = 384                # width of the residual stream
dropout = 0.2               # a small model on 1M characters overfits without it

learning_rate = 1e-3        # small networks can take a larger learning rate
max_iters = 5000            # optimizer steps
lr_decay_iters = 5000       # make equal to max_iters usually
min_lr = 1e-4               # learning_rate / 10 usually
beta2 = 0.99                # a little larger than GPT-2's 0.95 because the number of tokens per iter is small

warmup_iters = 100          # not super necessary potentially

attn = 'triton'             # 'triton' (our kernel) | 'sdpa' | 'naive'
