"""The workloads of `bench_gpu.py`: presets, synthetic data, model FLOPs, and one runner per variant.

Each runner builds its model from the preset (seed 0), trains `steps` updates and returns a dict of
figures: tokens_per_s or audio_s_per_s, step_ms, peak_mem_gb (CUDA), model_tflops_per_s, and what else
the variant knows (loss, padding_fraction, attention kernel). On a CPU also the process's CPU time per
update (cpu_ms_per_step, tokens_per_cpu_s / audio_s_per_cpu_s): with one torch thread and no DataLoader
workers it is the compute itself, which other jobs on a shared machine do not inflate as they do wall time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

W2V_SMALL = dict(conv_dim=(128,) * 7, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                 num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=16, codevector_dim=128, proj_codevector_dim=128)
W2V_TINY = dict(conv_dim=(16,) * 7, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, num_codevector_groups=2, num_codevectors_per_group=8,
                codevector_dim=16, proj_codevector_dim=16)
PRESETS = {
    # The workloads: BERT-base (BertConfig() defaults), wav2vec 2.0 base with the pretraining-friendly
    # layer-norm layout (the configuration of the reference GPU figures), bf16 autocast, 4 DataLoader workers.
    "gpu": dict(device="cuda", precision="bf16", bert={}, seq=128, batch=256, steps=60, warm=20, w2v={}, w2v_batch=8,
                w2v_seconds=15.6, w2v_steps=30, w2v_warm=10, negatives=100, workers=4),
    # The same comparisons at CPU size (fp32): BERT 4 x 256 (vocab 8192), wav2vec 2.0 4 x 256.
    "cpu": dict(device="cpu", precision="no", bert=dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                intermediate_size=1024, vocab_size=8192), seq=128, batch=32, steps=8, warm=3, w2v=W2V_SMALL, w2v_batch=4,
                w2v_seconds=4.0, w2v_steps=5, w2v_warm=2, negatives=100, workers=0),
    # README command 1's model and batch (recipes/mlm/tiny-cpu.yaml): ModernBERT 4 x 256 (GeGLU 512, vocab 8192),
    # 30% masking, batch 16 of 128 tokens; for the `mlm_bf16` workload (bf16 autocast, eager attention, compile).
    "cpu-recipe": dict(device="cpu", precision="no", arch="modernbert", mlm_probability=0.3,
                       bert=dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
                                 vocab_size=8192, max_position_embeddings=128, local_attention=128),
                       seq=128, batch=16, steps=40, warm=15, w2v=W2V_SMALL, w2v_batch=4, w2v_seconds=4.0, w2v_steps=5,
                       w2v_warm=2, negatives=100, workers=0),
    # Smoke test: every code path in seconds.
    "tiny": dict(device="cpu", precision="no", bert=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64, vocab_size=500), seq=32, batch=8, steps=3, warm=1, w2v=W2V_TINY, w2v_batch=2,
                 w2v_seconds=1.0, w2v_steps=3, w2v_warm=1, negatives=10, workers=0),
}
UPDATE_HOOKS: list = []  # called with the number of updates done, at the end of each (host_syncs)
SPECIAL = 5  # ids 0..4: [PAD] [UNK] [CLS] [SEP] [MASK]


# ----------------------------------------------------------------------------------- data

def text_rows(p: dict, varlen: bool) -> list[np.ndarray]:
    """Synthetic token ids (throughput does not depend on content): `batch * steps` examples of `seq` tokens,
    or of lognormal lengths (median 3/8 of seq: 48 of 128, 8..seq) for line-by-line text; [CLS] ... [SEP]."""
    rng = np.random.default_rng(0)
    vocab, n = _bert_config(p).vocab_size, p["batch"] * p["steps"]
    lengths = np.clip(rng.lognormal(np.log(0.375 * p["seq"]), 0.8, n).astype(int), 8, p["seq"]) if varlen else np.full(n, p["seq"])
    rows = []
    for length in lengths:
        ids = rng.integers(SPECIAL, vocab, length)
        ids[0], ids[-1] = 2, 3
        rows.append(ids)
    return rows


class AudioPool(torch.utils.data.Dataset):
    """`n` utterances of `samples` float32 samples, drawn from a pool of 16 (content does not change speed)."""

    def __init__(self, n: int, samples: int, make=None):
        rng = np.random.default_rng(0)
        self.n = n
        self.pool = [make(rng, samples) if make else rng.standard_normal(samples).astype(np.float32) for _ in range(16)]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"input_values": self.pool[int(i) % len(self.pool)]}


def speechlike(rng: np.random.Generator, samples: int, rate: int = 16000) -> np.ndarray:
    """Structured audio for the long run: 40-200 ms segments, each voiced (harmonics of a 90-250 Hz pitch
    shaped by three random formants), noise-like, or silent, so that the codebook has structure to find."""
    out = np.zeros(samples, dtype=np.float32)
    start = 0
    while start < samples:
        n = min(int(rng.uniform(0.04, 0.2) * rate), samples - start)
        t = np.arange(n) / rate
        kind = rng.choice(3, p=[0.6, 0.25, 0.15])
        if kind == 0:
            f0 = rng.uniform(90, 250)
            harmonics = np.arange(1, int(4000 / f0))
            formants = rng.uniform([300, 900, 2000], [900, 2200, 3500])
            gains = sum(np.exp(-((harmonics * f0 - f) / 150.0) ** 2) for f in formants) + 0.05
            wave = (gains[:, None] * np.sin(2 * np.pi * f0 * harmonics[:, None] * t[None, :])).sum(0)
        elif kind == 1:
            wave = np.convolve(rng.standard_normal(n), np.ones(rng.integers(1, 6)) / 3, mode="same")
        else:
            wave = np.zeros(n)
        envelope = np.sqrt(np.clip(np.sin(np.pi * np.arange(n) / max(n - 1, 1)), 0, None))  # sin(pi) rounds below 0
        out[start : start + n] = (wave * envelope * rng.uniform(0.2, 1.0)).astype(np.float32)
        start += n
    return out + 0.01 * rng.standard_normal(samples).astype(np.float32)


# ----------------------------------------------------------------------------------- models and FLOPs

def _bert_config(p):
    """The preset's encoder config: BERT, or (arch modernbert) ModernBERT with the synthetic tokenizer's ids."""
    from transformers import BertConfig, ModernBertConfig

    if p.get("arch") == "modernbert":
        return ModernBertConfig(**{"pad_token_id": 0, "cls_token_id": 2, "sep_token_id": 3, "bos_token_id": 2,
                                   "eos_token_id": 3, **p["bert"]})
    return BertConfig(**{"max_position_embeddings": max(512, p["seq"]), **p["bert"]})


def _masked_lm(config):
    from transformers import AutoModelForMaskedLM

    return AutoModelForMaskedLM.from_config(config)


def bert_flops_per_token(config, mean_len: float) -> float:
    """Training FLOPs per token of BERT with a full MLM head: 3 x forward matmuls; mean_len: the token-weighted
    mean sequence length (attention scores and values grow with it)."""
    H, I, L, V = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    mlp = 6 * H * I if config.model_type == "modernbert" else 4 * H * I  # GeGLU: H -> 2I, I -> H
    forward = L * (8 * H * H + mlp) + 4 * L * mean_len * H + 2 * H * H + 2 * H * V
    return 3 * forward


def _w2v_config(p):
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(do_stable_layer_norm=True, feat_extract_norm="layer", num_negatives=p["negatives"], **p["w2v"])


def w2v_flops_per_utterance(config, samples: int) -> float:
    """Training FLOPs of one utterance through Wav2Vec2ForPreTraining (every frame quantized and scored, as
    the stock forward does): 3 x forward (conv encoder, projection, position conv, transformer, quantizer, logits)."""
    n, c_in, conv = samples, 1, 0.0
    for c_out, k, s in zip(config.conv_dim, config.conv_kernel, config.conv_stride):
        n = (n - k) // s + 1
        conv += 2 * c_in * c_out * k * n
        c_in = c_out
    F, H, I, L = n, config.hidden_size, config.intermediate_size, config.num_hidden_layers
    G, V, D, P, K = (config.num_codevector_groups, config.num_codevectors_per_group, config.codevector_dim,
                     config.proj_codevector_dim, config.num_negatives)
    forward = (conv + 2 * c_in * H * F + 2 * H * (H // config.num_conv_pos_embedding_groups) * config.num_conv_pos_embeddings * F
               + L * (2 * (4 * H * H + 2 * H * I) * F + 4 * F * F * H)
               + 2 * c_in * G * V * F + 2 * D * P * F + 2 * H * P * F + 2 * (K + 1) * P * F)
    return 3 * forward


# ----------------------------------------------------------------------------------- timing helpers

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset(device):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # each variant builds its own Accelerator
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(device):
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None


def _make_tokenizer(vocab: int):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, **{f"w{i}": i for i in range(SPECIAL, vocab)}}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(words, unk_token="[UNK]")), pad_token="[PAD]",
                                   unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


# ----------------------------------------------------------------------------------- stock Hugging Face

def stock_mlm(p: dict, compile: bool, varlen: bool, precision: str | None = None) -> dict:
    """transformers' Trainer + DataCollatorForLanguageModeling (the preset's masking rate, 15% by default), the
    preset's masked LM (transformers' default attention); `precision` overrides the preset's."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    precision = precision or p["precision"]

    device = torch.device(p["device"])
    _reset(device)

    class Clock(TrainerCallback):
        def __init__(self):
            self.t0 = self.t1 = None
            self.tokens0 = self.tokens1 = 0

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == p["warm"]:
                _sync(device)
                self.t0, self.tokens0 = (time.perf_counter(), time.process_time()), state.num_input_tokens_seen

        def on_train_end(self, args, state, control, **kw):
            _sync(device)
            self.t1, self.tokens1 = (time.perf_counter(), time.process_time()), state.num_input_tokens_seen

    config = _bert_config(p)
    torch.manual_seed(0)
    model = _masked_lm(config)
    rows = [{"input_ids": r.tolist()} for r in text_rows(p, varlen)]
    args = TrainingArguments(output_dir=str(Path(p["scratch"]) / "hf"), per_device_train_batch_size=p["batch"], max_steps=p["steps"],
                             bf16=precision == "bf16", use_cpu=device.type == "cpu", report_to=[], save_strategy="no",
                             logging_steps=10**6, dataloader_num_workers=p["workers"], torch_compile=compile, learning_rate=1e-4,
                             seed=0, include_num_input_tokens_seen="non_padding" if varlen else "no", disable_tqdm=True)
    clock = Clock()
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[clock],
                      data_collator=DataCollatorForLanguageModeling(_make_tokenizer(config.vocab_size),
                                                                    mlm_probability=p.get("mlm_probability", 0.15)))
    out = trainer.train()
    timed = p["steps"] - p["warm"]
    dt = (clock.t1[0] - clock.t0[0], clock.t1[1] - clock.t0[1])
    tokens = clock.tokens1 - clock.tokens0 if varlen else timed * p["batch"] * p["seq"]
    lengths = np.array([len(r["input_ids"]) for r in rows])
    result = _text_result(p, config, tokens, dt, timed, lengths, device)
    result.update(attention=model.config._attn_implementation, train_loss=round(out.training_loss, 4))
    if varlen:  # Trainer's batches are random draws of examples, each padded to its longest
        rng = np.random.default_rng(0)
        batches = rng.permutation(len(lengths))[: (len(lengths) // p["batch"]) * p["batch"]].reshape(-1, p["batch"])
        result["padding_fraction"] = round(1 - lengths[batches].sum() / (lengths[batches].max(1) * p["batch"]).sum(), 4)
        result["padding_fraction_note"] = "expected, from random batches of the same examples"
    del trainer, model
    return result


def stock_w2v(p: dict) -> dict:
    """A Wav2Vec2ForPreTraining loop (bf16 autocast on CUDA, fused AdamW there), masks and negatives from
    transformers' numpy functions drawn once outside the loop (their cost per batch is measured apart)."""
    from transformers import Wav2Vec2ForPreTraining
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    device = torch.device(p["device"])
    _reset(device)
    config = _w2v_config(p)
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, fused=device.type == "cuda")
    B, samples = p["w2v_batch"], int(p["w2v_seconds"] * 16000)
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(samples)))
    t = time.perf_counter()
    for _ in range(5):
        mask = _compute_mask_indices((B, frames), mask_prob=0.65, mask_length=10, min_masks=2)
        negatives = _sample_negative_indices((B, frames), config.num_negatives, mask)
    mask_ms = 1000 * (time.perf_counter() - t) / 5
    x = torch.randn(B, samples, device=device)
    mask_t, neg_t = torch.tensor(mask, device=device), torch.tensor(negatives, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=p["precision"] == "bf16")
    for step in range(p["w2v_steps"]):
        if step == p["w2v_warm"]:
            _sync(device)
            t0 = (time.perf_counter(), time.process_time())
        with autocast:
            out = model(x, mask_time_indices=mask_t, sampled_negative_indices=neg_t)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    timed, dt = p["w2v_steps"] - p["w2v_warm"], (time.perf_counter() - t0[0], time.process_time() - t0[1])
    result = _audio_result(p, config, samples, dt, timed, device)
    result.update(attention=model.config._attn_implementation, loss=round(float(out.loss.detach()), 4),
                  cpu_mask_and_negatives_ms_per_batch=round(mask_ms, 2), frames=frames, masked_fraction=round(float(mask.mean()), 3))
    del model, optimizer
    return result


# ----------------------------------------------------------------------------------- hfssl

def _train_hfssl(p, objective_factory, compile: bool, steps: int, **settings):
    """hfssl's real loop on a synthetic objective; returns (objective, training log rows). objective.clock holds
    (wall, CPU) times at the end of every update (after its loss was read back from the device)."""
    from hfssl.config import TrainingArguments
    from hfssl.trainer import make_accelerator, train

    device = torch.device(p["device"])
    _reset(device)
    out = Path(p["scratch"]) / f"hfssl-{time.time_ns()}"
    cfg = TrainingArguments(output_dir=str(out), max_steps=steps, mixed_precision=p["precision"], torch_compile=compile, save_steps=0,
                            logging_steps=steps, dataloader_num_workers=p["workers"], seed=0, **settings)
    objective = objective_factory(cfg)
    accelerator = make_accelerator(cfg)
    train(cfg, objective, accelerator)
    accelerator.end_training()
    rows = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    return objective, [r for r in rows if "loss" in r]


def _objective_class():
    from hfssl.objectives.base import Objective

    class Synthetic(Objective):
        """Model, collator and data given; nothing saved (the benchmark keeps figures only)."""

        def __init__(self, cfg, name, unit, model, collator, data, on_update=None):
            super().__init__(cfg)
            self.name, self.input_unit, self.model, self.collator, self.train_dataset = name, unit, model, collator, data
            self._on_update = on_update
            self.clock: list[tuple[float, float]] = []

        def on_update(self, step, total_steps):
            self.clock.append((time.perf_counter(), time.process_time()))
            for hook in UPDATE_HOOKS:
                hook(step)
            return self._on_update(self.model, step) if self._on_update else {}

        def save_pretrained(self, output_dir, summary):
            pass

    return Synthetic


def hfssl_mlm(p: dict, compile: bool, varlen: bool, packed: bool = True, attention=None, precision: str | None = None,
              rows_multiple_of: int = 1, fused_adamw: bool = True) -> dict:
    """hfssl's loop, SparseMaskedLM, MLMCollator (the preset's masking rate, 15% by default; padding-free for
    varying lengths unless `packed` is False; rows rounded up to `rows_multiple_of`), the attention default (or
    `attention`), the preset's precision (or `precision`); `fused_adamw` False: torch's default AdamW kernel
    instead of the fused one the loop picks wherever torch has it (on a CPU the default is the single-tensor loop)."""

    from hfssl.attention import packed_layout, use_attn_implementation
    from hfssl.collators import MLMCollator
    from hfssl.data.batching import shuffled_batches
    from hfssl.objectives.mlm.loss import SparseMaskedLM

    config, rows = _bert_config(p), text_rows(p, varlen)
    kernel = {}

    def build(cfg):
        torch.manual_seed(0)
        mlm = _masked_lm(config)
        kernel["attention"] = use_attn_implementation(mlm, attention, precision)
        packing = packed_layout(mlm.config, p["seq"], True) if varlen and packed else None
        if packing is not None:  # rows_multiple_of > 1: fewer distinct batch shapes (empty rows added)
            packing = dataclasses.replace(packing, rows_multiple_of=rows_multiple_of)
        collator = MLMCollator(0, 4, torch.arange(SPECIAL), torch.arange(SPECIAL, config.vocab_size), packing=packing,
                               mlm_probability=p.get("mlm_probability", 0.15))
        return _objective_class()(cfg, "mlm", "tokens", SparseMaskedLM(mlm), collator, [{"input_ids": r} for r in rows])

    precision = precision or p["precision"]
    kernels = contextlib.nullcontext() if fused_adamw else mock.patch("hfssl.schedules._get_fused_kernels_supported_devices", list)
    with kernels:
        objective, log = _train_hfssl({**p, "precision": precision}, build, compile, p["steps"], per_device_train_batch_size=p["batch"],
                                      learning_rate=1e-4)
    timed, dt = p["steps"] - p["warm"], _elapsed(objective.clock, p["warm"])
    plan = shuffled_batches(len(rows), p["batch"], 0, 0)  # the loop's epoch-0 plan: update s trains plan[s]
    lengths = np.array([len(r) for r in rows])
    tokens = int(sum(lengths[plan[s]].sum() for s in range(p["warm"], p["steps"])))
    result = _text_result(p, config, tokens, dt, timed, lengths, torch.device(p["device"]))
    result.update(attention=kernel["attention"], loss=round(log[-1]["loss"], 4),
                  padding_fraction=round(float(np.mean([r["padding_fraction"] for r in log])), 4))
    return result


def _w2v_objective(p, config, samples, make_audio=None, on_update=None):
    from transformers import Wav2Vec2ForPreTraining

    from hfssl.attention import use_attn_implementation
    from hfssl.collators.speech import AudioPretrainingCollator
    from hfssl.objectives.wav2vec2.model import Wav2Vec2Pretraining

    kernel = {}

    def build(cfg):
        torch.manual_seed(0)
        model = Wav2Vec2ForPreTraining(config)
        kernel["attention"] = use_attn_implementation(model, None, p["precision"])
        collator = AudioPretrainingCollator(config.conv_kernel, config.conv_stride, max_samples=samples, do_normalize=True,
                                            return_attention_mask=config.feat_extract_norm == "layer", mask_prob=0.65, mask_length=10,
                                            min_masks=2, num_negatives=config.num_negatives)
        data = AudioPool(cfg.per_device_train_batch_size * cfg.max_steps, samples, make_audio)
        # The layer-norm (large) layout takes fairseq large's loss weights: no feature penalty, no gradient scaling.
        # Base's (penalty 10, x0.1) with this layout collapsed the codebook to one code per group within ~50 updates
        # (perplexity 53 -> 2.0 on the CPU preset; an H200 run too), where penalty 0 and x1.0 kept it spreading (-> 405).
        pretraining = Wav2Vec2Pretraining(model, feature_grad_scale=1.0, feature_penalty_weight=0.0)
        return _objective_class()(cfg, "wav2vec2", "audio_seconds", pretraining, collator, data, on_update)

    return build, kernel


def hfssl_w2v(p: dict, compile: bool) -> dict:
    """hfssl's loop, Wav2Vec2Pretraining (masked frames only quantized and scored), masks and negatives per batch."""
    from hfssl.collators.speech import AudioPretrainingCollator

    config, samples = _w2v_config(p), int(p["w2v_seconds"] * 16000)
    build, kernel = _w2v_objective(p, config, samples)
    objective, log = _train_hfssl(p, build, compile, p["w2v_steps"], per_device_train_batch_size=p["w2v_batch"], learning_rate=5e-4)
    timed, dt = p["w2v_steps"] - p["w2v_warm"], _elapsed(objective.clock, p["w2v_warm"])
    result = _audio_result(p, config, samples, dt, timed, torch.device(p["device"]))
    collator = AudioPretrainingCollator(config.conv_kernel, config.conv_stride, num_negatives=config.num_negatives)
    lengths = torch.full((p["w2v_batch"],), samples)
    t = time.perf_counter()
    for seed in range(5):
        collator.draw_masks(lengths, torch.Generator().manual_seed(seed))
    mask_ms = 1000 * (time.perf_counter() - t) / 5
    result.update(attention=kernel["attention"], loss=round(log[-1]["loss"], 4), cpu_mask_and_negatives_ms_per_batch=round(mask_ms, 2),
                  mask_share_of_step=round(mask_ms / result["step_ms"], 4), masks_overlapped=p["workers"] > 0,
                  padding_fraction=round(float(np.mean([r["padding_fraction"] for r in log])), 4))
    return result


def host_syncs(p: dict) -> dict:
    """CUDA only: device-to-host synchronizations per update in hfssl's loop, MLM and wav2vec 2.0, no compile.
    torch.cuda.set_sync_debug_mode warns at each; it is switched on at the end of update 2 and off at the end of
    the last, so model setup and the end of training are not counted. Also where they come from (the Python
    line that triggered each, most frequent first)."""
    import collections
    import warnings

    if p["device"] != "cuda":
        return {"skipped": "needs CUDA (torch.cuda.set_sync_debug_mode)"}
    out = {}
    for name, run in (("mlm", lambda q: hfssl_mlm(q, compile=False, varlen=False)), ("w2v", lambda q: hfssl_w2v(q, compile=False))):
        steps, counted_from = 6, 2
        q = {**p, "steps": steps, "warm": 2, "w2v_steps": steps, "w2v_warm": 2, "workers": 0}

        def toggle(step):
            if step == counted_from:
                torch.cuda.set_sync_debug_mode("warn")
            elif step == steps:
                torch.cuda.set_sync_debug_mode("default")

        UPDATE_HOOKS.append(toggle)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                run(q)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                UPDATE_HOOKS.remove(toggle)
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        where = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
        out[name] = {"syncs_per_update": round(len(syncs) / (steps - counted_from), 2), "where": dict(where.most_common(12))}
    return out


def w2v_long(p: dict, seconds: float) -> dict:
    """hfssl's wav2vec 2.0 loop on structured synthetic audio for about `seconds`: lr 5e-4 after a 10% warmup,
    Gumbel temperature 2 -> 0.5 (decay 0.999995 per update, fairseq base). Reports non-finite updates and the
    codebook perplexity (sum over groups) of the first and last tenth of the updates."""
    config, samples = _w2v_config(p), int(p["w2v_seconds"] * 16000)

    def gumbel(model, step):
        t = max(0.5, 2.0 * 0.999995**step)
        model.set_gumbel_temperature(t)
        return {"gumbel_temperature": t}

    calibration = hfssl_w2v({**p, "w2v_steps": 6, "w2v_warm": 3}, compile=False)
    steps = max(10, int(seconds * 1000 / calibration["step_ms"]))
    build, kernel = _w2v_objective(p, config, samples, speechlike, gumbel)
    t = time.perf_counter()
    _, log = _train_hfssl(p, build, False, steps, per_device_train_batch_size=p["w2v_batch"], learning_rate=5e-4,
                          warmup_steps=steps // 10, max_grad_norm=10.0, max_bad_steps=10**6)
    wall = time.perf_counter() - t
    tenth = max(1, steps // 10)
    finite = [r for r in log if isinstance(r["loss"], float) and np.isfinite(r["loss"])]
    mean = lambda rows, k: round(float(np.mean([r[k] for r in rows])), 3) if rows else None  # noqa: E731
    return {"steps": steps, "wall_s": round(wall, 1), "attention": kernel["attention"], "precision": p["precision"],
            "non_finite_updates": len(log) - len(finite), "nan_in_log": sum(1 for r in log if not (isinstance(r["loss"], float) and np.isfinite(r["loss"]))),
            "codebook_perplexity_first": mean(finite[:tenth], "codebook_perplexity"),
            "codebook_perplexity_last": mean(finite[-tenth:], "codebook_perplexity"),
            "codebook_perplexity_range": [config.num_codevector_groups, config.num_codevector_groups * config.num_codevectors_per_group],
            "loss_first": mean(finite[:tenth], "loss"), "loss_last": mean(finite[-tenth:], "loss"),
            "accuracy_last": mean(finite[-tenth:], "accuracy")}


# ----------------------------------------------------------------------------------- results

def _elapsed(clock, warm: int) -> tuple[float, float]:
    """(wall, CPU) seconds from the end of update `warm` to the end of the last one."""
    return clock[-1][0] - clock[warm - 1][0], clock[-1][1] - clock[warm - 1][1]


def _text_result(p, config, tokens, dt, timed, lengths, device) -> dict:
    wall, cpu = dt
    mean_len = float((lengths**2).sum() / lengths.sum())
    result = {"tokens_per_s": round(tokens / wall), "step_ms": round(1000 * wall / timed, 2), "timed_steps": timed,
              "peak_mem_gb": _peak(device), "model_tflops_per_s": round(tokens / wall * bert_flops_per_token(config, mean_len) / 1e12, 4)}
    if device.type == "cpu":
        result.update(tokens_per_cpu_s=round(tokens / cpu), cpu_ms_per_step=round(1000 * cpu / timed, 2))
    return result


def _audio_result(p, config, samples, dt, timed, device) -> dict:
    wall, cpu = dt
    audio = timed * p["w2v_batch"] * samples / 16000
    result = {"audio_s_per_s": round(audio / wall, 2), "step_ms": round(1000 * wall / timed, 2), "timed_steps": timed, "peak_mem_gb": _peak(device),
              "model_tflops_per_s": round(timed * p["w2v_batch"] * w2v_flops_per_utterance(config, samples) / wall / 1e12, 4)}
    if device.type == "cpu":
        result.update(audio_s_per_cpu_s=round(audio / cpu, 3), cpu_ms_per_step=round(1000 * cpu / timed, 2))
    return result
