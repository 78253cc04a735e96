import os
import sys

import torch

# Without a GPU the Triton kernels run through Triton's interpreter on CPU tensors. The switch is read when a
# kernel is decorated, so it must be set before flash_kernel (or anything importing it) is imported; tests that
# start subprocesses (torchrun) pass it on through the environment.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tests import the top-level scripts (model.py, train.py, flash_kernel.py) the way a user's `python` would.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Imported here, once, under the switch above: a test that unsets TRITON_INTERPRET (to check the error a user
# without it gets) must find flash_kernel imported already, since importing Gluon (flash_hopper) with the switch
# off fails once the rest of Triton was imported with it on
import flash_kernel  # noqa: E402,F401
