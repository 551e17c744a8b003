"""The Debian Linux kernel the real-driver runs boot: fetched with apt, cached small.

``linux-image-amd64`` is a metapackage; the kernel is the ``linux-image-<abi>-amd64``
package it depends on. :func:`fetch_kernel` downloads that with ``apt-get download``,
unpacks it with ``dpkg -x`` into a scratch directory and keeps only what a boot needs: the
vmlinuz, the config, and the virtio modules with everything they depend on (read from each
module's .modinfo section, since the package ships no modules.dep), plus the order to load
them in. The cache holds nothing that cannot be rebuilt by running this again:

    python -m virtio_sim.orchestration.qemu.kernel [CACHE_DIR]

The default cache is ``$VIRTIO_SIM_LINUX_CACHE`` or ``build/linux`` in the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from virtio_sim.orchestration.qemu.tools import MissingTool

METAPACKAGE = "linux-image-amd64"
#: the drivers a boot loads (module names); their dependencies come along
WANTED_MODULES = ("virtio_pci", "virtio_mmio", "virtio_blk", "virtio_rng", "virtio_net", "virtio_console")
MANIFEST = "manifest.json"
REPO_ROOT = Path(__file__).resolve().parents[3]
APT_HINT = "apt-get update, then apt-get download linux-image-amd64 must work"


class KernelFetchError(Exception):
    pass


@dataclass(frozen=True)
class KernelImage:
    """A cached kernel: the image and the modules to insmod, in load order."""

    root: Path
    package: str
    release: str  # uname -r

    @property
    def vmlinuz(self) -> Path:
        return self.root / "vmlinuz"

    @property
    def config(self) -> Path:
        return self.root / "config"

    def modules(self) -> list[Path]:
        order = (self.root / "load-order").read_text().split()
        return [self.root / "modules" / f"{name}.ko" for name in order]


def default_cache_dir() -> Path:
    env = os.environ.get("VIRTIO_SIM_LINUX_CACHE")
    return Path(env) if env else REPO_ROOT / "build" / "linux"


def cache_name(package: str) -> str:
    """A cache directory per module set: a cache with fewer drivers is never replaced
    under a run that uses it, and never taken for one that needs more."""
    digest = hashlib.sha256(" ".join(WANTED_MODULES).encode()).hexdigest()[:8]
    return f"{package}-{digest}"


def cached_kernel(cache: Path) -> KernelImage | None:
    """The most recently fetched kernel in ``cache`` that has every wanted driver."""
    found: list[tuple[float, KernelImage]] = []
    if not cache.is_dir():
        return None
    for d in cache.iterdir():
        m = d / MANIFEST
        if m.is_file():
            info = json.loads(m.read_text())
            if not set(WANTED_MODULES) <= set(info.get("wanted", ())):
                continue  # fetched for fewer drivers
            found.append((m.stat().st_mtime, KernelImage(d, info["package"], info["release"])))
    return max(found, key=lambda f: f[0])[1] if found else None


def modinfo(path: Path) -> dict[str, str]:
    """name= and depends= of a .ko, from the NUL-separated strings of its .modinfo section."""
    data = path.read_bytes()
    out: dict[str, str] = {}
    for key in ("name", "depends"):
        m = re.search(rb"(?:^|\0)" + key.encode() + rb"=([^\0]*)\0", data)
        if m:
            out[key] = m.group(1).decode()
    return out


def resolve_modules(kernel_dir: Path, wanted: tuple[str, ...]) -> list[tuple[str, Path]]:
    """Module files for ``wanted`` and their dependencies, dependencies first."""
    by_name: dict[str, Path] = {}
    for ko in kernel_dir.rglob("*.ko"):
        by_name.setdefault(ko.stem.replace("-", "_"), ko)
    order: list[tuple[str, Path]] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if any(n == name for n, _ in order):
            return
        if name in visiting:
            raise KernelFetchError(f"module dependency loop at {name}")
        path = by_name.get(name)
        if path is None:
            raise KernelFetchError(f"module {name} is not in the kernel package (built in?)")
        visiting.add(name)
        for dep in filter(None, modinfo(path).get("depends", "").split(",")):
            visit(dep)
        visiting.discard(name)
        order.append((name, path))

    for name in wanted:
        visit(name)
    return order


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    if shutil.which(cmd[0]) is None:
        raise MissingTool(f"{cmd[0]} is not available (the kernel comes from Debian packages: {APT_HINT})")
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise KernelFetchError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]} ({APT_HINT})")
    return done.stdout


def kernel_package() -> str:
    """The versioned kernel package behind the metapackage (linux-image-6.1.0-NN-amd64)."""
    out = _run(["apt-cache", "depends", "--important", METAPACKAGE])
    m = re.search(r"Depends:\s*(linux-image-\S+)", out)
    if m is None:
        raise KernelFetchError(f"apt-cache depends {METAPACKAGE} names no kernel package ({APT_HINT})")
    return m.group(1)


def fetch_kernel(cache: Path | None = None) -> KernelImage:
    """Download, unpack and trim the current Debian kernel into ``cache``."""
    cache = cache or default_cache_dir()
    package = kernel_package()
    final = cache / cache_name(package)
    if (final / MANIFEST).is_file():
        return KernelImage(final, package, json.loads((final / MANIFEST).read_text())["release"])
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kernel-", dir=cache) as tmp:
        scratch = Path(tmp)
        _run(["apt-get", "download", package], cwd=scratch)
        debs = list(scratch.glob(f"{package}_*.deb"))
        if not debs:
            raise KernelFetchError(f"apt-get download {package} left no .deb")
        unpacked = scratch / "root"
        _run(["dpkg", "-x", str(debs[0]), str(unpacked)])
        images = sorted((unpacked / "boot").glob("vmlinuz-*"))
        if not images:
            raise KernelFetchError(f"{package} has no /boot/vmlinuz-*")
        release = images[0].name.removeprefix("vmlinuz-")
        kdir = next(
            p for p in (unpacked / "lib" / "modules", unpacked / "usr" / "lib" / "modules") if p.is_dir()
        )
        modules = resolve_modules(kdir / release / "kernel", WANTED_MODULES)
        staged = scratch / "staged"
        (staged / "modules").mkdir(parents=True)
        shutil.copy(images[0], staged / "vmlinuz")
        shutil.copy(unpacked / "boot" / f"config-{release}", staged / "config")
        for name, path in modules:
            shutil.copy(path, staged / "modules" / f"{name}.ko")
        (staged / "load-order").write_text("\n".join(name for name, _ in modules) + "\n")
        manifest = {"package": package, "release": release, "wanted": list(WANTED_MODULES)}
        (staged / MANIFEST).write_text(json.dumps(manifest))
        if final.exists():
            shutil.rmtree(final)
        staged.rename(final)
    return KernelImage(final, package, release)


def ensure_kernel(cache: Path | None = None) -> KernelImage:
    """The cached kernel, fetched first if the cache has none."""
    cache = cache or default_cache_dir()
    return cached_kernel(cache) or fetch_kernel(cache)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    cache = Path(args[0]) if args else default_cache_dir()
    try:
        image = fetch_kernel(cache)
    except (KernelFetchError, MissingTool) as e:
        print(f"kernel: {e}", file=sys.stderr)
        return 1
    print(f"{image.package} ({image.release}) in {image.root}: {len(image.modules())} modules")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
