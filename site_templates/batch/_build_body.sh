<% for d in build.module_use %>
module use << d | sq >>
<% endfor %>
<% for m in build.modules %>
module load << m | sq >>
<% endfor %>
<% for k, v in build.env.items() %>
export << k >>=<< v | sq >>
<% endfor %>
<% for d in build.make_dirs %>
mkdir -p "$<< d >>"
<% endfor %>

<% if build.runtime == "podman-hpc" %>
# The Containerfile and its context (build/images/ from `make image-containerfile`) were
# unpacked in << build.root >>: the build's whole context, its COPY paths relative to it.
cd << build.root | sq >>
name=<< build.image | sq >>
image="${1:?usage: build_image.sh $name:TAG (crossfl deploy gives its build key)}"
podman-hpc build<% for o in build.options %> << o | sq >><% endfor %> -f << build.def_file | sq >> -t "$image" .
# squashed into $SCRATCH/storage, where the compute nodes find it
podman-hpc migrate "$image"
podman-hpc image inspect "$image"
<% else %>
# The def file and the context it stages (build/images/ from `make image-def`) were copied to
# << build.root >>/build/images/; its %files paths are relative to << build.root >>.
cd << build.root | sq >>
def=<< build.def_file | sq >>
image=<< build.image | sq >>
mkdir -p "$(dirname "$image")"
# %post does not see this environment: the proxies go in as build arguments.
apptainer build<% for o in build.options %> << o | sq >><% endfor %> \
<% for a in build.build_args %>
  --build-arg "<< a >>=$<< a >>" \
<% endfor %>
  "$image.tmp" "$def"
mv "$image.tmp" "$image"
apptainer inspect --labels "$image"
<% endif %>
