"""The one scoring path: features -> stages -> detector, for any number of streams, offline and in the monitor.

`Chain` is the fitted model without its feature front end (stages then detector); `StreamScorer` feeds it from
incremental features, after any leading causal stages (the mel denoiser), which run on each stream's vectors as
they arrive with the stream's carried state (`CausalFront`). Offline scoring of whole clips is the scorer with the window set to the clip (`window=None`:
each stream's one score comes at `flush()`), exactly as offline features are one stream fed the whole clip, so the
monitor and `asd-offline score` cannot compute different numbers.

How a window is scored depends on what the parts need, and is decided here once:
- `vector` mode (framed or vectors feature, vector stages, vector detector): every new vector goes through the
  stages and the detector once, all streams in one call; a window's score is the mean of its W vector scores, so
  overlapping windows never re-score a vector.
- `window` mode (a window-level stage or detector): the last W vectors of each stream are kept (after any leading
  vector stages) and every ready window of every stream is scored in one batched `score` call.
- `statistics` mode (an `additive` window detector, no window-level stage: the i-vector's Baum-Welch statistics):
  each new vector's statistics are computed once, summed per stretch between window starts and ends, and a window
  is scored from the sum of its stretches, so a frame's UBM posteriors are not recomputed for each window it is in.
- `frames` mode (a window-level feature with a frame front end: modulation spectrum, clip statistics): the front
  end's frames are computed once as audio arrives, the last W frames of each stream are kept, and each ready
  window's frames are reduced to its one feature vector, then scored as above.
- `audio` mode (a window-level feature without one): the last window of samples is kept and each ready window
  becomes one feature vector, then as above.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from models.detectors.base import Detector, check_ids
from models.features import FeatureConfig

if TYPE_CHECKING:
    from models.stages import Stage

log = logging.getLogger(__name__)

WindowScores = list[tuple[int, float]]  # (end sample of the window in the stream, score)


class Chain:
    """Stages then detector: the fitted model after the feature front end."""

    def __init__(self, stages: Sequence["Stage"], detector: Detector) -> None:
        self.stages = list(stages)
        self.detector = detector
        # leading causal stages (the mel denoiser) run on each stream's vectors in order, with carried state
        n_causal = 0
        while n_causal < len(self.stages) and self.stages[n_causal].granularity == "causal":
            n_causal += 1
        self.causal_stages = self.stages[:n_causal]
        rest = self.stages[n_causal:]
        if any(st.granularity == "causal" for st in rest):
            raise ValueError("a causal stage (e.g. lstm_denoiser) must come first: it reads the feature's frames")
        # then stages up to the first window-level part run once per vector; the rest need whole windows
        n_vec = 0
        while n_vec < len(rest) and rest[n_vec].granularity == "vector":
            n_vec += 1
        self.vector_stages, self.window_stages = rest[:n_vec], rest[n_vec:]
        self.vector_level = not self.window_stages and detector.granularity == "vector"

    @property
    def granularity(self) -> str:
        """`vector` when every vector can be scored once and windows averaged, else `window`."""
        return "vector" if self.vector_level else "window"

    def after_causal(self) -> "Chain":
        """The chain without its causal stages: what a stream scorer runs once it has applied them to each stream's
        vectors as they arrive (`CausalFront`)."""
        return Chain(self.stages[len(self.causal_stages) :], self.detector) if self.causal_stages else self

    @property
    def additive(self) -> bool:
        """A window's score is a function of the sum of its vectors' statistics (`statistics` mode)."""
        return not self.window_stages and self.detector.granularity == "window" and self.detector.additive

    def segment_statistics(self, X: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        """The leading vector stages, then the detector's statistics of each segment of rows `[S, n_stats]`."""
        return self.detector.segment_statistics(self.transform_vectors(X), lengths)

    def score_statistics(self, sums: torch.Tensor, ids: Sequence[str] | None = None) -> np.ndarray:
        return self.detector.score_statistics(sums, ids)

    def transform_vectors(self, X: torch.Tensor) -> torch.Tensor:
        """The leading vector stages on a block of vectors `[N, dim]`."""
        for stage in self.vector_stages:
            X = stage.transform(X)
        return X

    def score_vectors(self, X: torch.Tensor, ids: Sequence[str] | None = None) -> torch.Tensor:
        """Per-vector scores `[N]` of a vector-level chain."""
        return self.detector.score_vectors(self.transform_vectors(X), ids)

    def score_windows(self, windows: Sequence[torch.Tensor], ids: Sequence[str] | None = None,
                      transformed: bool = False) -> np.ndarray:
        """One score per `[T, dim]` window (feature vectors, each window from its stream's start for a causal
        stage; `transformed`: the causal and vector stages already ran)."""
        clips = list(windows)
        if not transformed:
            for stage in self.causal_stages:
                clips = stage.transform_clips(clips)
        if not transformed and self.vector_stages:
            clips = _split_like(self.transform_vectors(torch.cat(clips)), clips)
        for stage in self.window_stages:
            clips = stage.transform_clips(clips)
        return self.detector.score(clips, ids)


def _split_like(X: torch.Tensor, parts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.split(X, [p.shape[0] for p in parts]))


@dataclass
class _StreamState:
    machine_id: str | None
    n_in: int = 0  # input samples accepted since the last reset
    n_vec: int = 0  # vectors produced since the last reset
    ring: list[Any] = field(default_factory=list)  # chunks holding at least the last W vector scores (vector
    # mode), vectors or frames, or samples (audio)
    held: int = 0  # items in `ring` (counted here: len() of hundreds of tensors per hop was a measurable cost)
    last: int | None = None  # position of the last emitted window's end; None: none emitted since reset
    whole: list[Any] = field(default_factory=list)  # window=None: everything of the clip
    stretches: "_Stretches | None" = None  # statistics mode


class _Stretches:
    """A stream's summed statistics per stretch (the vectors between consecutive window starts and ends), as rows of
    one reused float64 slab filled in stream order, so a window's stretches are consecutive rows and its sum is one
    slice's (two fresh 10 KB tensors per stream and hop, stacked per window, were a seventh of the i-vector scorer's
    time at 500 streams)."""

    def __init__(self, width: int) -> None:
        self.slab = torch.zeros((16, width), dtype=torch.float64)
        self.head = 0  # slab row of spans[0]; span k is row (head + k) % len(slab)
        self.spans: list[list[int]] = []  # [first vector, end vector] of each live stretch, in stream order

    def _row(self, k: int) -> int:
        return (self.head + k) % self.slab.shape[0]

    def add(self, lo: int, hi: int, row: torch.Tensor, extend: bool) -> None:
        """Statistics of vectors [lo, hi); `extend`: summed into the last stretch when it ends at lo."""
        if extend and self.spans and self.spans[-1][1] == lo:
            self.spans[-1][1] = hi
            self.slab[self._row(len(self.spans) - 1)].add_(row)
            return
        if len(self.spans) == self.slab.shape[0]:  # more stretches alive than ever: a chunk spanning many hops
            live = self.slab.roll(-self.head, dims=0)
            self.slab, self.head = torch.cat([live, torch.zeros_like(live)]), 0
        self.slab[self._row(len(self.spans))].copy_(row)
        self.spans.append([lo, hi])

    def total(self, lo: int, hi: int) -> torch.Tensor:
        """The sum over vectors [lo, hi), which stretch boundaries delimit."""
        first = next(k for k, (a, _) in enumerate(self.spans) if a >= lo)
        last = next(k for k in range(first, len(self.spans)) if self.spans[k][1] >= hi)
        a, n = self._row(first), last - first + 1
        if a + n <= self.slab.shape[0]:
            return self.slab[a : a + n].sum(dim=0)
        return torch.cat([self.slab[a:], self.slab[: a + n - self.slab.shape[0]]]).sum(dim=0)

    def drop_before(self, position: int) -> None:
        """Forget the stretches that end at or before `position` (no later window reaches back to them)."""
        k = 0
        while k < len(self.spans) and self.spans[k][1] <= position:
            k += 1
        if k:
            del self.spans[:k]
            self.head = (self.head + k) % self.slab.shape[0]


class StreamScorer:
    """Window scores of `n_streams` streams fed chunk by chunk. `accept(chunks)` takes one chunk (or None) per
    stream and returns, per stream, the `(end_sample, score)` of every window the chunk completed; `end_sample`
    counts the stream's input samples since its last `reset`.

    `window`/`hop` are in seconds. With `window=None` each stream is one window that ends at `flush()` (offline
    scoring of whole clips). Otherwise the first window is emitted as soon as it is full, then one every hop.
    """

    def __init__(self, feature: FeatureConfig, chain: Chain, n_streams: int = 0, window: float | None = None,
                 hop: float | None = None, device: str | torch.device | None = "cpu",
                 machine_ids: Sequence[str | None] | None = None) -> None:
        if chain.causal_stages and feature.window_level:
            raise ValueError(f"causal stages need a framed feature; {feature.kind} has one vector per window")
        self.feature, self.chain = feature, chain.after_causal()
        front = feature.frame_front() if feature.window_level else None
        self.framing = front or feature  # what the stream computes incrementally: vectors, or a front end's frames
        if feature.window_level:
            self.mode = "frames" if front else "audio"
        else:
            self.mode = "vector" if chain.vector_level else "statistics" if chain.additive else "window"
        self.whole = window is None
        self.window = self.hop = 0  # counted in samples (audio mode), frames or vectors; 0: the stream is one window
        if not self.whole:
            self.window, self.hop = self._window_hop(float(window), float(hop or window))
        self.stream = self.framing.batch_stream(0, device)
        if chain.causal_stages:  # applied to each stream's vectors as they arrive, before anything else sees them
            self.stream = CausalFront(self.stream, chain.causal_stages)
        self._states: list[_StreamState] = []
        for mid in machine_ids or [None] * n_streams:
            self.add_stream(mid)

    def _window_hop(self, window: float, hop: float) -> tuple[int, int]:
        f, sr = self.feature, self.feature.sample_rate
        if self.mode in ("audio", "frames"):
            w = int(round(window * sr))
            if w < f.min_window:
                raise ValueError(f"a window of {window} s is shorter than the {f.kind} feature needs "
                                 f"({f.min_window / sr:g} s)")
            if self.mode == "audio":
                return w, max(1, int(round(hop * sr)))
            f = self.framing
        w = f.n_vectors(int(round(window * sr)))
        if w < 1:
            raise ValueError(f"a window of {window} s is shorter than one {f.kind} vector ({f.span_samples / sr:g} s)")
        return w, max(1, int(round(hop * sr / f.hop_samples)))

    def __len__(self) -> int:
        return len(self._states)

    @property
    def hop_samples(self) -> int:
        """Input samples between two windows (0: one window per stream, at `flush`)."""
        return self.hop if self.mode == "audio" else self.hop * self.framing.hop_samples

    def add_stream(self, machine_id: str | None = None) -> int:
        """Add a stream (scored as machine `machine_id`); returns its index."""
        check_ids(None if machine_id is None else [machine_id], 1, self.chain.detector)
        self._states.append(_StreamState(machine_id))
        return self.stream.add_stream()

    def reset(self, index: int) -> None:
        """Forget a stream's partial input and windows (after a gap in its audio): no window straddles the gap."""
        self.stream.reset(index)
        self._states[index] = _StreamState(self._states[index].machine_id)

    def accept(self, chunks: Sequence[np.ndarray | torch.Tensor | None]) -> list[WindowScores]:
        if len(chunks) != len(self._states):
            raise ValueError(f"got {len(chunks)} chunks for {len(self._states)} streams")
        for st, c in zip(self._states, chunks):
            if c is not None:
                st.n_in += int(np.shape(c)[0])
        if self.mode == "audio":
            return self._accept_audio(chunks)
        vectors = self.stream.accept(chunks)
        if self.whole:
            for st, v in zip(self._states, vectors):
                if v.shape[0]:
                    st.whole.append(v)
            return [[] for _ in self._states]
        new = {i: v for i, v in enumerate(vectors) if v.shape[0]}
        if self.mode == "frames":
            return self._frame_windows(new)
        if self.mode == "statistics":
            return self._statistics_windows(new)
        return self._vector_windows(new) if self.mode == "vector" else self._matrix_windows(new)

    def flush(self) -> list[WindowScores]:
        """End every stream. With `window=None` returns each stream's one score over everything it received (a
        stream too short for one vector gets none); with a sliding window, a partial window is not scored."""
        rest = self.stream.flush()
        out: list[WindowScores] = [[] for _ in self._states]
        if self.whole:
            clips = [(i, torch.cat(st.whole + [rest[i]])) for i, st in enumerate(self._states)]
            ready = [(i, c) for i, c in clips if c.shape[0]]
            if self.mode == "frames":  # a stream too short for the feature's fewest frames has no score
                ready = [(i, c) for i, c in ready if self._states[i].n_in >= self.feature.min_window]
                if ready:
                    vectors = self.feature.reduce([c for _, c in ready])
                    ready = [(i, vectors[k : k + 1]) for k, (i, _) in enumerate(ready)]
            if ready:
                scores = self._by_id([i for i, _ in ready],
                                     lambda pos, ids: self.chain.score_windows([ready[p][1] for p in pos], ids))
                for (i, _), s in zip(ready, scores):
                    out[i].append((self._states[i].n_in, float(s)))
        for i in range(len(self._states)):
            self.reset(i)
        return out

    # -- the three modes --------------------------------------------------------------------------------------------

    def _by_id(self, streams: Sequence[int], call: Callable[[list[int], list[str] | None], Sequence[Any]]) -> list[Any]:
        """`call(positions, ids)` over items (windows, or a stream's new vectors) of the streams `streams[p]`: one
        call with every item's machine id (None when no stream has one), returning one entry per position. When only
        some streams have an id, those items go in one call with their ids and the others in a second one without
        (passing None for all, as before, scored streams that have an id as if they had none): a stream's score
        never depends on which other streams share its batch, which matters for detectors that use an id when given
        one (`embed_knn`'s per-id banks)."""
        mids = [self._states[i].machine_id for i in streams]
        known = [p for p, m in enumerate(mids) if m is not None]
        if len(known) in (0, len(mids)):
            return list(call(list(range(len(mids))), [str(m) for m in mids] if known else None))
        out: list[Any] = [None] * len(mids)
        unknown = [p for p, m in enumerate(mids) if m is None]
        for positions, ids in ((known, [str(mids[p]) for p in known]), (unknown, None)):
            for p, value in zip(positions, call(positions, ids)):
                out[p] = value
        return out

    def _ends(self, st: _StreamState, n_new: int) -> range:
        """Positions (1-based counts since reset) of the windows that `n_new` more items complete: the first as
        soon as W items are there, then one every H."""
        first = self.window if st.last is None else st.last + self.hop
        ends = range(first, st.n_vec + n_new + 1, self.hop)
        if ends:
            st.last = ends[-1]
        st.n_vec += n_new
        return ends

    def _slide(self, st: _StreamState, new: Any, cat: Callable[[list[Any]], Any]) -> list[tuple[int, Any]]:
        """Append `new` items (scores, vectors or samples) to the stream's ring; return the end position and the
        last W items of every window they complete.

        The ring is a list of chunks holding at least the last W items: chunks are joined only when a window is
        complete (once per hop), not on every call, which for a 10 s window of frames fed 0.25 s blocks was a copy
        of the whole window per block and stream; chunks wholly older than the last W items are dropped."""
        parts = st.ring
        parts.append(new)
        n_new = len(new)
        first = st.n_vec - st.held  # items before parts[0][0]; read before `_ends` advances n_vec
        st.held += n_new
        ends = self._ends(st, n_new)
        if ends:
            hist = parts[0] if len(parts) == 1 else cat(parts)
            windows = [(e, hist[e - first - self.window : e - first]) for e in ends]
            tail = hist[-self.window :]
            st.ring = [tail.copy() if isinstance(tail, np.ndarray) else tail]  # not a view keeping all of hist
            st.held = len(tail)
            return windows
        while len(parts) > 1 and st.held - len(parts[0]) >= self.window:
            st.held -= len(parts.pop(0))
        return []

    def _end_sample(self, vector_end: int) -> int:
        """The input sample count at which the window ending with vector (frame) `vector_end` (1-based) is
        complete."""
        return (vector_end - 1) * self.framing.hop_samples + self.framing.span_samples

    def _vector_windows(self, new: dict[int, torch.Tensor]) -> list[WindowScores]:
        out: list[WindowScores] = [[] for _ in self._states]
        if not new:
            return out
        order = sorted(new)

        def call(pos: list[int], ids: list[str] | None) -> list[np.ndarray]:
            lengths = [new[order[p]].shape[0] for p in pos]
            rows = None if ids is None else [m for m, n in zip(ids, lengths) for _ in range(n)]
            scores = self.chain.score_vectors(torch.cat([new[order[p]] for p in pos]), rows).double().cpu().numpy()
            return np.split(scores, np.cumsum(lengths)[:-1])

        # every new vector of every stream in one call (two when only some streams have a machine id); each vector
        # is scored exactly once
        for i, scores in zip(order, self._by_id(order, call)):
            for e, w in self._slide(self._states[i], scores, np.concatenate):
                out[i].append((self._end_sample(e), float(w.mean())))
        return out

    def _matrix_windows(self, new: dict[int, torch.Tensor]) -> list[WindowScores]:
        ready: list[tuple[int, int, torch.Tensor]] = []
        for i in sorted(new):
            v = self.chain.transform_vectors(new[i]) if self.chain.vector_stages else new[i]
            ready += [(i, self._end_sample(e), w) for e, w in self._slide(self._states[i], v, torch.cat)]
        return self._score_ready(ready, transformed=True)

    def _is_cut(self, p: int) -> bool:
        """Position p (vectors since reset) starts a window (a multiple of H) or ends one (W + a multiple of H)."""
        return p % self.hop == 0 or (p >= self.window and (p - self.window) % self.hop == 0)

    def _cuts(self, a: int, b: int) -> list[int]:
        """The window starts and ends strictly between positions a and b, in order."""
        h, w = self.hop, self.window
        cuts = list(range((a // h + 1) * h, b, h))
        if b > w:
            first_end = w if a < w else w + ((a - w) // h + 1) * h
            cuts = sorted(set(cuts).union(range(first_end, b, h)))
        return cuts

    def _statistics_windows(self, new: dict[int, torch.Tensor]) -> list[WindowScores]:
        """Additive detectors: the new vectors of all streams are cut at window starts and ends, each stretch's
        statistics computed in one call, appended to (or summed into the open stretch of) each stream's ring, and
        every window that completes is scored from the sum of its stretches (all windows in one call)."""
        out: list[WindowScores] = [[] for _ in self._states]
        if not new:
            return out
        order = sorted(new)
        segments: list[tuple[int, int, int]] = []  # (stream, start, end) positions since the stream's reset
        for i in order:
            a = self._states[i].n_vec
            b = a + new[i].shape[0]
            bounds = [a, *self._cuts(a, b), b]
            segments += [(i, lo, hi) for lo, hi in zip(bounds, bounds[1:])]
        stats = self.chain.segment_statistics(torch.cat([new[i] for i in order]), [hi - lo for _, lo, hi in segments])
        for (i, lo, hi), row in zip(segments, stats):
            st = self._states[i]
            if st.stretches is None:
                st.stretches = _Stretches(stats.shape[1])
            st.stretches.add(lo, hi, row, extend=not self._is_cut(lo))  # the open stretch goes on, or a new one
        ready: list[tuple[int, int, torch.Tensor]] = []
        for i in order:
            st = self._states[i]
            assert st.stretches is not None
            for e in self._ends(st, new[i].shape[0]):
                ready.append((i, self._end_sample(e), st.stretches.total(e - self.window, e)))
            st.stretches.drop_before((self.window if st.last is None else st.last + self.hop) - self.window)
        if ready:
            scores = self._by_id([i for i, _, _ in ready], lambda pos, ids: self.chain.score_statistics(
                torch.stack([ready[p][2] for p in pos]), ids))
            for (i, end, _), s in zip(ready, scores):
                out[i].append((end, float(s)))
        return out

    def _frame_windows(self, new: dict[int, torch.Tensor]) -> list[WindowScores]:
        """Window-level features from a frame front end: each ready window's last W frames, reduced to its vector
        (all ready windows of all streams in one `reduce` call)."""
        ready: list[tuple[int, int, torch.Tensor]] = []
        for i in sorted(new):
            ready += [(i, self._end_sample(e), w) for e, w in self._slide(self._states[i], new[i], torch.cat)]
        if not ready:
            return [[] for _ in self._states]
        vectors = self.feature.reduce([w for _, _, w in ready])
        return self._score_ready([(i, e, vectors[k : k + 1]) for k, (i, e, _) in enumerate(ready)],
                                 transformed=False)

    def _score_ready(self, ready: list[tuple[int, int, torch.Tensor]], transformed: bool) -> list[WindowScores]:
        out: list[WindowScores] = [[] for _ in self._states]
        if not ready:
            return out
        scores = self._by_id([i for i, _, _ in ready], lambda pos, ids: self.chain.score_windows(
            [ready[p][2] for p in pos], ids, transformed=transformed))
        for (i, end, _), s in zip(ready, scores):
            out[i].append((end, float(s)))
        return out

    def _accept_audio(self, chunks: Sequence[Any]) -> list[WindowScores]:
        """Window-level features: keep the last window of samples; each ready window becomes one vector."""
        from models.features.base import as_mono_float32

        if self.whole:
            self.stream.accept(chunks)
            return [[] for _ in self._states]
        windows: list[tuple[int, int, np.ndarray]] = []
        for i, (st, chunk) in enumerate(zip(self._states, chunks)):
            if chunk is not None:
                windows += [(i, e, w) for e, w in self._slide(st, as_mono_float32(chunk), np.concatenate)]
        if not windows:
            return [[] for _ in self._states]
        vectors = self.feature.compute([w for _, _, w in windows], self.stream.device)
        return self._score_ready([(i, e, vectors[k : k + 1]) for k, (i, e, _) in enumerate(windows)],
                                 transformed=False)


class CausalFront:
    """A feature stream followed by causal stages, seen by `StreamScorer` as the feature stream: every stream's new
    vectors go through each causal stage with that stream's carried state (all streams in one batched call per
    stage), so a stream's vectors are what the offline pass over its audio since the last reset gives."""

    def __init__(self, stream: Any, stages: Sequence["Stage"]) -> None:
        self.stream, self.stages = stream, list(stages)
        self._carried: list[list[Any]] = []

    @property
    def device(self) -> torch.device:
        return self.stream.device

    def add_stream(self) -> int:
        self._carried.append([None] * len(self.stages))
        return self.stream.add_stream()

    def reset(self, index: int) -> None:
        self.stream.reset(index)
        self._carried[index] = [None] * len(self.stages)

    def accept(self, chunks: Sequence[Any]) -> list[torch.Tensor]:
        return self._apply(self.stream.accept(chunks))

    def flush(self) -> list[torch.Tensor]:
        out = self._apply(self.stream.flush())
        self._carried = [[None] * len(self.stages) for _ in self._carried]
        return out

    def _apply(self, vectors: list[torch.Tensor]) -> list[torch.Tensor]:
        live = [i for i, v in enumerate(vectors) if v.shape[0]]
        if not live:
            return vectors
        out = list(vectors)
        for k, stage in enumerate(self.stages):
            done, carried = stage.stream_transform([out[i] for i in live], [self._carried[i][k] for i in live])
            for i, v, c in zip(live, done, carried):
                out[i], self._carried[i][k] = v, c
        return out


# -- ensembles ------------------------------------------------------------------------------------------------------


class MemberGroup:
    """The members of an ensemble that share one feature config, seen by a `StreamScorer` as one window-level chain:
    the feature is computed once for all of them, and each window's score is the ensemble's partial combination of
    their normalised scores (`ScoreEnsemble.partial`)."""

    vector_level = False  # what StreamScorer reads of a chain: window mode, no leading causal or vector stages
    vector_stages: list["Stage"] = []
    causal_stages: list["Stage"] = []  # members with one are refused in __init__

    def __init__(self, ensemble: Detector, chains: Sequence[Chain], positions: Sequence[int]) -> None:
        self.detector = ensemble  # what StreamScorer checks machine ids against (members are checked by the bundle)
        self.chains, self.positions = list(chains), list(positions)
        if any(c.causal_stages for c in self.chains):
            raise ValueError("an ensemble member with a causal stage (lstm_denoiser) cannot be streamed yet: make "
                             "the denoised detector a bundle of its own")

    def after_causal(self) -> "MemberGroup":
        return self

    @property
    def additive(self) -> bool:
        """A group of one additive member (an ensemble's i-vector member, alone on its MFCC feature) streams in
        `statistics` mode; members sharing a feature are scored from their windows."""
        return len(self.chains) == 1 and self.chains[0].additive

    def segment_statistics(self, X: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        return self.chains[0].segment_statistics(X, lengths)

    def score_statistics(self, sums: torch.Tensor, ids: Sequence[str] | None = None) -> np.ndarray:
        raw = torch.from_numpy(np.asarray(self.chains[0].score_statistics(sums, ids), dtype=np.float64))
        return self.detector.partial(raw[:, None], self.positions).cpu().numpy()

    def score_windows(self, windows: Sequence[torch.Tensor], ids: Sequence[str] | None = None,
                      transformed: bool = False) -> np.ndarray:
        raw = torch.stack([torch.from_numpy(np.asarray(c.score_windows(windows, ids), dtype=np.float64))
                           for c in self.chains], dim=1)
        return self.detector.partial(raw, self.positions).cpu().numpy()


class EnsembleScorer:
    """An ensemble's window scores: one `StreamScorer` per group of members with identical feature configs, all fed
    the same chunks; each window's score merges the groups' partial combinations (`ScoreEnsemble.merge`).

    With one group (the usual case for members sharing a front end) every window is exactly the ensemble of the
    members' scores of that window. Groups on different feature hops emit windows on slightly different cadences:
    a window is emitted when every group has one ready, pairing each group's oldest ready window, ending at the
    latest of their ends; a group that runs ahead keeps only its newest unpaired window, so nothing accumulates.
    """

    def __init__(self, ensemble: Detector, groups: Sequence[tuple[FeatureConfig, MemberGroup]], n_streams: int = 0,
                 window: float | None = None, hop: float | None = None, device: str | torch.device | None = "cpu",
                 machine_ids: Sequence[str | None] | None = None) -> None:
        self.ensemble = ensemble
        self.scorers = [StreamScorer(f, g, 0, window, hop, device) for f, g in groups]
        hops = {s.hop_samples for s in self.scorers}
        if len(hops) > 1:
            log.warning("ensemble members emit windows every %s samples (their feature hops do not divide the %s s "
                        "hop alike): each window pairs the members' oldest ready windows", sorted(hops), hop)
        self._pending: list[list[list[tuple[int, float]]]] = []
        for mid in machine_ids or [None] * n_streams:
            self.add_stream(mid)

    def __len__(self) -> int:
        return len(self._pending)

    def add_stream(self, machine_id: str | None = None) -> int:
        """Add a stream to every group (the bundle checks the id against its members: `Bundle.check_stream`)."""
        for s in self.scorers:
            s.add_stream(machine_id)
        self._pending.append([[] for _ in self.scorers])
        return len(self._pending) - 1

    def reset(self, index: int) -> None:
        for s in self.scorers:
            s.reset(index)
        self._pending[index] = [[] for _ in self.scorers]

    def accept(self, chunks: Sequence[np.ndarray | torch.Tensor | None]) -> list[WindowScores]:
        return self._merge([s.accept(chunks) for s in self.scorers])

    def flush(self) -> list[WindowScores]:
        out = self._merge([s.flush() for s in self.scorers])
        self._pending = [[[] for _ in self.scorers] for _ in self._pending]
        return out

    def _merge(self, per_group: list[list[WindowScores]]) -> list[WindowScores]:
        out: list[WindowScores] = [[] for _ in self._pending]
        for i, pending in enumerate(self._pending):
            for queue, got in zip(pending, per_group):
                queue.extend(got[i])
            while all(pending):
                ready = [q.pop(0) for q in pending]
                out[i].append((max(e for e, _ in ready), self.ensemble.merge([p for _, p in ready])))
            for q in pending:
                del q[:-1]
        return out
