#!/usr/bin/env python
"""Self-supervised pretraining: `python run_pretrain.py [RECIPE.yaml] [--key value ...]`.

With no arguments it pretrains a tiny ModernBERT-style encoder on a built-in offline corpus (Debian package
descriptions shipped with the checkout) in under 10 minutes on a 2-core CPU with
native bf16 (AMX or AVX512-BF16; about 15 minutes in fp32 elsewhere). Multi-GPU / multi-node:
`accelerate launch run_pretrain.py RECIPE.yaml`. Every option: `python run_pretrain.py --help`.
"""

import sys

from hfssl.pretrain import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
