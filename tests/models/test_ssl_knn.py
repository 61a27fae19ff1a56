"""ssl_knn's own parts: the power-domain mix, the views (time shift bounded by max_shift, gain invariance with
level_norm, the mix level), NT-Xent against a direct computation, pre-training kept by fit, gain invariance of
scores, state checks, and pre-training through the recipe (unlabeled clips, one pre-trained detector for several
machines) and through `asd-offline train --unlabeled`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from models.bundle import load_bundle
from models.detectors.ssl_knn.detector import ContrastiveStep, SslKnn, mix_db
from models.detectors.ssl_knn.network import Contrastive, SegmentEncoder, nt_xent
from models.training.loop import Batch
from offline.cli import main
from offline.datasets.records import Clip
from models.training.recipe import pretrain_detector, train_bundle
from tests.offline.test_train_cli import FAST, write_dcase

QUICK = SslKnn.quick_params


def _clips(n: int, seed: int, t: int = 40, dim: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t, dim, generator=g) + torch.linspace(0, 3, dim) for _ in range(n)]


def _step(**kw) -> ContrastiveStep:
    args = {"frames": 8, "max_shift": 3, "mix": None, "gain_db": 0.0, "level_norm": False, "temperature": 0.2,
            "seed": 0, **kw}
    return ContrastiveStep(Contrastive(SegmentEncoder(6, 8, 1, 4), 4, 4), **args)


def test_mix_db_is_the_power_sum() -> None:
    a, b = torch.tensor([0.0, -30.0, 12.0]), torch.tensor([0.0, 0.0, -40.0])
    expected = 10 * np.log10(10 ** (a.numpy() / 10) + 10 ** (b.numpy() / 10))
    np.testing.assert_allclose(mix_db(a, b).numpy(), expected, rtol=1e-6, atol=1e-6)
    assert float(mix_db(a, a)[0]) == pytest.approx(10 * math.log10(2))


def test_a_view_is_a_crop_within_max_shift() -> None:
    x = torch.randn(5, 11, 6)
    v = _step().view(x)
    assert v.shape == (5, 8, 6)
    for i in range(5):
        assert any(torch.equal(v[i], x[i, o : o + 8]) for o in range(4))


def test_with_level_norm_a_gain_changes_no_view_and_the_mix_sits_below_the_view() -> None:
    x = torch.randn(6, 11, 6) * 3
    v1 = _step(mix=(-20.0, -10.0), level_norm=True).view(x)
    v2 = _step(mix=(-20.0, -10.0), level_norm=True).view(x + 6.0)
    torch.testing.assert_close(v1, v2, rtol=0, atol=1e-4)
    # mixing adds power: never lowers a value, and at 10-20 dB below it raises the mean by at most 10 log10(1.1)
    plain = _step().view(x)
    mixed = _step(mix=(-20.0, -10.0)).view(x)
    assert bool((mixed >= plain - 1e-5).all())
    assert 0 < float((mixed - plain).mean()) < 10 * math.log10(1.1) + 1e-6


def test_nt_xent_matches_a_direct_computation() -> None:
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    losses = []
    for i in range(8):
        j = (i + 4) % 8
        logits = [float(z[i] @ z[k]) / 0.5 for k in range(8) if k != i]
        pos = float(z[i] @ z[j]) / 0.5
        losses.append(-pos + math.log(sum(math.exp(v) for v in logits)))
    assert float(nt_xent(z1, z2, 0.5)) == pytest.approx(np.mean(losses), rel=1e-5)
    assert float(nt_xent(z1, z1, 0.5)) < float(nt_xent(z1, z2, 0.5))


def test_the_step_loss_is_finite_and_the_loss_falls_in_pre_training() -> None:
    step = _step(mix=(-20.0, -10.0), level_norm=True)
    assert math.isfinite(float(step.loss(Batch(torch.randn(8, 11, 6))).detach()))
    det = SslKnn(**{**QUICK, "epochs": 8}).pretrain(_clips(6, 0, t=80))
    losses = [h["loss"] for h in det.history_]
    assert losses[-1] < losses[0]


def test_fit_keeps_a_pretrained_encoder_and_banks_only_its_own_clips() -> None:
    det = SslKnn(**QUICK).pretrain(_clips(8, 0))
    before = {k: v.clone() for k, v in det.encoder_.state_dict().items()}
    det.fit(_clips(2, 1), ["a", "b"])
    assert all(torch.equal(before[k], v) for k, v in det.encoder_.state_dict().items())
    assert det.learned()["pretrain_clips"] == 8
    assert det.learned()["bank_segments_per_id"] == {"a": det.bank_.shape[0] // 2, "b": det.bank_.shape[0] // 2}
    # a training clip scores 0 against its own id's bank (up to float32 embeddings), another clip does not
    own, other = det.score(_clips(2, 1)[:1] + _clips(1, 9), ["a", "a"])
    assert own < 1e-5 < other


def test_fit_without_pretrain_pretrains_on_its_clips() -> None:
    det = SslKnn(**QUICK).fit(_clips(3, 0))
    assert det.learned()["pretrain_clips"] == 3 and len(det.history_) == QUICK["epochs"]
    loaded = SslKnn(**QUICK).load_state_dict(det.state_dict(), det.learned())
    assert loaded.learned() == det.learned()


def test_a_gain_changes_no_score_with_level_norm() -> None:
    det = SslKnn(**QUICK).fit(_clips(3, 0))
    test = _clips(2, 5)
    np.testing.assert_allclose(det.score(test), det.score([c + 6.0 for c in test]), rtol=1e-4, atol=1e-6)


def test_load_state_dict_refuses_what_does_not_rebuild() -> None:
    det = SslKnn(**QUICK).fit(_clips(3, 0))
    state, learned = det.state_dict(), det.learned()
    with pytest.raises(ValueError, match="learned\\['dim'\\]"):
        SslKnn(**QUICK).load_state_dict(state, {k: v for k, v in learned.items() if k != "dim"})
    with pytest.raises(ValueError, match="encoder"):
        SslKnn(**QUICK).load_state_dict({k: v for k, v in state.items() if k != "encoder.out.bias"}, learned)
    with pytest.raises(ValueError, match="encoder"):
        SslKnn(**{**QUICK, "width": 8}).load_state_dict(state, learned)


def test_bad_params_are_refused() -> None:
    for bad, match in (({"mix_db": [-10, -20]}, "mix_db"), ({"max_shift": -1}, "max_shift"),
                       ({"temperature": 0}, "temperature"), ({"width": 0}, "width")):
        with pytest.raises(ValueError, match=match):
            SslKnn(**{**QUICK, **bad}).fit(_clips(2, 0))
    with pytest.raises(ValueError, match="training stretch"):
        SslKnn(**QUICK).pretrain([torch.randn(5, 6)])


# -- through the recipe and the CLI ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = write_dcase(tmp_path_factory.mktemp("own"), n_train=3)
    write_dcase(root, machine="pump", ids=("id_01",), n_train=2)
    extra = write_dcase(tmp_path_factory.mktemp("extra"), machine="valve", ids=("id_04",), n_train=4)
    return root, extra


def _records(root: Path, machine: str) -> list[Clip]:
    from offline.datasets.index import load_clips

    return load_clips(root, machine=machine)


CONFIG = {"params": {k: v for k, v in QUICK.items()}, "threshold": "percentile:90", "holdout": 0.0}


def test_train_bundle_pretrains_on_its_clips_and_the_unlabeled_ones(data: tuple[Path, Path], tmp_path: Path) -> None:
    root, extra = data
    unlabeled = [c for c in _records(extra, "valve") if c.split == "train"]
    out = train_bundle(_records(root, "fan"), "ssl_knn", "fan", tmp_path / "b", CONFIG, device="cpu",
                       progress=False, unlabeled=unlabeled)
    b = load_bundle(out, device="cpu")
    pre = b.meta["training"]["pretraining"]
    assert pre.pop("seconds") > 0 and pre.pop("epochs_run") == b.detector.epochs
    assert pre == {"clips": 6 + 4, "unlabeled_clips": 4, "from": "here"}


def test_one_pretrained_detector_serves_several_machines(data: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = data
    everything = _records(root, "fan") + _records(root, "pump")
    pre = pretrain_detector("ssl_knn", CONFIG, [c for c in everything if c.split == "train"], device="cpu",
                            progress=False)
    encoder = {k: v.clone() for k, v in pre.encoder_.state_dict().items()}
    for machine in ("fan", "pump"):
        out = train_bundle(_records(root, machine), "ssl_knn", machine, tmp_path / machine, CONFIG, device="cpu",
                           progress=False, pretrained=pre)
        b = load_bundle(out, device="cpu")
        assert b.meta["training"]["pretraining"]["from"] == "given"
        assert all(torch.equal(encoder[k], v) for k, v in b.detector.encoder_.state_dict().items())
    assert all(torch.equal(encoder[k], v) for k, v in pre.encoder_.state_dict().items())  # copied, not changed
    with pytest.raises(ValueError, match="not a pre-trained ssl_knn with this config"):
        train_bundle(_records(root, "fan"), "ssl_knn", "fan", tmp_path / "x",
                     {**CONFIG, "params": {**CONFIG["params"], "k": 2}}, device="cpu", progress=False,
                     pretrained=pre)
    with pytest.raises(ValueError, match="does not pre-train"):
        train_bundle(_records(root, "fan"), "embed_knn", "fan", tmp_path / "y", None, progress=False,
                     pretrained=pre)


def test_cli_pretrains_on_every_machine_of_data_and_on_unlabeled(data: tuple[Path, Path], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    import yaml

    root, extra = data
    cfg = tmp_path / "quick.yaml"
    cfg.write_text(yaml.safe_dump({"params": {k: v for k, v in QUICK.items() if k != "epochs"},
                                   "threshold": "percentile:90"}))
    out = tmp_path / "cli"
    assert main(["train", "--data", str(root), "--model", "ssl_knn", "--machine", "fan", "--config", str(cfg),
                 "--unlabeled", str(extra), "--out", str(out), *FAST]) == 0
    pre = load_bundle(out, device="cpu").meta["training"]["pretraining"]
    # fan's 5 fitted training clips (one is held out for the threshold), pump's 2 (another machine of --data),
    # valve's 4 (--unlabeled); no test clip
    assert pre.pop("seconds") > 0 and pre.pop("epochs_run") >= 1
    assert pre == {"clips": 5 + 2 + 4, "unlabeled_clips": 2 + 4, "from": "here"}
    capsys.readouterr()
    assert main(["train", "--data", str(root), "--model", "embed_knn", "--machine", "fan", "--unlabeled", str(extra),
                 "--out", str(tmp_path / "no"), *FAST]) == 2
    assert "--unlabeled is for the models that pre-train" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
