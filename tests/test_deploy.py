"""The container image and the Kubernetes manifests: linted, schema-valid, and consistent with the worker.

Nothing here builds the image or talks to a cluster: the Dockerfile is linted and read, the manifests are
validated against the Kubernetes schemas bundled with kubernetes-validate and, where kubectl is installed,
the example overlay is rendered with its kustomize.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry
from promserver import promtool

from reconciler.observability.http import HttpServer
from reconciler.rules import load_rules
from reconciler.settings import Settings

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "Dockerfile"
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAY = KUBERNETES / "overlays" / "example"
# The newest schemas kubernetes-validate 1.37.0 bundles.
KUBERNETES_VERSION = "1.37"
# Custom resources: not in those schemas, checked for shape here instead.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
DASHBOARD_CONFIG_MAP = "deletion-reconciler-dashboard"
# Time the worker needs after the drain: last checkpoints, releasing its leases (one conditional write each),
# closing the AWS clients and the HTTP server.
SHUTDOWN_MARGIN_SECONDS = 20
# Settings the Deployment states explicitly for several replicas (their defaults).
LEASE_KNOBS = ("lease_seconds", "heartbeat_seconds", "leases_to_take", "max_leases", "max_records_in_flight")

Object = dict[str, Any]


# -- helpers: tools, Dockerfile, manifests ---------------------------------------------------------------
def _venv_tool(name: str) -> str:
    """The tool installed beside this interpreter (the locked dev group), not whatever is on PATH."""
    tool = shutil.which(name, path=str(Path(sys.executable).parent))
    assert tool is not None, f"{name} is not installed in {Path(sys.executable).parent}: sync the dev group"
    return tool


def _run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion whatever its exit code; the caller asserts on it."""
    return subprocess.run(  # noqa: S603 - fixed tools with our own arguments
        command, capture_output=True, text=True, check=False, cwd=cwd, timeout=120
    )


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    arguments: str


def _instructions(text: str) -> list[Instruction]:
    """Logical Dockerfile instructions: continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    keyword_and_rest = (line.partition(" ") for line in lines)
    return [Instruction(keyword.upper(), rest.strip()) for keyword, _, rest in keyword_and_rest]


def _stages() -> list[list[Instruction]]:
    """The Dockerfile's stages, each starting with its FROM."""
    stages: list[list[Instruction]] = []
    for instruction in _instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if instruction.keyword == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return stages


def _final_stage() -> list[Instruction]:
    return _stages()[-1]


def _arguments(stage: list[Instruction], keyword: str) -> list[str]:
    return [i.arguments for i in stage if i.keyword == keyword]


def _image_user() -> tuple[int, int]:
    """UID and GID of the final stage's last USER."""
    user, _, group = _arguments(_final_stage(), "USER")[-1].partition(":")
    assert user.isdigit(), f"USER {user!r} is not numeric: runAsNonRoot cannot verify a name"
    assert group.isdigit(), f"USER's group {group!r} is not numeric"
    return int(user), int(group)


def _documents(path: Path) -> list[Object]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _kustomizations() -> list[Path]:
    """The manifests' kustomizations, and those the base pulls in for the generated rules and dashboard."""
    generated = [
        ROOT / "deploy" / "prometheus" / "kustomization.yaml",
        ROOT / "dashboards" / "kustomization.yaml",
    ]
    return sorted([*KUBERNETES.rglob("kustomization.yaml"), *generated])


def _resource_files(kustomization: Path) -> list[Path]:
    """Manifest files a kustomization lists under `resources` (not other kustomizations)."""
    entries = _documents(kustomization)[0].get("resources", [])
    return [kustomization.parent / entry for entry in entries if (kustomization.parent / entry).is_file()]


def _manifest_files() -> list[Path]:
    return [path for kustomization in _kustomizations() for path in _resource_files(kustomization)]


def _base_objects() -> list[Object]:
    return [doc for path in _resource_files(BASE / "kustomization.yaml") for doc in _documents(path)]


def _one(objects: list[Object], kind: str) -> Object:
    (found,) = [o for o in objects if o["kind"] == kind]
    assert isinstance(found, dict)
    return found


def _container(deployment: Object) -> Object:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _env(container: Object) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _job_label(objects: list[Object]) -> str:
    """The `job` label Prometheus Operator gives the worker's series: the Service's jobLabel value or name."""
    monitor, service = _one(objects, "ServiceMonitor"), _one(objects, "Service")
    job_label = monitor["spec"].get("jobLabel")
    return str(service["metadata"]["labels"][job_label]) if job_label else str(service["metadata"]["name"])


# -- the image ---------------------------------------------------------------------------------------------
def test_hadolint_passes_without_ignores(tmp_path: Path) -> None:
    """hadolint finds nothing, down to style level; an empty config means no rule is switched off."""
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")
    command = [_venv_tool("hadolint"), "--config", str(config), "--format", "json", "-t", "style"]
    result = _run(*command, str(DOCKERFILE))
    assert (result.returncode, json.loads(result.stdout)) == (0, []), result.stdout + result.stderr


def test_the_image_runs_as_a_fixed_non_root_uid() -> None:
    uid, gid = _image_user()
    assert uid != 0
    assert gid != 0


def test_the_entrypoint_is_the_worker_itself_in_exec_form() -> None:
    """Exec form: PID 1 is the Python process, so SIGTERM reaches the worker's own handler."""
    (entrypoint,) = _arguments(_final_stage(), "ENTRYPOINT")
    (cmd,) = _arguments(_final_stage(), "CMD")
    assert json.loads(entrypoint) == ["/opt/reconciler/bin/reconciler"]
    assert json.loads(cmd) == ["run"]


def test_the_final_stage_installs_and_builds_nothing() -> None:
    """No uv, pip install, compiler or apt in the final stage; only the venv comes from the builder."""
    runs = " ".join(_arguments(_final_stage(), "RUN"))
    for tool in (r"\buv\b", r"\bpip3?\s+install\b", r"\bgcc\b", r"build-essential", r"apt-get\s+install"):
        assert not re.search(tool, runs), tool
    copies = [arguments.split() for arguments in _arguments(_final_stage(), "COPY")]
    assert copies == [["--from=builder", "/opt/reconciler", "/opt/reconciler"]]


def test_the_image_never_writes_bytecode_and_exposes_the_metrics_port() -> None:
    env = " ".join(_arguments(_final_stage(), "ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert _arguments(_final_stage(), "EXPOSE") == [str(Settings.model_fields["http_port"].default)]


def test_every_base_image_is_pinned_to_a_patch_version_and_a_digest() -> None:
    bases = [stage[0].arguments.split()[0] for stage in _stages()]
    for base in bases:
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*@sha256:[0-9a-f]{64}", base), base
    assert len(set(bases)) == 1  # the venv's interpreter path must exist in the final stage


def test_the_builder_installs_the_locked_runtime_only_with_the_pinned_uv() -> None:
    """`uv sync --locked --no-dev`, no extra (the demo's moto) and no group; uv as pinned in scripts/dev."""
    (uv_version,) = re.findall(r'^UV_VERSION="([^"]+)"', (ROOT / "scripts" / "dev").read_text(), re.MULTILINE)
    builder = " ".join(_arguments(_stages()[0], "RUN"))
    assert f"uv=={uv_version}" in builder
    syncs = re.findall(r"uv sync[^&;]*", builder)
    assert syncs
    for sync in syncs:
        assert "--locked" in sync
        assert "--no-dev" in sync
        assert not re.search(r"--(all-)?extras?\b|--(all-)?groups?\b", sync), sync


def _locked_runtime_closure() -> set[str]:
    """Distributions `uv sync --no-dev` installs from uv.lock: the project's dependencies, transitively."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text(encoding="utf-8"))
    packages: dict[str, list[Object]] = {}
    for package in lock["package"]:
        packages.setdefault(package["name"], []).append(package)
    wanted: list[str] = ["deletion-reconciler"]
    seen: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name in seen:
            continue
        seen.add(name)
        for package in packages[name]:
            for dependency in package.get("dependencies", []):
                wanted.append(dependency["name"])
                for extra in dependency.get("extra", []):
                    for target in packages[dependency["name"]]:
                        wanted += [d["name"] for d in target.get("optional-dependencies", {}).get(extra, [])]
    return seen


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_IMPORT_EVERYTHING = """
import importlib, sys
blocked = set(sys.argv[1].split(","))
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"{name} is not a locked runtime dependency", name=name)
sys.meta_path.insert(0, Block())
for module in sys.argv[2].split(","):
    importlib.import_module(module)
"""


def test_the_worker_imports_nothing_outside_the_locked_runtime_dependencies() -> None:
    """Every module the image runs (all but the demo) imports with dev-only distributions hidden."""
    allowed = {_normalized(name) for name in _locked_runtime_closure()}
    assert not {"moto", "pytest", "hypothesis"} & allowed
    blocked = {
        module
        for module, distributions in importlib.metadata.packages_distributions().items()
        if module != "reconciler" and not any(_normalized(d) in allowed for d in distributions)
    }
    sources = (ROOT / "reconciler").rglob("*.py")
    modules = sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in sources
        if "demo" not in path.relative_to(ROOT).parts and path.name != "__main__.py"  # __main__ runs the CLI
    )
    command = [sys.executable, "-c", _IMPORT_EVERYTHING, ",".join(sorted(blocked)), ",".join(modules)]
    result = _run(*command, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides; `!` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        body = pattern.removeprefix("!").strip("/")
        candidates = {body, body.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(p, c) for p in prefixes for c in candidates):
            ignored = not pattern.startswith("!")
    return ignored


def test_the_build_context_has_what_copy_needs_and_nothing_else() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    sources = [
        source
        for stage in _stages()
        for arguments in _arguments(stage, "COPY")
        if not arguments.startswith("--from")
        for source in arguments.split()[:-1]
    ]
    needed = sources + [str(p.relative_to(ROOT)) for p in (ROOT / "reconciler").rglob("*.py")]
    assert [path for path in needed if _dockerignored(path, patterns)] == []
    kept_out = [".git", ".venv", ".venv-tools", "tests/test_deploy.py", ".mypy_cache", ".hypothesis"]
    kept_out += ["reconciler/__pycache__/app.cpython-311.pyc", "reconciler/core/__pycache__"]
    assert [path for path in kept_out if not _dockerignored(path, patterns)] == []


# -- the manifests: schemas and kustomize -------------------------------------------------------------------
def _kubernetes_validate(paths: list[Path]) -> list[str]:
    """Strict validation; returns the kinds it had no schema for (it only warns about those)."""
    command = [_venv_tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, *map(str, paths)]
    result = _run(*command)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout
    warnings = [line for line in result.stdout.splitlines() if not line.startswith("INFO")]
    missing = [re.search(r"Couldn't find schema for kind (\S+) with api version", w) for w in warnings]
    assert all(missing), warnings  # no other kind of warning passes silently
    return [m.group(1) for m in missing if m]


def _check_custom_resource(resource: Object, objects: list[Object]) -> None:
    """What a CRD's schema would check, for the kinds kubernetes-validate does not know."""
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["metadata"]["name"]
    spec = resource["spec"]
    if resource["kind"] == "ServiceMonitor":
        (service,) = [o for o in objects if o["kind"] == "Service"]
        assert _matches(spec["selector"]["matchLabels"], service["metadata"]["labels"])
        port_names = {port["name"] for port in service["spec"]["ports"]}
        for endpoint in spec["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint["path"] == "/metrics"
            assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
    else:
        for group in spec["groups"]:
            assert group["name"]
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule), rule
                assert rule["expr"]


def test_every_manifest_validates_strictly_and_custom_resources_have_their_shape() -> None:
    kinds = set(_kubernetes_validate(_manifest_files()))
    assert kinds <= CRD_KINDS, f"no schema for {kinds - CRD_KINDS}"
    objects = [doc for path in _manifest_files() for doc in _documents(path)]
    custom = [o for o in objects if o["kind"] in CRD_KINDS]
    assert {o["kind"] for o in custom} == CRD_KINDS
    for resource in custom:
        _check_custom_resource(resource, objects)


def _referenced_files(kustomization: Path) -> Iterator[Path]:
    spec = _documents(kustomization)[0]
    for entry in spec.get("resources", []):
        path = kustomization.parent / entry
        yield path / "kustomization.yaml" if path.is_dir() else path
    for patch in spec.get("patches", []):
        if "path" in patch:
            yield kustomization.parent / patch["path"]
    for generator in spec.get("configMapGenerator", []):
        for entry in generator.get("files", []):
            yield kustomization.parent / entry.rpartition("=")[2]


def test_every_file_a_kustomization_names_exists_and_parses() -> None:
    assert {BASE / "kustomization.yaml", OVERLAY / "kustomization.yaml"} <= set(_kustomizations())
    for kustomization in _kustomizations():
        for path in _referenced_files(kustomization):
            assert path.is_file(), f"{kustomization} names {path}, which does not exist"
            if path.suffix == ".yaml":
                assert _documents(path)
            elif path.suffix == ".toml":
                load_rules(path)
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))


def test_overlay_patches_and_generators_target_what_the_base_defines() -> None:
    overlay = _documents(OVERLAY / "kustomization.yaml")[0]
    assert "../../base" in overlay["resources"]
    defined = {(o["kind"], o["metadata"]["name"]) for o in _base_objects()}
    for patch in overlay.get("patches", []):
        if "path" in patch:
            for doc in _documents(OVERLAY / patch["path"]):
                assert (doc["kind"], doc["metadata"]["name"]) in defined, patch
        else:
            assert (patch["target"]["kind"], patch["target"]["name"]) in defined, patch
    base_generators = {g["name"] for g in _documents(BASE / "kustomization.yaml")[0]["configMapGenerator"]}
    for generator in overlay.get("configMapGenerator", []):
        if generator.get("behavior") in {"replace", "merge"}:
            assert generator["name"] in base_generators


@pytest.fixture(scope="module")
def rendered() -> list[Object]:
    """The example overlay as `kubectl kustomize` renders it (kubectl from the dev group, never skipped)."""
    result = _run(_venv_tool("kubectl"), "kustomize", str(OVERLAY))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def test_the_rendered_overlay_validates_strictly(rendered: list[Object], tmp_path: Path) -> None:
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(rendered))
    assert set(_kubernetes_validate([path])) <= CRD_KINDS
    for resource in (o for o in rendered if o["kind"] in CRD_KINDS):
        _check_custom_resource(resource, rendered)


def test_the_rendered_overlay_carries_its_image_role_region_namespace_and_rules(
    rendered: list[Object],
) -> None:
    overlay = _documents(OVERLAY / "kustomization.yaml")[0]
    (image,) = overlay["images"]
    deployment = _one(rendered, "Deployment")
    assert _container(deployment)["image"] == f"{image['newName']}:{image['newTag']}"
    assert _env(_container(deployment))["AWS_REGION"] == "eu-west-1"
    account = _one(rendered, "ServiceAccount")
    role = "arn:aws:iam::123456789012:role/deletion-reconciler"
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == role
    assert {o["metadata"].get("namespace") for o in rendered if o["kind"] != "Namespace"} == {
        overlay["namespace"]
    }
    config_map = _one([o for o in rendered if o["metadata"]["name"] != DASHBOARD_CONFIG_MAP], "ConfigMap")
    (volume,) = deployment["spec"]["template"]["spec"]["volumes"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]  # the hashed name
    # The overlay's own rules replaced the base's.
    assert config_map["data"]["rules.toml"] == (OVERLAY / "rules.toml").read_text(encoding="utf-8")


def test_the_rendered_prometheus_rule_is_the_generated_one_and_passes_promtool(
    rendered: list[Object], tmp_path: Path
) -> None:
    rule = _one(rendered, "PrometheusRule")
    generated = _documents(ROOT / "deploy" / "prometheus" / "prometheusrule.yaml")[0]
    assert rule["spec"] == generated["spec"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    checked = promtool("check", "rules", str(tmp_path / "rules.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_rendered_dashboard_config_map_carries_the_generated_dashboard_for_the_sidecar(
    rendered: list[Object],
) -> None:
    (config_map,) = [o for o in rendered if o["metadata"]["name"] == DASHBOARD_CONFIG_MAP]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = config_map["data"].values()
    assert text == (ROOT / "dashboards" / "reconciler-overview.json").read_text(encoding="utf-8")


# -- the manifests and the worker --------------------------------------------------------------------------
def _probes(container: Object) -> dict[str, Object]:
    names = ("startupProbe", "livenessProbe", "readinessProbe")
    return {name: container[name] for name in names if name in container}


async def test_probes_and_scrapes_reach_the_workers_real_routes() -> None:
    """The worker's HTTP server answers the manifests' paths: liveness 200, readiness 503, not 404."""
    objects = _base_objects()
    container = _container(_one(objects, "Deployment"))
    probes = _probes(container)
    assert {"livenessProbe", "readinessProbe"} <= set(probes)
    expected = {"startupProbe": 200, "livenessProbe": 200, "readinessProbe": 503}
    server = await HttpServer(
        CollectorRegistry(), "127.0.0.1", 0, lambda: (True, "ok"), lambda: (False, "not yet")
    ).start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{server.port}") as session:
            for name, probe in probes.items():
                async with session.get(probe["httpGet"]["path"]) as response:
                    assert response.status == expected[name], name
            for endpoint in _one(objects, "ServiceMonitor")["spec"]["endpoints"]:
                async with session.get(endpoint["path"]) as response:
                    assert response.status == 200
    finally:
        await server.close()


def test_probes_and_service_use_the_port_the_worker_listens_on() -> None:
    objects = _base_objects()
    container = _container(_one(objects, "Deployment"))
    env = _env(container)
    port = int(env.get("RECONCILER_HTTP_PORT", Settings.model_fields["http_port"].default))
    assert env["RECONCILER_HTTP_HOST"] == "0.0.0.0"  # noqa: S104 - the kubelet probes from outside the pod
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == port
    for probe in _probes(container).values():
        assert probe["httpGet"]["port"] in {"metrics", port}
    (service_port,) = _one(objects, "Service")["spec"]["ports"]
    assert service_port["targetPort"] in {"metrics", port}


def test_termination_grace_outlasts_the_drain() -> None:
    """The kubelet waits for the drain (and any preStop sleep) plus a margin before it sends SIGKILL."""
    pod = _one(_base_objects(), "Deployment")["spec"]["template"]["spec"]
    container = _container(_one(_base_objects(), "Deployment"))
    default = Settings.model_fields["shutdown_grace_seconds"].default
    drain = float(_env(container).get("RECONCILER_SHUTDOWN_GRACE_SECONDS", default))
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    sleep = float(pre_stop.get("sleep", {}).get("seconds", 0))
    command = pre_stop.get("exec", {}).get("command", [])
    sleep += sum(float(c) for c in re.findall(r"\bsleep\s+(\d+(?:\.\d+)?)", " ".join(command)))
    assert pod["terminationGracePeriodSeconds"] >= sleep + drain + SHUTDOWN_MARGIN_SECONDS


def test_the_pod_is_locked_down_as_the_image_user() -> None:
    pod = _one(_base_objects(), "Deployment")["spec"]["template"]["spec"]
    container = _container(_one(_base_objects(), "Deployment"))
    effective = pod["securityContext"] | container["securityContext"]
    assert (effective["runAsUser"], effective["runAsGroup"]) == _image_user()
    assert effective["runAsNonRoot"] is True
    assert effective["readOnlyRootFilesystem"] is True
    assert effective["allowPrivilegeEscalation"] is False
    assert effective["capabilities"]["drop"] == ["ALL"]
    assert effective["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False  # IRSA's token is a separate projected volume


def test_the_rules_configmap_holds_valid_rules_mounted_where_the_config_points() -> None:
    deployment = _one(_base_objects(), "Deployment")
    container = _container(deployment)
    config = Path(_env(container)["RECONCILER_CONFIG"])
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) in {config, config.parent}]
    assert mount.get("readOnly") is True
    key = mount.get("subPath", config.name)
    name = volumes[mount["name"]]["configMap"]["name"]
    for kustomization in (BASE / "kustomization.yaml", OVERLAY / "kustomization.yaml"):
        generators = _documents(kustomization)[0]["configMapGenerator"]
        (generator,) = [g for g in generators if g["name"] == name]
        (entry,) = [f for f in generator["files"] if f.rpartition("=")[2].endswith(".toml")]
        assert (entry.partition("=")[0] if "=" in entry else Path(entry).name) == key
        assert load_rules(kustomization.parent / entry.rpartition("=")[2]).sources


def test_the_example_overlay_deploys_the_rules_its_iam_policy_was_derived_from() -> None:
    """deploy/example/iam-policy.json derives from deploy/example/rules.toml: the overlay deploys those."""
    assert load_rules(OVERLAY / "rules.toml") == load_rules(ROOT / "deploy" / "example" / "rules.toml")


def test_selectors_find_the_workers_pods_and_service() -> None:
    objects = _base_objects()
    deployment = _one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert _matches(_one(objects, "Service")["spec"]["selector"], pod_labels)
    assert _matches(_one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)
    account = _one(objects, "ServiceAccount")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]


def _pod_labels(deployment: Object) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def test_two_replicas_share_the_shards_and_roll_one_new_pod_at_a_time() -> None:
    """Leases let replicas share shards: two by default; a rollout adds the new pod before removing an old."""
    spec = _one(_base_objects(), "Deployment")["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }


@pytest.mark.parametrize("where", ["base", "overlay"])
def test_the_disruption_budget_keeps_one_replica_reading_and_still_lets_a_drain_evict(
    where: str, rendered: list[Object]
) -> None:
    objects = _base_objects() if where == "base" else rendered
    budget = _one(objects, "PodDisruptionBudget")["spec"]
    assert "maxUnavailable" not in budget
    assert budget["minAvailable"] == 1
    # A budget as large as the replica count would block every node drain for good.
    assert budget["minAvailable"] < _one(objects, "Deployment")["spec"]["replicas"]


def test_each_replica_names_itself_in_the_lease_table_by_its_pod_name() -> None:
    """Two replicas with one worker id would take each other's leases for their own."""
    container = _container(_one(_base_objects(), "Deployment"))
    (worker_id,) = [e for e in container["env"] if e["name"] == "RECONCILER_WORKER_ID"]
    assert worker_id == {
        "name": "RECONCILER_WORKER_ID",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }


def test_every_worker_variable_names_a_setting_and_the_settings_accept_its_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = _env(_container(_one(_base_objects(), "Deployment")))
    fields = {f"RECONCILER_{name.upper()}" for name in Settings.model_fields}
    assert {name for name in env if name.startswith("RECONCILER_")} <= fields
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # RECONCILER_CONFIG and the rest come from the environment
    # The lease knobs are the defaults, made explicit; a lease outlives several heartbeats.
    for name in LEASE_KNOBS:
        assert f"RECONCILER_{name.upper()}" in env
        assert getattr(settings, name) == Settings.model_fields[name].default, name
    assert settings.lease_seconds >= 3 * settings.heartbeat_seconds


def test_replicas_prefer_different_nodes_without_refusing_to_schedule() -> None:
    deployment = _one(_base_objects(), "Deployment")
    constraints = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    keys = {c["topologyKey"] for c in constraints}
    assert "kubernetes.io/hostname" in keys
    for constraint in constraints:
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"  # preferred, never a Pending pod
        assert constraint["maxSkew"] == 1
        assert _matches(constraint["labelSelector"]["matchLabels"], _pod_labels(deployment))


def test_alert_rules_select_the_job_the_service_monitor_gives_the_worker() -> None:
    """The job label Prometheus Operator gives the worker (jobLabel, else the Service) is the rules' job."""
    job = _job_label(_base_objects())
    assert job == "deletion-reconciler"
    rules = [*(ROOT / "deploy" / "prometheus").glob("*.yaml"), *KUBERNETES.rglob("prometheusrule*.yaml")]
    selected = {m for path in rules for m in re.findall(r'\bjob\s*=~?\s*"([^"]+)"', path.read_text())}
    assert selected <= {job}
