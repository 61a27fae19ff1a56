"""`asd-offline train --nproc 2`: real torchrun, two CPU processes on gloo (a rendezvous on a free local port).
The loss curve has the shape of the one-process run's, the bundle loads and scores, and only one process writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.bundle import load_bundle
from tests.offline.test_train_cli import write_dcase

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dcase(tmp_path_factory.mktemp("data"), n_train=8)


def _train(data: Path, out: Path, model: str, nproc: int, config: Path, epochs: int = 6) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "offline.cli", "train", "--data", str(data), "--model", model, "--machine", "fan",
           "--out", str(out), "--config", str(config), "--epochs", str(epochs), "--no-progress", "--device", "cpu",
           "--nproc", str(nproc)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def _curve(bundle: Path) -> np.ndarray:
    return np.array([h["loss"] for h in json.loads((bundle / "bundle.json").read_text())["training"]["loss_curve"]])


def test_two_processes_train_like_one_and_only_rank_0_writes(dataset: Path, tmp_path: Path) -> None:
    config = tmp_path / "ae.yaml"
    config.write_text("params: {batch_size: 32, hidden: 32, bottleneck: 4, n_layers: 2, lr: 0.003}\nholdout: 0\n")
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = _train(dataset, one, "dcase_ae", 1, config)
    r2 = _train(dataset, two, "dcase_ae", 2, config)
    assert r1.returncode == 0, r1.stderr
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "process 1 of 2 joined the training job (gloo)" in r2.stderr
    assert r2.stdout.count("wrote ") == 1  # rank 0 reports, rank 1 stays quiet
    assert sorted(p.name for p in two.iterdir()) == ["bundle.json", "weights.pt"]
    a, b = _curve(one), _curve(two)
    assert len(a) == len(b) == 6
    # the same global batches, split over two processes: the same descent, up to batch-norm statistics of half
    # batches and summation order
    assert b[-1] < 0.9 * b[0] and a[-1] < 0.9 * a[0]
    np.testing.assert_allclose(b, a, rtol=0.15)
    bundle = load_bundle(two, device="cpu")
    wav = sorted((dataset / "fan" / "test").glob("*.wav"))[0]
    import soundfile as sf

    assert np.isfinite(bundle.score_wavs([sf.read(wav, dtype="float32")[0]])).all()


def test_soft_boundary_deep_svdd_trains_in_two_processes(dataset: Path, tmp_path: Path) -> None:
    """The radius step gathers both processes' distances (`all_gather_cat`, tested below), pre-training and the
    centre's first pass run through the wrapped network: the whole Deep SVDD fit works data-parallel."""
    config = tmp_path / "svdd.yaml"
    config.write_text("params: {objective: soft-boundary, warm_up_epochs: 1, pretrain_epochs: 2, hidden: [16], "
                      "rep_dim: 4, batch_size: 64, lr: 0.001}\nholdout: 0\n")
    out = tmp_path / "svdd"
    r = _train(dataset, out, "deep_svdd", 2, config, epochs=3)
    assert r.returncode == 0, r.stderr[-3000:]
    assert load_bundle(out, device="cpu").detector.radius_ > 0


def test_aegan_ad_trains_in_two_processes_without_ddp(dataset: Path, tmp_path: Path) -> None:
    """The gradient penalty's double backward cannot run under DistributedDataParallel: AEGAN-AD's step averages
    each optimizer's gradients over the processes instead, and the fit ends in one loadable bundle."""
    config = tmp_path / "aegan.yaml"
    config.write_text("feature: {kind: logmel, n_fft: 1024, hop_length: 512, n_mels: 16}\n"
                      "params: {isize: 16, nz: 8, ndf: 4, ngf: 4, batch_size: 16, lr: 0.001, score_hop: 8}\n"
                      "holdout: 0\n")
    out = tmp_path / "aegan"
    r = _train(dataset, out, "aegan_ad", 2, config, epochs=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(_curve(out)) == 2 and np.isfinite(_curve(out)).all()
    assert load_bundle(out, device="cpu").detector.critic_ is not None


def _gather_worker(rank: int, init: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from models.training import distributed

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        values = torch.arange(3 + 2 * rank, dtype=torch.float32) + 10 * rank  # lengths 3 and 5
        gathered = distributed.all_gather_cat(values)
        total = distributed.all_sum(torch.tensor(float(rank + 1)))
        params = [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(3)),
                  torch.nn.Parameter(torch.zeros(1))]  # the last has no gradient
        params[0].grad, params[1].grad = torch.full((2, 2), 1.0 + rank), torch.arange(3.0) * (rank + 1)
        distributed.average_gradients(params)
        Path(out, f"rank{rank}.json").write_text(json.dumps({
            "gathered": gathered.tolist(), "sum": float(total), "main": distributed.is_main(),
            "grads": [params[0].grad.flatten().tolist(), params[1].grad.tolist(), params[2].grad is None]}))
    finally:
        dist.destroy_process_group()


def test_all_gather_cat_all_sum_and_average_gradients_across_two_gloo_processes(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_gather_worker, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    expected = [0.0, 1.0, 2.0, 10.0, 11.0, 12.0, 13.0, 14.0]
    assert [r["gathered"] for r in results] == [expected, expected]  # rank order, uneven lengths
    assert [r["sum"] for r in results] == [3.0, 3.0] and [r["main"] for r in results] == [True, False]
    assert [r["grads"] for r in results] == [[[1.5] * 4, [0.0, 1.5, 3.0], True]] * 2  # means; None stays None


def test_a_bad_config_is_reported_once_before_any_process_starts(dataset: Path, tmp_path: Path) -> None:
    r = _train(dataset, tmp_path / "x", "dcase_ae", 2, tmp_path / "missing.yaml")
    assert r.returncode == 2 and r.stderr.count("config file not found") == 1
    assert "torch.distributed.run" not in r.stderr
