#!/bin/bash

#PBS -S /bin/bash
#PBS -N x.<time>
#PBS -m n
#PBS -l walltime=01:00:00
#PBS -l select=1:ncpus=64:system=polaris
#PBS -o <script_dir>/x.<time>.stdout
#PBS -e <script_dir>/x.<time>.stderr
#PBS -l filesystems=home:eagle
#PBS -l place=scatter
#PBS -l singularity_fakeroot=true


module use /soft/modulefiles
module load spack-pe-base
module load apptainer
export http_proxy=http://proxy.alcf.anl.gov:3128
export HTTP_PROXY=http://proxy.alcf.anl.gov:3128
export https_proxy=http://proxy.alcf.anl.gov:3128
export HTTPS_PROXY=http://proxy.alcf.anl.gov:3128
export no_proxy='admin,polaris-adminvm-01,localhost,*.cm.polaris.alcf.anl.gov,polaris-*,*.polaris.alcf.anl.gov,*.alcf.anl.gov'
export NO_PROXY='admin,polaris-adminvm-01,localhost,*.cm.polaris.alcf.anl.gov,polaris-*,*.polaris.alcf.anl.gov,*.alcf.anl.gov'
export TMPDIR=/tmp
export APPTAINERENV_HF_HUB_OFFLINE=1
source "$HOME/.crossfl/polaris/endpoint/bin/activate"


export JOBNAME="x.<time>"

globus-compute-endpoint python-exec parsl.executors.high_throughput.process_worker_pool {debug} {max_workers_per_node} -a {addresses} -p {prefetch_capacity} -c {cores_per_worker} -m {mem_per_worker} --poll {poll_period} --port={worker_port} --cert_dir {cert_dir} --logdir={logdir} --logconf={logconf} --block_id={{block_id}} --hb_period={heartbeat_period} {address_probe_timeout_string} --hb_threshold={heartbeat_threshold} --drain_period={drain_period} --cpu-affinity {cpu_affinity} {enable_mpi_mode} --mpi-launcher={mpi_launcher} --available-accelerators {accelerators}


# submitted with: qsub  -q debug -A TestProject <script_dir>/x.<time>
