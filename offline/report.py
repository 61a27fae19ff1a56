"""What `asd-offline evaluate` writes besides results.json: per-model CSVs, DCASE submission files, PNG plots and the
side-by-side summary table (markdown file + rich table on stdout).

Everything here works from the results dict (the results.json schema) or from plain per-clip arrays, so the files
can be re-made from a saved evaluation. Plots use matplotlib's Agg canvas directly (no pyplot, no global state, no
display needed).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from offline.datasets.records import Clip
from offline.metrics import Confusion, arithmetic_mean, decisions

REFERENCE_MODELS = ("chance", "rms_level")
LEVEL_MODEL = "rms_level"
CSV_COLUMNS = ("machine", "id", "snr", "n_normal", "n_anomaly", "auc", "pauc")


def safe_name(name: str) -> str:
    """A file/folder name from a model, machine or id label ("id_??" -> "id___"), so no label can escape the report."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".")
    return cleaned or "_"


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """JSON with None as null and a trailing newline; written to a temp name first so a crash leaves no half file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")
    os.replace(tmp, path)


# --- per-model CSV -------------------------------------------------------------------------------------------------


def model_csv_rows(model: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (machine, id), per (machine, SNR, id) when SNR is known, then the machine means and hmeans, then
    the model's means (machine = "all")."""
    rows: list[dict[str, Any]] = []

    def add(machine: str, ident: str, snr: str, entry: dict[str, Any]) -> None:
        rows.append(
            {
                "machine": machine,
                "id": ident,
                "snr": snr,
                "n_normal": entry.get("n_normal", ""),
                "n_anomaly": entry.get("n_anomaly", ""),
                "auc": _fmt(entry.get("auc"), 6),
                "pauc": _fmt(entry.get("pauc"), 6),
            }
        )

    for machine, m in model["machines"].items():
        for ident, entry in m["ids"].items():
            add(machine, ident, "", entry)
        for snr, s in m.get("snr", {}).items():
            for ident, entry in s["ids"].items():
                add(machine, ident, snr, entry)
            add(machine, "mean", snr, s)
        add(machine, "mean", "", m)
        add(machine, "hmean", "", m["hmean"])
    add("all", "mean", "", model["mean"])
    add("all", "hmean", "", model["hmean"])
    return rows


def write_model_csv(path: Path, model: dict[str, Any]) -> None:
    """AUC/pAUC per machine type, id and SNR plus arithmetic and harmonic means, for spreadsheets."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(model_csv_rows(model))


# --- DCASE submission files ----------------------------------------------------------------------------------------


def _row_names(paths: Sequence[Path]) -> list[str]:
    """The DCASE files list clips by base name; MIMII names (normal/00000000.wav, abnormal/00000000.wav) collide, so
    then we fall back to the path below the clips' common folder, which stays unique."""
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return [p.relative_to(root).as_posix() for p in paths]


def write_submission(
    folder: Path, machine: str, clips: Sequence[Clip], scores: np.ndarray, threshold: float,
    per_id: dict[str, float] | None = None,
) -> list[Path]:
    """`anomaly_score_<machine>_<id>.csv` (name, score) and `decision_result_<machine>_<id>.csv` (name, 0/1 with
    1 = score > the id's threshold, its own from `per_id` or else `threshold`), one pair per id, no header, as the
    DCASE 2020 Task 2 submission asks."""
    folder.mkdir(parents=True, exist_ok=True)
    by_id: dict[str, list[int]] = defaultdict(list)
    for i, clip in enumerate(clips):
        by_id[clip.id].append(i)
    written: list[Path] = []
    for ident, idx in sorted(by_id.items()):
        names = _row_names([clips[i].path for i in idx])
        s = np.asarray(scores, dtype=float)[idx]
        stem = f"{safe_name(machine)}_{safe_name(ident)}.csv"
        thr = (per_id or {}).get(ident, threshold)
        columns = (("anomaly_score", [repr(float(v)) for v in s]), ("decision_result", decisions(s, thr)))
        for prefix, values in columns:
            path = folder / f"{prefix}_{stem}"
            with path.open("w", newline="") as f:
                csv.writer(f, lineterminator="\n").writerows(zip(names, values))
            written.append(path)
    return written


# --- plots ---------------------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_confusion(path: Path, confusion: Confusion, title: str, rule: str = "bundle threshold") -> None:
    """2x2 confusion matrix at a threshold (`rule` says which), counts written in the cells."""
    fig = _figure(4.2, 3.8)
    ax = fig.add_subplot()
    m = confusion.matrix
    ax.imshow(m, cmap="Blues", vmin=0, vmax=max(int(m.max()), 1))
    for (r, c), count in np.ndenumerate(m):
        ax.text(c, r, str(count), ha="center", va="center", color="white" if count > m.max() / 2 else "black")
    ax.set_xticks([0, 1], ["normal", "anomalous"])
    ax.set_yticks([0, 1], ["normal", "anomaly"])
    ax.set_xlabel(f"decision (score > {confusion.threshold:.4g}, {rule})")
    ax.set_ylabel("truth")
    ax.set_title(title, fontsize=10)
    fig.savefig(path)


def plot_score_distribution(
    path: Path, scores: np.ndarray, labels: Sequence[str | None], threshold: float | None, title: str
) -> None:
    """Histograms of normal vs anomalous clip scores on shared bins, with the decision threshold as a line: shows at a
    glance whether a poor AUC comes from overlap or from a threshold in the wrong place."""
    fig = _figure(6.0, 3.6)
    ax = fig.add_subplot()
    s = np.asarray(scores, dtype=float)
    lab = np.asarray([str(x) for x in labels])
    bins = np.histogram_bin_edges(s, bins=min(50, max(10, s.size // 3)))
    for label, color in (("normal", "tab:blue"), ("anomaly", "tab:red"), ("None", "tab:gray")):
        sel = s[lab == label]
        if sel.size:
            shown = "unlabeled" if label == "None" else label
            ax.hist(sel, bins=bins, alpha=0.55, color=color, label=f"{shown} ({sel.size})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("clips")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.savefig(path)


def plot_score_sets(path: Path, sets: dict[str, np.ndarray], threshold: float | None, title: str) -> None:
    """One box per test set (its files' scores, each also drawn as a point) on one axis, with the threshold as a
    line: the seed's clean vs SNR 25 / 20 / 15 dB comparison at a glance."""
    fig = _figure(max(4.0, 1.3 * len(sets) + 2.0), 3.8)
    ax = fig.add_subplot()
    names = list(sets)
    values = [np.asarray(sets[n], dtype=float) for n in names]
    ax.boxplot(values, showfliers=False)
    jitter = np.random.default_rng(0)
    for k, v in enumerate(values, start=1):
        ax.plot(k + jitter.uniform(-0.15, 0.15, v.size), v, ".", color="tab:blue", alpha=0.5, markersize=4)
    ax.set_xticks(range(1, len(names) + 1), [f"{n}\n({v.size})" for n, v in zip(names, values)], fontsize=8)
    if threshold is not None:
        ax.axhline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
        ax.legend(fontsize=8)
    ax.set_ylabel("score (distance for deep_svdd)")
    ax.set_title(title, fontsize=10)
    fig.savefig(path)


# --- side-by-side summary ------------------------------------------------------------------------------------------


def _mean_over(model: dict[str, Any], machines: Iterable[str], key: str) -> float | None:
    return arithmetic_mean(model["machines"][m][key] for m in machines if m in model["machines"])


def summary_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the side-by-side table: one row per model, AUC/pAUC per machine type, the means, and
    "beats level": whether the model's mean AUC over ITS machine types is above rms_level's on the same types (a
    detector that does not beat the clip loudness has learned nothing the level meter does not know)."""
    models: dict[str, Any] = results["models"]
    machines = sorted({m for model in models.values() for m in model["machines"]})
    header = ["model"]
    for m in machines:
        header += [f"{m} AUC", f"{m} pAUC"]
    header += ["mean AUC", "mean pAUC", "hmean AUC", "beats level"]
    level = models.get(LEVEL_MODEL)
    rows: list[list[str]] = []
    for name, model in models.items():
        row = [name]
        for m in machines:
            entry = model["machines"].get(m, {})
            row += [_fmt(entry.get("auc")), _fmt(entry.get("pauc"))]
        row += [_fmt(model["mean"]["auc"]), _fmt(model["mean"]["pauc"]), _fmt(model["hmean"]["auc"])]
        if name in REFERENCE_MODELS or level is None:
            verdict = "-"
        else:
            own = model["mean"]["auc"]
            ref = _mean_over(level, model["machines"], "auc")
            verdict = "n/a" if own is None or ref is None else ("yes" if own > ref else "NO")
        row.append(verdict)
        rows.append(row)
    return header, rows


def snr_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-SNR table (the MIMII study's view): one row per model, the AUC of each machine
    type at each SNR; no rows when no clip carries an SNR."""
    models: dict[str, Any] = results["models"]
    cols = sorted({(m, snr) for model in models.values() for m, e in model["machines"].items()
                   for snr in e.get("snr", {})}, key=lambda c: (c[0], _snr_value(c[1])))
    if not cols:
        return [], []
    header = ["model"] + [f"{m} {snr} AUC" for m, snr in cols]
    rows = [[name] + [_fmt(model["machines"].get(m, {}).get("snr", {}).get(snr, {}).get("auc")) for m, snr in cols]
            for name, model in models.items()]
    return header, rows


def _snr_value(snr: str) -> float:
    """'-6dB' -> -6.0, for ordering the columns by SNR (high to low reads as the study does); unparsable last."""
    try:
        return -float(snr.lower().removesuffix("db"))
    except ValueError:
        return float("inf")


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *["| " + " | ".join(r) + " |" for r in rows]]


def calibration_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the threshold table: per bundle and machine type, the false-alarm rate its threshold was
    expected to have (with its interval, from the normal scores it was set on) and the rate on the test normals."""
    header = ["model", "machine", "threshold", "set on", "expected false alarms [95 % CI]", "test false alarms"]
    rows: list[list[str]] = []
    for name, model in results["models"].items():
        for machine, entry in model["machines"].items():
            cal = entry.get("threshold_calibration")
            if cal is None:
                continue
            lo, hi = cal["false_alarm_rate_interval"]
            test = cal.get("test_false_alarm_rate")
            rows.append([name, machine, f"{entry['threshold']:.4g}", f"{cal['n_scores']} {cal.get('scores', '')}",
                         f"{cal['false_alarm_rate']:.0%} [{lo:.0%}, {hi:.0%}]", "-" if test is None else f"{test:.0%}"])
    return header, rows


def summary_markdown(results: dict[str, Any], note: str = "") -> str:
    """The table as GitHub markdown (the per-SNR table when clips carry an SNR, the thresholds' calibration when the
    bundles record it), with a legend for the reference rows."""
    lines = _markdown_table(*summary_rows(results))
    snr_header, snr_table = snr_rows(results)
    if snr_table:
        lines += ["", "AUC per SNR (each the mean over the ids at that SNR):", "",
                  *_markdown_table(snr_header, snr_table)]
    cal_header, cal_table = calibration_rows(results)
    if cal_table:
        lines += ["", "Thresholds: the false-alarm rate expected from the normal scores each was set on (held-out or "
                  "cross-fitted clips the model did not see; Clopper-Pearson interval), and on the test normals:", "",
                  *_markdown_table(cal_header, cal_table)]
    legend = (
        "\n`chance`: seeded uniform random scores (its AUC scatters around 0.5 by the luck of the draw). "
        "`rms_level`: the clip's RMS level in dBFS as the score (louder = more anomalous). "
        "`beats level`: mean AUC above rms_level's on the same machine types. "
        "Machine AUC/pAUC = arithmetic mean over ids; hmean = harmonic mean over all ids.\n"
    )
    return "\n".join(lines) + "\n" + legend + (f"\n{note}\n" if note else "")


def print_summary(results: dict[str, Any], title: str) -> None:
    """The same table on stdout, rendered by rich (plain text when stdout is not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    header, rows = summary_rows(results)
    table = Table(title=title)
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        style = "red" if row[-1] == "NO" else ("dim" if row[0] in REFERENCE_MODELS else None)
        table.add_row(*row, style=style)
    console = Console(width=max(100, 14 * len(header)))
    console.print(table)
    snr_header, snr_table = snr_rows(results)
    if snr_table:
        per_snr = Table(title="AUC per SNR")
        for i, col in enumerate(snr_header):
            per_snr.add_column(col, justify="left" if i == 0 else "right")
        for row in snr_table:
            per_snr.add_row(*row, style="dim" if row[0] in REFERENCE_MODELS else None)
        console.print(per_snr)
