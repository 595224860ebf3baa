"""Where each record lives in the store. One place, so a layout change is one edit.

```
/apps/<ns>/<name>                      Application
/appversions/<ns>/<name>/<version:010> ApplicationSpec (immutable)
/instances/<id>                        Instance
/nodes/<name>                          Node
/nodes-alive/<name>                    lease id (attached to the node's lease)
/nodes-auth/<name>                     NodeCredential (issued at join; hashes, no secrets)
/tokens/<id>                           JoinToken (secret hashed)
/artifacts/<hex>                       artifact metadata (the blob is on disk)
/events/<time_ns:020>-<seq:08>         Event (index = the key's create_revision)
/deployments/<ns>/<app>/<service>/<id> Deployment
```
"""

from __future__ import annotations

__all__ = [
    "APPS", "APP_VERSIONS", "ARTIFACTS", "DEPLOYMENTS", "EVENTS", "INSTANCES", "NODES",
    "NODES_ALIVE", "NODES_AUTH", "TOKENS", "app", "app_deployments", "app_version",
    "app_versions", "artifact", "deployment", "event", "instance", "node", "node_alive",
    "node_auth", "token",
]

APPS = "/apps/"
APP_VERSIONS = "/appversions/"
INSTANCES = "/instances/"
NODES = "/nodes/"
NODES_ALIVE = "/nodes-alive/"
NODES_AUTH = "/nodes-auth/"
TOKENS = "/tokens/"
ARTIFACTS = "/artifacts/"
EVENTS = "/events/"
DEPLOYMENTS = "/deployments/"


def app(namespace: str, name: str) -> str:
    return f"{APPS}{namespace}/{name}"


def app_versions(namespace: str, name: str) -> str:
    return f"{APP_VERSIONS}{namespace}/{name}/"


def app_version(namespace: str, name: str, version: int) -> str:
    return f"{app_versions(namespace, name)}{version:010d}"


def app_deployments(namespace: str, name: str) -> str:
    return f"{DEPLOYMENTS}{namespace}/{name}/"


def deployment(namespace: str, name: str, service: str, deployment_id: str) -> str:
    return f"{app_deployments(namespace, name)}{service}/{deployment_id}"


def instance(instance_id: str) -> str:
    return f"{INSTANCES}{instance_id}"


def node(name: str) -> str:
    return f"{NODES}{name}"


def node_alive(name: str) -> str:
    return f"{NODES_ALIVE}{name}"


def node_auth(name: str) -> str:
    return f"{NODES_AUTH}{name}"


def token(token_id: str) -> str:
    return f"{TOKENS}{token_id}"


def artifact(hex_digest: str) -> str:
    return f"{ARTIFACTS}{hex_digest}"


def event(time_ns: int, seq: int) -> str:
    return f"{EVENTS}{time_ns:020d}-{seq:08d}"
