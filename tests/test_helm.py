"""The Helm chart (helm/minigate) and the Dockerfile its image comes from.

The chart is rendered by Helm's own engine (helm-python-sdk binds Helm's Go SDK: no helm binary), for the
default values and for tests/helm/full-values.yaml (every feature on). Every manifest is validated against
the Kubernetes API's schemas (kubernetes-validate, strict: unknown fields are errors) for the newest
Kubernetes it knows and for the oldest the chart admits; then the properties a platform team relies on
are checked, the rendered gateway config goes through `minigate check`, and the vLLM servers are compared
with what `minigate serving plan` (serving/plan.py) plans for the same config.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import referencing
import yaml

from minigate.config import Config, load_config
from minigate.errors import ConfigError
from minigate.logger.crypto import generate_key
from minigate.router.catalogue import Catalogue, Task, save_catalogue
from minigate.serving.plan import PlanError, PlanOptions, plan_vllm
from minigate.version import __version__

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (Helm's Go SDK for Python) is not installed")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "minigate"
FULL_VALUES = ROOT / "tests" / "helm" / "full-values.yaml"
DASHBOARDS = ROOT / "dashboards"
RELEASE, NAMESPACE = "mg", "ai"
# Custom resources kubernetes-validate has no schema for: their metadata and selectors are validated
# with the core API's definitions, their own fields by the checks below.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
# What the config's ${VAR}s read in a pod, as the Secrets would provide them.
POD_ENV = {
    "MINIGATE_AGENT_KEY": "sk-agent", "MINIGATE_ANALYST_KEY": "sk-analyst", "MINIGATE_ADMIN_KEY": "sk-admin",
    "OPENAI_API_KEY": "sk-openai", "ANTHROPIC_API_KEY": "sk-ant", "MINIGATE_LOG_KEY": generate_key(),
    "MINIGATE_POSTGRES_URL": "postgresql://minigate:secret@postgres.ai.svc:5432/minigate",
    "MINIGATE_REDIS_URL": "rediss://:secret@redis.ai.svc:6379/0",
}
# The call log in PostgreSQL, from a Secret: what lets the gateway run more than one replica.
POSTGRES = {"postgresql": {"enabled": True, "urlSecret": {"name": "minigate-postgres", "key": "url"}}}


# ---- rendering ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    loaded = helm.Chart.load(CHART)
    yield loaded
    loaded.close()


def _render(chart: Any, values: dict[str, Any] | None = None) -> dict[str, str]:
    return dict(chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True))


def _manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    return [doc for name, text in sorted(rendered.items()) if not name.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]


def _full_values(tmp_path: Path) -> dict[str, Any]:
    """full-values.yaml plus a real task catalogue (tasks.yaml and its centroids) for the config's rules."""
    values: dict[str, Any] = yaml.safe_load(FULL_VALUES.read_text(encoding="utf-8"))
    tasks = [Task(f"t00{i}", name, size=10, call_share=0.5, signatures={f"{i:016x}": 10})
             for i, name in enumerate(["invoice-extraction", "ticket-triage"], start=1)]
    centroids = {task.id: np.eye(4, dtype=np.float32)[i] for i, task in enumerate(tasks)}
    save_catalogue(Catalogue(tasks, centroids, 20, "2026-01-01T00:00:00Z", "test", "none", 3), tmp_path / "tasks.yaml")
    values["configFiles"] = {"tasks.yaml": (tmp_path / "tasks.yaml").read_text(encoding="utf-8")}
    values["binaryConfigFiles"] = {"tasks.npz": base64.b64encode((tmp_path / "tasks.npz").read_bytes()).decode()}
    return values


def _one(manifests: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[m['metadata']['name'] for m in found]}"
    return found[0]


def _gateway(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return next(m for m in manifests if m["kind"] == "Deployment" and m["metadata"]["labels"].get(
        "app.kubernetes.io/name") == "minigate")


def _config(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """The rendered minigate.yaml, as written (${VAR}s not read)."""
    configmap = _one([m for m in manifests if "minigate.yaml" in m.get("data", {})], "ConfigMap")
    return dict(yaml.safe_load(configmap["data"]["minigate.yaml"]))


def _load_rendered(manifests: list[dict[str, Any]], folder: Path) -> Config:
    """The rendered config as the gateway loads it in the pod. Skips while minigate.config does not know a
    field the chart writes yet (issue 19: `limits`, `server.workers` land in the config beside the chart)."""
    try:
        return load_config(_unpack_config(manifests, folder), POD_ENV)
    except ConfigError as exc:
        if "Extra inputs are not permitted" in str(exc) and re.search(r"\b(limits|workers)\b", str(exc)):
            pytest.skip(f"minigate.config does not accept this yet: {exc}")
        raise


def _env(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    container = _gateway(manifests)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("valueFrom", e.get("value")) for e in container.get("env", [])}


def _unpack_config(manifests: list[dict[str, Any]], folder: Path) -> Path:
    """Write the gateway ConfigMap's files as the pod sees them in /etc/minigate."""
    configmap = _one([m for m in manifests if "minigate.yaml" in m.get("data", {})], "ConfigMap")
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in configmap["data"].items():
        (folder / name).write_text(text, encoding="utf-8")
    for name, blob in configmap.get("binaryData", {}).items():
        (folder / name).write_bytes(base64.b64decode(blob))
    return folder / "minigate.yaml"


# ---- validation against the Kubernetes API's schemas -------------------------------------------

def _kube_versions() -> list[str]:
    """The newest Kubernetes kubernetes-validate knows, and the oldest the chart's kubeVersion admits."""
    wanted = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))["kubeVersion"]
    oldest = re.search(r">=\s*(\d+\.\d+)", wanted)
    assert oldest, f"Chart.yaml kubeVersion {wanted!r} names no lower bound"
    return sorted({kubernetes_validate.utils.major_minor(kubernetes_validate.utils.latest_version()), oldest.group(1)})


@cache
def _definitions_registry(version: str) -> tuple[Any, str]:
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}.0-local-strict"
    definitions = json.loads((folder / "_definitions.json").read_text(encoding="utf-8"))
    return referencing.Resource.from_contents(definitions) @ referencing.Registry(), definitions["$id"]


def _validate_part(part: Any, definition: str, version: str) -> None:
    registry, base = _definitions_registry(version)
    schema = {"$ref": f"{base}#/$defs/{definition}"}
    jsonschema.Draft202012Validator(schema, registry=registry).validate(part)


def _validate(manifest: dict[str, Any], version: str) -> None:
    kind = (manifest["apiVersion"], manifest["kind"])
    if kind in CUSTOM_KINDS:
        _validate_part(manifest["metadata"], "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", version)
        _validate_part(manifest["spec"]["selector"], "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector", version)
        return
    try:
        kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        pytest.fail(f"{manifest['kind']} {manifest['metadata']['name']} is invalid for Kubernetes {version} at "
                    f"{where}: {exc.message}")


def _validate_all(manifests: list[dict[str, Any]]) -> None:
    assert manifests
    for version in _kube_versions():
        for manifest in manifests:
            _validate(manifest, version)


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _check_names(manifests: list[dict[str, Any]]) -> None:
    """No two objects of one kind share a name (in one namespace): the second would replace the first."""
    keys = [(m["kind"], m["metadata"].get("namespace", NAMESPACE), m["metadata"]["name"]) for m in manifests]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)


def _check_selectors(manifests: list[dict[str, Any]]) -> None:
    """Every Service, PodDisruptionBudget, NetworkPolicy and ServiceMonitor selects some pods the chart
    makes, and every Deployment's selector matches its own pod template: what no schema can see."""
    pods = [m["spec"]["template"]["metadata"]["labels"] for m in manifests if m["kind"] == "Deployment"]
    for m in manifests:
        kind, spec = m["kind"], m.get("spec", {})
        selector = {
            "Deployment": lambda: spec["selector"]["matchLabels"],
            "Service": lambda: spec["selector"],
            "PodDisruptionBudget": lambda: spec["selector"]["matchLabels"],
            "NetworkPolicy": lambda: spec["podSelector"]["matchLabels"],
        }.get(kind, lambda: None)()
        if kind == "Deployment":
            assert _selects(selector, spec["template"]["metadata"]["labels"]), m["metadata"]["name"]
        elif selector is not None:
            assert any(_selects(selector, labels) for labels in pods), f"{kind} {m['metadata']['name']} selects no pod"
    services = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "Service"}
    for monitor in (m for m in manifests if m["kind"] == "ServiceMonitor"):
        chosen = [s for s in services.values() if _selects(monitor["spec"]["selector"]["matchLabels"],
                                                           s["metadata"]["labels"])]
        assert chosen, "the ServiceMonitor selects no Service"
        ports = {p["name"] for s in chosen for p in s["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports


# ---- tests ---------------------------------------------------------------------------------------

def test_default_values_render_valid_manifests(chart: Any) -> None:
    manifests = _manifests(_render(chart))
    _validate_all(manifests)
    _check_names(manifests)
    _check_selectors(manifests)
    kinds = {m["kind"] for m in manifests}
    assert {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"} <= kinds
    assert not kinds & {"HorizontalPodAutoscaler", "ServiceMonitor", "NetworkPolicy", "PersistentVolumeClaim",
                        "Secret"}
    assert [m["metadata"]["name"] for m in manifests if m["kind"] == "Deployment"] == ["mg-minigate"]


def test_full_values_render_valid_manifests(chart: Any, tmp_path: Path) -> None:
    rendered = _render(chart, _full_values(tmp_path))
    manifests = _manifests(rendered)
    _validate_all(manifests)
    _check_names(manifests)
    _check_selectors(manifests)
    count = {kind: sum(m["kind"] == kind for m in manifests) for kind in {m["kind"] for m in manifests}}
    assert count["Deployment"] == 3 and count["Service"] == 3 and count["NetworkPolicy"] == 3
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor", "PersistentVolumeClaim"):
        assert count[kind] == 1, kind
    hpa = _one(manifests, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["scaleTargetRef"]["name"] == "gateway"
    assert "replicas" not in _gateway(manifests)["spec"], "the HPA owns the replica count"
    monitor = _one(manifests, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["endpoints"][0]["authorization"]["credentials"] == {
        "name": "minigate-keys", "key": "MINIGATE_ANALYST_KEY"}
    egress = _one(manifests, "NetworkPolicy", "gateway")["spec"]["egress"]
    for port in (53, 5432, 6379, 4318, 443):  # DNS, PostgreSQL, Redis, the OTLP collector, the frontier APIs
        assert any(p["port"] == port for rule in egress for p in rule["ports"]), port
    # The NOTES say which vLLM server the config does not reach.
    notes = rendered["minigate/templates/NOTES.txt"]
    assert "WARNING: upstream qwen_small's base_url does not name this Service" in notes
    assert "upstream vllm-a's base_url" not in notes


def test_gateway_pod_probes_and_hardening(chart: Any, tmp_path: Path) -> None:
    for values in ({}, _full_values(tmp_path)):
        pod = _gateway(_manifests(_render(chart, values)))["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        # /readyz waits up to 2 s for each upstream's answer (serving/upstream.py probe).
        assert container["readinessProbe"]["timeoutSeconds"] > 2
        assert container["args"][container["args"].index("--port") + 1] == str(ports["http"])
        assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
        assert pod["automountServiceAccountToken"] is False
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        # The only writable places: the data volume (call log, spool, key file) and /tmp.
        writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
        assert writable == {"/var/lib/minigate", "/tmp"}
        assert container["workingDir"] == "/var/lib/minigate"


def test_keys_come_from_secrets(chart: Any, tmp_path: Path) -> None:
    pod = _gateway(_manifests(_render(chart, _full_values(tmp_path))))["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "minigate-keys"}}]
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in container["env"]}
    assert env["MINIGATE_POSTGRES_URL"] == {"name": "minigate-postgres", "key": "url"}
    assert env["ANTHROPIC_API_KEY"] == {"name": "anthropic", "key": "api-key"}
    assert env["MINIGATE_REDIS_URL"] == {"name": "minigate-redis", "key": "url"}
    # Without existingSecret, `data` makes a Secret, and changing it rolls the pods.
    made = _manifests(_render(chart, {"secrets": {"data": {"MINIGATE_AGENT_KEY": "a", "MINIGATE_ADMIN_KEY": "b"}}}))
    secret = _one(made, "Secret")
    assert secret["stringData"] == {"MINIGATE_AGENT_KEY": "a", "MINIGATE_ADMIN_KEY": "b"}
    assert _gateway(made)["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [
        {"secretRef": {"name": secret["metadata"]["name"]}}]
    other = _manifests(_render(chart, {"secrets": {"data": {"MINIGATE_AGENT_KEY": "c", "MINIGATE_ADMIN_KEY": "b"}}}))
    annotations = [_gateway(m)["spec"]["template"]["metadata"]["annotations"] for m in (made, other)]
    assert annotations[0]["checksum/secret"] != annotations[1]["checksum/secret"]


def test_config_checksum_changes_with_the_config_only(chart: Any) -> None:
    def checksum(values: dict[str, Any]) -> str:
        annotations = _gateway(_manifests(_render(chart, values)))["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["checksum/config"])

    config = yaml.safe_load((CHART / "files" / "minigate.yaml").read_text(encoding="utf-8"))
    assert checksum({}) == checksum({"config": config}), "the default config, spelled out, is the same file"
    assert checksum({}) == checksum({"replicaCount": 0, "resources": {"requests": {"cpu": "2"}}})
    changed = copy.deepcopy(config)
    changed["routes"]["gpt-4.1-mini"]["rules"] = [{"name": "all", "when": {}, "use": "frontier"}]
    assert checksum({}) != checksum({"config": changed})
    assert checksum({}) != checksum({"configFiles": {"tasks.yaml": "format: 1\n"}})


@pytest.mark.parametrize("values", ["default", "full"])
def test_rendered_config_passes_minigate_check(chart: Any, tmp_path: Path, values: str) -> None:
    chosen = {} if values == "default" else _full_values(tmp_path)
    manifests = _manifests(_render(chart, chosen))
    path = _unpack_config(manifests, tmp_path / "etc-minigate")
    result = subprocess.run([sys.executable, "-m", "minigate.cli", "check", str(path)], capture_output=True,
                            text=True, env={**POD_ENV, "PATH": "/usr/bin:/bin", "COLUMNS": "200"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{path}: valid" in result.stdout
    config = load_config(path, POD_ENV)
    store = config.logging.store
    if values == "full":  # PostgreSQL replaces the config's SQLite store; the spool goes to the data volume
        assert store == POD_ENV["MINIGATE_POSTGRES_URL"]
        assert str(config.logging.spool).startswith("/var/lib/minigate/")
        # Redis from a Secret shares the keys' limits between the replicas.
        assert config.limits.redis_url is not None
        assert config.limits.redis_url.get_secret_value() == POD_ENV["MINIGATE_REDIS_URL"]
        assert config.limits.fail == "closed" and config.auth.keys[0].limits.rpm == 600
    else:
        assert store.startswith("sqlite:////var/lib/minigate/")
        assert config.limits.redis_url is None


def test_vllm_servers_match_serving_plan(chart: Any, tmp_path: Path) -> None:
    values = _full_values(tmp_path)
    manifests = _manifests(_render(chart, values))
    config = load_config(_unpack_config(manifests, tmp_path / "etc-minigate"), POD_ENV)
    settings = chart.merge_values(values)["vllm"]  # the chart's defaults under the file's values
    options = PlanOptions(image=settings["image"], gpu_memory_utilization=settings["gpuMemoryUtilization"],
                          max_num_seqs=settings["maxNumSeqs"], max_lora_rank=settings["maxLoraRank"])
    plans = plan_vllm(config.upstreams, config.models, options)
    assert len(plans) == 2
    for plan in plans:
        planned_deployment, planned_service = plan.manifests
        name = planned_deployment["metadata"]["name"]
        deployment, service = _one(manifests, "Deployment", name), _one(manifests, "Service", name)
        override = settings["upstreams"].get(plan.upstream, {})
        extra_args = override.get("extraArgs", settings["extraArgs"])
        planned = planned_deployment["spec"]["template"]["spec"]["containers"][0]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == planned["image"]
        assert container["command"] == planned["command"]
        assert _canonical_args(container["args"]) == _canonical_args(planned["args"] + extra_args)
        assert planned["env"] == [e for e in container["env"] if "value" in e]
        assert container["ports"][0]["containerPort"] == planned["ports"][0]["containerPort"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe] == planned[probe], probe
        assert container["resources"]["limits"]["nvidia.com/gpu"] == override.get("gpus", settings["gpus"])
        assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        assert deployment["spec"]["selector"] == planned_deployment["spec"]["selector"]
        assert planned_deployment["metadata"]["labels"].items() <= deployment["metadata"]["labels"].items()
        assert deployment["spec"]["replicas"] == override.get("replicas", settings["replicas"])
        assert service["spec"]["selector"] == planned_service["spec"]["selector"]
        assert [{k: p[k] for k in ("name", "port", "targetPort")} for p in service["spec"]["ports"]] == \
            planned_service["spec"]["ports"]
        if "--enable-lora" in planned["args"]:  # the adapters' paths exist in the pod: the volume is mounted
            mount = next(m for m in container["volumeMounts"] if m["name"] == "adapters")
            assert mount["readOnly"] is True
            paths = [a.split("=", 1)[1] for a in planned["args"] if "=" in a]
            assert paths and all(p.startswith(mount["mountPath"] + "/") for p in paths)
    # The gateway's NetworkPolicy lets it reach each server; each server's admits only the gateway.
    gateway_labels = _gateway(manifests)["spec"]["template"]["metadata"]["labels"]
    egress = _one(manifests, "NetworkPolicy", "gateway")["spec"]["egress"]
    for plan in plans:
        name, port = plan.manifests[1]["metadata"]["name"], plan.manifests[1]["spec"]["ports"][0]["port"]
        assert any(rule.get("ports") == [{"port": port, "protocol": "TCP"}] and
                   rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == name
                   for rule in egress if "to" in rule)
        (ingress,) = _one(manifests, "NetworkPolicy", name)["spec"]["ingress"]
        assert _selects(ingress["from"][0]["podSelector"]["matchLabels"], gateway_labels)


def _canonical_args(args: list[str]) -> list[str]:
    """vLLM's arguments with the --lora-modules list sorted: its order means nothing, and Helm ranges
    over a mapping in key order where the config keeps the file's order."""
    if "--lora-modules" not in args:
        return args
    start = args.index("--lora-modules") + 1
    end = next((i for i in range(start, len(args)) if args[i].startswith("--")), len(args))
    return args[:start] + sorted(args[start:end]) + args[end:]


def test_vllm_plan_errors_are_the_chart_errors(chart: Any, tmp_path: Path) -> None:
    """An upstream whose models name two base models: Helm refuses it with serving plan's message."""
    config = {
        "server": {"host": "0.0.0.0", "port": 8080},
        "upstreams": {"gpu": {"kind": "vllm", "base_url": "http://gpu:8000/v1"}},
        "models": {"a": {"upstream": "gpu", "model": "org/a", "tier": "miniature"},
                   "b": {"upstream": "gpu", "model": "org/b", "tier": "miniature"}},
        "routes": {"a": {"default": "a"}},
    }
    (tmp_path / "minigate.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    loaded = load_config(tmp_path / "minigate.yaml", {})
    with pytest.raises(PlanError) as planned:
        plan_vllm(loaded.upstreams, loaded.models)
    with pytest.raises(helm.HelmRenderError) as rendered:
        _render(chart, {"config": config, "vllm": {"enabled": True}})
    assert str(planned.value) in str(rendered.value)


def test_a_config_without_keys_is_refused(chart: Any) -> None:
    """`minigate serve` refuses a non-loopback address without API keys; the chart says so at install."""
    config = yaml.safe_load((CHART / "files" / "minigate.yaml").read_text(encoding="utf-8"))
    del config["auth"]
    with pytest.raises(helm.HelmRenderError, match="config.auth.keys is empty"):
        _render(chart, {"config": config})


def test_default_runs_one_replica_with_sqlite(chart: Any) -> None:
    """A plain `helm install` never splits the call log: one pod writes the one SQLite file, and NOTES say so."""
    rendered = _render(chart)
    manifests = _manifests(rendered)
    assert _gateway(manifests)["spec"]["replicas"] == 1
    assert not [m for m in manifests if m["kind"] == "HorizontalPodAutoscaler"]
    assert _config(manifests)["logging"]["store"].startswith("sqlite:")
    notes = rendered["minigate/templates/NOTES.txt"]
    assert "SQLite is one file per pod, so the gateway runs one replica" in notes
    assert "WARNING" not in notes


@pytest.mark.parametrize(("values", "asked"), [
    ({"replicaCount": 2}, "replicaCount 2"),
    ({"autoscaling": {"enabled": True}}, "autoscaling.enabled"),
    ({"replicaCount": 3, "persistence": {"enabled": True}}, "replicaCount 3"),
])
def test_sqlite_refuses_several_replicas(chart: Any, values: dict[str, Any], asked: str) -> None:
    """Each pod would write its own SQLite file: the render fails, saying why and what to set instead."""
    with pytest.raises(helm.HelmRenderError) as caught:
        _render(chart, values)
    message = str(caught.value)
    assert f"{asked} with the SQLite call log: each pod would keep its own SQLite file, a split log" in message
    assert "Run one replica (replicaCount: 1, no autoscaling)" in message
    assert "postgresql.enabled with postgresql.urlSecret" in message


def test_sqlite_on_a_volume_is_replaced_not_surged(chart: Any) -> None:
    """One SQLite writer on a ReadWriteOnce claim: a rollout stops the old pod before the new one mounts it."""
    single = _manifests(_render(chart, {"persistence": {"enabled": True}}))
    claim = _one(single, "PersistentVolumeClaim")
    gateway = _gateway(single)
    assert {"name": "data", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}} in \
        gateway["spec"]["template"]["spec"]["volumes"]
    assert gateway["spec"]["strategy"] == {"type": "Recreate"}
    assert "strategy" not in _gateway(_manifests(_render(chart)))["spec"], "an emptyDir needs no Recreate"


def test_postgresql_allows_several_replicas(chart: Any, tmp_path: Path) -> None:
    """With the log in PostgreSQL (the chart's Secret or a postgresql:// store in the config) replicas share it."""
    manifests = _manifests(_render(chart, {"replicaCount": 2, **POSTGRES}))
    _validate_all(manifests)
    assert _gateway(manifests)["spec"]["replicas"] == 2
    assert _load_rendered(manifests, tmp_path / "chart").logging.store == POD_ENV["MINIGATE_POSTGRES_URL"]
    config = yaml.safe_load((CHART / "files" / "minigate.yaml").read_text(encoding="utf-8"))
    config["logging"]["store"] = "postgresql://minigate@postgres.ai.svc:5432/minigate"
    rendered = _render(chart, {"replicaCount": 3, "config": config})
    assert _gateway(_manifests(rendered))["spec"]["replicas"] == 3
    assert "SQLite" not in rendered["minigate/templates/NOTES.txt"]


def test_redis_url_from_a_value(chart: Any, tmp_path: Path) -> None:
    """A plain URL goes into the config with limits.fail; the NetworkPolicy lets the gateway reach Redis."""
    url = "redis://redis.ai.svc:6380/0"
    values = {"limits": {"redis": {"url": url, "port": 6380}, "fail": "closed"}, "networkPolicy": {"enabled": True}}
    manifests = _manifests(_render(chart, values))
    _validate_all(manifests)
    assert _config(manifests)["limits"] == {"redis_url": url, "fail": "closed"}
    assert "MINIGATE_REDIS_URL" not in _env(manifests)
    egress = _one(manifests, "NetworkPolicy")["spec"]["egress"]
    assert any(p["port"] == 6380 for rule in egress for p in rule["ports"])
    loaded = _load_rendered(manifests, tmp_path / "etc-minigate")
    assert loaded.limits.redis_url is not None and loaded.limits.redis_url.get_secret_value() == url
    assert loaded.limits.fail == "closed"


def test_redis_url_from_a_secret(chart: Any, tmp_path: Path) -> None:
    """A URL with a password stays in its Secret: the pod's env has it, the config reads ${MINIGATE_REDIS_URL}."""
    manifests = _manifests(_render(chart, {"limits": {"redis": {"urlSecret": {"name": "redis", "key": "url"}}}}))
    _validate_all(manifests)
    assert _config(manifests)["limits"] == {"redis_url": "${MINIGATE_REDIS_URL}", "fail": "open"}
    assert _env(manifests)["MINIGATE_REDIS_URL"] == {"secretKeyRef": {"name": "redis", "key": "url"}}
    loaded = _load_rendered(manifests, tmp_path / "etc-minigate")
    assert loaded.limits.redis_url is not None
    assert loaded.limits.redis_url.get_secret_value() == POD_ENV["MINIGATE_REDIS_URL"]
    assert loaded.limits.fail == "open"
    with pytest.raises(helm.HelmRenderError, match="set url or urlSecret.name, not both"):
        _render(chart, {"limits": {"redis": {"url": "redis://r:6379", "urlSecret": {"name": "redis"}}}})


def test_key_limits_pass_through(chart: Any, tmp_path: Path) -> None:
    """The config's per-key limits reach the pod as written. Without Redis, each replica counts them on its
    own: NOTES warn, naming how many replicas."""
    config = yaml.safe_load((CHART / "files" / "minigate.yaml").read_text(encoding="utf-8"))
    limits = {"rpm": 600, "tpm": 200000, "usd_per_day": 50, "usd_per_month": 1000,
              "routes": {"gpt-4.1-mini": {"rpm": 60, "usd_per_day": 10}}}
    config["auth"]["keys"][0]["limits"] = limits
    rendered = _render(chart, {"config": config, "replicaCount": 3, **POSTGRES})
    manifests = _manifests(rendered)
    written = _config(manifests)
    assert written["auth"]["keys"][0]["limits"] == limits
    assert "limits" not in written, "no Redis asked for: the config keeps in-process counters"
    assert "on its own (pods: 3, workers per pod: 1)" in rendered["minigate/templates/NOTES.txt"]
    scaled = _render(chart, {"config": config, "autoscaling": {"enabled": True, "maxReplicas": 8}, **POSTGRES})
    assert "on its own (pods: up to 8, workers per pod: 1)" in scaled["minigate/templates/NOTES.txt"]
    redis = {"limits": {"redis": {"url": "redis://redis.ai.svc:6379/0"}}}
    shared = _render(chart, {"config": config, "replicaCount": 3, **POSTGRES, **redis})
    assert "WARNING" not in shared["minigate/templates/NOTES.txt"]
    loaded = _load_rendered(manifests, tmp_path / "etc-minigate")
    assert loaded.auth.keys[0].limits.rpm == 600
    assert loaded.auth.keys[0].limits.routes["gpt-4.1-mini"].usd_per_day == 10


def test_workers_set_server_workers(chart: Any, tmp_path: Path) -> None:
    """`workers` overrides the config's server.workers; unset, the config's stands. Several workers without
    Redis count limits each on their own, even in one pod: NOTES warn."""
    assert "workers" not in _config(_manifests(_render(chart)))["server"]
    rendered = _render(chart, {"workers": 4})
    manifests = _manifests(rendered)
    assert _config(manifests)["server"]["workers"] == 4
    assert "on its own (pods: 1, workers per pod: 4)" in rendered["minigate/templates/NOTES.txt"]
    loaded = _load_rendered(manifests, tmp_path / "etc-minigate")
    assert loaded.server.model_dump()["workers"] == 4


@pytest.mark.parametrize(("values", "message"), [
    ({"replicaCount": "two"}, "at '/replicaCount': got string, want integer"),
    ({"replicas": 3}, "additional properties 'replicas' not allowed"),
    ({"vllm": {"gpus": 0}}, "at '/vllm/gpus': minimum: got 0, want 1"),
    ({"config": {"rotues": {}}}, "invalid propertyName 'rotues'"),
    ({"serviceMonitor": {"keySecret": {"name": "keys"}}}, "missing property 'key'"),
    ({"probes": {"readiness": {"timeoutSecond": 5}}}, "additional properties 'timeoutSecond' not allowed"),
    ({"limits": {"fail": "half"}}, "at '/limits/fail'"),
    ({"limits": {"redis": {"url": "http://redis:6379"}}}, "at '/limits/redis/url'"),
    ({"workers": 0}, "at '/workers'"),
])
def test_schema_rejects_bad_values_naming_the_field(chart: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        _render(chart, values)
    assert message in str(caught.value)


def test_schema_knows_the_config_sections() -> None:
    """values.schema.json lists minigate.yaml's top-level sections: a typo fails at `helm install`."""
    from minigate.config import Config

    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert set(schema["properties"]["config"]["propertyNames"]["enum"]) == set(Config.model_fields)


def test_dashboards_ship_as_grafana_configmaps(chart: Any) -> None:
    assert (CHART / "dashboards").is_symlink() and (CHART / "dashboards").resolve() == DASHBOARDS.resolve()
    files = sorted(DASHBOARDS.glob("*.json"))
    if not files:
        pytest.skip("dashboards/ holds no *.json yet")
    configmaps = [m for m in _manifests(_render(chart)) if m["metadata"].get("labels", {}).get("grafana_dashboard")]
    assert len(configmaps) == len(files)
    by_key = {key: (m, text) for m in configmaps for key, text in m["data"].items()}
    assert set(by_key) == {f.name for f in files}
    for path in files:
        configmap, text = by_key[path.name]
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert configmap["metadata"]["annotations"] == {"grafana_folder": "minigate"}
        dashboard = json.loads(text)
        assert dashboard == json.loads(path.read_text(encoding="utf-8"))
        assert dashboard.get("title") and isinstance(dashboard.get("panels"), list)
    assert not [m for m in _manifests(_render(chart, {"dashboards": {"enabled": False}}))
                if "grafana_dashboard" in m["metadata"].get("labels", {})]


def test_packaged_chart_holds_the_dashboards_themselves(chart: Any, tmp_path: Path) -> None:
    """`helm package` follows the dashboards link: the archive renders exactly what the folder does,
    and .helmignore keeps the dashboards' generator code out of it."""
    archive = Path(chart.save(tmp_path))
    with helm.Chart.load(archive) as packaged:
        files = [f["name"] for f in packaged.files]
        assert _render(packaged) == _render(chart)
    assert sorted(f for f in files if f.startswith("dashboards/")) == sorted(
        f"dashboards/{p.name}" for p in DASHBOARDS.glob("*.json"))


def test_chart_lints_clean(tmp_path: Path) -> None:
    for values in ({}, _full_values(tmp_path)):
        report = helm.lint(CHART, values, strict=True)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
        assert not problems, problems


def test_chart_and_image_agree(chart: Any) -> None:
    """The Dockerfile parses with BuildKit's own parser, its RUN lines are valid sh, and it builds the image
    the chart deploys: the chart's version, user, port, config path and data volume."""
    dockerfile = pytest.importorskip("dockerfile", reason="`dockerfile` (BuildKit's parser) is not installed")
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert meta["appVersion"] == __version__
    commands = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    for run in (c for c in commands if c.cmd == "RUN"):
        checked = subprocess.run(["sh", "-n", "-c", run.value[0]], capture_output=True, text=True, timeout=10)
        assert checked.returncode == 0, f"line {run.start_line}: {checked.stderr}"
    final = commands[max(i for i, c in enumerate(commands) if c.cmd == "FROM"):]
    last = {c.cmd: c for c in final}
    assert last["USER"].value == ("10001:10001",)
    assert last["WORKDIR"].value == last["VOLUME"].value == ("/var/lib/minigate",)
    assert last["EXPOSE"].value == ("8080",)
    assert last["ENTRYPOINT"].value == ("minigate",)
    assert last["CMD"].value[:3] == ("serve", "--config", "/etc/minigate/minigate.yaml")
    assert "http://127.0.0.1:8080/healthz" in " ".join(last["HEALTHCHECK"].value)
    copies = [c.value for c in final if c.cmd == "COPY"]
    assert ("helm/minigate/files/minigate.yaml", "/etc/minigate/minigate.yaml") in copies
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert "!helm/minigate/files/minigate.yaml" in ignored
    # The pod runs as the image's user and writes where the image expects it.
    pod = _gateway(_manifests(_render(chart)))["spec"]["template"]["spec"]
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    assert user == last["USER"].value[0]
    assert pod["containers"][0]["workingDir"] == last["WORKDIR"].value[0]
