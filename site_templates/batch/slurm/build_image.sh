#!/bin/bash
#SBATCH -J crossfl-build-<< site >>
#SBATCH -N 1
#SBATCH -t << build.walltime >>
#SBATCH -o crossfl-build-<< site >>-%j.out
<% for d in build.directives %>
#SBATCH << d >>
<% endfor %>
# crossfl image build for << site >>: the facility builds images on a compute node (fakeroot
# needs the node's user namespace; the proxy reaches the registries).
# Submit: sbatch build_image.sh   (image definition: << build.root >>/<< build.def_file >>)
set -euo pipefail
<% include "batch/_build_body.sh" %>
