#!/bin/bash -l
#PBS -N crossfl-build-<< site >>
#PBS -l << select >>
#PBS -l walltime=<< build.walltime >>
#PBS -j oe
<% for d in build.directives %>
#PBS << d >>
<% endfor %>
# crossfl image build for << site >>: the facility builds images on a compute node (fakeroot
# needs the node's user namespace; the proxy reaches the registries).
# Submit: qsub build_image.sh   (image definition: << build.root >>/<< build.def_file >>)
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"
<% include "batch/_build_body.sh" %>
