"""Checks a crossfl worker image from inside: run by the def file's %post (end of the build) and
%test (`apptainer test IMAGE`). Standard library plus torch; exits non-zero with one line per
failure.

  --python-minor 3.11      the interpreter's minor must equal the endpoint's
  --torch 2.13.0+cu128     torch.__version__ exactly: the vendor build, not a generic wheel
  --stack cuda|rocm|xpu|cpu [--stack-version 12.8]
                           the accelerator stack torch was built for must be there
  (xpu: the SYCL / Level Zero loader libraries torch loaded must be the venv's own)
  --pin NAME==VERSION      installed distributions that must equal the login node's
  --pip-check              `pip check`, ignoring crossfl's own (server-side) requirements
  --devices                import crossfl, print describe_devices() as JSON, and run one op on
                           the selected device when it is an accelerator
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

WORKER_COMMANDS = ("globus-compute-endpoint", "process_worker_pool.py")


def check_stack(torch: object, stack: str, stack_version: str | None) -> list[str]:
    version = torch.version  # type: ignore[attr-defined]
    cuda = getattr(version, "cuda", None)
    hip = getattr(version, "hip", None)
    if stack == "cuda":
        if not cuda:
            return ["torch.version.cuda is not set: this torch is not a CUDA build"]
        if hip:
            return [f"torch.version.hip={hip}: a ROCm build where a CUDA build belongs"]
        if stack_version and not cuda.startswith(stack_version):
            return [f"torch.version.cuda={cuda}, expected {stack_version}.x"]
        return []
    if stack == "rocm":
        if not hip:
            return ["torch.version.hip is not set: this torch is not a ROCm build"]
        if stack_version and not hip.startswith(stack_version):
            return [f"torch.version.hip={hip}, expected {stack_version}.x"]
        return []
    if stack == "xpu":
        xpu = getattr(torch, "xpu", None)
        if xpu is None or not xpu._is_compiled():
            return ["torch has no compiled XPU backend: this torch is not an XPU build"]
        return []
    if cuda or hip:
        return [f"a CPU image carries an accelerator build (cuda={cuda}, hip={hip})"]
    return []


# The oneAPI runtime libraries torch XPU takes from its pip dependencies (intel-sycl-rt, ...):
# loaded from anywhere but the venv, a base image's LD_LIBRARY_PATH has shadowed them.
VENV_RUNTIME_LIBS = ("libsycl.so", "libur_loader.so", "libumf.so", "libtcm.so")


def check_loaded_libs(maps: str, prefix: str) -> list[str]:
    """Which of VENV_RUNTIME_LIBS are mapped (a /proc/self/maps text) from outside `prefix`."""
    problems = []
    for line in maps.splitlines():
        path = line.split(None, 5)[5].strip() if len(line.split(None, 5)) == 6 else ""
        name = Path(path).name
        if any(name.startswith(lib) for lib in VENV_RUNTIME_LIBS) \
                and not path.startswith(prefix.rstrip("/") + "/"):
            problem = f"{name} loaded from {path}, not from {prefix}: LD_LIBRARY_PATH shadows it"
            if problem not in problems:
                problems.append(problem)
    return problems


def check_pins(pins: list[str]) -> list[str]:
    problems = []
    for pin in pins:
        name, _, want = pin.partition("==")
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{name} is not installed (the login node has {want})")
            continue
        if have != want:
            problems.append(f"{name} {have} here, {want} on the login node")
    return problems


def check_commands(on_path: bool) -> list[str]:
    """The worker commands must sit beside this interpreter; at run time (%test, with the image's
    %environment) they must also be what PATH finds first."""
    problems = []
    bindir = Path(sys.executable).parent
    for command in WORKER_COMMANDS:
        if not (bindir / command).is_file():
            problems.append(f"{command} is not installed in {bindir}")
        elif on_path and shutil.which(command) != str(bindir / command):
            found = shutil.which(command)
            problems.append(f"{command} is not on PATH" if found is None else
                            f"{command} on PATH is {found}, not {bindir / command}")
    return problems


def pip_check() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines()
             if line.strip() and not line.lower().startswith("crossfl ")
             and "no broken requirements" not in line.lower()]
    return [f"pip check: {line}" for line in lines]


def report_devices() -> list[str]:
    import torch

    import crossfl
    from crossfl.client.device import describe_devices

    info = describe_devices()
    print(json.dumps({"crossfl": crossfl.__version__, **info}, sort_keys=True))
    device = torch.device(str(info["device"]))
    if device.type != "cpu":
        x = torch.ones(64, 64, device=device)
        if float((x @ x).sum().item()) != 64.0 ** 3:
            return [f"a 64x64 matmul on {device} gave a wrong result"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-minor", required=True)
    parser.add_argument("--torch", required=True)
    parser.add_argument("--stack", required=True, choices=("cpu", "cuda", "rocm", "xpu"))
    parser.add_argument("--stack-version")
    parser.add_argument("--pin", action="append", default=[])
    parser.add_argument("--pip-check", action="store_true")
    parser.add_argument("--devices", action="store_true")
    args = parser.parse_args(argv)

    problems: list[str] = []
    minor = "%d.%d" % sys.version_info[:2]
    if minor != args.python_minor:
        problems.append(f"Python {minor} here, the endpoint runs {args.python_minor}")
    try:
        import torch
    except Exception as exc:  # the vendor stack failed to load: that is the finding
        problems.append(f"import torch failed: {exc}")
    else:
        if torch.__version__ != args.torch:
            problems.append(f"torch {torch.__version__} here, the image pins {args.torch}")
        problems += check_stack(torch, args.stack, args.stack_version)
        if args.stack == "xpu":
            problems += check_loaded_libs(Path("/proc/self/maps").read_text(),
                                          str(Path(sys.prefix).resolve()))
    problems += check_pins(args.pin)
    problems += check_commands(on_path=args.devices)
    if args.pip_check:
        problems += pip_check()
    if args.devices and not problems:
        problems += report_devices()
    for problem in problems:
        print(f"check_image.py: {problem}", file=sys.stderr)
    if not problems:
        print(f"check_image.py: ok (python {minor}, torch {args.torch}, {args.stack})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
