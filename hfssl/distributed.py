"""What the loop needs to run on many processes, nodes and precisions, kept out of the loop itself.

* `make_accelerator`: the Accelerator of a run (DDP through `torchrun`/`accelerate launch`, FSDP2
  from an accelerate config); DeepSpeed and FSDP version 1 are refused (never tested with this loop).
* FSDP2 (`torch.distributed.fsdp.fully_shard`, through Accelerate): every repeated transformer block
  becomes its own unit (`wrap_transformer_blocks`), so only one block's full weights exist at a time;
  the final model is gathered into an ordinary `save_pretrained` folder (`full_weights`); checkpoints
  are Accelerate's sharded ones (torch.distributed.checkpoint, one file per process).
* Preemption: `sigterm_flag` turns SIGTERM into a flag the loop reads, so it checkpoints and exits.
* fp16: the loss scaler Accelerate attaches (`loss_scale`), so the loop can report overflows.
* Several nodes: output_dir must be one filesystem for all (`check_shared`), a checkpoint's manifest
  waits until every process's files are visible (`wait_until_visible`); one-time work
  (`cache_builder_first`) runs once in all on a shared path, once per node on a node-local one.

On one process nothing here changes anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, ProjectConfiguration

from hfssl.errors import CheckpointError, OutputDirError, TrainingStopped

logger = logging.getLogger(__name__)

_RAM_EFFICIENT = "FSDP_CPU_RAM_EFFICIENT_LOADING"


def make_accelerator(cfg) -> Accelerator:
    """The run's Accelerator; refuses a launch whose processes would each train alone, and the
    distributed back-ends this loop was never run with (DeepSpeed, FSDP version 1)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    for choice in cfg.auto_choices:
        logger.info(choice)
    if os.environ.get(_RAM_EFFICIENT, "false").lower() == "true" and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        # Set by `accelerate launch` from fsdp_cpu_ram_efficient_loading, read by Accelerate and transformers.
        # Every process builds the model in full before `prepare` anyway, so it would save no memory; and
        # Accelerate's round trip through the meta device then unties the tied weights of a model inside
        # hfssl's wrapper (measured: the MLM decoder trained apart from the embeddings). Off, before any model exists.
        os.environ[_RAM_EFFICIENT] = "false"
        logger.warning("fsdp_cpu_ram_efficient_loading turned off: it unties tied weights (e.g. MLM decoder and embeddings) "
                       "of hfssl's models and saves no memory here.")
    # Accelerate only sets up multi-process CPU training (gloo) when asked for the CPU explicitly;
    # otherwise every process of `torchrun` on a GPU-less machine would silently train alone.
    cpu = launched > 1 and not torch.cuda.is_available()
    project = ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / "runs"))
    # A fine-tuning run that freezes its encoder for the first updates (freeze_encoder_steps) leaves the encoder's
    # parameters without gradients then: DDP must be told, or it waits for them at the next update.
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if getattr(cfg, "freeze_encoder_steps", 0) else []
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with=cfg.trackers or None,
                              project_config=project, cpu=cpu, kwargs_handlers=handlers)
    if accelerator.num_processes != launched:
        raise TrainingStopped(
            f"{launched} processes were launched but Accelerate set up {accelerator.num_processes}: each would train "
            f"alone. Run `accelerate config` or launch with `accelerate launch --num_processes {launched}`.")
    check_backend(accelerator)
    return accelerator


@contextlib.contextmanager
def sigterm_flag(stop: dict):
    """Sets stop["flag"] on SIGTERM (preemption): the loop checkpoints after the next update and exits.
    A cluster may signal one node before the others: the processes agree first (the loop all-reduces the flag).
    Off the main thread (where signal handlers cannot be set) it does nothing."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True)) if main else None
    try:
        yield stop
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def end_processes(accelerator: Accelerator) -> None:
    """Every process leaves together, then tears its process group down. A process that destroys its group while
    another still writes the model or the card was seen to abort at exit on gloo ("terminate called without an
    active exception", SIGABRT), failing a run whose outputs were complete. The prepared DDP/FSDP wrappers hold
    the process group too: Accelerate's references to them are dropped (and collected) first, so that the group
    and its worker threads die now rather than during interpreter shutdown, where gloo can abort the same way.
    Callers drop their own references to the trained model before calling this."""
    if accelerator.num_processes > 1:
        accelerator.wait_for_everyone()
    accelerator.free_memory()  # also runs the garbage collector
    accelerator.end_training()


def check_backend(accelerator: Accelerator) -> None:
    """Refuse DeepSpeed and FSDP1: hfssl's loop steps, clips, checkpoints and saves through paths that
    were never run with them (see docs/distributed.md); FSDP2 and DDP are the supported ways."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise TrainingStopped(
            "DeepSpeed is not supported by hfssl (its loop, checkpoints and final save were never run under DeepSpeed). "
            "Shard the model and optimizer with FSDP2 instead: accelerate launch --config_file recipes/accelerate/fsdp.yaml ...")
    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise TrainingStopped("FSDP version 1 is not supported by hfssl: set fsdp_version: 2 in the accelerate config "
                              "(as recipes/accelerate/fsdp.yaml does).")


def is_fsdp(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


# ----------------------------------------------------------------------------------- a filesystem shared by all

def check_shared(accelerator: Accelerator, lock_file: Path, holder: dict) -> None:
    """Every process must see output_dir as the main process wrote it: checkpoints, the tokenizer, k-means
    targets and the final model are written by one process and read by all. Each process reads the lock
    file (`holder`: what the main process wrote into it); if any cannot, every process raises the same
    OutputDirError naming the processes and hosts."""
    from accelerate.utils import gather_object

    try:
        seen = json.loads(lock_file.read_text()) == holder
    except (OSError, ValueError):
        seen = False
    views = gather_object([(accelerator.process_index, socket.gethostname(), seen)])
    blind = [(rank, host) for rank, host, ok in views if not ok]
    if blind:
        who = ", ".join(f"process {rank} on host {host}" for rank, host in blind[:8]) + (" ..." if len(blind) > 8 else "")
        raise OutputDirError(
            f"output_dir '{lock_file.parent}' is not shared by every process: {who} cannot see the lock file {lock_file} "
            f"that the main process wrote on host {holder.get('host')}. Checkpoints, the tokenizer, k-means targets and the "
            f"final model are written by one process and read by all, so output_dir must be on a filesystem every node "
            f"mounts at the same path (NFS, Lustre, GPFS, ...), not a node-local disk.")


VISIBLE_WITHIN_S = 60.0  # a shared filesystem may show another node's new file a little later (attribute caches)


def wait_until_visible(accelerator: Accelerator, folder: Path, list_files: Callable[[Path], list[str]],
                       timeout: float = VISIBLE_WITHIN_S) -> None:
    """Return once the main process sees every file that any process sees in `folder` (`list_files`: the
    checkpoint's files; each process writes its own: RNG states, FSDP shards). If some stay unseen for
    `timeout` s (a filesystem the nodes do not share), every process raises the same CheckpointError
    naming them and their writers' hosts."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import broadcast_object_list, gather_object

    views = gather_object([(accelerator.process_index, socket.gethostname(), list_files(folder))])
    problem = None
    if accelerator.is_main_process:
        deadline = time.monotonic() + timeout
        while (missing := unseen(folder, views)) and time.monotonic() < deadline:
            time.sleep(0.5)
        if missing:
            listed = ", ".join(f"{rel} (process {rank}, host {host})" for rel, rank, host in missing[:5])
            problem = (f"Checkpoint {folder}: the main process cannot see files other processes wrote: {listed}"
                       f"{' ...' if len(missing) > 5 else ''}. Checkpoints must be on a filesystem every node shares "
                       f"(NFS, Lustre, GPFS, ...): put output_dir there.")
    problem = broadcast_object_list([problem])[0]
    if problem:
        raise CheckpointError(problem)


def unseen(folder: Path, views: list[tuple[int, str, list[str]]]) -> list[tuple[str, int, str]]:
    """(file, process, host) of the files in the processes' `views` (process, host, files it sees in
    `folder`) that do not exist here."""
    missing: dict[str, tuple[str, int, str]] = {}
    for rank, host, files in views:
        for rel in files:
            if rel not in missing and not (folder / rel).is_file():
                missing[rel] = (rel, rank, host)
    return list(missing.values())


# ----------------------------------------------------------------------------------- one-time work

def shared_by_all(accelerator: Accelerator, directory: str | os.PathLike) -> bool:
    """Whether every process sees `directory` as the main process does (one filesystem for all nodes):
    the main process writes a marker file there, every process looks for it. Collective."""
    import uuid

    from accelerate.utils import broadcast_object_list, gather_object

    if accelerator.num_processes == 1:
        return True
    marker = None
    if accelerator.is_main_process:
        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
            marker = Path(directory) / f".hfssl-shared-{uuid.uuid4().hex}"
            marker.touch()
        except OSError:  # read-only: nothing will be written there either; say "not shared"
            marker = None
    marker = broadcast_object_list([marker])[0]
    if marker is None:
        return False
    seen = all(gather_object([marker.is_file()]))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        marker.unlink(missing_ok=True)
    return seen


@contextlib.contextmanager
def cache_builder_first(accelerator: Optional[Accelerator], cache_dir: str | os.PathLike) -> Iterator[None]:
    """Work whose result is a cache in `cache_dir` (e.g. tokenized datasets): built once, then read.

    A cache every process sees (a shared filesystem) is built once in all, by the main process, while
    the others wait; a node-local one (the default ~/.cache) once per node, by each node's first
    process. Files in output_dir (tokenizer, k-means, audio reports) are always written once in all:
    output_dir must be shared (`hfssl.run_dir.check_shared`)."""
    if accelerator is None:
        yield
        return
    first = accelerator.main_process_first if shared_by_all(accelerator, cache_dir) else accelerator.local_main_process_first
    with first():
        yield


# ----------------------------------------------------------------------------------- FSDP2

def transformer_block_classes(model: torch.nn.Module) -> list[str]:
    """Class names of the repeated transformer blocks in `model` (the members of a ModuleList that are
    transformers' `GradientCheckpointingLayer`s: encoder layers, and for speech the conv layers too)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    names: dict[str, None] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList):
            names.update((type(m).__name__, None) for m in module if isinstance(m, GradientCheckpointingLayer))
    return list(names)


def wrap_transformer_blocks(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Under FSDP with TRANSFORMER_BASED_WRAP and no classes named in the accelerate config: make every
    transformer block of `model` its own FSDP unit. (Accelerate would take the root module's
    `_no_split_modules`; hfssl's root is its own wrapper, which has none, so the whole model would be
    one unit, gathered in full for every forward.) Call before `accelerator.prepare`."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    if not is_fsdp(accelerator):
        return
    plugin = accelerator.state.fsdp_plugin
    policy = plugin.auto_wrap_policy
    if getattr(policy, "func", policy) is transformer_auto_wrap_policy and plugin.transformer_cls_names_to_wrap is None:
        plugin.transformer_cls_names_to_wrap = transformer_block_classes(model)
        logger.info("FSDP: one unit per %s.", ", ".join(plugin.transformer_cls_names_to_wrap) or "(no block found: the whole model)")


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a (possibly FSDP-sharded) tensor: per-process checks need no collective."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


# Wrappers that insert themselves into parameter names but not into the names of a (distributed) state dict:
# activation checkpointing and torch.compile's OptimizedModule.
WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.")


def state_dict_name(name: str) -> str:
    """A parameter's name in `model.named_parameters()` -> its key in get_model_state_dict's output."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


@contextlib.contextmanager
def full_weights(accelerator: Accelerator, model: torch.nn.Module) -> Iterator[None]:
    """While the block runs, `model`'s parameters on the main process are its full weights (gathered
    from every shard onto the CPU), so `save_pretrained` writes an ordinary folder that loads with
    `from_pretrained`; afterwards the sharded parameters are back in place (the model keeps training
    or evaluating under FSDP). Every process must enter: the gather is collective. No-op without FSDP.
    """
    if not is_fsdp(accelerator):
        yield
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.tensor import DTensor

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))  # rank 0 only
    swapped = []
    if accelerator.is_main_process:
        gathered: dict[int, torch.nn.Parameter] = {}  # one replacement per parameter: tied weights stay tied
        for prefix, module in model.named_modules():
            for key, param in list(module._parameters.items()):
                if not isinstance(param, DTensor):
                    continue
                name = f"{prefix}.{key}" if prefix else key
                if id(param) not in gathered:
                    gathered[id(param)] = torch.nn.Parameter(full[state_dict_name(name)], requires_grad=False)
                swapped.append((module, key, param))
                module._parameters[key] = gathered[id(param)]
    try:
        yield
    finally:
        for module, key, param in swapped:
            module._parameters[key] = param


# ----------------------------------------------------------------------------------- fp16

def loss_scale(accelerator: Accelerator) -> Optional[float]:
    """The fp16 loss scale (None without a loss scaler: fp32, bf16)."""
    return float(accelerator.scaler.get_scale()) if accelerator.scaler is not None else None
