"""`asd-offline download`: fetch, verify and unpack the public datasets into the layouts `load_clips` reads.

The archives live on Zenodo (`ARCHIVES` lists every one with the md5 Zenodo publishes). HTTP is plain
`urllib.request` from the standard library: it does Range requests, and the md5 check is `hashlib` (pooch's
downloader cannot resume a partial file). For each archive:

1. skip it if a stamp from an earlier run says it was verified and extracted and its files are still there;
2. download into `<root>/.downloads/<name>.part`, resuming with an HTTP Range request (a server that ignores
   Range answers 200 and the file restarts from zero); a dropped connection is retried from where it stopped;
3. verify the md5 (a mismatch deletes the file and stops: nothing is extracted);
4. extract into a staging folder, check it has the expected layout, then move the files into place, so an
   interrupted or malformed extraction never leaves half a dataset where the readers look.

Layouts produced (all archives of a dataset type can share one --root):
- DCASE 2020 Task 2 (dev, additional training, eval test): `<root>/<machine>/{train,test}/...`. Dev and
  additional-training files go side by side in `train/` (their ids differ); the eval test clips are unlabeled
  `id_XX_*.wav` in `test/`. Use separate roots for dev and eval when evaluating with labels.
- MIMII: `<root>/<snr>_dB_<machine>/<machine>/id_XX/{normal,abnormal}/*.wav` (one folder per zip).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://zenodo.org"
WORK_DIR = ".downloads"  # under --root; hidden, so load_clips never reads staging files
_CHUNK = 1 << 20
_RETRIES = 3
_TIMEOUT_S = 60
_BACKOFF_S = 2.0  # first retry delay, doubled per attempt


class DownloadError(RuntimeError):
    """A download that cannot complete (network, server, checksum, archive layout); the message names the file."""


@dataclass(frozen=True)
class Archive:
    """One downloadable zip: where it is, its md5 (None: not published where we looked), where it unpacks."""

    dataset: str
    machine: str
    record: int  # Zenodo record id
    filename: str
    md5: str | None
    snr: str | None = None

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/records/{self.record}/files/{self.filename}?download=1"

    @property
    def dest_subdir(self) -> str:
        """Folder under --root that receives the zip's top-level folders."""
        return self.filename.removesuffix(".zip") if self.dataset == "mimii" else ""


DCASE_MACHINES = ("fan", "pump", "slider", "valve", "ToyCar", "ToyConveyor")
MIMII_MACHINES = ("fan", "pump", "slider", "valve")
MIMII_SNRS = ("6", "0", "-6")

# md5 values Zenodo publishes for records 3678171, 3727685, 3841772 and 3384388, as copied in public code (the
# soundata DCASE 2020 Task 2 loader; a copy of the MIMII record page), several cross-checked in other projects.
# None would mean "not known": such an archive is downloaded with a warning that it cannot be verified.
_MD5: dict[str, str | None] = {
    "dev_data_fan.zip": "649bdfc06263ae7a838963f43b6641e6",
    "dev_data_pump.zip": "90e7091ef722b7238a7f1009365779cd",
    "dev_data_slider.zip": "da24a757719f0d94d5aa2d646bbfdc86",
    "dev_data_valve.zip": "34d2672f55bb041589ef79c10dc89934",
    "dev_data_ToyCar.zip": "4dec75ca8d9f666aa9e4c1894a740501",
    "dev_data_ToyConveyor.zip": "03b6aa1bfd09a39d53af0ba39f71fa91",
    "eval_data_train_fan.zip": "567798854130c8019df8b664c095ed1e",
    "eval_data_train_pump.zip": "4e33ae9c0db5cc88437675f5e317caee",
    "eval_data_train_slider.zip": "f84f186f4295fc23754abcdd1b0580a7",
    "eval_data_train_valve.zip": "057cdd560caffb8305449541afd28c6d",
    "eval_data_train_ToyCar.zip": "a5d4ccd498af70b04dd74b644b820006",
    "eval_data_train_ToyConveyor.zip": "0e808ac0b761e9fb13d5e0c65caff00d",
    "eval_data_test_fan.zip": "1eb9356a768cadfd0f2e59a5c57e578b",
    "eval_data_test_pump.zip": "23a8f8f924be218c69df67fe07360348",
    "eval_data_test_slider.zip": "0193c769073840332ce3aad84b1ccaa2",
    "eval_data_test_valve.zip": "f69c551d2088691050d20cccca9d631c",
    "eval_data_test_ToyCar.zip": "bea2bdd612f616be8f2b8eb087b32c7c",
    "eval_data_test_ToyConveyor.zip": "ccfcc9847c7d3404d7ee9d6d9e0b2ba2",
    "-6_dB_fan.zip": "f02ae808a58d84b6815b7ec38ff30879",
    "-6_dB_pump.zip": "d20b783a0ff9c93d58f452f98c37b112",
    "-6_dB_slider.zip": "49913eda7d37f182cbf8ed5c984140e0",
    "-6_dB_valve.zip": "fdfaf185fea61b21e11952a070a4ada7",
    "0_dB_fan.zip": "6354d1cc2165c52168f9ef1bcd9c7c52",
    "0_dB_pump.zip": "488748295c3f60b25de07b58fe75b049",
    "0_dB_slider.zip": "4d674c21474f0646ecd75546db6c0c4e",
    "0_dB_valve.zip": "178478eb0d11c79080a35562bfdeee71",
    "6_dB_fan.zip": "0890f7d3c2fd8448634e69ff1d66dd47",
    "6_dB_pump.zip": "a09ba6060c10fc09cd4c8770213b0b9f",
    "6_dB_slider.zip": "838c2b3441858359c4704ef13a1b27ff",
    "6_dB_valve.zip": "fe5fb7c337cd701b1d31dc641e621892",
}


def _registry() -> tuple[Archive, ...]:
    dcase = {"dcase2020-dev": (3678171, "dev_data_{}.zip"),
             "dcase2020-additional": (3727685, "eval_data_train_{}.zip"),
             "dcase2020-eval": (3841772, "eval_data_test_{}.zip")}
    rows = [
        Archive(dataset, m, record, pattern.format(m), _MD5.get(pattern.format(m)))
        for dataset, (record, pattern) in dcase.items()
        for m in DCASE_MACHINES
    ]
    rows += [
        Archive("mimii", m, 3384388, f"{snr}_dB_{m}.zip", _MD5.get(f"{snr}_dB_{m}.zip"), snr=f"{snr}dB")
        for snr in MIMII_SNRS
        for m in MIMII_MACHINES
    ]
    return tuple(rows)


ARCHIVES: tuple[Archive, ...] = _registry()
DATASETS = ("dcase2020-dev", "dcase2020-eval", "dcase2020-additional", "mimii")


def select_archives(dataset: str, machines: list[str] | None = None, snrs: list[str] | None = None) -> list[Archive]:
    """The registry rows for a dataset, filtered by machine type (case-insensitive) and, for MIMII, SNR."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset '{dataset}' (choose from {', '.join(DATASETS)})")
    rows = [a for a in ARCHIVES if a.dataset == dataset]
    if machines:
        known = {a.machine.lower(): a.machine for a in rows}
        unknown = [m for m in machines if m.lower() not in known]
        if unknown:
            have = ", ".join(sorted(set(known.values())))
            raise ValueError(f"{dataset} has no machine type {', '.join(unknown)} (it has {have})")
        wanted = {known[m.lower()] for m in machines}
        rows = [a for a in rows if a.machine in wanted]
    if snrs:
        if dataset != "mimii":
            raise ValueError("--snr applies to mimii only")
        from offline.datasets.mimii import normalize_snr

        wanted_snr = {normalize_snr(s) for s in snrs}
        if None in wanted_snr or not wanted_snr <= {a.snr for a in rows}:
            raise ValueError(f"unknown SNR in {', '.join(snrs)} (MIMII has {', '.join(MIMII_SNRS)} dB)")
        rows = [a for a in rows if a.snr in wanted_snr]
    return rows


def md5sum(path: Path) -> str:
    """Hex md5 of a file, read in chunks (archives are up to 11 GB)."""
    digest = hashlib.md5()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _progress_bar() -> Progress:
    """One rich progress bar per file, on stderr; quiet when stderr is not a terminal (logs, CI)."""
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=console, disable=not console.is_terminal)


def _request(url: str, offset: int) -> urllib.request.Request:
    headers = {"User-Agent": "asd-monitor-downloader"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.Request(url, headers=headers)


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def _fetch_once(url: str, part: Path, progress: Progress, name: str) -> None:
    """One HTTP attempt: append to `part` from where it ends (or restart it); returns when the body is complete."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = urllib.request.urlopen(_request(url, offset), timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing after `offset`: either complete already or a stale, longer file
            total = (exc.headers.get("Content-Range") or "").rpartition("/")[2]
            if total.isdigit() and int(total) == offset:
                return
            log.info("%s: server rejected the resume range; starting over", name)
            part.unlink()
            return _fetch_once(url, part, progress, name)
        raise
    with response:
        if response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                raise DownloadError(f"{url}: server answered a resume with an unexpected range "
                                    f"({response.headers.get('Content-Range')!r}, asked from byte {offset})")
            mode, done = "ab", offset
            total = int(match.group(3)) if match.group(3).isdigit() else None
        else:
            if offset:
                log.info("%s: server ignored the Range request; restarting from zero", name)
            mode, done = "wb", 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        task = progress.add_task(name, total=total, completed=done)
        try:
            with part.open(mode) as out:
                while block := response.read(_CHUNK):
                    out.write(block)
                    progress.advance(task, len(block))
        finally:
            progress.remove_task(task)
    if total is not None and part.stat().st_size != total:
        raise ConnectionError(f"connection closed at byte {part.stat().st_size} of {total}")


def fetch(url: str, target: Path, progress: Progress, retries: int = _RETRIES) -> None:
    """Download `url` to `target` through `target.part`, resuming after a dropped connection or an earlier run."""
    part = target.with_name(target.name + ".part")
    for attempt in range(1, retries + 1):
        try:
            _fetch_once(url, part, progress, target.name)
            break
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets, short bodies
            if attempt == retries:
                raise DownloadError(f"{url}: download failed after {retries} attempts ({exc}); "
                                    f"run again to resume from {part}") from exc
            log.warning("%s: %s; resuming (attempt %d of %d)", target.name, exc, attempt + 1, retries)
            time.sleep(min(_BACKOFF_S * 2 ** (attempt - 1), 30.0))
    os.replace(part, target)


def _verify(archive: Archive, path: Path) -> None:
    if archive.md5 is None:
        log.warning("%s: no published md5 in the registry; it cannot be verified", archive.filename)
        return
    actual = md5sum(path)
    if actual != archive.md5:
        path.unlink()
        raise DownloadError(f"{archive.filename}: md5 mismatch (expected {archive.md5}, got {actual}); "
                            f"the file was deleted, nothing was extracted; run again to download it anew")


def _safe_members(zf: zipfile.ZipFile, name: str) -> list[zipfile.ZipInfo]:
    """Reject absolute paths and '..' (a zip must not write outside its folder)."""
    for info in zf.infolist():
        p = PurePosixPath(info.filename)
        if p.is_absolute() or ".." in p.parts or ":" in info.filename:
            raise DownloadError(f"{name}: unsafe member path {info.filename!r}; not extracting")
    return zf.infolist()


def _expected_top(archive: Archive, staging: Path) -> Path:
    """The folder in `staging` named after the machine, with the children the layout needs."""
    need = ("train", "test") if archive.dataset.startswith("dcase") else None
    candidates = [staging / archive.machine] + [d / archive.machine for d in staging.iterdir() if d.is_dir()]
    for folder in candidates:
        if not folder.is_dir():
            continue
        children = {c.name for c in folder.iterdir() if c.is_dir()}
        if need is not None and children & set(need):
            return folder
        if need is None and any(re.match(r"^id_\d+$", c) for c in children):
            return folder
    found = sorted(p.name for p in staging.iterdir())
    raise DownloadError(f"{archive.filename}: unexpected archive layout: no '{archive.machine}/' folder with "
                        f"{'train/ or test/' if need else 'id_XX/'} inside (top level: {', '.join(found) or 'empty'})")


def _merge_into(src: Path, dest: Path) -> list[tuple[str, int]]:
    """Move every file of `src` to the same relative place under `dest`; returns (relative path, size) pairs."""
    moved = []
    for folder, _dirs, names in os.walk(src):
        for n in names:
            path = Path(folder, n)
            rel = path.relative_to(src)
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            moved.append((str(rel), path.stat().st_size))
            os.replace(path, dest / rel)
    return moved


def _extract(archive: Archive, zip_path: Path, root: Path, work: Path) -> list[tuple[str, int]]:
    staging = work / f"staging-{archive.filename}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                zf.extractall(staging, members=_safe_members(zf, archive.filename))
        except zipfile.BadZipFile as exc:
            raise DownloadError(f"{archive.filename}: not a valid zip archive ({exc})") from exc
        top = _expected_top(archive, staging)
        dest = root / archive.dest_subdir / archive.machine
        moved = _merge_into(top, dest)
        return [(str(Path(archive.dest_subdir, archive.machine, rel)), size) for rel, size in moved]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stamp_path(work: Path, archive: Archive) -> Path:
    return work / f"{archive.filename}.done.json"


def _already_done(archive: Archive, root: Path, work: Path) -> bool:
    """True when an earlier run verified and extracted this archive and every file is still there, same size."""
    stamp = _stamp_path(work, archive)
    if not stamp.exists():
        return False
    try:
        record = json.loads(stamp.read_text())
        files = record["files"]
    except (ValueError, KeyError):
        return False
    if record.get("md5") != archive.md5:
        return False
    return all((root / rel).is_file() and (root / rel).stat().st_size == size for rel, size in files)


def download(
    dataset: str,
    root: str | os.PathLike[str],
    machines: list[str] | None = None,
    base_url: str = DEFAULT_BASE_URL,
    keep_archives: bool = False,
    snrs: list[str] | None = None,
) -> list[Path]:
    """Download, verify and extract the selected archives of `dataset` under `root`; returns the machine folders
    written (or found complete from an earlier run). Idempotent: a verified, complete archive is skipped."""
    archives = select_archives(dataset, machines, snrs)
    root = Path(root)
    work = root / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    written = []
    with _progress_bar() as progress:
        for archive in archives:
            dest = root / archive.dest_subdir / archive.machine
            if _already_done(archive, root, work):
                log.info("%s: already downloaded, verified and extracted; skipping", archive.filename)
                written.append(dest)
                continue
            zip_path = work / archive.filename
            if zip_path.exists():
                log.info("%s: reusing the archive kept by an earlier run", archive.filename)
            else:
                fetch(archive.url(base_url), zip_path, progress)
            _verify(archive, zip_path)
            files = _extract(archive, zip_path, root, work)
            _stamp_path(work, archive).write_text(json.dumps({"md5": archive.md5, "files": files}))
            if not keep_archives:
                zip_path.unlink()
            log.info("%s: %d files extracted into %s", archive.filename, len(files), dest)
            written.append(dest)
    return written


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=DATASETS, help="which archive set to fetch")
    parser.add_argument("--root", required=True, type=Path, help="folder to extract into (created if missing)")
    parser.add_argument("--machines", help="comma-separated machine types (default: all of the dataset)")
    parser.add_argument("--snr", help="MIMII only: comma-separated SNRs among 6,0,-6 (default: all)")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, help=f"mirror host (default {DEFAULT_BASE_URL})")
    parser.add_argument("--keep-archives", action="store_true", help=f"keep the zips in ROOT/{WORK_DIR}/")


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def run(args: argparse.Namespace) -> int:
    folders = download(args.dataset, args.root, machines=_csv(args.machines), base_url=args.base_url,
                       keep_archives=args.keep_archives, snrs=_csv(args.snr))
    for folder in folders:
        print(folder)
    return 0
