"""Worker images: one Apptainer definition per accelerator, rendered from containers/crossfl.def.j2
and containers/arches.yaml into build/images/crossfl-ARCH.def; `apptainer build`/`sign` on it;
the sha256 and labels of every built image in build/images/manifest.json.

arches.py      the per-accelerator table (containers/arches.yaml)
pins.py        versions shared with the login node (requirements/)
layout.py      where images and the manifest live
definition.py  rendering the def file and staging its %files
defparse.py    reading def files as Apptainer does
manifest.py    digests and manifest.json
apptainer.py   apptainer build / sign / inspect
check.py       the cpu image's build steps, run here
"""

from crossfl.images.apptainer import GET_APPTAINER, apptainer, build_image, sign_image
from crossfl.images.arches import ArchSpec, ArchTable, arch_names, get_arch, load_arches
from crossfl.images.check import StepsCheck, check_build_steps
from crossfl.images.definition import (
                                     CHECKER,
                                     TEMPLATE,
                                     check_args,
                                     git_commit,
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

__all__ = ["CHECKER", "GET_APPTAINER", "MUST_AGREE", "PREFIX", "TEMPLATE", "ArchSpec", "ArchTable",
           "DefFile", "ImagePins", "Manifest", "ManifestEntry", "Section", "Stage", "StepsCheck",
           "apply_build_args", "apptainer", "arch_names", "build_args", "build_image",
           "check_args", "check_build_steps", "def_path", "display_path", "files", "get_arch",
           "git_commit", "image_digest", "image_pins", "images_dir", "labels", "load_arches",
           "manifest_path", "parse_def", "python_minor", "read_constraints", "read_manifest",
           "record_image", "render_def", "render_text", "sif_path", "sign_image",
           "worker_requirements"]
