#!/bin/bash

#PBS -S /bin/bash
#PBS -N x.<time>
#PBS -m n
#PBS -l walltime=01:00:00
#PBS -l select=1:ncpus=208
#PBS -o <script_dir>/x.<time>.stdout
#PBS -e <script_dir>/x.<time>.stderr
#PBS -l filesystems=home:flare
#PBS -k doe
#PBS -l place=scatter


module load apptainer
export http_proxy=http://proxy.alcf.anl.gov:3128
export HTTP_PROXY=http://proxy.alcf.anl.gov:3128
export https_proxy=http://proxy.alcf.anl.gov:3128
export HTTPS_PROXY=http://proxy.alcf.anl.gov:3128
export no_proxy='admin,*.hostmgmt.cm.aurora.alcf.anl.gov,*.alcf.anl.gov,localhost'
export NO_PROXY='admin,*.hostmgmt.cm.aurora.alcf.anl.gov,*.alcf.anl.gov,localhost'
export TMPDIR=/tmp
export ZE_FLAT_DEVICE_HIERARCHY=FLAT
export APPTAINERENV_ONEAPI_DEVICE_SELECTOR=level_zero:gpu
export APPTAINERENV_SYCL_DEVICE_FILTER=level_zero:gpu
export APPTAINERENV_CCL_ATL_TRANSPORT=ofi
export APPTAINERENV_CCL_ZE_IPC=0
export APPTAINERENV_CCL_ZE_IPC_EXCHANGE=sockets
export APPTAINERENV_FI_PROVIDER=tcp
export APPTAINERENV_I_MPI_PMI_LIBRARY=/hostlib64/libpmix.so.2
export APPTAINERENV_HF_HUB_OFFLINE=1
export APPTAINERENV_ZE_FLAT_DEVICE_HIERARCHY=FLAT


export JOBNAME="x.<time>"

set -e
export CORES=$(getconf _NPROCESSORS_ONLN)
[[ "1" == "1" ]] && echo "Found cores : $CORES"
WORKERCOUNT=1
SCRIPT_DIR="<script_dir>"
[[ -d $SCRIPT_DIR ]] || SCRIPT_DIR=""

# Deduplicate the nodefile
HOSTFILE="$JOBNAME.nodes"
if [ -z "$PBS_NODEFILE" ]; then
    echo "localhost" > $HOSTFILE
else
    sort -u $PBS_NODEFILE > $HOSTFILE
fi

cat << MPIEXEC_EOF > ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh
apptainer run --fakeroot -B /lus/flare -B /usr/lib64:/hostlib64 -B <script_dir>/run /lus/flare/projects/TestProject/$USER/crossfl/images/crossfl-xpu.sif globus-compute-endpoint python-exec parsl.executors.high_throughput.process_worker_pool {debug} {max_workers_per_node} -a {addresses} -p {prefetch_capacity} -c {cores_per_worker} -m {mem_per_worker} --poll {poll_period} --port={worker_port} --cert_dir {cert_dir} --logdir={logdir} --logconf={logconf} --block_id={{block_id}} --hb_period={heartbeat_period} {address_probe_timeout_string} --hb_threshold={heartbeat_threshold} --drain_period={drain_period} --cpu-affinity {cpu_affinity} {enable_mpi_mode} --mpi-launcher={mpi_launcher} --available-accelerators {accelerators}
MPIEXEC_EOF
chmod u+x ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh

mpiexec --cpu-bind none --ppn 1 -n $WORKERCOUNT --hostfile $HOSTFILE /usr/bin/sh ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh

[[ "1" == "1" ]] && echo "All workers done"



# submitted with: qsub  -q debug -A TestProject <script_dir>/x.<time>
