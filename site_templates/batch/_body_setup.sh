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

# Each rank takes one device by its local rank (the launcher does not bind devices here).
bind_rank() {
<% for line in bind %>
  << line >>
<% endfor %>
  exec "$@"
}
export -f bind_rank
<% endif %>
