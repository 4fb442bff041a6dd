"""tools/build_layer.py (`make layer`): the Lambda layers, built, opened and run.

x86_64 layers run here: each is unzipped and, in a fresh interpreter of its
Python version (isolated, no site-packages: only the layer's ``python/`` and
the function's code on ``sys.path``, as Lambda lays out ``/opt/python`` and
``/var/task``), the example handler serves API Gateway events against a real
database through pgbouncer with TLS ``verify-full``. arm64 layers cannot
run here, so every layer is also checked from its zip: wheel tags, ELF
machine of each shared library, sizes, and what must not be inside.
pip's download cache (``~/.cache/pip``) makes rebuilds fast.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from _proxy import PgBouncer
from cira_db import __version__

ROOT = Path(__file__).resolve().parents[1]
EVENTS = Path(__file__).parent / "fixtures" / "events"
PYENV = Path("/root/.pyenv/versions")
ALL_TARGETS = [
    "python3.11-x86_64",
    "python3.11-arm64",
    "python3.12-x86_64",
    "python3.12-arm64",
    "python3.13-x86_64",
    "python3.13-arm64",
]
ELF_MACHINE = {"x86_64": 62, "arm64": 183}
MB = 1024 * 1024

# Runs inside the layer's interpreter: argv = layer python/ dir, function code dir, events file.
RUN_THE_HANDLER = r"""
import importlib.metadata, importlib.util, json, sys
layer, task, events_file = sys.argv[1:4]
sys.path[:0] = [task, layer]
import app
events = json.load(open(events_file))
out = {
    "version": importlib.metadata.version("cira-db"),
    "boto3": importlib.util.find_spec("boto3") is not None,
    "cira_db_file": app.Database.__module__ and sys.modules["cira_db"].__file__,
    "psycopg_impl": sys.modules["psycopg"].pq.__impl__,
}
created = app.handler(events["create"], None)
job_id = json.loads(created["body"])["id"]
out["created"] = created
out["listed"] = app.handler(events["list"], None)
get_event = events["get"]
get_event["pathParameters"] = {"job_id": job_id}
out["before"] = app.handler(get_event, None)
from datetime import timedelta
claimed = app.JOBS.claim_next(lease=timedelta(minutes=1), client_id="q1w2e3r4t5")
app.JOBS.complete(claimed.id, extracted_data={"pages": 2}, confidence_score=0.93,
                  tokens_used=7, attempt=claimed.attempts)
out["after"] = app.handler(get_event, None)
out["bad"] = app.handler(events["bad"], None)
other = events["other_get"] | {"pathParameters": {"job_id": job_id}}
out["other_client"] = app.handler(other, None)
print(json.dumps(out))
"""


def _interpreter(version: str) -> Path | None:
    found = sorted(PYENV.glob(f"{version}.*/bin/python{version}"))
    return found[-1] if found else None


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every layer, built once for this module by the ``make layer`` script."""
    out = tmp_path_factory.mktemp("layers")
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_layer.py"), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for target in ALL_TARGETS:
        assert re.search(
            rf"cira-db-.*-{target}\.zip: [\d.]+ MB zipped, [\d.]+ MB unzipped", done.stdout
        )
    return {t: out / f"cira-db-{__version__}-{t}.zip" for t in ALL_TARGETS}


def _events() -> dict[str, Any]:
    rest = json.loads((EVENTS / "rest_api_key.json").read_text())
    create = rest | {
        "httpMethod": "POST",
        "body": json.dumps({"pdf_url": "https://example.com/report.pdf"}),
    }
    v2 = json.loads((EVENTS / "http_v2_lambda_authorizer.json").read_text())
    v2["requestContext"]["authorizer"]["lambda"]["client_id"] = "q1w2e3r4t5"
    v2["requestContext"]["http"]["method"] = "GET"
    listed = v2 | {"queryStringParameters": {"limit": "10"}}
    other = json.loads((EVENTS / "rest_lambda_authorizer.json").read_text())
    return {
        "create": create,
        "list": listed,
        "get": rest | {"httpMethod": "GET"},
        "bad": rest | {"httpMethod": "POST", "body": json.dumps({"pdf_url": "ftp://x"})},
        "other_get": other | {"httpMethod": "GET"},
    }


@pytest.mark.slow
@pytest.mark.parametrize("version", ["3.12", "3.13"])
def test_x86_64_layer_runs_the_example_handler_through_pgbouncer(
    version: str,
    layers: dict[str, Path],
    pgbouncer: PgBouncer,
    cira_db_url: str,
    tmp_path: Path,
) -> None:
    python = _interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} under {PYENV}: cannot run the python{version} layer")
    opt = tmp_path / "opt"
    with zipfile.ZipFile(layers[f"python{version}-x86_64"]) as archive:
        archive.extractall(opt)
    events_file = tmp_path / "events.json"
    events_file.write_text(json.dumps(_events()))
    dbname = str(conninfo_to_dict(cira_db_url)["dbname"])
    env = {
        "CIRA_DB_URL": pgbouncer.url(dbname),
        "CIRA_DB_VIA_PROXY": "true",
        "AWS_LAMBDA_FUNCTION_NAME": "cira-api",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [str(python), "-I", "-S", "-B", "-c", RUN_THE_HANDLER, str(opt / "python"),
         str(ROOT / "examples" / "lambda" / "app"), str(events_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["version"] == __version__
    assert out["boto3"] is False
    assert out["cira_db_file"].startswith(str(opt / "python" / "cira_db"))
    assert out["psycopg_impl"] == "binary"
    created = json.loads(out["created"]["body"])
    assert out["created"]["statusCode"] == 201
    assert created["client_id"] == "q1w2e3r4t5"
    assert created["status"] == "queued"
    assert "attempts" not in created
    listed = json.loads(out["listed"]["body"])
    assert out["listed"]["statusCode"] == 200
    assert [job["id"] for job in listed["items"]] == [created["id"]]
    before = json.loads(out["before"]["body"])
    assert before == {"job": created, "result": None}
    after = json.loads(out["after"]["body"])
    assert after["job"]["status"] == "completed"
    assert after["result"]["extracted_data"] == {"pages": 2}
    assert after["result"]["confidence_score"] == 0.93
    assert out["bad"]["statusCode"] == 400
    assert json.loads(out["bad"]["body"])["field"] == "pdf_url"
    assert out["other_client"]["statusCode"] == 404


def _wheel_tags(archive: zipfile.ZipFile) -> dict[str, list[str]]:
    tags: dict[str, list[str]] = {}
    for name in archive.namelist():
        if name.endswith(".dist-info/WHEEL"):
            lines = archive.read(name).decode().splitlines()
            dist = name.split("/")[1]
            tags[dist] = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Tag:")]
    return tags


@pytest.mark.slow
@pytest.mark.parametrize("target", ALL_TARGETS)
def test_every_layer_is_sound_from_its_zip(target: str, layers: dict[str, Path]) -> None:
    version, arch = target.removeprefix("python").split("-")
    path = layers[target]
    assert path.stat().st_size < 50 * MB
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert sum(info.file_size for info in archive.infolist()) < 250 * MB
        assert all(name.startswith("python/") for name in names)
        assert not [n for n in names if n.startswith("python/bin/")]
        sources = {n for n in names if n.endswith(".py")}
        bytecode = [n for n in names if "/__pycache__/" in n]
        pycs = {n: archive.read(n)[4:8] for n in bytecode}
        assert not [n for n in names if n.split("/")[1] in {"boto3", "botocore", "pytest"}]
        assert not [n for n in names if n.startswith("python/cira_db/testing/")]
        assert f"python/cira_db-{__version__}.dist-info/METADATA" in names
        machines = {archive.read(n)[18:20] for n in names if archive.read(n)[:4] == b"\x7fELF"}
        tags = _wheel_tags(archive)
    assert machines == {ELF_MACHINE[arch].to_bytes(2, "little")}
    cp = "cp" + version.replace(".", "")
    if _builder().interpreter_for(version) is None:  # no such Python here: sources only
        assert not bytecode
    else:  # every module compiled by the target's own Python, unchecked-hash (flags 0b01)
        tag = f".cpython-{version.replace('.', '')}.pyc"
        assert all(n.endswith(tag) for n in bytecode)
        assert set(pycs.values()) == {(1).to_bytes(4, "little")}
        compiled = {n.replace("/__pycache__/", "/").removesuffix(tag) + ".py" for n in bytecode}
        assert compiled == sources
    driver = next(d for d in tags if d.startswith("psycopg_binary-"))
    assert all(t.startswith(f"{cp}-{cp}-") for t in tags[driver])
    platforms = {t.split("-")[2] for t in tags[driver]}
    if arch == "x86_64":
        assert path.stat().st_size <= 10 * MB
        assert platforms <= {"manylinux_2_17_x86_64", "manylinux2014_x86_64"}
    elif version == "3.11":  # Amazon Linux 2, glibc 2.26: psycopg-binary 3.2's manylinux2014
        assert driver.startswith("psycopg_binary-3.2.")
        assert platforms <= {"manylinux_2_17_aarch64", "manylinux2014_aarch64"}
    else:  # Amazon Linux 2023: psycopg-binary 3.3+, built for manylinux_2_28 on aarch64
        assert not driver.startswith(("psycopg_binary-3.2.", "psycopg_binary-3.1."))
        assert "manylinux_2_28_aarch64" in platforms


def test_an_unknown_target_is_refused_with_the_known_ones() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_layer.py"), "--target", "python3.10-arm64"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "unknown target 'python3.10-arm64'" in done.stderr
    assert "python3.13-arm64" in done.stderr


# -- the build's own checks, on hand-made inputs (fast) ----------------------------------


def _builder() -> Any:
    spec = importlib.util.spec_from_file_location("build_layer", ROOT / "tools" / "build_layer.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_layer"] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("tag", "target", "fits"),
    [
        ("cp312-cp312-manylinux_2_28_aarch64", "python3.12-arm64", True),
        ("cp311-cp311-manylinux_2_28_aarch64", "python3.11-arm64", False),  # glibc 2.26
        ("cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64", "python3.11-arm64", True),
        ("cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64", "python3.12-arm64", False),
        ("cp313-cp313-manylinux_2_17_x86_64", "python3.12-x86_64", False),  # other Python
        ("cp312-cp312-manylinux_2_35_x86_64", "python3.12-x86_64", False),  # glibc 2.34
        ("cp38-abi3-manylinux2014_x86_64", "python3.13-x86_64", True),
        ("py3-none-any", "python3.11-arm64", True),
        ("cp312-cp312-musllinux_1_2_x86_64", "python3.12-x86_64", False),
    ],
)
def test_wheel_tags_are_judged_against_the_runtime(tag: str, target: str, fits: bool) -> None:
    builder = _builder()
    assert builder.tag_fits(tag, builder.find_target(target)) is fits


def test_a_library_for_the_other_machine_is_refused(tmp_path: Path) -> None:
    builder = _builder()
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    header[18:20] = (62).to_bytes(2, "little")  # x86-64
    (tmp_path / "_psycopg.so").write_bytes(bytes(header))
    assert builder.check_elf(tmp_path, builder.find_target("python3.12-x86_64")) == 1
    with pytest.raises(builder.LayerError, match=r"another machine: _psycopg\.so"):
        builder.check_elf(tmp_path, builder.find_target("python3.12-arm64"))


def test_sizes_over_lambdas_limits_are_refused(tmp_path: Path) -> None:
    builder = _builder()
    path = tmp_path / "layer.zip"
    with pytest.raises(builder.LayerError, match="over Lambda's 50 MB"):
        builder.check_sizes(builder.Layer(path, 51 * MB, 100 * MB))
    with pytest.raises(builder.LayerError, match="over Lambda's 250 MB"):
        builder.check_sizes(builder.Layer(path, 40 * MB, 251 * MB))
    builder.check_sizes(builder.Layer(path, 50 * MB, 250 * MB))


def test_what_a_layer_must_not_hold_is_refused(tmp_path: Path) -> None:
    builder = _builder()
    (tmp_path / "cira_db-1.dist-info").mkdir()
    (tmp_path / "cira_db-1.dist-info" / "METADATA").write_text("Name: cira-db\n")
    builder.check_contents(tmp_path)
    (tmp_path / "boto3").mkdir()
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    with pytest.raises(builder.LayerError, match="boto3, pkg/__pycache__"):
        builder.check_contents(tmp_path)


def _pyc(flags: int) -> bytes:
    return b"\x00" * 4 + flags.to_bytes(4, "little") + b"\x00" * 8


def test_only_the_targets_own_unchecked_bytecode_may_ship(tmp_path: Path) -> None:
    builder = _builder()
    cache = tmp_path / "pkg" / "__pycache__"
    cache.mkdir(parents=True)
    (tmp_path / "pkg" / "mod.py").write_text("X = 1\n")
    (cache / "mod.cpython-312.pyc").write_bytes(_pyc(0b01))
    assert builder.stale_bytecode(tmp_path, "3.12") == []
    assert builder.stale_bytecode(tmp_path, None) == ["pkg/__pycache__"]  # sources-only layer
    assert builder.stale_bytecode(tmp_path, "3.13") == ["pkg/__pycache__/mod.cpython-312.pyc"]
    (cache / "mod.cpython-312.pyc").write_bytes(_pyc(0b00))  # timestamp: a zip blurs mtimes
    assert builder.stale_bytecode(tmp_path, "3.12") == ["pkg/__pycache__/mod.cpython-312.pyc"]
    (cache / "mod.cpython-312.pyc").write_bytes(_pyc(0b11))  # checked hash: reads the source
    assert builder.stale_bytecode(tmp_path, "3.12") == ["pkg/__pycache__/mod.cpython-312.pyc"]
    (cache / "mod.cpython-312.pyc").write_bytes(_pyc(0b01))
    (cache / "gone.cpython-312.pyc").write_bytes(_pyc(0b01))  # its source was removed
    assert builder.stale_bytecode(tmp_path, "3.12") == ["pkg/__pycache__/gone.cpython-312.pyc"]


def test_layer_bytecode_comes_from_the_targets_python(tmp_path: Path) -> None:
    builder = _builder()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("X = 1\n")
    builder.compile_bytecode(tmp_path, Path(sys.executable))
    assert builder.stale_bytecode(tmp_path, version) == []
    assert [p.name for p in (tmp_path / "pkg" / "__pycache__").iterdir()] == [
        f"__init__.{sys.implementation.cache_tag}.pyc"
    ]
    found = builder.interpreter_for(version)
    if found is not None:  # what it found is that version, checked by running it
        done = subprocess.run([str(found), "-c", "import sys; print(sys.version_info[:2])"],
                              capture_output=True, text=True, check=True)  # fmt: skip
        assert done.stdout.strip() == str(sys.version_info[:2])
    assert builder.interpreter_for("2.9") is None
