"""The compose files and Dockerfiles agree with the code they deploy (no Docker engine needed).

What a `docker compose up` would only reveal at run time is checked statically here: build
contexts and COPY sources exist (and are not excluded by .dockerignore), every service gets every
setting its pydantic ``Settings`` class requires (derived from ``model_fields``, not a list kept
by hand), secrets have no defaults, only nginx publishes ports, ``depends_on`` uses conditions,
and nginx is given every placeholder its templates use. The nginx entrypoint script is run for
real (with ``envsubst`` and ``sh``) against the repo's templates.
"""

from __future__ import annotations

import importlib
import os
import re
import secrets
import shlex
import shutil
import stat
import subprocess
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, SecretStr
from pydantic_settings import BaseSettings

from fedcore.db_roles import DEFAULT_APP_ROLE
from fedcore.settings import ServiceSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
STEPCA_OVERRIDE = REPO_ROOT / "deploy" / "compose" / "stepca.yml"
TWO_GATEWAYS_OVERRIDE = REPO_ROOT / "deploy" / "compose" / "two-gateways.yml"
VARIANTS: dict[str, tuple[Path, ...]] = {
    "default": (COMPOSE_FILE,),
    "stepca": (COMPOSE_FILE, STEPCA_OVERRIDE),
    "two-gateways": (COMPOSE_FILE, TWO_GATEWAYS_OVERRIDE),
}
NGINX_SERVICE = "nginx"
PUBLIC_PORT = 8443
ADMIN_PORT = 8080
CONDITIONS = {"service_healthy", "service_completed_successfully", "service_started"}
# Secrets that are not fields of a service's Settings class.
OTHER_SECRET_KEYS = {"POSTGRES_PASSWORD", "PROXY_SECRET", "MOSAIC_ADMIN_TOKEN"}
SECRET_VARIABLE = re.compile(r"SECRET|TOKEN|PASSWORD|KEY_JSON|PRIVATE", re.IGNORECASE)


# ------------------------------------------------------------------ compose interpolation


class MissingVariableError(Exception):
    """A ``${VAR:?message}`` / ``${VAR?message}`` reference to an unset variable."""


_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


@dataclass(frozen=True)
class Reference:
    name: str
    op: str | None  # None, "-", ":-", "?", ":?", "+", ":+"
    arg: str

    @property
    def required(self) -> bool:
        return self.op in {"?", ":?"}

    @property
    def has_default(self) -> bool:
        return self.op in {"-", ":-", "+", ":+"}


def references(text: str) -> list[Reference]:
    found = []
    for match in _REFERENCE.finditer(text):
        if match.group("escaped"):
            continue
        name = match.group("braced") or match.group("bare")
        found.append(Reference(name, match.group("op"), match.group("arg") or ""))
    return found


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Docker Compose's variable substitution (``$$`` is a literal dollar sign)."""

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        unset_or_empty = value is None or (value == "" and op is not None and op[0] == ":")
        if op in {"?", ":?"} and unset_or_empty:
            raise MissingVariableError(f"{name}: {arg}")
        if op in {"-", ":-"} and unset_or_empty:
            return arg
        if op in {"+", ":+"}:
            return "" if unset_or_empty else arg
        return value or ""

    return _REFERENCE.sub(substitute, text)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    return node


# ------------------------------------------------------------------ compose loading and merging


def load_yaml(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), f"{path} is not a YAML mapping"
    return loaded


def _as_mapping(value: Any) -> dict[str, Any]:
    """Compose accepts lists for environment / networks / depends_on; normalise to mappings."""
    if isinstance(value, dict):
        return dict(value)
    result: dict[str, Any] = {}
    for item in value or []:
        key, sep, rest = str(item).partition("=")
        result[key] = rest if sep else None
    return result


_MAPPING_KEYS = ("environment", "networks", "depends_on")
_APPENDED_LISTS = ("volumes", "ports", "tmpfs", "cap_drop", "security_opt")


def _normalise_service(service: dict[str, Any]) -> dict[str, Any]:
    service = dict(service)
    for key in _MAPPING_KEYS:
        if key in service:
            service[key] = _as_mapping(service[key])
    return service


def _mount_target(volume: Any) -> str:
    parts = str(volume).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _merge(base: Any, override: Any, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for k, v in override.items():
            merged[k] = _merge(base[k], v, k) if k in base else v
        return merged
    if key in _APPENDED_LISTS and isinstance(base, list) and isinstance(override, list):
        if key == "volumes":  # an override replaces the mount at the same container path
            targets = {_mount_target(v) for v in override}
            base = [v for v in base if _mount_target(v) not in targets]
        return [*base, *[v for v in override if v not in base]]
    return override


def merged_model(files: tuple[Path, ...]) -> dict[str, Any]:
    """The compose model of ``-f a -f b ...`` before interpolation."""
    model: dict[str, Any] = {}
    for path in files:
        doc = load_yaml(path)
        doc["services"] = {
            name: _normalise_service(service or {})
            for name, service in (doc.get("services") or {}).items()
        }
        model = _merge(model, doc)
    return model


def variables_env(model: Mapping[str, Any]) -> dict[str, str]:
    """A value for every required variable the model references (as a user must set)."""
    text = yaml.safe_dump(dict(model))
    return {ref.name: secrets.token_urlsafe(48) for ref in references(text) if ref.required}


def rendered(variant: str) -> dict[str, Any]:
    model = merged_model(VARIANTS[variant])
    rendered_model: dict[str, Any] = interpolate_tree(model, variables_env(model))
    return rendered_model


def services_of(model: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = model["services"]
    return services


def env_of(service: Mapping[str, Any]) -> dict[str, str]:
    environment = _as_mapping(service.get("environment"))
    return {k: "" if v is None else str(v) for k, v in environment.items()}


# ------------------------------------------------------------------ Dockerfiles


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile_instructions(path: Path) -> list[Instruction]:
    lines: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    result = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        result.append(Instruction(keyword.upper(), args.strip()))
    return result


def split_flags(args: str) -> tuple[dict[str, str], list[str]]:
    flags: dict[str, str] = {}
    words = shlex.split(args) if not args.startswith("[") else list(yaml.safe_load(args))
    rest: list[str] = []
    for word in words:
        if word.startswith("--") and not rest:
            name, _, value = word[2:].partition("=")
            flags[name] = value
        else:
            rest.append(word)
    return flags, rest


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    return instructions[starts[-1] :]


def exec_form(args: str) -> list[str]:
    loaded = yaml.safe_load(args)
    assert isinstance(loaded, list), f"use the exec (JSON) form, not {args!r}"
    return [str(item) for item in loaded]


class DockerIgnore:
    """.dockerignore semantics for the patterns we use: anchored at the context root, `*` and
    `?` stay within a path segment, `**` spans segments, a match on a folder excludes its
    contents, `!pattern` re-includes, and the last matching pattern wins."""

    def __init__(self, path: Path) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        if not path.exists():
            return
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = line[1:] if negate else line
            self.rules.append((negate, re.compile(self._translate(pattern.strip("/")))))

    @staticmethod
    def _translate(pattern: str) -> str:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return out + r"\Z"

    def excluded(self, relative: str) -> bool:
        parts = Path(relative).parts
        verdict = False
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            for negate, rule in self.rules:
                if rule.match(prefix):
                    verdict = not negate
            if verdict:
                return True
        return verdict


# ------------------------------------------------------------------ settings introspection


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in {typing.Union, types.UnionType}:
        models = [a for a in typing.get_args(annotation) if _nested_model(a) is not None]
        return _nested_model(models[0]) if len(models) == 1 else None
    return None


def _mentions_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    return any(_mentions_secret(arg) for arg in typing.get_args(annotation))


def settings_env_names(
    settings_cls: type[BaseSettings], *, required_only: bool, secrets_only: bool = False
) -> set[str]:
    """Env var names of the fields of ``settings_cls``, nested models flattened with the
    class's ``env_nested_delimiter`` and prefixed with its ``env_prefix``."""
    config = settings_cls.model_config
    prefix = str(config.get("env_prefix") or "")
    delimiter = config.get("env_nested_delimiter")

    def walk(model: type[BaseModel], path: tuple[str, ...]) -> Iterator[str]:
        for name, field in model.model_fields.items():
            if required_only and not field.is_required():
                continue
            nested = _nested_model(field.annotation)
            if nested is not None:
                assert delimiter, f"{settings_cls.__module__}: nested {name} needs a delimiter"
                yield from walk(nested, (*path, name))
                continue
            if secrets_only and not _mentions_secret(field.annotation):
                continue
            alias = field.validation_alias if isinstance(field.validation_alias, str) else None
            if alias and not path:
                yield alias.upper()
            else:
                yield (prefix + str(delimiter or "").join((*path, name))).upper()

    return set(walk(settings_cls, ()))


def app_modules() -> list[str]:
    """Every service package that has a settings module (services/<name>/src/<name>/settings.py)."""
    return sorted(p.parent.name for p in REPO_ROOT.glob("services/*/src/*/settings.py"))


def settings_class(module: str) -> type[BaseSettings] | None:
    try:
        settings_module = importlib.import_module(f"{module}.settings")
    except ModuleNotFoundError:
        return None
    cls = getattr(settings_module, "Settings", None)
    return cls if isinstance(cls, type) and issubclass(cls, BaseSettings) else None


def python_module_run_by(service: Mapping[str, Any]) -> str | None:
    """`X` of the `python -m X` this compose service runs (its command, else the image's
    ENTRYPOINT / CMD from its Dockerfile)."""
    command = service.get("command")
    if isinstance(command, list) and command[:2] == ["python", "-m"]:
        return str(command[2])
    build = service.get("build")
    if not isinstance(build, dict):
        return None
    dockerfile = REPO_ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
    for ins in reversed(final_stage(dockerfile_instructions(dockerfile))):
        if ins.keyword in {"ENTRYPOINT", "CMD"}:
            words = exec_form(ins.args)
            if words[:2] == ["python", "-m"]:
                return words[2]
    return None


def full_command(service: Mapping[str, Any]) -> list[str]:
    build = service["build"]
    dockerfile = REPO_ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
    entrypoint: list[str] = []
    cmd: list[str] = []
    for ins in final_stage(dockerfile_instructions(dockerfile)):
        if ins.keyword == "ENTRYPOINT":
            entrypoint = exec_form(ins.args)
        elif ins.keyword == "CMD":
            cmd = exec_form(ins.args)
    if "entrypoint" in service:
        entrypoint, cmd = list(service["entrypoint"]), []
    if "command" in service:
        cmd = list(service["command"])
    return [*entrypoint, *cmd]


def template_placeholders() -> set[str]:
    names: set[str] = set()
    for template in (REPO_ROOT / "nginx").glob("*.template"):
        names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)\}", template.read_text()))
    return names


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def model(variant: str) -> dict[str, Any]:
    return rendered(variant)


def compose_dockerfiles() -> list[tuple[Path, Path]]:
    found = set()
    for files in VARIANTS.values():
        for service in services_of(merged_model(files)).values():
            build = service.get("build")
            if isinstance(build, dict):
                context = (REPO_ROOT / build.get("context", ".")).resolve()
                found.add((context, context / build.get("dockerfile", "Dockerfile")))
    return sorted(found)


# ------------------------------------------------------------------ tests


def test_the_compose_files_exist_and_define_the_gateway_topology() -> None:
    for files in VARIANTS.values():
        for path in files:
            assert path.is_file(), f"{path} missing"
    services = services_of(rendered("default"))
    expected = {"postgres", "migrate", "ca-init", "ca-broker", "enrollment", "grants", "verbs"}
    assert expected | {NGINX_SERVICE} <= set(services)
    assert "step-ca" in services_of(rendered("stepca"))


def test_the_settings_walk_flattens_nested_models_with_prefix_and_delimiter() -> None:
    modules = app_modules()
    assert len(modules) >= 4, modules
    for module in modules:
        cls = settings_class(module)
        assert cls is not None, f"{module}.settings.Settings is not a BaseSettings"
        names = settings_env_names(cls, required_only=True)
        prefix = str(cls.model_config.get("env_prefix"))
        assert names, f"{module}: no required settings found: the walk is broken"
        assert all(name.startswith(prefix) for name in names), names
        assert any("__" in name for name in names), f"{module}: nested fields not flattened"


def test_every_build_context_and_dockerfile_exists() -> None:
    pairs = compose_dockerfiles()
    assert pairs, "no service is built from a Dockerfile"
    for context, dockerfile in pairs:
        assert context.is_dir(), f"build context {context} missing"
        assert dockerfile.is_file(), f"{dockerfile} missing"
        assert context in dockerfile.parents, f"{dockerfile} is outside its context {context}"


def test_the_dockerignore_keeps_local_state_out_of_the_context() -> None:
    ignore = DockerIgnore(REPO_ROOT / ".dockerignore")
    for path in (".venv", ".devstack/a/secrets.json", ".cache/x", ".git/HEAD", "tests/conftest.py"):
        assert ignore.excluded(path), f"{path} would be sent to the Docker daemon"
    for path in ("shared/src/fedcore/__pycache__/x.pyc", "services/verbs/src/verbs/__pycache__"):
        assert ignore.excluded(path), path
    assert not ignore.excluded("shared/src/fedcore/settings.py")
    assert not ignore.excluded("uv.lock")


@pytest.mark.parametrize(
    "dockerfile",
    sorted(REPO_ROOT.glob("deploy/docker/*/Dockerfile")),
    ids=lambda p: p.parent.name,
)
def test_every_copy_source_exists_in_the_context_and_is_not_dockerignored(
    dockerfile: Path,
) -> None:
    context = REPO_ROOT  # every image builds from the workspace root (see docker-compose.yml)
    ignore = DockerIgnore(context / ".dockerignore")
    instructions = dockerfile_instructions(dockerfile)
    stages = {
        ins.args.split()[-1].lower()
        for ins in instructions
        if ins.keyword == "FROM" and " as " in ins.args.lower()
    }
    copied = 0
    for ins in instructions:
        if ins.keyword not in {"COPY", "ADD"}:
            continue
        flags, words = split_flags(ins.args)
        if "from" in flags:
            assert flags["from"].lower() in stages or "/" in flags["from"], ins
            continue
        for source in words[:-1]:
            matches = list(context.glob(source))
            assert matches, f"{dockerfile.name}: COPY source {source} missing from the context"
            for match in matches:
                relative = match.relative_to(context).as_posix()
                assert not ignore.excluded(relative), f"{relative} is excluded by .dockerignore"
            copied += 1
    assert copied, f"{dockerfile} copies nothing from the context"


@pytest.mark.parametrize(
    "dockerfile",
    sorted(REPO_ROOT.glob("deploy/docker/*/Dockerfile")),
    ids=lambda p: p.parent.name,
)
def test_images_install_one_workspace_package_from_the_lock_and_run_as_non_root(
    dockerfile: Path,
) -> None:
    instructions = dockerfile_instructions(dockerfile)
    root = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    members = root["tool"]["uv"]["workspace"]["members"]
    copied = {" ".join(split_flags(i.args)[1]) for i in instructions if i.keyword == "COPY"}
    for member in members:  # uv resolves the whole workspace even for one package
        assert f"{member}/pyproject.toml {member}/" in copied, f"{member}/pyproject.toml not copied"
    assert "pyproject.toml uv.lock ./" in copied

    syncs = [i.args for i in instructions if i.keyword == "RUN" and "uv sync" in i.args]
    assert syncs, "no uv sync"
    packages = set()
    for sync in syncs:
        assert "--frozen" in sync, sync
        assert "--no-dev" in sync, sync
        packages |= set(re.findall(r"--package\s+(\S+)", sync))
    assert len(packages) == 1, f"one package per image, got {packages}"
    package = packages.pop()
    member = next(
        m
        for m in members
        if tomllib.loads((REPO_ROOT / m / "pyproject.toml").read_text())["project"]["name"]
        == package
    )
    assert f"{member}/src {member}/src" in copied, f"sources of {package} not copied"
    assert any("--no-editable" in sync for sync in syncs), "the venv must not link to /src"

    final = final_stage(instructions)
    users = [i.args for i in final if i.keyword == "USER"]
    assert users, "final stage runs as root"
    assert users[-1].split(":")[0] == "10001", f"final stage runs as {users[-1]}"
    final_copies = [i for i in final if i.keyword == "COPY"]
    assert all("--from=" in i.args for i in final_copies), "final stage copies only the venv"
    run_module = next(
        (exec_form(i.args)[2] for i in reversed(final) if i.keyword in {"ENTRYPOINT", "CMD"}), ""
    )
    src = REPO_ROOT / member / "src"
    assert (src / run_module.split(".")[0]).is_dir(), f"{run_module} is not in {package}"


def test_each_service_gets_every_required_setting_of_its_settings_class(
    model: dict[str, Any], variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = services_of(model)
    run_by: dict[str, list[str]] = {}
    for name, service in services.items():
        module = python_module_run_by(service)
        cls = settings_class(module.split(".")[0]) if module else None
        if cls is None:
            continue
        run_by.setdefault(cls.__module__.split(".")[0], []).append(name)
        env = env_of(service)
        missing = settings_env_names(cls, required_only=True) - set(env)
        assert not missing, f"{variant}: {name} lacks required settings {sorted(missing)}"
        # ... and the values validate, exactly as the service will load them at start.
        prefix = str(cls.model_config.get("env_prefix"))
        for key in list(os.environ):
            if key.upper().startswith(prefix):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = cls()  # also refuses a missing secret the service uses
        assert getattr(settings, "bind_host", None) == "0.0.0.0", f"{name} must bind 0.0.0.0"
        unused = settings.unused_secrets() if isinstance(settings, ServiceSettings) else []
        assert not unused, f"{variant}: {name} is given secrets it does not use: {unused}"
    assert set(app_modules()) <= set(run_by), f"{variant}: services never run: {run_by}"


def test_the_one_shots_run_migrations_the_admin_token_and_the_ca_init() -> None:
    services = services_of(rendered("default"))
    migrate = services["migrate"]
    assert full_command(migrate) == ["python", "-m", "devstack.bootstrap", "migrate"]
    assert env_of(migrate)["MOSAIC_DATABASE_URL"].startswith("postgresql+psycopg://mosaic:")
    assert env_of(migrate)["MOSAIC_APP_DB_PASSWORD"]  # it creates the services' role
    admin = services["admin-token"]
    assert full_command(admin) == ["python", "-m", "devstack.bootstrap", "admin-token"]
    assert {"MOSAIC_DATABASE_URL", "MOSAIC_ADMIN_TOKEN"} <= set(env_of(admin))
    assert full_command(services["ca-init"]) == ["python", "-m", "ca_broker", "init"]
    pki_dir = env_of(services["ca-init"])["FED_CA_BROKER_PKI_DIR"]
    assert f"pki:{pki_dir}" in services["ca-init"]["volumes"], "ca-init must write into `pki`"
    for name in ("migrate", "admin-token", "ca-init"):
        assert services[name].get("restart") == "no", f"{name} is one-shot: restart must be no"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_services_connect_as_the_app_role_and_only_the_one_shots_as_the_owner(
    variant: str,
) -> None:
    """fedcore.db_roles: the services get rows, not the schema (the owner's URL and password
    reach only the migrate one-shot)."""
    services = services_of(rendered(variant))
    owner_password = env_of(services["postgres"])["POSTGRES_PASSWORD"]
    for name, service in services.items():
        env = env_of(service)
        urls = [value for key, value in env.items() if key.endswith("DB__URL")]
        if name == "migrate":
            assert env["MOSAIC_DATABASE_URL"].startswith("postgresql+psycopg://mosaic:")
            continue
        if "MOSAIC_DATABASE_URL" in env:
            urls.append(env["MOSAIC_DATABASE_URL"])
        assert all(url.startswith(f"postgresql+psycopg://{DEFAULT_APP_ROLE}:") for url in urls)
        if name != "postgres":
            assert owner_password not in env.values(), f"{variant}: {name} has the owner's password"
            assert not any(owner_password in value for value in env.values()), name


def test_services_that_read_pki_files_mount_the_pki_volume(model: dict[str, Any]) -> None:
    services = services_of(model)
    pki_dir = env_of(services["ca-broker"])["FED_CA_BROKER_PKI_DIR"]
    readers = []
    for name, service in services.items():
        if not any(value.startswith(pki_dir) for value in env_of(service).values()):
            continue
        readers.append(name)
        mounts = [str(v) for v in service.get("volumes", [])]
        assert any(m.startswith(f"pki:{pki_dir}") for m in mounts), f"{name} lacks the pki volume"
        if name not in {"ca-broker", "ca-init"}:
            assert f"pki:{pki_dir}:ro" in mounts, f"{name} only reads the PKI files: mount :ro"
    assert {"ca-broker", "verbs", NGINX_SERVICE} <= set(readers)


def secret_env_keys() -> set[str]:
    keys = set(OTHER_SECRET_KEYS)
    for module in app_modules():
        cls = settings_class(module)
        assert cls is not None
        keys |= settings_env_names(cls, required_only=False, secrets_only=True)
    return keys


@pytest.mark.parametrize("path", sorted({p for f in VARIANTS.values() for p in f}), ids=str)
def test_no_secret_has_a_literal_or_default_value(path: Path) -> None:
    secret_keys = secret_env_keys()
    assert "FED_VERBS_SECRETS__PROXY_SECRET" in secret_keys  # the walk sees SecretStr fields
    checked = 0
    doc = merged_model((path,))
    anchors = {k: v for k, v in doc.items() if k.startswith("x-") and isinstance(v, dict)}
    environments = [env_of(s) for s in services_of(doc).values()]
    environments += [{k: str(v) for k, v in a.items()} for a in anchors.values()]
    for env in environments:
        for key, raw in env.items():
            if key not in secret_keys:
                continue
            checked += 1
            refs = references(raw)
            assert refs, f"{path.name}: {key} has a literal value"
            assert all(r.required for r in refs), f"{path.name}: {key} must use ${{VAR:?...}}"
            with pytest.raises(MissingVariableError):
                interpolate(raw, {})
    # Any variable that looks secret is required wherever it is referenced (no `:-default`).
    for ref in references(path.read_text()):
        if SECRET_VARIABLE.search(ref.name):
            assert ref.required, f"{path.name}: ${{{ref.name}}} must not have a default"
    if path == COMPOSE_FILE:
        assert checked >= 4 * 3 + len(OTHER_SECRET_KEYS), f"only {checked} secrets checked"


def test_only_nginx_publishes_ports_and_the_admin_port_only_on_loopback(
    model: dict[str, Any], variant: str
) -> None:
    for name, service in services_of(model).items():
        assert service.get("network_mode") != "host", f"{name} uses the host network"
        if name != NGINX_SERVICE:
            assert not service.get("ports"), f"{variant}: {name} publishes {service['ports']}"
    published: dict[int, tuple[str, str]] = {}
    for port in services_of(model)[NGINX_SERVICE]["ports"]:
        parts = str(port).rsplit(":", 2)
        assert len(parts) >= 2, f"{port}: publish with an explicit host port"
        host_ip = parts[0] if len(parts) == 3 else ""
        published[int(parts[-1])] = (host_ip, parts[-2])
    assert set(published) == {PUBLIC_PORT, ADMIN_PORT}
    assert published[ADMIN_PORT][0] == "127.0.0.1", "the admin listener must stay on loopback"
    assert published[PUBLIC_PORT][0] in {"", "0.0.0.0"}


def test_depends_on_targets_exist_and_use_conditions(model: dict[str, Any], variant: str) -> None:
    services = services_of(model)
    edges = 0
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict)
        for target, spec in depends.items():
            edges += 1
            assert target in services, f"{variant}: {name} depends on unknown {target}"
            condition = (spec or {}).get("condition")
            assert condition in CONDITIONS, f"{variant}: {name} → {target} has no condition"
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} must be one-shot"
    assert edges >= 10


def test_healthchecks_exist_for_postgres_and_the_four_services(model: dict[str, Any]) -> None:
    services = services_of(model)
    postgres_test = " ".join(services["postgres"]["healthcheck"]["test"])
    assert "pg_isready" in postgres_test
    checked = set()
    for name, service in services.items():
        module = python_module_run_by(service)
        cls = settings_class(module) if module else None
        if cls is None or "healthcheck" not in service:
            continue
        prefix = str(cls.model_config.get("env_prefix"))
        port = env_of(service)[f"{prefix}BIND_PORT"]
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], f"{name}: slim image: python, not curl"
        assert f"http://127.0.0.1:{port}/readyz" in test[3], f"{name}: {test}"
        checked.add(module)
    assert checked == set(app_modules())


def test_nginx_gets_every_template_placeholder_and_real_upstreams(model: dict[str, Any]) -> None:
    services = services_of(model)
    env = env_of(services[NGINX_SERVICE])
    placeholders = template_placeholders()
    assert {"PROXY_SECRET", "SSL_CRL_DIRECTIVE", "PUBLIC_LISTEN"} <= placeholders
    missing = placeholders - set(env)
    assert not missing, f"nginx container lacks template values: {sorted(missing)}"
    for key in sorted(k for k in placeholders if k.endswith("_UPSTREAM")):
        host, _, port = env[key].rpartition(":")
        assert host in services, f"{key} points at unknown service {host}"
        prefixes = [k for k in env_of(services[host]) if k.endswith("_BIND_PORT")]
        assert prefixes, f"{key}: {host} sets no bind port"
        assert env_of(services[host])[prefixes[0]] == port, f"{key} port mismatch"
    listens = {env["PUBLIC_LISTEN"].rsplit(":", 1)[-1], env["ADMIN_LISTEN"].rsplit(":", 1)[-1]}
    assert listens == {str(PUBLIC_PORT), str(ADMIN_PORT)}


def _nginx_script() -> tuple[str, list[str]]:
    nginx = services_of(merged_model((COMPOSE_FILE,)))[NGINX_SERVICE]
    entrypoint = [str(part) for part in nginx["entrypoint"]]
    assert entrypoint[:2] == ["/bin/sh", "-ec"], entrypoint
    return entrypoint[2], entrypoint[3:]


def test_the_nginx_entrypoint_escapes_every_dollar_for_compose() -> None:
    raw, _ = _nginx_script()
    assert "$" not in raw.replace("$$", ""), "an unescaped $ would be interpolated by compose"
    assert "envsubst" in raw
    assert "nginx -s reload" in raw


@pytest.mark.skipif(shutil.which("envsubst") is None, reason="envsubst (gettext-base) missing")
@pytest.mark.parametrize("crl_published", [True, False], ids=["crl", "no-crl"])
def test_the_nginx_entrypoint_renders_only_our_placeholders(
    tmp_path: Path, crl_published: bool
) -> None:
    raw, argv0 = _nginx_script()
    script = interpolate(raw, {})  # `$$` → `$`, as compose hands it to the container
    env = env_of(services_of(rendered("default"))[NGINX_SERVICE])
    pki = tmp_path / "pki"
    pki.mkdir()
    if crl_published:
        (pki / "crl.pem").write_text("-----BEGIN X509 CRL-----\n")
    conf_dir, main_conf = tmp_path / "conf", tmp_path / "nginx.conf"
    env.update(
        PATH=os.environ["PATH"],
        MOSAIC_TEMPLATE_DIR=str(REPO_ROOT / "nginx"),
        MOSAIC_NGINX_CONF=str(main_conf),
        MOSAIC_PKI_DIR=str(pki),
        NGINX_CONF_DIR=str(conf_dir),
        NGINX_RUN_DIR=str(tmp_path / "run"),
        NGINX_LOG_DIR=str(tmp_path / "log"),
    )
    result = subprocess.run(
        ["/bin/sh", "-ec", script, *argv0, "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rendered_conf = main_conf.read_text()
    includes = {p.name: p for p in conf_dir.iterdir()}
    assert set(includes) == {"proxy_identity.conf", "json_errors.conf"}
    everything = rendered_conf + "".join(p.read_text() for p in includes.values())
    assert not re.findall(r"\$\{[A-Z][A-Z0-9_]*\}", everything), "a placeholder was left"
    assert "${mosaic_token_head}" in rendered_conf, "nginx's own variable was substituted"
    assert "$request_id" in everything
    assert "$ssl_client_escaped_cert" in everything
    assert f"include {conf_dir}/proxy_identity.conf;" in rendered_conf
    assert env["PROXY_SECRET"] in rendered_conf  # set only in the locations toward verbs
    for path in (main_conf, *includes.values()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path.name} holds the proxy secret"
    assert ("ssl_crl " in rendered_conf) is crl_published


def test_the_nginx_entrypoint_refuses_to_render_without_a_value(tmp_path: Path) -> None:
    if shutil.which("envsubst") is None:
        pytest.skip("envsubst (gettext-base) missing")
    raw, argv0 = _nginx_script()
    env = env_of(services_of(rendered("default"))[NGINX_SERVICE])
    del env["VERBS_UPSTREAM"]
    env.update(
        PATH=os.environ["PATH"],
        MOSAIC_TEMPLATE_DIR=str(REPO_ROOT / "nginx"),
        MOSAIC_NGINX_CONF=str(tmp_path / "nginx.conf"),
        MOSAIC_PKI_DIR=str(tmp_path),
        NGINX_CONF_DIR=str(tmp_path / "conf"),
        NGINX_RUN_DIR=str(tmp_path / "run"),
        NGINX_LOG_DIR=str(tmp_path / "log"),
    )
    result = subprocess.run(
        ["/bin/sh", "-ec", interpolate(raw, {}), *argv0, "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "VERBS_UPSTREAM is not set" in result.stderr
    assert not (tmp_path / "nginx.conf").exists()


def test_the_stepca_override_switches_the_broker_and_keeps_ca_keys_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = services_of(rendered("stepca"))
    for name in ("ca-init", "ca-broker"):
        env = env_of(services[name])
        assert env["FED_CA_BROKER_BACKEND"] == "stepca"
        assert env["FED_CA_BROKER_STEPCA_URL"].startswith("https://step-ca:")
        root = env["FED_CA_BROKER_STEPCA_ROOT_CERT_PATH"]
        mounts = [str(v) for v in services[name]["volumes"]]
        mount = next(m for m in mounts if root.startswith(m.split(":")[1] + "/"))
        assert mount.endswith(":ro"), mount
        assert mount.split(":")[0].endswith("/certs"), f"only the CA certificates: {mount}"
        assert services[name]["depends_on"]["step-ca"]["condition"] == "service_healthy"
    assert not services["step-ca"].get("ports")
    assert "healthcheck" in services["step-ca"]
    nginx_env = env_of(services[NGINX_SERVICE])
    assert not nginx_env["SSL_CRL_DIRECTIVE"].startswith("ssl_crl"), "step-ca serves no CRL"


def test_two_gateways_share_one_external_network_under_their_public_names() -> None:
    model = merged_model(VARIANTS["two-gateways"])
    env = {**variables_env(model), "MOSAIC_PUBLIC_HOST": "gateway-b"}
    services = services_of(interpolate_tree(model, env))
    networks = interpolate_tree(model["networks"], env)
    external = {k for k, v in networks.items() if (v or {}).get("external")}
    assert len(external) == 1
    federation = external.pop()
    nginx_net = services[NGINX_SERVICE]["networks"][federation]
    assert nginx_net["aliases"] == ["gateway-b"]
    for name in ("grants", "verbs"):
        assert federation in services[name]["networks"], f"{name} cannot reach the peer"
    for name in ("enrollment", "grants"):
        public_url = next(v for k, v in env_of(services[name]).items() if k.endswith("PUBLIC_URL"))
        assert public_url == f"https://gateway-b:{PUBLIC_PORT}"
    hosts = env_of(services["ca-broker"])["FED_CA_BROKER_SERVER_CERT_HOSTS"]
    assert "gateway-b" in yaml.safe_load(hosts), "the TLS certificate must name the public host"
    assert "container_name" not in str(services), "container names would clash between -p projects"
