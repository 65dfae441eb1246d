"""The Helm chart: lint, render, validate against Kubernetes schemas, and check what it renders.

Needs the helm binary next to the venv's python (`make tools` puts it there).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version
from pydantic import BaseModel

from proxy.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "registry-proxy"
CI_DIR = CHART / "ci"
BIN = Path(sys.executable).parent
RELEASE = "rp"

CI_SETS = ("native", "classic", "pvc", "monitoring")
# The first Kubernetes with native sidecars on by default, and the newest kubernetes-validate has.
K8S_VERSIONS = ("1.29.0", latest_version())
# Custom resources have no schema in kubernetes-validate: they get a structural schema below.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
JOURNAL_DIR = "/var/lib/registry-proxy/journal"
SIDECAR = "registry-proxy"
# The chart has no default image repository (nothing publishes the image): every render of the
# chart itself sets one, as a user must; the ci/ value sets carry the same.
REPOSITORY = "registry.example.com/platform/registry-proxy"
WITH_REPOSITORY = ("--set", f"image.repository={REPOSITORY}")
# Settings the chart sets itself instead of through `settings:`.
CHART_OWNED = {
    "host",
    "port",
    "allow_non_loopback",
    "database_url",
    "database_url_file",
    "database_direct_url",
    "database_direct_url_file",
    "tokens",
    "tokens_file",
    "journal.dir",
}


# --- running helm ----------------------------------------------------------------------------


def _helm() -> Path:
    path = BIN / "helm"
    if not path.exists():
        pytest.fail(f"helm not found at {path}: run `make tools` (scripts/get-helm.sh installs it)")
    return path


def _run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_helm()), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _docs(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _template(*args: str, chart: Path = CHART) -> list[dict[str, Any]]:
    return _docs(_template_text(*args, chart=chart))


def _template_text(*args: str, chart: Path = CHART) -> str:
    defaults = WITH_REPOSITORY if chart == CHART else ()
    result = _run_helm("template", RELEASE, str(chart), "--namespace", "team", *defaults, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


@functools.cache
def _rendered(value_set: str) -> tuple[dict[str, Any], ...]:
    if value_set == "default":
        return tuple(_template())
    return tuple(_template("-f", str(CI_DIR / f"{value_set}-values.yaml")))


def _ci_values(value_set: str) -> dict[str, Any]:
    if value_set == "default":
        return {}
    data = yaml.safe_load((CI_DIR / f"{value_set}-values.yaml").read_text())
    return data or {}


def _deployment(value_set: str) -> dict[str, Any]:
    deployments = [doc for doc in _rendered(value_set) if doc["kind"] == "Deployment"]
    assert len(deployments) == 1
    return deployments[0]


def _pod_spec(value_set: str) -> dict[str, Any]:
    spec: dict[str, Any] = _deployment(value_set)["spec"]["template"]["spec"]
    return spec


def _named(items: list[dict[str, Any]] | None, name: str) -> list[dict[str, Any]]:
    return [item for item in items or [] if item["name"] == name]


def _sidecar(pod_spec: dict[str, Any]) -> dict[str, Any]:
    found = _named(pod_spec.get("initContainers"), SIDECAR) + _named(
        pod_spec["containers"], SIDECAR
    )
    assert len(found) == 1, "exactly one registry-proxy container per pod"
    return found[0]


def _env(container: dict[str, Any]) -> dict[str, str]:
    names = [item["name"] for item in container["env"]]
    assert len(names) == len(set(names)), "duplicate env names"
    return {item["name"]: item["value"] for item in container["env"]}


# --- structural schemas of the custom resources ----------------------------------------------

_LABELS = {
    "type": "object",
    "additionalProperties": {"type": "string", "maxLength": 63},
    "propertyNames": {"pattern": r"^([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"},
}
_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": _LABELS,
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_DURATION = {"type": "string", "pattern": r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$"}
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "matchLabels": _LABELS,
        "matchExpressions": {"type": "array", "items": {"type": "object"}},
    },
}
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "PodMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PodMonitor"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "podMetricsEndpoints"],
                "additionalProperties": False,
                "properties": {
                    "selector": _SELECTOR,
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "any": {"type": "boolean"},
                            "matchNames": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    "podMetricsEndpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["port", "path"],
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["groups"],
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": _DURATION,
                                "rules": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {
                                        "type": "object",
                                        "required": ["alert", "expr"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "alert": {"type": "string"},
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": _DURATION,
                                            "keep_firing_for": _DURATION,
                                            "labels": {
                                                "type": "object",
                                                "additionalProperties": {"type": "string"},
                                            },
                                            "annotations": {
                                                "type": "object",
                                                "additionalProperties": {"type": "string"},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def _validate(doc: dict[str, Any], version: str) -> None:
    """Core kinds against kubernetes-validate (strict); our two custom resources structurally.

    Anything else is an error: a core kind without a schema must not pass unnoticed.
    """
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_KINDS:
        jsonschema.Draft7Validator(CRD_SCHEMAS[doc["kind"]]).validate(doc)
        return
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(f"no Kubernetes {version} schema for {key}: {exc.message}")
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(part) for part in exc.path)
        pytest.fail(
            f"{doc['kind']}/{doc['metadata']['name']} invalid for {version}: {path}: {exc.message}"
        )


# --- the value sets --------------------------------------------------------------------------


def test_ci_value_sets_exist() -> None:
    present = {path.name for path in CI_DIR.glob("*.yaml")}
    assert {f"{name}-values.yaml" for name in CI_SETS} <= present


def test_newest_kubernetes_version_is_newer_than_129() -> None:
    assert tuple(int(p) for p in K8S_VERSIONS[1].split(".")[:2]) > (1, 29)


@pytest.mark.parametrize("value_set", ["default", *CI_SETS])
def test_helm_lint_strict(value_set: str) -> None:
    args = ["lint", "--strict", str(CHART), *WITH_REPOSITORY]
    if value_set != "default":
        args += ["-f", str(CI_DIR / f"{value_set}-values.yaml")]
    result = _run_helm(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("value_set", ["default", *CI_SETS])
def test_rendered_documents_validate(value_set: str, version: str) -> None:
    docs = _rendered(value_set)
    kinds = [doc["kind"] for doc in docs]
    assert "Deployment" in kinds
    for doc in docs:
        _validate(doc, version)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_strict_validation_rejects_unknown_fields(version: str) -> None:
    # Negative control: the validator really is strict, for both versions.
    doc = json.loads(json.dumps(_deployment("default")))
    _sidecar(doc["spec"]["template"]["spec"])["notAField"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, version, strict=True)


def test_custom_resource_schemas_reject_typos() -> None:
    monitors = [doc for doc in _rendered("monitoring") if doc["kind"] == "PodMonitor"]
    doc = json.loads(json.dumps(monitors[0]))
    doc["spec"]["podMetricsEndpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        _validate(doc, K8S_VERSIONS[0])


# --- the sidecar container -------------------------------------------------------------------


@pytest.mark.parametrize("value_set", ["default", *CI_SETS])
def test_sidecar_security_context(value_set: str) -> None:
    context = _sidecar(_pod_spec(value_set))["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 10001
    assert context["runAsUser"] != 0 and context["runAsGroup"] != 0
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context.get("privileged", False) is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert not context["capabilities"].get("add")
    assert context["seccompProfile"]["type"] == "RuntimeDefault"


@pytest.mark.parametrize("value_set", ["default", *CI_SETS])
def test_sidecar_probes(value_set: str) -> None:
    sidecar = _sidecar(_pod_spec(value_set))
    listen = _ci_values(value_set).get("network", {}).get("listen", "loopback")
    paths = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe_name, path in paths.items():
        probe = sidecar[probe_name]
        assert probe["timeoutSeconds"] >= 1 and probe["periodSeconds"] >= 1
        if listen == "all":
            assert probe["httpGet"] == {"path": path, "port": SIDECAR, "scheme": "HTTP"}
        else:
            command = probe["exec"]["command"]
            assert command[:4] == ["python", "-I", "-S", "-c"]
            assert command[5] == f"http://127.0.0.1:3580{path}"
            assert float(command[6]) < probe["timeoutSeconds"]
    ports = sidecar.get("ports", [])
    if listen == "all":
        assert ports == [{"name": SIDECAR, "containerPort": 3580, "protocol": "TCP"}]
    else:
        assert ports == []


@pytest.mark.parametrize("value_set", ["default", "native"])
def test_native_mode_is_a_restartable_init_container(value_set: str) -> None:
    spec = _pod_spec(value_set)
    [sidecar] = _named(spec.get("initContainers"), SIDECAR)
    assert sidecar["restartPolicy"] == "Always"
    assert not _named(spec["containers"], SIDECAR)
    assert _named(spec["containers"], "host")


def test_classic_mode_is_a_plain_container() -> None:
    spec = _pod_spec("classic")
    assert not spec.get("initContainers")
    [sidecar] = _named(spec["containers"], SIDECAR)
    assert "restartPolicy" not in sidecar
    assert sidecar["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert _deployment("classic")["spec"]["replicas"] == 2


def _pre_stop(*args: str) -> Any:
    docs = _template(*args)
    return _sidecar(docs[0]["spec"]["template"]["spec"]).get("lifecycle")


def test_classic_mode_delays_sigterm_by_default() -> None:
    # On SIGTERM the sidecar refuses new connections at once; classic containers all get it
    # together, so without the delay the host's calls during its own shutdown would fail.
    assert _values()["sidecar"]["preStopSleepSeconds"] > 0
    lifecycle = _pre_stop("--set", "sidecar.mode=classic")
    assert lifecycle == {"preStop": {"exec": {"command": ["sleep", "5"]}}}
    assert _pre_stop("--set", "sidecar.mode=classic,sidecar.preStopSleepSeconds=0") is None
    # Native sidecars are stopped after the host containers: no hook, whatever the value.
    assert _pre_stop() is None
    assert _pre_stop("--set", "sidecar.preStopSleepSeconds=20") is None


def test_grace_period_covers_the_pre_stop_delay() -> None:
    args = ["--set", "sidecar.mode=classic,sidecar.preStopSleepSeconds=20"]
    result = _run_helm("template", RELEASE, str(CHART), *WITH_REPOSITORY, *args)
    assert result.returncode != 0
    assert "preStop delay + settings.request.drain_timeout_s + 5 (35)" in result.stderr
    _template(*args, "--set", "terminationGracePeriodSeconds=35")


@pytest.mark.parametrize("value_set", ["default", *CI_SETS])
def test_volumes_and_mounts(value_set: str) -> None:
    spec = _pod_spec(value_set)
    sidecar = _sidecar(spec)
    mounts = {mount["name"]: mount for mount in sidecar["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert set(mounts) <= set(volumes)
    assert mounts["registry-proxy-journal"]["mountPath"] == JOURNAL_DIR
    assert not mounts["registry-proxy-journal"].get("readOnly")
    assert mounts["registry-proxy-tmp"]["mountPath"] == "/tmp"
    assert "emptyDir" in volumes["registry-proxy-tmp"]
    database = volumes["registry-proxy-database"]["secret"]
    assert database["secretName"] == "registry-proxy-database"
    assert database["items"] == [{"key": "database-url", "path": "url"}]
    assert mounts["registry-proxy-database"]["readOnly"] is True
    env = _env(sidecar)
    assert env["REGISTRY_PROXY_DATABASE_URL_FILE"] == "/etc/registry-proxy/database/url"
    assert env["REGISTRY_PROXY_JOURNAL__DIR"] == JOURNAL_DIR
    assert "REGISTRY_PROXY_DATABASE_URL" not in env and "REGISTRY_PROXY_TOKENS" not in env
    if value_set == "classic":  # tokens.existingSecret is empty there
        assert "registry-proxy-tokens" not in volumes
        assert "REGISTRY_PROXY_TOKENS_FILE" not in env
    else:
        assert volumes["registry-proxy-tokens"]["secret"]["secretName"] == "registry-proxy-tokens"
        assert env["REGISTRY_PROXY_TOKENS_FILE"] == "/etc/registry-proxy/tokens/tokens.json"
    # The host containers never see the secrets.
    for container in spec["containers"]:
        if container["name"] != SIDECAR:
            assert not container.get("volumeMounts")


def test_pvc_value_set_mounts_the_claim() -> None:
    spec = _pod_spec("pvc")
    [journal] = _named(spec["volumes"], "registry-proxy-journal")
    assert journal == {
        "name": "registry-proxy-journal",
        "persistentVolumeClaim": {"claimName": "registry-proxy-journal"},
    }
    [mount] = _named(_sidecar(spec)["volumeMounts"], "registry-proxy-journal")
    assert mount["mountPath"] == JOURNAL_DIR
    deployment = _deployment("pvc")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert spec["securityContext"]["fsGroup"] == 10001
    image = _sidecar(spec)["image"]
    assert image == f"{REPOSITORY}@sha256:" + "0" * 64


def test_default_journal_is_a_bounded_empty_dir() -> None:
    [journal] = _named(_pod_spec("default")["volumes"], "registry-proxy-journal")
    assert journal["emptyDir"] == {"sizeLimit": "1Gi"}


@pytest.mark.parametrize("value_set", ["default", *CI_SETS])
def test_grace_period_exceeds_the_drain_time(value_set: str) -> None:
    spec = _pod_spec(value_set)
    drain = float(_env(_sidecar(spec))["REGISTRY_PROXY_REQUEST__DRAIN_TIMEOUT_S"])
    assert spec["terminationGracePeriodSeconds"] >= drain + 5


def test_demo_pod_hardening() -> None:
    spec = _pod_spec("default")
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    [host] = _named(spec["containers"], "host")
    assert host["securityContext"]["readOnlyRootFilesystem"] is True
    assert host["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"name": "REGISTRY_URL", "value": "http://127.0.0.1:3580"} in host["env"]


# --- settings as env -------------------------------------------------------------------------


def _leaf_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _leaf_fields(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def _settings_from_env(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    for name in list(os.environ):
        if name.startswith("REGISTRY_PROXY_"):
            monkeypatch.delenv(name)
    dsn = tmp_path / "url"
    dsn.write_text("postgresql://registry:secret@db:5432/registry\n")
    tokens = tmp_path / "tokens.json"
    tokens.write_text("[]")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("REGISTRY_PROXY_DATABASE_URL_FILE", str(dsn))
    if "REGISTRY_PROXY_TOKENS_FILE" in env:
        monkeypatch.setenv("REGISTRY_PROXY_TOKENS_FILE", str(tokens))
    return Settings()


def _leaf(settings: Settings, dotted: str) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("value_set", ["default", *CI_SETS])
def test_rendered_env_is_accepted_by_the_sidecar(
    value_set: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env(_sidecar(_pod_spec(value_set)))
    known = {
        "REGISTRY_PROXY_" + "__".join(part.upper() for part in dotted.split("."))
        for dotted, _ in _leaf_fields(Settings)
    }
    assert set(env) <= known, f"not settings: {sorted(set(env) - known)}"
    assert {name for name in known if name not in env} <= {
        "REGISTRY_PROXY_DATABASE_URL",
        "REGISTRY_PROXY_DATABASE_DIRECT_URL",
        "REGISTRY_PROXY_DATABASE_DIRECT_URL_FILE",
        "REGISTRY_PROXY_TOKENS",
        "REGISTRY_PROXY_TOKENS_FILE",
    }
    settings = _settings_from_env(env, tmp_path, monkeypatch)
    assert settings.database_url is not None
    assert str(settings.journal.dir) == JOURNAL_DIR
    assert settings.port == 3580
    listen = _ci_values(value_set).get("network", {}).get("listen", "loopback")
    assert settings.host == ("0.0.0.0" if listen == "all" else "127.0.0.1")  # noqa: S104
    assert settings.allow_non_loopback is (listen == "all")
    if value_set == "default":
        # The chart's defaults are the sidecar's: compare with the declared field defaults
        # (not with a second Settings(), which would read the same environment).
        for dotted, field in _leaf_fields(Settings):
            if dotted not in CHART_OWNED:
                assert _leaf(settings, dotted) == field.default, dotted


def test_native_value_set_overrides_reach_the_sidecar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings_from_env(_env(_sidecar(_pod_spec("native"))), tmp_path, monkeypatch)
    assert settings.breaker.failure_threshold == 3
    assert settings.read_mode.value == "replica"
    assert settings.replica.max_staleness_ms == 5000


def test_large_numbers_render_as_integers(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        "settings:\n  replica:\n    max_agents: 2000000\n  rate_limit:\n    burst: 1000000\n"
    )
    docs = _template("-f", str(values), "--set", "settings.breaker.failure_threshold=7")
    env = _env(
        _sidecar(next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"])
    )
    assert env["REGISTRY_PROXY_REPLICA__MAX_AGENTS"] == "2000000"
    assert env["REGISTRY_PROXY_RATE_LIMIT__BURST"] == "1000000"
    assert env["REGISTRY_PROXY_BREAKER__FAILURE_THRESHOLD"] == "7"
    assert env["REGISTRY_PROXY_BREAKER__FAILURE_RATE"] == "0.5"


def test_a_direct_dsn_for_transaction_pooling(tmp_path: Path) -> None:
    """Behind a transaction pooler, LISTEN and migrations take a second key of the DSN Secret."""
    docs = _template(
        "--set",
        "database.directSecretKey=direct-url",
        "--set",
        "settings.database.pooler=transaction",
    )
    spec = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    env = _env(_sidecar(spec))
    assert (
        env["REGISTRY_PROXY_DATABASE_DIRECT_URL_FILE"] == "/etc/registry-proxy/database/direct-url"
    )
    assert env["REGISTRY_PROXY_DATABASE__POOLER"] == "transaction"
    (volume,) = _named(spec["volumes"], "registry-proxy-database")
    assert volume["secret"]["items"] == [
        {"key": "database-url", "path": "url"},
        {"key": "direct-url", "path": "direct-url"},
    ]
    assert "REGISTRY_PROXY_DATABASE_DIRECT_URL_FILE" not in _env(_sidecar(_pod_spec("default")))


# --- values.yaml and values.schema.json ------------------------------------------------------


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return schema


def _values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def test_schema_is_draft7_and_accepts_every_value_set() -> None:
    schema = _schema()
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    validator.validate(_values())
    for name in CI_SETS:
        merged = _merge(_values(), _ci_values(name))
        validator.validate(merged)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def test_schema_closes_the_top_level_and_key_objects() -> None:
    schema = _schema()
    assert schema["additionalProperties"] is False
    for key in (
        "image",
        "sidecar",
        "network",
        "database",
        "tokens",
        "settings",
        "probes",
        "journal",
        "demo",
        "monitoring",
    ):
        assert schema["properties"][key]["additionalProperties"] is False, key
    for key, sub in schema["properties"]["settings"]["properties"].items():
        if sub.get("type") == "object":
            assert sub["additionalProperties"] is False, key
    assert set(_values()) <= set(schema["properties"])


_PYDANTIC_TO_JSON = {int: "integer", float: "number", bool: "boolean"}
_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def test_settings_schema_and_defaults_mirror_the_sidecar() -> None:
    """Every setting not owned by the chart is in the schema (type, bounds) and in values.yaml
    with the sidecar's default; nothing else is."""
    properties = _schema()["properties"]["settings"]["properties"]
    values = _values()["settings"]
    expected: set[str] = set()
    for dotted, field in _leaf_fields(Settings):
        if dotted in CHART_OWNED:
            continue
        expected.add(dotted)
        node = properties
        default_node = values
        *parents, leaf = dotted.split(".")
        for parent in parents:
            node = node[parent]["properties"]
            default_node = default_node[parent]
        prop = node[leaf]
        default = field.default.value if hasattr(field.default, "value") else field.default
        assert default_node[leaf] == default, f"values.yaml settings.{dotted}"
        assert prop.get("default") == default, f"schema default of settings.{dotted}"
        annotation = field.annotation
        if annotation in _PYDANTIC_TO_JSON:
            assert prop["type"] == _PYDANTIC_TO_JSON[annotation], dotted
        else:
            assert prop["type"] == "string" and default in prop["enum"], dotted
        for meta in field.metadata:
            for attr, keyword in _BOUNDS.items():
                bound = getattr(meta, attr, None)
                if bound is not None:
                    assert prop[keyword] == bound, f"{dotted} {keyword}"
    listed = set()
    for key, prop in properties.items():
        if prop.get("type") == "object":
            listed |= {f"{key}.{sub}" for sub in prop["properties"]}
        else:
            listed.add(key)
    assert listed == expected


WRONG_VALUES = {
    "replica count as a word": "demo:\n  replicaCount: two\n",
    "image tag as a number": "image:\n  tag: 5\n",
    "unknown sidecar mode": "sidecar:\n  mode: sidecar\n",
    "setting of the wrong type": "settings:\n  breaker:\n    failure_threshold: five\n",
    "unknown setting": "settings:\n  breaker:\n    failure_treshold: 5\n",
    "setting out of bounds": "settings:\n  retry:\n    attempts: 11\n",
    "unknown top-level key": "replicas: 2\n",
    "port out of range": "network:\n  port: 70000\n",
    "probe flag as a string": "probes:\n  liveness:\n    enabled: 'yes'\n",
    "unknown journal type": "journal:\n  type: hostPath\n",
    "size limit with a bad unit": "journal:\n  sizeLimit: 1Gb\n",
    "tag in the repository": "image:\n  repository: registry.example.com/rp:0.1.0\n",
}


@pytest.mark.parametrize("name", sorted(WRONG_VALUES))
def test_schema_rejects_wrong_values(name: str, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(WRONG_VALUES[name])
    # No --set image.repository: it would override the values file, and the schema is checked
    # before anything renders.
    result = _run_helm("template", RELEASE, str(CHART), "-f", str(values))
    assert result.returncode != 0, f"{name} was accepted"
    assert "schema" in result.stderr, result.stderr


INVALID_COMBINATIONS = {
    "podmonitor on loopback": (
        ["--set", "monitoring.podMonitor.enabled=true"],
        "needs network.listen=all",
    ),
    "claim without a name": (["--set", "journal.type=persistentVolumeClaim"], "existingClaim"),
    "claim shared by two pods": (
        ["--set", "journal.type=persistentVolumeClaim,journal.existingClaim=j,demo.replicaCount=2"],
        "one pod per claim",
    ),
    "grace period below the drain time": (
        ["--set", "terminationGracePeriodSeconds=12"],
        "drain_timeout_s",
    ),
    "claim template in the demo": (["--set", "journal.type=claimTemplate"], "StatefulSet"),
    "native sidecar on 1.28": (["--kube-version", "1.28.0"], "Kubernetes >= 1.29"),
}


@pytest.mark.parametrize("name", sorted(INVALID_COMBINATIONS))
def test_invalid_combinations_fail_with_a_hint(name: str) -> None:
    args, message = INVALID_COMBINATIONS[name]
    result = _run_helm("template", RELEASE, str(CHART), *WITH_REPOSITORY, *args)
    assert result.returncode != 0, f"{name} was accepted"
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("mode", ["native", "classic"])
def test_image_repository_is_required(mode: str) -> None:
    # No registry carries the image: an install without image.repository must say what to do.
    result = _run_helm("template", RELEASE, str(CHART), "--set", f"sidecar.mode={mode}")
    assert result.returncode != 0
    assert "image.repository is required" in result.stderr
    assert "docs/image.md" in result.stderr
    assert _values()["image"]["repository"] == ""


def test_classic_mode_renders_on_1_28() -> None:
    docs = _template("--kube-version", "1.28.0", "--set", "sidecar.mode=classic")
    assert [doc["kind"] for doc in docs] == ["Deployment"]


# --- versions and the image ------------------------------------------------------------------


def test_versions_agree() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    literal = re.search(r'define "registry-proxy.appVersion" -}}\n(\S+)\n', helpers)
    assert literal, "the registry-proxy.appVersion define"
    assert chart["appVersion"] == literal.group(1) == project["version"]
    image = _sidecar(_pod_spec("default"))["image"]
    assert image == f"{REPOSITORY}:{chart['appVersion']}"
    for value_set in CI_SETS:
        assert _ci_values(value_set)["image"]["repository"] == REPOSITORY, value_set


def test_chart_matches_the_image() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 10001(:10001)?$", dockerfile, re.M)
    assert f"REGISTRY_PROXY_JOURNAL__DIR={JOURNAL_DIR}" in dockerfile
    assert _sidecar(_pod_spec("default"))["args"] == ["serve"]
    assert "command" not in _sidecar(_pod_spec("default"))  # the image's ENTRYPOINT


# --- the exec probe --------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/healthz" else 503
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def probe_target() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _run_probe(command: list[str], url: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, *command[1:5], url, command[6]]
    env = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, env=env)


def test_exec_probe_passes_on_200_and_fails_otherwise(probe_target: int) -> None:
    command = _sidecar(_pod_spec("default"))["livenessProbe"]["exec"]["command"]
    base = f"http://127.0.0.1:{probe_target}"
    ok = _run_probe(command, f"{base}/healthz")
    assert ok.returncode == 0, ok.stderr
    unready = _run_probe(command, f"{base}/readyz")
    assert unready.returncode == 1
    assert "503" in unready.stderr and "Traceback" not in unready.stderr
    refused = _run_probe(command, "http://127.0.0.1:9/healthz")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr


# --- monitoring ------------------------------------------------------------------------------


def test_monitoring_is_off_by_default() -> None:
    assert [doc["kind"] for doc in _rendered("default")] == ["Deployment"]


def test_monitoring_objects() -> None:
    docs = {doc["kind"]: doc for doc in _rendered("monitoring")}
    assert set(docs) == {"Deployment", "PodMonitor", "PrometheusRule", "ConfigMap"}
    monitor = docs["PodMonitor"]
    pod_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector == {"registry-proxy/release": RELEASE}
    assert selector.items() <= pod_labels.items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team"]}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == SIDECAR
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    rules = yaml.safe_load((REPO_ROOT / "config" / "alerts.yml").read_text())
    assert docs["PrometheusRule"]["spec"] == rules
    assert "{{ $labels.pod }}" in json.dumps(docs["PrometheusRule"]["spec"])

    dashboard = docs["ConfigMap"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "registry-proxy"}
    shipped = json.loads((REPO_ROOT / "config" / "grafana-dashboard.json").read_text())
    assert json.loads(dashboard["data"]["registry-proxy.json"]) == shipped


# --- the host-chart example of the chart README ----------------------------------------------

_EXAMPLE = re.compile(r"<!-- host-chart: (\S+) -->\s*```yaml\n(.*?)```", re.S)


def _host_chart(tmp_path: Path) -> Path:
    host = tmp_path / "my-app"
    readme = (CHART / "README.md").read_text()
    files = dict(_EXAMPLE.findall(readme))
    assert set(files) == {"Chart.yaml", "values.yaml", "templates/deployment.yaml"}
    for relative, text in files.items():
        target = host / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    shutil.copytree(CHART, host / "charts" / "registry-proxy")
    return host


@pytest.mark.parametrize("mode", ["native", "classic"])
def test_readme_host_chart_example(mode: str, tmp_path: Path) -> None:
    host = _host_chart(tmp_path)
    text = _template_text(
        "--set",
        f"registry-proxy.sidecar.mode={mode}",
        "--set",
        "global.team=agents",  # Helm hands globals to the dependency: its schema must allow them
        chart=host,
    )
    # Clean YAML: no key left empty (classic mode used to render a bare `initContainers:`).
    assert not re.search(r"^\s*[A-Za-z]+:\s*$\n(?!\s+\S)", text, re.M), text
    assert ("initContainers:" in text) is (mode == "native")
    docs = _docs(text)
    assert [doc["kind"] for doc in docs] == ["Deployment"], "the demo must stay off"
    for version in K8S_VERSIONS:
        for doc in docs:
            _validate(doc, version)
    pod = docs[0]["spec"]["template"]
    spec = pod["spec"]
    sidecar = _sidecar(spec)
    if mode == "native":
        assert _named(spec["initContainers"], SIDECAR) == [sidecar]
        assert sidecar["restartPolicy"] == "Always"
    else:
        assert _named(spec["containers"], SIDECAR) == [sidecar]
        assert not spec.get("initContainers")
    assert spec["containers"][0]["name"] == "my-app"
    assert {"name": "REGISTRY_URL", "value": "http://127.0.0.1:3580"} in spec["containers"][0][
        "env"
    ]
    assert {v["name"] for v in spec["volumes"]} == {
        "registry-proxy-journal",
        "registry-proxy-tmp",
        "registry-proxy-database",
        "registry-proxy-tokens",
    }
    assert pod["metadata"]["labels"]["registry-proxy/release"] == RELEASE
    assert sidecar["image"] == f"{REPOSITORY}:0.1.0"


def test_host_chart_without_an_image_repository_fails_clearly(tmp_path: Path) -> None:
    host = _host_chart(tmp_path)
    result = _run_helm("template", RELEASE, str(host), "--set", "registry-proxy.image.repository=")
    assert result.returncode != 0
    assert "image.repository is required" in result.stderr


def _host_statefulset(tmp_path: Path) -> Path:
    host = _host_chart(tmp_path)
    readme = (CHART / "README.md").read_text()
    [(relative, text)] = re.findall(
        r"<!-- host-statefulset: (\S+) -->\s*```yaml\n(.*?)```", readme, re.S
    )
    (host / "templates" / "deployment.yaml").unlink()
    (host / relative).write_text(text)
    return host


JOURNAL_MOUNTS_WITHOUT_VOLUME = {
    "claim template in a host Deployment": ("deployment", ["journal.type=claimTemplate"]),
    "claim template, wrong kind": ("deployment-kind", ["journal.type=claimTemplate"]),
    "claim without a name in a StatefulSet": (
        "statefulset",
        ["journal.type=persistentVolumeClaim"],
    ),
}


@pytest.mark.parametrize("name", sorted(JOURNAL_MOUNTS_WITHOUT_VOLUME))
@pytest.mark.parametrize("mode", ["native", "classic"])
def test_a_journal_mount_without_a_volume_fails_at_template_time(
    name: str, mode: str, tmp_path: Path
) -> None:
    workload, sets = JOURNAL_MOUNTS_WITHOUT_VOLUME[name]
    host = _host_statefulset(tmp_path) if workload == "statefulset" else _host_chart(tmp_path)
    if workload == "deployment-kind":
        template = host / "templates" / "deployment.yaml"
        template.write_text(
            template.read_text().replace(
                '(index .Values "registry-proxy") }}',
                '(index .Values "registry-proxy") "kind" "Deployment" }}',
            )
        )
    args = [f"registry-proxy.{item}" for item in [*sets, f"sidecar.mode={mode}"]]
    result = _run_helm("template", RELEASE, str(host), "--set", ",".join(args))
    assert result.returncode != 0, f"{name} rendered"
    if "claimTemplate" in sets[0]:
        assert "journal.type=claimTemplate" in result.stderr
        assert "only a StatefulSet has" in result.stderr
        assert '"kind" "StatefulSet"' in result.stderr
        if workload == "deployment-kind":
            assert 'this one passed kind "Deployment"' in result.stderr
    else:
        assert "journal.existingClaim" in result.stderr


@pytest.mark.parametrize("mode", ["native", "classic"])
def test_readme_statefulset_example_takes_its_journal_from_a_claim_template(
    mode: str, tmp_path: Path
) -> None:
    host = _host_statefulset(tmp_path)
    values = f"registry-proxy.journal.type=claimTemplate,registry-proxy.sidecar.mode={mode}"
    docs = _template("--set", values, chart=host)
    assert [doc["kind"] for doc in docs] == ["StatefulSet"]
    for version in K8S_VERSIONS:
        _validate(docs[0], version)
    spec = docs[0]["spec"]
    pod = spec["template"]["spec"]
    mounts = {mount["name"] for mount in _sidecar(pod)["volumeMounts"]}
    volumes = {volume["name"] for volume in pod["volumes"]}
    claims = {claim["metadata"]["name"] for claim in spec["volumeClaimTemplates"]}
    assert "registry-proxy-journal" not in volumes
    assert "registry-proxy-journal" in claims
    assert mounts <= volumes | claims
    assert pod["securityContext"]["fsGroup"] == 10001


def test_host_chart_with_wrong_context_fails_clearly(tmp_path: Path) -> None:
    host = _host_chart(tmp_path)
    template = host / "templates" / "deployment.yaml"
    template.write_text(
        template.read_text().replace(
            'include "registry-proxy.volumes" $rp', 'include "registry-proxy.volumes" .'
        )
    )
    result = _run_helm("template", RELEASE, str(host))
    assert result.returncode != 0
    assert 'registry-proxy templates take (dict "root" $' in result.stderr


def test_kubernetes_guide_shows_the_tested_example() -> None:
    example = dict(_EXAMPLE.findall((CHART / "README.md").read_text()))["templates/deployment.yaml"]
    guide = (REPO_ROOT / "docs" / "kubernetes.md").read_text()
    assert f"```yaml\n{example}```" in guide, "docs/kubernetes.md drifted from the chart README"


def test_extra_env_comes_last() -> None:
    docs = _template(
        "--set",
        "extraEnv[0].name=HTTPS_PROXY,extraEnv[0].value=http://proxy:3128",
        "--set",
        "extraEnv=null",
    )
    assert "HTTPS_PROXY" not in _env(_sidecar(docs[0]["spec"]["template"]["spec"]))
    docs = _template("--set", "extraEnv[0].name=HTTPS_PROXY,extraEnv[0].value=http://proxy:3128")
    env = _sidecar(docs[0]["spec"]["template"]["spec"])["env"]
    assert env[-1] == {"name": "HTTPS_PROXY", "value": "http://proxy:3128"}


# --- packaging -------------------------------------------------------------------------------


def test_helmignore_keeps_scratch_files_out_of_the_package(tmp_path: Path) -> None:
    chart = tmp_path / "registry-proxy"
    shutil.copytree(CHART, chart)
    for junk in (
        ".git/HEAD",
        "values.yaml.orig",
        ".values.yaml.swp",
        ".DS_Store",
        "old.tgz",
        ".idea/workspace.xml",
        "templates/_helpers.tpl~",
    ):
        path = chart / junk
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("junk\n")
    result = _run_helm("package", str(chart), "--destination", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    [package] = (tmp_path / "out").glob("registry-proxy-*.tgz")
    with tarfile.open(package) as tar:
        names = {name.removeprefix("registry-proxy/") for name in tar.getnames()}
    assert {
        "Chart.yaml",
        "values.yaml",
        "values.schema.json",
        "README.md",
        "templates/_helpers.tpl",
        "files/alerts.yml",
        "ci/classic-values.yaml",
    } <= names
    leaked = {name for name in names if name.startswith((".git/", ".idea/"))} | {
        name for name in names if name.endswith((".orig", ".swp", "~", ".tgz", ".DS_Store"))
    }
    assert not leaked, leaked
