#!/usr/bin/env bash
# Embed a large cutout table over a Slurm array: task i of n embeds the i-th contiguous slice of the rows and writes
# one part; the parts, read as one folder, hold exactly the rows and columns a single `gal-embed CUTOUTS` would
# write, in order, and embeddings equal to float32 rounding (ONNX Runtime picks its kernels by batch shape, so a
# row batched with other rows may differ in the last bits).  A last job checks that every row arrived exactly
# once, in order (and can merge the parts into one file).
#
#   jid=$(sbatch --parsable --array=0-15 examples/slurm-embed.sh cutouts.parquet run/encoder.onnx emb/)
#   sbatch --dependency=afterok:$jid --wrap "python examples/check-embed-parts.py cutouts.parquet emb/"
#   gal-knn emb/ --query 1234                    # any reading tool takes the folder of parts as one table
#
# Each task needs only onnxruntime-gpu, numpy, pyarrow and fitsio (no torch).  With fp16 the first task converts
# the model once into $GALTOOLS_CACHE_DIR (default ~/.cache/galtools; keyed by the model's sha256, written
# atomically): on a shared file system the other tasks reuse it.  Memory per task is bounded by the batch size.
#
#SBATCH --job-name=gal-embed
#SBATCH --array=0-15
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=02:00:00
#SBATCH --output=gal-embed-%A_%a.log
#SBATCH --requeue
set -euo pipefail

usage="usage: sbatch --array=0-N slurm-embed.sh CUTOUTS ENCODER.onnx OUT_FOLDER"
cutouts=${1:?$usage}
model=${2:?$usage}
out=${3:?$usage}
: "${SLURM_ARRAY_TASK_ID:?run this under sbatch --array (or set SLURM_ARRAY_TASK_ID/_COUNT/_MIN)}"
mkdir -p "$out"

# gal-embed takes its shard from SLURM_ARRAY_TASK_ID/_COUNT (counted from _MIN) and names the part by it;
# 'part-{shard}' becomes e.g. part-03-of-16, so the parts sort in row order.
count=${SLURM_ARRAY_TASK_COUNT:?}
index=$((SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0}))
last=$((count - 1))
part=$(printf "%s/part-%0${#last}d-of-%d.parquet" "$out" "$index" "$count")

# Writes are atomic, so an existing part is complete: a requeued or re-submitted array skips finished tasks.
if [ -e "$part" ] && [ -z "${FORCE:-}" ]; then
  echo "gal-embed: $part exists, skipping (FORCE=1 to redo it)"
  exit 0
fi

# --device auto uses the GPU when there is one and says so in the part's metadata (galtools.embed.provider);
# DEVICE=cuda makes a task without a usable GPU fail with exit 69 instead of crawling on the CPU.
gal-embed "$cutouts" --model "$model" -o "$out/part-{shard}.parquet" --overwrite \
  --device "${DEVICE:-auto}" --precision "${PRECISION:-fp16}" --batch-size "${BATCH:-512}"
