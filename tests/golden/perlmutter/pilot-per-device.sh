#!/bin/bash

#SBATCH --job-name=x.<time>
#SBATCH --output=<script_dir>/x.<time>.stdout
#SBATCH --error=<script_dir>/x.<time>.stderr
#SBATCH --nodes=1
#SBATCH --time=60
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4

#SBATCH --exclusive
#SBATCH --account=m0000_g
#SBATCH --qos=regular
#SBATCH --constraint=gpu


export FI_MR_CACHE_MONITOR=userfaultfd
export NCCL_NET_GDR_LEVEL=PHB
export NCCL_SOCKET_IFNAME=hsn



export JOBNAME="x.<time>"

set -e
export CORES=$SLURM_CPUS_ON_NODE
export NODES=$SLURM_JOB_NUM_NODES

[[ "1" == "1" ]] && echo "Found cores : $CORES"
[[ "1" == "1" ]] && echo "Found nodes : $NODES"
WORKERCOUNT=1
SCRIPT_DIR="<script_dir>"
[[ -d $SCRIPT_DIR ]] || SCRIPT_DIR=""

cat << SLURM_EOF > ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$SLURM_JOB_NAME.sh
podman-hpc run --gpu -v /pscratch:/pscratch -v /global/cfs:/global/cfs -e FI_MR_CACHE_MONITOR=userfaultfd -e NCCL_NET_GDR_LEVEL=PHB -e NCCL_SOCKET_IFNAME=hsn -e HF_HUB_OFFLINE=1 -v <script_dir>/run:<script_dir>/run -t crossfl-cuda globus-compute-endpoint python-exec parsl.executors.high_throughput.process_worker_pool {debug} {max_workers_per_node} -a {addresses} -p {prefetch_capacity} -c {cores_per_worker} -m {mem_per_worker} --poll {poll_period} --port={worker_port} --cert_dir {cert_dir} --logdir={logdir} --logconf={logconf} --block_id={{block_id}} --hb_period={heartbeat_period} {address_probe_timeout_string} --hb_threshold={heartbeat_threshold} --drain_period={drain_period} --cpu-affinity {cpu_affinity} {enable_mpi_mode} --mpi-launcher={mpi_launcher} --available-accelerators {accelerators}
SLURM_EOF
chmod a+x ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$SLURM_JOB_NAME.sh

srun --ntasks 1 -l -c 128 bash ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$SLURM_JOB_NAME.sh

[[ "1" == "1" ]] && echo "Done"


# submitted with: sbatch <script_dir>/x.<time>
