#!/bin/bash
#SBATCH -J crossfl-smoke-perlmutter
#SBATCH -N 2
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH -t 00:10:00
#SBATCH -o crossfl-smoke-perlmutter-%j.out
#SBATCH -A m0000_g
#SBATCH -q regular
#SBATCH -C gpu
#SBATCH --gpus-per-node=4
# crossfl smoke test for perlmutter: start the image on a compute node and print, per rank,
# what torch sees; then 2 ranks on each of 2 node(s) all-reduce and take one DDP
# step with the site's backend. Submit: sbatch smoke.sh
set -euo pipefail

# Facility setup: modules, proxy, environment (from deploy/sites/perlmutter.yaml)
export FI_MR_CACHE_MONITOR=userfaultfd
export NCCL_NET_GDR_LEVEL=PHB
export NCCL_SOCKET_IFNAME=hsn

echo "crossfl smoke test on $(hostname) at $(date -u +%FT%TZ)"
srun --nodes=1 --ntasks=4 --ntasks-per-node=4 --cpus-per-task=32 --gpus-per-task=1 --gpu-bind=closest podman-hpc shared-run --gpu -v /pscratch:/pscratch -v /global/cfs:/global/cfs -e FI_MR_CACHE_MONITOR=userfaultfd -e NCCL_NET_GDR_LEVEL=PHB -e NCCL_SOCKET_IFNAME=hsn -e HF_HUB_OFFLINE=1 --network=host --ipc=host -v /dev/shm:/dev/shm -e CUDA_VISIBLE_DEVICES -e ROCR_VISIBLE_DEVICES -e ZE_AFFINITY_MASK -e ZE_ENABLE_PCI_ID_DEVICE_ORDER -e CROSSFL_LOCAL_RANK -e CROSSFL_LAUNCHED_AT -e TORCHELASTIC_RUN_ID -e RANK -e WORLD_SIZE -e LOCAL_RANK -e LOCAL_WORLD_SIZE -e MASTER_ADDR -e MASTER_PORT -e PARSL_MPI_NODELIST -e SLURM_PROCID -e SLURM_STEP_ID -e SLURM_STEP_NUM_TASKS -e SLURM_NTASKS -e SLURM_NPROCS -e SLURM_LOCALID -e SLURM_STEP_TASKS_PER_NODE -e SLURM_TASKS_PER_NODE -e SLURM_STEP_NODELIST -e SLURM_JOB_NODELIST -e SLURM_JOB_ID -v "$PWD:$PWD" -w "$PWD" crossfl-cuda python -m crossfl.client devices --expect cuda
# the collective: one JSON line per rank (its all-reduce and DDP step, backend, bandwidth)
srun --nodes=2 --ntasks=4 --ntasks-per-node=2 --cpus-per-task=64 --gpus-per-task=1 --gpu-bind=closest podman-hpc shared-run --gpu -v /pscratch:/pscratch -v /global/cfs:/global/cfs -e FI_MR_CACHE_MONITOR=userfaultfd -e NCCL_NET_GDR_LEVEL=PHB -e NCCL_SOCKET_IFNAME=hsn -e HF_HUB_OFFLINE=1 --network=host --ipc=host -v /dev/shm:/dev/shm -e CUDA_VISIBLE_DEVICES -e ROCR_VISIBLE_DEVICES -e ZE_AFFINITY_MASK -e ZE_ENABLE_PCI_ID_DEVICE_ORDER -e CROSSFL_LOCAL_RANK -e CROSSFL_LAUNCHED_AT -e TORCHELASTIC_RUN_ID -e RANK -e WORLD_SIZE -e LOCAL_RANK -e LOCAL_WORLD_SIZE -e MASTER_ADDR -e MASTER_PORT -e PARSL_MPI_NODELIST -e SLURM_PROCID -e SLURM_STEP_ID -e SLURM_STEP_NUM_TASKS -e SLURM_NTASKS -e SLURM_NPROCS -e SLURM_LOCALID -e SLURM_STEP_TASKS_PER_NODE -e SLURM_TASKS_PER_NODE -e SLURM_STEP_NODELIST -e SLURM_JOB_NODELIST -e SLURM_JOB_ID -v "$PWD:$PWD" -w "$PWD" crossfl-cuda python -m crossfl.client collective --expect cuda --mb 64
