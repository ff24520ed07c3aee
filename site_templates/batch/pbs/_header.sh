#!/bin/bash -l
#PBS -N << job_name >>
#PBS -l << select >>
#PBS -l walltime=<< walltime >>
#PBS -j oe
<% for d in directives %>
#PBS << d >>
<% endfor %>
