#!/usr/bin/env bash
# A catalogue-wide neighbor table with gal-knn --all over a Slurm array: each array task finds the top-k of one
# contiguous slice of the rows (against the whole table); the parts, read as one folder, are exactly the table
# a single `gal-knn EMB --all` would write, to the bit: every similarity is re-scored per pair in a fixed order,
# whatever the shard, block or CPU.
#
#   sbatch --array=0-15 examples/slurm-knn.sh embeddings/ neighbors/ 1000
#   gal-info neighbors/                      # afterwards: the parts read as one table
#
# Memory per task (exact search): the whole embedding table, N x D x 4 bytes (100M x 128 = 51 GB; 1M x 128 =
# 512 MB), plus a 128 MiB similarity tile, plus the carried columns.  Time per task ~ (N / tasks) x N x D x 2 flops.
# Past one node's memory, build an IVF index once (gal-knn index EMB --kind ivf -o EMB.faiss, ~N x (4D + 8) bytes)
# and set INDEX=EMB.faiss: each task then holds the index instead (--nprobe trades time for recall).
#
#SBATCH --job-name=gal-knn
#SBATCH --array=0-15
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=04:00:00
#SBATCH --output=gal-knn-%A_%a.log
#SBATCH --requeue
set -euo pipefail

emb=${1:?usage: sbatch --array=0-N slurm-knn.sh EMB OUT_FOLDER [K]}
out=${2:?usage: sbatch --array=0-N slurm-knn.sh EMB OUT_FOLDER [K]}
k=${3:-1000}
mkdir -p "$out"

# One BLAS/OpenMP thread per allocated core, not per core of the node.
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1} OPENBLAS_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}

index_args=()
if [ -n "${INDEX:-}" ]; then
  index_args=(--index "$INDEX")
  [ -n "${NPROBE:-}" ] && index_args+=(--nprobe "$NPROBE")
fi

# --shard defaults to SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT; '{shard}' in -o becomes e.g. 03-of-16, so the
# parts sort in row order. Writes are atomic: a task killed half-way leaves no part, and a requeued task redoes it.
# On GPU nodes add '#SBATCH --gres=gpu:1' and '--device cuda' (exact search then runs its matrix products in torch).
gal-knn "$emb" --all -k "$k" "${index_args[@]}" --device "${DEVICE:-auto}" \
  -o "$out/neighbors-{shard}.parquet" --overwrite
