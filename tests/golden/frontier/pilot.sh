#!/bin/bash

#SBATCH --job-name=x.<time>
#SBATCH --output=<script_dir>/x.<time>.stdout
#SBATCH --error=<script_dir>/x.<time>.stderr
#SBATCH --nodes=1
#SBATCH --time=60
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8

#SBATCH --exclusive
#SBATCH --partition=batch
#SBATCH --account=ABC123
#SBATCH --qos=normal


module load olcf-container-tools
module load apptainer-enable-mpi
module load apptainer-enable-gpu
export http_proxy=http://proxy.ccs.ornl.gov:3128/
export HTTP_PROXY=http://proxy.ccs.ornl.gov:3128/
export https_proxy=http://proxy.ccs.ornl.gov:3128/
export HTTPS_PROXY=http://proxy.ccs.ornl.gov:3128/
export no_proxy='localhost,127.0.0.0/8,*.ccs.ornl.gov'
export NO_PROXY='localhost,127.0.0.0/8,*.ccs.ornl.gov'
export MIOPEN_USER_DB_PATH=/tmp/crossfl-miopen-cache
export MIOPEN_CUSTOM_CACHE_DIR=/tmp/crossfl-miopen-cache
export NCCL_SOCKET_IFNAME=hsn0,hsn1,hsn2,hsn3
export NCCL_CROSS_NIC=1
export NCCL_NET_GDR_LEVEL=PHB
export APPTAINERENV_HF_HUB_OFFLINE=1
mkdir -p /tmp/crossfl-miopen-cache
source "$HOME/.crossfl/frontier/endpoint/bin/activate"



export JOBNAME="x.<time>"

globus-compute-endpoint python-exec parsl.executors.high_throughput.process_worker_pool {debug} {max_workers_per_node} -a {addresses} -p {prefetch_capacity} -c {cores_per_worker} -m {mem_per_worker} --poll {poll_period} --port={worker_port} --cert_dir {cert_dir} --logdir={logdir} --logconf={logconf} --block_id={{block_id}} --hb_period={heartbeat_period} {address_probe_timeout_string} --hb_threshold={heartbeat_threshold} --drain_period={drain_period} --cpu-affinity {cpu_affinity} {enable_mpi_mode} --mpi-launcher={mpi_launcher} --available-accelerators {accelerators}

# submitted with: sbatch <script_dir>/x.<time>
