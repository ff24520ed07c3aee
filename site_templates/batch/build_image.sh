<% for line in build.header %>
<< line >>
<% endfor %>
<% if build.on_compute_node %>
# crossfl image build for << site >>: the facility builds images on a compute node (fakeroot
# needs the node's user namespace; the proxy reaches the registries).
# Submit: << submit >> build_image.sh   (image definition: << build.root >>/<< build.def_file >>)
<% else %>
# crossfl image build for << site >>, run with bash on the login node by `crossfl deploy`
# (container.image_source.method: build); the header above is unused there.
# Run: bash build_image.sh   (image definition: << build.root >>/<< build.def_file >>)
<% endif %>
set -euo pipefail
<% for line in job_start %>
<< line >>
<% endfor %>
<% include "batch/_build_body.sh" %>
