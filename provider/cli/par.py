"""``nats-kvcache par``: build a wasmCloud provider archive (``.par.gz``) of this provider.

A provider archive is what ``wash``/the wasmCloud host load a capability provider from: a
gzip'd tar holding ``claims.jwt`` and one executable per target, named ``<arch>-<os>.bin``
(e.g. ``x86_64-linux.bin``). The JWT is signed by an *account* key (``SA…`` seed, the issuer)
and names the provider's *service* key (``V…``, the subject: the provider key the host puts in
every subject). Its ``wascap`` section follows wascap's ``CapabilityProvider`` claims: ``name``,
``capid``, ``vendor``, ``rev``, ``ver``, ``target_hashes`` (uppercase hex SHA-256 of each
executable, which the host recomputes before it runs one).

The host runs the ``.bin`` directly, with no Python of ours around it, so the executable is a
PyInstaller one-file build of ``provider.main`` that carries the interpreter and every
dependency (needs the ``par`` extra: ``pip install '.[par]'``). ``--executable`` packs a
prebuilt one instead.

Keys: ``--issuer-seed``/``$NATS_KVCACHE_ISSUER_SEED`` and ``--subject-seed``/
``$NATS_KVCACHE_SUBJECT_SEED`` when given (never written anywhere); otherwise they are read from,
or generated once into, ``--keys-dir`` (default ``keys/``, git-ignored, files mode 0600), so
rebuilds keep the same issuer and provider key. Seeds are never printed.

Exit codes: 0 archive written, 1 the build failed, 2 bad usage (bad seed, unknown target).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from contract.claims import WASCAP_REVISION, encode_jwt, new_jti
from contract.keyvalue import CONTRACT_ID
from contract.nkeys import KeyKind, KeyPair, NKeyError
from provider import __version__
from provider.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError

NAME = "nats-kvcache"
DEFAULT_VENDOR = "nats-kvcache"
DEFAULT_OUTPUT = Path("dist") / "nats-kvcache.par.gz"
DEFAULT_KEYS_DIR = Path("keys")
ISSUER_ENV = "NATS_KVCACHE_ISSUER_SEED"
SUBJECT_ENV = "NATS_KVCACHE_SUBJECT_SEED"
ISSUER_FILE = "issuer.nk"  # account seed SA…
SUBJECT_FILE = "provider.nk"  # service seed SV…
CLAIMS_FILE = "claims.jwt"
EXECUTABLE_NAME = "nats-kvcache-provider"


#: Modules PyInstaller must bundle although static analysis might miss them: the event loop is
#: imported only if present, structlog/nats pick some modules at run time, PyNaCl is a cffi
#: extension, replication backends are imported when configured, and the signature worker is
#: started by module name (``-m provider.rpc.verify_worker``). Collecting whole packages costs a
#: few hundred kB; a missing module is a dead provider.
COLLECT_SUBMODULES = (
    "provider",
    "contract",
    "uvloop",
    "nats",
    "structlog",
    "msgpack",
    "nacl",
    "prometheus_client",
)
HIDDEN_IMPORTS = (
    "provider.daemon",
    "provider.rpc.verify_worker",
    "uvloop",
    "nacl._sodium",
    "msgpack._cmsgpack",
    "_cffi_backend",
)
#: Never in the provider: the operator CLI (charts, packaging) and what only it imports.
EXCLUDED_MODULES = ("provider.cli", "matplotlib", "numpy", "PIL", "yaml", "PyInstaller", "tkinter")
#: The executable's ``__main__`` (see that file: orphan and temp-dir handling, ``-m`` dispatch).
ENTRY_SCRIPT = Path(__file__).with_name("par_entry.py")

_MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
_SYSTEMS = {"linux": "linux", "darwin": "macos", "windows": "windows", "freebsd": "freebsd"}


class ParError(Exception):
    """The archive could not be built (exit 1)."""


def host_target() -> str:
    """The wasmCloud ``<arch>-<os>`` name of this machine (PyInstaller cannot cross-compile)."""
    machine = platform.machine().lower()
    system = platform.system().lower()
    return f"{_MACHINES.get(machine, machine)}-{_SYSTEMS.get(system, system)}"


def sha256_hex(path: Path) -> str:
    """Uppercase hex SHA-256, the form wascap writes into ``target_hashes`` and compares."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest().upper()


def default_revision(version: str) -> int:
    """``rev`` from the version: 0.1.0 → 100, 1.2.3 → 10203 (monotonic for semver releases)."""
    parts = [int("".join(c for c in p if c.isdigit()) or 0) for p in version.split(".")[:3]]
    parts += [0] * (3 - len(parts))
    return parts[0] * 10000 + parts[1] * 100 + parts[2]


# ------------------------------------------------------------------------------ keys
def _write_secret(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 from the start (never world-readable, not even briefly)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")


def resolve_key(
    given: str | None, keys_dir: Path, filename: str, kind: KeyKind, what: str
) -> tuple[KeyPair, str]:
    """``(key pair, where it came from)``: the given seed, else the saved one, else a new one."""
    expected = "SA…" if kind is KeyKind.ACCOUNT else "SV…"
    if given:
        try:
            pair = KeyPair.from_seed(given.strip())
        except NKeyError as error:  # NKeyError texts never include the seed
            raise UsageError(f"{what} seed: {error}") from None
        source = "given"
    else:
        path = keys_dir / filename
        if path.exists():
            try:
                pair = KeyPair.from_seed(path.read_text().strip())
            except NKeyError as error:
                raise UsageError(f"{what} seed in {path}: {error}") from None
            source = str(path)
        else:
            pair = KeyPair.generate(kind)
            _write_secret(path, pair.seed)
            source = f"{path} (new)"
    if pair.kind != kind:
        raise UsageError(f"{what} seed must be an {kind} key seed ({expected}), not {pair.kind}")
    return pair, source


# ------------------------------------------------------------------------------ claims
def provider_claims(
    issuer: KeyPair,
    subject: KeyPair,
    target_hashes: Mapping[str, str],
    *,
    name: str = NAME,
    vendor: str = DEFAULT_VENDOR,
    rev: int,
    ver: str,
    issued_at: int | None = None,
    config_schema: Any = None,
) -> dict[str, Any]:
    """wascap ``Claims<CapabilityProvider>`` in its serde field order (no ``exp``/``nbf``)."""
    wascap: dict[str, Any] = {
        "name": name,
        "capid": CONTRACT_ID,
        "vendor": vendor,
        "rev": rev,
        "ver": ver,
        "target_hashes": dict(target_hashes),
    }
    if config_schema is not None:
        wascap["config_schema"] = config_schema
    return {
        "jti": new_jti(),
        "iat": int(time.time()) if issued_at is None else issued_at,
        "iss": issuer.public_key,
        "sub": subject.public_key,
        "wascap": wascap,
        "wascap_revision": WASCAP_REVISION,
    }


# ------------------------------------------------------------------------------ build
def build_executable(workdir: Path, *, log: Any = print) -> Path:
    """PyInstaller one-file build of ``provider.main`` in ``workdir``; returns the executable."""
    try:
        import PyInstaller  # noqa: F401  (only to give a helpful error)
    except ImportError:
        raise ParError(
            "PyInstaller is not installed: `pip install -e '.[par]'` (or `make par`), "
            "or give a prebuilt provider with --executable"
        ) from None
    import provider

    # The directory holding the `provider` and `contract` packages. Given explicitly because
    # PyInstaller's module finder does not follow setuptools' editable-install import hook.
    source_root = Path(provider.__file__).resolve().parents[1]
    workdir = workdir.resolve()  # PyInstaller runs inside it: relative paths would double up
    workdir.mkdir(parents=True, exist_ok=True)
    # A copy, so PyInstaller does not put provider/cli/ itself on the module search path.
    entry = workdir / "nats_kvcache_provider_entry.py"
    shutil.copyfile(ENTRY_SCRIPT, entry)
    cmd = [
        sys.executable,
        "-m",
        "PyInstaller",
        "--onefile",
        "--noconfirm",
        "--clean",
        "--log-level",
        "WARN",
        "--name",
        EXECUTABLE_NAME,
        "--distpath",
        str(workdir / "dist"),
        "--workpath",
        str(workdir / "work"),
        "--specpath",
        str(workdir),
        "--paths",
        str(source_root),
    ]
    for module in HIDDEN_IMPORTS:
        cmd += ["--hidden-import", module]
    for package in COLLECT_SUBMODULES:
        cmd += ["--collect-submodules", package]
    for module in EXCLUDED_MODULES:
        cmd += ["--exclude-module", module]
    cmd.append(str(entry))
    log(f"building the provider executable with PyInstaller (log: {workdir / 'pyinstaller.log'})")
    started = time.monotonic()
    with (workdir / "pyinstaller.log").open("wb") as out:
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    if result.returncode != 0:
        tail = (workdir / "pyinstaller.log").read_text(errors="replace")[-3000:]
        raise ParError(f"PyInstaller failed (exit {result.returncode}):\n{tail}")
    executable = workdir / "dist" / EXECUTABLE_NAME
    if not executable.is_file():
        raise ParError(f"PyInstaller did not produce {executable}")
    log(f"built {executable} in {time.monotonic() - started:.0f} s")
    return executable


def write_archive(output: Path, jwt: str, binaries: Mapping[str, Path]) -> None:
    """``claims.jwt`` then ``<target>.bin`` per target, as a gzip'd GNU tar; atomic replace."""
    output.parent.mkdir(parents=True, exist_ok=True)
    now = int(time.time())
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=now) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
        ):
            data = jwt.encode("ascii")
            info = tarfile.TarInfo(CLAIMS_FILE)
            info.size, info.mode, info.mtime = len(data), 0o644, now
            tar.addfile(info, io.BytesIO(data))
            for target, path in sorted(binaries.items()):
                info = tarfile.TarInfo(f"{target}.bin")
                info.size, info.mode, info.mtime = path.stat().st_size, 0o755, now
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
        tmp.chmod(0o644)
        tmp.replace(output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def build_par(args: argparse.Namespace, log: Any = print) -> Path:
    target = args.target or host_target()
    if args.executable is None and target != host_target():
        raise UsageError(
            f"cannot build a {target} executable on {host_target()}: give it with --executable"
        )
    keys_dir = Path(args.keys_dir)
    issuer, issuer_from = resolve_key(
        args.issuer_seed or os.environ.get(ISSUER_ENV),
        keys_dir,
        ISSUER_FILE,
        KeyKind.ACCOUNT,
        "issuer",
    )
    subject, subject_from = resolve_key(
        args.subject_seed or os.environ.get(SUBJECT_ENV),
        keys_dir,
        SUBJECT_FILE,
        KeyKind.SERVICE,
        "subject",
    )
    version = __version__
    rev = default_revision(version) if args.rev is None else args.rev
    with tempfile.TemporaryDirectory(prefix="nats-kvcache-par-") as scratch:
        if args.executable is not None:
            executable = Path(args.executable)
            if not executable.is_file():
                raise UsageError(f"--executable {executable}: no such file")
        else:
            workdir = Path(args.build_dir) if args.build_dir else Path(scratch)
            executable = build_executable(workdir, log=log)
        claims = provider_claims(
            issuer,
            subject,
            {target: sha256_hex(executable)},
            vendor=args.vendor,
            rev=rev,
            ver=version,
        )
        output = Path(args.output)
        write_archive(output, encode_jwt(issuer, claims), {target: executable})
        if args.keep_executable:
            kept = output.with_name(f"{EXECUTABLE_NAME}-{target}")
            shutil.copy2(executable, kept)
            log(f"executable kept as {kept}")
    log(f"wrote {output} ({output.stat().st_size:,} bytes)")
    log(f"  provider key (sub): {subject.public_key}  [{subject_from}]")
    log(f"  issuer (iss):       {issuer.public_key}  [{issuer_from}]")
    log(f"  {CONTRACT_ID} {NAME} ver {version} rev {rev}, target {target}")
    return output


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "par",
        help="build a wasmCloud provider archive (.par.gz)",
        description="Build dist/nats-kvcache.par.gz: a signed claims.jwt plus a self-contained "
        "provider executable (PyInstaller one-file) for this machine's target.",
        epilog="Seeds are read from flags, then the environment, then --keys-dir (generated "
        "there on first use, mode 0600). Seeds are never printed.",
    )
    parser.add_argument(
        "--issuer-seed", help=f"account seed SA... that signs the claims (or ${ISSUER_ENV})"
    )
    parser.add_argument(
        "--subject-seed", help=f"service seed SV... = the provider key (or ${SUBJECT_ENV})"
    )
    parser.add_argument(
        "--output", default=str(DEFAULT_OUTPUT), help=f"archive path (default {DEFAULT_OUTPUT})"
    )
    parser.add_argument(
        "--executable", help="pack this prebuilt provider executable instead of building one"
    )
    parser.add_argument(
        "--target", help=f"<arch>-<os> name of the executable (default: this machine's, "
        f"{host_target()})"
    )  # fmt: skip
    parser.add_argument(
        "--keys-dir", default=str(DEFAULT_KEYS_DIR), help=f"default {DEFAULT_KEYS_DIR}/"
    )
    parser.add_argument("--vendor", default=DEFAULT_VENDOR, help=f"default {DEFAULT_VENDOR!r}")
    parser.add_argument("--rev", type=int, help="claims revision (default: from the version)")
    parser.add_argument("--build-dir", help="PyInstaller work dir (default: a temp dir)")
    parser.add_argument(
        "--keep-executable",
        action="store_true",
        help="also copy the executable next to the archive",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        build_par(args)
    except UsageError as error:
        print(f"nats-kvcache par: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ParError, OSError) as error:
        print(f"nats-kvcache par: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
