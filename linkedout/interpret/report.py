"""The self-contained HTML report of LinkedOut runs.

:func:`write_report` renders one HTML page from the runs' files (``linkedout.interpret.runs``) with
inline CSS and inline base64 PNG figures (``linkedout.interpret.figures``): the metrics tables (best
value per column in bold), training curves, the paper's three-panel gate/contribution/difference
heatmap, per-layer contribution shares, and the dataset and configuration tables
(``linkedout.interpret.setup_tables``). The page loads nothing from outside itself.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from linkedout.evaluation.metrics import metric_names
from linkedout.interpret.contributions import Contributions
from linkedout.interpret.figures import heatmap_figure, share_figure, training_figure
from linkedout.interpret.runs import RunRecord
from linkedout.interpret.setup_tables import data_table, extraction_table, model_table, training_table
from linkedout.utils import atomic_write_text, get_logger

log = get_logger(__name__)

_GROUP_ORDER = {"model": 0, "baseline": 1, "ablation": 2}

__all__ = ["write_report"]


# ----------------------------------------------------------------------------- HTML pieces

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
color:#1d1d1f;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd;
padding-bottom:.2rem}h3{font-size:1.02rem;margin:1.2rem 0 .4rem}
table{border-collapse:collapse;margin:.4rem 0 1rem;font-size:.86rem}
th,td{border:1px solid #d8d8d8;padding:.25rem .55rem;text-align:right}
th{background:#f3f4f6}td.name,th.name{text-align:left}tr.group td{background:#fafafa;font-style:italic;text-align:left}
td.best{font-weight:700;background:#eef7ee}img{max-width:100%;height:auto}
.muted{color:#666;font-size:.85rem}ul.notes li{margin:.2rem 0}
"""


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _fmt_plain(v: Any) -> str:
    """Summary values: floats with 6 significant digits (learning rates stay readable)."""
    if isinstance(v, float) and math.isfinite(v):
        return f"{v:.6g}"
    return _fmt(v)


def _row_name(row: Mapping[str, Any] | RunRecord) -> tuple[str, dict[str, Any]] | None:
    if isinstance(row, RunRecord):
        if row.eval is None:
            log.warning("run %s has no eval.json; left out of the metrics tables", row.run_dir)
            return None
        return row.name, row.eval
    name = row.get("model")
    if not name:
        raise ValueError("each metrics row needs a 'model' name (see the eval.json schema)")
    if "full" not in row:
        raise ValueError(f"metrics row {name!r} has no 'full' protocol")
    return str(name), dict(row)


def _metric_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    ks: set[int] = set()
    for rec in rows:
        for proto in ("full", "sampled"):
            for key in ((rec.get(proto) or {}).get("overall") or {}):
                if "@" in key:
                    ks.add(int(key.split("@", 1)[1]))
    return metric_names(sorted(ks))


def _metrics_table(rows: Sequence[tuple[str, dict[str, Any]]], proto: str, group: str, keys: list[str]) -> str:
    present = [(name, rec) for name, rec in rows if rec.get(proto)]
    if not present:
        return ""
    values: dict[str, list[float | None]] = {
        name: [_num((rec[proto].get(group) or {}).get(k)) for k in keys] for name, rec in present
    }
    best: list[float | None] = []
    for j in range(len(keys)):
        col = [x for v in values.values() if (x := v[j]) is not None]
        best.append(max(col) if col else None)
    head = "".join(f"<th>{_esc(k)}</th>" for k in keys)
    params_head = "<th>params</th>" if group == "overall" else ""
    out = [f'<table><thead><tr><th class="name">model</th>{params_head}<th>users</th>{head}</tr></thead><tbody>']
    last_group = None
    for name, rec in present:
        grp = rec.get("group")
        if grp and grp != last_group and any(r.get("group") for _, r in present):
            out.append(f'<tr class="group"><td colspan="{len(keys) + 2 + bool(params_head)}">{_esc(grp)}</td></tr>')
        last_group = grp
        users = (rec[proto].get("n_users") or {}).get(group)
        cells = []
        for j, v in enumerate(values[name]):
            is_best = v is not None and v == best[j] and len(present) > 1
            cells.append(f'<td class="best">{_fmt(v)}</td>' if is_best else f"<td>{_fmt(v)}</td>")
        params = f"<td>{_fmt(rec.get('params'))}</td>" if group == "overall" else ""
        out.append(f'<tr><td class="name">{_esc(name)}</td>{params}<td>{_fmt(users)}</td>{"".join(cells)}</tr>')
    out.append("</tbody></table>")
    return "".join(out)


def _catalogue_within_sample(rows: Sequence[tuple[str, dict[str, Any]]]) -> tuple[int, int] | None:
    """``(N, negatives)`` when every evaluated run's catalogue is no larger than 1 + the sampled negatives."""
    sizes, negs = [], []
    for _, rec in rows:
        if not rec.get("sampled"):
            continue
        n = rec.get("num_items")
        if not isinstance(n, int):
            return None
        sizes.append(n)
        negs.append(int(rec["sampled"].get("num_negatives") or 0))
    if sizes and all(n <= k + 1 for n, k in zip(sizes, negs)):
        return max(sizes), min(negs)
    return None


def _num(v: Any) -> float | None:
    """A finite number, or None (missing, null, NaN)."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            items.extend(_flatten(v, key + "."))
        elif isinstance(v, list | tuple) and len(v) > 12:
            items.append((key, f"[{len(v)} values] " + ", ".join(_fmt_plain(x) for x in v[:12]) + ", …"))
        elif isinstance(v, list | tuple):
            items.append((key, ", ".join(_fmt_plain(x) for x in v)))
        else:
            items.append((key, v))
    return items


def _kv_table(obj: Mapping[str, Any]) -> str:
    rows = "".join(
        f'<tr><td class="name">{_esc(k)}</td><td class="name">{_esc(_fmt_plain(v))}</td></tr>' for k, v in _flatten(obj)
    )
    return f"<table><tbody>{rows}</tbody></table>"


def _pick_heatmap_rows(c: Contributions, n: int, item_counts: Sequence[int] | np.ndarray | None, seed: int) -> np.ndarray:
    m = c.item_idx.size
    if m <= n:
        return np.arange(m)
    if item_counts is not None:
        counts = np.asarray(item_counts)
        if counts.ndim != 1 or int(c.item_idx.max()) >= counts.size:
            raise ValueError(f"item_counts must be indexed by item index (length > {int(c.item_idx.max())})")
        return np.argsort(-counts[c.item_idx], kind="stable")[:n]
    return np.sort(np.random.default_rng(seed).choice(m, size=n, replace=False))


# ----------------------------------------------------------------------------- the page


def write_report(
    path: str | Path,
    *,
    title: str,
    metrics_rows: Sequence[Mapping[str, Any] | RunRecord],
    training_logs: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    contributions: Contributions | None = None,
    dataset_summary: Mapping[str, Any] | None = None,
    notes: str | Sequence[str] | None = None,
    config: Mapping[str, Any] | None = None,
    item_labels: Sequence[str] | None = None,
    item_counts: Sequence[int] | np.ndarray | None = None,
    extraction: Mapping[str, Any] | None = None,
    run_configs: Mapping[str, Mapping[str, Any]] | None = None,
    heatmap_videos: int = 30,
    valid_metric: str = "NDCG@10",
    seed: int = 0,
) -> Path:
    """Write the run report as one self-contained HTML page and return its path.

    Args:
        path: the HTML file to write (atomically).
        title: page title.
        metrics_rows: ``eval.json`` records (or :class:`RunRecord` s; runs without ``eval.json``
            are left out) — the model, baselines and ablations; an optional ``group`` key
            ("model" / "baseline" / "ablation") orders and heads the rows.
        training_logs: run name -> ``metrics.jsonl`` records; plotted as loss and ``valid_metric``
            per epoch.
        contributions: catalogue-wide :class:`Contributions` (heatmap rows are picked from them).
        dataset_summary: dataset statistics (``linkedout.data.stats.dataset_stats``), shown as a table
            of the data's figures.
        notes: free text (one paragraph, or a list of bullet points).
        config: any further configuration, shown as key / value rows.
        item_labels: dataset id per item index (``SplitData.item_ids``) to label heatmap rows.
        item_counts: training popularity per item index (``SplitData.item_counts``); when given the
            heatmap shows the ``heatmap_videos`` most popular videos, otherwise a seeded sample.
        extraction: the feature shards' extraction spec (``spec.json``, plus ``videos``, ``failed``,
            ``store``): a table.
        run_configs: run name -> its ``config.json``: the model and training tables, one column a run.
        heatmap_videos: number of heatmap rows, >= 1.
        valid_metric: the validation metric plotted per epoch.
        seed: seed of the heatmap row sample.
    """
    if heatmap_videos < 1:
        raise ValueError(f"write_report heatmap_videos must be >= 1, got {heatmap_videos}")
    path = Path(path)
    rows = [named for r in metrics_rows if (named := _row_name(r)) is not None]
    rows.sort(key=lambda r: _GROUP_ORDER.get(str(r[1].get("group")), len(_GROUP_ORDER)))
    body: list[str] = [f"<h1>{_esc(title)}</h1>"]
    body += _metrics_section(rows)
    if training_logs:
        body += _training_section(training_logs, valid_metric)
    if contributions is not None:
        body += _contributions_section(contributions, heatmap_videos, item_labels, item_counts, seed)
    if dataset_summary or config or extraction or run_configs:
        body += _setup_section(dataset_summary, extraction, run_configs, config)
    if notes:
        body += _notes_section(notes)
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    atomic_write_text(path, page)
    log.info("wrote report %s (%.1f kB)", path, len(page) / 1e3)
    return path


def _metrics_section(rows: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """"Ranking metrics": the full-catalogue tables (all, warm, cold users) and the sampled one."""
    keys = _metric_keys([rec for _, rec in rows])
    body = ["<h2>Ranking metrics</h2>"]
    body.append(
        '<p class="muted">Full catalogue: every item scored, the user\'s history masked (never the target); '
        "leave-one-out test item. Warm / cold: the target video does / does not occur in training. "
        "Ties count against the model. Best value per column in bold.</p>"
    )
    if not rows:
        body.append("<p>No evaluated runs.</p>")
    for proto, group, heading in (
        ("full", "overall", "Full catalogue — all users"),
        ("full", "warm", "Full catalogue — warm target videos"),
        ("full", "cold", "Full catalogue — cold target videos"),
        ("sampled", "overall", "Sampled protocol — target vs. uniformly sampled negatives"),
    ):
        table = _metrics_table(rows, proto, group, keys)
        if table and proto == "sampled":
            small = _catalogue_within_sample(rows)
            if small is not None:
                n, k = small
                body.append(f"<h3>{_esc('Sampled protocol')}</h3><p>Not shown: the catalogue has {n:,} videos, no more "
                            f"than the protocol's 1 + {k} candidates, so every unseen video is a candidate and the "
                            "sampled protocol ranks exactly as the full-catalogue one above.</p>")
                continue
        if table:
            if proto == "sampled":
                negs = sorted({str(rec["sampled"].get("num_negatives")) for _, rec in rows if rec.get("sampled")})
                heading += f" (N = {', '.join(negs)}; not comparable with the full-catalogue figures)"
            body.append(f"<h3>{_esc(heading)}</h3>{table}")
    return body


def _training_section(training_logs: Mapping[str, Sequence[Mapping[str, Any]]], valid_metric: str) -> list[str]:
    """"Training curves": loss and the validation metric per epoch."""
    body = ["<h2>Training curves</h2>"]
    img = training_figure(training_logs, valid_metric)
    if img:
        body.append(f'<img src="{img}" alt="training loss and validation {_esc(valid_metric)} per epoch">')
    else:
        body.append("<p>No epoch records in the training logs.</p>")
    return body


def _contributions_section(c: Contributions, heatmap_videos: int, item_labels: Sequence[str] | None,
                           item_counts: Sequence[int] | np.ndarray | None, seed: int) -> list[str]:
    """The layers a video is made of: the heatmaps of some videos, the per-layer shares and their table."""
    body = ["<h2>Which layers make a video — gate weights and contributions</h2>"]
    body.append(
        '<p class="muted">Per video: gate weight π<sub>ℓ</sub>, actual contribution '
        "π<sub>ℓ</sub>‖h<sup>(ℓ)</sup>‖ as a share of the video's total, and their difference "
        "(red: the layer weighs more than its gate weight suggests). "
        f"{c.item_idx.size:,} videos; the paper reports L8 40.9 %, L20 20.5 %, L0 16.4 %, L4+L16 &lt; 7 %.</p>"
    )
    if c.item_idx.size:
        pick = _pick_heatmap_rows(c, heatmap_videos, item_counts, seed)
        sub = c.rows(pick)
        how = "most popular" if item_counts is not None and c.item_idx.size > heatmap_videos else "sampled"
        labels = [
            str(item_labels[i]) if item_labels is not None and i < len(item_labels) else f"#{i}"
            for i in sub.item_idx.tolist()
        ]
        body.append(f'<img src="{heatmap_figure(sub, labels)}" alt="gate, contribution and difference heatmaps '
                    f'of {len(labels)} {how} videos">')
        body.append(f'<img src="{share_figure(c)}" alt="per-layer contribution share">')
    head = "".join(f"<th>{_esc(n)}</th>" for n in c.layer_names)
    share = "".join(f"<td>{_fmt_pct(v)}</td>" for v in c.share_pct)
    gate = "".join(f"<td>{_fmt_pct(v)}</td>" for v in c.gate_pct)
    body.append(
        f'<table><thead><tr><th class="name">mean over videos</th>{head}</tr></thead><tbody>'
        f'<tr><td class="name">contribution share</td>{share}</tr>'
        f'<tr><td class="name">gate weight</td>{gate}</tr></tbody></table>'
    )
    return body


def _setup_section(dataset_summary: Mapping[str, Any] | None, extraction: Mapping[str, Any] | None,
                   run_configs: Mapping[str, Mapping[str, Any]] | None, config: Mapping[str, Any] | None) -> list[str]:
    """"Dataset and configuration": the data, extraction, model and training tables, other settings."""
    body = ["<h2>Dataset and configuration</h2>"]
    if dataset_summary:
        body.append(f"<h3>Data</h3>{data_table(dataset_summary)}")
    if extraction:
        body.append(f"<h3>Feature extraction</h3>{extraction_table(extraction)}")
    if run_configs:
        body.append(f"<h3>Models</h3>{model_table(run_configs)}")
        body.append(f"<h3>Training</h3>{training_table(run_configs)}")
    if config:
        body.append(f"<h3>Other settings</h3>{_kv_table(config)}")
    return body


def _notes_section(notes: str | Sequence[str]) -> list[str]:
    """"Notes": one paragraph, or bullet points."""
    body = ["<h2>Notes</h2>"]
    if isinstance(notes, str):
        body.append(f"<p>{_esc(notes)}</p>")
    else:
        body.append('<ul class="notes">' + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
    return body


def _fmt_pct(v: float) -> str:
    return "–" if not math.isfinite(v) else f"{v:.1f} %"
