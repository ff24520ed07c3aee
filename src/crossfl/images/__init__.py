"""Worker images: one Apptainer definition (and one OCI Containerfile) per accelerator, rendered
from containers/ (arches.yaml, steps.j2, crossfl.def.j2, Containerfile.j2) into build/images/;
`apptainer build`/`sign` on the def; the sha256 and labels of every built image in
build/images/manifest.json.

`make image-check` (a real cpu-debian build here, and a federation inside it) is test
scaffolding, not part of the product: testkit/image_check.py and testkit/rootfs.py.

arches.py      the per-accelerator table (containers/arches.yaml)
published.py   what upstream publishes, with sources (containers/published.yaml)
pins.py        versions shared with the login node (requirements/)
buildenv.py    build arguments from the host (proxies, pip) and the hosts a build reaches
layout.py      where images and the manifest live
definition.py  rendering the def file and the Containerfile, staging their context
defparse.py    reading def files as Apptainer does
mounts.py      what a container sees under Apptainer's mounts (binds vs the image prefix)
manifest.py    digests and manifest.json
apptainer.py   apptainer build / sign / inspect
"""

from crossfl.images.apptainer import GET_APPTAINER, apptainer, build_image, sign_image
from crossfl.images.arches import ArchSpec, ArchTable, arch_names, get_arch, load_arches
from crossfl.images.buildenv import BUILD_SETTINGS, build_arg_values, build_hosts
from crossfl.images.definition import (
    CHECKER,
    TEMPLATE,
    check_args,
    git_commit,
    image_environment,
    render_containerfile,
    render_containerfile_text,
    render_def,
    render_text,
)
from crossfl.images.defparse import (
    DefFile,
    Section,
    Stage,
    apply_build_args,
    build_args,
    files,
    labels,
    parse_def,
)
from crossfl.images.layout import (
    PREFIX,
    containerfile_path,
    context_path,
    def_path,
    display_path,
    images_dir,
    manifest_path,
    sif_path,
)
from crossfl.images.manifest import (
    Manifest,
    ManifestEntry,
    image_digest,
    read_manifest,
    record_image,
)
from crossfl.images.pins import (
    MUST_AGREE,
    ImagePins,
    image_pins,
    python_minor,
    read_constraints,
    worker_requirements,
)
from crossfl.images.published import check_pins, load_published, pin_problems

__all__ = [
    "BUILD_SETTINGS",
    "CHECKER",
    "GET_APPTAINER",
    "MUST_AGREE",
    "PREFIX",
    "TEMPLATE",
    "ArchSpec",
    "ArchTable",
    "DefFile",
    "ImagePins",
    "Manifest",
    "ManifestEntry",
    "Section",
    "Stage",
    "apply_build_args",
    "apptainer",
    "arch_names",
    "build_arg_values",
    "build_args",
    "build_hosts",
    "build_image",
    "check_args",
    "check_pins",
    "containerfile_path",
    "context_path",
    "def_path",
    "display_path",
    "files",
    "get_arch",
    "git_commit",
    "image_digest",
    "image_environment",
    "image_pins",
    "images_dir",
    "labels",
    "load_arches",
    "load_published",
    "manifest_path",
    "parse_def",
    "pin_problems",
    "python_minor",
    "read_constraints",
    "read_manifest",
    "record_image",
    "render_containerfile",
    "render_containerfile_text",
    "render_def",
    "render_text",
    "sif_path",
    "sign_image",
    "worker_requirements",
]
