#!/bin/bash
#SBATCH -J << job_name >>
#SBATCH -N << nodes >>
#SBATCH --ntasks-per-node=<< ntasks_per_node >>
#SBATCH -t << walltime >>
#SBATCH -o << job_name >>-%j.out
<% for d in directives %>
#SBATCH << d >>
<% endfor %>
