<% for line in client_header %>
<< line >>
<% endfor %>
# crossfl direct client job for << site >>: run one client round from a task file, without an
# endpoint. Submit: << submit >> client.sh TASK.json RESULT.json
<% include "batch/_body_setup.sh" %>

task="$(realpath "${1:?usage: client.sh TASK.json RESULT.json}")"
out="$(realpath -m "${2:?usage: client.sh TASK.json RESULT.json}")"
<% if bind %>
# shellcheck disable=SC2016  # "$@" belongs to the rank's own bash
<% endif %>
<< client_line >>
test -s "$out"
echo "crossfl client result: $out"
