#!/usr/bin/env python
"""Self-supervised pretraining: `python run_pretrain.py [RECIPE.yaml] [--key value ...]`.

With no arguments it pretrains a tiny ModernBERT-style encoder on a built-in offline corpus (the Python standard
library's docstrings) in a few minutes on a CPU. Multi-GPU / multi-node:
`accelerate launch run_pretrain.py RECIPE.yaml`. Every option: `python run_pretrain.py --help`.
"""

import sys

from hfssl.pretrain import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
