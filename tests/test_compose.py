"""Structural checks of compose.yaml, docker/Dockerfile and .dockerignore.

No Docker engine is needed: the files are parsed and checked against the repository and
against each other (ports, service names, credentials, paths, the CLI command they run).
compose.yaml requires the admin key and publishes ports on loopback unless asked.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERIGNORE_FILE = ROOT / ".dockerignore"

DB_SERVICE = "postgres"
API_SERVICE = "crm_api"
API_PORT = 8000

REQUIRED_VARIABLES = {"CRMBENCH_ADMIN_KEY"}
"""Variables compose.yaml requires (${VAR:?message}): no default may stand in for them."""
COMPOSE_ADMIN_KEY = "compose-test-admin-key-0123456789"
LOOPBACK = ("127.0.0.1", "::1", "localhost")

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}, ${VAR:+alt}, ${VAR+alt}
_BRACED = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}")
_BARE = re.compile(r"\$(?P<name>[A-Za-z_][A-Za-z0-9_]*)")


# --------------------------------------------------------------------------- helpers


def _raw_compose() -> Any:
    """compose.yaml as parsed YAML, before interpolation (comments are already gone)."""
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "compose.yaml is not a mapping"
    return data


def _strings(node: Any) -> list[str]:
    """Every string (keys and values) in a parsed YAML tree."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return []


class MissingVariable(AssertionError):
    """A ${VAR:?message} whose variable is unset (or empty): Compose refuses to start."""


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Resolves ${VAR:-default} etc. in one string the way Compose does with the given env."""

    def braced(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"] or "", match["arg"]
        current = env.get(name)
        if (op == ":?" and not current) or (op == "?" and current is None):
            raise MissingVariable(f"{name}: {arg}")
        if op == ":-":
            return current if current else arg
        if op == "-":
            return current if current is not None else arg
        if op == ":+":
            return arg if current else ""
        if op == "+":
            return arg if current is not None else ""
        if current is None:
            raise AssertionError(f"${{{name}}} has no default and is unset")
        return current

    value = value.replace("$$", "\0")
    value = _BRACED.sub(braced, value)
    value = _BARE.sub(lambda m: env.get(m["name"], ""), value)
    return value.replace("\0", "$")


def _interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return _interpolate(node, env)
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    return node


def _compose(env: dict[str, str] | None = None, *, required: bool = True) -> dict[str, Any]:
    """compose.yaml as Compose sees it with the given environment, plus (with `required`)
    an admin key, the one variable a user must set."""
    base = {"CRMBENCH_ADMIN_KEY": COMPOSE_ADMIN_KEY} if required else {}
    data = _interpolate_tree(_raw_compose(), base | (env or {}))
    assert isinstance(data, dict)
    return data


def _service(name: str) -> dict[str, Any]:
    services = _compose().get("services") or {}
    assert name in services, f"service {name!r} missing from compose.yaml"
    service = services[name]
    assert isinstance(service, dict)
    return service


def _as_argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _dockerfile_path() -> Path:
    build = _service(API_SERVICE)["build"]
    if isinstance(build, str):
        return (ROOT / build / "Dockerfile").resolve()
    context = ROOT / build.get("context", ".")
    return (context / build.get("dockerfile", "Dockerfile")).resolve()


def _build_context() -> Path:
    build = _service(API_SERVICE)["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    return (ROOT / context).resolve()


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, continuations joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in _dockerfile_path().read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            # Comments and blank lines inside a continued instruction are skipped by Docker.
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = (pending + stripped).strip()
        pending = ""
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return result


def _args_of(keyword: str) -> list[str]:
    return [args for kw, args in _instructions() if kw == keyword]


def _split_flags(args: str) -> tuple[dict[str, str], str]:
    """Splits leading --flag=value options (COPY --chown=..., HEALTHCHECK --interval=...)."""
    flags: dict[str, str] = {}
    rest = args.strip()
    while rest.startswith("--"):
        token, _, rest = rest.partition(" ")
        name, _, value = token[2:].partition("=")
        flags[name] = value
        rest = rest.strip()
    return flags, rest


def _exec_or_shell(args: str) -> list[str]:
    """Arguments of an exec-form (JSON) or shell-form RUN/CMD/ENTRYPOINT/COPY."""
    if args.startswith("["):
        value = json.loads(args)
        assert isinstance(value, list), args
        return [str(v) for v in value]
    return shlex.split(args)


def _copy_sources() -> list[tuple[str, str]]:
    """(source, destination) of each COPY/ADD from the build context."""
    pairs: list[tuple[str, str]] = []
    for keyword in ("COPY", "ADD"):
        for args in _args_of(keyword):
            flags, rest = _split_flags(args)
            if "from" in flags:  # copies from another stage or image, not from the context
                continue
            parts = _exec_or_shell(rest)
            assert len(parts) >= 2, f"{keyword} {args!r} needs a source and a destination"
            pairs.extend((src, parts[-1]) for src in parts[:-1])
    return pairs


def _env_of_dockerfile() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in _args_of("ENV"):
        for token in shlex.split(args):
            if "=" in token:
                key, _, value = token.partition("=")
                env[key] = value
            else:  # legacy `ENV KEY value`
                key, _, value = args.partition(" ")
                env[key] = value.strip()
                break
    return env


def _dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE_FILE.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent excludes children."""
    parts = PurePosixPath(path.strip("/")).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        pat_alt = pat[3:] if pat.startswith("**/") else None
        for candidate in candidates:
            if fnmatch.fnmatchcase(candidate, pat) or (
                pat_alt is not None and fnmatch.fnmatchcase(candidate, pat_alt)
            ):
                excluded = not negate
                break
    return excluded


def _published_container_ports(service: dict[str, Any]) -> set[int]:
    ports: set[int] = set()
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            container = str(entry).rsplit(":", 1)[-1].split("/")[0]
            ports.add(int(container))
    return ports


def _healthcheck_argv(service: dict[str, Any]) -> list[str]:
    healthcheck = service.get("healthcheck")
    assert isinstance(healthcheck, dict), "no healthcheck"
    assert not healthcheck.get("disable"), "healthcheck disabled"
    test = healthcheck.get("test")
    assert test, "healthcheck has no test command"
    if isinstance(test, str):
        return ["CMD-SHELL", test]
    assert test[0] in ("CMD", "CMD-SHELL"), f"healthcheck test must start with CMD: {test}"
    assert len(test) > 1, "healthcheck test has no command"
    return [str(t) for t in test]


# --------------------------------------------------------------------------- compose.yaml


def test_compose_has_no_version_key_and_declares_services() -> None:
    data = _compose()
    assert "version" not in data, "the Compose spec has no top-level `version:`"
    assert {DB_SERVICE, API_SERVICE} <= set(data.get("services") or {})


def test_every_interpolation_but_the_admin_key_has_a_default() -> None:
    missing: list[str] = []
    required: set[str] = set()
    for value in _strings(_raw_compose()):
        value = value.replace("$$", "")
        for m in _BRACED.finditer(value):
            if m["op"] == ":?" and m["name"] in REQUIRED_VARIABLES:
                required.add(m["name"])
            elif m["op"] not in (":-", "-"):
                missing.append(m[0])
        missing += [f"${m['name']}" for m in _BARE.finditer(_BRACED.sub("", value))]
    assert not missing, f"variables without a default (use ${{VAR:-default}}): {missing}"
    assert required == REQUIRED_VARIABLES, "the admin key must be required: ${VAR:?message}"
    # And the file resolves completely with only the admin key set.
    assert not any("${" in v for v in _strings(_compose()))


@pytest.mark.parametrize("env", [{}, {"CRMBENCH_ADMIN_KEY": ""}], ids=["unset", "empty"])
def test_compose_refuses_to_start_without_an_admin_key(env: dict[str, str]) -> None:
    with pytest.raises(MissingVariable, match="CRMBENCH_ADMIN_KEY") as refused:
        _compose(env, required=False)
    assert "set CRMBENCH_ADMIN_KEY" in str(refused.value)


def test_no_key_has_a_default_value() -> None:
    """No admin, verifier or runner key is written into compose.yaml, not even as a default."""
    for value in _strings(_raw_compose()):
        for m in _BRACED.finditer(value):
            if m["name"].endswith("_KEY") and m["op"] in (":-", "-"):
                assert m["arg"] == "", f"{m[0]} gives a key a default"
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert "change-me" not in text and "changeme" not in text


def test_postgres_service() -> None:
    pg = _service(DB_SERVICE)
    assert str(pg["image"]).startswith("pgvector/pgvector:pg16")
    env = pg["environment"]
    assert isinstance(env, dict), "use the mapping form of environment"
    for key in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        assert env.get(key), f"{key} missing"
    argv = _healthcheck_argv(pg)
    command = " ".join(argv[1:])
    assert "pg_isready" in command
    assert f"-U {env['POSTGRES_USER']}" in command
    assert f"-d {env['POSTGRES_DB']}" in command


def test_named_volume_is_declared_and_mounted_on_the_data_dir() -> None:
    data = _compose()
    declared = set((data.get("volumes") or {}).keys())
    mounts = _service(DB_SERVICE).get("volumes") or []
    named = {}
    for mount in mounts:
        if isinstance(mount, dict):
            named[mount["source"]] = mount["target"]
        else:
            source, _, target = str(mount).partition(":")
            named[source] = target.split(":")[0]
    data_mounts = {s for s, t in named.items() if t == "/var/lib/postgresql/data"}
    assert data_mounts, "postgres data directory is not on a volume"
    for source in data_mounts:
        assert not source.startswith((".", "/")), f"{source} is a bind mount, not a named volume"
        assert source in declared, f"volume {source!r} not declared under top-level volumes:"


def test_crm_api_builds_from_an_existing_dockerfile() -> None:
    api = _service(API_SERVICE)
    assert "build" in api, "crm_api must be built from the repository"
    assert _build_context() == ROOT, "build context must be the repository root"
    dockerfile = _dockerfile_path()
    assert dockerfile.is_file(), f"{dockerfile} does not exist"
    assert dockerfile == ROOT / "docker" / "Dockerfile"


def test_crm_api_waits_for_a_healthy_postgres() -> None:
    depends_on = _service(API_SERVICE).get("depends_on")
    assert isinstance(depends_on, dict), "use the long form of depends_on (with a condition)"
    assert depends_on.get(DB_SERVICE, {}).get("condition") == "service_healthy"


def test_database_url_points_at_the_postgres_service() -> None:
    env = _service(API_SERVICE)["environment"]
    pg_env = _service(DB_SERVICE)["environment"]
    assert isinstance(env, dict), "use the mapping form of environment"
    url = urlsplit(env["DATABASE_URL"])
    assert url.scheme.split("+")[0] in ("postgresql", "postgres")
    assert url.hostname == DB_SERVICE
    assert (url.port or 5432) == 5432
    assert url.username == pg_env["POSTGRES_USER"]
    assert url.password == pg_env["POSTGRES_PASSWORD"]
    assert url.path.lstrip("/") == pg_env["POSTGRES_DB"]
    # The password must follow POSTGRES_PASSWORD when that is overridden, too.
    services = _compose({"POSTGRES_PASSWORD": "s3cret"})["services"]
    overridden = urlsplit(services[API_SERVICE]["environment"]["DATABASE_URL"]).password
    assert overridden == services[DB_SERVICE]["environment"]["POSTGRES_PASSWORD"] == "s3cret"


def test_crm_api_configuration() -> None:
    api = _service(API_SERVICE)
    env = api["environment"]
    assert env.get("CRMBENCH_ADMIN_KEY") == COMPOSE_ADMIN_KEY, "the key comes from the user"
    overridden = _compose({"CRMBENCH_ADMIN_KEY": "k3y"})["services"][API_SERVICE]
    assert overridden["environment"]["CRMBENCH_ADMIN_KEY"] == "k3y", "admin key not overridable"
    assert env.get("CRMBENCH_MAX_LIVE_EPISODES") == "200"
    assert api.get("restart") == "unless-stopped"
    assert _service(DB_SERVICE).get("restart") == "unless-stopped"


def _host_ips(service: dict[str, Any]) -> list[str]:
    """The host address of each published port ("" when it listens on every interface)."""
    found: list[str] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            found.append(str(entry.get("host_ip", "")))
        else:
            parts = str(entry).split("/")[0].split(":")
            found.append(":".join(parts[:-2]) if len(parts) >= 3 else "")
    return found


def test_no_port_is_published_beyond_loopback_by_default() -> None:
    for name, service in _compose()["services"].items():
        for host_ip in _host_ips(service):
            assert host_ip in LOOPBACK, f"{name} publishes a port on {host_ip or 'all interfaces'}"


def test_crm_api_and_verifier_bind_elsewhere_only_when_asked() -> None:
    services = _compose({"CRMBENCH_BIND": "0.0.0.0"})["services"]
    assert _host_ips(services[API_SERVICE]) == ["0.0.0.0"]
    assert _host_ips(services[VERIFIER_SERVICE]) == ["0.0.0.0"]
    # The runner spends provider keys: it stays on loopback whatever CRMBENCH_BIND says.
    assert _host_ips(services[RUNNER_SERVICE]) == ["127.0.0.1"]


def test_crm_api_ports_and_healthcheck() -> None:
    api = _service(API_SERVICE)
    assert "127.0.0.1:8000:8000" in [str(p) for p in api.get("ports") or []]
    assert _published_container_ports(api) == {API_PORT}
    argv = _healthcheck_argv(api)
    joined = " ".join(argv[1:])
    assert "python" in joined and "urllib" in joined
    assert f"http://127.0.0.1:{API_PORT}/health" in joined


def test_crm_api_command_serves_on_the_published_port() -> None:
    argv = _as_argv(_service(API_SERVICE)["command"])
    assert argv[:3] == ["crmbench", "serve", "crm-api"], argv
    assert "--no-migrate" not in argv, "crm_api must migrate on start"
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert int(argv[argv.index("--port") + 1]) == API_PORT


def test_no_service_binds_a_fixed_host_port_twice() -> None:
    # Scaled services (agent_runner) must not publish fixed host ports; at the least, no
    # two services may claim the same one.
    seen: dict[str, str] = {}
    for name, service in _compose()["services"].items():
        for entry in service.get("ports") or []:
            if isinstance(entry, dict):
                host = str(entry.get("published", ""))
            else:
                parts = str(entry).split(":")
                host = parts[-2] if len(parts) >= 2 else ""
            if host:
                assert host not in seen, f"{name} and {seen[host]} both publish {host}"
                seen[host] = name


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_base_image() -> None:
    froms = _args_of("FROM")
    assert froms, "Dockerfile has no FROM"
    final_image = _split_flags(froms[-1])[1].split()[0]
    assert final_image.startswith("python:3.11-slim"), final_image


def test_dockerfile_copy_sources_exist() -> None:
    context = _build_context()
    pairs = _copy_sources()
    assert pairs, "Dockerfile copies nothing"
    for source, _ in pairs:
        assert not source.startswith(("/", "..")), f"{source} is outside the build context"
        matches = list(context.glob(source.rstrip("/"))) if "*" in source else None
        exists = bool(matches) if matches is not None else (context / source).exists()
        assert exists, f"COPY source {source!r} does not exist in {context}"


def test_dockerfile_copies_what_the_install_needs() -> None:
    sources = {src.rstrip("/") for src, _ in _copy_sources()}
    for needed in ("pyproject.toml", "README.md", "alembic.ini", "migrations", "crmbench"):
        assert needed in sources, f"{needed} is not copied into the image"
    assert "services" in sources or "services/crm_api" in sources
    assert "." not in sources, "copy only what is needed, not the whole context"


def test_dockerfile_copies_every_package_folder_of_the_project() -> None:
    """`pip install -e .` in the image fails when a package folder of pyproject is missing."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    sources = {src.rstrip("/") for src, _ in _copy_sources()}
    for folder in sorted(folders):
        covered = any(folder == s or folder.startswith(s + "/") for s in sources)
        assert covered, f"{folder} (a package folder in pyproject.toml) is not copied"


def test_dockerignore_keeps_out_junk_but_not_copied_sources() -> None:
    patterns = _dockerignore_patterns()
    for junk in (".git", ".venv", "crmbench/__pycache__", "services/crm_api/x.pyc"):
        assert _ignored(junk, patterns), f"{junk} is sent to the build context"
    for source, _ in _copy_sources():
        assert not _ignored(source, patterns), f"{source} is copied but .dockerignore drops it"


def test_dockerfile_environment_and_install() -> None:
    env = _env_of_dockerfile()
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    migrations_dest = {dst for src, dst in _copy_sources() if src.rstrip("/") == "migrations"}
    workdir = _args_of("WORKDIR")[-1]
    resolved = {str(PurePosixPath(workdir, d)).rstrip("/") for d in migrations_dest}
    assert env.get("CRMBENCH_MIGRATIONS_DIR") in resolved, (env, resolved)
    pip_runs = [a for a in _args_of("RUN") if "pip install" in a]
    assert pip_runs, "nothing is pip-installed"
    no_cache = env.get("PIP_NO_CACHE_DIR") in ("1", "true", "on")
    assert no_cache or all("--no-cache-dir" in a for a in pip_runs)
    assert any(re.search(r"pip install .*(-e|--editable) \.(\s|$)", a) for a in pip_runs), (
        "the project must be installed editable from the repository copy"
    )
    apt = " ".join(_args_of("RUN"))
    assert "build-essential" not in apt and "gcc" not in apt, "no compilers in the image"


def test_dockerfile_runs_as_non_root() -> None:
    users = _args_of("USER")
    assert users, "Dockerfile has no USER, so it runs as root"
    user = users[-1].split(":")[0].strip()
    assert user not in ("root", "0"), f"final USER is {user}"
    # The USER instruction must come after the installs (which need root).
    keywords = [kw for kw, _ in _instructions()]
    last_user = len(keywords) - 1 - keywords[::-1].index("USER")
    assert all(kw != "RUN" for kw in keywords[last_user:]), "RUN after USER"


def test_dockerfile_exposes_the_compose_port() -> None:
    exposed: set[int] = set()
    for args in _args_of("EXPOSE"):
        exposed |= {int(p.split("/")[0]) for p in args.split()}
    assert API_PORT in exposed
    assert _published_container_ports(_service(API_SERVICE)) <= exposed


def test_dockerfile_healthcheck() -> None:
    checks = _args_of("HEALTHCHECK")
    assert len(checks) == 1, "exactly one HEALTHCHECK"
    flags, rest = _split_flags(checks[0])
    assert rest.upper() != "NONE"
    assert rest.startswith("CMD"), rest
    command = rest[3:].strip()
    argv = _exec_or_shell(command)
    joined = " ".join(argv)
    assert argv[0] in ("python", "python3") and "urllib" in joined
    assert "127.0.0.1" in joined and "/health" in joined and str(API_PORT) in joined
    assert "timeout" in flags and "interval" in flags


def test_image_command_invokes_crmbench() -> None:
    commands = [_exec_or_shell(a) for a in _args_of("CMD") + _args_of("ENTRYPOINT")]
    commands.append(_as_argv(_service(API_SERVICE)["command"]))
    assert any(argv and argv[0] == "crmbench" for argv in commands), commands
    image_cmd = _exec_or_shell(_args_of("CMD")[-1])
    assert image_cmd[:3] == ["crmbench", "serve", "crm-api"], image_cmd


# --------------------------------------------------------------------------- the CLI


def _cli_commands() -> list[list[str]]:
    compose_cmd = _as_argv(_service(API_SERVICE)["command"])
    image_cmd = _exec_or_shell(_args_of("CMD")[-1])
    return [["crmbench", "serve", "crm-api"], compose_cmd, image_cmd]


@pytest.mark.parametrize("which", ["plain", "compose", "image"])
def test_command_is_a_real_cli_subcommand(which: str) -> None:
    """`crmbench serve crm-api ...` with its options parses (checked with --help, no server).

    Not skipped when crmbench.cli is missing: the container would not start either.
    """
    import typer
    from typer.testing import CliRunner

    app = importlib.import_module("crmbench.cli").app

    argv = _cli_commands()[["plain", "compose", "image"].index(which)]
    assert argv[0] == "crmbench"
    assert isinstance(app, typer.Typer), "crmbench.cli:app should be a Typer app"
    result = CliRunner().invoke(app, [*argv[1:], "--help"])
    assert result.exit_code == 0, f"{argv}: exit {result.exit_code}\n{result.output}"
    if "--host" in argv:
        assert "--host" in result.output and "--port" in result.output


# --------------------------------------------------------------------------- agent_runner

RUNNER_SERVICE = "agent_runner"
RUNNER_PORT = 8003
VERIFIER_SERVICE = "verifier"
VERIFIER_PORT = 8001


def test_agent_runner_uses_the_shared_image_and_serves_on_its_port() -> None:
    runner, api = _service(RUNNER_SERVICE), _service(API_SERVICE)
    assert runner.get("build") == api.get("build") and runner.get("image") == api.get("image")
    argv = _as_argv(runner["command"])
    assert argv[:3] == ["crmbench", "serve", "agent-runner"], argv
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert int(argv[argv.index("--port") + 1]) == RUNNER_PORT
    assert runner.get("restart") == "unless-stopped"


def test_agent_runner_command_is_a_real_cli_subcommand() -> None:
    import typer
    from typer.testing import CliRunner

    app = importlib.import_module("crmbench.cli").app
    assert isinstance(app, typer.Typer)
    argv = _as_argv(_service(RUNNER_SERVICE)["command"])
    result = CliRunner().invoke(app, [*argv[1:], "--help"])
    assert result.exit_code == 0, f"{argv}: exit {result.exit_code}\n{result.output}"
    assert "--host" in result.output and "--port" in result.output


def test_agent_runner_reaches_the_other_services() -> None:
    env = _service(RUNNER_SERVICE)["environment"]
    assert isinstance(env, dict), "use the mapping form of environment"
    assert env["DATABASE_URL"] == _service(API_SERVICE)["environment"]["DATABASE_URL"]
    crm = urlsplit(env["CRMBENCH_CRM_API_URL"])
    assert (crm.hostname, crm.port) == (API_SERVICE, API_PORT)
    verifier = urlsplit(env["CRMBENCH_VERIFIER_URL"])
    assert (verifier.hostname, verifier.port) == (VERIFIER_SERVICE, VERIFIER_PORT)
    verifier_argv = _as_argv(_service(VERIFIER_SERVICE)["command"])
    assert int(verifier_argv[verifier_argv.index("--port") + 1]) == VERIFIER_PORT
    # The runner opens episodes with the admin key the CRM API checks.
    assert env["CRMBENCH_ADMIN_KEY"] == _service(API_SERVICE)["environment"]["CRMBENCH_ADMIN_KEY"]
    overridden = _compose({"CRMBENCH_ADMIN_KEY": "k3y"})["services"]
    assert overridden[RUNNER_SERVICE]["environment"]["CRMBENCH_ADMIN_KEY"] == "k3y"
    assert overridden[API_SERVICE]["environment"]["CRMBENCH_ADMIN_KEY"] == "k3y"


def test_verifier_and_runner_keys_default_to_the_admin_key() -> None:
    verifier, runner = _service(VERIFIER_SERVICE), _service(RUNNER_SERVICE)
    assert verifier["environment"]["CRMBENCH_ADMIN_KEY"] == COMPOSE_ADMIN_KEY
    # Empty means unset: the services fall back on the admin key.
    assert verifier["environment"]["CRMBENCH_VERIFIER_KEY"] == ""
    assert runner["environment"]["CRMBENCH_VERIFIER_KEY"] == ""
    assert runner["environment"]["CRMBENCH_RUNNER_KEY"] == ""
    own = {"CRMBENCH_VERIFIER_KEY": "v" * 20, "CRMBENCH_RUNNER_KEY": "r" * 20}
    services = _compose(own)["services"]
    assert services[VERIFIER_SERVICE]["environment"]["CRMBENCH_VERIFIER_KEY"] == "v" * 20
    # The runner sends the verifier the key the verifier checks.
    assert services[RUNNER_SERVICE]["environment"]["CRMBENCH_VERIFIER_KEY"] == "v" * 20
    assert services[RUNNER_SERVICE]["environment"]["CRMBENCH_RUNNER_KEY"] == "r" * 20


def test_agent_runner_passes_provider_keys_through_from_the_host() -> None:
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        assert _service(RUNNER_SERVICE)["environment"][key] == "", f"{key} has a default value"
        services = _compose({key: "sk-from-host"})["services"]
        assert services[RUNNER_SERVICE]["environment"][key] == "sk-from-host"
    # No key is written into the file itself.
    assert not any("sk-" in value for value in _strings(_raw_compose()))


def test_agent_runner_waits_for_healthy_dependencies() -> None:
    depends_on = _service(RUNNER_SERVICE).get("depends_on")
    assert isinstance(depends_on, dict), "use the long form of depends_on (with a condition)"
    for name in (DB_SERVICE, API_SERVICE, VERIFIER_SERVICE):
        assert depends_on.get(name, {}).get("condition") == "service_healthy", name


def test_agent_runner_healthcheck_hits_its_own_port() -> None:
    runner = _service(RUNNER_SERVICE)
    joined = " ".join(_healthcheck_argv(runner)[1:])
    assert "python" in joined and "urllib" in joined
    assert f"http://127.0.0.1:{RUNNER_PORT}/health" in joined
    assert runner["environment"].get("CRMBENCH_HEALTH_PORT") == str(RUNNER_PORT)


def test_agent_runner_can_be_scaled() -> None:
    # `docker compose up --scale agent_runner=4`: no fixed name, no fixed host port.
    runner = _service(RUNNER_SERVICE)
    assert "container_name" not in runner, "a fixed container_name prevents scaling"
    for entry in runner.get("ports") or []:
        if isinstance(entry, dict):
            host = str(entry.get("published", ""))
        else:
            parts = str(entry).split(":")
            host = parts[-2] if len(parts) >= 2 else ""
        assert host == "" or "-" in host, f"fixed host port {host} breaks --scale"
    assert _published_container_ports(runner) <= {RUNNER_PORT}


def test_agent_runner_keeps_runs_on_a_named_volume() -> None:
    runner = _service(RUNNER_SERVICE)
    runs_dir = runner["environment"]["CRMBENCH_RUNS_DIR"]
    mounts = {}
    for mount in runner.get("volumes") or []:
        source, _, target = str(mount).partition(":")
        mounts[target.split(":")[0]] = source
    assert runs_dir in mounts, f"{runs_dir} is not on a volume"
    assert mounts[runs_dir] in (_compose().get("volumes") or {}), "volume not declared"
    # The image creates the directory for its non-root user, so the volume is writable.
    run_args = " ".join(_args_of("RUN"))
    assert f"mkdir -p {runs_dir}" in run_args and "chown" in run_args


def test_dockerfile_ships_what_the_runner_reads() -> None:
    sources = {src.rstrip("/") for src, _ in _copy_sources()}
    for needed in ("config", "corpus", "contracts"):
        assert needed in sources, f"{needed} is not copied into the image"
    assert "services" in sources or "services/agent_runner" in sources
    assert (ROOT / "config" / "run.yaml").is_file()
    assert (ROOT / "corpus" / "cases" / "cases.jsonl").is_file()


# --------------------------------------------------------------------------- what the docs say


def test_the_documented_key_recipe_makes_a_key_the_services_accept() -> None:
    """The README's and compose.yaml's one-liner for CRMBENCH_ADMIN_KEY, run as written."""
    import subprocess
    import sys

    from crmbench_contracts.service_keys import key_problem

    recipe = re.compile(r"CRMBENCH_ADMIN_KEY=\$\(python3 -c '([^']+)'\)")
    sources = {
        "README.md": (ROOT / "README.md").read_text(encoding="utf-8"),
        "compose.yaml": COMPOSE_FILE.read_text(encoding="utf-8"),
    }
    for name, text in sources.items():
        found = recipe.search(text)
        assert found, f"{name} does not say how to make an admin key"
        made = subprocess.run(
            [sys.executable, "-c", found[1]], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert key_problem(made, "CRMBENCH_ADMIN_KEY") is None, (name, made)


def test_the_documented_defaults_match_the_settings() -> None:
    from crm_api.settings import CrmApiSettings
    from crmbench_contracts.service_keys import MIN_KEY_LENGTH, WEAK_KEYS

    doc = (ROOT / "docs" / "crm_api.md").read_text(encoding="utf-8")
    settings = CrmApiSettings(database_url=None)
    assert f"| `CRMBENCH_MAX_LIVE_EPISODES` | {settings.max_live_episodes} |" in doc
    assert f"`CRMBENCH_MAX_LIVE_EPISODES` (default {settings.max_live_episodes})" in doc
    assert f"shorter than {MIN_KEY_LENGTH} characters" in doc
    for placeholder in ("change-me", "changeme", "admin", "password", "secret", "test"):
        assert placeholder in WEAK_KEYS and f"`{placeholder}`" in doc
    assert _service(API_SERVICE)["environment"]["CRMBENCH_MAX_LIVE_EPISODES"] == str(
        settings.max_live_episodes
    )
