#!/bin/bash -l
#PBS -N << job_name >>
#PBS -l << select >>
#PBS -l walltime=<< walltime >>
#PBS -j oe
<% for d in directives %>
#PBS << d >>
<% endfor %>
<% if not account %>
# No account in the catalog or your overrides: submit with `qsub -A <project>`, or set `account` in
# deploy/sites/overrides/<< site >>.yaml (or the site's ${VAR}) and render again.
<% endif %>
