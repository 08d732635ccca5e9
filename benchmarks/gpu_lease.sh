#!/bin/bash
# A short GPU lease, in two commands on the same warm machine:
#
#   OUT=/tmp/lease bash benchmarks/gpu_lease.sh bench             # ~5 min
#   OUT=/tmp/lease RATE=<steps/s> bash benchmarks/gpu_lease.sh train 450   # ~7.5 min
#
# bench: prints the card and the package versions; a probe of 150 steps of
#   configs/isbi.py (572 tiles, 64 features, batch 1, fp32, 12 grain workers)
#   that measures steps/s with the real loader; what a checkpoint holds up the
#   loop (benchmarks/checkpoint_cost.py, <= 60 s); then benchmarks/gpu.py (jax vs
#   torch eager, torch.compile on the batch-8 case) for at most BENCH_SECONDS
#   (200), writing its table after every case.
# train SECONDS: trains configs/isbi.py from scratch for as many steps as fit
#   in SECONDS less 280 s (start-up, scoring) at the probe's RATE: train 0-24,
#   no validation split, the last checkpoint is kept (nothing is chosen on
#   25-29); scores 25-29 with 8-fold TTA; writes the challenge submission for
#   test-volume.tif (SHA-256 + preview).
# valsweep SECONDS: configs/isbi_cpu_same14k.py on the validation split for
#   VARIANTS x SEEDS (PARALLEL at a time), for choosing the CPU recipe's free
#   settings (learning rate, ...) on validation; results in valsweep.jsonl.
# Everything that should come back is written under $OUT (at most 8 files).
# Missing packages (grain, ml_collections) are installed from .whl/ when present;
# if the probe fails with the machine's own flax/optax/orbax, the pinned ones in
# .whl/fallback/ are installed over them (FALLBACK=1 does it up front).
# A dry check on any machine (toy sizes):
#   CONFIG_ARGS="--config.features=4 --config.tile_size=188 --config.num_workers=2" \
#   BENCH_ARGS="--tiny" OUT=/tmp/lease bash benchmarks/gpu_lease.sh bench
set -u
PART=${1:-bench}
LEASE_SECONDS=${2:-450}
OUT=${OUT:-/tmp/gpu_lease}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export UNET_JAX_DATA=${UNET_JAX_DATA:-$PWD/.devdata}
PY=${PY:-python3}
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
left() { echo $(( LEASE_SECONDS - ($(date +%s) - T0) )); }
install() {
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$@" && export PYTHONPATH=/tmp/site
}

if ls .whl/*.whl >/dev/null 2>&1; then install .whl/*.whl; fi
if [ "${FALLBACK:-0}" = 1 ]; then install .whl/fallback/*.whl; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import jax, flax, optax, orbax.checkpoint, grain, torch; print('jax', jax.__version__, \
'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, jax.devices())"

COMMON=(--config configs/isbi.py --config.num_workers=12 --config.train_indices=0-24
        --config.val_indices= --config.heldout_indices=25-29 --config.eval_every=0
        --config.log_every=50 ${CONFIG_ARGS:-})

if [ "$PART" = bench ]; then
  probe() {
    rm -rf /tmp/probe
    timeout 150 $PY train.py "${COMMON[@]}" --workdir /tmp/probe --config.num_steps=150 \
        --config.checkpoint_every=100000 > "$OUT/probe.log" 2>&1
    $PY -c "import json; r=[json.loads(l) for l in open('/tmp/probe/metrics.jsonl')]; \
print(r[-1]['steps_per_sec'])" 2>/dev/null || echo 0
  }
  say "probe: 150 steps"
  RATE=$(probe)
  if [ "$RATE" = "0" ] && ls .whl/fallback/*.whl >/dev/null 2>&1; then
    tail -5 "$OUT/probe.log"; say "probe failed: installing .whl/fallback and retrying"
    install .whl/fallback/*.whl
    RATE=$(probe)
  fi
  say "probe rate: RATE=$RATE steps/s"; tail -3 "$OUT/probe.log"
  say "checkpoint cost (waiting vs background save, curves.png)"
  timeout 60 $PY benchmarks/checkpoint_cost.py --config isbi --rounds 3 \
      --out "$OUT/checkpoint_cost.md" >> "$OUT/probe.log" 2>&1; tail -8 "$OUT/probe.log"
  say "benchmark (at most ${BENCH_SECONDS:-200} s)"
  timeout ${BENCH_SECONDS:-200} $PY benchmarks/gpu.py --reps 10 --warmup 2 --compile_batch 8 \
      --loader_batches 10 ${BENCH_ARGS:-} --out_dir "$OUT" > "$OUT/benchmark.log" 2>&1
  say "benchmark rc $?"; tail -30 "$OUT/benchmark.log"
elif [ "$PART" = valsweep ]; then
  # Validation sweep of the CPU recipe's free settings (they cost no CPU time):
  # configs/isbi_cpu_same14k.py on train 0-19, validation 20-24, last checkpoint,
  # in-loop validation at the last step (no TTA), fp32 without TF32 so that the
  # arithmetic is the CPU recipe's. VARIANTS: "name:flags;name:flags", SEEDS,
  # PARALLEL processes at a time (WORKERS grain workers each); runs are started
  # seed by seed so that a lease that ends early leaves complete seeds.
  export JAX_DEFAULT_MATMUL_PRECISION=highest
  VARIANTS=${VARIANTS:-"base:;lr0.006:--config.learning_rate=0.006;lr0.0015:--config.learning_rate=0.0015"}
  SEEDS=${SEEDS:-"0 1 2 3"}
  SWEEP=(--config configs/isbi_cpu_same14k.py --config.train_indices=0-19
         --config.val_indices=20-24 --config.heldout_indices= --config.eval_every=100000000
         --config.checkpoint_every=100000 --config.num_workers=${WORKERS:-3} ${SWEEP_ARGS:-})
  IFS=';' read -ra VS <<< "$VARIANTS"
  for seed in $SEEDS; do
    for v in "${VS[@]}"; do
      name=${v%%:*}; flags=${v#*:}
      while [ "$(jobs -rp | wc -l)" -ge "${PARALLEL:-4}" ]; do sleep 1; done
      [ "$(left)" -lt 60 ] && break 2
      say "start $name seed $seed"
      (timeout $(( $(left) - 25 )) $PY train.py "${SWEEP[@]}" $flags --config.seed=$seed \
          --workdir /tmp/sweep/$name/seed$seed > /tmp/sweep_${name}_$seed.log 2>&1
       say "end $name seed $seed rc $?") &
    done
  done
  wait
  $PY - "$OUT/valsweep.jsonl" <<'PYEOF'
import glob, json, sys
with open(sys.argv[1], "w") as f:
  for path in sorted(glob.glob("/tmp/sweep/*/seed*/metrics.jsonl")):
    rows = [json.loads(l) for l in open(path)]
    val = [r for r in rows if r.get("split") == "val"]
    rate = [r["steps_per_sec"] for r in rows if "steps_per_sec" in r]
    name, seed = path.split("/")[3], path.split("/")[4]
    out = {"variant": name, "seed": int(seed[4:]), "last_step": rows[-1].get("step"),
           "steps_per_sec": rate[-1] if rate else None, **(val[-1] if val else {})}
    f.write(json.dumps(out) + "\n"); print(out)
PYEOF
  (cd /tmp/sweep && tar czf "$OUT/valsweep_runs.tgz" --exclude='checkpoints' .)
else
  W=/tmp/isbi_gpu
  TRAIN_SECONDS=$(( $(left) - 280 ))
  STEPS=$($PY -c "print(max(1000, min(20000, int(float('${RATE:-20}') * $TRAIN_SECONDS) // 500 * 500)))")
  say "training $STEPS steps (~$TRAIN_SECONDS s at ${RATE:-20} steps/s)"
  timeout $(( $(left) - 210 )) $PY train.py "${COMMON[@]}" --workdir $W \
      --config.num_steps=$STEPS --config.checkpoint_every=2000 > "$OUT/train.log" 2>&1
  say "training rc $?"; tail -2 "$OUT/train.log"
  timeout 150 $PY evaluate.py --workdir $W --mode heldout --checkpoint latest --tta \
      > "$OUT/heldout.log" 2>&1; say "heldout rc $?"; tail -25 "$OUT/heldout.log"
  timeout $(( $(left) - 8 )) $PY evaluate.py --workdir $W --mode submission \
      --checkpoint latest --tta --out $W/submission > "$OUT/submission.log" 2>&1
  say "submission rc $?"; tail -5 "$OUT/submission.log"
  (cd $W && tar czf "$OUT/isbi_gpu_run.tgz" --exclude='checkpoints' --exclude='*.tif' . ; ls)
fi
say "done"
