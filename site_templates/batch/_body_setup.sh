set -euo pipefail
<% for line in job_start %>
<< line >>
<% endfor %>

# Facility setup: modules, proxy, environment (from deploy/sites/<< site >>.yaml)
<% for line in setup %>
<% if line.sources %>
# shellcheck source=/dev/null
<% endif %>
<< line.text >>
<% endfor %>
<% if bind %>

# Rank i gets what Parsl's worker pool gives worker i: device i of the site's ids, in the same
# variables (its CPUs come from the launcher's binding, the workers' cpu_affinity).
bind_rank() {
<% for line in bind %>
  << line >>
<% endfor %>
  exec "$@"
}
export -f bind_rank
<% endif %>
