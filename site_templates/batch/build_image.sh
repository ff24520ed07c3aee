<% for line in build.header %>
<< line >>
<% endfor %>
# crossfl image build for << site >>: the facility builds images on a compute node (fakeroot
# needs the node's user namespace; the proxy reaches the registries).
# Submit: << submit >> build_image.sh   (image definition: << build.root >>/<< build.def_file >>)
set -euo pipefail
<% for line in job_start %>
<< line >>
<% endfor %>
<% include "batch/_build_body.sh" %>
