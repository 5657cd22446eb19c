"""`hpcdesk image build | list`: desktop images in the site's image directory."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from hpcdesk import images
from hpcdesk.commands.common import emit_json, load_config, say
from hpcdesk.errors import EXIT_FAILED, EXIT_OK, HpcdeskError, UsageError


def _image_dir(args: argparse.Namespace) -> tuple[Path, str]:
    cfg = load_config(args).config
    return Path(cfg.runtime.image_dir).expanduser(), cfg.runtime.apptainer


def build(args: argparse.Namespace) -> int:
    try:
        flavor, tag = images.parse(f"{args.flavor}:{args.tag}" if args.tag else args.flavor)
    except images.ImageError as exc:
        raise UsageError(str(exc)) from None
    image_dir, apptainer = _image_dir(args)
    target = image_dir / images.image_name(flavor, tag)
    if target.exists() and not args.force:
        say(f"hpcdesk: {target} is already built (same recipe and tag); --force rebuilds it",
            args.json)
        if args.json:
            emit_json({"flavor": flavor.name, "tag": tag, "image": str(target), "built": False})
        return EXIT_OK
    image_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".partial-{os.getpid()}")
    argv = [*shlex.split(apptainer), "build", "--force",
            "--mksquashfs-args", " ".join(images.SQUASHFS_ARGS)]
    if flavor.upstream:
        argv += ["--build-arg", f"TAG={tag}"]
    for arg in args.build_arg:
        argv += ["--build-arg", arg]
    argv += [str(partial), str(images.definition_path(flavor))]
    say(f"hpcdesk: building {flavor.name}:{tag} -> {target}\n  {' '.join(argv)}", args.json)
    t0 = time.monotonic()
    log = target.with_suffix(".build.log")
    try:
        with open(log, "w") as fh:
            # From the definition's folder: %files sources are relative to it.
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, cwd=images.definition_path(flavor).parent)
            assert proc.stdout is not None
            for line in proc.stdout:
                fh.write(line)
                if not args.json:
                    print(f"  [{time.monotonic() - t0:6.0f}s] {line.rstrip()[:150]}", flush=True)
            rc = proc.wait()
    except FileNotFoundError:
        raise UsageError(f"{apptainer!r} not found: install Apptainer or set runtime.apptainer")\
            from None
    except KeyboardInterrupt:
        proc.terminate()
        partial.unlink(missing_ok=True)
        raise
    if rc != 0:
        partial.unlink(missing_ok=True)
        print(f"hpcdesk: error: apptainer build failed (exit {rc}); full log: {log}",
              file=sys.stderr)
        return EXIT_FAILED
    partial.rename(target)
    took = time.monotonic() - t0
    say(f"hpcdesk: built {target} in {took:.0f}s ({target.stat().st_size / 2**20:.0f} MiB)\n"
        f"  use it with: --image {flavor.name}" + (f":{tag}" if tag != flavor.tags[0] else ""),
        args.json)
    if args.json:
        emit_json({"flavor": flavor.name, "tag": tag, "image": str(target), "built": True,
                   "seconds": round(took, 1), "bytes": target.stat().st_size})
    return EXIT_OK


def list_images(args: argparse.Namespace) -> int:
    image_dir, _ = _image_dir(args)
    rows = []
    for flavor in images.FLAVORS.values():
        for tag in flavor.tags:
            path = image_dir / images.image_name(flavor, tag)
            size = path.stat().st_size if path.exists() else 0
            rows.append({"flavor": flavor.name, "tag": tag, "image": str(path),
                         "built": path.exists(), "bytes": size,
                         "description": flavor.description})
    if args.json:
        emit_json(rows)
        return EXIT_OK
    print(f"images in {image_dir}:")
    for r in rows:
        mib = float(str(r["bytes"])) / 2**20
        state = f"built, {mib:.0f} MiB" if r["built"] else "not built"
        name = f"{r['flavor']}:{r['tag']}"
        print(f"  {name:<18} {state:<18} {Path(str(r['image'])).name}")
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    try:
        return build(args) if args.image_command == "build" else list_images(args)
    except images.ImageError as exc:
        raise HpcdeskError(str(exc)) from None
