# Finetune OpenAI's GPT-2 on Tiny Shakespeare (GPT-2 BPE tokens), with our Triton kernel. Prepare the data first:
#   python data/shakespeare/prepare.py
# then: python train.py config/finetune_shakespeare.py
# The weights download once into the Hugging Face cache; offline, download them elsewhere and pass the directory:
#   python train.py config/finetune_shakespeare.py --init_from=/path/to/gpt2
# The model's shape (and GPT-2's tanh GELU) comes from the checkpoint: n_layer, n_head, n_embd and bias set here
# would be ignored. The 300k training tokens are about 37 iterations' worth: the best val loss comes within the
# first hundred, and only the best checkpoint is kept.

out_dir = 'out-shakespeare-ft'
eval_interval = 10          # evaluate (and maybe checkpoint) often: a pretrained model overfits this data fast
eval_iters = 20             # 20 x 4 x 1024 tokens per split: more than the 36k-token val split holds
log_interval = 1            # print every step
always_save_checkpoint = False  # keep only the checkpoint with the best val loss

wandb_log = False           # override on the command line if you like
wandb_project = 'shakespeare'
wandb_run_name = 'ft-gpt2'

init_from = 'gpt2'          # 124M; 'gpt2-medium' (350M), 'gpt2-large' (774M), 'gpt2-xl' (1.5B) write better
dataset = 'shakespeare'     # GPT-2 BPE tokens, GPT-2's own vocabulary
batch_size = 4              # sequences per micro-batch
gradient_accumulation_steps = 2  # 2 x 4 x 1024 = 8,192 tokens per step, ~37 steps per epoch
block_size = 1024           # GPT-2's whole context (a shorter one keeps its first positions)
dropout = 0.1               # GPT-2's own dropout: regularizes finetuning on 300k tokens

learning_rate = 3e-5        # small: nudge the pretrained weights, do not retrain them
max_iters = 300             # ~8 epochs: past the best val loss, which is the checkpoint kept
decay_lr = False            # a constant learning rate

attn = 'triton'             # 'triton' (our kernel) | 'sdpa' | 'naive'
compile = True              # torch.compile the model
