#!/usr/bin/env bash
# A compressed gal-knn index of a survey-sized embedding table, built in three stages: train on a sample (one task),
# add the rows in shards (a Slurm array, each task writing its own part), merge the parts' lists on disk (one task).
#
#   bash examples/slurm-index.sh embeddings.parquet index/ 64      # submits the three jobs, each after the last
#   gal-knn embeddings.parquet --index index/emb.faiss --query 1234
#
# KIND=ivfsq8 (default; D + 8 bytes a vector) or ivfpq (D/4 + 8); NLIST sets the number of lists. Every stage can be
# rerun after a crash: a part is written whole or not at all, and a task run again keeps a complete part. The
# merge refuses (exit 65) a missing part, names it, and writes nothing; rerun the array, then the merge.
set -euo pipefail

emb=${1:?usage: slurm-index.sh EMB OUT_FOLDER [TASKS]}
out=${2:?usage: slurm-index.sh EMB OUT_FOLDER [TASKS]}
tasks=${3:-16}
mkdir -p "$out"
nlist_args=()
[ -n "${NLIST:-}" ] && nlist_args=(--nlist "$NLIST")

train=$(sbatch --parsable --job-name=gal-knn-train --cpus-per-task=8 --mem=32G --time=04:00:00 \
  --wrap "OMP_NUM_THREADS=8 gal-knn index-train '$emb' --kind ${KIND:-ivfsq8} ${nlist_args[*]:-} -o '$out/trained.faiss'")
# --shard defaults to SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT
add=$(sbatch --parsable --dependency="afterok:$train" --array="0-$((tasks - 1))" --job-name=gal-knn-add \
  --cpus-per-task=4 --mem=16G --time=04:00:00 --requeue \
  --wrap "OMP_NUM_THREADS=4 gal-knn index-add '$emb' --trained '$out/trained.faiss'")
sbatch --dependency="afterok:$add" --job-name=gal-knn-merge --cpus-per-task=1 --mem=8G --time=04:00:00 \
  --wrap "gal-knn index-merge '$out/trained.faiss' '$out'/trained.part-*.faiss -o '$out/emb.faiss'"
