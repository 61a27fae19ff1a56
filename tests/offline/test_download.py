"""`asd-offline download` against a real local HTTP server (with Range support) serving fixture zips built here."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import logging
import re
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from offline.datasets import download as dl
from offline.datasets.index import load_clips

SR = 16000


def _wav_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    noise = np.random.default_rng(seed).uniform(-0.1, 0.1, SR // 10).astype(np.float32)
    sf.write(buf, noise, SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _zip(members: list[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i, name in enumerate(members):
            zf.writestr(name, _wav_bytes(i))
    return buf.getvalue()


DEV_FAN = _zip(["fan/train/normal_id_00_00000000.wav", "fan/train/normal_id_00_00000001.wav",
                "fan/test/normal_id_00_00000000.wav", "fan/test/anomaly_id_00_00000000.wav"])
DEV_PUMP = _zip(["pump/train/normal_id_02_00000000.wav", "pump/test/anomaly_id_02_00000000.wav"])
ADD_FAN = _zip(["fan/train/normal_id_01_00000000.wav", "fan/train/normal_id_01_00000001.wav"])
EVAL_FAN = _zip(["fan/test/id_01_00000000.wav", "fan/test/id_01_00000001.wav"])
MIMII_FAN = _zip(["fan/id_00/normal/00000000.wav", "fan/id_00/normal/00000001.wav",
                  "fan/id_00/normal/00000002.wav", "fan/id_00/abnormal/00000000.wav"])
FIXTURES = {
    "dev_data_fan.zip": DEV_FAN, "dev_data_pump.zip": DEV_PUMP, "eval_data_train_fan.zip": ADD_FAN,
    "eval_data_test_fan.zip": EVAL_FAN, "6_dB_fan.zip": MIMII_FAN,
}


class FixtureServer:
    """Serves `/records/<id>/files/<name>`; logs every request's path and Range; can ignore Range or cut a body."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.ignore_range = False
        self.cut_next_body_at: int | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                rng = self.headers.get("Range")
                server.requests.append((path, rng))
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if match and not server.ignore_range:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_next_body_at is not None:  # promise the whole body, send part, hang up
                    body, server.cut_next_body_at = body[: server.cut_next_body_at], None
                    self.close_connection = True
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def serve(self, archive: dl.Archive, data: bytes) -> None:
        self.files[f"/records/{archive.record}/files/{archive.filename}"] = data


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FixtureServer]:
    """A server with every fixture archive, and a registry whose md5s are the fixtures' own."""
    md5 = {name: hashlib.md5(data).hexdigest() for name, data in FIXTURES.items()}
    archives = tuple(dataclasses.replace(a, md5=md5.get(a.filename, a.md5)) for a in dl.ARCHIVES)
    monkeypatch.setattr(dl, "ARCHIVES", archives)
    monkeypatch.setattr(dl, "_BACKOFF_S", 0.0)
    srv = FixtureServer()
    for a in archives:
        if a.filename in FIXTURES:
            srv.serve(a, FIXTURES[a.filename])
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _archive(dataset: str, machine: str) -> dl.Archive:
    return next(a for a in dl.ARCHIVES if a.dataset == dataset and a.machine == machine)


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    dl.configure_parser(parser)
    return dl.run(parser.parse_args(argv))


def test_cli_downloads_and_extracts_where_load_clips_reads(server: FixtureServer, tmp_path: Path) -> None:
    root = tmp_path / "dcase"
    assert _run_cli(["dcase2020-dev", "--root", str(root), "--machines", "fan,PUMP", "--base-url", server.url]) == 0
    clips = load_clips(root)
    assert {(c.machine, c.id, c.split, c.label) for c in clips} == {
        ("fan", "id_00", "train", "normal"), ("fan", "id_00", "test", "normal"), ("fan", "id_00", "test", "anomaly"),
        ("pump", "id_02", "train", "normal"), ("pump", "id_02", "test", "anomaly"),
    }
    assert len(clips) == 6
    with zipfile.ZipFile(io.BytesIO(DEV_FAN)) as zf:  # bytes land unchanged
        member = "fan/test/anomaly_id_00_00000000.wav"
        assert (root / member).read_bytes() == zf.read(member)
    work = root / dl.WORK_DIR
    assert sorted(p.name for p in work.iterdir()) == ["dev_data_fan.zip.done.json", "dev_data_pump.zip.done.json"]
    assert [p for p, _ in server.requests] == ["/records/3678171/files/dev_data_fan.zip",
                                               "/records/3678171/files/dev_data_pump.zip"]


def test_additional_training_and_eval_share_the_dcase_root(server: FixtureServer, tmp_path: Path) -> None:
    for dataset in ("dcase2020-dev", "dcase2020-additional", "dcase2020-eval"):
        dl.download(dataset, tmp_path, machines=["fan"], base_url=server.url)
    clips = load_clips(tmp_path)
    train_ids = sorted({c.id for c in clips if c.split == "train"})
    assert train_ids == ["id_00", "id_01"]
    unlabeled = [c for c in clips if c.label is None]
    assert len(unlabeled) == 2 and {(c.id, c.split) for c in unlabeled} == {("id_01", "test")}


def test_mimii_extracts_into_the_snr_machine_folder(server: FixtureServer, tmp_path: Path) -> None:
    folders = dl.download("mimii", tmp_path, machines=["fan"], snrs=["6"], base_url=server.url)
    assert folders == [tmp_path / "6_dB_fan" / "fan"]
    clips = load_clips(tmp_path)
    assert {(c.machine, c.snr) for c in clips} == {("fan", "6dB")} and len(clips) == 4
    assert sum(c.is_anomaly for c in clips) == 1


def test_second_run_is_a_no_op_and_repairs_missing_files(server: FixtureServer, tmp_path: Path) -> None:
    dl.download("dcase2020-dev", tmp_path, machines=["fan"], base_url=server.url)
    assert len(server.requests) == 1
    dl.download("dcase2020-dev", tmp_path, machines=["fan"], base_url=server.url)
    assert len(server.requests) == 1  # verified and complete: nothing fetched
    (tmp_path / "fan/train/normal_id_00_00000001.wav").unlink()
    dl.download("dcase2020-dev", tmp_path, machines=["fan"], base_url=server.url)
    assert len(server.requests) == 2 and (tmp_path / "fan/train/normal_id_00_00000001.wav").is_file()


def test_keep_archives_lets_a_rerun_extract_without_network(server: FixtureServer, tmp_path: Path) -> None:
    dl.download("dcase2020-dev", tmp_path, machines=["fan"], base_url=server.url, keep_archives=True)
    kept = tmp_path / dl.WORK_DIR / "dev_data_fan.zip"
    assert kept.read_bytes() == DEV_FAN
    (tmp_path / "fan/test/normal_id_00_00000000.wav").unlink()
    dl.download("dcase2020-dev", tmp_path, machines=["fan"], base_url=server.url, keep_archives=True)
    assert len(server.requests) == 1 and len(load_clips(tmp_path)) == 4


def test_resumes_a_partial_download_with_a_range_request(server: FixtureServer, tmp_path: Path) -> None:
    part = tmp_path / dl.WORK_DIR / "dev_data_fan.zip.part"
    part.parent.mkdir(parents=True)
    half = len(DEV_FAN) // 2
    part.write_bytes(DEV_FAN[:half])
    dl.download("dcase2020-dev", tmp_path, machines=["fan"], base_url=server.url)
    assert server.requests == [("/records/3678171/files/dev_data_fan.zip", f"bytes={half}-")]
    assert not part.exists() and len(load_clips(tmp_path)) == 4


def test_a_complete_part_file_is_finished_by_a_416(server: FixtureServer, tmp_path: Path) -> None:
    part = tmp_path / dl.WORK_DIR / "dev_data_fan.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(DEV_FAN)
    dl.download("dcase2020-dev", tmp_path, machines=["fan"], base_url=server.url)
    assert server.requests == [("/records/3678171/files/dev_data_fan.zip", f"bytes={len(DEV_FAN)}-")]
    assert len(load_clips(tmp_path)) == 4


def test_a_stale_longer_part_file_starts_over(server: FixtureServer, tmp_path: Path) -> None:
    part = tmp_path / dl.WORK_DIR / "dev_data_fan.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(DEV_FAN + b"left over from a bigger file")
    dl.download("dcase2020-dev", tmp_path, machines=["fan"], base_url=server.url)
    assert [r for _, r in server.requests] == [f"bytes={len(DEV_FAN) + 28}-", None]
    assert len(load_clips(tmp_path)) == 4


def test_restarts_cleanly_when_the_server_ignores_range(server: FixtureServer, tmp_path: Path) -> None:
    server.ignore_range = True
    part = tmp_path / dl.WORK_DIR / "dev_data_fan.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from some other file" * 10)
    dl.download("dcase2020-dev", tmp_path, machines=["fan"], base_url=server.url)
    assert len(server.requests) == 1 and server.requests[0][1] is not None  # asked to resume, got the whole file
    assert len(load_clips(tmp_path)) == 4  # and the md5 matched: the stale prefix is gone


def test_a_dropped_connection_is_resumed(server: FixtureServer, tmp_path: Path) -> None:
    server.cut_next_body_at = 1000
    dl.download("dcase2020-dev", tmp_path, machines=["fan"], base_url=server.url)
    assert server.requests == [("/records/3678171/files/dev_data_fan.zip", None),
                               ("/records/3678171/files/dev_data_fan.zip", "bytes=1000-")]
    assert len(load_clips(tmp_path)) == 4


def test_checksum_mismatch_is_an_error_and_extracts_nothing(server: FixtureServer, tmp_path: Path) -> None:
    server.serve(_archive("dcase2020-dev", "fan"), DEV_FAN[:500] + bytes([DEV_FAN[500] ^ 1]) + DEV_FAN[501:])
    with pytest.raises(dl.DownloadError, match=r"dev_data_fan\.zip: md5 mismatch \(expected [0-9a-f]{32}, got"):
        dl.download("dcase2020-dev", tmp_path, machines=["fan"], base_url=server.url)
    assert sorted(p.name for p in tmp_path.iterdir()) == [dl.WORK_DIR]
    assert list((tmp_path / dl.WORK_DIR).iterdir()) == []  # no archive, no .part, no staging, no stamp


def test_unexpected_archive_layout_extracts_nothing(server: FixtureServer, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = _zip(["recordings/a.wav"])
    archive = _archive("dcase2020-dev", "valve")
    monkeypatch.setattr(dl, "ARCHIVES", tuple(dataclasses.replace(a, md5=hashlib.md5(wrong).hexdigest())
                                              if a == archive else a for a in dl.ARCHIVES))
    server.serve(archive, wrong)
    with pytest.raises(dl.DownloadError, match=r"dev_data_valve\.zip: unexpected archive layout: no 'valve/'.*recordi"):
        dl.download("dcase2020-dev", tmp_path, machines=["valve"], base_url=server.url)
    assert sorted(p.name for p in tmp_path.iterdir()) == [dl.WORK_DIR]
    assert not any(p.name.startswith("staging") for p in (tmp_path / dl.WORK_DIR).iterdir())


def test_zip_with_escaping_member_is_refused(server: FixtureServer, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    evil = _zip(["valve/train/normal_id_00_00000000.wav", "../../escaped.wav"])
    archive = _archive("dcase2020-dev", "valve")
    monkeypatch.setattr(dl, "ARCHIVES", tuple(dataclasses.replace(a, md5=hashlib.md5(evil).hexdigest())
                                              if a == archive else a for a in dl.ARCHIVES))
    server.serve(archive, evil)
    root = tmp_path / "root"
    with pytest.raises(dl.DownloadError, match=r"unsafe member path '\.\./\.\./escaped\.wav'"):
        dl.download("dcase2020-dev", root, machines=["valve"], base_url=server.url)
    assert not (tmp_path / "escaped.wav").exists() and not (root / "valve").exists()


def test_unverifiable_archive_warns_and_still_extracts(server: FixtureServer, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(dl, "ARCHIVES", tuple(dataclasses.replace(a, md5=None) for a in dl.ARCHIVES))
    with caplog.at_level(logging.WARNING, logger="offline.datasets.download"):
        dl.download("dcase2020-dev", tmp_path, machines=["fan"], base_url=server.url)
    assert "dev_data_fan.zip: no published md5" in caplog.text and "cannot be verified" in caplog.text
    assert len(load_clips(tmp_path)) == 4


def test_http_error_names_the_url(server: FixtureServer, tmp_path: Path) -> None:
    with pytest.raises(dl.DownloadError, match=r"/records/3678171/files/dev_data_slider\.zip\?download=1: HTTP 404"):
        dl.download("dcase2020-dev", tmp_path, machines=["slider"], base_url=server.url)


def test_unreachable_host_fails_after_retries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl, "_BACKOFF_S", 0.0)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = srv.server_address[1]
    srv.server_close()  # nothing listens on this port now
    with pytest.raises(dl.DownloadError, match=r"download failed after 3 attempts.*run again to resume"):
        dl.download("dcase2020-dev", tmp_path, machines=["fan"], base_url=f"http://127.0.0.1:{port}")


# ---------------------------------------------------------------- the registry


def test_registry_covers_every_archive_with_a_published_md5() -> None:
    counts = {d: len(dl.select_archives(d)) for d in dl.DATASETS}
    assert counts == {"dcase2020-dev": 6, "dcase2020-eval": 6, "dcase2020-additional": 6, "mimii": 12}
    assert all(a.md5 is not None and re.fullmatch(r"[0-9a-f]{32}", a.md5) for a in dl.ARCHIVES)
    assert len({a.md5 for a in dl.ARCHIVES}) == len(dl.ARCHIVES)
    assert _archive("dcase2020-eval", "ToyCar").url(dl.DEFAULT_BASE_URL) == \
        "https://zenodo.org/records/3841772/files/eval_data_test_ToyCar.zip?download=1"
    assert [a.filename for a in dl.select_archives("mimii", ["valve"], ["-6dB", "0"])] == \
        ["0_dB_valve.zip", "-6_dB_valve.zip"]


@pytest.mark.parametrize(("dataset", "machines", "snrs", "message"), [
    ("dcase2021", None, None, "unknown dataset 'dcase2021'"),
    ("mimii", ["ToyCar"], None, "mimii has no machine type ToyCar"),
    ("dcase2020-dev", None, ["6"], "--snr applies to mimii only"),
    ("mimii", None, ["3"], "unknown SNR in 3"),
])
def test_bad_selection(dataset: str, machines: list[str] | None, snrs: list[str] | None, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        dl.select_archives(dataset, machines, snrs)
