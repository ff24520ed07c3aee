"""`make gpu-check`: one prepared check for a machine with NVIDIA GPUs, in under 5 minutes, with
nothing downloaded beyond the pinned packages (the tiny model and its data are built here).

1. devices: what torch sees (CUDA build, device count and names) and the device the client
   selects (`crossfl.client.device.select_device`);
2. one LoRA round of the tiny model on GPU 0 (`crossfl.client.tasks.train_round`, one rank):
   steps/s, tokens/s and device-busy (crossfl.client.telemetry, the measure run records use);
3. with 2 or more GPUs: the collective smoke over all of them (`python -m crossfl.client
   collective` under torch's launcher: an NCCL all-reduce, checked, with its bus bandwidth, and
   one DDP step of the tiny model with equal parameters on every rank), then one LoRA round
   data-parallel over all of them (steps/s, tokens/s, device-busy).

Without a GPU (`--cpu`, or none visible) it runs the same steps on CPU ranks with gloo (2
ranks for step 3), so its structure is exercised anywhere; it says so in its first line. Exit
status 1 when a check failed (a wrong all-reduce, parameters that differ, a failed round).
Figures are printed, never asserted: what a GPU machine shows goes into README by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from crossfl.client.telemetry import device_busy_fraction

from .bench_scaling import build
from .bench_scaling import train as lora_round

ALL_REDUCE_MB = 256


def round_figures(r: dict[str, Any]) -> str:
    train_s = r["timings"]["train_s"]
    busy = device_busy_fraction(r["accelerator_s"], r["train_window_s"], r["ranks"])
    return (
        f"{r['ranks']} rank(s) on {r['device_type']} ({r['dist_backend'] or 'no collective'}): "
        f"{r['steps'] / train_s:.2f} steps/s, {r['train_tokens'] / train_s:,.0f} tokens/s, "
        f"device-busy {busy:.0%}, loss {r['first_loss']:.3f} -> {r['train_loss']:.3f}"
    )


def collective(nproc: int, expect: str, mb: float) -> list[dict[str, Any]]:
    """The collective smoke on `nproc` local ranks (torch's launcher, as elastic_launch runs a
    task's ranks): one JSON report per rank."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "crossfl.client",
        "collective",
        "--expect",
        expect,
        "--mb",
        str(mb),
    ]
    env = {**os.environ, "CROSSFL_DEVICE": "cuda" if expect == "cuda" else "cpu"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    reports = []
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            reports.append(json.loads(line))
    if done.returncode != 0 and not reports:
        raise RuntimeError(f"the collective ranks failed: {done.stderr.strip()[-400:]}")
    return sorted(reports, key=lambda x: x.get("rank", 0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="run the CPU fallback even with GPUs")
    ap.add_argument("--steps", type=int, default=20, help="local steps of each LoRA round")
    args = ap.parse_args(argv)
    t0 = time.time()
    gpus = 0 if args.cpu or not torch.cuda.is_available() else torch.cuda.device_count()
    kind = "cuda" if gpus else "cpu"
    ok = True
    if gpus:
        names = [torch.cuda.get_device_name(i) for i in range(gpus)]
        print(f"gpu-check: {gpus} NVIDIA GPU(s): {', '.join(names)}; torch {torch.__version__}")
    else:
        print(
            f"gpu-check: CPU fallback (no NVIDIA GPU{' used: --cpu' if args.cpu else ' visible'}); "
            f"torch {torch.__version__}: the same steps on CPU ranks with gloo"
        )
    from crossfl.client.device import select_device

    os.environ["CROSSFL_DEVICE"] = kind
    print(f"1. device the client selects: {select_device(kind)}")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        model, data = build(Path(tmp))
        one = lora_round(model, data, "cuda:0" if gpus else "cpu", 1, args.steps)
        print(f"2. one LoRA round: {round_figures(one)}")
        nproc = gpus if gpus >= 2 else (2 if not gpus else 0)
        if nproc:
            reports = collective(nproc, kind, ALL_REDUCE_MB if gpus else 16)
            good = len(reports) == nproc and all(r.get("ok") for r in reports)
            ok = ok and good
            for r in reports:
                if r.get("error"):
                    print(f"3. rank {r.get('rank')}: {r['error']}")
                    continue
                ar, ddp = r["all_reduce"], r["ddp"]
                print(
                    f"3. rank {r['rank']}/{r['world']} {r['device']} {r['name']} ({r['backend']}): "
                    f"all-reduce {ar['mb']:g} MB {'ok' if ar['ok'] else 'WRONG'}, "
                    f"{ar['busbw_gbs']:.2f} GB/s bus ({ar['algbw_gbs']:.2f} alg); "
                    f"DDP step {'ok' if ddp['ok'] else 'DIFFERS'} {ddp['step_s']:.3f} s"
                )
            many = lora_round(model, data, kind, nproc if not gpus else "auto", args.steps)
            print(f"4. one LoRA round over all: {round_figures(many)}")
        else:
            print("3. one GPU: no collective to check (it needs two or more)")
    print(f"gpu-check: {'ok' if ok else 'FAILED'} in {time.time() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
