"""``nats-kvcache par`` end to end: build the provider archive, unpack it like a host, run it.

The archive is built once per module (a PyInstaller one-file build takes about a minute) with
the CLI exactly as ``make par`` runs it, into a temp dir. The checks then read it the way
wasmCloud does: a gzip'd tar with ``claims.jwt`` and ``x86_64-linux.bin``, a JWT signed by the
account key it names, a target hash that matches the executable. Finally the unpacked executable
is launched like a host launches a provider (no arguments, one HostData line on stdin) in an
environment with no access to this repository's venv, and serves a linked actor.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from contract.keyvalue import CONTRACT_ID
from contract.nkeys import KeyPair, decode_public_key, verify_signature
from tests.harness.repo import REPO_ROOT
from wasmbus_testkit import HostKeys, NatsServer, ProviderProcess, wait_for
from wasmbus_testkit import KeyValueHost as FakeHost

CLI = [sys.executable, "-m", "provider.cli.main"]
TARGET = "x86_64-linux"
BUILD_TIMEOUT = 900

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.uname().machine != "x86_64",
    reason="the archive's executable is built for (and run on) x86_64-linux only",
)
# Not in the test extra (it is the par extra); `make test` installs both.
pytest.importorskip("PyInstaller", reason="PyInstaller missing: pip install -e '.[par]'")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_KVCACHE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def par(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "par", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@dataclass
class Unpacked:
    names: list[str]
    modes: dict[str, int]
    jwt: str
    executable: Path

    @property
    def header(self) -> dict:
        return json.loads(b64url_decode(self.jwt.split(".")[0]))

    @property
    def claims(self) -> dict:
        return json.loads(b64url_decode(self.jwt.split(".")[1]))


def unpack(archive: Path, into: Path) -> Unpacked:
    assert archive.read_bytes()[:2] == b"\x1f\x8b", "a .par.gz is gzip-compressed"
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        modes = {m.name: m.mode for m in members}
        jwt = tar.extractfile("claims.jwt").read().decode("ascii")  # type: ignore[union-attr]
        executable = into / f"{TARGET}.bin"
        executable.write_bytes(tar.extractfile(f"{TARGET}.bin").read())  # type: ignore[union-attr]
    executable.chmod(0o755)
    return Unpacked(names, modes, jwt, executable)


@dataclass
class Built:
    workdir: Path
    archive: Path
    keys_dir: Path
    unpacked: Unpacked
    build_seconds: float
    stdout: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """One real build: `nats-kvcache par` with keys generated into a fresh keys dir."""
    workdir = tmp_path_factory.mktemp("par")
    archive = workdir / "dist" / "nats-kvcache.par.gz"
    started = time.monotonic()
    result = par(
        "--output",
        str(archive),
        "--keys-dir",
        str(workdir / "keys"),
        "--build-dir",
        str(workdir / "build"),
        cwd=workdir,
        timeout=BUILD_TIMEOUT,
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"\nPyInstaller build + archive: {seconds:.1f} s")
    unpacked = unpack(archive, workdir / "unpacked")
    return Built(workdir, archive, workdir / "keys", unpacked, seconds, result.stdout)


def test_archive_layout(built: Built) -> None:
    assert built.unpacked.names == ["claims.jwt", f"{TARGET}.bin"]
    assert built.unpacked.modes[f"{TARGET}.bin"] & 0o111, "the executable is stored executable"
    assert built.unpacked.executable.stat().st_size > 1_000_000  # interpreter included


def test_claims_are_signed_by_the_issuer_and_describe_the_provider(built: Built) -> None:
    jwt = built.unpacked.jwt
    claims = built.unpacked.claims
    issuer = KeyPair.from_seed((built.keys_dir / "issuer.nk").read_text().strip())
    subject = KeyPair.from_seed((built.keys_dir / "provider.nk").read_text().strip())

    assert built.unpacked.header == {"typ": "jwt", "alg": "Ed25519"}
    signed, _, signature_b64 = jwt.rpartition(".")
    signature = b64url_decode(signature_b64)
    assert verify_signature(claims["iss"], signed.encode(), signature)
    assert not verify_signature(claims["iss"], signed.encode() + b"x", signature)

    assert claims["iss"] == issuer.public_key and decode_public_key(claims["iss"])[0] == "account"
    assert claims["sub"] == subject.public_key and decode_public_key(claims["sub"])[0] == "service"
    assert isinstance(claims["jti"], str) and len(claims["jti"]) == 22
    assert abs(claims["iat"] - time.time()) < 3600
    assert "exp" not in claims and "nbf" not in claims
    assert claims["wascap_revision"] == 3
    wascap = claims["wascap"]
    assert wascap["name"] == "nats-kvcache"
    assert wascap["capid"] == CONTRACT_ID == "wasmcloud:keyvalue"
    assert wascap["vendor"] == "nats-kvcache"
    assert wascap["ver"] == "0.1.0"
    assert isinstance(wascap["rev"], int) and wascap["rev"] == 100
    digest = hashlib.sha256(built.unpacked.executable.read_bytes()).hexdigest().upper()
    assert wascap["target_hashes"] == {TARGET: digest}
    # The CLI reports the public keys, never a seed.
    assert subject.public_key in built.stdout and subject.seed not in built.stdout
    assert issuer.seed not in built.stdout


def test_generated_keys_are_private_and_reused(built: Built, tmp_path: Path) -> None:
    assert (built.keys_dir.stat().st_mode & 0o777) == 0o700
    for name in ("issuer.nk", "provider.nk"):
        assert ((built.keys_dir / name).stat().st_mode & 0o777) == 0o600
    again = tmp_path / "again.par.gz"
    result = par(
        "--output",
        str(again),
        "--keys-dir",
        str(built.keys_dir),
        "--executable",
        str(built.unpacked.executable),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    claims = unpack(again, tmp_path / "u").claims
    first = built.unpacked.claims
    assert (claims["iss"], claims["sub"]) == (first["iss"], first["sub"])
    assert claims["jti"] != built.unpacked.claims["jti"]


def test_given_seeds_are_used_and_not_stored(built: Built, tmp_path: Path) -> None:
    issuer, subject = KeyPair.generate("account"), KeyPair.generate("service")
    output = tmp_path / "given.par.gz"
    result = par(
        "--issuer-seed",
        issuer.seed,
        "--subject-seed",
        subject.seed,
        "--output",
        str(output),
        "--executable",
        str(built.unpacked.executable),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    claims = unpack(output, tmp_path / "u").claims
    assert (claims["iss"], claims["sub"]) == (issuer.public_key, subject.public_key)
    assert not (tmp_path / "keys").exists()
    assert issuer.seed not in result.stdout + result.stderr


def test_a_non_account_issuer_seed_is_refused(built: Built, tmp_path: Path) -> None:
    cluster = KeyPair.generate("cluster")
    result = par(
        "--issuer-seed",
        cluster.seed,
        "--output",
        str(tmp_path / "x.par.gz"),
        "--keys-dir",
        str(tmp_path / "keys"),
        "--executable",
        str(built.unpacked.executable),
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "account" in result.stderr and cluster.seed not in result.stderr
    assert not (tmp_path / "x.par.gz").exists()


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                found += map(int, children)
                todo += map(int, children)
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _unpacked_copies(tmpdir: Path) -> list[Path]:
    return sorted(tmpdir.glob("_MEI*"))


def _host(built: Built, server: NatsServer, factory: Callable[..., ProviderProcess], tmp: Path):
    """A FakeHost that launches the unpacked executable with a bare environment."""
    # Nothing from this machine's Python setup: no venv on PATH, no PYTHONPATH, a foreign cwd.
    bare_env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp)}

    def launch(line: bytes) -> ProviderProcess:
        return factory(line, cmd=[str(built.unpacked.executable)], env=bare_env, cwd=tmp)

    # The host uses the archive's subject as the provider key.
    subject = KeyPair.from_seed((built.keys_dir / "provider.nk").read_text().strip())
    return FakeHost(server, launch, keys=HostKeys(provider=subject), link_actor_at_start=False)


async def test_packed_executable_serves_a_linked_actor_without_the_venv(
    built: Built,
    nats_server: NatsServer,
    provider_factory: Callable[..., ProviderProcess],
    tmp_path: Path,
) -> None:
    host = _host(built, nats_server, provider_factory, tmp_path)
    try:
        await host.start(timeout=60)
        assert host.process is not None
        # The one-file bootloader runs the bundled interpreter as its child: nothing either of
        # them maps may come from the venv or the source tree.
        mapped = set()
        for pid in [host.process.pid, *_descendants(host.process.pid)]:
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                parts = line.split(maxsplit=5)
                if len(parts) == 6:
                    mapped.add(parts[5])
        assert not [p for p in mapped if str(REPO_ROOT) in p or "site-packages" in p], mapped
        assert any(re.search(r"/_MEI[^/]+/libpython3\.\d+\.so", p) for p in mapped), mapped
        assert str(tmp_path) in next(p for p in mapped if "libpython" in p)
        # The signature worker, started as `sys.executable -m provider.rpc.verify_worker`, runs as
        # a worker (not as a second provider) from the same unpacked copy.
        workers = [
            pid
            for pid in _descendants(host.process.pid)
            if "provider.rpc.verify_worker" in _cmdline(pid) and _alive(pid)
        ]
        assert len(workers) == 1, [_cmdline(p) for p in _descendants(host.process.pid)]
        assert len(_unpacked_copies(tmp_path)) == 1

        await host.link(host.keys.actor)
        await host.kv.set("par-key", "par-value")
        got = await host.kv.get("par-key")
        assert (got.exists, got.value) == (True, "par-value")

        assert await host.shutdown() == b"shutting down"
        assert await host.wait_exit(timeout=15) == 0
        stderr = host.stderr()
        assert "stdin is empty" not in stderr and "verifying inline" not in stderr, stderr
        assert _unpacked_copies(tmp_path) == [], "a clean exit removes the unpacked copy"
    finally:
        await host.stop()


async def test_a_killed_bootloader_leaves_no_provider_and_its_copy_is_swept(
    built: Built,
    nats_server: NatsServer,
    provider_factory: Callable[..., ProviderProcess],
    tmp_path: Path,
) -> None:
    """The host `kill -9`s the process it started; nothing of that provider may live on."""
    first = _host(built, nats_server, provider_factory, tmp_path)
    second = _host(built, nats_server, provider_factory, tmp_path)
    try:
        await first.start(timeout=60)
        assert first.process is not None
        inner = _descendants(first.process.pid)
        assert inner and len(_unpacked_copies(tmp_path)) == 1
        first.process.kill()  # SIGKILL to the bootloader, as the host does
        await wait_for(
            lambda: not any(_alive(pid) for pid in inner), timeout=10, message="no orphans"
        )
        [stale] = _unpacked_copies(tmp_path)  # nobody was left to delete it...

        await second.start(timeout=60)
        copies = _unpacked_copies(tmp_path)
        assert stale not in copies and len(copies) == 1  # ...until the next provider started
        assert await second.shutdown() == b"shutting down"
        assert await second.wait_exit(timeout=15) == 0
    finally:
        await first.stop()
        await second.stop()
