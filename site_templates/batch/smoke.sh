<% for line in smoke_header %>
<< line >>
<% endfor %>
# crossfl smoke test for << site >>: start the image on a compute node and print, per rank,
# what torch sees; then << smoke_ranks >> ranks on each of << smoke_nodes >> node(s) all-reduce and take one DDP
# step with the site's backend. Submit: << submit >> smoke.sh
<% include "batch/_body_setup.sh" %>

echo "crossfl smoke test on $(hostname) at $(date -u +%FT%TZ)"
<% if bind %>
# shellcheck disable=SC2016  # "$@" belongs to the rank's own bash
<% endif %>
<< smoke_line >>
# the collective: one JSON line per rank (its all-reduce and DDP step, backend, bandwidth)
<% if bind %>
# shellcheck disable=SC2016  # "$@" belongs to the rank's own bash
<% endif %>
<< collective_line >>
