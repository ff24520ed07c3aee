#!/bin/bash
#SBATCH -J crossfl-client-perlmutter
#SBATCH -N 1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=128
#SBATCH -t 01:00:00
#SBATCH -o crossfl-client-perlmutter-%j.out
#SBATCH -A m0000_g
#SBATCH -q regular
#SBATCH -C gpu
#SBATCH --gpus-per-node=4
# crossfl direct client job for perlmutter: run one client round from a task file, without an
# endpoint. Submit: sbatch client.sh TASK.json RESULT.json
set -euo pipefail

# Facility setup: modules, proxy, environment (from deploy/sites/perlmutter.yaml)
export FI_MR_CACHE_MONITOR=userfaultfd
export NCCL_NET_GDR_LEVEL=PHB
export NCCL_SOCKET_IFNAME=hsn

task="$(realpath "${1:?usage: client.sh TASK.json RESULT.json}")"
out="$(realpath -m "${2:?usage: client.sh TASK.json RESULT.json}")"
srun --nodes=1 --ntasks=1 --ntasks-per-node=1 --cpus-per-task=128 --gpus-per-task=1 --gpu-bind=closest podman-hpc shared-run --gpu -v /pscratch:/pscratch -v /global/cfs:/global/cfs -e FI_MR_CACHE_MONITOR=userfaultfd -e NCCL_NET_GDR_LEVEL=PHB -e NCCL_SOCKET_IFNAME=hsn -e HF_HUB_OFFLINE=1 --network=host --ipc=host -v /dev/shm:/dev/shm -e CUDA_VISIBLE_DEVICES -e ROCR_VISIBLE_DEVICES -e ZE_AFFINITY_MASK -e ZE_ENABLE_PCI_ID_DEVICE_ORDER -e CROSSFL_LOCAL_RANK -e CROSSFL_LAUNCHED_AT -e TORCHELASTIC_RUN_ID -e RANK -e WORLD_SIZE -e LOCAL_RANK -e LOCAL_WORLD_SIZE -e MASTER_ADDR -e MASTER_PORT -e PARSL_MPI_NODELIST -e SLURM_PROCID -e SLURM_STEP_ID -e SLURM_STEP_NUM_TASKS -e SLURM_NTASKS -e SLURM_NPROCS -e SLURM_LOCALID -e SLURM_STEP_TASKS_PER_NODE -e SLURM_TASKS_PER_NODE -e SLURM_STEP_NODELIST -e SLURM_JOB_NODELIST -e SLURM_JOB_ID -v "$PWD:$PWD" -w "$PWD" crossfl-cuda python -m crossfl.client run-task "$task" "$out"
test -s "$out"
echo "crossfl client result: $out"
