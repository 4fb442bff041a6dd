"""Build AWS Lambda layers of cira_db: one zip per Python runtime and architecture.

    python tools/build_layer.py                      # every supported target
    python tools/build_layer.py --target python3.12-x86_64 --out dist/layers

Each layer holds cira_db and its runtime dependencies under ``python/``,
installed by pip from manylinux wheels only (``--only-binary=:all:``) for the
target's interpreter and platform, never from the build machine's. Then:
no ``bin/`` scripts, no ``cira_db.testing`` (a pytest plugin a function never
loads), no boto3/botocore (the runtime has them), and no bytecode but the
target's own: when an interpreter of the target's Python version is found
here, every module is compiled by it as ``unchecked-hash`` ``.pyc`` files
(``/opt`` is read-only in Lambda, so without them each cold start compiles
cira_db and psycopg again; a zip does not keep exact mtimes, so the hash kind
that never looks at the source is the one that always loads). ``--no-bytecode``
or no such interpreter: the layer ships sources only, and says so.
Every build checks each wheel's tags against the runtime's glibc, each shared
library's ELF machine against the architecture, and the sizes against
Lambda's limits; any failure stops the build with the reason.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZIPPED_LIMIT = 50 * 1024 * 1024  # direct upload of a layer zip
UNZIPPED_LIMIT = 250 * 1024 * 1024  # function plus all its layers, unzipped
ELF_MACHINES = {"x86_64": 62, "arm64": 183}  # e_machine: EM_X86_64, EM_AARCH64
WHEEL_ARCH = {"x86_64": "x86_64", "arm64": "aarch64"}
LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
NEVER_IN_A_LAYER = ("boto3", "botocore", "s3transfer", "pytest", "testcontainers")
PYC_UNCHECKED_HASH = 0b01  # PEP 552 flags: hash-based, source never checked


class LayerError(RuntimeError):
    """A layer that must not be published: the message says why."""


@dataclass(frozen=True)
class Target:
    """One Lambda runtime on one architecture."""

    python: str  # "3.12"
    arch: str  # "x86_64" | "arm64"
    glibc: tuple[int, int]  # of the runtime's operating system
    platforms: tuple[str, ...]  # pip --platform values
    pins: tuple[str, ...] = ()  # extra requirements for this target only
    refused: str | None = None  # why this target is not built

    @property
    def name(self) -> str:
        """``python3.12-x86_64``: the runtime identifier and the architecture."""
        return f"python{self.python}-{self.arch}"


_AL2 = (2, 26)  # Amazon Linux 2: the python3.11 runtime
_AL2023 = (2, 34)  # Amazon Linux 2023: python3.12 and later
_X86 = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")
_ARM = ("manylinux2014_aarch64", "manylinux_2_28_aarch64")

TARGETS = (
    Target("3.11", "x86_64", _AL2, ("manylinux2014_x86_64",)),
    # psycopg-binary 3.3 ships aarch64 wheels for manylinux_2_28 only, which
    # Amazon Linux 2 (glibc 2.26) cannot load; 3.2 still has manylinux2014 ones.
    Target("3.11", "arm64", _AL2, ("manylinux2014_aarch64",), pins=("psycopg[binary]<3.3",)),
    Target("3.12", "x86_64", _AL2023, _X86),
    Target("3.12", "arm64", _AL2023, _ARM),
    Target("3.13", "x86_64", _AL2023, _X86),
    Target("3.13", "arm64", _AL2023, _ARM),
)


@dataclass(frozen=True)
class Layer:
    """A built layer zip and what it weighs."""

    path: Path
    zipped: int
    unzipped: int


def find_target(name: str) -> Target:
    """The target called ``name`` (``python3.12-arm64``), or LayerError."""
    for target in TARGETS:
        if target.name == name:
            return target
    known = ", ".join(t.name for t in TARGETS)
    raise LayerError(f"unknown target {name!r}; known: {known}")


def project_version() -> str:
    """cira_db's version, read from the source tree."""
    text = (ROOT / "src" / "cira_db" / "_version.py").read_text()
    match = re.search(r'__version__\s*=\s*"([^"]+)"', text)
    if not match:
        raise LayerError("no __version__ in src/cira_db/_version.py")
    return match.group(1)


def build_wheel(outdir: Path) -> Path:
    """Build cira_db's own wheel (hatchling, through ``python -m build``)."""
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(outdir)])
    wheels = sorted(outdir.glob("cira_db-*.whl"))
    if len(wheels) != 1:
        raise LayerError(f"expected one cira_db wheel in {outdir}, found {len(wheels)}")
    return wheels[0]


def pip_install(target: Target, wheel: Path, site: Path) -> None:
    """Install ``wheel`` and its dependencies for ``target`` into ``site``."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-warn-conflicts"]
    command += ["--only-binary=:all:", "--implementation", "cp"]
    command += ["--python-version", target.python, "--target", str(site)]
    for platform in target.platforms:
        command += ["--platform", platform]
    _run([*command, str(wheel), *target.pins])


def prune(site: Path) -> None:
    """Remove what a function never needs: scripts, the build's bytecode, the pytest plugin."""
    shutil.rmtree(site / "bin", ignore_errors=True)
    for cache in list(site.rglob("__pycache__")):
        shutil.rmtree(cache)
    shutil.rmtree(site / "cira_db" / "testing", ignore_errors=True)
    for record in site.glob("cira_db-*.dist-info/RECORD"):
        kept = [line for line in record.read_text().splitlines() if _kept(line, site)]
        record.write_text("\n".join(kept) + "\n")


def _kept(record_line: str, site: Path) -> bool:
    path = record_line.split(",", 1)[0]
    return not path.startswith(("cira_db/testing/", "../")) and (
        path.endswith("RECORD") or (site / path).exists()
    )


def interpreter_for(version: str) -> Path | None:
    """An interpreter of Python ``version`` on this machine (pyenv, then PATH), or None.

    Each candidate is run once to confirm its version (a pyenv shim on PATH may
    refuse a version that is installed but not selected).
    """
    roots = {Path(os.environ.get("PYENV_ROOT", "~/.pyenv")).expanduser(), Path.home() / ".pyenv"}
    found = [p for root in roots for p in root.glob(f"versions/{version}.*/bin/python{version}")]
    candidates = sorted(found, key=_version_key, reverse=True)
    on_path = shutil.which(f"python{version}")
    for python in [*candidates, *([Path(on_path)] if on_path else [])]:
        done = subprocess.run(
            [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0 and done.stdout.strip() == version:
            return python
    return None


def _version_key(path: Path) -> tuple[int, ...]:
    release = path.parents[1].name
    return tuple(int(part) for part in re.findall(r"\d+", release))


def compile_bytecode(site: Path, python: Path) -> None:
    """Compile every module in ``site`` with ``python`` as unchecked-hash ``.pyc`` files."""
    command = [str(python), "-m", "compileall", "-q", "-j", "0"]
    _run([*command, "--invalidation-mode", "unchecked-hash", str(site)])


def _cache_tag(python_version: str) -> str:
    return "cpython-" + python_version.replace(".", "")


def stale_bytecode(site: Path, python_version: str | None) -> list[str]:
    """Files in ``__pycache__`` the target would not load as they are, relative to ``site``.

    With ``python_version`` None no bytecode may ship at all; otherwise only that
    version's ``.pyc`` files, hash-based and unchecked, each beside its source.
    """
    stale = []
    for cache in sorted(site.rglob("__pycache__")):
        entries = sorted(cache.iterdir())
        if python_version is None or not entries:
            stale.append(str(cache.relative_to(site)))
            continue
        for pyc in entries:
            module, _, rest = pyc.name.partition(".")
            fits = (
                rest == f"{_cache_tag(python_version)}.pyc"
                and (cache.parent / f"{module}.py").is_file()
                and int.from_bytes(pyc.read_bytes()[4:8], "little") == PYC_UNCHECKED_HASH
            )
            if not fits:
                stale.append(str(pyc.relative_to(site)))
    return stale


def check_contents(site: Path, python_version: str | None = None) -> None:
    """Refuse scripts, foreign bytecode and packages the runtime already has or never needs."""
    found = [name for name in NEVER_IN_A_LAYER if (site / name).exists()]
    found += [p.name for p in (site / "bin",) if p.exists()]
    found += stale_bytecode(site, python_version)
    if found:
        raise LayerError(f"the layer must not contain {', '.join(sorted(found))}")
    if not list(site.glob("cira_db-*.dist-info/METADATA")):
        raise LayerError("cira_db's dist-info is missing: importlib.metadata would fail")


def wheel_tags(site: Path) -> dict[str, list[str]]:
    """Each installed distribution's wheel tags, read from its ``WHEEL`` file."""
    tags: dict[str, list[str]] = {}
    for wheel_file in sorted(site.glob("*.dist-info/WHEEL")):
        lines = wheel_file.read_text().splitlines()
        tags[wheel_file.parent.name] = [
            ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Tag:")
        ]
    return tags


def platform_fits(platform: str, target: Target) -> bool:
    """Whether a wheel platform tag loads on ``target`` (arch and glibc)."""
    if platform == "any":
        return True
    match = re.fullmatch(r"(manylinux\w*?)_(x86_64|aarch64)", platform)
    if not match or match.group(2) != WHEEL_ARCH[target.arch]:
        return False
    policy = match.group(1)
    numbered = re.fullmatch(r"manylinux_(\d+)_(\d+)", policy)
    needs = (int(numbered[1]), int(numbered[2])) if numbered else LEGACY_MANYLINUX.get(policy)
    return needs is not None and needs <= target.glibc


def tag_fits(tag: str, target: Target) -> bool:
    """Whether one ``python-abi-platform`` tag (platforms may be dotted) fits ``target``."""
    python, abi, platforms = tag.split("-")
    cp = f"cp{target.python.replace('.', '')}"
    python_ok = python in {"py3", cp} or (abi == "abi3" and python.startswith("cp3"))
    return python_ok and any(platform_fits(p, target) for p in platforms.split("."))


def check_tags(site: Path, target: Target) -> None:
    """Every installed wheel has a tag the runtime's interpreter and glibc accept."""
    misfits = [
        dist
        for dist, tags in wheel_tags(site).items()
        if not any(tag_fits(t, target) for t in tags)
    ]
    if misfits:
        raise LayerError(
            f"{target.name}: wheels that do not fit glibc {target.glibc[0]}.{target.glibc[1]} "
            f"on {target.arch}: {', '.join(misfits)}"
        )


def elf_machine(path: Path) -> int | None:
    """The ELF header's e_machine of ``path``, or None when it is not an ELF file."""
    with path.open("rb") as handle:
        header = handle.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    return int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")


def check_elf(site: Path, target: Target) -> int:
    """Every shared library is built for the target architecture; returns how many."""
    libraries = [p for p in site.rglob("*") if p.is_file() and elf_machine(p) is not None]
    wrong = [
        str(p.relative_to(site)) for p in libraries if elf_machine(p) != ELF_MACHINES[target.arch]
    ]
    if wrong:
        raise LayerError(f"{target.name}: shared libraries for another machine: {', '.join(wrong)}")
    if not libraries:
        raise LayerError(f"{target.name}: no shared library found (psycopg-binary missing?)")
    return len(libraries)


def write_zip(site: Path, zip_path: Path) -> Layer:
    """Zip ``site`` as ``python/...`` (sorted, so two builds list the same entries)."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in site.rglob("*") if p.is_file())
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in files:
            archive.write(path, Path("python") / path.relative_to(site))
    unzipped = sum(p.stat().st_size for p in files)
    return Layer(zip_path, zip_path.stat().st_size, unzipped)


def check_sizes(layer: Layer) -> None:
    """Lambda's limits: 50 MB zipped (direct upload), 250 MB unzipped."""
    if layer.zipped > ZIPPED_LIMIT:
        raise LayerError(f"{layer.path.name}: {_mb(layer.zipped)} zipped, over Lambda's 50 MB")
    if layer.unzipped > UNZIPPED_LIMIT:
        raise LayerError(f"{layer.path.name}: {_mb(layer.unzipped)} unzipped, over Lambda's 250 MB")


def build_layer(
    target: Target, wheel: Path, out: Path, version: str, *, bytecode: bool = True
) -> Layer:
    """Install, prune, compile, check and zip one layer; LayerError when it must not ship."""
    if target.refused:
        raise LayerError(f"{target.name} is not built: {target.refused}")
    python = interpreter_for(target.python) if bytecode else None
    with tempfile.TemporaryDirectory(prefix=f"cira-layer-{target.name}-") as tmp:
        site = Path(tmp) / "python"
        pip_install(target, wheel, site)
        prune(site)
        if python is not None:
            compile_bytecode(site, python)
        check_contents(site, target.python if python is not None else None)
        check_tags(site, target)
        libraries = check_elf(site, target)
        driver = ", ".join(p.name[: -len(".dist-info")] for p in site.glob("psycopg_binary-*"))
        layer = write_zip(site, out / f"cira-db-{version}-{target.name}.zip")
    check_sizes(layer)
    glibc = f"{target.glibc[0]}.{target.glibc[1]}"
    compiled = (
        f"bytecode by {python}"
        if python is not None
        else "no bytecode (--no-bytecode)"
        if not bytecode
        else f"no bytecode: no python{target.python} here, a cold start compiles the sources"
    )
    print(
        f"{layer.path.name}: {_mb(layer.zipped)} zipped, {_mb(layer.unzipped)} unzipped; "
        f"{libraries} shared libraries, all {target.arch}; wheels fit glibc {glibc}; {driver}; "
        f"{compiled}"
    )
    return layer


def build_all(targets: Iterable[Target], out: Path, *, bytecode: bool = True) -> list[Layer]:
    """Build cira_db's wheel once, then one layer per target."""
    version = project_version()
    with tempfile.TemporaryDirectory(prefix="cira-wheel-") as tmp:
        wheel = build_wheel(Path(tmp))
        return [build_layer(t, wheel, out, version, bytecode=bytecode) for t in targets]


def _mb(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"


def _run(command: Sequence[str]) -> None:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LayerError(f"{command[2:4]} failed:\n{done.stdout}{done.stderr}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build the named targets (default: all) into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--target", action="append", help="e.g. python3.12-arm64 (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "layers")
    parser.add_argument(
        "--no-bytecode", action="store_true", help="ship sources only (slower cold starts)"
    )
    args = parser.parse_args(argv)
    try:
        targets = [find_target(n) for n in args.target] if args.target else list(TARGETS)
        build_all(targets, args.out, bytecode=not args.no_bytecode)
    except LayerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
