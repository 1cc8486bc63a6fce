"""Run an hfssl entry point under FSDP2 on CPU processes (gloo), for the tests.

`python -m torch.distributed.run --nproc_per_node 2 tests/integration/fsdp_on_cpu.py pretrain|finetune ARGS...`

Accelerate turns FSDP on only for GPU back-ends: on CPU processes it reads the FSDP settings that
`accelerate launch --config_file recipes/accelerate/fsdp.yaml` puts in the environment (set them as
`FSDP_ENV` below does) but sets up plain multi-CPU DDP. This script wraps `make_accelerator` and switches
the Accelerate state to FSDP with those settings, so that everything after it (`prepare` ->
`fully_shard`, sharded `save_state`/`load_state`, the gathered final save, evaluation) runs
Accelerate's and torch's FSDP2 code on gloo. Test scaffolding only: hfssl never does this itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# What `accelerate launch --config_file recipes/accelerate/fsdp.yaml` sets (minus mixed precision: CPU).
FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
            "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT", "FSDP_RESHARD_AFTER_FORWARD": "true",
            "FSDP_CPU_RAM_EFFICIENT_LOADING": "true", "FSDP_SYNC_MODULE_STATES": "true"}


def _fsdp_on_cpu() -> None:
    import hfssl.distributed as distributed

    real = distributed.make_accelerator

    def make_accelerator(cfg):
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        accelerator = real(cfg)
        PartialState().distributed_type = DistributedType.FSDP
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* environment
        distributed.check_backend(accelerator)
        return accelerator

    distributed.make_accelerator = make_accelerator


if __name__ == "__main__":
    import os

    if os.environ.get("ACCELERATE_USE_FSDP") != "true" or os.environ.get("FSDP_VERSION") != "2":
        raise SystemExit(f"set the FSDP environment first, e.g. {FSDP_ENV}")
    _fsdp_on_cpu()
    entry, argv = sys.argv[1], sys.argv[2:]
    if entry == "pretrain":
        from hfssl.pretrain import main
    else:
        from hfssl.finetune.run import main
    sys.exit(main(argv))
