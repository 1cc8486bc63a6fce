#!/usr/bin/env python
"""Fine-tuning: `python run_finetune.py RECIPE.yaml [--key value ...]`.

Tasks: text-classification, audio-classification, speech-recognition-ctc (`--task`). Start from a
pretrained model (`--model_name_or_path`) or train the same architecture from random init
(`--config_name`); `--compare_with_scratch true --label_fractions 0.1,1.0` runs both (over `--seeds`,
3 by default, and a learning-rate grid per side, `--learning_rates` / `--scratch_learning_rates`,
chosen on validation) and writes the "did pretraining pay off?" report with mean ± sd and a 95%
interval of the gain. Every option: `python run_finetune.py --help`.
"""

import sys

from hfssl.finetune.run import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
