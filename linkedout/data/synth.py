"""A synthetic, content-driven dataset written in the exact MicroLens layout, with real H.264 videos.

The generative story (everything seeded, so a seed gives byte-identical tables):

* ``num_topics`` latent topics; each is a visible combination of a shape, a colour palette, a
  background texture and a motion pattern (chosen to differ from the other topics in as many of
  the four as possible). Each video renders its dominant topic with per-video variation (colour
  jitter, size, speed, phase, texture scale), pixel noise and, with probability ``content_noise``,
  one attribute swapped for another topic's.
* Videos have a long-tailed (Zipf, exponent ``zipf_exponent``) popularity.
* Users have sparse topic preferences (about ``topics_per_user`` topics, Dirichlet weights). A
  sequence is a sticky Markov chain over topics (the next item keeps the previous item's topic with
  probability ``topic_stickiness``: short-term drift, so order matters); each item is drawn from its
  topic by popularity, or, with probability ``exploration``, from the whole catalogue. A user never
  watches an item twice. Timestamps (ms) increase along each sequence.
* ``cold_start_fraction`` of the videos are cold: they can only be a user's *last* interaction (a
  test target), never earlier, so no training sequence holds them.

Files: ``{prefix}_pairs.csv``, ``{prefix}_titles.csv`` (titles end with topic hashtags),
``{prefix}_likes_and_views.txt``, ``{prefix}_videos/{item}.mp4``, ``{prefix}_covers/{item}.jpg``, and
two side files that the loader ignores: ``{prefix}_synth_topics.csv`` (``item,topic``, the ground
truth, for analysis only) and ``{prefix}_synth_config.json``. Tables are written after the videos,
so an interrupted run leaves no pairs file and cannot be mistaken for a complete dataset.

The videos are drawn and encoded by :mod:`.synth_video`; this module samples the tables and the
per-video variation of each render job.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from linkedout.data.synth_video import PALETTES, TopicStyle, VideoJob, encode_videos, topic_styles
from linkedout.data.tables import DatasetError, write_pairs_csv, write_titles_csv
from linkedout.utils import atomic_write_bytes, atomic_write_text, get_logger

log = get_logger(__name__)

_TAG_WORDS = (
    "cooking", "travel", "pets", "music", "dance", "gaming", "fitness", "comedy", "fashion", "tech",
    "art", "nature", "sports", "cars", "diy", "science", "beauty", "food", "kids", "news", "anime",
    "vlog", "study", "garden", "ocean", "space", "history", "magic", "fishing", "camping", "makeup",
    "coding", "yoga", "baking", "street", "drawing", "movies", "books", "chess", "surfing", "hiking",
    "crafts", "cats", "dogs", "rain", "city", "family", "retro", "lego", "drones", "trains", "piano",
    "guitar", "skate", "tennis", "soccer", "cycling", "birds", "sunset", "winter",
)
_ADJECTIVES = ("amazing", "quick", "daily", "tiny", "epic", "calm", "funny", "late-night", "weekend",
               "classic", "new", "best", "simple", "wild", "cozy", "bright")
_NOUNS = ("moments", "clip", "story", "tips", "challenge", "session", "highlights", "tour", "recap",
          "tutorial", "vibes", "review", "look", "trick", "journey", "mix")


@dataclass
class SynthConfig:
    """Everything that defines a synthetic dataset (saved beside it as ``{prefix}_synth_config.json``)."""

    seed: int = 0  # any integer; the same seed gives the same dataset
    num_videos: int = 400  # catalogue size V >= num_topics
    num_users: int = 1500  # users U >= 1
    num_interactions: int = 12_000  # exact total number of pairs, in [U*min, U*max] per-user bounds
    num_topics: int = 8  # latent topics K in [1, num_videos]
    topics_per_user: float = 2.0  # mean number of preferred topics per user, in [1, K]
    topic_stickiness: float = 0.6  # P(next item keeps the previous item's topic), in [0, 1)
    exploration: float = 0.05  # P(an item is drawn from the whole catalogue by popularity), in [0, 1]
    min_interactions_per_user: int = 5  # >= 3 (leave-one-out needs one training item)
    max_interactions_per_user: int = 40  # >= min; long users exercise the "keep the last 13" rule
    cold_start_fraction: float = 0.05  # fraction of videos that only appear as last interactions, in [0, 0.5]
    zipf_exponent: float = 1.0  # popularity ~ rank^-s, s >= 0 (0 = uniform)
    content_noise: float = 0.1  # P(a video swaps one visual attribute for another topic's), in [0, 1]
    video_size: int = 64  # frame width = height in pixels; even, >= 16
    num_frames: int = 16  # frames per video, >= 1
    fps: int = 8  # frames per second of the mp4, >= 1
    crf: int = 23  # libx264 constant rate factor, 0..51
    workers: int = 2  # video-encoding processes; 0 = encode in this process
    prefix: str = "MicroLens-synth"  # file prefix; must not contain '/'
    start_time_ms: int = 1_672_531_200_000  # earliest timestamp (2023-01-01 UTC)

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"SynthConfig.{name} must be {rule}, got {getattr(self, name)!r}")

        need(self.num_videos >= 2, "num_videos", ">= 2")
        need(self.num_users >= 1, "num_users", ">= 1")
        need(1 <= self.num_topics <= self.num_videos, "num_topics", f"in [1, num_videos={self.num_videos}]")
        need(1.0 <= self.topics_per_user <= self.num_topics, "topics_per_user", f"in [1, num_topics={self.num_topics}]")
        need(0.0 <= self.topic_stickiness < 1.0, "topic_stickiness", "in [0, 1)")
        need(0.0 <= self.exploration <= 1.0, "exploration", "in [0, 1]")
        need(self.min_interactions_per_user >= 3, "min_interactions_per_user", ">= 3")
        need(self.max_interactions_per_user >= self.min_interactions_per_user, "max_interactions_per_user",
             f">= min_interactions_per_user={self.min_interactions_per_user}")
        need(0.0 <= self.cold_start_fraction <= 0.5, "cold_start_fraction", "in [0, 0.5]")
        n_cold = round(self.cold_start_fraction * self.num_videos)
        need(self.max_interactions_per_user <= self.num_videos - n_cold, "max_interactions_per_user",
             f"<= the number of warm videos ({self.num_videos - n_cold}) so no item repeats")
        lo = self.num_users * self.min_interactions_per_user
        hi = self.num_users * self.max_interactions_per_user
        need(lo <= self.num_interactions <= hi, "num_interactions", f"in [{lo}, {hi}] (users x min/max per user)")
        need(self.zipf_exponent >= 0.0, "zipf_exponent", ">= 0")
        need(0.0 <= self.content_noise <= 1.0, "content_noise", "in [0, 1]")
        need(self.video_size >= 16 and self.video_size % 2 == 0, "video_size", "even and >= 16")
        need(self.num_frames >= 1, "num_frames", ">= 1")
        need(self.fps >= 1, "fps", ">= 1")
        need(0 <= self.crf <= 51, "crf", "in [0, 51]")
        need(self.workers >= 0, "workers", ">= 0")
        need(bool(self.prefix) and "/" not in self.prefix and "\\" not in self.prefix, "prefix",
             "a non-empty file-name prefix")
        need(self.start_time_ms >= 0, "start_time_ms", ">= 0")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SynthConfig:
        """A named preset (``toy``, ``small``, ``microlens-100k``) with fields overridden.

        When ``num_users`` is overridden but not ``num_interactions``, the preset's mean sequence
        length is kept.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown synth preset {name!r}; choose one of {sorted(PRESETS)}")
        base = dict(PRESETS[name])
        if "num_users" in overrides and "num_interactions" not in overrides:
            mean_len = base["num_interactions"] / base["num_users"]
            base["num_interactions"] = round(mean_len * overrides["num_users"])
        if "num_videos" in overrides and "num_topics" not in overrides:
            base["num_topics"] = min(base["num_topics"], overrides["num_videos"])
        base.update(overrides)
        return cls(**base)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


#: SynthConfig fields that do not change the dataset written (only how fast it is written).
NON_CONTENT_FIELDS = ("workers",)


def content_config(config: dict[str, Any]) -> dict[str, Any]:
    """A ``SynthConfig`` as a dict, without the fields that do not change the dataset (``workers``)."""
    return {k: v for k, v in config.items() if k not in NON_CONTENT_FIELDS}


PRESETS: dict[str, dict[str, Any]] = {
    # tests: tiny and quick
    "toy": dict(num_videos=50, num_users=120, num_interactions=960, num_topics=4, num_frames=8,
                max_interactions_per_user=20),
    # the README job and the model comparison: ~400 videos, ~1500 users, < 1 min on 2 cores
    "small": dict(num_videos=400, num_users=1500, num_interactions=12_000, num_topics=8),
    # MicroLens-100K scale: 19,738 videos, 100,000 users, 719,405 interactions
    "microlens-100k": dict(num_videos=19_738, num_users=100_000, num_interactions=719_405, num_topics=20,
                           max_interactions_per_user=60),
}


@dataclass
class SynthResult:
    """What :func:`generate_tables` produced (kept in memory; :func:`generate` writes it)."""

    pairs: pd.DataFrame  # user, item, timestamp (sorted by user then time)
    titles: list[str]  # per video index
    item_ids: list[str]  # per video index (positive integers as strings)
    video_topic: np.ndarray  # (V,) int64 dominant topic per video index
    cold: np.ndarray  # (V,) bool
    likes: np.ndarray  # (V,) int64
    views: np.ndarray  # (V,) int64
    styles: list[TopicStyle]  # per topic
    jobs: list[VideoJob]


# ------------------------------------------------------------------------------------------------
# public entry points


def generate(root: str | Path, cfg: SynthConfig, *, write_videos: bool = True, overwrite: bool = False) -> Path:
    """Write a synthetic dataset in the MicroLens layout under ``root`` and return ``root``.

    With ``write_videos=False`` only the tables are written (the dataset then loads with
    ``load_microlens(root, check_videos=False)``). A directory is one dataset: ``root`` holding a
    dataset of another prefix is refused (a second prefix would make it unusable), and one of the
    same prefix too unless ``overwrite`` (its files are then deleted first); both checks come
    before anything is written.
    """
    root = Path(root)
    _check_target(root, cfg, overwrite)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = generate_tables(cfg, root)
    t_tables = time.perf_counter() - t0
    log.info("synth %s: %d users, %d videos, %d interactions generated in %.1fs", cfg.prefix, cfg.num_users,
             cfg.num_videos, len(result.pairs), t_tables)
    if write_videos:
        (root / f"{cfg.prefix}_videos").mkdir(exist_ok=True)
        (root / f"{cfg.prefix}_covers").mkdir(exist_ok=True)
        t1 = time.perf_counter()
        encode_videos(result.jobs, workers=cfg.workers)
        log.info("synth %s: %d videos encoded in %.1fs", cfg.prefix, len(result.jobs), time.perf_counter() - t1)
    _write_tables(root, cfg, result)
    return root


def _check_target(root: Path, cfg: SynthConfig, overwrite: bool) -> None:
    if not root.is_dir():
        return
    prefixes = sorted({p.name.rsplit("_pairs.", 1)[0] for p in (*root.glob("*_pairs.csv"), *root.glob("*_pairs.tsv"))})
    others = [p for p in prefixes if p != cfg.prefix]
    if others:
        raise DatasetError(f"{root} already holds the dataset {', '.join(others)}: a second dataset in one directory "
                           "makes it unusable (every command reads one dataset per directory); choose another --out")
    if cfg.prefix in prefixes:
        if not overwrite:
            raise DatasetError(f"{root} already holds the dataset {cfg.prefix}; choose another --out, or --force to "
                               "replace it")
        log.warning("replacing the dataset %s in %s", cfg.prefix, root)
        for path in root.glob(f"{cfg.prefix}_*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def generate_tables(cfg: SynthConfig, root: str | Path = ".") -> SynthResult:
    """The interactions, titles, likes/views and video render jobs (nothing written). Vectorised."""
    root = Path(root)
    ss = np.random.SeedSequence(cfg.seed)
    rng_topics, rng_videos, rng_users, rng_seq, rng_text, rng_render = (np.random.default_rng(s) for s in ss.spawn(6))
    v, k = cfg.num_videos, cfg.num_topics

    styles = topic_styles(k, rng_topics)
    topic_share = rng_topics.dirichlet(np.full(k, 5.0))  # (K,) topic sizes, moderately unequal
    video_topic = np.concatenate([np.arange(k), rng_videos.choice(k, size=v - k, p=topic_share)])
    rng_videos.shuffle(video_topic)
    ranks = rng_videos.permutation(v) + 1
    popularity = ranks.astype(np.float64) ** -cfg.zipf_exponent  # (V,)
    cold = _choose_cold(video_topic, k, round(cfg.cold_start_fraction * v), rng_videos)
    item_ids = [str(i) for i in rng_videos.permutation(v) + 1]  # positive integers, unrelated to topics

    lengths = _sequence_lengths(cfg, rng_users)  # (U,)
    prefs = _user_preferences(cfg, topic_share, rng_users)  # (U, K)
    seq_items = _sample_sequences(cfg, lengths, prefs, video_topic, popularity, cold, rng_seq)  # (U, Lmax)

    # timestamps: each user starts somewhere in a 120-day window; gaps of >= 1 s, ~3 h on average
    u, lmax = seq_items.shape
    start = cfg.start_time_ms + np.asarray(rng_users.integers(0, 120 * 86_400_000, size=u))  # (U,)
    gaps = 1_000 + rng_users.exponential(3 * 3_600_000, size=(u, lmax)).astype(np.int64)
    gaps[:, 0] = 0
    stamps = start[:, None] + np.cumsum(gaps, axis=1)  # (U, Lmax)
    valid = np.arange(lmax)[None, :] < lengths[:, None]
    users_col = np.repeat(np.arange(1, u + 1), lengths)
    item_idx = seq_items[valid]
    ids_arr = np.array(item_ids, dtype=object)
    pairs = pd.DataFrame({"user": users_col.astype(str), "item": ids_arr[item_idx].astype(str),
                          "timestamp": stamps[valid].astype(np.int64)})

    counts = np.bincount(item_idx, minlength=v)
    views = (counts * rng_text.integers(20, 60, size=v)
             + np.round(popularity / popularity.max() * 50_000 * rng_text.lognormal(0.0, 0.5, size=v))).astype(np.int64)
    likes = rng_text.binomial(views, rng_text.beta(2.0, 30.0, size=v)).astype(np.int64)
    titles = _titles(video_topic, k, cfg.content_noise, rng_text)
    jobs = _video_jobs(cfg, root, item_ids, video_topic, styles, rng_render)
    return SynthResult(pairs, titles, item_ids, video_topic.astype(np.int64), cold, likes, views, styles, jobs)


# ------------------------------------------------------------------------------------------------
# interactions


def _sequence_lengths(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """(U,) per-user lengths in [min, max] summing exactly to ``num_interactions``."""
    lo, hi, u = cfg.min_interactions_per_user, cfg.max_interactions_per_user, cfg.num_users
    mean_extra = cfg.num_interactions / u - lo
    if mean_extra > 0:
        extra = rng.geometric(1.0 / (mean_extra + 1.0), size=u) - 1
    else:
        extra = np.zeros(u, dtype=np.int64)
    lengths = np.clip(lo + extra, lo, hi).astype(np.int64)
    diff = cfg.num_interactions - int(lengths.sum())
    while diff != 0:
        room = np.flatnonzero(lengths < hi) if diff > 0 else np.flatnonzero(lengths > lo)
        pick = rng.choice(room, size=min(abs(diff), len(room)), replace=False)
        lengths[pick] += 1 if diff > 0 else -1
        diff = cfg.num_interactions - int(lengths.sum())
    return lengths


def _user_preferences(cfg: SynthConfig, topic_share: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(U, K) sparse topic preferences: a few topics per user with Dirichlet weights, rows sum to 1."""
    u, k = cfg.num_users, cfg.num_topics
    n_topics = np.clip(1 + rng.poisson(cfg.topics_per_user - 1.0, size=u), 1, k)  # (U,)
    # pick n_topics distinct topics per user, favouring big topics: Gumbel top-k on log shares
    keys = np.log(topic_share)[None, :] + rng.gumbel(size=(u, k))
    order = np.argsort(-keys, axis=1)
    chosen = np.arange(k)[None, :] < n_topics[:, None]  # (U, K) mask in `order` positions
    weights = rng.gamma(1.0, size=(u, k)) * chosen
    prefs = np.zeros((u, k))
    np.put_along_axis(prefs, order, weights, axis=1)
    return prefs / prefs.sum(axis=1, keepdims=True)


def _choose_cold(video_topic: np.ndarray, k: int, n_cold: int, rng: np.random.Generator) -> np.ndarray:
    """(V,) bool: ``n_cold`` cold videos, leaving every topic at least two warm videos."""
    cold = np.zeros(len(video_topic), dtype=bool)
    if n_cold == 0:
        return cold
    sizes = np.bincount(video_topic, minlength=k)
    for v in rng.permutation(len(video_topic)):
        if cold.sum() >= n_cold:
            break
        t = video_topic[v]
        if sizes[t] > 2:
            cold[v] = True
            sizes[t] -= 1
    return cold


def _cdfs(weights: np.ndarray, groups: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per group: (member indices, normalised cumulative weights); empty when the group has no weight."""
    out = []
    for g in range(k):
        members = np.flatnonzero((groups == g) & (weights > 0))
        cdf = np.cumsum(weights[members])
        out.append((members, cdf / cdf[-1] if len(cdf) else cdf))
    return out


def _draw(groups_of_rows: np.ndarray, tables: list[tuple[np.ndarray, np.ndarray]],
          rng: np.random.Generator) -> np.ndarray:
    """One item per row from the table of the row's group (-1 where the group's table is empty)."""
    out = np.full(len(groups_of_rows), -1, dtype=np.int64)
    for g, (members, cdf) in enumerate(tables):
        rows = np.flatnonzero(groups_of_rows == g)
        if len(rows) and len(members):
            pos = np.searchsorted(cdf, rng.random(len(rows)), side="right")
            out[rows] = members[np.minimum(pos, len(members) - 1)]
    return out


def _sample_sequences(cfg: SynthConfig, lengths: np.ndarray, prefs: np.ndarray, video_topic: np.ndarray,
                      popularity: np.ndarray, cold: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(U, Lmax) item indices (-1 past each user's length); cold items only at each user's last step."""
    u, k = prefs.shape
    lmax = int(lengths.max())
    warm_w = np.where(cold, 0.0, popularity)
    by_topic = {False: _cdfs(warm_w, video_topic, k), True: _cdfs(popularity, video_topic, k)}
    zeros = np.zeros(len(popularity), dtype=np.int64)
    global_tab = {False: _cdfs(warm_w, zeros, 1), True: _cdfs(popularity, zeros, 1)}
    pref_cdf = np.cumsum(prefs, axis=1)  # (U, K)
    items = np.full((u, lmax), -1, dtype=np.int64)
    topic = np.zeros(u, dtype=np.int64)
    rows_all = np.arange(u)
    for t in range(lmax):
        active = lengths > t
        draws = np.asarray(rng.random(u))
        fresh = np.minimum((draws[:, None] > pref_cdf).sum(axis=1), k - 1)  # (U,) topic ~ prefs
        stay = (rng.random(u) < cfg.topic_stickiness) if t else np.zeros(u, dtype=bool)
        topic = np.where(stay, topic, fresh)
        last = lengths - 1 == t
        explore = np.asarray(rng.random(u)) < cfg.exploration
        step = np.full(u, -1, dtype=np.int64)
        todo = active.copy()
        for attempt in range(12):
            rows = np.flatnonzero(todo)
            if not len(rows):
                break
            use_global = explore[rows] | (attempt >= 8)  # give up on the topic after a few repeats
            for is_last in (False, True):
                sel = last[rows] == is_last
                r_topic = rows[sel & ~use_global]
                step[r_topic] = _draw(topic[r_topic], by_topic[is_last], rng)
                r_glob = rows[sel & use_global]
                step[r_glob] = _draw(np.zeros(len(r_glob), dtype=np.int64), global_tab[is_last], rng)
            repeat = (items[rows, :t] == step[rows, None]).any(axis=1) if t else np.zeros(len(rows), bool)
            todo[rows] = repeat | (step[rows] < 0)
        for r in rows_all[todo]:  # rare: every draw repeated; take the most popular unseen warm item
            seen = set(items[r, :t].tolist())
            candidates = np.argsort(-warm_w)
            step[r] = next(int(c) for c in candidates if int(c) not in seen)
        topic = np.where(active & (step >= 0), video_topic[np.maximum(step, 0)], topic)
        items[:, t] = np.where(active, step, -1)
    return items


# ------------------------------------------------------------------------------------------------
# titles, render jobs, files


def _titles(video_topic: np.ndarray, k: int, noise: float, rng: np.random.Generator) -> list[str]:
    words = list(_TAG_WORDS)
    while len(words) < 3 * k:
        words.append(f"topic{len(words)}")
    perm = rng.permutation(len(words))
    topic_tags = [[words[perm[3 * t + j]] for j in range(3)] for t in range(k)]
    titles = []
    for t in video_topic.tolist():
        tags = list(rng.choice(topic_tags[t], size=2, replace=False))
        if rng.random() < noise:  # an off-topic tag
            tags[1] = words[perm[int(rng.integers(0, 3 * k))]]
        adj = _ADJECTIVES[int(rng.integers(len(_ADJECTIVES)))]
        noun = _NOUNS[int(rng.integers(len(_NOUNS)))]
        titles.append(f"{adj} {tags[0]} {noun} #{tags[0]} #{tags[1]}")
    return titles


def _video_jobs(cfg: SynthConfig, root: Path, item_ids: list[str], video_topic: np.ndarray,
                styles: list[TopicStyle], rng: np.random.Generator) -> list[VideoJob]:
    v = len(item_ids)
    jitter = rng.integers(-25, 26, size=(v, 3, 3))
    radius = rng.uniform(0.14, 0.24, size=v)
    speed = rng.uniform(0.7, 1.4, size=v)
    phase = rng.uniform(0, 2 * np.pi, size=v)
    tex_scale = rng.uniform(6.0, 14.0, size=v) * cfg.video_size / 64
    swap = rng.random(v) < cfg.content_noise
    swap_attr = rng.integers(0, 4, size=v)
    swap_from = rng.integers(0, len(styles), size=v)
    noise_seeds = rng.integers(0, 2**31, size=v)
    vdir, cdir = root / f"{cfg.prefix}_videos", root / f"{cfg.prefix}_covers"
    fields = ("shape", "palette", "texture", "motion")
    video_styles = []
    for j in range(v):
        style = styles[int(video_topic[j])]
        if swap[j]:
            name = fields[int(swap_attr[j])]
            style = dataclasses.replace(style, **{name: getattr(styles[int(swap_from[j])], name)})
        video_styles.append(style)
    palettes = np.array(PALETTES)[[st.palette for st in video_styles]]  # (V, 3, 3)
    all_colors = np.clip(palettes + jitter, 0, 255).tolist()
    jobs = []
    for j, style in enumerate(video_styles):
        colors = tuple(tuple(c) for c in all_colors[j])
        jobs.append(VideoJob(item=item_ids[j], video_path=str(vdir / f"{item_ids[j]}.mp4"),
                             cover_path=str(cdir / f"{item_ids[j]}.jpg"), style=style, colors=colors,
                             radius=float(radius[j]), speed=float(speed[j]), phase=float(phase[j]),
                             texture_scale=float(tex_scale[j]), noise_seed=int(noise_seeds[j]),
                             size=cfg.video_size, num_frames=cfg.num_frames, fps=cfg.fps, crf=cfg.crf))
    return jobs


def _write_tables(root: Path, cfg: SynthConfig, result: SynthResult) -> None:
    p = cfg.prefix
    order = np.argsort(np.array([int(i) for i in result.item_ids]))  # rows by item id
    ids = [result.item_ids[j] for j in order]
    atomic_write_text(root / f"{p}_synth_config.json", cfg.to_json())
    topics = "item,topic\n" + "".join(f"{result.item_ids[j]},{int(result.video_topic[j])}\n" for j in order)
    atomic_write_text(root / f"{p}_synth_topics.csv", topics)
    lv = "".join(f"{result.item_ids[j]}\t{int(result.likes[j])}\t{int(result.views[j])}\n" for j in order)
    atomic_write_text(root / f"{p}_likes_and_views.txt", lv)
    atomic_write_bytes(root / f"{p}_titles.csv", write_titles_csv(ids, [result.titles[j] for j in order]))
    atomic_write_bytes(root / f"{p}_pairs.csv", write_pairs_csv(result.pairs))  # last: marks completion


def read_synth_topics(root: str | Path, prefix: str = "MicroLens-synth") -> dict[str, int]:
    """The ground-truth dominant topic per item id (analysis only; the model never sees it)."""
    df = pd.read_csv(Path(root) / f"{prefix}_synth_topics.csv", dtype={"item": str, "topic": np.int64})
    return dict(zip(df["item"], df["topic"].astype(int)))
