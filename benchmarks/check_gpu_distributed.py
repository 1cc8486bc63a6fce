"""The GPU checks of docs/distributed.md, in one script: FSDP2 (SHARDED_STATE_DICT) on one GPU.

For each precision (bf16, fp16) and objective (MLM, wav2vec 2.0): pretrain `--steps` updates under
FSDP2 with checkpoints, rewind a copy to the checkpoint at 2/3 and resume it, compare the per-step
losses after the checkpoint, and load the final folder (`pipeline("fill-mask")` for MLM;
`AutoModel` + `AutoFeatureExtractor` for wav2vec 2.0, then a short CTC fine-tuning under FSDP2 whose
output `pipeline("automatic-speech-recognition")` loads). Writes results.json and prints a Markdown
table for docs/distributed.md.

    python benchmarks/check_gpu_distributed.py --out gpu-checks                 # one GPU, ~10 min
    python benchmarks/check_gpu_distributed.py --out /tmp/c --cpu-test --steps 6  # the same on 2 CPU processes

`--cpu-test` runs everything on two CPU processes (gloo) through tests/integration/fsdp_on_cpu.py,
in fp32 (no GPU, no bf16/fp16): it checks the script, not the GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
CPU_FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
                "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT", "FSDP_RESHARD_AFTER_FORWARD": "true", "OMP_NUM_THREADS": "1"}
FINAL = ("model.safetensors", "train_results.json", "config.json", "README.md")


def objectives(steps: int, cpu: bool) -> dict[str, list[str]]:
    save = ["--max_steps", steps, "--save_steps", max(1, steps // 3), "--save_total_limit", "none", "--logging_steps", 1,
            "--eval_steps", 0]
    mlm = [ROOT / "recipes" / "mlm" / "tiny-cpu.yaml", "--train_file", FIXTURES / "text" / "corpus.txt",
           "--tokenizer_name", FIXTURES / "text" / "tokenizer", "--vocab_size", 1000, "--max_seq_length", 64,
           "--config_overrides", "hidden_size=64,num_hidden_layers=2,num_attention_heads=2,intermediate_size=128,max_position_embeddings=64"
           if cpu else "hidden_size=256,num_hidden_layers=4,num_attention_heads=4,intermediate_size=1024,max_position_embeddings=128",
           *save]
    w2v2 = [ROOT / "recipes" / "wav2vec2" / "tiny-cpu.yaml", "--train_dir", FIXTURES / "speech" / "unlabeled", *save]
    return {"mlm": [str(a) for a in mlm], "wav2vec2": [str(a) for a in w2v2]}


def launcher(entry: str, precision: str, cpu: bool, port: int) -> tuple[list[str], dict]:
    script = {"pretrain": "run_pretrain.py", "finetune": "run_finetune.py"}[entry]
    if cpu:
        return ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                 str(ROOT / "tests" / "integration" / "fsdp_on_cpu.py"), entry], CPU_FSDP_ENV)
    return (["accelerate", "launch", "--config_file", str(ROOT / "recipes" / "accelerate" / "fsdp.yaml"), "--num_processes", "1",
             "--mixed_precision", precision, "--main_process_port", str(port), str(ROOT / script)], {})


def run(cmd: list[str], env: dict, log: Path) -> float:
    start = time.time()
    with open(log, "w") as f:
        code = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **env})
    if code != 0:
        raise RuntimeError(f"failed ({code}): {' '.join(cmd)}\n--- last lines of {log}:\n" + "".join(log.read_text().splitlines(True)[-40:]))
    return time.time() - start


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def rewind(source: Path, dest: Path) -> int:
    """Copy a finished run and take it back to its second-to-last checkpoint; returns that step."""
    shutil.copytree(source, dest)
    steps = sorted(int(p.name.split("-")[1]) for p in dest.glob("checkpoint-*"))
    keep = steps[-2]
    for step in steps[-1:]:
        shutil.rmtree(dest / f"checkpoint-{step}")
    for name in FINAL:
        (dest / name).unlink(missing_ok=True)
    return keep


def drop_weights(folder: Path) -> None:
    """Remove a finished run's checkpoints and weight files, keeping its logs and results."""
    if not folder.is_dir():
        return
    for path in folder.glob("checkpoint-*"):
        shutil.rmtree(path)
    for path in folder.glob("*.safetensors"):
        path.unlink()


def check_export(kind: str, out: Path) -> str:
    if kind == "mlm":
        from transformers import pipeline

        best = pipeline("fill-mask", model=str(out))("the [MASK] of the")[0]
        return f"fill-mask pipeline: top token {best['token_str']!r}"
    import numpy as np
    import torch
    from transformers import AutoFeatureExtractor, AutoModel

    model, fe = AutoModel.from_pretrained(out), AutoFeatureExtractor.from_pretrained(out)
    inputs = fe(np.zeros(16000, dtype=np.float32), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        frames = model(**inputs).last_hidden_state.shape[1]
    return f"AutoModel + AutoFeatureExtractor: {frames} frames for 1 s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--cpu-test", action="store_true")
    parser.add_argument("--precisions", default="bf16,fp16")
    parser.add_argument("--objectives", default="mlm,wav2vec2")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    precisions = ["no"] if args.cpu_test else args.precisions.split(",")
    results, port = [], 29651
    for precision in precisions:
        for kind in args.objectives.split(","):
            argv = objectives(args.steps, args.cpu_test)[kind]
            # The precision is hfssl's own setting too (accelerate launch's --mixed_precision must agree with it).
            precision_args = [] if args.cpu_test else ["--mixed_precision", precision]
            argv = [*argv, *precision_args]
            name = f"{kind}-{precision}"
            first, resumed = out / name, out / f"{name}-resumed"
            for p in (first, resumed):
                shutil.rmtree(p, ignore_errors=True)
            cmd, env = launcher("pretrain", precision, args.cpu_test, port)
            row = {"objective": kind, "precision": precision, "steps": args.steps}
            row["train_s"] = round(run([*cmd, *argv, "--output_dir", str(first)], env, out / f"{name}.log"), 1)
            summary = json.loads((first / "train_results.json").read_text())
            full = losses(first)
            row.update(final_loss=full[max(full)], overflow_updates=summary.get("overflow_updates"),
                       skipped_updates=summary["skipped_updates"])
            at = rewind(first, resumed)
            run([*cmd, *argv, "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"], env, out / f"{name}-resumed.log")
            again = losses(resumed)
            after = [s for s in full if s > at]
            row["resumed_from"] = at
            row["resume_max_rel_diff"] = max(abs(again[s] - full[s]) / max(abs(full[s]), 1e-12) for s in after)
            row["resume_equal"] = all(again[s] == full[s] for s in after)
            row["export"] = check_export(kind, first)
            if kind == "wav2vec2":
                ctc = out / f"ctc-{precision}"
                shutil.rmtree(ctc, ignore_errors=True)
                fcmd, fenv = launcher("finetune", precision, args.cpu_test, port + 1)
                run([*fcmd, str(ROOT / "recipes" / "finetune" / "speech-recognition-ctc-tiny-cpu.yaml"), *precision_args, "--model_name_or_path",
                     str(first), "--output_dir", str(ctc), "--max_steps", str(max(4, args.steps // 10)), "--eval_steps", "0",
                     "--save_steps", str(max(2, args.steps // 20))], fenv, out / f"ctc-{precision}.log")
                import soundfile as sf
                from transformers import pipeline

                wave, rate = sf.read(str(FIXTURES / "speech" / "digits" / "kal_008.flac"), dtype="float32")
                text = pipeline("automatic-speech-recognition", model=str(ctc))({"raw": wave, "sampling_rate": rate})["text"]
                row["finetune"] = f"CTC under FSDP2: eval WER {json.loads((ctc / 'eval_results.json').read_text())['eval_wer']:.3f}; pipeline text {text!r}"
            row["finite"] = math.isfinite(row["final_loss"])
            results.append(row)
            port += 2
            print(json.dumps(row), flush=True)
            # Written after every row, and the weights and checkpoints dropped (logs kept): a call cut short
            # still returns what finished, and what comes back stays small (about 50 MB per GPU checkpoint).
            (out / "results.json").write_text(json.dumps(results, indent=1))
            for folder in (first, resumed, out / f"ctc-{precision}"):
                drop_weights(folder)
    print("\n| objective | precision | steps | final loss | overflows | skipped | resumed from | resume max rel. diff | export |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['objective']} | {r['precision']} | {r['steps']} | {r['final_loss']:.4f} | {r['overflow_updates']} | "
              f"{r['skipped_updates']} | {r['resumed_from']} | {r['resume_max_rel_diff']:.2e} | {r['export']} |")
    return 0 if all(r["finite"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
