"""The local A/B run: the local stack serves two variants to simulated users for a bounded time.

    python bench/ab_local.py --workdir runs/demo --control linkedout --treatment last_layer \
        --duration 120 --concurrency 4

After the main job (`linkedout run --workdir runs/demo`, which trains the variants on a synthetic
dataset), this script

1. exports the two trained runs into one model repository (`linkedout export --run-dir
   W/runs/NAME --repo W/ab/model_repository`, docs/serving.md §1) — two models that differ in a
   known way (e.g. LinkedOut against its last-layer-only ablation, whose offline HR@10 differ) —
   and writes the users' histories into the stack's Feast store (``W/ab/feast``);
2. writes an experiment (50/50, sticky by user) and its routing config (`linkedout ab render`);
3. starts the local stack (`linkedout serve --workdir W/ab --routing ROUTING`) and waits for
   `W/ab/serving/stack.json`;
4. runs simulated users against the transformer over gRPC for `--duration` seconds (`linkedout ab
   simulate`): each user's clicks follow the synthetic dataset's topic ground truth, and the
   simulator records the exact expected click-through of what each variant served;
5. stops the stack (SIGTERM to the process it started), then runs `linkedout ab analyze` on the
   transformer's request log and the simulated interaction log and checks that the known
   difference lies inside the reported interval;
6. prints the figures and writes them to bench/results/ab_local.json (with analysis.json and
   analysis.png under W/ab/report/).

It depends on the serving issue's commands (`linkedout export`, `linkedout serve` with a
`--routing` option, stack.json naming the transformer's gRPC address and the request log); each
step fails with the command it ran and its output if those are not there yet.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def sh(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "linkedout", *args]
    print("$", " ".join(cmd[2:]), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        sys.exit(f"step failed: linkedout {' '.join(args)}\n{proc.stdout}\n{proc.stderr}")
    return proc


def wait_for_stack(stack_json: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"`linkedout serve` exited with {proc.returncode} before the stack was up")
        if stack_json.is_file():
            info = json.loads(stack_json.read_text())
            if info.get("transformer"):
                return info
        time.sleep(0.5)
    sys.exit(f"the stack did not write {stack_json} within {timeout_s:.0f} s")


def request_log_path(info: dict, workdir: Path) -> Path:
    for key in ("request_log",):
        if info.get(key):
            return Path(info[key])
        if isinstance(info.get("transformer"), dict) and info["transformer"].get(key):
            return Path(info["transformer"][key])
    return workdir / "serving" / "requests.jsonl"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("runs/demo"), help="the main job's workdir")
    p.add_argument("--control", default="linkedout", help="run (W/runs/NAME) served as the control")
    p.add_argument("--treatment", default="last_layer", help="run served as the treatment")
    p.add_argument("--duration", type=float, default=120.0, help="seconds of simulated traffic (bounded)")
    p.add_argument("--max-requests", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--startup-timeout", type=float, default=300.0)
    args = p.parse_args()

    w = args.workdir.resolve()
    ab = w / "ab"
    ab.mkdir(parents=True, exist_ok=True)
    data = w / "data"
    repo = ab / "model_repository"
    for run in (args.control, args.treatment):
        sh("export", "--run-dir", str(w / "runs" / run), "--repo", str(repo))
    # the users' histories (and the control's catalogue) in the stack's Feast store: without them every
    # simulated user would get the same cold-start answer from both variants
    sys.path.insert(0, str(REPO))
    from linkedout.job.feast import publish_features

    publish_features(data, repo, ab / "feast", name=args.control)

    exp = {"name": f"{args.treatment}-vs-{args.control}".replace("_", "-"), "salt": f"local-{int(time.time())}",
           "variants": [{"name": "control", "model": args.control, "version": None, "weight": 50},
                        {"name": "treatment", "model": args.treatment, "version": None, "weight": 50}],
           "primary_metric": "ctr", "attribution_window": "10m",
           "guardrails": {"p99_latency_ms": 50, "error_rate": 0.01},
           "min_sample_size": 100, "duration": f"{max(1, int(args.duration * 0.8))}s"}
    exp_file = ab / "experiment.yaml"
    exp_file.write_text(yaml.safe_dump(exp, sort_keys=False))
    sh("ab", "render", str(exp_file), "--out", str(ab / "render"), "--routing-only")

    (ab / "serving").mkdir(exist_ok=True)
    stack_json = ab / "serving" / "stack.json"
    stack_json.unlink(missing_ok=True)
    log = (ab / "serve.log").open("wb")
    cmd = [sys.executable, "-m", "linkedout", "serve", "--workdir", str(ab), "--routing", str(ab / "render" / "routing.yaml")]
    print("$", " ".join(cmd[2:]), flush=True)
    serve = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        info = wait_for_stack(stack_json, serve, args.startup_timeout)
        t0 = time.time()
        sh("ab", "simulate", str(exp_file), "--stack", str(stack_json), "--data", str(data),
           "--duration", str(args.duration), "--max-requests", str(args.max_requests),
           "--concurrency", str(args.concurrency), "--out", str(ab / "sim"))
        wall = time.time() - t0
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGTERM)  # the process group this script started
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
        log.close()

    requests_log = request_log_path(info, ab)
    out = sh("ab", "analyze", str(exp_file), "--requests", str(requests_log), "--interactions",
             str(ab / "sim" / "interactions.jsonl"), "--truth", str(ab / "sim" / "truth.json"),
             "--out", str(ab / "report")).stdout
    print(out)
    analysis = json.loads((ab / "report" / "analysis.json").read_text())
    truth = json.loads((ab / "sim" / "truth.json").read_text())
    comp = analysis["comparisons"][0]["difference"]
    true_diff = truth["difference"].get("treatment")
    inside = true_diff is not None and comp["ci"][0] <= true_diff <= comp["ci"][1]
    result = {"duration_s": args.duration, "wall_s": round(wall, 1), "requests": truth["requests"],
              "failures": truth["failures"], "requests_per_s": round(truth["requests"] / max(wall, 1e-9), 1),
              "true_ctr": truth["ctr"], "true_difference": true_diff, "estimated_difference": comp["diff"],
              "ci": comp["ci"], "always_valid_ci": comp["cs"], "true_difference_inside_ci": inside,
              "srm_p": analysis["srm"]["p_value"], "decision": analysis["decision"],
              "latency_p99_ms": {v["name"]: v["latency_p99_ms"] for v in analysis["variants"]}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ab_local.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {RESULTS / 'ab_local.json'}; report and plot in {ab / 'report'}")
    return 0 if inside else 1


if __name__ == "__main__":
    sys.exit(main())
