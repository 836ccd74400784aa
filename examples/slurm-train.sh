#!/usr/bin/env bash
# MoCo v2 pre-training on N nodes x G GPUs under Slurm, with checkpoint/requeue.
#
#   sbatch --nodes=2 examples/slurm-train.sh cutouts.fits runs/moco --epochs 200
#   sbatch --nodes=1 --ntasks-per-node=1 --gpus-per-node=1 examples/slurm-train.sh cutouts.fits runs/moco
#
# srun starts one gal-train process per GPU; each takes its rank from SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID and
# meets the others at MASTER_ADDR:MASTER_PORT (DDP over NCCL).  It is the same command line as on one GPU: the
# batch size is the global one, split over the processes, and rank 0 alone writes RUN/.
#
# Requeue: 180 s before the time limit Slurm sends SIGUSR1 to every task; gal-train finishes its step, writes
# RUN/last.pt and exits 75.  This script then requeues the job, and the next start continues exactly where it
# stopped (--resume: RUN/last.pt when it exists, a fresh start otherwise).  A node failure or preemption
# (SIGTERM) takes the same path.
#
# With torchrun instead of srun's own tasks (LAUNCHER=torchrun, one task per node), torchrun forwards SIGTERM to
# the workers but itself exits 1, not 75: this script then requeues when RUN/last.pt is newer than the start.
#
#SBATCH --job-name=gal-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=gal-train-%j.log
set -uo pipefail

usage="usage: sbatch slurm-train.sh CUTOUTS RUN_FOLDER [gal-train options...]"
cutouts=${1:?$usage}
run=${2:?$usage}
shift 2

MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
export MASTER_ADDR MASTER_PORT
# Loader threads read and decode while the GPU trains; keep the CPU math libraries to the rest of the cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
started=$(date +%s)

echo "gal-train: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST, master $MASTER_ADDR:$MASTER_PORT"
if [ "${LAUNCHER:-srun}" = torchrun ]; then
  srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
    torchrun --nnodes "$SLURM_JOB_NUM_NODES" --nproc-per-node "${SLURM_GPUS_PER_NODE:-4}" \
      --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "$SLURM_JOB_ID" \
      -m galtools.cli.train "$cutouts" --out "$run" --resume --device "${DEVICE:-cuda}" "$@"
else
  srun --kill-on-bad-exit=0 \
    gal-train "$cutouts" --out "$run" --resume --device "${DEVICE:-cuda}" "$@"
fi
status=$?

requeue=0
if [ "$status" -eq 75 ]; then
  requeue=1
elif [ "$status" -ne 0 ] && [ "${LAUNCHER:-srun}" = torchrun ] && [ -f "$run/last.pt" ] \
     && [ "$(stat -c %Y "$run/last.pt")" -ge "$started" ]; then
  requeue=1
fi
if [ "$requeue" -eq 1 ]; then
  echo "gal-train: checkpoint written ($run/last.pt); requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
exit "$status"
