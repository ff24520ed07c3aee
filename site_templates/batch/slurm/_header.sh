#!/bin/bash
#SBATCH -J << job_name >>
#SBATCH -N << nodes >>
#SBATCH --ntasks-per-node=<< ntasks_per_node >>
#SBATCH -t << walltime >>
#SBATCH -o << job_name >>-%j.out
<% for d in directives %>
#SBATCH << d >>
<% endfor %>
<% if not account %>
# No account in the catalog or your overrides: submit with `sbatch -A <account>`, or set `account` in
# deploy/sites/overrides/<< site >>.yaml (or the site's ${VAR}) and render again.
<% endif %>
