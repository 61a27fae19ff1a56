"""Pre-computed per-file vectors instead of audio: e.g. another system's 20-dim per-file score vectors, which a
second-stage detector (the seed's SVDD on score vectors) models.

A "sample" of this kind is one row: `sample_rate` is a nominal 1, every row is one vector (`hop_samples` =
`span_samples` = 1), and the stream passes rows through after checking them, so the protocol (streams,
`extract`, `extract_batch`, the parity tests) holds for it unchanged. `read_vectors` loads such rows from `.npz`
or `.csv` files.
"""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import torch

from models.device import select_device
from models.features.base import BatchStream, FeatureConfig, FeatureInputError, register_feature


@register_feature
@dataclass(frozen=True)
class VectorsConfig(FeatureConfig):
    """Rows of `dim` numbers, one vector each. `dim=20` is the seed SVDD's score vectors; training sets it from
    the data it reads."""

    kind = "vectors"
    input_kind: ClassVar[Literal["audio", "vectors"]] = "vectors"

    sample_rate: int = 1  # nominal: one "sample" is one row
    dim: int = 20  # a field here: it overrides FeatureConfig's abstract property

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive("dim")

    @property
    def hop_samples(self) -> int:
        return 1

    @property
    def span_samples(self) -> int:
        return 1

    def n_vectors(self, n_samples: int) -> int:
        return max(0, int(n_samples))

    def batch_stream(self, n_streams: int, device: str | torch.device | None = "cpu") -> "VectorsBatchStream":
        return VectorsBatchStream(self, n_streams, device)

    def example_input(self, n: int, seed: int = 0) -> np.ndarray:
        """[n, dim] float32 rows driven by three slowly varying latent factors plus noise: columns correlate with
        each other and rows with their neighbours, as real score vectors of one machine do."""
        rng = np.random.default_rng(seed)
        latent = np.empty((n, 3))
        state = rng.standard_normal(3)
        for i in range(n):  # AR(1), coefficient 0.9
            state = 0.9 * state + 0.44 * rng.standard_normal(3)
            latent[i] = state
        mixing = rng.standard_normal((3, self.dim))
        offset = rng.uniform(-1.0, 1.0, self.dim)
        x = offset + latent @ mixing + 0.1 * rng.standard_normal((n, self.dim))
        return x.astype(np.float32)


class VectorsBatchStream(BatchStream):
    """Checks each stream's rows and returns them as float32 tensors on the stream's device. Stateless: a row is
    complete on arrival, so nothing is ever pending and `flush()` returns nothing."""

    def __init__(self, cfg: VectorsConfig, n_streams: int, device: str | torch.device | None = "cpu") -> None:
        self.cfg = cfg
        self.device = select_device(device)
        self._n = int(n_streams)

    def __len__(self) -> int:
        return self._n

    def add_stream(self) -> int:
        self._n += 1
        return self._n - 1

    def reset(self, index: int) -> None:
        if not -self._n <= index < self._n:
            raise IndexError(f"stream {index} out of range for {self._n} streams")

    def accept(self, chunks: Sequence[Any]) -> list[torch.Tensor]:
        self._check_len(chunks)
        empty = self._empty()
        out: list[torch.Tensor] = []
        for i, chunk in enumerate(chunks):
            if chunk is None:
                out.append(empty)
                continue
            where = f"stream {i}: " if self._n > 1 else ""
            out.append(self._rows(chunk, where))
        return out

    def _rows(self, chunk: Any, where: str) -> torch.Tensor:
        dim = self.cfg.dim
        if isinstance(chunk, torch.Tensor):
            t = chunk.detach()
            if not t.is_floating_point():
                raise FeatureInputError(f"{where}expected floating-point vectors, got dtype {t.dtype}")
            shape = tuple(t.shape)
        else:
            arr = np.asarray(chunk)
            if arr.dtype.kind != "f":
                raise FeatureInputError(f"{where}expected floating-point vectors, got dtype {arr.dtype}")
            shape = arr.shape
        if len(shape) == 1 and shape[0] == dim:
            shape = (1, dim)
        if len(shape) != 2 or shape[1] != dim:
            raise FeatureInputError(f"{where}expected vectors of {dim} values as [rows, {dim}], got shape {shape}")
        if isinstance(chunk, torch.Tensor):
            rows = t.reshape(shape).to(device=self.device, dtype=torch.float32, copy=True)
            bad = int((~torch.isfinite(rows)).sum())
        else:
            # a copy: the caller may reuse its buffer, and a read-only one would make torch warn
            with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf, refused below
                host = np.array(arr.reshape(shape), dtype=np.float32, copy=True)
            bad = int((~np.isfinite(host)).sum())
            rows = torch.from_numpy(host).to(self.device)
        if bad:  # checked after the cast: a float64 beyond float32's range is inf from here on
            raise FeatureInputError(f"{where}vectors contain {bad} NaN/inf values (after conversion to float32)")
        return rows

    def flush(self) -> list[torch.Tensor]:
        return [self._empty()] * self._n


# -- files of vectors -----------------------------------------------------------------------------------------------


@dataclass
class VectorFile:
    """Rows read from one file: `X` [n, dim] float32, a name per row (the file or clip it describes) and, when
    the file has them, machine ids per row."""

    X: np.ndarray
    names: list[str]
    ids: list[str] | None = None

    @property
    def dim(self) -> int:
        return int(self.X.shape[1])

    def __len__(self) -> int:
        return int(self.X.shape[0])


def read_vectors(path: str | Path) -> VectorFile:
    """Read per-file vectors from `.npz` (array `X` [n, dim]; optional `names`, `ids` of length n) or `.csv` (a
    header row; optional columns `name` and `id`; every other column numeric). Names default to `row0`, `row1`...
    Problems with the content raise `FeatureInputError` naming the file; an unknown extension a ValueError."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".npz":
        X, names, ids = _read_npz(path)
    elif ext == ".csv":
        X, names, ids = _read_csv(path)
    else:
        raise ValueError(f"{path}: unknown vector file type {path.suffix!r}; expected .npz or .csv")
    return _checked(path, X, names, ids)


def _read_npz(path: Path) -> tuple[np.ndarray, Any, Any]:
    try:
        # allow_pickle=False: a vector file from elsewhere must not be able to run code when loaded
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise FeatureInputError(f"{path}: not a readable .npz file ({e})") from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise FeatureInputError(f"{path}: a single .npy array, not an .npz archive with an array 'X'")
    with z:
        if "X" not in z.files:
            raise FeatureInputError(f"{path}: no array 'X' (found {sorted(z.files)})")
        try:
            X = z["X"]
            names = z["names"] if "names" in z.files else None
            ids = z["ids"] if "ids" in z.files else None
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
            # object arrays (pickles) are refused here, as are truncated members
            raise FeatureInputError(f"{path}: arrays must be plain numbers or strings ({e})") from e
    if X.dtype.kind not in "iuf":
        raise FeatureInputError(f"{path}: X must be numeric, got dtype {X.dtype}")
    return X, names, ids


def _read_csv(path: Path) -> tuple[np.ndarray, list[str] | None, list[str] | None]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    rows = [r for r in rows if any(cell.strip() for cell in r)]  # blank lines
    if not rows:
        raise FeatureInputError(f"{path}: empty file; expected a header row and rows of numbers")
    header = [h.strip() for h in rows[0]]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise FeatureInputError(f"{path}: duplicate column(s) {dupes} in the header")
    name_col = header.index("name") if "name" in header else None
    id_col = header.index("id") if "id" in header else None
    num_cols = [j for j, h in enumerate(header) if j not in (name_col, id_col)]
    if not num_cols:
        raise FeatureInputError(f"{path}: no numeric columns besides 'name'/'id'")
    X = np.empty((len(rows) - 1, len(num_cols)), dtype=np.float64)
    for i, row in enumerate(rows[1:]):
        line = i + 2  # 1-based, after the header
        if len(row) != len(header):
            raise FeatureInputError(f"{path}: line {line} has {len(row)} cells, the header {len(header)}")
        for k, j in enumerate(num_cols):
            try:
                X[i, k] = float(row[j])
            except ValueError:
                raise FeatureInputError(
                    f"{path}: line {line}, column {header[j]!r}: {row[j]!r} is not a number"
                ) from None
    names = [r[name_col] for r in rows[1:]] if name_col is not None else None
    ids = [r[id_col] for r in rows[1:]] if id_col is not None else None
    return X, names, ids


def _checked(path: Path, X: np.ndarray, names: Any, ids: Any) -> VectorFile:
    if X.ndim != 2:
        raise FeatureInputError(f"{path}: X must be 2-D [rows, dim], got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise FeatureInputError(f"{path}: X has no values (shape {X.shape})")
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf, refused below
        X32 = X.astype(np.float32)
    bad = ~np.isfinite(X32)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise FeatureInputError(
            f"{path}: {int(bad.sum())} NaN/inf values in X (after conversion to float32), first at row {r}, column {c}"
        )
    n = X.shape[0]
    out_names = _labels(path, "names", names, n)
    return VectorFile(
        X=np.ascontiguousarray(X32),
        names=out_names if out_names is not None else [f"row{i}" for i in range(n)],
        ids=_labels(path, "ids", ids, n),
    )


def _labels(path: Path, what: str, values: Any, n: int) -> list[str] | None:
    if values is None:
        return None
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise FeatureInputError(f"{path}: {what} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise FeatureInputError(f"{path}: {arr.shape[0]} {what} for {n} rows of X")
    return [str(v) for v in arr.tolist()]
