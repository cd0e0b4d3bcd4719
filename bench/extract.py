"""Benchmark LinkedOut feature extraction: the model, decoding at real videos' length, end to end.

1. **Model**: batches of random uint8 frames (preprocessing, one prefill, compression) with
   ``early_exit=False`` (the full-forward reference) and ``early_exit=True``, ``--repeats``
   interleaved timed runs after a warm-up: median videos/s, the speed-up (median of per-round
   ratios), MB per video (float16, int8) and, on CUDA, the peak GPU memory.
2. **Decoding** (``--durations``, ``--heights``): 8 frames at 224 px from H.264 videos of 10, 161
   (MicroLens' mean) and 600 s at 720p and 1080p, generated once with PyAV/x264 into ``--cache``
   (25 fps, key frames every 250 frames like the real MicroLens clip ``archery.mp4``, 2 / 4 Mb/s,
   B-frames, CABAC). Per video: the decoder before this benchmark's change (``reference``: every
   frame up to the last sample), the default (``exact``: seek to the key frame before each sample
   or sequential, chosen per video, bit-identical frames), and ``keyframe`` sampling; CPU seconds
   on one core (FFmpeg ``threads=1``), median of ``--decode-repeats`` runs, the target (<= 0.25 s
   for a 161-s 720p video) beside.
3. **End to end** (``--e2e-videos``): ``extract_dataset`` on N copies of a video with
   ``--e2e-workers`` decoding processes, against the same run on frames decoded beforehand (the
   decoder then only loads them) and with decoding in-process (no workers, no overlap):
   steady-state videos/s with decoding vs on pre-decoded frames.
   The backbone gets ``--e2e-torch-threads`` (default 1) threads: on a GPU node it runs on the GPU
   and the CPU cores are the decoders'; here, with 2 cores, it gets one and the decoders share the
   other. Decoding is hidden when a video's decoding (CPU s / workers' cores) takes no longer than
   the backbone's time per video.

This machine's CPUs are shared with other work: every figure is a median of several runs and
still noisy; CPU time (not wall time) is what the decode targets are measured in.

    python bench/extract.py                                   # tiny backbone on this machine
    python bench/extract.py --backbone random:llava-onevision-qwen2-7b --device cuda --batch-size 8

Writes ``bench/results/extract.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from linkedout.extraction import (
    BackboneConfig,
    ExtractionConfig,
    LinkedOutExtractor,
    extract_dataset,
    load_backbone,
)
from linkedout.extraction.backbone import Backbone
from linkedout.extraction.extractor import feature_spec
from linkedout.extraction.prefetch import load_frames
from linkedout.extraction.video import decode_frames, video_plan

DECODE_TARGET_S = 0.25  # 8 frames of a 161-s 720p video, one core
BITRATES = {720: "2M", 1080: "4M"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="tiny", help="tiny | random:<name> | checkpoint dir | hub id")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--attn", default="sdpa", help="attention implementation: sdpa | eager | flash_attention_2")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--batches", type=int, default=2, help="batches per timed run")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per mode (the median is reported)")
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--frame-size", type=int, default=224)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--layers", default="0,4,8,12,16,20")
    p.add_argument("--durations", default="10,161,600", help="decode benchmark: video lengths in seconds ('' skips it)")
    p.add_argument("--heights", default="720,1080", help="decode benchmark: frame heights (16:9)")
    p.add_argument("--decode-repeats", type=int, default=3, help="timed decodes per video and mode (median)")
    p.add_argument("--reference-repeats", type=int, default=1,
                   help="timed decodes with the old sequential decoder for videos >= 161 s (slow)")
    p.add_argument("--cache", type=Path,
                   default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "linkedout" / "bench-videos",
                   help="where the generated benchmark videos are kept")
    p.add_argument("--e2e-videos", type=int, default=12, help="end to end: videos per run (0 skips it)")
    p.add_argument("--e2e-workers", type=int, default=2, help="end to end: decoding processes")
    p.add_argument("--e2e-runs", type=int, default=3, help="end to end: runs per case (median)")
    p.add_argument("--e2e-cases", default="10:exact,161:exact,161:keyframe",
                   help="end to end: SECONDS:SAMPLING cases at 720p")
    p.add_argument("--e2e-torch-threads", type=int, default=1,
                   help="end to end: torch threads of the backbone (default 1: the backbone has one core, as it "
                        "would have its GPU, and the decoding processes the others)")
    p.add_argument("--skip-model", action="store_true", help="skip the model benchmark")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "extract.json")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_modes(
    backbone: Backbone, cfgs: dict[str, ExtractionConfig], batches: int, repeats: int
) -> dict[str, dict[str, Any]]:
    """Median videos/s per mode over ``repeats`` rounds of ``batches`` batches, after a warm-up.

    The modes are timed interleaved (one run of each per round), so drifts in machine load hit
    them alike; ``ratio_runs`` holds each round's videos/s relative to the first mode.
    """
    extractors = {name: LinkedOutExtractor(backbone, cfg) for name, cfg in cfgs.items()}
    first = next(iter(cfgs.values()))
    shape = (first.batch_size, first.num_frames, first.frame_size, first.frame_size, 3)
    video = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)  # (B, F, S, S, 3)
    device = backbone.device
    rates: dict[str, list[float]] = {name: [] for name in cfgs}
    peak: dict[str, float] = {}
    for name, extractor in extractors.items():  # warm-up (allocator, kernels, caches) + peak memory
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        extractor.encode(video)
        if device.type == "cuda":
            peak[name] = torch.cuda.max_memory_allocated(device) / 2**30
    for _ in range(repeats):
        for name, extractor in extractors.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(batches):
                extractor.encode(video)
            _sync(device)
            rates[name].append(batches * first.batch_size / (time.perf_counter() - start))
    reference = rates[next(iter(cfgs))]
    out: dict[str, dict[str, Any]] = {}
    for name in cfgs:
        result: dict[str, Any] = {
            "videos_per_s": statistics.median(rates[name]),
            "videos_per_s_runs": rates[name],
            "ratio_runs": [r / ref for r, ref in zip(rates[name], reference)],
            "sequence_tokens": int(backbone.prompt_ids(first.prompts, first.num_frames).numel()),
        }
        if name in peak:
            result["peak_gpu_memory_gib"] = peak[name]
        out[name] = result
    return out


# ------------------------------------------------------------------------------------------ decoding


def _content(height: int, width: int, span: int, rng: np.random.Generator) -> np.ndarray:
    """A luma texture ``(height, width + span)`` uint8: smooth shapes (noise interpolated x16) plus fine detail."""
    coarse = rng.integers(16, 236, (height // 16 + 2, (width + span) // 16 + 2)).astype(np.float32)
    ys = np.linspace(0, coarse.shape[0] - 1.001, height)
    xs = np.linspace(0, coarse.shape[1] - 1.001, width + span)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    smooth = (coarse[y0][:, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1][:, x0] * fy * (1 - fx)
              + coarse[y0][:, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1][:, x0 + 1] * fy * fx)
    return np.clip(smooth + rng.integers(-12, 13, smooth.shape), 0, 255).astype(np.uint8)


def bench_video(cache: Path, seconds: int, height: int, fps: int = 25, keyint: int = 250) -> Path:
    """An H.264 video like a real MicroLens clip (key frames every ``keyint`` frames), made once and cached.

    Content: a textured scene panning sideways, film grain, and a band of new content moving down
    the frame (what motion reveals): x264 then spends bits on P/B frames as on real footage (a
    key frame is about 7x a P frame at 720p, 2 Mb/s), so neither key frames nor the frames between
    them are unrealistically cheap to decode. superfast preset, High profile (CABAC, B-frames).
    """
    width = height * 16 // 9
    path = cache / f"h264_v2_{seconds}s_{height}p_{fps}fps_k{keyint}.mp4"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.mp4")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seconds * 10_000 + height)
    shift, band = 6, height // 8
    luma = _content(height, width, fps * shift * 4, rng)
    grain = [rng.integers(-3, 4, (height, width)).astype(np.int16) for _ in range(8)]
    chroma = np.full((height // 2, width // 2), 128, np.uint8)
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={
            "preset": "superfast", "b": BITRATES.get(height, "3M"), "threads": "2",
            "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(seconds * fps):
            x = (i * shift) % (fps * shift * 2)
            y = np.clip(luma[:, x:x + width].astype(np.int16) + grain[i % 8], 0, 255).astype(np.uint8)
            top = (i * 37) % (height - band)
            y[top:top + band] = np.roll(luma[top:top + band, :width], i * 53, axis=1)
            frame = av.VideoFrame(width, height, "yuv420p")
            frame.planes[0].update(y)
            frame.planes[1].update(chroma)
            frame.planes[2].update(chroma)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    print(f"  generated {path.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def _timed_decode(path: Path, repeats: int, **kwargs: Any) -> dict[str, Any]:
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        decode_frames(path, 8, 224, **kwargs)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {"cpu_s": statistics.median(cpu), "wall_s": statistics.median(wall), "cpu_runs": cpu, "wall_runs": wall}


def _frame_sizes(path: Path) -> list[tuple[int, bool]]:
    """(bytes, is key frame) of every frame, from the container index (read while the file is open)."""
    with av.open(str(path)) as container:
        return [(e.size, bool(e.is_keyframe)) for e in container.streams.video[0].index_entries]


def decode_benchmark(cache: Path, durations: list[int], heights: list[int], repeats: int,
                     reference_repeats: int) -> list[dict[str, Any]]:
    rows = []
    for height in heights:
        for seconds in durations:
            path = bench_video(cache, seconds, height)
            exact, fast = video_plan(path, 8), video_plan(path, 8, sampling="keyframe")
            sizes = _frame_sizes(path)
            row: dict[str, Any] = {"video": f"{seconds} s {height}p", "seconds": seconds, "height": height,
                                   "frames": exact.frames, "keyframes": exact.keyframes, "bytes": path.stat().st_size,
                                   "keyframe_kb": statistics.mean(b for b, k in sizes if k) / 1e3,
                                   "other_frame_kb": statistics.mean(b for b, k in sizes if not k) / 1e3,
                                   "exact_method": exact.method, "exact_decoded_frames": exact.decoded_frames,
                                   "keyframe_decoded_frames": fast.decoded_frames}
            ref_repeats = repeats if seconds < 161 else reference_repeats
            row["reference"] = _timed_decode(path, ref_repeats, method="reference", threads=1)
            row["exact"] = _timed_decode(path, repeats, threads=1)
            row["keyframe"] = _timed_decode(path, repeats, sampling="keyframe", threads=1)
            row["exact_threads_auto"] = _timed_decode(path, repeats, threads=0)
            if (seconds, height) == (161, 720):
                row["target_s"] = DECODE_TARGET_S
            rows.append(row)
            print(f"  {row['video']:<12} {row['reference']['cpu_s']:8.2f} {row['exact']['cpu_s']:8.2f} "
                  f"({exact.method}) {row['keyframe']['cpu_s']:8.2f}"
                  + (f"   target <= {DECODE_TARGET_S} s" if "target_s" in row else ""), flush=True)
    return rows


# ---------------------------------------------------------------------------------------- end to end


class _Copies:
    """A catalogue of ``n`` videos that are all the same file (the decoding work is the same for each)."""

    def __init__(self, path: Path, n: int) -> None:
        self.path = path
        self.item_ids = [str(i) for i in range(1, n + 1)]

    def video_path(self, item: str) -> Path:
        return self.path


def end_to_end(backbone: Backbone, cfg: ExtractionConfig, video: Path, num_videos: int, workers: int,
               runs: int, sampling: str) -> dict[str, Any]:
    """``extract_dataset`` on ``num_videos`` copies of ``video``: videos/s decoding vs on pre-decoded frames.

    The rate is the steady state: from the end of the first shard (one batch) to the end of the
    last, so the start of the decoding processes and the first batch's warm-up are left out.
    """
    cfg = dataclasses.replace(cfg, decode_workers=workers, frame_sampling=sampling, shard_size=cfg.batch_size)
    rates: dict[str, list[float]] = {"decoding": [], "predecoded": [], "in_process": []}
    with tempfile.TemporaryDirectory() as tmp:
        frames = Path(tmp) / "frames.npy"
        np.save(frames, decode_frames(video, cfg.num_frames, cfg.frame_size, sampling=sampling))  # type: ignore[arg-type]
        for r in range(runs):
            for name in rates:  # interleaved, so drifts in the machine's load hit both alike
                dataset = _Copies(frames if name == "predecoded" else video, num_videos)
                ends: list[tuple[float, int]] = []
                run_cfg = dataclasses.replace(cfg, decode_workers=0) if name == "in_process" else cfg
                extract_dataset(dataset, Path(tmp) / f"{name}{r}", run_cfg, backbone,
                                decoder=load_frames if name == "predecoded" else None,
                                on_shard_written=lambda _i, m, ends=ends: ends.append((time.perf_counter(), len(m.ids))))
                videos = sum(n for _, n in ends[1:])
                rates[name].append(videos / (ends[-1][0] - ends[0][0]))
    out = {name: {"videos_per_s": statistics.median(v), "runs": v} for name, v in rates.items()}
    out["ratio"] = statistics.median(d / p for d, p in zip(rates["decoding"], rates["predecoded"]))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    bcfg = BackboneConfig(source=args.backbone, device=args.device, dtype=args.dtype,
                          attn_implementation=args.attn)
    if args.backbone == "tiny":
        bcfg = dataclasses.replace(bcfg, tiny_image_size=args.frame_size - args.frame_size % bcfg.tiny_patch_size)
    t0 = time.perf_counter()
    backbone = load_backbone(bcfg)
    load_s = time.perf_counter() - t0
    layers = tuple(int(x) for x in args.layers.split(","))
    base = ExtractionConfig(layers=layers, num_frames=args.num_frames, frame_size=args.frame_size,
                            tokens=args.tokens, batch_size=args.batch_size)
    modes = {"full_forward": dataclasses.replace(base, early_exit=False),
             "early_exit": dataclasses.replace(base, early_exit=True)}
    timed = (time_modes(backbone, modes, args.batches, args.repeats) if not args.skip_model else
             {m: {"videos_per_s": float("nan"), "ratio_runs": [float("nan")], "sequence_tokens": 0} for m in modes})
    full, early = timed["full_forward"], timed["early_exit"]
    spec = feature_spec(backbone, base)
    mb = {dtype: dataclasses.replace(spec, dtype=dtype).bytes_per_video() / 1e6 for dtype in ("float16", "int8")}
    report: dict[str, Any] = {
        "backbone": backbone.name,
        "device": str(backbone.device),
        "device_name": torch.cuda.get_device_name(backbone.device) if backbone.device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "dtype": str(backbone.dtype).removeprefix("torch."),
        "decoder_layers": backbone.num_layers,
        "hidden": backbone.hidden_size,
        "load_seconds": load_s,
        "config": dataclasses.asdict(base),
        "full_forward": full,
        "early_exit": early,
        "early_exit_speedup": statistics.median(early["ratio_runs"]),  # median of paired rounds
        "layers_computed": f"{max(layers)}/{backbone.num_layers}",
        "mb_per_video": mb,
    }
    report["cpu_count"] = os.cpu_count()
    report["load_average"] = os.getloadavg()

    print(f"backbone {report['backbone']} on {report['device']} ({report['device_name']}), {report['dtype']}, "
          f"{args.num_frames} frames x {args.frame_size}px, batch {args.batch_size}, "
          f"{full['sequence_tokens']} tokens/video")
    print(f"  full forward : {full['videos_per_s']:8.2f} videos/s (median of {args.repeats})")
    print(f"  early exit   : {early['videos_per_s']:8.2f} videos/s  -> x{report['early_exit_speedup']:.2f} "
          f"(median of paired runs; {report['layers_computed']} decoder layers)")
    if "peak_gpu_memory_gib" in early:
        print(f"  peak GPU memory: full {full['peak_gpu_memory_gib']:.2f} GiB, "
              f"early exit {early['peak_gpu_memory_gib']:.2f} GiB")
    print(f"  storage      : {mb['float16']:.4f} MB/video float16, {mb['int8']:.4f} MB/video int8 "
          f"(L={len(layers)}, K={args.tokens}, D={backbone.hidden_size})")
    durations = [int(x) for x in args.durations.split(",") if x.strip()]
    heights = [int(x) for x in args.heights.split(",") if x.strip()]
    if durations:
        print(f"decoding 8 frames at 224 px, CPU s per video on one core (FFmpeg threads=1), median of "
              f"{args.decode_repeats} (reference: {args.reference_repeats} run(s) at >= 161 s); load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n  {'video':<12} {'reference':>8} {'exact':>8} "
              f"(method) {'keyframe':>8}", flush=True)
        report["decode"] = decode_benchmark(args.cache, durations, heights, args.decode_repeats, args.reference_repeats)
    if args.e2e_videos:
        torch.set_num_threads(args.e2e_torch_threads)
        report["end_to_end"] = []
        print(f"end to end: extract_dataset on {args.e2e_videos} videos (720p), {args.e2e_workers} decoding processes, "
              f"backbone on {args.e2e_torch_threads} torch thread(s), steady-state videos/s, median of {args.e2e_runs} "
              "runs", flush=True)
        for case in args.e2e_cases.split(","):
            seconds, sampling = case.split(":")
            video = bench_video(args.cache, int(seconds), 720)
            e2e = end_to_end(backbone, base, video, args.e2e_videos, args.e2e_workers, args.e2e_runs, sampling)
            e2e.update(video=f"{seconds} s 720p", sampling=sampling, videos=args.e2e_videos, workers=args.e2e_workers)
            report["end_to_end"].append(e2e)
            print(f"  {seconds:>4} s 720p {sampling:<8}: {e2e['decoding']['videos_per_s']:6.2f} videos/s decoding in "
                  f"{args.e2e_workers} processes, {e2e['in_process']['videos_per_s']:6.2f} decoding in-process, "
                  f"{e2e['predecoded']['videos_per_s']:6.2f} on pre-decoded frames (ratio {e2e['ratio']:.2f}; "
                  "1.00 = decoding hidden behind the backbone)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
