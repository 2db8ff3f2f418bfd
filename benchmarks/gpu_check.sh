#!/usr/bin/env bash
# GPU check of pre-training, one call, under 8 minutes on one H100 (torch with CUDA, no pip install):
#
#   PYTHONPATH=src bash benchmarks/gpu_check.sh
#
# 1. throughput of the `base` preset, bf16 autocast, at batch 128 and a larger batch: end-to-end
#    clips/s (synthesis + fbank + train step, with and without the prefetch thread) and model-only
#    clips/s, and the time the published schedule of 2.5 M clips would take at that speed;
# 2. a short real `audiopg pretrain` run on the GPU (stats, bf16, fused AdamW, prefetch on a side
#    stream, outputs), then stop-and-resume on a small model, comparing its losses with an
#    uninterrupted run (bf16 kernels need not be bit-exact; the largest difference is reported).
#
# Full results go to $OUT/gpu_check.json (and the logs beside it); a short table is printed last.
# Knobs (for trying it on a CPU): GPU_CHECK_PRESET (base), GPU_CHECK_BATCHES ("128 256"),
# GPU_CHECK_DEVICE (cuda), GPU_CHECK_ARGS (extra benchmark args, e.g. "--set model.depth=2"),
# GPU_CHECK_TRAIN_STEPS (30), GPU_CHECK_COMPILE=1 (also time torch.compile at the first batch size).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-src}"
OUT="${OUT:-out/gpu_check}"
mkdir -p "$OUT"
PRESET="${GPU_CHECK_PRESET:-base}"
BATCHES="${GPU_CHECK_BATCHES:-128 256}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
EXTRA="${GPU_CHECK_ARGS:-}"
TRAIN_STEPS="${GPU_CHECK_TRAIN_STEPS:-30}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"; } \
  | tee "$OUT/gpu.txt"
python -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())" \
  | tee -a "$OUT/gpu.txt"

# 1. throughput
for b in $BATCHES; do
  echo "== throughput: $PRESET, batch $b"
  # shellcheck disable=SC2086
  timeout 240 python benchmarks/pretrain_throughput.py --preset "$PRESET" --batch-size "$b" --device "$DEVICE" \
    --rounds 3 --block 8 --json "$OUT/throughput_b$b.json" $EXTRA 2>&1 | tee "$OUT/throughput_b$b.log" \
    || echo "throughput at batch $b failed (see $OUT/throughput_b$b.log)"
done
if [ "${GPU_CHECK_COMPILE:-0}" = "1" ]; then
  b="${BATCHES%% *}"
  echo "== throughput: $PRESET, batch $b, torch.compile"
  # shellcheck disable=SC2086
  timeout 300 python benchmarks/pretrain_throughput.py --preset "$PRESET" --batch-size "$b" --device "$DEVICE" \
    --compile --prefetch prefetch --rounds 3 --block 8 --json "$OUT/throughput_b${b}_compile.json" $EXTRA 2>&1 \
    | tee "$OUT/throughput_b${b}_compile.log" || echo "compiled throughput failed"
fi

# 2. the real trainer on the device, then stop-and-resume on a small model
echo "== audiopg pretrain --preset $PRESET --steps $TRAIN_STEPS"
# shellcheck disable=SC2086
timeout 240 python -m audiopg pretrain --preset "$PRESET" --steps "$TRAIN_STEPS" --device "$DEVICE" \
  --set stats_clips=256 --no-progress --out "$WORK/run" $(echo "$EXTRA" | grep -o -- '--set [^ ]*' | tr '\n' ' ') \
  2>&1 | tee "$OUT/pretrain.log" || echo "pretrain run failed (see $OUT/pretrain.log)"
cp "$WORK/run/metrics.jsonl" "$OUT/pretrain_metrics.jsonl" 2>/dev/null || true
cp "$WORK/run/config.json" "$OUT/pretrain_config.json" 2>/dev/null || true
cp "$WORK/run/reconstructions.png" "$OUT/reconstructions.png" 2>/dev/null || true

echo "== stop and resume (small model)"
timeout 180 python - "$WORK" "$DEVICE" <<'EOF' 2>&1 | tee "$OUT/resume.log" || echo "resume check failed"
import json, sys
from pathlib import Path
from audiopg.train.config import PretrainConfig
from audiopg.train.pretrain import pretrain

work, device = Path(sys.argv[1]), sys.argv[2]
cfg = PretrainConfig.from_dict(dict(
    model=dict(preset="tiny", depth=2), batch_size=16, steps=16, stats_clips=64, device=device, progress=False,
)).resolved()

def losses(run):
    return [json.loads(l)["loss"] for l in (run / "metrics.jsonl").read_text().splitlines()]

def stop_at_7(trainer, step, loss):
    if step == 7:
        trainer.request_stop()

pretrain(cfg, work / "whole", log=lambda m: None)
r = pretrain(cfg, work / "parts", on_step=stop_at_7, log=lambda m: None)
assert r.status == "interrupted" and r.step == 7, r
pretrain(cfg, work / "parts", resume=True, log=lambda m: None)
a, b = losses(work / "whole"), losses(work / "parts")
assert len(a) == len(b) == 16
diff = max(abs(x - y) for x, y in zip(a, b))
print(json.dumps({"resume_max_loss_diff": diff, "steps": 16, "stopped_at": 7}))
EOF

python - "$OUT" "$BATCHES" "$PRESET" <<'EOF'
import json, sys
from pathlib import Path

out, batches, preset = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3]
PUBLISHED_CLIPS = 2_500_000
results = {"preset": preset, "published_schedule_clips": PUBLISHED_CLIPS, "throughput": [], "pretrain": None,
           "resume": None}
for f in sorted(out.glob("throughput_b*.json")):
    r = json.loads(f.read_text())
    r["published_schedule_hours"] = round(PUBLISHED_CLIPS / r["pipeline_clips_per_s"] / 3600, 3)
    r["file"] = f.name
    results["throughput"].append(r)
metrics = out / "pretrain_metrics.jsonl"
if metrics.exists():
    lines = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip()]
    if lines:
        rates = [l["clips_per_s"] for l in lines[2:]] or [lines[-1]["clips_per_s"]]
        results["pretrain"] = {"steps": lines[-1]["step"], "first_loss": lines[0]["loss"], "last_loss": lines[-1]["loss"],
                               "clips_per_s_mean": round(sum(rates) / len(rates), 2), "elapsed_s": lines[-1]["elapsed"]}
for line in (out / "resume.log").read_text().splitlines() if (out / "resume.log").exists() else []:
    if line.startswith("{"):
        results["resume"] = json.loads(line)
(out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")

print()
print(f"{'preset':<7}{'batch':>6}{'compile':>8}{'model clips/s':>15}{'pipeline clips/s':>18}{'ratio':>7}{'2.5M clips':>12}")
for r in results["throughput"]:
    print(f"{r['preset']:<7}{r['batch_size']:>6}{str(r['compile']):>8}{r['model_clips_per_s']:>15.1f}"
          f"{r['pipeline_clips_per_s']:>18.1f}{r['ratio']:>7.2f}{r['published_schedule_hours']:>10.2f} h")
if results["pretrain"]:
    p = results["pretrain"]
    print(f"pretrain {p['steps']} steps: loss {p['first_loss']:.4f} -> {p['last_loss']:.4f}, {p['clips_per_s_mean']:.1f} clips/s")
if results["resume"]:
    print(f"stop at 7 + resume vs uninterrupted (16 steps): max loss difference {results['resume']['resume_max_loss_diff']:.2e}")
print(f"full results: {out}/gpu_check.json")
EOF
