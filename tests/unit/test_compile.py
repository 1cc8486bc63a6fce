"""torch_compile: the loop compiles the MLM step into whole graphs (no graph break: the masked tokens are
gathered by index) and does not recompile every update although the masked-token count changes."""

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters
from transformers import BertConfig, BertForMaskedLM

from hfssl.collators import MLMCollator
from hfssl.config import TrainingArguments
from hfssl.objectives.base import Objective
from hfssl.objectives.mlm.loss import SparseMaskedLM
from hfssl.trainer import make_accelerator, train


class TinyMLM(Objective):
    name, input_unit = "mlm", "tokens"

    def __init__(self, cfg):
        super().__init__(cfg)
        config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=120,
                            max_position_embeddings=64)
        torch.manual_seed(0)
        self.model = SparseMaskedLM(BertForMaskedLM(config))
        self.collator = MLMCollator(0, 4, torch.arange(5), torch.arange(5, 120), mlm_probability=0.3)
        rng = np.random.default_rng(0)
        self.train_dataset = [{"input_ids": np.r_[2, rng.integers(5, 120, 30), 3]} for _ in range(48)]

    def save_pretrained(self, output_dir, summary):
        pass


@pytest.mark.slow
def test_compiled_step_has_no_graph_break_and_stops_recompiling(tmp_path):
    torch._dynamo.reset()
    counters.clear()
    cfg = TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=8, torch_compile=True, save_steps=0,
                            logging_steps=6)
    objective = TinyMLM(cfg)
    counts = {objective.collator([objective.train_dataset[i] for i in b], seed=s)["num_targets"]
              for s, b in enumerate(objective.batch_plan(0, cfg.seed))}
    assert len(counts) > 2  # the masked-token count (a tensor dimension) changes from update to update
    accelerator = make_accelerator(cfg)
    train(cfg, objective, accelerator)
    accelerator.end_training()
    assert dict(counters["graph_break"]) == {}
    # compiled at all (no graphs would also pass the check above), static first, then once with the varying dimension dynamic
    assert 1 <= counters["stats"]["unique_graphs"] <= 2
