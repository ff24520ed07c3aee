"""The collective smoke: what `crossfl doctor SITE --smoke` asks of every rank before a billed
task does (`python -m crossfl.client collective`, in batch/smoke.sh: 2 ranks per node, on the
smoke job's nodes, bound and inside the image as the training ranks are).

Each rank joins the process group with the backend its device type gets
(crossfl.client.distributed: NCCL on CUDA, RCCL under that name on ROCm, XCCL on XPU, gloo on
CPU), then

1. all-reduces a float32 buffer (`mb` MB) holding its rank + 1: every element must come back as
   the sum over ranks; timed over `iters` rounds after one warm-up, as nccl-tests times it:
   algorithm bandwidth = bytes / time, bus bandwidth = that x 2 (n - 1) / n;
2. takes one DDP step of the tiny model (crossfl.tiny_model's architecture with random weights
   from one seed, so no model files are needed): each rank its own batch, gradients all-reduced
   by DDP, then the ranks' parameters must agree bit for bit.

and prints one JSON line (`"collective": true`): rank, host, device and its name, backend, the
all-reduce's result and bandwidths, the DDP step's time and loss. It exits 1 when anything
failed, still printing its line where it can.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import torch
import torch.distributed as dist

from crossfl.client import distributed
from crossfl.client.device import device_environment, select_device
from crossfl.client.distributed import World, hostname, rank_env
from crossfl.client.telemetry import device_name

VOCAB = 512
# The tiny model's shape: crossfl.tiny_model.TinyModelSpec's defaults (a test holds them equal),
# written here because the image does not carry crossfl.tiny_model's builder and what it
# imports (tokenizers, the data code): the client imports only what the worker image installs.
TINY_SHAPE = {
    "hidden_size": 128,
    "num_layers": 4,
    "num_heads": 4,
    "intermediate_size": 256,
    "max_position": 256,
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xpu":
        torch.xpu.synchronize(device)


def all_reduce_check(world: World, mb: float, iters: int) -> dict[str, Any]:
    """The sum over ranks of a `mb`-MB buffer: correct everywhere? and how fast."""
    n = max(1, int(mb * 1e6) // 4)
    buf = torch.full((n,), float(world.rank + 1), dtype=torch.float32, device=world.device)
    want = world.size * (world.size + 1) / 2
    if world.distributed:
        dist.all_reduce(buf)  # warm-up: connections, buffers
    ok = bool(torch.all(buf == want).item()) if world.distributed else True
    _sync(world.device)
    start = time.perf_counter()
    for _ in range(iters):
        if world.distributed:
            dist.all_reduce(buf)
    _sync(world.device)
    seconds = (time.perf_counter() - start) / max(iters, 1)
    nbytes = n * 4
    algbw = nbytes / seconds / 1e9 if seconds > 0 and world.distributed else 0.0
    bus = algbw * 2 * (world.size - 1) / world.size if world.size > 1 else 0.0
    return {
        "mb": round(nbytes / 1e6, 3),
        "ok": ok,
        "ms": round(seconds * 1e3, 3),
        "algbw_gbs": round(algbw, 3),
        "busbw_gbs": round(bus, 3),
    }


def tiny_model(seed: int = 0) -> torch.nn.Module:
    """The tiny model's architecture (crossfl.tiny_model defaults), random weights from `seed`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = TINY_SHAPE
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=shape["hidden_size"],
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"],
        num_key_value_heads=shape["num_heads"],
        intermediate_size=shape["intermediate_size"],
        max_position_embeddings=shape["max_position"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def ddp_step(world: World) -> dict[str, Any]:
    """One DDP step (each rank its own batch); the ranks' parameters must then be equal."""
    from torch.nn.parallel import DistributedDataParallel

    model = tiny_model().to(world.device)
    ids = [world.device.index] if world.device.type != "cpu" else None
    runner = DistributedDataParallel(model, device_ids=ids) if world.distributed else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1000 + world.rank)  # a different batch per rank
    batch = torch.randint(0, VOCAB, (4, 32), generator=gen).to(world.device)
    _sync(world.device)
    start = time.perf_counter()
    loss = runner(input_ids=batch, labels=batch).loss
    loss.backward()
    opt.step()
    _sync(world.device)
    seconds = time.perf_counter() - start
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().numpy().tobytes())
    mine = digest.hexdigest()
    digests = distributed.gather(mine, world)
    return {
        "ok": len(set(digests)) == 1,
        "step_s": round(seconds, 4),
        "loss": round(float(loss.detach()), 4),
        "params_sha256": mine[:16],
    }


def run(expect: str | None, mb: float, iters: int) -> dict[str, Any]:
    """This rank's report (one JSON line of the smoke job)."""
    select_device(expect)  # the catalog's device, or one UserError naming what was seen
    kind = distributed.device_kind()
    place = rank_env()
    report: dict[str, Any] = {"collective": True, "host": hostname()}
    if place is None:  # one process: nothing to all-reduce with, still a DDP-free step
        world = distributed.single(
            distributed.rank_device(kind, 0, distributed.visible_devices(kind))
        )
        return _fill(report, world, expect, mb, iters)
    with distributed.process_group(place, kind) as world:
        return _fill(report, world, expect, mb, iters)


def _fill(
    report: dict[str, Any], world: World, expect: str | None, mb: float, iters: int
) -> dict[str, Any]:
    report.update(
        rank=world.rank,
        local_rank=world.local_rank,
        world=world.size,
        device=str(world.device),
        name=device_name(world.device),
        backend=world.backend or "none",
        env=device_environment(expect or ""),
    )
    report["all_reduce"] = all_reduce_check(world, mb, iters)
    report["ddp"] = ddp_step(world)
    report["ok"] = report["all_reduce"]["ok"] and report["ddp"]["ok"]
    return report
