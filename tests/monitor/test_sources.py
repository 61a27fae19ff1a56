"""Sources without hardware: replay pacing and validation, the drop-oldest queue, device name resolution."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from monitor import sources as src_mod
from monitor.events import CounterEvent, SourceStatus
from monitor.sources import (
    AudioBlock,
    BlockQueue,
    DeviceError,
    DeviceNotFound,
    InputDevice,
    MicSource,
    PortAudioHub,
    ReplaySource,
    SynthSource,
    expand_replay_paths,
    resolve_device,
    source_name,
)

SR = 16000


def write_wav(path: Path, seconds: float, rate: int = SR, value: float | None = None) -> Path:
    x = np.random.default_rng(len(path.name)).uniform(-0.5, 0.5, int(seconds * rate)).astype(np.float32)
    if value is not None:
        x[:] = value
    sf.write(path, x, rate, subtype="FLOAT")
    return path


async def collect(source, queue: BlockQueue) -> list[AudioBlock]:
    """Run a paced source to its end, draining its queue as a pipeline would."""
    task = asyncio.create_task(source.run())
    blocks: list[AudioBlock] = []
    while not (task.done() and not len(queue)):
        await asyncio.sleep(0)
        blocks += queue.drain()
    await task
    return blocks


async def test_replay_at_speed_0_delivers_every_sample_in_order_as_one_stream_across_files(tmp_path):
    a, b = write_wav(tmp_path / "a.wav", 1.05), write_wav(tmp_path / "b.wav", 0.5)
    events: list = []
    q = BlockQueue(4)
    src = ReplaySource("r", [a, b], q, events.append, SR, 0.1, 0.0)
    blocks = await collect(src, q)
    got = np.concatenate([bl.samples for bl in blocks])
    want = np.concatenate([sf.read(a, dtype="float32")[0], sf.read(b, dtype="float32")[0]])
    np.testing.assert_array_equal(got, want)
    assert [i for i, bl in enumerate(blocks) if bl.gap] == [0]  # b continues a: no feature restart between files
    times = np.array([bl.time for bl in blocks])
    ends = np.cumsum([bl.samples.size for bl in blocks]) / SR
    np.testing.assert_allclose(times - times[0], ends - ends[0], atol=1e-6)  # the audio clock, not the wall clock
    assert q.ended
    assert [e.state for e in events if isinstance(e, SourceStatus)] == ["online"]


async def test_replay_pacing_follows_speed(tmp_path, monkeypatch):
    """With a fake clock, each block is released when `audio time / speed` has passed."""
    clock = {"now": 100.0}
    waits: list[float] = []

    async def fake_sleep(delay: float) -> None:
        waits.append(delay)
        clock["now"] += delay

    monkeypatch.setattr(src_mod.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(src_mod.asyncio, "sleep", fake_sleep)
    q = BlockQueue(100)
    src = ReplaySource("r", [write_wav(tmp_path / "a.wav", 1.0)], q, lambda e: None, SR, 0.25, 4.0)
    await src.run()
    assert waits == pytest.approx([0.0625] * 4)  # 0.25 s blocks at 4x real time
    assert len(q) == 4


async def test_duration_stops_a_replay_after_that_much_audio(tmp_path):
    q = BlockQueue(100)
    src = ReplaySource("r", [write_wav(tmp_path / "a.wav", 1.0)], q, lambda e: None, SR, 0.1, 0.0, 0.33, loop=True)
    blocks = await collect(src, q)
    assert sum(b.samples.size for b in blocks) == round(0.33 * SR)


async def test_loop_continues_the_stream(tmp_path):
    q = BlockQueue(100)
    src = ReplaySource("r", [write_wav(tmp_path / "a.wav", 0.3)], q, lambda e: None, SR, 0.1, 0.0, 0.9, loop=True)
    blocks = await collect(src, q)
    assert [i for i, b in enumerate(blocks) if b.gap] == [0] and len(blocks) == 9


async def test_replay_plays_the_configured_channel(tmp_path):
    stereo = np.stack([np.full(SR // 2, 0.1, np.float32), np.full(SR // 2, -0.3, np.float32)], axis=1)
    sf.write(tmp_path / "st.wav", stereo, SR, subtype="FLOAT")
    q = BlockQueue(100)
    blocks = await collect(ReplaySource("r", [tmp_path / "st.wav"], q, lambda e: None, SR, 0.1, 0.0, channel=1), q)
    np.testing.assert_array_equal(np.concatenate([b.samples for b in blocks]), stereo[:, 1])


async def test_a_nan_in_the_middle_stops_that_file_there_and_the_next_plays_after_a_gap(tmp_path):
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 5 * SR).astype(np.float32)
    x[int(4.55 * SR)] = np.nan  # in the third 2 s decode chunk
    sf.write(tmp_path / "bad.wav", x, SR, subtype="FLOAT")
    good = write_wav(tmp_path / "good.wav", 0.3)
    events: list = []
    q = BlockQueue(100)
    blocks = await collect(ReplaySource("r", [tmp_path / "bad.wav", good], q, events.append, SR, 0.1, 0.0), q)
    assert [b.gap for b in blocks] == [True] + [False] * 39 + [True] + [False] * 2  # 4 s, then good.wav
    np.testing.assert_array_equal(np.concatenate([b.samples for b in blocks[:40]]), x[: 4 * SR])
    [error] = [e for e in events if isinstance(e, CounterEvent)]
    assert "bad.wav" in error.detail and "the first at 4.550 s" in error.detail


def test_replay_memory_does_not_grow_with_the_file(tmp_path):
    """A 10-minute file (38 MB as float32) is read a block at a time: the replay holds kilobytes, not the file."""
    import tracemalloc

    long = tmp_path / "long.wav"
    with sf.SoundFile(long, "w", SR, 1, subtype="PCM_16") as f:
        block = np.random.default_rng(1).uniform(-0.5, 0.5, SR).astype(np.float32)
        for _ in range(600):
            f.write(block)
    src = ReplaySource("r", [long], BlockQueue(4), lambda e: None, SR, 0.25, 0.0)
    tracemalloc.start()
    try:
        n = sum(samples.size for _, samples in src.blocks())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 600 * SR
    assert peak < 2 << 20, peak  # the whole file would be 38 MB


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk") and p, "truncated"),
        (lambda p: write_wav(p, 0.2, rate=8000), "sample rate is 8000"),
        (lambda p: write_wav(p, 0.2, value=np.nan), "NaN"),
        (lambda p: p, "no such file"),
    ],
    ids=["corrupt", "wrong-rate", "nan", "missing"],
)
async def test_a_bad_file_is_an_error_and_the_next_file_still_plays(tmp_path, make, needle):
    bad = tmp_path / "bad.wav"
    make(bad)
    good = write_wav(tmp_path / "good.wav", 0.3)
    events: list = []
    q = BlockQueue(100)
    blocks = await collect(ReplaySource("r", [bad, good], q, events.append, SR, 0.1, 0.0), q)
    assert sum(b.samples.size for b in blocks) == int(0.3 * SR) and blocks[0].gap
    errors = [e for e in events if isinstance(e, CounterEvent)]
    assert [e.name for e in errors] == ["input_errors"] and needle in errors[0].detail and "bad.wav" in errors[0].detail
    states = [e.state for e in events if isinstance(e, SourceStatus)]
    assert states == ["error", "online"]


async def test_synth_source_streams_its_generator():
    calls = []

    def gen(n: int) -> np.ndarray:
        calls.append(n)
        return np.full(n, len(calls), np.float32)

    q = BlockQueue(100)
    blocks = await collect(SynthSource("s", gen, q, lambda e: None, SR, 0.1, 0.0, 0.35), q)
    assert calls[:3] == [1600, 1600, 1600]
    assert sum(b.samples.size for b in blocks) == int(0.35 * SR)
    assert blocks[2].samples[0] == 3


async def test_queue_waits_for_room_instead_of_dropping_for_replays():
    q = BlockQueue(2)
    for i in range(2):
        await q.put(AudioBlock(np.zeros(1, np.float32), SR, i, i))
    blocked = asyncio.create_task(q.put(AudioBlock(np.zeros(1, np.float32), SR, 2, 2)))
    await asyncio.sleep(0.01)
    assert not blocked.done() and q.dropped == 0
    assert [b.time for b in q.drain()] == [0, 1]
    await asyncio.wait_for(blocked, 1)
    assert [b.time for b in q.drain()] == [2]


@dataclass
class FakeStatus:
    input_overflow: bool = False


async def test_mic_callback_drops_the_oldest_block_and_counts_drops_and_overflows():
    events: list = []
    q = BlockQueue(2)
    mic = MicSource("m", "fake", q, events.append, SR, PortAudioHub(), channel=1)
    mic._loop = asyncio.get_running_loop()
    for i in range(5):
        indata = np.full((160, 2), [i, 10 + i], dtype=np.float32)  # only channel 1 must be kept
        mic._callback(indata, 160, None, FakeStatus(input_overflow=i == 4))
    await asyncio.sleep(0)  # the callbacks were handed to the loop
    blocks = q.drain()
    assert [float(b.samples[0]) for b in blocks] == [13.0, 14.0]  # the newest survive
    assert blocks[0].gap  # audio before it was lost
    counters = [e for e in events if isinstance(e, CounterEvent)]
    assert sum(c.amount for c in counters if c.name == "dropped_blocks") == 3 == q.dropped
    assert [c.name for c in counters if c.name == "overflows"] == ["overflows"]


DEVICES = [
    InputDevice(0, "HDA Intel PCH: ALC257 Analog (hw:0,0)", 2, 48000.0, "ALSA", "mic0"),
    InputDevice(3, "asd_mic0", 1, 48000.0, "ALSA", "mic1"),
    InputDevice(4, "asd_mic1", 1, 48000.0, "ALSA", "mic2"),
    InputDevice(7, "USB Audio Device: - (hw:2,0)", 1, 44100.0, "ALSA", "mic3"),
]


@pytest.mark.parametrize(
    "spec, index", [("3", 3), (4, 4), ("mic0", 0), ("mic3", 7), ("asd_mic1", 4), ("usb audio", 7), ("ALC257", 0)]
)
def test_resolve_device(spec, index):
    assert resolve_device(spec, DEVICES).index == index


def test_ambiguous_device_name_lists_the_matches():
    with pytest.raises(DeviceError, match="ambiguous") as exc:
        resolve_device("asd_mic", DEVICES)
    assert "3: asd_mic0" in str(exc.value) and "4: asd_mic1" in str(exc.value)


@pytest.mark.parametrize("spec", ["9", "mic4", "nothing like it"])
def test_missing_device_is_waited_for_not_fatal(spec):
    with pytest.raises(DeviceNotFound):
        resolve_device(spec, DEVICES)


def test_expand_replay_paths(tmp_path):
    (tmp_path / "d").mkdir()
    files = [write_wav(tmp_path / "d" / n, 0.01) for n in ("b.wav", "a.wav")]
    single = write_wav(tmp_path / "x.wav", 0.01)
    assert expand_replay_paths([str(tmp_path / "d")]) == sorted(files)
    assert expand_replay_paths([str(tmp_path / "d" / "*.wav"), str(single)]) == sorted(files) + [single]
    with pytest.raises(FileNotFoundError, match="no wav files"):
        expand_replay_paths([str(tmp_path / "none*.wav")])


def test_source_names_are_topic_safe_and_unique():
    taken: set[str] = set()
    assert source_name("/data/fan 1/normal_00.wav", taken) == "normal_00"
    assert source_name("/other/normal_00.wav", taken) == "normal_00-2"
    assert source_name("hw:2,0", taken) == "hw_2_0"


def test_drain_can_take_a_bounded_amount_of_audio():
    q = BlockQueue(10)
    for i in range(5):
        q.put_drop_oldest(AudioBlock(np.zeros(400, np.float32), 1000, i, i))  # 0.4 s each
    assert [b.time for b in q.drain(1.0)] == [0, 1, 2]  # takes blocks until 1 s is reached
    assert [b.time for b in q.drain(0.1)] == [3]  # at least one block
    assert [b.time for b in q.drain()] == [4]
