"""Every registered stage (and the test plug-in window stage) against the stage contract: fit, transform shapes,
learned attributes, state and `learned` round trips to identical output, bad input refused, unfitted says so."""

from __future__ import annotations

import json
from typing import Iterator

import numpy as np
import pytest
import torch

from models.detectors import NotFittedError
from models.stages import STAGES, Stage
from tests import plugins
from tests.helpers import make_denoiser_bundle

NAMES = sorted(STAGES) + [c.name for c in plugins.STAGE_PLUGINS]
DIM = 12


@pytest.fixture(scope="module", autouse=True)
def _plugins() -> Iterator[None]:
    with plugins.plugins_registered():
        yield


def _clips(n: int, seed: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(3, DIM))
    # squashed into (0, 1), the range the autoencoder stages (whose sigmoid outputs follow minmax) train on
    return [torch.sigmoid(torch.tensor(rng.normal(size=(30, 3)) @ w + 0.1 * rng.normal(size=(30, DIM)),
                                       dtype=torch.float32))
            for _ in range(n)]


@pytest.fixture(scope="module", params=NAMES)
def fitted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Stage:
    cls = STAGES[request.param]
    params = dict(cls.quick_params)
    if cls.name == "lstm_denoiser":  # it copies a trained denoiser bundle's network (frames of DIM bands)
        params["bundle"] = str(make_denoiser_bundle(tmp_path_factory.mktemp("denoiser"), n_mels=DIM))
    return cls(**params).fit(_clips(8, 0))


def test_transform_keeps_clip_lengths_and_gives_out_dim(fitted: Stage) -> None:
    clips = _clips(3, 1)
    out = fitted.transform_clips(clips)
    assert [o.shape for o in out] == [(c.shape[0], fitted.out_dim()) for c in clips]
    assert all(torch.isfinite(o).all() for o in out)
    if fitted.granularity == "vector":  # each vector on its own: a block gives what the clips gave
        np.testing.assert_allclose(fitted.transform(torch.cat(clips)).numpy(), torch.cat(out).numpy(), rtol=1e-6)


def test_learned_attributes_state_and_metadata_round_trip(fitted: Stage) -> None:
    unfitted = type(fitted)(**fitted.get_params())
    assert fitted.is_fitted and not unfitted.is_fitted
    assert all(k.endswith("_") for k in set(vars(fitted)) - set(vars(unfitted)))
    state, learned = fitted.state_dict(), fitted.learned()
    json.dumps(learned, allow_nan=False)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    twin = type(fitted)(**fitted.get_params()).load_state_dict(state, learned)
    clips = _clips(2, 2)
    for a, b in zip(twin.transform_clips(clips), fitted.transform_clips(clips)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError):
        type(fitted)(**fitted.get_params()).load_state_dict({**state, "surplus": torch.zeros(1)}, learned)


def test_bad_input_is_refused(fitted: Stage) -> None:
    with pytest.raises(ValueError, match="NaN/inf"):
        fitted.transform_clips([torch.full((4, DIM), float("nan"))])
    with pytest.raises(ValueError):
        fitted.transform_clips([torch.zeros((4, DIM + 1))])


@pytest.mark.parametrize("name", NAMES)
def test_unfitted_stage_says_so(name: str) -> None:
    stage = STAGES[name]()
    with pytest.raises(NotFittedError, match="not fitted"):
        stage.transform_clips(_clips(1, 3))
    with pytest.raises(NotFittedError):
        stage.state_dict()


def test_pca_keeps_the_requested_variance_and_minmax_maps_training_data_to_unit_range() -> None:
    clips = _clips(8, 0)
    pca = STAGES["pca"](n_components=0.99).fit(clips)
    assert 3 <= pca.learned()["n_components"] < DIM and pca.learned()["explained_variance_ratio"] >= 0.99
    X = torch.cat(STAGES["minmax"]().fit(clips).transform_clips(clips))
    assert float(X.min()) == 0.0 and float(X.max()) == pytest.approx(1.0)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_velicer_map_recovers_the_number_of_common_factors(k: int) -> None:
    from models.stages.pca_map import velicer_map

    rng = np.random.default_rng(k)
    X = rng.normal(size=(3000, k)) @ rng.normal(size=(k, 16)) + 0.5 * rng.normal(size=(3000, 16))
    m, scores = velicer_map(torch.corrcoef(torch.tensor(X).T), 19)
    assert m == k and len(scores) == 15  # m runs over 1..min(19, dim - 1)


def test_pca_map_chooses_a_count_per_group() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 2)) @ rng.normal(size=(2, 8)) + 0.3 * rng.normal(size=(400, 8))
    b = rng.normal(size=(400, 1)) @ rng.normal(size=(1, 4)) + 0.3 * rng.normal(size=(400, 4))
    clips = list(torch.tensor(np.hstack([a, b]), dtype=torch.float32).split(50))
    stage = STAGES["pca_map"](groups=[8, 4]).fit(clips)
    assert stage.learned()["n_components"] == [2, 1] and stage.out_dim() == 3
    with pytest.raises(ValueError, match="add up to the input dim 12"):
        STAGES["pca_map"](groups=[8, 3]).fit(clips)


def _manifold(n: int, seed: int) -> torch.Tensor:
    """Vectors in (0, 1) on a 2-dim curved manifold of a 12-dim space: what an autoencoder can learn to restore."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(-1, 1, size=(n, 2))
    w = np.random.default_rng(99).normal(size=(2, DIM))
    return torch.sigmoid(torch.tensor(np.tanh(z @ w) * 2.0, dtype=torch.float32))


@pytest.mark.parametrize("name", ["ddae", "ae_clean"])
def test_autoencoder_stages_restore_vectors_of_the_training_manifold(name: str) -> None:
    train, test = _manifold(1000, 0), _manifold(300, 1)
    stage = STAGES[name](groups=[DIM], layers=[[32, 8, 2]], epochs=40, lr=1e-2, batch_size=64, progress=False,
                         device="cpu").fit(list(train.split(100)))
    gen = torch.Generator().manual_seed(0)
    noisy = (test + 0.1 * torch.randn(test.shape, generator=gen)).clamp(0, 1)
    corrupted, cleaned = (noisy - test).square().mean(), (stage.transform(noisy) - test).square().mean()
    assert cleaned < 0.5 * corrupted  # the 2-dim code keeps the manifold and drops the off-manifold noise
    assert (stage.transform(test) - test).square().mean() < 0.1 * test.var()


def test_ddae_builds_the_study_networks_and_needs_unit_range_input() -> None:
    stage = STAGES["ddae"](groups=[128, 8], layers=[[64, 32, 16, 8], [16, 32, 64, 128]], epochs=1,
                           progress=False, device="cpu")
    X = torch.rand(80, 136)
    stage.fit([X])
    shapes = [[tuple(m.weight.shape[::-1]) for m in pair.modules() if isinstance(m, torch.nn.Linear)]
              for pair in stage.net_.pairs]
    assert shapes[0] == [(128, 64), (64, 32), (32, 16), (16, 8), (8, 16), (16, 32), (32, 64), (64, 128)]
    assert shapes[1] == [(8, 16), (16, 32), (32, 64), (64, 128), (128, 64), (64, 32), (32, 16), (16, 8)]
    assert stage.out_dim() == 136 and stage.learned()["groups"] == [128, 8]
    assert STAGES["ddae"]().get_params()["noise_factor"] == 0.7 and STAGES["ae_clean"]().noise_factor == 0.0
    with pytest.raises(ValueError, match="put a minmax stage before it"):
        STAGES["ddae"](epochs=1, progress=False).fit([X + 1.0])
    with pytest.raises(ValueError, match="add up to the input dim"):
        STAGES["ddae"](groups=[100, 8], epochs=1, progress=False).fit([X])
