"""Masks agree on every DDP rank: decided on rank 0 and broadcast (gloo on CPU, two real processes)."""

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from yolo_prune.methods.schedule import PruneSettings


def _worker(rank, world, port, queue):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), YOLO_OFFLINE="1")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from yolo_prune.nn.build import load_model
        from yolo_prune.train.pruner import InTrainingPruner

        torch.manual_seed(rank)  # different weights on each rank: local decisions would differ
        model = load_model("yolov8n.yaml")
        pruner = InTrainingPruner(model, PruneSettings(flops=0.3, method="effp", steps_per_epoch=1), epochs=2)
        ctx = pruner.context(target_gflops=pruner.base_gflops * 0.7, progress=1.0)
        local = pruner.method.prune_step(ctx).masks
        pruner.maybe_step(model, None, position=2.0)
        queue.put((rank, {k: v.copy() for k, v in local.items()}, {k: v.copy() for k, v in pruner.masks.masks.items()}))
    finally:
        dist.destroy_process_group()


def test_masks_identical_on_every_rank():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict((r, (local, used)) for r, local, used in (queue.get(timeout=300) for _ in procs))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    (local0, used0), (local1, used1) = results[0], results[1]
    assert any(not np.array_equal(local0[k], local1[k]) for k in local0)  # ranks would disagree on their own
    assert all(np.array_equal(used0[k], used1[k]) for k in used0)  # but both use the same masks
    assert all(np.array_equal(used0[k], local0[k]) for k in used0)  # rank 0's
