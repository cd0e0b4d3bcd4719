"""Benchmark LinkedOut feature extraction: videos/s with and without early exit, MB per video.

Encodes batches of random uint8 frames (the model part of extraction: preprocessing, one prefill,
compression) with ``early_exit=False`` (the full-forward reference) and ``early_exit=True`` in the
same process, ``--repeats`` interleaved timed runs each after a warm-up, and reports the median
videos/s, the speed-up (median of the per-round ratios), the stored MB per video (float16 and int8) and, on CUDA, the peak GPU memory. Optionally
(``--e2e-videos N``) it also runs :func:`extract_dataset` end to end (decode + encode + write) on N
synthetic mp4s.

    python bench/extract.py                                   # tiny backbone on this machine
    python bench/extract.py --backbone random:llava-onevision-qwen2-7b --device cuda --batch-size 8

Writes ``bench/results/extract.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
    p.add_argument("--e2e-videos", type=int, default=0, help="also run extract_dataset on N synthetic videos")
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


def end_to_end(backbone: Backbone, cfg: ExtractionConfig, num_videos: int) -> dict[str, Any]:
    """``extract_dataset`` on ``num_videos`` synthetic mp4s: decode + encode + write, videos/s."""
    from linkedout.data.microlens import load_microlens
    from linkedout.data.synth import SynthConfig, generate

    with tempfile.TemporaryDirectory() as tmp:
        synth = SynthConfig.preset("toy", num_videos=num_videos, num_users=2, num_interactions=10,
                                   min_interactions_per_user=5, max_interactions_per_user=5,
                                   num_topics=min(4, num_videos), workers=0)
        generate(Path(tmp) / "data", synth)
        summary = extract_dataset(load_microlens(Path(tmp) / "data"), Path(tmp) / "store", cfg, backbone)
    return {"videos": summary.encoded, "seconds": summary.seconds, "videos_per_s": summary.videos_per_second}


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
    timed = time_modes(backbone, modes, args.batches, args.repeats)
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
    if args.e2e_videos:
        report["end_to_end"] = end_to_end(backbone, base, args.e2e_videos)

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
    if "end_to_end" in report:
        e2e = report["end_to_end"]
        print(f"  end to end   : {e2e['videos_per_s']:8.2f} videos/s over {e2e['videos']} videos")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
